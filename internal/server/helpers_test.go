package server

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/hipsterd/hipsterd/internal/config"
	"github.com/hipsterd/hipsterd/internal/testcert"
	"github.com/hipsterd/hipsterd/internal/testutil"
)

// start runs a server for the INI text src and returns it with the address
// of each frontend. Every frontend should bind port 0.
func start(t *testing.T, src string) (*Server, map[string]string) {
	t.Helper()
	return startWith(t, src, slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})))
}

// startQuiet is start with the server's log discarded, for tests and
// benchmarks that count allocations or time, which a log would add to.
func startQuiet(tb testing.TB, src string) (*Server, map[string]string) {
	tb.Helper()
	return startWith(tb, src, slog.New(slog.NewTextHandler(io.Discard, nil)))
}

// startWith is start with the server logging to log.
func startWith(tb testing.TB, src string, log *slog.Logger) (*Server, map[string]string) {
	tb.Helper()
	cfg, err := config.Parse("test.ini", []byte(src))
	if err != nil {
		tb.Fatal(err)
	}
	s := New(log)
	if err := s.Start(cfg); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Shutdown(ctx)
	})
	addrs := map[string]string{}
	for name, a := range s.Addrs() {
		addrs[name] = a.String()
	}
	return s, addrs
}

// testWriter sends the server's log to the test's log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// namedBackend answers every request with its name.
func namedBackend(t *testing.T, name string) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, name)
	}))
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

func get(t *testing.T, url, host string) (int, string) {
	t.Helper()
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if host != "" {
		req.Host = host
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(body)
}

// rawExchange sends req as it is on a new connection and returns the
// response.
func rawExchange(t *testing.T, addr, req string) *http.Response {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// echoServer is a WebSocket backend echoing every message, reporting on
// closed when a connection's read loop ends.
func echoServer(t *testing.T) (addr string, closed chan error) {
	t.Helper()
	closed = make(chan error, 16)
	up := websocket.Upgrader{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/refuse" {
			http.Error(w, "go away", http.StatusForbidden)
			return
		}
		c, err := up.Upgrade(w, r, http.Header{"X-Backend-Saw-Xff": {r.Header.Get("X-Forwarded-For")}})
		if err != nil {
			return
		}
		defer c.Close()
		if r.URL.Path == "/hangup" {
			c.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, "bye"))
			return
		}
		for {
			typ, msg, err := c.ReadMessage()
			if err != nil {
				closed <- err
				return
			}
			if err := c.WriteMessage(typ, msg); err != nil {
				closed <- err
				return
			}
		}
	}))
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String(), closed
}

// readLog waits until the access log at path has n lines and returns them.
func readLog(t *testing.T, path string, n int) []string {
	t.Helper()
	var lines []string
	testutil.Eventually(t, fmt.Sprintf("%d lines in %s", n, filepath.Base(path)), func() bool {
		data, _ := os.ReadFile(path)
		lines = strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
		if len(data) == 0 {
			lines = nil
		}
		return len(lines) >= n
	})
	return lines
}

// clientPath is one way a client reaches a frontend: over TLS or not,
// behind a PROXY header or not.
type clientPath struct {
	name        string
	tls, header bool
}

var clientPaths = []clientPath{
	{"plain", false, false},
	{"tls", true, false},
	{"accept-proxy", false, true},
	{"tls, accept-proxy", true, true},
}

// frontend returns the frontend lines that take clients this way; cert and
// key are the certificate's files.
func (p clientPath) frontend(cert, key string) string {
	var s string
	if p.tls {
		s += fmt.Sprintf("https = true\ncertfile = %s\nkeyfile = %s\n", cert, key)
	}
	if p.header {
		s += "accept-proxy = true\naccept-proxy-from = 127.0.0.0/8\n"
	}
	return s
}

// dial connects to addr this way, for HTTP/1.1, and returns the connection
// with the client address hipsterd sees (the PROXY header's source).
func (p clientPath) dial(t *testing.T, addr, cert string) (net.Conn, string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(testutil.Patience))
	src := c.LocalAddr().String()
	if p.header {
		io.WriteString(c, "PROXY TCP4 192.0.2.1 192.0.2.2 1234 80\r\n")
		src = "192.0.2.1:1234"
	}
	if p.tls {
		c = tls.Client(c, &tls.Config{RootCAs: testcert.Pool(t, cert), ServerName: "localhost", NextProtos: []string{"http/1.1"}})
	}
	return c, src
}
