package upstream

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// h1Transport sends requests without a body to one backend over kept-alive
// HTTP/1.1 connections, on the caller's goroutine.
//
// net/http's Transport hands every request to two goroutines of its
// connection (one writes the request, one reads the response) and back,
// through channels and selects; for the small bodiless requests that make up
// most proxy traffic, that hand-off and its bookkeeping cost more than the
// HTTP itself. Requests with a body still go to net/http's Transport, which
// sends the body while it watches for an early response.
type h1Transport struct {
	dial func(context.Context) (net.Conn, error)
	// timeout bounds the wait for the response header; 0: none.
	timeout time.Duration
	// inflight counts the requests in flight: the caller adds one, a
	// response's body takes it away when done.
	inflight *atomic.Int64

	mu       sync.Mutex
	idle     []*h1Conn // most recently used last
	closed   bool
	sweeping bool
}

const (
	// h1MaxIdle is the most idle connections kept per backend: enough for
	// the concurrency of a busy frontend, so bursts do not open new ones.
	h1MaxIdle = 256
	// h1IdleTimeout is how long an idle connection is kept.
	h1IdleTimeout = 90 * time.Second
	// h1Max1xx bounds the interim responses read before the final one, as
	// net/http does.
	h1Max1xx = 5
)

// h1Conn is one connection to the backend.
type h1Conn struct {
	net.Conn
	br     *bufio.Reader
	bw     *bufio.Writer
	abort  func() // ends the exchange under way: the client went away
	idleAt time.Time
}

func newH1Conn(c net.Conn) *h1Conn {
	pc := &h1Conn{Conn: c, br: bufio.NewReader(c), bw: bufio.NewWriter(c)}
	pc.abort = func() { pc.SetDeadline(time.Unix(1, 0)) }
	return pc
}

// canFastPath reports whether req can go through an h1Transport: it has no
// body to send.
func canFastPath(req *http.Request) bool {
	return (req.Body == nil || req.Body == http.NoBody) && req.ContentLength == 0 &&
		len(req.TransferEncoding) == 0 && req.Method != "CONNECT"
}

// errToo1xx is returned for a backend that sends too many interim responses.
var errToo1xx = errors.New("too many 1xx responses")

// errUnasked101 is returned for a backend that switches protocols unasked.
var errUnasked101 = errors.New("101 Switching Protocols to a request that asked for no upgrade")

func (t *h1Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	replay := replayable(req)
	for {
		pc := t.get()
		if pc != nil && !replay && !quiet(pc.Conn) {
			// A request that must not be sent twice is not sent on a
			// connection the backend may be closing.
			pc.Close()
			continue
		}
		reused := pc != nil
		if !reused {
			c, err := t.dial(ctx)
			if err != nil {
				return nil, err
			}
			pc = newH1Conn(c)
		}
		resp, retry, err := t.exchange(ctx, pc, req, replay)
		if err == nil {
			return resp, nil
		}
		pc.Close()
		// A kept-alive connection that the backend closed while it was
		// idle fails before any byte of a response: try again on a new one.
		if !reused || !retry || ctx.Err() != nil {
			return nil, err
		}
	}
}

// exchange sends req on pc and reads the response header. retry reports
// that the request may be sent again on another connection: nothing came
// back, and either the backend cannot have read it or it is replayable.
func (t *h1Transport) exchange(ctx context.Context, pc *h1Conn, req *http.Request, replay bool) (resp *http.Response, retry bool, err error) {
	// Set before the abort can come, which no later deadline may undo.
	if t.timeout > 0 {
		pc.SetReadDeadline(time.Now().Add(t.timeout))
	}
	// The client going away aborts the exchange, and the body after it.
	stop := context.AfterFunc(ctx, pc.abort)
	defer func() {
		if err != nil {
			stop()
		}
	}()
	writeRequest(pc.bw, req)
	if err := pc.bw.Flush(); err != nil {
		return nil, true, err
	}
	if _, err := pc.br.Peek(1); err != nil {
		// The backend may have closed the connection before it read the
		// request, or after: only a request that may be sent twice is.
		return nil, replay && !isTimeout(err), err
	}
	trace := httptrace.ContextClientTrace(ctx)
	for n := 0; ; n++ {
		resp, err = http.ReadResponse(pc.br, req)
		if err != nil {
			return nil, false, err
		}
		code := resp.StatusCode
		if code >= 200 {
			break
		}
		if code == http.StatusSwitchingProtocols {
			return nil, false, errUnasked101
		}
		if n == h1Max1xx {
			return nil, false, errToo1xx
		}
		// Interim responses (103 Early Hints) reach the client through
		// the trace ReverseProxy installs.
		if trace != nil && trace.Got1xxResponse != nil {
			if err := trace.Got1xxResponse(code, textproto.MIMEHeader(resp.Header)); err != nil {
				return nil, false, err
			}
		}
	}
	// The header deadline must not cut the body short, unless the body is
	// already read (most small responses): then it is left to the next
	// exchange to set anew.
	if t.timeout > 0 && (resp.ContentLength < 0 || int64(pc.br.Buffered()) < resp.ContentLength) {
		pc.SetReadDeadline(time.Time{})
		if ctx.Err() != nil {
			pc.abort() // the client left as the deadline was cleared
		}
	}
	resp.Body = &h1Body{ReadCloser: resp.Body, t: t, pc: pc, stop: stop, keep: !resp.Close}
	return resp, false, nil
}

// replayable reports whether req may be sent again after it may have
// reached the backend, as net/http's Transport decides.
func replayable(req *http.Request) bool {
	switch req.Method {
	case "GET", "HEAD", "OPTIONS", "TRACE":
		return true
	}
	_, key := req.Header["Idempotency-Key"]
	_, xkey := req.Header["X-Idempotency-Key"]
	return key || xkey
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// newlineToSpace keeps a header value on its line, as net/http does.
var newlineToSpace = strings.NewReplacer("\r", " ", "\n", " ")

// writeRequest writes req's head. Its headers are sent as they are, in no
// particular order; the request has no body.
func writeRequest(w *bufio.Writer, req *http.Request) {
	w.WriteString(req.Method)
	w.WriteByte(' ')
	w.WriteString(req.URL.EscapedPath())
	if req.URL.ForceQuery || req.URL.RawQuery != "" {
		w.WriteByte('?')
		w.WriteString(req.URL.RawQuery)
	}
	w.WriteString(" HTTP/1.1\r\nHost: ")
	host := req.Host
	if host == "" {
		host = req.URL.Host
	}
	w.WriteString(host)
	w.WriteString("\r\n")
	for k, vs := range req.Header {
		switch k {
		case "Host", "Content-Length", "Transfer-Encoding", "Trailer":
			continue
		}
		for _, v := range vs {
			if v == "" && k == "User-Agent" {
				// ReverseProxy's way of saying "send none".
				continue
			}
			w.WriteString(k)
			w.WriteString(": ")
			if strings.ContainsAny(v, "\r\n") {
				v = newlineToSpace.Replace(v)
			}
			w.WriteString(v)
			w.WriteString("\r\n")
		}
	}
	// As net/http does: servers expect a length for these methods.
	if req.Method != "GET" && req.Method != "HEAD" {
		w.WriteString("Content-Length: 0\r\n")
	}
	w.WriteString("\r\n")
}

// h1Body is a response body; once read to its end, its connection goes back
// to the pool.
type h1Body struct {
	io.ReadCloser
	t    *h1Transport
	pc   *h1Conn
	stop func() bool
	keep bool // the response allows reusing the connection
}

func (b *h1Body) Read(p []byte) (int, error) {
	if b.pc == nil {
		return 0, io.EOF
	}
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		b.release(true)
	}
	return n, err
}

func (b *h1Body) Close() error {
	if b.pc != nil {
		b.release(false)
	}
	return nil
}

// release ends the exchange: the connection is kept when its response was
// read to the end and nothing else arrived, else closed.
func (b *h1Body) release(complete bool) {
	pc := b.pc
	b.pc = nil
	b.t.inflight.Add(-1)
	// stop fails when the client went away: the deadline may be set.
	if b.stop() && complete && b.keep && pc.br.Buffered() == 0 {
		b.t.put(pc)
		return
	}
	pc.Close()
}

// get returns the most recently used idle connection, or nil.
func (t *h1Transport) get() *h1Conn {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := len(t.idle)
	if n == 0 {
		return nil
	}
	pc := t.idle[n-1]
	t.idle[n-1] = nil
	t.idle = t.idle[:n-1]
	return pc
}

func (t *h1Transport) put(pc *h1Conn) {
	pc.idleAt = time.Now()
	t.mu.Lock()
	if t.closed || len(t.idle) >= h1MaxIdle {
		t.mu.Unlock()
		pc.Close()
		return
	}
	t.idle = append(t.idle, pc)
	if !t.sweeping {
		t.sweeping = true
		time.AfterFunc(h1IdleTimeout/3, t.sweep)
	}
	t.mu.Unlock()
}

// sweep closes the connections idle for longer than h1IdleTimeout, which
// sit at the bottom of the stack, and comes back while any is left.
func (t *h1Transport) sweep() {
	cutoff := time.Now().Add(-h1IdleTimeout)
	t.mu.Lock()
	n := 0
	for n < len(t.idle) && t.idle[n].idleAt.Before(cutoff) {
		t.idle[n].Close()
		n++
	}
	t.idle = slices.Delete(t.idle, 0, n)
	t.sweeping = len(t.idle) > 0 && !t.closed
	if t.sweeping {
		time.AfterFunc(h1IdleTimeout/3, t.sweep)
	}
	t.mu.Unlock()
}

// close closes the idle connections; those in use are closed when their
// exchange ends.
func (t *h1Transport) close() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.closed = true
	for _, pc := range t.idle {
		pc.Close()
	}
	t.idle = nil
}
