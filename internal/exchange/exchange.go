// Package exchange is one request (or one tcp connection) on its way
// through hipsterd, from its start to its end: what is logged and counted of
// it, the one wrapper of its response writer and the one of its body, the
// backend slot and the configuration it holds once it outlives its handler
// (a tunnel), and the rule for the status of a request that got no answer.
// It ends once, handing its record to the access log and the metrics.
//
//	f := &exchange.Frontend{Sinks: []exchange.Sink{logger, stats}}
//	srv.Handler = f.Handler(proxyHandler)
//
// The request's goroutine is the only writer of the record until the
// exchange ends (the body's byte count aside, which the transport's
// goroutine may still add to); sinks read it when it ends.
package exchange

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Series is where the requests of one frontend to one backend are counted
// (package stats provides it). Each pool resolves its backends' series
// once, when the configuration is built, so that counting a request looks
// nothing up.
type Series interface {
	// Done counts a request answered with code, which took total, and
	// header until the backend's response header (0 when none came).
	Done(code int, total, header time.Duration)
}

// Sink is told of exchanges: the access log and the metrics.
type Sink interface {
	// Begin is called as an exchange starts: for a request, before its
	// handler runs; for a tcp connection, once a backend took it.
	Begin(x *Exchange)
	// Tunnel is called when a request becomes a tunnel (its 101 sent):
	// from then on the exchange outlives its handler.
	Tunnel(x *Exchange)
	// End is called once, when the exchange has ended.
	End(x *Exchange)
}

// LineWriter is a Sink that writes request lines: the access log. A
// tunnel's exchange keeps its request's Line only for a frontend with one.
type LineWriter interface {
	Sink
	WritesLines()
}

// writesLines reports whether a sink of f writes request lines.
func (f *Frontend) writesLines() bool {
	for _, s := range f.Sinks {
		if _, ok := s.(LineWriter); ok {
			return true
		}
	}
	return false
}

// Releaser is a backend slot (upstream.Slot), which an exchange that
// became a tunnel releases as it ends.
type Releaser interface{ Release() }

// Handoff takes over the connection of a backend that switched protocols
// (a WebSocket): it answers the client with resp's head, sends on early,
// the bytes the backend sent after it, and tunnels the two connections.
// Once it returns nil the exchange owns slot; on error the caller closes
// backend and releases slot.
type Handoff func(resp *http.Response, backend net.Conn, early []byte, slot Releaser) error

// StatusClientGone is the status recorded, as nginx logs it, for a request
// whose client went away before any response was sent.
const StatusClientGone = 499

// Frontend is what every exchange of one frontend shares.
type Frontend struct {
	// Sinks are told of each exchange.
	Sinks []Sink
	// ClientTimeout is the longest the client may go without sending a
	// byte of its request body while it is read, and without taking a
	// byte of the response while it is written; zero means no limit.
	ClientTimeout time.Duration
	// Release, if set, is called as each request's exchange ends (for a
	// WebSocket, when its tunnel has closed): the server holds the
	// configuration a request started on until then, and lets it go here.
	Release func()
}

// Exchange is one request or tcp connection. It is the request's context
// too, carrying itself: putting it there costs no allocation of its own.
//
// It holds the record and what the backend pool needs; what only a request
// being served needs (its copy, writer, body and clock) is in the request
// around it, so that the exchange a tunnel ends (Tunnel) is small.
type Exchange struct {
	context.Context
	f *Frontend

	// The record: what the access log writes and the metrics count.

	// Request is the request as it came from the client while its handler
	// runs; nil for a tcp connection, and for a tunnel, which keeps its
	// Line instead.
	Request *http.Request
	// Line is what a tunnel keeps of its request for the access log; nil
	// for a request, a tcp connection, and a tunnel whose frontend writes
	// no request lines (no LineWriter).
	Line *Line
	// RemoteAddr is the client's host:port.
	RemoteAddr string
	Start      time.Time
	// Backend is the name of the backend that answered, or of the last
	// one tried; "" when no backend was involved.
	Backend string
	// Retries counts the tries after the first: on another backend, or
	// the same request resent on a new connection.
	Retries int
	// Header is the time from the first try to the backend's response
	// header; 0 when none came.
	Header time.Duration
	// Series counts the exchange in the metrics of its frontend and
	// Backend; the pool sets it with Backend, nil without metrics.
	Series Series
	// Route is the name of the frontend's route that took the request;
	// "" when none did. RouteSeries counts it in the route's metrics.
	Route       string
	RouteSeries Series
	// BytesIn are the bytes the client sent (a request's body); atomic,
	// as the transport's goroutine may still read the body as the
	// handler returns.
	BytesIn atomic.Int64
	// BytesOut are the bytes sent to the client: a response's body, or
	// everything a tunnel sent.
	BytesOut int64
	// Tunneled: the exchange became a tunnel (a WebSocket's 101, a tcp
	// connection); Termination says how a tcp connection ended.
	Tunneled    bool
	tcp         bool // a tcp connection's (NewTCP)
	Termination string

	// For the backend pool: a WebSocket's Handoff, and the change of the
	// response's header the frontend's rules make.
	Handoff Handoff
	Edit    func(http.Header)

	status int
	slot   Releaser
}

// Line is what the access log shows of a request: its request line, Host
// and the header fields some formats write. The strings are the request's
// own, so keeping them copies nothing.
type Line struct {
	Method, RequestURI, Proto, Host string
	Referer, UserAgent, RequestID   string
}

// request is a request's exchange while its handler runs: one allocation
// for the exchange and what serving the request takes.
type request struct {
	Exchange
	in    http.Request // the request as the handler gets it
	w     writer
	body  body
	clock clock
}

type key struct{}

// Value returns x for the exchange's key, else what the request's context
// holds.
func (x *Exchange) Value(k any) any {
	if k == (key{}) {
		return x
	}
	return x.Context.Value(k)
}

// FromContext returns the Exchange in ctx, or nil.
func FromContext(ctx context.Context) *Exchange {
	x, _ := ctx.Value(key{}).(*Exchange)
	return x
}

// Handler wraps next so that every request it serves is an exchange: next
// gets the exchange's writer and a request whose context is the exchange
// (and whose body, if any, is the exchange's).
func (f *Frontend) Handler(next http.Handler) http.Handler {
	return &handler{f: f, next: next}
}

type handler struct {
	f    *Frontend
	next http.Handler
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f := h.f
	q := &request{Exchange: Exchange{Context: r.Context(), f: f, Request: r, RemoteAddr: r.RemoteAddr, Start: time.Now()}}
	x := &q.Exchange
	q.w = writer{ResponseWriter: w, q: q}
	q.clock = clock{w: w, timeout: f.ClientTimeout, slack: f.ClientTimeout / 8}
	// A copy carries the exchange: net/http looks at the original's
	// body to decide what to do with what is left unread. The copy
	// lives with the exchange, which saves it an allocation.
	q.in = *r.WithContext(x)
	in := &q.in
	if r.Body != nil && r.Body != http.NoBody {
		q.body = body{ReadCloser: r.Body, q: q}
		in.Body = &q.body
	}
	for _, s := range f.Sinks {
		s.Begin(x)
	}
	// Deferred, so that a handler that aborts with a panic (as
	// ReverseProxy does when a response body breaks) ends it too.
	defer q.handlerDone()
	h.next.ServeHTTP(&q.w, in)
}

// NewTCP returns the exchange of a tcp connection from remoteAddr, which
// started at start. Once a backend took it, it is Tunneled, and Begin
// tells the sinks; one that never was is only ended (logged, not counted).
func (f *Frontend) NewTCP(ctx context.Context, remoteAddr string, start time.Time) *Exchange {
	return &Exchange{Context: ctx, f: f, RemoteAddr: remoteAddr, Start: start, tcp: true}
}

// Begin tells the sinks of a tcp exchange that a backend took it.
func (x *Exchange) Begin() {
	for _, s := range x.f.Sinks {
		s.Begin(x)
	}
}

func (q *request) handlerDone() {
	q.clock.stop(q.body.q != nil)
	if !q.Tunneled {
		q.End()
	}
}

// Status is the status of the response: the final one sent; when none
// was, 499 if the client went away (the request's context ended), else 200
// (net/http sends that for a handler that wrote nothing).
func (x *Exchange) Status() int {
	switch {
	case x.status != 0:
		return x.status
	case x.Err() != nil:
		return StatusClientGone
	}
	return http.StatusOK
}

// Keep makes slot the exchange's, released as it ends.
func (x *Exchange) Keep(slot Releaser) { x.slot = slot }

// Tunnel makes a request's exchange a tunnel, which outlives its handler:
// the sinks hear of it now, with its 101 and the bytes of head counted as
// sent, and the TunnelEnd returned ends it once the tunnel has closed,
// letting its slot and its configuration go only then.
//
// An idle tunnel may live for hours, so what ends it keeps little: an
// exchange of its own with x's record (the one the sinks hear of), which
// keeps of the request only its Line, and that only for a frontend that
// writes it (a LineWriter), and nothing of net/http's connection; for a
// frontend without sinks, which reads no record, only the slot.
func (x *Exchange) Tunnel(head int64) TunnelEnd {
	x.Tunneled = true
	slot := x.slot
	x.slot = nil
	if len(x.f.Sinks) == 0 {
		return &bareTunnel{f: x.f, slot: slot}
	}
	var t *Exchange
	if x.f.writesLines() {
		// One allocation for the exchange and its line.
		tl := &struct {
			Exchange
			line Line
		}{}
		tl.line = lineOf(x.Request)
		t = &tl.Exchange
		t.Line = &tl.line
	} else {
		t = &Exchange{}
	}
	t.Context, t.f, t.RemoteAddr, t.Start = context.Background(), x.f, x.RemoteAddr, x.Start
	t.Backend, t.Retries, t.Header, t.Series, t.Route, t.RouteSeries = x.Backend, x.Retries, x.Header, x.Series, x.Route, x.RouteSeries
	t.BytesIn.Store(x.BytesIn.Load())
	t.BytesOut, t.Tunneled, t.status, t.slot = head, true, http.StatusSwitchingProtocols, slot
	for _, s := range x.f.Sinks {
		s.Tunnel(t)
	}
	return t
}

// TunnelEnd ends the exchange of a request that became a tunnel.
type TunnelEnd interface {
	// EndTunnel ends it, once, when the tunnel has closed having sent
	// sent bytes to the client, its response's head included.
	EndTunnel(sent int64)
}

// EndTunnel ends a tunnel's exchange, which sent sent bytes to the client
// (TunnelEnd).
func (x *Exchange) EndTunnel(sent int64) {
	x.BytesOut = sent
	x.End()
}

// bareTunnel ends the tunnel of a frontend without sinks.
type bareTunnel struct {
	f    *Frontend
	slot Releaser
}

func (b *bareTunnel) EndTunnel(int64) {
	if b.slot != nil {
		b.slot.Release()
	}
	if b.f.Release != nil {
		b.f.Release()
	}
}

// lineOf is the Line of r: the fields the access log writes (not URL: it
// writes RequestURI).
func lineOf(r *http.Request) Line {
	return Line{Method: r.Method, RequestURI: r.RequestURI, Proto: r.Proto, Host: r.Host,
		Referer: r.Header.Get("Referer"), UserAgent: r.Header.Get("User-Agent"), RequestID: r.Header.Get("X-Request-Id")}
}

// End ends the exchange: its slot is released, the sinks get its record
// and a request's configuration is let go (Frontend.Release). Call it
// once; a request's handler does, unless it became a tunnel.
func (x *Exchange) End() {
	if x.slot != nil {
		x.slot.Release()
	}
	for _, s := range x.f.Sinks {
		s.End(x)
	}
	if !x.tcp && x.f.Release != nil {
		x.f.Release()
	}
}

// HTTP reports whether the exchange is a request's (or the tunnel a
// request became), not a tcp connection's.
func (x *Exchange) HTTP() bool { return !x.tcp }

// writer is the exchange's response writer: it records the status and
// the bytes of the response, and moves the client-timeout's write
// deadline. Unwrap keeps http.ResponseController's Flush and Hijack
// reachable.
type writer struct {
	http.ResponseWriter
	q *request
}

// WriteHeader may write to the connection: interim (1xx) responses go out
// at once.
func (w *writer) WriteHeader(code int) {
	// 1xx responses other than 101 are interim; the final status follows.
	if w.q.status == 0 && (code >= 200 || code == http.StatusSwitchingProtocols) {
		w.q.status = code
	}
	w.q.clock.extendWrite()
	w.ResponseWriter.WriteHeader(code)
}

func (w *writer) Write(p []byte) (int, error) {
	if w.q.status == 0 {
		w.q.status = http.StatusOK
	}
	w.q.clock.extendWrite()
	n, err := w.ResponseWriter.Write(p)
	w.q.BytesOut += int64(n)
	return n, err
}

// FlushError is what http.ResponseController.Flush calls.
func (w *writer) FlushError() error {
	w.q.clock.extendWrite()
	return http.NewResponseController(w.ResponseWriter).Flush()
}

// Unwrap returns the wrapped writer, for http.ResponseController.
func (w *writer) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// body is the exchange's request body: its bytes are counted, and read
// under the client-timeout.
type body struct {
	io.ReadCloser
	q *request
}

func (b *body) Read(p []byte) (int, error) {
	b.q.clock.extendRead()
	n, err := b.ReadCloser.Read(p)
	b.q.BytesIn.Add(int64(n))
	if err != nil {
		b.q.clock.bodyEnded(err)
	}
	return n, err
}

// clock enforces client-timeout on one request: the client may go at most
// timeout without sending a byte of its body while it is read, and without
// taking a byte while the response is written (nginx's client_body_timeout
// and send_timeout, HAProxy's timeout client). Each read of the body and
// each write of the response pushes the connection's deadline out; for
// HTTP/2 the deadlines are the stream's. Without a timeout it moves none.
//
// A deadline is moved only when it would move by more than an eighth of the
// timeout: moving one costs a timer update (for HTTP/2, a message to the
// connection's goroutine), and a stream of small writes needs no more
// precision than that.
type clock struct {
	w       http.ResponseWriter // the server's
	timeout time.Duration
	slack   time.Duration

	mu sync.Mutex
	// over: the handler returned, and the connection may already serve
	// the next request; its deadlines are net/http's again. The body may
	// still be read then, by the transport's goroutine.
	over     bool
	read     time.Time // the read deadline set; zero: none
	write    time.Time // the write deadline set
	bodyDone bool      // the body was read to its end, or failed otherwise than by the deadline
}

// extendRead pushes the read deadline out before a read of the body.
func (c *clock) extendRead() {
	if c.timeout <= 0 {
		return
	}
	c.mu.Lock()
	if !c.over && !c.bodyDone {
		if d := time.Now().Add(c.timeout); d.Sub(c.read) > c.slack {
			c.read = d
			http.NewResponseController(c.w).SetReadDeadline(d)
		}
	}
	c.mu.Unlock()
}

// bodyEnded records how a read of the body ended. Past its end the read
// deadline must go: net/http's HTTP/1 server then reads the connection in
// the background to notice the client leaving, and a deadline firing there
// would cancel the request (it clears the deadline itself at the end of the
// body, but a read after it would set one again).
func (c *clock) bodyEnded(err error) {
	if c.timeout <= 0 {
		return
	}
	c.mu.Lock()
	if !c.bodyDone && !errors.Is(err, os.ErrDeadlineExceeded) {
		c.bodyDone = true
		if !c.over && !c.read.IsZero() {
			c.read = time.Time{}
			http.NewResponseController(c.w).SetReadDeadline(time.Time{})
		}
	}
	c.mu.Unlock()
}

// extendWrite pushes the write deadline out before a write of the response.
// Only the handler's goroutine writes.
func (c *clock) extendWrite() {
	if c.timeout <= 0 {
		return
	}
	if d := time.Now().Add(c.timeout); d.Sub(c.write) > c.slack {
		c.mu.Lock()
		if !c.over {
			c.write = d
			http.NewResponseController(c.w).SetWriteDeadline(d)
		}
		c.mu.Unlock()
	}
}

// stop is called when the handler returns. The write deadline set last
// bounds net/http's flush of what is buffered; net/http clears it, and
// sets its own read deadlines, before the next request.
//
// A body not read to its end (the backend answered before it took it
// all, or before it asked for it with 100 Continue) is what net/http's
// HTTP/1 server reads and drops next, up to 256 KiB, before the connection
// may serve another request: that read gets the timeout too, if no read of
// the body set one already.
func (c *clock) stop(hasBody bool) {
	if c.timeout <= 0 {
		return
	}
	c.mu.Lock()
	c.over = true
	if hasBody && !c.bodyDone && c.read.IsZero() {
		http.NewResponseController(c.w).SetReadDeadline(time.Now().Add(c.timeout))
	}
	c.mu.Unlock()
}
