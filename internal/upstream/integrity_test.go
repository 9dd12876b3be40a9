package upstream

// Tests of the backend path against backends that misbehave at the byte
// level: raw TCP servers, no net/http on the backend side.

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hipsterd/hipsterd/internal/config"
	"github.com/hipsterd/hipsterd/internal/exchange"
	"github.com/hipsterd/hipsterd/internal/testutil"
)

// rawBackend serves each connection with serve, which reads requests from
// br and writes answers to c as it likes.
func rawBackend(t *testing.T, serve func(c net.Conn, br *bufio.Reader)) string {
	return testutil.RawServer(t, func(c net.Conn) { serve(c, bufio.NewReader(c)) })
}

// answer writes a well-formed response whose body is the request's path.
func answer(c net.Conn, req *http.Request) {
	fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(req.URL.Path), req.URL.Path)
}

const injected = "HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nINJECTED"

func TestStrayBytesNeverReachAnotherClient(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		method string
		// misbehave answers the evil request, and returns what to send
		// in a separate write shortly after.
		misbehave func(c net.Conn, req *http.Request) (later string)
	}{
		{"body longer than Content-Length", "GET", func(c net.Conn, req *http.Request) string {
			answer(c, req)
			return injected
		}},
		{"body longer than Content-Length, one write", "GET", func(c net.Conn, req *http.Request) string {
			fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s%s", len(req.URL.Path), req.URL.Path, injected)
			return ""
		}},
		{"late 408 on an idle connection", "GET", func(c net.Conn, req *http.Request) string {
			answer(c, req)
			return "HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
		}},
		{"body after the answer to HEAD", "HEAD", func(c net.Conn, req *http.Request) string {
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n")
			return injected
		}},
		{"bytes after a 204", "GET", func(c net.Conn, req *http.Request) string {
			io.WriteString(c, "HTTP/1.1 204 No Content\r\n\r\n")
			return injected
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			strayed := make(chan struct{}, 1)
			addr := rawBackend(t, func(c net.Conn, br *bufio.Reader) {
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					if !strings.HasPrefix(req.URL.Path, "/evil") {
						answer(c, req)
						continue
					}
					later := tc.misbehave(c, req)
					if later != "" {
						time.Sleep(20 * time.Millisecond) // a separate write
						io.WriteString(c, later)
					}
					strayed <- struct{}{}
				}
			})
			logs := &testutil.Buffer{}
			b := NewBackend(config.Backend{Name: "liar", Address: addr, Weight: 1, ResponseTimeout: 5 * time.Second,
				Health: config.HealthCheck{Rise: 2, Fall: 3}}, nil, slog.New(slog.NewTextHandler(logs, nil)))
			front := httptest.NewServer(NewPool([]*Backend{b}, config.RoundRobin, false, discard))
			t.Cleanup(front.Close)
			t.Cleanup(b.Close)
			// Two clients, each with its own keep-alive connection to the
			// proxy, take turns.
			evil, other := &http.Client{Transport: &http.Transport{}}, &http.Client{Transport: &http.Transport{}}
			const rounds = 5
			for i := range rounds {
				req, _ := http.NewRequest(tc.method, fmt.Sprintf("%s/evil%d", front.URL, i), nil)
				resp, err := evil.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				<-strayed
				// Once the stray bytes are in, the pool has noticed them on
				// the idle connection and dropped it, with no request sent.
				testutil.Eventually(t, "the idle connection with stray bytes dropped", func() bool {
					b.h1.mu.Lock()
					defer b.h1.mu.Unlock()
					return len(b.h1.idle) == 0
				})
				for _, client := range []*http.Client{other, evil} {
					path := fmt.Sprintf("/mine%d-%p", i, client)
					resp, err := client.Get(front.URL + path)
					if err != nil {
						t.Fatal(err)
					}
					got, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 || string(got) != path {
						t.Fatalf("round %d: asked for %s, got %d %q", i, path, resp.StatusCode, got)
					}
				}
			}
			// The last connection may still be on its way back to the pool.
			deadline := time.Now().Add(5 * time.Second)
			for strings.Count(logs.String(), "Unsolicited response received on idle HTTP channel") < rounds && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
			if n := strings.Count(logs.String(), "Unsolicited response received on idle HTTP channel"); n != rounds {
				t.Errorf("%d warnings about stray bytes, want %d:\n%s", n, rounds, logs.String())
			}
			if n := strings.Count(logs.String(), "backend=liar"); n < rounds {
				t.Errorf("warnings do not name the backend:\n%s", logs.String())
			}
			if n := b.InFlight(); n != 0 {
				t.Errorf("%d in flight after every response", n)
			}
		})
	}
}

// A connection whose stray bytes came after the idle sweep looked (or
// where there is none) is refused at its next use, before any request.
func TestIdleConnectionCheckedBeforeUse(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for _, tc := range []struct {
		name    string
		send    string
		close   bool
		fit     bool
		warning bool
	}{
		{"quiet", "", false, true, false},
		{"stray bytes", injected, false, false, true},
		{"closed", "", true, false, false},
	} {
		logs := &testutil.Buffer{}
		tr := &h1Transport{log: slog.New(slog.NewTextHandler(logs, nil))}
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(s, tc.send)
		if tc.close {
			s.Close()
		}
		pc := tr.newConn(c)
		// The bytes take a moment to cross loopback.
		deadline := time.Now().Add(5 * time.Second)
		for pc.fit() != tc.fit && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		if got := pc.fit(); got != tc.fit {
			t.Errorf("%s: fit %v, want %v", tc.name, got, tc.fit)
		}
		if got := strings.Count(logs.String(), "Unsolicited") > 0; got != tc.warning {
			t.Errorf("%s: warned %v, want %v", tc.name, got, tc.warning)
		}
		c.Close()
		s.Close()
	}
}

func TestResponseHeaderLimit(t *testing.T) {
	t.Parallel()
	addr := rawBackend(t, func(c net.Conn, br *bufio.Reader) {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		io.Copy(io.Discard, req.Body)
		if req.URL.Path == "/big" {
			// 60 KiB of header fields: within the limit.
			fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nX-Big: %s\r\nContent-Length: 2\r\n\r\nok", strings.Repeat("a", 60<<10))
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\n")
		line := "X-Endless: " + strings.Repeat("b", 1000) + "\r\n"
		for range 100_000 { // 100 MB, unless the proxy hangs up first
			if _, err := io.WriteString(c, line); err != nil {
				return
			}
		}
	})
	logs := &testutil.Buffer{}
	b := NewBackend(config.Backend{Name: "endless", Address: addr, Weight: 1, ResponseTimeout: time.Minute,
		Health: config.HealthCheck{Rise: 2, Fall: 3}}, nil, discard)
	front := httptest.NewServer(NewPool([]*Backend{b}, config.RoundRobin, false, slog.New(slog.NewTextHandler(logs, nil))))
	defer front.Close()
	defer b.Close()
	// With a body and without: one limit.
	for _, method := range []string{"GET", "POST"} {
		start := time.Now()
		req, _ := http.NewRequest(method, front.URL+"/", nil)
		if method == "POST" {
			req, _ = http.NewRequest(method, front.URL+"/", strings.NewReader("x"))
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 502 {
			t.Errorf("%s: endless header: %d, want 502", method, resp.StatusCode)
		}
		if d := time.Since(start); d > 10*time.Second {
			t.Errorf("%s: took %v", method, d)
		}
		resp, err = http.Get(front.URL + "/big")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("%s: 60 KiB header: %d, want 200", method, resp.StatusCode)
		}
	}
	if n := strings.Count(logs.String(), "backend endless: response header larger than 65536 bytes"); n != 2 {
		t.Errorf("log names neither backend nor cause (%d lines):\n%s", n, logs.String())
	}
}

// recordingBackend answers every request with 204 and closes, and sends
// the bytes of each request head (and body) it read on got.
func recordingBackend(t *testing.T) (addr string, got <-chan string) {
	ch := make(chan string, 1)
	addr = rawBackend(t, func(c net.Conn, _ *bufio.Reader) {
		var raw bytes.Buffer
		br := bufio.NewReader(io.TeeReader(c, &raw))
		req, err := http.ReadRequest(br)
		if err != nil {
			ch <- "unreadable: " + err.Error()
			return
		}
		io.Copy(io.Discard, req.Body)
		ch <- raw.String()[:raw.Len()-br.Buffered()]
		io.WriteString(c, "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
	})
	return addr, ch
}

// TestRequestAsNetHTTPSendsIt sends the same requests through hipsterd's
// transport and net/http's, and compares what a raw backend receives.
func TestRequestAsNetHTTPSendsIt(t *testing.T) {
	t.Parallel()
	addr, got := recordingBackend(t)
	b := newBackend("rec", addr, 1)
	defer b.Close()
	std := &http.Transport{DisableCompression: true}
	defer std.CloseIdleConnections()
	for _, tc := range []struct {
		name, raw string
	}{
		{"absolute form, no path", "GET http://example.com HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t\r\n\r\n"},
		{"absolute form with query", "GET http://example.com?a=1&b=%20 HTTP/1.1\r\nHost: example.com\r\n\r\n"},
		{"OPTIONS *", "OPTIONS * HTTP/1.1\r\nHost: example.com\r\n\r\n"},
		{"raw query kept", "GET /p%2Fq/r?x=%zz&y=a+b;c HTTP/1.1\r\nHost: h\r\n\r\n"},
		{"empty query", "GET /p? HTTP/1.1\r\nHost: h\r\n\r\n"},
		{"DELETE without body", "DELETE /x HTTP/1.1\r\nHost: h\r\nX-B: 2\r\nX-A: 1\r\nX-A: 0\r\n\r\n"},
		{"spaces around values", "GET / HTTP/1.1\r\nHost: h\r\nX-Pad:   padded   \r\nAccept: */*\r\n\r\n"},
		{"POST with a length", "POST /form HTTP/1.1\r\nHost: h\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"},
		{"POST chunked", "POST /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"},
		{"POST chunked with trailer", "POST /up HTTP/1.1\r\nHost: h\r\nTrailer: X-Sum\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Sum: 5\r\n\r\n"},
		{"PUT empty", "PUT /e HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n"},
		{"Host differs from URL", "GET http://a.example/x HTTP/1.1\r\nHost: b.example\r\n\r\n"},
	} {
		sent := func(rt func(*http.Request) (*http.Response, error)) string {
			in, err := http.ReadRequest(bufio.NewReader(strings.NewReader(tc.raw)))
			if err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
			// What ReverseProxy hands its transport.
			out := in.Clone(context.Background())
			out.RequestURI = ""
			if in.ContentLength == 0 {
				out.Body = nil
			}
			out.URL.Scheme, out.URL.Host = "http", addr
			if _, ok := out.Header["User-Agent"]; !ok {
				out.Header.Set("User-Agent", "")
			}
			resp, err := rt(out)
			if err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			return <-got
		}
		mine := sent(func(r *http.Request) (*http.Response, error) { return b.h1.roundTrip(r, b.tryTake()) })
		theirs := sent(std.RoundTrip)
		if mine != theirs {
			t.Errorf("%s:\nhipsterd sent %q\nnet/http sent %q", tc.name, mine, theirs)
		}
	}
}

// An idle connection outlives the response deadline of its last exchange.
// The timeout is wide against each answer under -race on a loaded machine.
func TestIdleConnectionKeepsNoDeadline(t *testing.T) {
	t.Parallel()
	var conns atomic.Int64
	addr := rawBackend(t, func(c net.Conn, br *bufio.Reader) {
		conns.Add(1)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			answer(c, req)
		}
	})
	b := NewBackend(config.Backend{Name: "b", Address: addr, Weight: 1, ResponseTimeout: time.Second,
		Health: config.HealthCheck{Rise: 2, Fall: 3}}, nil, discard)
	defer b.Close()
	front := httptest.NewServer(NewPool([]*Backend{b}, config.RoundRobin, false, discard))
	defer front.Close()
	for i := range 2 {
		if i == 1 {
			time.Sleep(1500 * time.Millisecond) // idle past the old deadline
		}
		resp, err := http.Get(front.URL + "/x")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("request %d: %d", i, resp.StatusCode)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("%d backend connections, want 1: the idle one was thrown away", n)
	}
}

// The response timeout of a request on a kept connection fires, never
// sooner than response-timeout, whatever deadline the connection's earlier
// exchanges left behind: for any change that carries deadlines across
// exchanges to spare timer updates.
func TestResponseTimeoutOnKeptConnection(t *testing.T) {
	t.Parallel()
	const timeout = 400 * time.Millisecond
	var conns atomic.Int64
	addr := rawBackend(t, func(c net.Conn, br *bufio.Reader) {
		conns.Add(1)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			if req.URL.Path == "/silent" {
				io.Copy(io.Discard, br) // never answers
				return
			}
			answer(c, req)
		}
	})
	b := NewBackend(config.Backend{Name: "b", Address: addr, Weight: 1, ResponseTimeout: timeout,
		Health: config.HealthCheck{Rise: 2, Fall: 3}}, nil, discard)
	defer b.Close()
	front := httptest.NewServer(NewPool([]*Backend{b}, config.RoundRobin, false, discard))
	defer front.Close()
	for _, path := range []string{"/a", "/b"} {
		resp, err := http.Get(front.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("%s: %d", path, resp.StatusCode)
		}
	}
	start := time.Now()
	resp, err := http.Get(front.URL + "/silent")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	took := time.Since(start)
	if resp.StatusCode != http.StatusGatewayTimeout {
		t.Fatalf("silent backend: %d, want 504", resp.StatusCode)
	}
	if took < timeout {
		t.Errorf("504 after %v, sooner than response-timeout %v", took, timeout)
	}
	// Plus the machine's slack.
	if limit := timeout + 300*time.Millisecond; took > limit {
		t.Errorf("504 after %v, later than %v", took, limit)
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("%d backend connections, want 1: the requests did not share the kept one", n)
	}
}

// A TLS handshake that fails is a failed connect, for requests as for
// tunnels: the next backend gets the request, and the failure counts.
func TestTLSHandshakeFailureIsAConnectFailure(t *testing.T) {
	t.Parallel()
	notTLS := rawBackend(t, func(c net.Conn, br *bufio.Reader) {
		io.WriteString(c, "HTTP/1.1 400 Bad Request\r\n\r\n")
	})
	good := rawBackend(t, func(c net.Conn, br *bufio.Reader) {
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			io.Copy(io.Discard, req.Body)
			answer(c, req)
		}
	})
	bad := NewBackend(config.Backend{Name: "bad", Address: notTLS, TLS: true, Weight: 1,
		Health: config.HealthCheck{Rise: 2, Fall: 3}}, nil, discard)
	ok := newBackend("ok", good, 1)
	p := NewPool([]*Backend{bad, ok}, config.RoundRobin, false, discard)
	front := httptest.NewServer(p)
	defer front.Close()
	for i := range 6 {
		resp, err := http.Post(front.URL+"/p", "text/plain", strings.NewReader("body"))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("POST %d: %d", i, resp.StatusCode)
		}
	}
	if bad.Health().Up {
		t.Error("a backend whose TLS handshake failed 3 times is still up")
	}
}

// Every path that takes a slot gives it back: after answers, errors,
// timeouts, client aborts, bad bodies and tunnels, nothing is in flight.
func TestSlotsAllComeBack(t *testing.T) {
	t.Parallel()
	addr := rawBackend(t, func(c net.Conn, br *bufio.Reader) {
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			io.Copy(io.Discard, req.Body)
			switch req.URL.Path {
			case "/garbage":
				io.WriteString(c, "NOT HTTP\r\n\r\n")
				return
			case "/reset":
				c.(*net.TCPConn).SetLinger(0)
				return
			case "/slow":
				time.Sleep(300 * time.Millisecond) // past the response timeout
			case "/cut":
				// Closes mid-body.
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
				return
			case "/ws":
				io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
				io.Copy(c, br) // echo until closed
				return
			}
			answer(c, req)
		}
	})
	dead := testutil.RefusingAddr(t)
	b := NewBackend(config.Backend{Name: "b", Address: addr, Weight: 1, ResponseTimeout: 100 * time.Millisecond,
		Health: config.HealthCheck{Rise: 2, Fall: 100}}, nil, discard)
	d := NewBackend(config.Backend{Name: "d", Address: dead, Weight: 1, Health: config.HealthCheck{Rise: 2, Fall: 100}}, nil, discard)
	p := NewPool([]*Backend{b, d}, config.LeastConn, false, discard)
	var tunnels sync.WaitGroup
	front := httptest.NewServer((&exchange.Frontend{}).Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/ws" {
			p.ServeHTTP(w, r)
			return
		}
		exchange.FromContext(r.Context()).Handoff = func(resp *http.Response, bc net.Conn, early []byte, slot exchange.Releaser) error {
			cc, _, err := http.NewResponseController(w).Hijack()
			if err != nil {
				return err
			}
			tunnels.Add(1)
			io.WriteString(cc, "HTTP/1.1 101 Switching Protocols\r\n\r\n")
			go func() {
				defer tunnels.Done()
				defer slot.Release()
				go func() {
					io.Copy(bc, cc)
					bc.Close()
				}()
				io.Copy(cc, bc)
				cc.Close()
			}()
			return nil
		}
		p.ServeHTTP(w, r)
	})))
	defer front.Close()
	var wg sync.WaitGroup
	for i := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			switch i % 8 {
			case 0, 1, 2, 3, 4:
				path := []string{"/ok", "/garbage", "/reset", "/slow", "/cut"}[i%8]
				if resp, err := http.Get(front.URL + path); err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			case 5:
				// A client that leaves mid-request.
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
				defer cancel()
				req, _ := http.NewRequestWithContext(ctx, "GET", front.URL+"/slow", nil)
				if resp, err := http.DefaultClient.Do(req); err == nil {
					resp.Body.Close()
				}
			case 6:
				// A body shorter than it said.
				c, err := net.Dial("tcp", front.Listener.Addr().String())
				if err != nil {
					return
				}
				io.WriteString(c, "POST /ok HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc")
				c.(*net.TCPConn).CloseWrite()
				io.Copy(io.Discard, c)
				c.Close()
			case 7:
				c, err := net.Dial("tcp", front.Listener.Addr().String())
				if err != nil {
					return
				}
				io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
				br := bufio.NewReader(c)
				if resp, err := http.ReadResponse(br, nil); err == nil && resp.StatusCode == 101 {
					io.WriteString(c, "ping")
					buf := make([]byte, 4)
					io.ReadFull(br, buf)
				}
				c.Close()
			}
		}()
	}
	wg.Wait()
	front.CloseClientConnections()
	tunnels.Wait()
	testutil.Eventually(t, "every slot back", func() bool { return b.InFlight() == 0 && d.InFlight() == 0 })
}
