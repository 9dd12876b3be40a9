package server

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hipsterd/hipsterd/internal/config"
)

// logBuffer keeps what the server logs, and sends it to the test's log too.
type logBuffer struct {
	t  *testing.T
	mu sync.Mutex
	b  strings.Builder
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.t.Log(strings.TrimSpace(string(p)))
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startLogged is start, with the server's log (debug lines included) kept.
func startLogged(t *testing.T, src string) (*Server, map[string]string, *logBuffer) {
	t.Helper()
	cfg, err := config.Parse("test.ini", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	logs := &logBuffer{t: t}
	s := New(slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err := s.Start(cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Shutdown(ctx)
	})
	addrs := map[string]string{}
	for name, a := range s.Addrs() {
		addrs[name] = a.String()
	}
	return s, addrs, logs
}

func (s *Server) backend(name string) interface {
	InFlight() int64
	Up() bool
} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.backends[name]
}

// openConns counts the frontends' open connections, hijacked ones excluded.
func (s *Server) openConns() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var n int64
	for _, l := range s.listeners {
		n += l.conns.Load()
	}
	return n
}

const clientTimeout = 300 * time.Millisecond

// limitsConfig is a frontend with client-timeout = 300ms before backend b,
// which one failure would take down.
func limitsConfig(logPath, backend string) string {
	return fmt.Sprintf(`
[global]
accesslog = %s
client-timeout = %s
[frontend f]
bind = 127.0.0.1:0
backends = b
[backend b]
connect = %s
health-fall = 1
`, logPath, clientTimeout, backend)
}

// dialRaw connects to addr, closing the connection at the end of the test.
func dialRaw(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

func TestClientTimeoutSlowBody(t *testing.T) {
	t.Parallel()
	logPath := filepath.Join(t.TempDir(), "access.log")
	bodyErr := make(chan error, 1)
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, err := io.ReadAll(r.Body)
		bodyErr <- err
	}))
	t.Cleanup(backend.Close)
	s, addrs, logs := startLogged(t, limitsConfig(logPath, backend.Listener.Addr().String()))

	c := dialRaw(t, addrs["f"])
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
	sent := time.Now()
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(sent)
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestTimeout || !resp.Close {
		t.Errorf("status %d, closing %v; want 408 and the connection closed", resp.StatusCode, resp.Close)
	}
	if elapsed < clientTimeout*3/4 || elapsed > clientTimeout+2*time.Second {
		t.Errorf("408 after %v, want about %v", elapsed, clientTimeout)
	}
	select {
	case err := <-bodyErr:
		if err == nil {
			t.Error("the backend read a whole body")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the backend's request was not cut")
	}
	b := s.backend("b")
	waitFor(t, "the backend's slot released", func() bool { return b.InFlight() == 0 })
	if !b.Up() || strings.Contains(logs.String(), "level=ERROR") {
		t.Errorf("the client's stall was held against the backend (up %v):\n%s", b.Up(), logs)
	}
	if line := readLog(t, logPath, 1)[0]; !strings.Contains(line, `"POST /upload HTTP/1.1" 408 `) {
		t.Errorf("log line %q, want a 408", line)
	}
}

func TestClientTimeoutSlowButSteadyBody(t *testing.T) {
	t.Parallel()
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "got %d bytes", len(body))
	}))
	t.Cleanup(backend.Close)
	_, addrs, _ := startLogged(t, limitsConfig(filepath.Join(t.TempDir(), "access.log"), backend.Listener.Addr().String()))

	// 10 bytes a tenth of the timeout apart: longer than the timeout in
	// all, never silent for as long.
	pr, pw := io.Pipe()
	go func() {
		for i := 0; i < 10; i++ {
			time.Sleep(clientTimeout / 10) // the client's pace, not synchronisation
			pw.Write([]byte{'x'})
		}
		pw.Close()
	}()
	resp, err := http.Post("http://"+addrs["f"]+"/", "text/plain", pr)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "got 10 bytes" {
		t.Errorf("%d %q, want the whole body through", resp.StatusCode, body)
	}
}

func TestClientTimeoutStalledReader(t *testing.T) {
	t.Parallel()
	logPath := filepath.Join(t.TempDir(), "access.log")
	writeErr := make(chan error, 1)
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		chunk := make([]byte, 64<<10)
		for {
			if _, err := w.Write(chunk); err != nil {
				writeErr <- err
				return
			}
		}
	}))
	t.Cleanup(backend.Close)
	s, addrs, _ := startLogged(t, limitsConfig(logPath, backend.Listener.Addr().String()))

	c := dialRaw(t, addrs["f"])
	c.SetReadBuffer(4096)
	c.SetDeadline(time.Now().Add(20 * time.Second))
	io.WriteString(c, "GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
	br := bufio.NewReaderSize(c, 4096)
	if line, err := br.ReadString('\n'); err != nil || !strings.HasPrefix(line, "HTTP/1.1 200") {
		t.Fatalf("status line %q, %v", line, err)
	}
	// The client reads no more; hipsterd's writes to it stall.
	stalled := time.Now()
	select {
	case <-writeErr:
	case <-time.After(clientTimeout + 10*time.Second):
		t.Fatal("the backend's response was not cut")
	}
	if d := time.Since(stalled); d < clientTimeout*3/4 {
		t.Errorf("cut after %v, before client-timeout", d)
	}
	b := s.backend("b")
	waitFor(t, "the backend's slot released", func() bool { return b.InFlight() == 0 })
	// hipsterd closed the client's connection (the kernel may still hold
	// bytes for it, sent as the client reads).
	waitFor(t, "the client's connection closed", func() bool { return s.openConns() == 0 })
	line := readLog(t, logPath, 1)[0]
	var n int64
	if _, err := fmt.Sscanf(line[strings.Index(line, `" `)+2:], "200 %d", &n); err != nil || n <= 0 {
		t.Errorf("log line %q, want 200 with the bytes sent", line)
	}
	if !b.Up() {
		t.Error("a client that stopped reading took the backend down")
	}
}

func TestClientTimeoutSpareStreams(t *testing.T) {
	t.Parallel()
	const events = 12
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for i := 0; i < events; i++ {
			fmt.Fprintf(w, "data: %d\n\n", i)
			w.(http.Flusher).Flush()
			time.Sleep(clientTimeout / 3) // the stream's pace
		}
	}))
	t.Cleanup(backend.Close)
	_, addrs, _ := startLogged(t, limitsConfig(filepath.Join(t.TempDir(), "access.log"), backend.Listener.Addr().String()))

	start := time.Now()
	resp, err := http.Get("http://" + addrs["f"] + "/events")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || strings.Count(string(body), "data: ") != events {
		t.Errorf("after %v: %d events, %v; want all %d", time.Since(start), strings.Count(string(body), "data: "), err, events)
	}
	if time.Since(start) < 3*clientTimeout {
		t.Errorf("the stream took %v, not longer than client-timeout", time.Since(start))
	}
}

func TestBadBodyIsTheClientsFault(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, req string
	}{
		{"malformed chunked", "POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n"},
		{"shorter than Content-Length", "POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			logPath := filepath.Join(t.TempDir(), "access.log")
			backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				io.Copy(io.Discard, r.Body)
			}))
			t.Cleanup(backend.Close)
			s, addrs, logs := startLogged(t, limitsConfig(logPath, backend.Listener.Addr().String()))
			const tries = 3
			for i := 0; i < tries; i++ {
				c := dialRaw(t, addrs["f"])
				c.SetDeadline(time.Now().Add(10 * time.Second))
				io.WriteString(c, tc.req)
				c.CloseWrite() // the body ends here
				resp, err := http.ReadResponse(bufio.NewReader(c), nil)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusBadRequest {
					t.Errorf("try %d: status %d, want 400", i, resp.StatusCode)
				}
			}
			b := s.backend("b")
			waitFor(t, "the backend's slots released", func() bool { return b.InFlight() == 0 })
			if !b.Up() {
				t.Errorf("bad bodies took the backend down (health-fall = 1)")
			}
			out := logs.String()
			if strings.Count(out, `level=DEBUG msg="bad request body"`) != tries || strings.Contains(out, "level=ERROR") || strings.Contains(out, "level=WARN") {
				t.Errorf("want %d debug lines and no error:\n%s", tries, out)
			}
			for _, line := range readLog(t, logPath, tries) {
				if !strings.Contains(line, `"POST /up HTTP/1.1" 400 `) {
					t.Errorf("log line %q, want a 400", line)
				}
			}
		})
	}
}
