package main

import (
	"bufio"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hipsterd/hipsterd/internal/testcert"
)

// rawStatus sends raw on a new connection and returns the status of the
// answer, or fails.
func rawStatus(t *testing.T, addr, raw string) int {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if len(raw) > 64<<10 {
		// A head over the limit is answered before it is all sent.
		go io.WriteString(c, raw)
	} else if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("%.40q: %v", raw, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// logLines waits until the file at path holds n lines, and returns them.
func logLines(t *testing.T, path string, n int) []string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		data, _ := os.ReadFile(path)
		lines := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
		if len(data) == 0 {
			lines = nil
		}
		if len(lines) >= n || time.Now().After(deadline) {
			if len(lines) != n {
				t.Fatalf("%s has %d lines, want %d:\n%s", path, len(lines), n, data)
			}
			return lines
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Requests net/http's parser refuses are answered, and each leaves one line
// in the access log, in every format, and a count on /metrics by status
// (issue 17, item 6), as nginx logs them (400) and HAProxy (BADREQ).
func TestRefusedRequestsLoggedAndCounted(t *testing.T) {
	t.Parallel()
	refused := []struct {
		name, raw string
		status    int
	}{
		{"control byte in the target", "GET /a\x01b HTTP/1.1\r\nHost: x\r\n\r\n", 400},
		{"control byte in a header", "GET / HTTP/1.1\r\nHost: x\r\nX-Bad: a\x01b\r\n\r\n", 400},
		{"bad method", "G(E)T / HTTP/1.1\r\nHost: x\r\n\r\n", 400},
		{"bad version", "GET / HTTP/9.9\r\nHost: x\r\n\r\n", 505},
		{"no Host", "GET / HTTP/1.1\r\n\r\n", 400},
		{"head over the limit", "GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("x", 1<<20+8192) + "\r\n\r\n", 431},
	}
	for _, format := range []string{"hipster", "combined", "json"} {
		t.Run(format, func(t *testing.T) {
			t.Parallel()
			logPath := filepath.Join(t.TempDir(), "access.log")
			front, stats := freePort(t, "tcp", "127.0.0.1"), freePort(t, "tcp", "127.0.0.1")
			cfg := writeConfig(t, fmt.Sprintf(`
[global]
stats = %s
[frontend f]
bind = %s
backends = b
accesslog = %s
accesslog-format = %s
[backend b]
connect = %s
`, stats, front, logPath, format, backend(t, "b", nil)))
			startHipsterd(t, cfg, front)
			for _, r := range refused {
				if got := rawStatus(t, front, r.raw); got != r.status {
					t.Errorf("%s: %d, want %d", r.name, got, r.status)
				}
			}
			// On a kept-alive connection, after a request served.
			c := dial(t, front)
			if got := getOn(t, c.c, c.br, 10*time.Second); got != http.StatusOK {
				t.Fatalf("GET: %d", got)
			}
			io.WriteString(c.c, "GET /\x7f HTTP/1.1\r\nHost: x\r\n\r\n")
			if got := statusOn(t, c.c, c.br, 10*time.Second); got != http.StatusBadRequest {
				t.Errorf("a refused request after one served: %d, want 400", got)
			}

			lines := logLines(t, logPath, len(refused)+2)
			want := []int{}
			for _, r := range refused {
				want = append(want, r.status)
			}
			want = append(want, 200, 400)
			for i, line := range lines {
				for _, b := range []byte(line) {
					if b < ' ' || b > '~' {
						t.Errorf("line %d has byte %#x: %q", i, b, line)
						break
					}
				}
				var method string
				var status int
				switch format {
				case "json":
					var v struct {
						Method string
						Status int
					}
					if err := json.Unmarshal([]byte(line), &v); err != nil {
						t.Fatalf("line %d is not JSON: %v: %s", i, err, line)
					}
					method, status = v.Method, v.Status
				default:
					_, after, _ := strings.Cut(line, `"`)
					method, _, _ = strings.Cut(after, " ")
					fmt.Sscanf(after[strings.Index(after, `" `)+2:], "%d", &status)
				}
				wantMethod := "<BADREQ>"
				if want[i] == 200 {
					wantMethod = "GET"
				}
				if method != wantMethod || status != want[i] {
					t.Errorf("line %d: method %q status %d, want %q %d: %s", i, method, status, wantMethod, want[i], line)
				}
			}
			m := metricsText(t, stats)
			for code, n := range map[int]int{400: 5, 431: 1, 505: 1} {
				if s := fmt.Sprintf(`hipsterd_requests_total{backend="-",code="%d",frontend="f"} %d`+"\n", code, n); !strings.Contains(m, s) {
					t.Errorf("/metrics lacks %s", s)
				}
			}
		})
	}
}

// OPTIONS * reaches the backend and the access log, as the README says,
// rather than being answered by net/http itself (issue 17, item 12).
func TestOptionsStarForwarded(t *testing.T) {
	t.Parallel()
	seen := make(chan string, 1)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen <- r.Method + " " + r.RequestURI
		w.Header().Set("Allow", "GET, OPTIONS")
		w.Header().Set("X-Backend", "b")
	}))
	srv.Config.DisableGeneralOptionsHandler = true // a backend that answers it itself
	srv.Start()
	t.Cleanup(srv.Close)
	b := srv.Listener.Addr().String()
	logPath := filepath.Join(t.TempDir(), "access.log")
	front := freePort(t, "tcp", "127.0.0.1")
	cfg := writeConfig(t, fmt.Sprintf("[frontend f]\nbind = %s\nbackends = b\naccesslog = %s\n[backend b]\nconnect = %s\n", front, logPath, b))
	startHipsterd(t, cfg, front)
	c := dial(t, front)
	c.c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c.c, "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("X-Backend") != "b" || resp.Header.Get("Allow") != "GET, OPTIONS" {
		t.Errorf("OPTIONS *: %d %v, want the backend's answer", resp.StatusCode, resp.Header)
	}
	select {
	case got := <-seen:
		if got != "OPTIONS *" {
			t.Errorf("the backend got %q, want OPTIONS *", got)
		}
	default:
		t.Error("OPTIONS * did not reach the backend")
	}
	if line := logLines(t, logPath, 1)[0]; !strings.Contains(line, `"OPTIONS * HTTP/1.1" 200`) {
		t.Errorf("access log line %q", line)
	}
}

// On an https frontend net/http's refusals are written under TLS, where
// they cannot be read: they are found by net/http's order of events
// instead (a request read, no handler, a write, the close), logged and
// counted as 400, or 431 for a head over the limit. A request served, a
// connection closed before any request, and HTTP/2 leave no such line.
func TestRefusedRequestsLoggedOverTLS(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cert, key := testcert.Files(t, dir, "localhost")
	logPath := filepath.Join(dir, "access.log")
	front, stats := freePort(t, "tcp", "127.0.0.1"), freePort(t, "tcp", "127.0.0.1")
	cfg := writeConfig(t, fmt.Sprintf(`
[global]
stats = %s
[frontend f]
bind = %s
https = true
certfile = %s
keyfile = %s
backends = b
accesslog = %s
[backend b]
connect = %s
`, stats, front, cert, key, logPath, backend(t, "b", nil)))
	startHipsterd(t, cfg, front)
	tlsConf := &tls.Config{RootCAs: testcert.Pool(t, cert), ServerName: "localhost", NextProtos: []string{"http/1.1"}}
	send := func(raw string, closeEarly bool) int {
		t.Helper()
		c, err := tls.Dial("tcp", front, tlsConf)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if len(raw) > 64<<10 {
			go io.WriteString(c, raw)
		} else {
			io.WriteString(c, raw)
		}
		if closeEarly {
			return 0
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("%.40q: %v", raw, err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	send("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", false) // served: 200
	send("", true)                                                        // a handshake, then nothing: no request, no line
	if got := send("GET /a\x01b HTTP/1.1\r\nHost: x\r\n\r\n", false); got != 400 {
		t.Errorf("control byte: %d, want 400", got)
	}
	if got := send("GET / HTTP/1.1\r\nHost: x\r\nX-Big: "+strings.Repeat("x", 1<<20+8192)+"\r\n\r\n", false); got != 431 {
		t.Errorf("head over the limit: %d, want 431", got)
	}
	h2 := &http.Client{Transport: &http.Transport{ForceAttemptHTTP2: true, TLSClientConfig: &tls.Config{RootCAs: testcert.Pool(t, cert), ServerName: "localhost"}}}
	resp, err := h2.Get("https://" + front + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	h2.CloseIdleConnections()
	if resp.ProtoMajor != 2 {
		t.Fatalf("protocol %s, want HTTP/2", resp.Proto)
	}
	lines := logLines(t, logPath, 4)
	var refusedLines []string
	for _, l := range lines {
		if strings.Contains(l, "<BADREQ>") {
			refusedLines = append(refusedLines, l)
		}
	}
	if len(refusedLines) != 2 || !strings.Contains(refusedLines[0], `" 400 `) || !strings.Contains(refusedLines[1], `" 431 `) {
		t.Errorf("refused lines %q, want a 400 and a 431 among:\n%s", refusedLines, strings.Join(lines, "\n"))
	}
	m := metricsText(t, stats)
	for _, s := range []string{`hipsterd_requests_total{backend="-",code="400",frontend="f"} 1`, `hipsterd_requests_total{backend="-",code="431",frontend="f"} 1`} {
		if !strings.Contains(m, s+"\n") {
			t.Errorf("/metrics lacks %s", s)
		}
	}
}
