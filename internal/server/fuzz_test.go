package server

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hipsterd/hipsterd/internal/config"
)

// The two fuzz targets below feed hostile bytes to a whole server, one from
// the client side and one from the backend side. `make fuzz` runs them; `make
// test` runs their seeds and the corpus in testdata/fuzz as regression tests.
// Each builds its server once per process: an input costs a few loopback
// exchanges, not a server.

// fuzzing reports whether this process generates inputs (go test -fuzz), as
// opposed to running the seeds and the corpus once. Timeouts are short when
// fuzzing, for speed, and long otherwise, so that a regression run under
// -race on a loaded machine does not mistake slowness for a failure.
func fuzzing() bool {
	f := flag.Lookup("test.fuzz")
	return f != nil && f.Value.String() != ""
}

// panicLog is a server log that remembers the first panic net/http
// recovered in a handler ("http: panic serving ..."). A panic anywhere else
// ends the process, which the fuzzer reports by itself.
type panicLog struct {
	mu    sync.Mutex
	panic string
}

func (l *panicLog) Write(p []byte) (int, error) {
	if bytes.Contains(p, []byte(`msg="http: panic serving`)) {
		l.mu.Lock()
		if l.panic == "" {
			l.panic = string(p)
		}
		l.mu.Unlock()
	}
	return len(p), nil
}

func (l *panicLog) check(t *testing.T) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	if msg := l.panic; msg != "" {
		l.panic = "" // reported once
		t.Fatalf("the server panicked:\n%s", msg)
	}
}

// startFuzzServer starts a server for src, logging at debug level (net/http
// logs recovered panics there) to log, and returns it with the address of
// frontend f.
func startFuzzServer(tb testing.TB, log io.Writer, src string) (*Server, string) {
	tb.Helper()
	cfg, err := config.Parse("fuzz.ini", []byte(src))
	if err != nil {
		tb.Fatal(err)
	}
	s := New(slog.New(slog.NewTextHandler(log, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err := s.Start(cfg); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Shutdown(ctx)
	})
	return s, s.Addrs()["f"].String()
}

// waitClosed waits until s has closed every client connection (a tunnel's
// is no longer its own): a panic in a handler is logged before its
// connection closes, and every request the handler forwarded is sent.
func waitClosed(t *testing.T, s *Server) {
	t.Helper()
	open := func() (n int64) {
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, l := range s.listeners {
			n += l.conns.Load()
		}
		return n
	}
	deadline := time.Now().Add(5 * time.Second)
	for open() > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the server still holds %d client connections 5s after the client closed", open())
		}
		time.Sleep(50 * time.Microsecond)
	}
}

// fuzzBackend accepts connections and serves each with serve, until the test
// ends.
func fuzzBackend(tb testing.TB, serve func(net.Conn)) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	var wg sync.WaitGroup
	tb.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				serve(c)
				c.Close()
				mu.Lock()
				delete(conns, c)
				mu.Unlock()
			}()
		}
	}()
	return ln.Addr().String()
}

// clientIP gives each fuzz input's client connection an address of its own
// in 127.0.0.0/8, so that the backend can tell, from the X-Forwarded-For the
// server adds, which input a forwarded request came from, however late it
// arrives.
func clientIP(n uint32) net.IP {
	return net.IPv4(127, byte(1+(n>>16)%254), byte(n>>8), byte(n))
}

func dialFrom(ip net.IP, addr string) (net.Conn, error) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: ip}, Timeout: 5 * time.Second}
	return d.Dial("tcp", addr)
}

// parseRequests returns the methods of the complete requests, bodies
// included, that net/http's parser finds in data, in order, reading them as
// its server does.
func parseRequests(data []byte) []string {
	br := bufio.NewReader(bytes.NewReader(data))
	var methods []string
	for {
		if len(methods) > 0 && methods[len(methods)-1] == "POST" {
			// net/http's server skips up to four CR or LF after a POST,
			// which old clients sent after the body (RFC 9112, section 2.2).
			peek, _ := br.Peek(4)
			n := 0
			for n < len(peek) && (peek[n] == '\r' || peek[n] == '\n') {
				n++
			}
			br.Discard(n)
		}
		req, err := http.ReadRequest(br)
		if err != nil {
			return methods
		}
		if _, err := io.Copy(io.Discard, req.Body); err != nil {
			return methods
		}
		methods = append(methods, req.Method)
	}
}

// connGone reports whether err means a connection ended or timed out, not
// that the bytes on it were malformed.
func connGone(err error) bool {
	var ne net.Error
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) || (errors.As(err, &ne) && ne.Timeout())
}

// recorder is a backend that counts the complete requests it gets from
// each client address and flags any beyond the number the client sent.
type recorder struct {
	mu      sync.Mutex
	clients map[string]*recorded
	order   []string // client addresses, oldest first, to forget old ones
	bad     []string
}

type recorded struct {
	sent, got int
	input     []byte
}

// recorderMemory is how many inputs' clients the recorder remembers: a
// request arriving that late is flagged as coming from no known client.
const recorderMemory = 10000

func (r *recorder) expect(ip string, sent int, input []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.order) == recorderMemory {
		delete(r.clients, r.order[0])
		r.order = r.order[1:]
	}
	r.clients[ip] = &recorded{sent: sent, input: input}
	r.order = append(r.order, ip)
}

func (r *recorder) failf(format string, args ...any) {
	r.mu.Lock()
	r.bad = append(r.bad, fmt.Sprintf(format, args...))
	r.mu.Unlock()
}

func (r *recorder) record(req *http.Request) {
	xff := req.Header.Get("X-Forwarded-For")
	ip := strings.TrimSpace(xff[strings.LastIndexByte(xff, ',')+1:])
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.clients[ip]
	if c == nil {
		r.bad = append(r.bad, fmt.Sprintf("%s %s forwarded for an unknown client (X-Forwarded-For %q)", req.Method, req.RequestURI, xff))
		return
	}
	c.got++
	if c.got > c.sent {
		r.bad = append(r.bad, fmt.Sprintf("request %d (%s %s) forwarded for input %q, in which net/http finds %d", c.got, req.Method, req.RequestURI, c.input, c.sent))
	}
}

func (r *recorder) check(t *testing.T) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if bad := r.bad; len(bad) > 0 {
		r.bad = nil // reported once
		t.Fatal(strings.Join(bad, "\n"))
	}
}

// serve reads requests the way a backend would, records each complete one
// and answers it; a WebSocket upgrade is accepted, and what follows it
// discarded.
func (r *recorder) serve(c net.Conn) {
	br := bufio.NewReader(c)
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			if !connGone(err) {
				r.failf("the backend could not parse a forwarded request: %v", err)
			}
			return
		}
		if _, err := io.Copy(io.Discard, req.Body); err != nil {
			if !connGone(err) {
				r.failf("the backend could not read a forwarded body (%s %s): %v", req.Method, req.RequestURI, err)
			}
			return // a request cut short is no request
		}
		r.record(req)
		c.SetWriteDeadline(time.Now().Add(5 * time.Second))
		if up := req.Header.Get("Upgrade"); up != "" {
			if _, err := io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: "+up+"\r\n\r\n"); err != nil {
				return
			}
			io.Copy(io.Discard, br)
			return
		}
		answer := "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
		if req.Method == "HEAD" {
			answer = strings.TrimSuffix(answer, "ok")
		}
		if _, err := io.WriteString(c, answer); err != nil {
			return
		}
	}
}

var requestSeeds = []string{
	"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
	"GET / HTTP/1.0\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\nHEAD /3 HTTP/1.1\r\nHost: a\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
	"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello",
	// Smuggling: a length and chunking together, two lengths, a chunked
	// body hiding a request, obsolete line folding, bare LF.
	"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 44\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2b\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n\r\n0\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nX-Folded: a\r\n b\r\n\r\n",
	"GET / HTTP/1.1\nHost: a\n\nGET /2 HTTP/1.1\nHost: a\n\n",
	"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\n",
	"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nshort",
	"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET /after-close HTTP/1.1\r\nHost: a\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nX-Huge: " + strings.Repeat("x", 70000) + "\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nGET /tunnelled HTTP/1.1\r\nHost: a\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
	"GET http://other/abs HTTP/1.1\r\nHost: a\r\n\r\n",
	"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
	"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
}

// FuzzRequestPath writes raw bytes to a frontend in front of a recording
// backend: the server never panics, never forwards more complete requests
// than net/http's parser finds in the bytes, and what it forwards parses.
func FuzzRequestPath(f *testing.F) {
	for _, s := range requestSeeds {
		f.Add([]byte(s))
	}
	rec := &recorder{clients: map[string]*recorded{}}
	backend := fuzzBackend(f, rec.serve)
	log := &panicLog{}
	srv, addr := startFuzzServer(f, log, fmt.Sprintf(`
[frontend f]
bind = 127.0.0.1:0
backends = r
add-x-forwarded-for = true
[backend r]
connect = %s
health-fall = 1000
`, backend))
	wait := 2 * time.Second
	if fuzzing() {
		wait = 100 * time.Millisecond
	}
	var next atomic.Uint32
	f.Fuzz(func(t *testing.T, data []byte) {
		methods := parseRequests(data)
		ip := clientIP(next.Add(1))
		rec.expect(ip.String(), len(methods), data)
		c, err := dialFrom(ip, addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(wait))
		// The server may answer and close before it has read everything.
		c.Write(data)
		// Half-closing at once would cancel the requests under way; read
		// their answers first.
		br := bufio.NewReader(c)
		readResponses(br, methods)
		c.(*net.TCPConn).CloseWrite()
		io.Copy(io.Discard, br)
		c.Close()
		waitClosed(t, srv)
		log.check(t)
		rec.check(t)
	})
}

// readResponses reads one final response for each request method, until
// one fails or switches protocols.
func readResponses(br *bufio.Reader, methods []string) {
	for _, m := range methods {
		for {
			resp, err := http.ReadResponse(br, &http.Request{Method: m})
			if err != nil {
				return
			}
			_, err = io.Copy(io.Discard, resp.Body)
			if err != nil || resp.StatusCode == http.StatusSwitchingProtocols {
				return
			}
			if resp.StatusCode >= 200 {
				break
			}
		}
	}
}

// responder is a backend that answers /a with the bytes of the input under
// test, then closes the connection or reads on, and /b?id=ID with a good
// response whose body is ID.
type responder struct {
	mu         sync.Mutex
	bytes      []byte
	closeAfter bool
}

func (r *responder) set(b []byte, closeAfter bool) {
	r.mu.Lock()
	r.bytes, r.closeAfter = b, closeAfter
	r.mu.Unlock()
}

func (r *responder) serve(c net.Conn) {
	br := bufio.NewReader(c)
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		if _, err := io.Copy(io.Discard, req.Body); err != nil {
			return
		}
		c.SetWriteDeadline(time.Now().Add(5 * time.Second))
		if req.URL.Path == "/a" {
			r.mu.Lock()
			answer, closeAfter := r.bytes, r.closeAfter
			r.mu.Unlock()
			if _, err := c.Write(answer); err != nil || closeAfter {
				return
			}
			continue
		}
		id := req.URL.Query().Get("id")
		if _, err := fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(id), id); err != nil {
			return
		}
	}
}

// The requests client 1 sends, by the fuzzer's choice.
var firstRequests = []struct {
	method, head string
}{
	{"GET", "GET /a HTTP/1.1\r\nHost: a\r\n\r\n"},
	{"HEAD", "HEAD /a HTTP/1.1\r\nHost: a\r\n\r\n"},
	{"POST", "POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"},
	{"GET", "GET /a HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"},
}

const upgradeRequest = 3

func addResponseSeeds(f *testing.F) {
	const get, head, post, upgrade = 0, 1, 2, upgradeRequest
	seeds := []struct {
		which  uint8
		answer string
	}{
		{get, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"},
		{post, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n2\r\nok\r\n0\r\nX-T: t\r\n\r\n"},
		{get, "HTTP/1.0 200 OK\r\n\r\nuntil close"},
		{post, "HTTP/1.1 200 OK\r\n\r\nuntil close"},
		{get, "HTTP/1.1 204 No Content\r\n\r\n"},
		{head, "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n"},
		// More than was asked for: a body after a 204 or a HEAD's answer,
		// a body longer than its length, a second response.
		{get, "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello"},
		{head, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"},
		{get, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nstolen"},
		{post, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok\r\n\r\n"},
		// Framing attacks: a length and chunking, two lengths, bad chunk
		// sizes, obsolete folding, bare LF, a short body.
		{get, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"},
		{get, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 20\r\n\r\nok"},
		{get, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n"},
		{post, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\n"},
		{get, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n"},
		{get, "HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\nContent-Length: 2\r\n\r\nok"},
		{head, "HTTP/1.1 200 OK\nContent-Length: 2\n\nok"},
		{get, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nok"},
		// Heads: interim responses, too many of them, a 101 to a request
		// that asked for none or for another protocol, one too large,
		// garbage.
		{get, "HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"},
		{post, strings.Repeat("HTTP/1.1 100 Continue\r\n\r\n", 8) + "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"},
		{upgrade, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nframes"},
		{get, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"},
		{upgrade, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"},
		{get, "HTTP/1.1 200 OK\r\nX-Huge: " + strings.Repeat("x", 70000) + "\r\n\r\n"},
		{get, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"},
		{head, "HTTP/1.1 999 Weird\r\nContent-Length: 2\r\n\r\nok"},
		{get, "HTTP/1.1 000 Zero\r\nContent-Length: 2\r\n\r\nok"},
		{post, "HTTP/1.1 099 Below 100\r\n\r\n"},
		{get, "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nok"},
		{post, "HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\nok"},
		{get, "garbage\r\n\r\n"},
		{upgrade, ""},
	}
	for _, s := range seeds {
		f.Add(s.which, []byte(s.answer), false)
		f.Add(s.which, []byte(s.answer), true)
	}
}

// FuzzBackendResponse has a backend answer a request with raw bytes, then
// close or keep the connection: the client gets a well-formed response, an
// error status or, when the backend broke a body already on its way, a
// closed connection; and the next client, on a connection of its own, gets
// its own answer, never bytes of the first's.
func FuzzBackendResponse(f *testing.F) {
	addResponseSeeds(f)
	resp := &responder{}
	backend := fuzzBackend(f, resp.serve)
	// A response-timeout ends the inputs that never finish a head; the
	// clients' deadlines are longer. An input that never finishes a body
	// is cut by client 1's deadline, unless the backend closed.
	timeout, stall, hang := 250*time.Millisecond, 400*time.Millisecond, 5*time.Second
	if fuzzing() {
		timeout, stall, hang = 30*time.Millisecond, 50*time.Millisecond, time.Second
	}
	log := &panicLog{}
	srv, addr := startFuzzServer(f, log, fmt.Sprintf(`
[frontend f]
bind = 127.0.0.1:0
backends = r
[backend r]
connect = %s
response-timeout = %s
health-fall = 1000
`, backend, timeout))
	var next atomic.Uint64
	f.Fuzz(func(t *testing.T, which uint8, answer []byte, closeAfter bool) {
		resp.set(answer, closeAfter)
		deadline := stall
		if closeAfter {
			// The backend said all it had to say: the server must not
			// wait for more.
			deadline = hang
		}
		firstClient(t, addr, int(which)%len(firstRequests), deadline, closeAfter)
		waitClosed(t, srv)
		log.check(t)
		id := strconv.FormatUint(next.Add(1), 10)
		nextClient(t, addr, id, hang)
		waitClosed(t, srv)
		log.check(t)
	})
}

// firstClient sends the request of firstRequests[which] and checks what
// comes back.
func firstClient(t *testing.T, addr string, which int, deadline time.Duration, closed bool) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(deadline))
	req := firstRequests[which]
	if _, err := io.WriteString(c, req.head); err != nil {
		t.Fatal(err)
	}
	// What may end the exchange early: the server closing a connection
	// whose response it could not finish, and, unless the backend closed
	// its connection, the deadline.
	ended := func(err error) bool {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return !closed
		}
		return connGone(err)
	}
	br := bufio.NewReader(c)
	var resp *http.Response
	for n := 0; ; n++ {
		resp, err = http.ReadResponse(br, &http.Request{Method: req.method})
		if err != nil {
			if !ended(err) {
				t.Fatalf("client 1: malformed response head: %v", err)
			}
			return
		}
		if resp.StatusCode >= 200 || resp.StatusCode == http.StatusSwitchingProtocols {
			break
		}
		if n > 10 {
			t.Fatalf("client 1: more than 10 interim responses")
		}
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		if which != upgradeRequest {
			t.Fatalf("client 1: 101 to a request that asked for no upgrade")
		}
		return
	}
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		if !ended(err) {
			t.Fatalf("client 1: malformed response body (status %d): %v", resp.StatusCode, err)
		}
		return
	}
	if n := br.Buffered(); n > 0 {
		extra, _ := br.Peek(n)
		t.Fatalf("client 1: %d bytes after a complete %d response: %q", n, resp.StatusCode, extra)
	}
}

// nextClient asks for its own id on a new connection and must get exactly
// it. A 504 is tried again, a few times: on a loaded machine the backend may
// miss the short response-timeout; it is no one else's answer.
func nextClient(t *testing.T, addr, id string, deadline time.Duration) {
	t.Helper()
	for try := 0; ; try++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(deadline))
		if _, err := io.WriteString(c, "GET /b?id="+id+" HTTP/1.1\r\nHost: a\r\n\r\n"); err != nil {
			c.Close()
			t.Fatal(err)
		}
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			c.Close()
			t.Fatalf("client 2: %v", err)
		}
		body, err := io.ReadAll(resp.Body)
		c.Close()
		if resp.StatusCode == http.StatusGatewayTimeout && try < 5 {
			continue
		}
		if err != nil || resp.StatusCode != 200 || string(body) != id || br.Buffered() > 0 {
			t.Fatalf("client 2 asked for %s and got %d %q (%v), then %d more bytes", id, resp.StatusCode, body, err, br.Buffered())
		}
		return
	}
}
