package server

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestRoundRobin(t *testing.T) {
	t.Parallel()
	a, b := namedBackend(t, "a"), namedBackend(t, "b")
	tests := []struct {
		name     string
		backends string
		want     map[string]int
	}{
		{"even", "a b", map[string]int{"a": 500, "b": 500}},
		{"listed twice", "a a b", map[string]int{"a": 666, "b": 333}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			total := 0
			for _, n := range tc.want {
				total += n
			}
			_, addrs := start(t, fmt.Sprintf("[frontend f]\nbind = 127.0.0.1:0\nbackends = %s\n[backend a]\nconnect = %s\n[backend b]\nconnect = %s\n", tc.backends, a, b))
			url := "http://" + addrs["f"] + "/"
			var mu sync.Mutex
			got := map[string]int{}
			var wg sync.WaitGroup
			jobs := make(chan struct{}, total)
			for i := 0; i < total; i++ {
				jobs <- struct{}{}
			}
			close(jobs)
			for w := 0; w < 8; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for range jobs {
						resp, err := http.Get(url)
						if err != nil {
							t.Error(err)
							return
						}
						body, _ := io.ReadAll(resp.Body)
						resp.Body.Close()
						mu.Lock()
						got[string(body)]++
						mu.Unlock()
					}
				}()
			}
			wg.Wait()
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("split = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestHostRouting(t *testing.T) {
	t.Parallel()
	one, two, fb := namedBackend(t, "one"), namedBackend(t, "two"), namedBackend(t, "fallback")
	_, addrs := start(t, fmt.Sprintf(`
[frontend withfallback]
bind = 127.0.0.1:0
hosts = localhost:9000 example.com www.example.com
backends = fb

[frontend hostsonly]
bind = 127.0.0.1:0
hosts = example.com

[host localhost:9000]
backends = one

[host example.com www.example.com]
backends = two

[backend one]
connect = %s
[backend two]
connect = %s
[backend fb]
connect = %s
`, one, two, fb))
	tests := []struct {
		frontend, host string
		status         int
		body           string
	}{
		{"withfallback", "localhost:9000", 200, "one"},
		{"withfallback", "LOCALHOST:9000", 200, "one"},
		{"withfallback", "localhost:9001", 200, "fallback"},
		{"withfallback", "example.com", 200, "two"},
		{"withfallback", "www.Example.com:8080", 200, "two"},
		{"withfallback", "other.org", 200, "fallback"},
		{"hostsonly", "example.com", 200, "two"},
		{"hostsonly", "other.org", 503, "no suitable backend"},
	}
	for _, tc := range tests {
		status, body := get(t, "http://"+addrs[tc.frontend]+"/", tc.host)
		if status != tc.status || !strings.Contains(body, tc.body) {
			t.Errorf("%s Host %s: %d %q, want %d %q", tc.frontend, tc.host, status, body, tc.status, tc.body)
		}
	}
}

// seen is what a backend received, reported as JSON.
type seen struct {
	Method, URI, Host, Body, Proto string
	Header                         http.Header
}

func mirrorBackend(t *testing.T) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		json.NewEncoder(w).Encode(seen{r.Method, r.RequestURI, r.Host, string(body), r.Proto, r.Header})
	}))
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

func decodeSeen(t *testing.T, resp *http.Response) seen {
	t.Helper()
	defer resp.Body.Close()
	var s seen
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		t.Fatal(err)
	}
	return s
}

func TestRequestForwarding(t *testing.T) {
	t.Parallel()
	m := mirrorBackend(t)
	_, addrs := start(t, fmt.Sprintf(`
[frontend plain]
bind = 127.0.0.1:0
backends = m
[frontend xff]
bind = 127.0.0.1:0
backends = m
add-x-forwarded-for = true
[backend m]
connect = %s
`, m))

	req := "POST /some/path?a=1;b=2&c=%zz HTTP/1.1\r\n" +
		"Host: Example.COM:1234\r\n" +
		"Content-Length: 5\r\n" +
		"Connection: keep-alive, X-Hop\r\n" +
		"X-Hop: drop me\r\n" +
		"Keep-Alive: timeout=5\r\n" +
		"Te: trailers\r\n" +
		"Proxy-Authorization: Basic Zm9vOmJhcg==\r\n" +
		"Proxy-Connection: keep-alive\r\n" +
		"X-Forwarded-For: 10.0.0.1\r\n" +
		"X-Forwarded-For: 10.0.0.2\r\n" +
		"X-Forwarded-Host: orig.example\r\n" +
		"X-Forwarded-Proto: https\r\n" +
		"Forwarded: for=10.0.0.1\r\n" +
		"X-Custom: kept\r\n" +
		"\r\nhello"

	t.Run("plain", func(t *testing.T) {
		s := decodeSeen(t, rawExchange(t, addrs["plain"], req))
		if s.Method != "POST" || s.URI != "/some/path?a=1;b=2&c=%zz" || s.Host != "Example.COM:1234" || s.Body != "hello" {
			t.Errorf("request changed on the way: %+v", s)
		}
		for _, h := range []string{"X-Hop", "Keep-Alive", "Proxy-Authorization", "Proxy-Connection"} {
			if v, ok := s.Header[h]; ok {
				t.Errorf("hop-by-hop header %s reached the backend: %q", h, v)
			}
		}
		if got := s.Header.Get("Te"); got != "trailers" {
			t.Errorf("Te = %q, want trailers", got)
		}
		if got := s.Header.Get("X-Custom"); got != "kept" {
			t.Errorf("X-Custom = %q", got)
		}
		// Without add-x-forwarded-for the client's forwarding headers pass
		// unchanged and nothing is added.
		if got := s.Header["X-Forwarded-For"]; strings.Join(got, "|") != "10.0.0.1|10.0.0.2" {
			t.Errorf("X-Forwarded-For = %q", got)
		}
		for h, want := range map[string]string{"X-Forwarded-Host": "orig.example", "X-Forwarded-Proto": "https", "Forwarded": "for=10.0.0.1"} {
			if got := s.Header.Get(h); got != want {
				t.Errorf("%s = %q, want %q", h, got, want)
			}
		}
	})

	t.Run("xff", func(t *testing.T) {
		s := decodeSeen(t, rawExchange(t, addrs["xff"], req))
		if got := s.Header["X-Forwarded-For"]; len(got) != 1 || got[0] != "10.0.0.1, 10.0.0.2, 127.0.0.1" {
			t.Errorf("X-Forwarded-For = %q, want one line \"10.0.0.1, 10.0.0.2, 127.0.0.1\"", got)
		}
		s = decodeSeen(t, rawExchange(t, addrs["xff"], "GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
		if got := s.Header["X-Forwarded-For"]; len(got) != 1 || got[0] != "127.0.0.1" {
			t.Errorf("X-Forwarded-For = %q, want 127.0.0.1", got)
		}
	})

	t.Run("other upgrades are not tunnelled", func(t *testing.T) {
		s := decodeSeen(t, rawExchange(t, addrs["plain"], "GET /h2c HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n"))
		if v, ok := s.Header["Upgrade"]; ok {
			t.Errorf("Upgrade reached the backend: %q", v)
		}
		if s.URI != "/h2c" {
			t.Errorf("URI = %q", s.URI)
		}
	})
}

func TestStreamingResponse(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: first\n\n")
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
		}
		io.WriteString(w, "data: second\n\n")
	}))
	t.Cleanup(srv.Close)
	defer close(release)
	_, addrs := start(t, "[frontend f]\nbind = 127.0.0.1:0\nbackends = s\n[backend s]\nconnect = "+srv.Listener.Addr().String()+"\n")

	resp, err := http.Get("http://" + addrs["f"] + "/events")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	// The first event arrives while the backend still holds the response open.
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil || line != "data: first\n" {
		t.Fatalf("first line %q, %v", line, err)
	}
}

func TestBackendErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	logPath := filepath.Join(dir, "access.log")

	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := closed.Addr().String()
	closed.Close()

	arrived, gone := make(chan struct{}), make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/abandon" {
			close(arrived)
			<-r.Context().Done()
			close(gone)
			return
		}
		select {
		case <-r.Context().Done():
		case <-time.After(10 * time.Second):
		}
	}))
	t.Cleanup(slow.Close)

	_, addrs := start(t, fmt.Sprintf(`
[global]
accesslog = %s
[frontend refused]
bind = 127.0.0.1:0
backends = refused
[frontend slow]
bind = 127.0.0.1:0
backends = slow
[backend refused]
connect = %s
[backend slow]
connect = %s
response-timeout = 200ms
[frontend patient]
bind = 127.0.0.1:0
backends = patient
[backend patient]
connect = %s
`, logPath, refused, slow.Listener.Addr(), slow.Listener.Addr()))

	if status, _ := get(t, "http://"+addrs["refused"]+"/", ""); status != http.StatusBadGateway {
		t.Errorf("refused backend: %d, want 502", status)
	}
	begin := time.Now()
	if status, _ := get(t, "http://"+addrs["slow"]+"/", ""); status != http.StatusGatewayTimeout {
		t.Errorf("slow backend: %d, want 504", status)
	}
	if d := time.Since(begin); d > 5*time.Second {
		t.Errorf("504 took %v with a 200ms response-timeout", d)
	}

	// A client that gives up: the backend's request is cancelled too, and
	// the access log says 499.
	c, err := net.Dial("tcp", addrs["patient"])
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(c, "GET /abandon HTTP/1.1\r\nHost: x\r\n\r\n")
	select {
	case <-arrived:
	case <-time.After(10 * time.Second):
		t.Fatal("the request did not reach the backend")
	}
	c.Close()
	select {
	case <-gone:
	case <-time.After(10 * time.Second):
		t.Fatal("the backend request was not cancelled when the client went away")
	}
	lines := readLog(t, logPath, 3)
	statuses := map[string]bool{}
	for _, l := range lines {
		f := strings.Fields(l)
		statuses[f[len(f)-2]] = true
	}
	for _, want := range []string{"502", "504", "499"} {
		if !statuses[want] {
			t.Errorf("access log lacks status %s:\n%s", want, strings.Join(lines, "\n"))
		}
	}
}

func TestAccessLogLines(t *testing.T) {
	t.Parallel()
	logPath := filepath.Join(t.TempDir(), "access.log")
	b := namedBackend(t, "hello")
	_, addrs := start(t, fmt.Sprintf("[global]\naccesslog = %s\n[frontend web]\nbind = 127.0.0.1:0\nbackends = b\n[backend b]\nconnect = %s\n", logPath, b))
	get(t, "http://"+addrs["web"]+"/path?q=1", "example.com")
	rawExchange(t, addrs["web"], "GET /nohost HTTP/1.0\r\n\r\n").Body.Close()
	lines := readLog(t, logPath, 2)
	re := regexp.MustCompile(`^frontend:web \d{4}/\d\d/\d\d \d\d:\d\d:\d\d\.\d{6} 127\.0\.0\.1:\d+ (\S+) "(GET \S+ HTTP/1\.[01])" 200 5$`)
	want := [][2]string{{"example.com", "GET /path?q=1 HTTP/1.1"}, {"-", "GET /nohost HTTP/1.0"}}
	for i, l := range lines {
		m := re.FindStringSubmatch(l)
		if m == nil || m[1] != want[i][0] || m[2] != want[i][1] {
			t.Errorf("line %d = %q, want host %s and request %q", i, l, want[i][0], want[i][1])
		}
	}
}

// Two frontends, one combined and one json, share a file; a request with a
// URI and headers that break naive log lines leaves one parsable line in
// each format.
func TestAccessLogFormats(t *testing.T) {
	t.Parallel()
	logPath := filepath.Join(t.TempDir(), "access.log")
	b := namedBackend(t, "hello")
	_, addrs := start(t, fmt.Sprintf(`
[global]
accesslog = %s
accesslog-format = json
[frontend c]
bind = 127.0.0.1:0
backends = b
accesslog-format = combined
[frontend j]
bind = 127.0.0.1:0
backends = b
[frontend nopool]
bind = 127.0.0.1:0
hosts = only.example
[host only.example]
backends = b
[backend b]
connect = %s
`, logPath, b))
	const uri = `/q?a="b"\c&d=%22`
	req := "GET " + uri + " HTTP/1.1\r\nHost: example.com\r\nUser-Agent: ua \"1\" \\ 2\r\nReferer: http://r/\"\r\nX-Request-Id: id-1\r\nConnection: close\r\n\r\n"
	for _, fe := range []string{"c", "j"} {
		resp := rawExchange(t, addrs[fe], req)
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("frontend %s: status %d", fe, resp.StatusCode)
		}
		readLog(t, logPath, map[string]int{"c": 1, "j": 2}[fe]) // in this order
	}
	lines := readLog(t, logPath, 2)
	combined := regexp.MustCompile(`^127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] "([^"]*)" 200 5 "([^"]*)" "([^"]*)"$`)
	m := combined.FindStringSubmatch(lines[0])
	if m == nil || m[1] != `GET /q?a=\x22b\x22\x5Cc&d=%22 HTTP/1.1` || m[2] != `http://r/\x22` || m[3] != `ua \x221\x22 \x5C 2` {
		t.Errorf("combined line %q", lines[0])
	}
	var j struct {
		Frontend, Client, Host, Method, URI, Protocol string
		Status                                        int
		BytesSent                                     int64    `json:"bytes_sent"`
		Duration                                      *float64 `json:"duration"`
		Backend                                       *string  `json:"backend"`
		HeaderTime                                    *float64 `json:"header_time"`
		Retries                                       int      `json:"retries"`
		UserAgent                                     string   `json:"user_agent"`
		Referer                                       string   `json:"referer"`
		RequestID                                     string   `json:"request_id"`
	}
	if err := json.Unmarshal([]byte(lines[1]), &j); err != nil {
		t.Fatalf("json line %q: %v", lines[1], err)
	}
	if j.Frontend != "j" || j.Client != "127.0.0.1" || j.Host != "example.com" || j.URI != uri || j.Protocol != "HTTP/1.1" ||
		j.Status != 200 || j.BytesSent != 5 || j.Duration == nil || j.UserAgent != `ua "1" \ 2` || j.Referer != `http://r/"` || j.RequestID != "id-1" {
		t.Errorf("json line %q decodes to %+v", lines[1], j)
	}
	// A 503 without a pool: no backend, no header.
	if status, _ := get(t, "http://"+addrs["nopool"]+"/", "other.example"); status != http.StatusServiceUnavailable {
		t.Fatalf("nopool: status %d, want 503", status)
	}
	var n struct {
		Status     int
		Backend    *string  `json:"backend"`
		HeaderTime *float64 `json:"header_time"`
	}
	if last := readLog(t, logPath, 3)[2]; json.Unmarshal([]byte(last), &n) != nil || n.Status != 503 || n.Backend != nil || n.HeaderTime != nil {
		t.Errorf("503 line %q: want backend and header_time null", last)
	}
	// What the pool filled in.
	if j.Backend == nil || *j.Backend != "b" || j.HeaderTime == nil || *j.HeaderTime <= 0 || *j.HeaderTime > *j.Duration || j.Retries != 0 {
		t.Errorf("json line %q: want backend b, 0 retries and a header_time within the duration", lines[1])
	}
}
