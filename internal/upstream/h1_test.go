package upstream

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/textproto"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/hipsterd/hipsterd/internal/config"
	"github.com/hipsterd/hipsterd/internal/testutil"
)

// frontOf serves a one-backend pool in front of handler and counts the
// backend connections it accepts.
func frontOf(t *testing.T, handler http.HandlerFunc) (front *httptest.Server, backend *httptest.Server, conns *atomic.Int64) {
	t.Helper()
	conns = new(atomic.Int64)
	backend = httptest.NewUnstartedServer(handler)
	backend.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	backend.Start()
	t.Cleanup(backend.Close)
	p := NewPool([]*Backend{newBackend("b", backend.Listener.Addr().String(), 1)}, config.RoundRobin, false, discard)
	front = httptest.NewServer(p)
	t.Cleanup(front.Close)
	return front, backend, conns
}

func do(t *testing.T, method, url string, hdr http.Header) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, nil)
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(body)
}

func TestH1ReusesAndForwards(t *testing.T) {
	t.Parallel()
	front, _, conns := frontOf(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Got", r.Method+" "+r.RequestURI+" ua="+r.UserAgent()+" cl="+r.Header.Get("Content-Length")+" a="+r.Header.Get("X-A"))
		if r.URL.Path == "/chunked" {
			w.Header().Set("Trailer", "X-T")
			io.WriteString(w, "part1")
			w.(http.Flusher).Flush()
			io.WriteString(w, "part2")
			w.Header().Set("X-T", "end")
			return
		}
		io.WriteString(w, "hello")
	})
	for i := 0; i < 5; i++ {
		resp, body := do(t, "GET", front.URL+"/p%20q?x=1&y", http.Header{"X-A": {"1"}})
		if resp.StatusCode != 200 || body != "hello" {
			t.Fatalf("GET: %d %q", resp.StatusCode, body)
		}
		if got := resp.Header.Get("X-Got"); got != "GET /p%20q?x=1&y ua=Go-http-client/1.1 cl= a=1" {
			t.Fatalf("backend saw %q", got)
		}
	}
	resp, body := do(t, "HEAD", front.URL+"/", nil)
	if resp.StatusCode != 200 || body != "" || resp.ContentLength != 5 {
		t.Errorf("HEAD: %d %q length %d", resp.StatusCode, body, resp.ContentLength)
	}
	resp, _ = do(t, "DELETE", front.URL+"/x", nil)
	if got := resp.Header.Get("X-Got"); got != "DELETE /x ua=Go-http-client/1.1 cl= a=" {
		t.Errorf("DELETE: backend saw %q", got)
	}
	resp, body = do(t, "GET", front.URL+"/chunked", nil)
	if body != "part1part2" || resp.Trailer.Get("X-T") != "end" {
		t.Errorf("chunked: %q, trailer %q", body, resp.Trailer)
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("%d backend connections for sequential requests, want 1", n)
	}

	// No User-Agent from the client: none to the backend either.
	c, err := net.Dial("tcp", front.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET /raw HTTP/1.1\r\nHost: example.com\r\n\r\n")
	raw, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := raw.Header.Get("X-Got"); got != "GET /raw ua= cl= a=" {
		t.Errorf("no User-Agent: backend saw %q", got)
	}
}

func TestH1RetriesStaleConnection(t *testing.T) {
	t.Parallel()
	// A backend that answers one request per connection as if it kept the
	// connection alive, then closes it: a keep-alive timeout that strikes
	// while the connection sits idle in the pool.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var accepted, closed atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			if req, err := http.ReadRequest(bufio.NewReader(c)); err == nil {
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"+req.Method[:2])
			}
			c.Close()
			closed.Add(1)
		}
	}()
	b := newBackend("b", ln.Addr().String(), 1)
	front := httptest.NewServer(NewPool([]*Backend{b}, config.RoundRobin, false, discard))
	t.Cleanup(front.Close)
	// The pool notices a connection closed while it is idle, and drops it:
	// no request, replayable or not, is sent on it.
	methods := []string{"GET", "GET", "DELETE", "DELETE", "GET"}
	for i, method := range methods {
		if resp, body := do(t, method, front.URL, nil); resp.StatusCode != 200 || body != method[:2] {
			t.Fatalf("%s #%d: %d %q", method, i, resp.StatusCode, body)
		}
		testutil.Eventually(t, "the connection closed and out of the pool", func() bool {
			b.h1.mu.Lock()
			defer b.h1.mu.Unlock()
			return len(b.h1.idle) == 0 && closed.Load() == int64(i+1)
		})
	}
	if n := accepted.Load(); n != int64(len(methods)) {
		t.Errorf("%d backend connections, want %d", n, len(methods))
	}
	if n := b.InFlight(); n != 0 {
		t.Errorf("%d requests in flight after every response was read", n)
	}
}

func TestH1ConnectionCloseAndInterim(t *testing.T) {
	t.Parallel()
	front, _, conns := frontOf(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/close" {
			w.Header().Set("Connection", "close")
		}
		if r.URL.Path == "/hints" {
			w.Header().Set("Link", "</style.css>; rel=preload")
			w.WriteHeader(http.StatusEarlyHints)
		}
		io.WriteString(w, r.URL.Path)
	})
	for _, path := range []string{"/close", "/close", "/hints", "/hints"} {
		if resp, body := do(t, "GET", front.URL+path, nil); resp.StatusCode != 200 || body != path {
			t.Fatalf("%s: %d %q", path, resp.StatusCode, body)
		}
	}
	// Each Connection: close costs a connection; the last is kept.
	if n := conns.Load(); n != 3 {
		t.Errorf("%d backend connections, want 3", n)
	}
	// The 103 reaches the client, with its header.
	var hints []string
	trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
		hints = append(hints, fmt.Sprint(code, " ", h.Get("Link")))
		return nil
	}}
	req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(t.Context(), trace), "GET", front.URL+"/hints", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if len(hints) != 1 || hints[0] != "103 </style.css>; rel=preload" {
		t.Errorf("interim responses seen by the client: %q", hints)
	}
}

func TestReplayable(t *testing.T) {
	for _, tc := range []struct {
		method, key string
		want        bool
	}{
		{"GET", "", true}, {"HEAD", "", true}, {"OPTIONS", "", true}, {"TRACE", "", true},
		{"DELETE", "", false}, {"POST", "", false},
		{"DELETE", "Idempotency-Key", true}, {"POST", "X-Idempotency-Key", true},
	} {
		req := httptest.NewRequest(tc.method, "/", nil)
		if tc.key != "" {
			req.Header[tc.key] = []string{"k1"}
		}
		if got := replayable(req); got != tc.want {
			t.Errorf("%s with %q: replayable %v, want %v", tc.method, tc.key, got, tc.want)
		}
	}
}

func TestWriteRequest(t *testing.T) {
	req := httptest.NewRequest("OPTIONS", "http://example.com/a?b", nil)
	req.Header = http.Header{"X-Evil": {"a\r\nInjected: 1"}, "User-Agent": {""}}
	var sb strings.Builder
	w := bufio.NewWriter(&sb)
	writeRequest(w, req)
	w.Flush()
	want := "OPTIONS /a?b HTTP/1.1\r\nHost: example.com\r\nX-Evil: a  Injected: 1\r\n\r\n"
	if sb.String() != want {
		t.Errorf("got %q, want %q", sb.String(), want)
	}
}

// A kept-alive connection that the backend closes once it has read the next
// request, without answering: Pool.try sends a GET again to the same
// backend on a new connection, counted as a resend and not against the
// backend; a POST, which it may have acted on, fails with a 502.
func TestLostOnReusedConnection(t *testing.T) {
	t.Parallel()
	for _, method := range []string{"GET", "POST"} {
		t.Run(method, func(t *testing.T) {
			t.Parallel()
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ln.Close() })
			var accepted atomic.Int64
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					first := accepted.Add(1) == 1
					go func() {
						defer c.Close()
						br := bufio.NewReader(c)
						for n := 0; ; n++ {
							req, err := http.ReadRequest(br)
							if err != nil {
								return
							}
							io.Copy(io.Discard, req.Body)
							if first && n == 1 {
								return // read, never answered
							}
							io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
						}
					}()
				}
			}()
			b := newBackend("b", ln.Addr().String(), 1)
			front := httptest.NewServer(NewPool([]*Backend{b}, config.RoundRobin, false, discard))
			t.Cleanup(front.Close)
			send := func() (int, string) {
				var body io.Reader
				if method == "POST" {
					body = strings.NewReader("x")
				}
				req, _ := http.NewRequest(method, front.URL, body)
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				defer resp.Body.Close()
				b, _ := io.ReadAll(resp.Body)
				return resp.StatusCode, string(b)
			}
			if code, body := send(); code != 200 || body != "ok" {
				t.Fatalf("first: %d %q", code, body)
			}
			// A POST's connection may go back to the pool a moment after
			// its response, from the goroutine that sent its body.
			testutil.Eventually(t, "the first connection back in the pool", func() bool {
				b.h1.mu.Lock()
				defer b.h1.mu.Unlock()
				return len(b.h1.idle) == 1
			})
			code, _ := send()
			want, resends := 200, uint64(1)
			if method == "POST" {
				want, resends = 502, 0
			}
			if code != want || b.Counters().Resends.Load() != resends {
				t.Errorf("second on the lost connection: %d with %d resends, want %d with %d", code, b.Counters().Resends.Load(), want, resends)
			}
			if method == "GET" && !b.Up() {
				t.Errorf("a resent GET took the backend down")
			}
		})
	}
}
