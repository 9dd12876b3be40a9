package upstream

// Attacks on the backend path by hostile backends and clients, as raw TCP
// peers on loopback: each exchange must end, with the status the README
// gives, every slot and connection must come back, and the backend must
// get each client request once, well framed.

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
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hipsterd/hipsterd/internal/config"
	"github.com/hipsterd/hipsterd/internal/testcert"
	"github.com/hipsterd/hipsterd/internal/testutil"
)

// hostile is a raw backend and a proxy in front of it.
type hostile struct {
	b        *Backend
	front    *httptest.Server
	accepted atomic.Int64 // connections the backend accepted
	requests atomic.Int64 // request heads it read
	logs     *testutil.Buffer
}

// newHostile starts a raw backend that reads each request head and hands
// it to serve, which answers as it likes and returns false to close the
// connection; cfg adjusts the backend's section.
func newHostile(t *testing.T, cfg func(*config.Backend), serve func(c net.Conn, br *bufio.Reader, req *http.Request) bool) *hostile {
	t.Helper()
	h := &hostile{logs: &testutil.Buffer{}}
	addr := rawBackend(t, func(c net.Conn, br *bufio.Reader) {
		h.accepted.Add(1)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			h.requests.Add(1)
			if !serve(c, br, req) {
				return
			}
		}
	})
	bc := config.Backend{Name: "hostile", Address: addr, Weight: 1, ResponseTimeout: 5 * time.Second,
		Health: config.HealthCheck{Rise: 2, Fall: 1000}}
	if cfg != nil {
		cfg(&bc)
	}
	h.b = NewBackend(bc, nil, slog.New(slog.NewTextHandler(h.logs, nil)))
	h.front = httptest.NewServer(NewPool([]*Backend{h.b}, config.RoundRobin, false, discard))
	t.Cleanup(h.front.Close)
	t.Cleanup(h.b.Close)
	return h
}

// settled waits until nothing is in flight or queued on the backend.
func (h *hostile) settled(t *testing.T) {
	t.Helper()
	testutil.Eventually(t, "no request in flight or queued", func() bool { return h.b.InFlight() == 0 && h.b.Queued() == 0 })
}

// raw sends msg to the proxy on a new connection and returns the response
// it reads back (the connection is closed for writing after msg).
func (h *hostile) raw(t *testing.T, msg string) (*http.Response, string) {
	t.Helper()
	c, err := net.Dial("tcp", h.front.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, msg)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("reading the response: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	return resp, string(body)
}

func okAnswer(c net.Conn, body string) {
	fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
}

// slowBody is a request body sent in pieces, with a pause before each.
type slowBody struct {
	piece []byte
	n     int
	pause time.Duration
}

func (s *slowBody) Read(p []byte) (int, error) {
	if s.n == 0 {
		return 0, io.EOF
	}
	time.Sleep(s.pause) // a slow client
	s.n--
	return copy(p, s.piece), nil
}

// A backend that closes while the body comes: 502, the request is not
// sent again (it has a body), and nothing stays in flight.
func TestRedteamBackendClosesMidBody(t *testing.T) {
	t.Parallel()
	for _, chunked := range []bool{false, true} {
		t.Run(fmt.Sprintf("chunked=%v", chunked), func(t *testing.T) {
			t.Parallel()
			h := newHostile(t, nil, func(c net.Conn, br *bufio.Reader, req *http.Request) bool {
				io.CopyN(io.Discard, req.Body, 1000)
				c.(*net.TCPConn).SetLinger(0)
				return false
			})
			body := strings.Repeat("x", 4<<20)
			var r io.Reader = strings.NewReader(body)
			if chunked {
				r = io.MultiReader(r) // no length known
			}
			req, _ := http.NewRequest("PUT", h.front.URL+"/up", r)
			req.Header.Set("Idempotency-Key", "k") // replayable, but for its body
			resp, err := http.DefaultClient.Do(req)
			if err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusBadGateway {
					t.Errorf("status %d, want 502", resp.StatusCode)
				}
			}
			h.settled(t)
			if n := h.requests.Load(); n != 1 {
				t.Errorf("the backend got the request %d times", n)
			}
		})
	}
}

// A backend that promises more body than it sends: the client's response
// is cut, the connection is not reused, and the next request is answered.
func TestRedteamContentLengthLongerThanBody(t *testing.T) {
	t.Parallel()
	h := newHostile(t, nil, func(c net.Conn, br *bufio.Reader, req *http.Request) bool {
		if req.URL.Path == "/liar" {
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten..")
			return false
		}
		okAnswer(c, req.URL.Path)
		return true
	})
	// The client sees its connection closed: before the head, which
	// net/http's server had not flushed yet, or within the body.
	if resp, err := http.Get(h.front.URL + "/liar"); err == nil {
		if _, err := io.ReadAll(resp.Body); err == nil {
			t.Error("a body cut short reached the client as complete")
		}
		resp.Body.Close()
	}
	_, got := do(t, "GET", h.front.URL+"/next", nil)
	if got != "/next" {
		t.Errorf("next request got %q", got)
	}
	h.settled(t)
}

// Interim responses without end, with and without a request body: 502.
func TestRedteam1xxFlood(t *testing.T) {
	t.Parallel()
	h := newHostile(t, nil, func(c net.Conn, br *bufio.Reader, req *http.Request) bool {
		io.Copy(io.Discard, req.Body)
		for range 50 {
			if _, err := io.WriteString(c, "HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n"); err != nil {
				return false
			}
		}
		okAnswer(c, "late")
		return true
	})
	for _, method := range []string{"GET", "POST"} {
		var body io.Reader
		if method == "POST" {
			body = strings.NewReader("some body")
		}
		req, _ := http.NewRequest(method, h.front.URL+"/", body)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadGateway {
			t.Errorf("%s: status %d after a flood of 103s, want 502", method, resp.StatusCode)
		}
	}
	h.settled(t)
}

// A 101 to a request that asked for no upgrade, or to an upgrade request
// but without naming the protocol: 502, and the connection is not reused.
func TestRedteamUnasked101(t *testing.T) {
	t.Parallel()
	h := newHostile(t, nil, func(c net.Conn, br *bufio.Reader, req *http.Request) bool {
		if req.URL.Path == "/next" {
			okAnswer(c, "/next")
			return true
		}
		io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\r\n"+injected)
		return true
	})
	for _, msg := range []string{
		"GET /plain HTTP/1.1\r\nHost: h\r\n\r\n",
		"POST /plain HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc",
		"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
	} {
		resp, _ := h.raw(t, msg)
		if resp.StatusCode != http.StatusBadGateway {
			t.Errorf("%q: status %d, want 502", msg, resp.StatusCode)
		}
		resp, got := h.raw(t, "GET /next HTTP/1.1\r\nHost: h\r\n\r\n")
		if resp.StatusCode != 200 || got != "/next" {
			t.Errorf("after %q, the next request got %d %q", msg, resp.StatusCode, got)
		}
	}
	h.settled(t)
}

// A 304 with a body, in the same write: the body is stray, never an answer.
func TestRedteam304WithBody(t *testing.T) {
	t.Parallel()
	h := newHostile(t, nil, func(c net.Conn, br *bufio.Reader, req *http.Request) bool {
		if req.URL.Path == "/cached" {
			io.WriteString(c, "HTTP/1.1 304 Not Modified\r\nContent-Length: 59\r\n\r\n"+injected)
			return true
		}
		okAnswer(c, req.URL.Path)
		return true
	})
	client := &http.Client{Transport: &http.Transport{}}
	for i := range 5 {
		resp, err := client.Get(h.front.URL + "/cached")
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 304 {
			t.Fatalf("status %d, want 304", resp.StatusCode)
		}
		path := fmt.Sprintf("/mine%d", i)
		resp, err = client.Get(h.front.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(got) != path {
			t.Fatalf("asked for %s, got %d %q", path, resp.StatusCode, got)
		}
	}
	h.settled(t)
}

// A backend answers before the request body is all sent: its answer
// reaches the client, whole, and the connection (which holds part of a
// body) is never reused.
func TestRedteamEarlyResponse(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		status int
		keep   bool // the backend keeps reading the body after answering
	}{
		{"413 and close", 413, false},
		{"200 and keep reading", 200, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var bodies sync.Map
			h := newHostile(t, nil, func(c net.Conn, br *bufio.Reader, req *http.Request) bool {
				if req.URL.Path == "/next" {
					io.Copy(io.Discard, req.Body)
					okAnswer(c, "/next")
					return true
				}
				io.CopyN(io.Discard, req.Body, 100)
				fmt.Fprintf(c, "HTTP/1.1 %d %s\r\nContent-Length: 5\r\n", tc.status, http.StatusText(tc.status))
				if !tc.keep {
					io.WriteString(c, "Connection: close\r\n\r\nearly")
					return false
				}
				io.WriteString(c, "\r\nearly")
				n, _ := io.Copy(io.Discard, req.Body)
				bodies.Store(n, true)
				return true
			})
			req, _ := http.NewRequest("POST", h.front.URL+"/up", &slowBody{piece: make([]byte, 64<<10), n: 64, pause: time.Millisecond})
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				// The client may fail writing its body once answered.
				t.Logf("client: %v", err)
			} else {
				got, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != tc.status || string(got) != "early" {
					t.Errorf("got %d %q, want %d %q", resp.StatusCode, got, tc.status, "early")
				}
			}
			h.settled(t)
			_, got := do(t, "GET", h.front.URL+"/next", nil)
			if got != "/next" {
				t.Errorf("next request got %q", got)
			}
		})
	}
}

// A chunked upload with trailers reaches the backend with them, as one
// well-framed request.
func TestRedteamChunkedTrailers(t *testing.T) {
	t.Parallel()
	got := make(chan string, 2)
	h := newHostile(t, nil, func(c net.Conn, br *bufio.Reader, req *http.Request) bool {
		b, err := io.ReadAll(req.Body)
		got <- fmt.Sprintf("%s %q %v %q", req.Method, b, err, req.Trailer.Get("X-Sum"))
		okAnswer(c, "ok")
		return true
	})
	resp, body := h.raw(t, "POST /t HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n"+
		"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: abc\r\n\r\n")
	if resp.StatusCode != 200 || body != "ok" {
		t.Errorf("got %d %q", resp.StatusCode, body)
	}
	if g, want := <-got, `POST "hello world" <nil> "abc"`; g != want {
		t.Errorf("backend got %s, want %s", g, want)
	}
	h.settled(t)
	if n := h.requests.Load(); n != 1 {
		t.Errorf("backend read %d requests, want 1", n)
	}
}

// A client whose body is shorter than its Content-Length gets 400; the
// backend's connection, which holds a truncated request, is closed, never
// reused for another request.
func TestRedteamShortClientBody(t *testing.T) {
	t.Parallel()
	ended := make(chan error, 1)
	h := newHostile(t, nil, func(c net.Conn, br *bufio.Reader, req *http.Request) bool {
		if req.URL.Path == "/next" {
			okAnswer(c, "/next")
			return true
		}
		_, err := io.Copy(io.Discard, req.Body)
		ended <- err
		if err == nil {
			okAnswer(c, "whole")
		}
		return err == nil
	})
	c, err := net.Dial("tcp", h.front.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "POST /short HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\nonly ten..")
	c.(*net.TCPConn).CloseWrite()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("status %d, want 400", resp.StatusCode)
	}
	select {
	case err := <-ended:
		if err == nil {
			t.Error("the backend read a whole body the client never sent")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the backend's connection stays open with half a request")
	}
	_, got := do(t, "GET", h.front.URL+"/next", nil)
	if got != "/next" {
		t.Errorf("next request got %q", got)
	}
	h.settled(t)
}

// A client that leaves mid-upload or mid-download: the backend's
// connection is closed and the slot comes back.
func TestRedteamClientLeaves(t *testing.T) {
	t.Parallel()
	ended := make(chan struct{}, 2)
	h := newHostile(t, nil, func(c net.Conn, br *bufio.Reader, req *http.Request) bool {
		defer func() { ended <- struct{}{} }()
		if req.URL.Path == "/up" {
			io.Copy(io.Discard, req.Body)
			return false
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
		chunk := "8000\r\n" + strings.Repeat("d", 0x8000) + "\r\n"
		for {
			if _, err := io.WriteString(c, chunk); err != nil {
				return false
			}
		}
	})
	up, err := net.Dial("tcp", h.front.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(up, "POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 1000000\r\n\r\n"+strings.Repeat("u", 5000))
	testutil.Eventually(t, "the upload reaching the backend", func() bool { return h.requests.Load() == 1 })
	up.Close()
	select {
	case <-ended:
	case <-time.After(10 * time.Second):
		t.Fatal("the backend's connection outlives the client that left mid-upload")
	}

	down, err := net.Dial("tcp", h.front.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(down, "GET /down HTTP/1.1\r\nHost: h\r\n\r\n")
	io.ReadFull(down, make([]byte, 100000))
	down.Close()
	select {
	case <-ended:
	case <-time.After(10 * time.Second):
		t.Fatal("the backend's connection outlives the client that left mid-download")
	}
	h.settled(t)
}

// response-timeout counts from the end of the request body: a slow upload
// answered at once is not a 504; a backend silent after the body is. The
// timeout is wide against the answer's "at once" under -race on a loaded
// machine.
func TestRedteamResponseTimeoutAfterBody(t *testing.T) {
	t.Parallel()
	h := newHostile(t, func(c *config.Backend) { c.ResponseTimeout = time.Second },
		func(c net.Conn, br *bufio.Reader, req *http.Request) bool {
			n, _ := io.Copy(io.Discard, req.Body)
			if req.URL.Path == "/silent" {
				io.Copy(io.Discard, br)
				return false
			}
			okAnswer(c, fmt.Sprint(n))
			return true
		})
	req, _ := http.NewRequest("POST", h.front.URL+"/slow", &slowBody{piece: []byte("0123456789"), n: 15, pause: 100 * time.Millisecond})
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(got) != "150" {
		t.Errorf("slow upload: %d %q, want 200 \"150\"", resp.StatusCode, got)
	}
	start := time.Now()
	req, _ = http.NewRequest("POST", h.front.URL+"/silent", &slowBody{piece: []byte("0123456789"), n: 10, pause: 100 * time.Millisecond})
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusGatewayTimeout {
		t.Errorf("silent backend: %d, want 504", resp.StatusCode)
	}
	if d := time.Since(start); d < 1500*time.Millisecond {
		t.Errorf("504 after %v: the timeout ran while the body was sent", d)
	}
	h.settled(t)
}

// Requests queued at max-connections whose clients leave: the queue
// empties, none is sent, and every slot comes back. (Only requests without
// a body: net/http's server does not notice a client leaving while its
// request body is unread, so a queued POST whose client left is still
// sent when its turn comes, as HAProxy does without abortonclose.)
func TestRedteamQueuedClientsLeave(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	h := newHostile(t, func(c *config.Backend) { c.MaxConnections = 1; c.QueueTimeout = 30 * time.Second },
		func(c net.Conn, br *bufio.Reader, req *http.Request) bool {
			if req.URL.Path == "/hold" {
				<-release
			}
			okAnswer(c, req.URL.Path)
			return true
		})
	first := make(chan int, 1)
	go func() {
		resp, err := http.Get(h.front.URL + "/hold")
		if err != nil {
			first <- 0
			return
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		first <- resp.StatusCode
	}()
	testutil.Eventually(t, "the first request at the backend", func() bool { return h.requests.Load() == 1 })
	const n = 5
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequestWithContext(ctx, "GET", fmt.Sprintf("%s/q%d", h.front.URL, i), nil)
			if resp, err := http.DefaultClient.Do(req); err == nil {
				resp.Body.Close()
			}
		}()
	}
	testutil.Eventually(t, "the queue filling", func() bool { return h.b.Queued() == n })
	cancel()
	wg.Wait()
	testutil.Eventually(t, "the queue emptying", func() bool { return h.b.Queued() == 0 })
	close(release)
	if code := <-first; code != 200 {
		t.Errorf("first request: %d", code)
	}
	h.settled(t)
	if r := h.requests.Load(); r != 1 {
		t.Errorf("the backend got %d requests, want 1: queued requests whose clients left were sent", r)
	}
}

// tlsBackend serves each TLS connection with serve, and returns a backend
// that trusts it.
func tlsBackend(t *testing.T, logs io.Writer, serve func(c net.Conn, br *bufio.Reader)) *Backend {
	t.Helper()
	certFile, keyFile := testcert.Files(t, t.TempDir(), "localhost")
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	ln := tls.NewListener(testutil.Listen(t), &tls.Config{Certificates: []tls.Certificate{cert}})
	testutil.Serve(ln, func(c net.Conn) {
		defer c.Close()
		serve(c, bufio.NewReader(c))
	})
	caPEM, err := os.ReadFile(certFile)
	if err != nil {
		t.Fatal(err)
	}
	b := NewBackend(config.Backend{Name: "tlsliar", Address: ln.Addr().String(), TLS: true, CAFile: certFile,
		TLSServerName: "localhost", Weight: 1, ResponseTimeout: 5 * time.Second,
		Health: config.HealthCheck{Rise: 2, Fall: 1000}}, caPEM, slog.New(slog.NewTextHandler(logs, nil)))
	t.Cleanup(b.Close)
	return b
}

// idleConns is the number of idle connections of b's pool.
func idleConns(b *Backend) int {
	b.h1.mu.Lock()
	defer b.h1.mu.Unlock()
	return len(b.h1.idle)
}

// A TLS backend that sends bytes after its responses: the idle connection
// is dropped, and no client gets them.
func TestRedteamTLSStrayBytes(t *testing.T) {
	t.Parallel()
	strayed := make(chan struct{}, 1)
	logs := &testutil.Buffer{}
	b := tlsBackend(t, logs, func(c net.Conn, br *bufio.Reader) {
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			answer(c, req)
			if strings.HasPrefix(req.URL.Path, "/evil") {
				time.Sleep(20 * time.Millisecond) // a separate write
				io.WriteString(c, injected)
				strayed <- struct{}{}
			}
		}
	})
	front := httptest.NewServer(NewPool([]*Backend{b}, config.RoundRobin, false, discard))
	t.Cleanup(front.Close)
	evil, other := &http.Client{Transport: &http.Transport{}}, &http.Client{Transport: &http.Transport{}}
	for i := range 5 {
		resp, err := evil.Get(fmt.Sprintf("%s/evil%d", front.URL, i))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		<-strayed
		testutil.Eventually(t, "the idle connection with stray bytes dropped", func() bool { return idleConns(b) == 0 })
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
	if n := strings.Count(logs.String(), "Unsolicited response received on idle HTTP channel"); n != 5 {
		t.Errorf("%d warnings about stray bytes, want 5", n)
	}
	testutil.Eventually(t, "every slot back", func() bool { return b.InFlight() == 0 })
}

// A TLS backend that closes its connections once idle (its keep-alive
// timeout): the pool notices, and a request with a body, which may not be
// sent twice, does not go out on a dead connection.
func TestRedteamTLSIdleClose(t *testing.T) {
	t.Parallel()
	b := tlsBackend(t, io.Discard, func(c net.Conn, br *bufio.Reader) {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		io.Copy(io.Discard, req.Body)
		answer(c, req)
	})
	front := httptest.NewServer(NewPool([]*Backend{b}, config.RoundRobin, false, discard))
	t.Cleanup(front.Close)
	for i := range 5 {
		resp, err := http.Post(fmt.Sprintf("%s/p%d", front.URL, i), "text/plain", strings.NewReader("body"))
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if want := fmt.Sprintf("/p%d", i); resp.StatusCode != 200 || string(got) != want {
			t.Fatalf("POST %d: %d %q, want 200 %q", i, resp.StatusCode, got, want)
		}
		testutil.Eventually(t, "the closed idle connection dropped", func() bool { return idleConns(b) == 0 })
	}
}

// A backend that takes the request head and then neither reads the body
// nor answers: the upload stalls on a full socket buffer. The exchange must
// still end with a 504 once response-timeout has passed without progress,
// not hang for as long as the backend likes, holding a slot.
func TestRedteamBackendStopsReadingBody(t *testing.T) {
	t.Parallel()
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) })
	h := newHostile(t, func(c *config.Backend) { c.ResponseTimeout = 300 * time.Millisecond },
		func(c net.Conn, br *bufio.Reader, req *http.Request) bool {
			<-stop
			return false
		})
	client := &http.Client{Timeout: 10 * time.Second}
	req, _ := http.NewRequest("POST", h.front.URL+"/up", io.LimitReader(zeros{}, 1<<30))
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("the exchange did not end: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusGatewayTimeout {
		t.Errorf("status %d, want 504", resp.StatusCode)
	}
	h.settled(t)
}

// A chunked upload whose client pauses longer than response-timeout
// before ending it: the backend reads it all, so no timeout applies. The
// timeout is wide against the answer that follows the body's end.
func TestRedteamSlowEndOfChunkedUpload(t *testing.T) {
	t.Parallel()
	h := newHostile(t, func(c *config.Backend) { c.ResponseTimeout = time.Second },
		func(c net.Conn, br *bufio.Reader, req *http.Request) bool {
			n, _ := io.Copy(io.Discard, req.Body)
			okAnswer(c, fmt.Sprint(n))
			return true
		})
	pr, pw := io.Pipe()
	go func() {
		pw.Write([]byte("first"))
		time.Sleep(1200 * time.Millisecond) // a slow client
		pw.Write([]byte("last"))
		time.Sleep(1200 * time.Millisecond)
		pw.Close()
	}()
	req, _ := http.NewRequest("POST", h.front.URL+"/up", pr)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(got) != "9" {
		t.Errorf("got %d %q, want 200 \"9\"", resp.StatusCode, got)
	}
	h.settled(t)
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// After a battery of hostile exchanges, and once the servers are closed,
// no goroutine is left behind: no exchange hangs, no body writer waits.
// Not parallel, so that other tests' goroutines do not count.
func TestRedteamNoGoroutineLeft(t *testing.T) {
	before := runtime.NumGoroutine()
	fdsBefore := openFDs()
	stuck := make(chan struct{})
	h := newHostile(t, func(c *config.Backend) { c.ResponseTimeout = 200 * time.Millisecond },
		func(c net.Conn, br *bufio.Reader, req *http.Request) bool {
			switch req.URL.Path {
			case "/cut":
				io.CopyN(io.Discard, req.Body, 1000)
				c.(*net.TCPConn).SetLinger(0)
				return false
			case "/early":
				io.WriteString(c, "HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
				return false
			case "/flood":
				for range 10 {
					io.WriteString(c, "HTTP/1.1 100 Continue\r\n\r\n")
				}
				return false
			case "/stuck":
				<-stuck
				return false
			case "/101":
				io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\n\r\n")
				return false
			case "/silent":
				io.Copy(io.Discard, req.Body)
				<-stuck
				return false
			}
			io.Copy(io.Discard, req.Body)
			okAnswer(c, req.URL.Path)
			return true
		})
	client := &http.Client{Transport: &http.Transport{}, Timeout: 10 * time.Second}
	var wg sync.WaitGroup
	for _, path := range []string{"/cut", "/early", "/flood", "/stuck", "/101", "/silent", "/ok"} {
		for _, withBody := range []bool{false, true} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var body io.Reader
				if withBody {
					body = io.LimitReader(zeros{}, 8<<20)
				}
				req, _ := http.NewRequest("POST", h.front.URL+path, body)
				if resp, err := client.Do(req); err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			}()
		}
	}
	// Clients that leave mid-upload, mid-download and with a short body.
	for _, msg := range []string{
		"POST /ok HTTP/1.1\r\nHost: h\r\nContent-Length: 1000000\r\n\r\nabc",
		"POST /ok HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
		"GET /stuck HTTP/1.1\r\nHost: h\r\n\r\n",
	} {
		c, err := net.Dial("tcp", h.front.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, msg)
		c.Close()
	}
	wg.Wait()
	h.settled(t)
	close(stuck)
	client.CloseIdleConnections()
	h.front.Close()
	h.b.Close()
	// The raw backend's accept loop and listener end at cleanup.
	before++
	fdsBefore++
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines, %d before:\n%s", runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
	testutil.Eventually(t, "every connection closed", func() bool { return openFDs() <= fdsBefore })
}

// openFDs counts this process's open file descriptors; 0 where /proc
// does not tell.
func openFDs() int {
	fds, _ := os.ReadDir("/proc/self/fd")
	return len(fds)
}

// Many clients at once, on a backend that follows some answers with stray
// bytes in the same write: every client gets its own answers, always.
func TestRedteamStrayBytesUnderConcurrency(t *testing.T) {
	t.Parallel()
	h := newHostile(t, nil, func(c net.Conn, br *bufio.Reader, req *http.Request) bool {
		p := req.URL.Path
		if strings.HasSuffix(p, "/evil") {
			fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s%s", len(p), p, injected)
			return true
		}
		okAnswer(c, p)
		return true
	})
	const clients, requests = 8, 50
	errs := make(chan error, clients)
	for i := range clients {
		go func() {
			client := &http.Client{Transport: &http.Transport{}}
			defer client.CloseIdleConnections()
			for n := range requests {
				path := fmt.Sprintf("/c%d/r%d", i, n)
				if n%5 == 0 {
					path += "/evil"
				}
				resp, err := client.Get(h.front.URL + path)
				if err != nil {
					errs <- err
					return
				}
				got, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 || string(got) != path {
					errs <- fmt.Errorf("asked for %s, got %d %q", path, resp.StatusCode, got)
					return
				}
			}
			errs <- nil
		}()
	}
	for range clients {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	h.settled(t)
	if n := strings.Count(h.logs.String(), "Unsolicited response"); n != clients*requests/5 {
		t.Errorf("%d warnings about stray bytes, want %d", n, clients*requests/5)
	}
}

// The checks of idle TLS connections keep good ones: sequential requests
// share one connection (session tickets and all).
func TestRedteamTLSConnectionReused(t *testing.T) {
	t.Parallel()
	var conns atomic.Int64
	b := tlsBackend(t, io.Discard, func(c net.Conn, br *bufio.Reader) {
		conns.Add(1)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			io.Copy(io.Discard, req.Body)
			answer(c, req)
		}
	})
	front := httptest.NewServer(NewPool([]*Backend{b}, config.RoundRobin, false, discard))
	t.Cleanup(front.Close)
	for i := range 20 {
		path := fmt.Sprintf("/r%d", i)
		if _, got := do(t, "GET", front.URL+path, nil); got != path {
			t.Fatalf("asked for %s, got %q", path, got)
		}
		testutil.Eventually(t, "the connection back in the pool", func() bool { return idleConns(b) == 1 })
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("%d connections for 20 sequential requests, want 1", n)
	}
}

// A send-proxy backend's connection, kept for one client connection, that
// gets stray bytes between that client's requests: its next request goes
// out on a new connection and gets its own answer.
func TestRedteamSendProxyStrayBytes(t *testing.T) {
	t.Parallel()
	strayed := make(chan struct{}, 1)
	var conns atomic.Int64
	addr := rawBackend(t, func(c net.Conn, br *bufio.Reader) {
		conns.Add(1)
		if _, err := br.ReadString('\n'); err != nil { // the PROXY header
			return
		}
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			answer(c, req)
			if strings.HasPrefix(req.URL.Path, "/evil") {
				time.Sleep(20 * time.Millisecond) // a separate write
				io.WriteString(c, injected)
				strayed <- struct{}{}
			}
		}
	})
	logs := &testutil.Buffer{}
	b := NewBackend(config.Backend{Name: "sp", Address: addr, Weight: 1, SendProxy: 1, ResponseTimeout: 5 * time.Second,
		Health: config.HealthCheck{Rise: 2, Fall: 1000}}, nil, slog.New(slog.NewTextHandler(logs, nil)))
	t.Cleanup(b.Close)
	front := httptest.NewUnstartedServer(NewPool([]*Backend{b}, config.RoundRobin, false, discard))
	front.Config.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
		return WithClientConn(ctx, &ClientConn{})
	}
	front.Start()
	t.Cleanup(front.Close)
	client := &http.Client{Transport: &http.Transport{}}
	for i := range 3 {
		path := fmt.Sprintf("/evil%d", i)
		resp, err := client.Get(front.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		<-strayed
		path = fmt.Sprintf("/mine%d", i)
		resp, err = client.Get(front.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(got) != path {
			t.Fatalf("asked for %s, got %d %q", path, resp.StatusCode, got)
		}
	}
	if n := strings.Count(logs.String(), "Unsolicited response"); n != 3 {
		t.Errorf("%d warnings about stray bytes, want 3", n)
	}
	if n := conns.Load(); n != 4 {
		t.Errorf("%d backend connections, want 4 (one, then one after each stray)", n)
	}
	testutil.Eventually(t, "every slot back", func() bool { return b.InFlight() == 0 })
}

// A backend that takes no byte while a large request head is written: the
// exchange still ends at response-timeout.
func TestRedteamBackendStopsReadingHead(t *testing.T) {
	t.Parallel()
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) })
	// A small receive buffer, set on the listener so that the window
	// offered at connect is small too.
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) {
			syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		})
	}}
	ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	testutil.Serve(ln, func(c net.Conn) {
		<-stop // reads nothing
		c.Close()
	})
	b := NewBackend(config.Backend{Name: "deaf", Address: ln.Addr().String(), Weight: 1, ResponseTimeout: 300 * time.Millisecond,
		Health: config.HealthCheck{Rise: 2, Fall: 1000}}, nil, discard)
	t.Cleanup(b.Close)
	front := httptest.NewServer(NewPool([]*Backend{b}, config.RoundRobin, false, discard))
	t.Cleanup(front.Close)
	for _, method := range []string{"GET", "POST"} {
		var body io.Reader
		if method == "POST" {
			body = strings.NewReader("x")
		}
		req, _ := http.NewRequest(method, front.URL+"/", body)
		for i := range 30 {
			req.Header.Set(fmt.Sprintf("X-Big-%d", i), strings.Repeat("h", 30000))
		}
		client := &http.Client{Timeout: 10 * time.Second}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s: the exchange did not end: %v", method, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusGatewayTimeout {
			t.Errorf("%s: status %d, want 504", method, resp.StatusCode)
		}
	}
	testutil.Eventually(t, "every slot back", func() bool { return b.InFlight() == 0 })
}

// queued waits until c's socket holds bytes from its peer, or its close.
func queued(t *testing.T, c net.Conn) {
	t.Helper()
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var buf [1]byte
	testutil.Eventually(t, "the backend's bytes on the socket", func() bool {
		there := false
		rc.Control(func(fd uintptr) {
			_, _, err := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
			there = err != syscall.EAGAIN
		})
		return there
	})
}

// A backend that speaks before the request has reached it all: its
// answer, or its close, is on the connection before the request's last
// write (a connection just made, where the backend answers at once and
// the proxy waited for a CPU; a large head, which goes in several writes,
// answered before it is all read). The exchange sees it at once, as it
// would have seen it a moment later.
func TestRedteamBackendSpeaksFirst(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		big  bool // the second request, on the kept connection, has a large head
		// first is what the backend does before it reads a request
		// (for a big one, once its first bytes came).
		first func(c *net.TCPConn)
		want  int
	}{
		{"answers at once", false, func(c *net.TCPConn) { okAnswer(c, "early") }, 200},
		{"half-closes at once", false, func(c *net.TCPConn) { c.CloseWrite() }, 502},
		{"answers a large head early", true, func(c *net.TCPConn) {
			io.WriteString(c, "HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 5\r\nConnection: close\r\n\r\nearly")
		}, 431},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			addr := rawBackend(t, func(c net.Conn, br *bufio.Reader) {
				if tc.big {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					answer(c, req)
					if _, err := br.Peek(1); err != nil {
						return
					}
				}
				tc.first(c.(*net.TCPConn))
				io.Copy(io.Discard, br) // and nothing more
			})
			b := NewBackend(config.Backend{Name: "first", Address: addr, Weight: 1, ResponseTimeout: 5 * time.Second,
				Health: config.HealthCheck{Rise: 2, Fall: 1000}}, nil, discard)
			t.Cleanup(b.Close)
			dial := b.h1.dial
			b.h1.dial = func(ctx context.Context) (net.Conn, error) {
				c, err := dial(ctx)
				if err != nil {
					return nil, err
				}
				if tc.big {
					// A small send buffer: the large head's writes wait for
					// the backend to read, which it does after it answered.
					rc, _ := c.(*net.TCPConn).SyscallConn()
					rc.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_SNDBUF, 4096) })
				} else {
					queued(t, c)
				}
				return c, nil
			}
			front := httptest.NewServer(NewPool([]*Backend{b}, config.RoundRobin, false, discard))
			t.Cleanup(front.Close)
			if tc.big {
				if _, got := do(t, "GET", front.URL+"/a", nil); got != "/a" {
					t.Fatalf("first request got %q", got)
				}
			}
			req, _ := http.NewRequest("GET", front.URL+"/b", nil)
			if tc.big {
				for i := range 20 {
					req.Header.Set(fmt.Sprintf("X-Big-%d", i), strings.Repeat("h", 10000))
				}
			}
			start := time.Now()
			resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			got, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			took := time.Since(start)
			if resp.StatusCode != tc.want {
				t.Errorf("status %d after %v, want %d", resp.StatusCode, took, tc.want)
			}
			if tc.want != 502 && string(got) != "early" {
				t.Errorf("body %q, want %q", got, "early")
			}
			if took > 2*time.Second {
				t.Errorf("answered after %v: the backend's bytes were not seen", took)
			}
		})
	}
}

// A request without a body on a kept connection, written from inside the
// wait for its answer: whatever the backend does then ends the exchange as
// it would otherwise. Interim answers come before the final one; a close
// or a reset once the request is read is a lost connection, tried again
// on a new one (the GET may be); silence is a 504 at response-timeout.
func TestRedteamKeptConnectionAnswers(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		serve func(c net.Conn, br *bufio.Reader, req *http.Request) bool
		want  int
		body  string
	}{
		{"103 then 200", func(c net.Conn, _ *bufio.Reader, req *http.Request) bool {
			io.WriteString(c, "HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n")
			answer(c, req)
			return true
		}, 200, "/b"},
		{"100 then 200", func(c net.Conn, _ *bufio.Reader, req *http.Request) bool {
			io.WriteString(c, "HTTP/1.1 100 Continue\r\n\r\n")
			answer(c, req)
			return true
		}, 200, "/b"},
		{"closes", func(net.Conn, *bufio.Reader, *http.Request) bool { return false }, 200, "/b"},
		{"resets", func(c net.Conn, _ *bufio.Reader, _ *http.Request) bool {
			c.(*net.TCPConn).SetLinger(0)
			return false
		}, 200, "/b"},
		{"says nothing", func(_ net.Conn, br *bufio.Reader, _ *http.Request) bool {
			io.Copy(io.Discard, br) // until the proxy gives up
			return false
		}, 504, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var once atomic.Bool
			h := newHostile(t, func(b *config.Backend) { b.ResponseTimeout = 300 * time.Millisecond },
				func(c net.Conn, br *bufio.Reader, req *http.Request) bool {
					if req.URL.Path == "/b" && once.CompareAndSwap(false, true) {
						return tc.serve(c, br, req)
					}
					answer(c, req)
					return true
				})
			if _, got := do(t, "GET", h.front.URL+"/a", nil); got != "/a" {
				t.Fatalf("first request got %q", got)
			}
			resp, got := do(t, "GET", h.front.URL+"/b", nil)
			if resp.StatusCode != tc.want || tc.body != "" && got != tc.body {
				t.Errorf("got %d %q, want %d %q", resp.StatusCode, got, tc.want, tc.body)
			}
			h.settled(t)
		})
	}
}
