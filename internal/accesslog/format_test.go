package accesslog

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/hipsterd/hipsterd/internal/exchange"
)

var formatNames = map[Format]string{Hipster: "hipster", Combined: "combined", JSON: "json"}

// awkward are requests whose fields hold what breaks naive log lines: quotes,
// backslashes, control characters (a newline that would forge a second line,
// a terminal escape), UTF-8 and bytes that are not UTF-8.
var awkward = []struct {
	name, uri, host, ua, referer, requestID string
}{
	{"plain", "/hello?n=1", "example.com", "curl/8.5.0", "", ""},
	{"quote", `/search?q="drop table"`, "example.com", `Mozilla/5.0 "quoted"`, `https://example.org/?a="b"`, "req-1"},
	{"backslash", `/a\b\\c\x22`, "example.com", `ua\`, "", ""},
	{"forged line", "/x HTTP/1.1\" 200 1\nfrontend:web 2012/01/01 00:00:00.000000 1.2.3.4:5 h \"GET /", "", "", "", ""},
	{"terminal escape", "/\x1b[31mred\x1b[0m\x00\x7f", "example.com", "\tua\r", "", "id\n2"},
	{"utf-8", "/caf\u00e9/\u65e5\u672c", "b\u00fccher.example", "\u00fcber-agent", "https://\u00e9.example/", ""},
	{"not utf-8", "/bad/\xff\xfe\xc3", "example.com", "ua\x80", "", ""},
	{"empty", "*", "", "", "", ""},
}

func awkwardRequest(i int) *http.Request {
	a := awkward[i]
	r := &http.Request{Method: "GET", RequestURI: a.uri, Proto: "HTTP/1.1", Host: a.host, RemoteAddr: "[2001:db8::1]:4321", Header: http.Header{}}
	if i%2 == 0 {
		r.RemoteAddr = "192.0.2.7:1234"
	}
	for k, v := range map[string]string{"User-Agent": a.ua, "Referer": a.referer, "X-Request-Id": a.requestID} {
		if v != "" {
			r.Header.Set(k, v)
		}
	}
	return r
}

// logAwkward serves every awkward request through a logger of format and
// returns the lines written.
func logAwkward(t *testing.T, format Format, handler http.HandlerFunc) []string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "access.log")
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	h := logged(NewLogger("web", f, format), handler)
	for i := range awkward {
		h.ServeHTTP(httptest.NewRecorder(), awkwardRequest(i))
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
	if len(lines) != len(awkward) {
		t.Fatalf("%d lines for %d requests:\n%s", len(lines), len(awkward), data)
	}
	for _, l := range lines {
		for i := 0; i < len(l); i++ {
			if l[i] < 0x20 || l[i] >= 0x7f && format != JSON {
				t.Errorf("byte %#x left unescaped in %q", l[i], l)
			}
		}
	}
	return lines
}

var hexEscape = regexp.MustCompile(`\\x[0-9A-F]{2}`)

// unescape undoes nginx's \xHH escaping.
func unescape(s string) string {
	return hexEscape.ReplaceAllStringFunc(s, func(e string) string {
		b, _ := hex.DecodeString(e[2:])
		return string(b)
	})
}

func ok(w http.ResponseWriter, r *http.Request) { w.Write([]byte("hello")) }

func TestHipsterAwkward(t *testing.T) {
	t.Parallel()
	lines := logAwkward(t, Hipster, ok)
	re := regexp.MustCompile(`^frontend:web (\d{4}/\d\d/\d\d \d\d:\d\d:\d\d\.\d{6}) (\S+) (\S+) "([^"]*)" (\d{3}) (\d+)$`)
	for i, l := range lines {
		a := awkward[i]
		m := re.FindStringSubmatch(l)
		if m == nil {
			t.Errorf("%s: line does not parse: %q", a.name, l)
			continue
		}
		host := a.host
		if host == "" {
			host = "-"
		}
		if unescape(m[3]) != host || unescape(m[4]) != "GET "+a.uri+" HTTP/1.1" || m[5] != "200" || m[6] != "5" {
			t.Errorf("%s: fields %q", a.name, m[1:])
		}
	}
	// The plain line is today's, byte for byte.
	if want := `192.0.2.7:1234 example.com "GET /hello?n=1 HTTP/1.1" 200 5`; !strings.HasSuffix(lines[0], want) {
		t.Errorf("plain line %q, want it to end in %q", lines[0], want)
	}
	if want := `"GET /search?q=\x22drop table\x22 HTTP/1.1"`; !strings.Contains(lines[1], want) {
		t.Errorf("quote: %q lacks %q", lines[1], want)
	}
}

func TestCombinedAwkward(t *testing.T) {
	t.Parallel()
	lines := logAwkward(t, Combined, ok)
	// The pattern log analysers use for NCSA combined (GoAccess's
	// COMBINED, AWStats' LogFormat=1).
	re := regexp.MustCompile(`^(\S+) (\S+) (\S+) \[([^\]]+)\] "([^"]*)" (\d{3}) (\d+|-) "([^"]*)" "([^"]*)"$`)
	for i, l := range lines {
		a := awkward[i]
		m := re.FindStringSubmatch(l)
		if m == nil {
			t.Errorf("%s: line does not parse: %q", a.name, l)
			continue
		}
		ip := "192.0.2.7"
		if i%2 == 1 {
			ip = "2001:db8::1"
		}
		if _, err := time.Parse("02/Jan/2006:15:04:05 -0700", m[4]); err != nil {
			t.Errorf("%s: time %q: %v", a.name, m[4], err)
		}
		dash := func(s string) string {
			if s == "" {
				return "-"
			}
			return s
		}
		want := []string{ip, "-", "-", m[4], "GET " + a.uri + " HTTP/1.1", "200", "5", dash(a.referer), dash(a.ua)}
		for j, w := range want {
			if got := unescape(m[j+1]); got != w {
				t.Errorf("%s: field %d is %q, want %q (line %q)", a.name, j+1, got, w, l)
			}
		}
	}
	if want := `192.0.2.7 - - [`; !strings.HasPrefix(lines[0], want) || !strings.HasSuffix(lines[0], `] "GET /hello?n=1 HTTP/1.1" 200 5 "-" "curl/8.5.0"`) {
		t.Errorf("plain line %q", lines[0])
	}
}

// jsonLine is what a JSON line holds; pointers tell null from "" and 0.
type jsonLine struct {
	Time       string   `json:"time"`
	Frontend   string   `json:"frontend"`
	Client     string   `json:"client"`
	Host       string   `json:"host"`
	Method     string   `json:"method"`
	URI        string   `json:"uri"`
	Protocol   string   `json:"protocol"`
	Status     int      `json:"status"`
	BytesSent  int64    `json:"bytes_sent"`
	Duration   *float64 `json:"duration"`
	Backend    *string  `json:"backend"`
	Route      *string  `json:"route"`
	HeaderTime *float64 `json:"header_time"`
	Retries    int      `json:"retries"`
	UserAgent  *string  `json:"user_agent"`
	Referer    *string  `json:"referer"`
	RequestID  *string  `json:"request_id"`
}

func TestJSONAwkward(t *testing.T) {
	t.Parallel()
	// A stand-in for the backend pool: it fills in the request's
	// exchange, for every other request.
	var n int
	lines := logAwkward(t, JSON, func(w http.ResponseWriter, r *http.Request) {
		if n++; n%2 == 0 {
			info := exchange.FromContext(r.Context())
			info.Backend, info.Retries, info.Header, info.Route = "app\"1", 2, 1500*time.Microsecond, "api\n"
		}
		w.Write([]byte("hello"))
	})
	for i, l := range lines {
		a := awkward[i]
		if !json.Valid([]byte(l)) {
			t.Errorf("%s: not valid JSON: %q", a.name, l)
			continue
		}
		var got jsonLine
		dec := json.NewDecoder(strings.NewReader(l))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&got); err != nil {
			t.Errorf("%s: %v: %q", a.name, err, l)
			continue
		}
		ts, err := time.Parse(time.RFC3339Nano, got.Time)
		if err != nil || time.Since(ts) > time.Minute || !regexp.MustCompile(`[+-]\d\d:\d\d$`).MatchString(got.Time) {
			t.Errorf("%s: time %q: %v (want RFC 3339 with a numeric offset)", a.name, got.Time, err)
		}
		ip := "192.0.2.7"
		if i%2 == 1 {
			ip = "2001:db8::1"
		}
		want := jsonLine{Time: got.Time, Frontend: "web", Client: ip, Host: valid(a.host), Method: "GET", URI: valid(a.uri),
			Protocol: "HTTP/1.1", Status: 200, BytesSent: 5, Duration: got.Duration}
		str := func(s string) *string {
			if s == "" {
				return nil
			}
			s = valid(s)
			return &s
		}
		want.UserAgent, want.Referer, want.RequestID = str(a.ua), str(a.referer), str(a.requestID)
		if i%2 == 1 {
			want.Backend, want.Retries, want.HeaderTime, want.Route = str("app\"1"), 2, got.HeaderTime, str("api\n")
			if got.HeaderTime == nil || *got.HeaderTime != 0.0015 {
				t.Errorf("%s: header_time %v, want 0.0015", a.name, got.HeaderTime)
			}
		}
		if got.Duration == nil || *got.Duration < 0 || *got.Duration > 60 {
			t.Errorf("%s: duration %v", a.name, got.Duration)
		}
		gj, _ := json.Marshal(got)
		wj, _ := json.Marshal(want)
		if !bytes.Equal(gj, wj) {
			t.Errorf("%s:\n got %s\nwant %s\nline %s", a.name, gj, wj, l)
		}
	}
}

// valid replaces each byte of s that is not part of valid UTF-8 with U+FFFD,
// as encoding/json does.
func valid(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		b.WriteRune(r) // RuneError for a bad byte
		i += size
	}
	return b.String()
}

func TestAppendJSONString(t *testing.T) {
	t.Parallel()
	for _, s := range []string{"", "plain", "\"\\/", "\x00\x01\x1f\x7f", "\u2028\u00e9\U0001F600", "\xff", "a\xc3", "\xed\xa0\x80", "\xf4\x90\x80\x80"} {
		b := appendJSONString(nil, s)
		var got string
		if err := json.Unmarshal(b, &got); err != nil {
			t.Errorf("%q: %s is not a JSON string: %v", s, b, err)
			continue
		}
		if want := valid(s); got != want {
			t.Errorf("%q: decoded %q, want %q", s, got, want)
		}
		if bytes.ContainsAny(b, "\n\r") {
			t.Errorf("%q: %q holds a line break", s, b)
		}
	}
}

func TestCombinedTime(t *testing.T) {
	t.Parallel()
	zone := time.FixedZone("", -(7*3600 + 30*60))
	now := time.Date(2013, 2, 3, 4, 5, 6, 0, zone)
	req := request{remoteAddr: "192.0.2.1:80", method: "GET", uri: "/", proto: "HTTP/1.0"}
	got := string(appendCombined(nil, now, &req, 304, 0))
	if want := `192.0.2.1 - - [03/Feb/2013:04:05:06 -0730] "GET / HTTP/1.0" 304 0 "-" "-"` + "\n"; got != want {
		t.Errorf("line\n%q, want\n%q", got, want)
	}
}

func TestClientIP(t *testing.T) {
	t.Parallel()
	for addr, want := range map[string]string{"192.0.2.1:80": "192.0.2.1", "[::1]:9": "::1", "[fe80::1%eth0]:1": "fe80::1%eth0", "": "", "pipe": "pipe"} {
		if got := clientIP(addr); got != want {
			t.Errorf("clientIP(%q) = %q, want %q", addr, got, want)
		}
	}
}

func TestTunnelJSONDuration(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "access.log")
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	var end exchange.TunnelEnd
	h := logged(NewLogger("ws", f, JSON), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		end = exchange.FromContext(r.Context()).Tunnel(0)
	}))
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/chat", nil))
	start := time.Now()
	for time.Since(start) < 20*time.Millisecond {
		time.Sleep(time.Millisecond) // the tunnel's lifetime, to be measured
	}
	end.EndTunnel(77)
	f.Close()
	data, _ := os.ReadFile(path)
	var got jsonLine
	if err := json.Unmarshal(data, &got); err != nil {
		t.Fatalf("%v: %q", err, data)
	}
	if got.Status != 101 || got.BytesSent != 77 || got.Duration == nil || *got.Duration < 0.02 {
		t.Errorf("tunnel line %q: want status 101, 77 bytes and the tunnel's lifetime (≥ 0.02 s)", data)
	}
}

// typicalExchange is a small GET answered by a backend, and its line's
// writing.
func typicalExchange(l *Logger) func() {
	r := httptest.NewRequest("GET", "/small?id=42", nil)
	r.Header.Set("User-Agent", "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0")
	r.Header.Set("Referer", "https://example.com/")
	r.Header.Set("X-Request-Id", "f9d1c0de")
	x := &exchange.Exchange{Context: context.Background(), Request: r, RemoteAddr: r.RemoteAddr, Start: time.Now(),
		BytesOut: 100, Backend: "app1", Header: 800 * time.Microsecond}
	return func() { l.End(x) }
}

// Writing a line allocates nothing, in any format.
func TestLogLineAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts mean nothing under the race detector")
	}
	for _, format := range []Format{Hipster, Combined, JSON} {
		f, err := Open(filepath.Join(t.TempDir(), "access.log"))
		if err != nil {
			t.Fatal(err)
		}
		if n := testing.AllocsPerRun(200, typicalExchange(NewLogger("bench", f, format))); n != 0 {
			t.Errorf("%s: %v allocations per line, want 0", formatNames[format], n)
		}
		f.Close()
	}
}

func TestNewLoggerPrefix(t *testing.T) {
	t.Parallel()
	for format, want := range map[Format]string{Hipster: `frontend:a\x22b `, JSON: `"a\"b"`, Combined: `frontend:a\x22b `} {
		if got := NewLogger(`a"b`, nil, format).prefix; got != want {
			t.Errorf("%s: prefix %q, want %q", formatNames[format], got, want)
		}
	}
	if got := strconv.Quote(NewLogger("web", nil, Hipster).prefix); got != `"frontend:web "` {
		t.Errorf("hipster prefix %s", got)
	}
}

// Whatever a client sends, a JSON string is valid JSON that decodes to the
// input (bad UTF-8 aside), and an escaped field holds no byte that could
// end a line or a quoted field and unescapes to the input.
func FuzzEscaping(f *testing.F) {
	for _, a := range awkward {
		f.Add(a.uri)
		f.Add(a.ua)
	}
	f.Fuzz(func(t *testing.T, s string) {
		b := appendJSONString(nil, s)
		var got string
		if err := json.Unmarshal(b, &got); err != nil || got != valid(s) {
			t.Fatalf("%q: JSON %s decodes to %q, %v", s, b, got, err)
		}
		e := appendEscaped(nil, s)
		if bytes.ContainsAny(e, "\"\n\r") || unescape(string(e)) != s {
			t.Fatalf("%q: escaped %q", s, e)
		}
		for _, c := range e {
			if c < 0x20 || c >= 0x7f {
				t.Fatalf("%q: escaped %q holds %#x", s, e, c)
			}
		}
	})
}

// The client's address is escaped like every other field, whatever its
// source: a PROXY header's may hold anything.
func TestClientAddressEscaped(t *testing.T) {
	t.Parallel()
	now := time.Now()
	r := &request{remoteAddr: "x\nfrontend:web 2012/01/01 00:00:00.000000 6.6.6.6:1 h \"GET / HTTP/1.1\" 200 0:1", method: "GET", uri: "/", proto: "HTTP/1.1"}
	for name, line := range map[string][]byte{
		"hipster":  appendLine(nil, "frontend:web ", now, r, 200, 0),
		"combined": appendCombined(nil, now, r, 200, 0),
		"json":     appendJSON(nil, `"web"`, now, r, 200, 0),
	} {
		if n := bytes.Count(line, []byte("\n")); n != 1 || line[len(line)-1] != '\n' {
			t.Errorf("%s: %d lines: %q", name, n, line)
		}
		if name != "json" && !bytes.Contains(line, []byte(`x\x0Afrontend:web`)) {
			t.Errorf("%s: address not escaped: %q", name, line)
		}
	}
}
