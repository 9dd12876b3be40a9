package upstream

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"net/textproto"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hipsterd/hipsterd/internal/exchange"
)

// MaxResponseHeaderBytes bounds a backend's response head: its status line
// and header fields, each interim (1xx) response's on its own. Past it the
// exchange fails with a 502. net/http's Transport allows 10 MiB, nginx 4 to
// 8 KiB.
const MaxResponseHeaderBytes = 64 << 10

// h1Transport sends requests to one backend over kept-alive HTTP/1.1
// connections, on the caller's goroutine; a request body is sent by a
// goroutine of its own while the caller waits for the response, which may
// come before the body is done.
//
// net/http's Transport hands every request to two goroutines of its
// connection and back, through channels and selects; for the small requests
// that make up most proxy traffic that costs more than the HTTP itself. One
// transport for every request also means one behaviour: the same request
// line and header order as net/http's Transport, the same bound on response
// heads, the same check of idle connections.
type h1Transport struct {
	dial func(context.Context) (net.Conn, error)
	// timeout bounds the wait for the response header once the request is
	// sent; 0: none.
	timeout time.Duration
	// bodyTimeout bounds each wait for bytes of a response body; 0: none.
	bodyTimeout time.Duration
	log         *slog.Logger // names the backend
	// sendProxy is set for a send-proxy backend, whose connections open
	// with a PROXY header.
	sendProxy bool

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
	// h1IdleCheck is how often idle connections are looked at for bytes
	// their backend sent unasked, or a close.
	h1IdleCheck = time.Second
	// h1Max1xx bounds the interim responses read before the final one, as
	// net/http does.
	h1Max1xx = 5
)

// h1Conn is one connection to the backend.
type h1Conn struct {
	net.Conn
	t      *h1Transport
	head   headLimit // between Conn and br
	br     *bufio.Reader
	bw     *bufio.Writer
	abort  func() // ends the exchange under way: the client went away
	idleAt time.Time
	// owner is the client connection a send-proxy backend's connection
	// serves; nil for a connection of the backend's pool.
	owner *ClientConn
	sock  sockOps
}

func (t *h1Transport) newConn(c net.Conn) *h1Conn {
	pc := &h1Conn{Conn: c, t: t, head: headLimit{c: c, left: math.MaxInt64}}
	pc.br = bufio.NewReader(&pc.head)
	pc.bw = bufio.NewWriter(c)
	pc.abort = func() { pc.SetDeadline(time.Unix(1, 0)) }
	pc.initSock()
	return pc
}

// headLimit counts what is read from the connection while a response head
// is read, so that a backend sending header fields without end fails the
// exchange instead of growing memory. The count includes what the buffered
// reader reads ahead, as net/http's does.
type headLimit struct {
	c    net.Conn
	left int64
}

var errHeaderTooLarge = fmt.Errorf("response header larger than %d bytes", MaxResponseHeaderBytes)

func (l *headLimit) Read(p []byte) (int, error) {
	if l.left <= 0 {
		return 0, errHeaderTooLarge
	}
	if int64(len(p)) > l.left {
		p = p[:l.left]
	}
	n, err := l.c.Read(p)
	l.left -= int64(n)
	return n, err
}

var (
	errToo1xx     = errors.New("too many 1xx responses")
	errUnasked101 = errors.New("101 Switching Protocols to a request that asked for no upgrade")
)

// ClientError is a request that failed for the client's fault: its body was
// malformed or shorter than it said. The client gets 400, and the backend
// is not blamed.
type ClientError struct{ Err error }

func (e *ClientError) Error() string { return "reading the request body: " + e.Err.Error() }
func (e *ClientError) Unwrap() error { return e.Err }

// hasBody reports whether req has a body to send.
func hasBody(req *http.Request) bool {
	return req.Body != nil && req.Body != http.NoBody && req.ContentLength != 0
}

// roundTrip sends req and returns the response with its header read; s is
// the slot the request holds, released when the response body is done. A
// replayable request without a body that fails on a kept-alive connection
// before any byte of a response is sent again on a new connection.
func (t *h1Transport) roundTrip(req *http.Request, s *Slot, info *exchange.Info) (*http.Response, error) {
	ctx := req.Context()
	resend := !hasBody(req) && replayable(req)
	// The PROXY header of a send-proxy backend's connection names one
	// client: such a connection serves one client connection only (owner),
	// and an upgrade, whose connection becomes that client's tunnel, gets a
	// new one.
	var owner *ClientConn
	if t.sendProxy && req.Header.Get("Upgrade") == "" {
		owner = clientConnOf(ctx)
	}
	for {
		var pc *h1Conn
		switch {
		case owner != nil:
			if pc = owner.get(t); pc != nil && !pc.fit() {
				pc.Close()
				pc = nil
			}
		case !t.sendProxy:
			pc = t.get()
		}
		reused := pc != nil
		if !reused {
			dctx := ctx
			if t.sendProxy {
				dctx = withRemote(ctx, req.RemoteAddr)
			}
			c, err := t.dial(dctx)
			if err != nil {
				return nil, err
			}
			pc = t.newConn(c)
			pc.owner = owner
		}
		resp, retry, err := t.exchange(ctx, pc, req, s)
		if err == nil {
			return resp, nil
		}
		pc.Close()
		// A kept-alive connection that the backend closed as the request
		// went out fails before any byte of a response: try once more.
		if !reused || !retry || !resend || ctx.Err() != nil {
			return nil, err
		}
		s.b.counters.Resends.Add(1)
		if info != nil {
			info.Retries++
		}
	}
}

// exchange sends req on pc and reads the response header. retry reports
// that nothing came back and the backend did not time out.
func (t *h1Transport) exchange(ctx context.Context, pc *h1Conn, req *http.Request, s *Slot) (resp *http.Response, retry bool, err error) {
	var w *bodyWriter // set once the head is sent
	body := hasBody(req)
	if !body && t.timeout > 0 {
		// Set before the abort can come, which no later deadline may undo.
		pc.SetReadDeadline(time.Now().Add(t.timeout))
	}
	// The client going away aborts the exchange, and the body after it.
	stop := context.AfterFunc(ctx, pc.abort)
	defer func() {
		if err != nil {
			stop()
			if w != nil && ctx.Err() != nil {
				// The client's connection failed (its body stalled past
				// client-timeout, or was cut short) and net/http cancelled
				// the request: the body writer, whose read of the body
				// fails too, tells whose fault it was.
				<-w.done
			}
			if cerr := w.clientErr(); cerr != nil {
				err, retry = cerr, false
			}
		}
	}()
	writeRequest(pc.bw, req)
	// The head goes at once, body or not: the backend may answer it
	// before the body comes (a 401, a 413, a 100 Continue), as with
	// net/http's Transport, which flushes the head of a body not in memory.
	if err := pc.bw.Flush(); err != nil {
		return nil, true, err
	}
	if body {
		w = &bodyWriter{conn: pc, done: make(chan struct{})}
		if expectsContinue(req) {
			w.cont = make(chan bool, 1)
		}
		go w.run(t, pc, req)
	}
	pc.head.left = MaxResponseHeaderBytes
	if _, err := pc.br.Peek(1); err != nil {
		// The backend may have closed the connection before it read the
		// request, or after.
		return nil, !isTimeout(err), pc.headErr(err)
	}
	trace := httptrace.ContextClientTrace(ctx)
	for n := 0; ; n++ {
		resp, err = http.ReadResponse(pc.br, req)
		if err != nil {
			return nil, false, pc.headErr(err)
		}
		code := resp.StatusCode
		if code < 100 || code > 599 {
			// http.ReadResponse takes any three digits, and a
			// ResponseWriter panics on a code below 100; RFC 9110 §15
			// defines 100 to 599 only.
			return nil, false, fmt.Errorf("malformed HTTP status code %03d", code)
		}
		if code >= 200 {
			break
		}
		if code == http.StatusSwitchingProtocols {
			if err := checkUpgrade(req, resp); err != nil {
				return nil, false, err
			}
			break
		}
		if n == h1Max1xx {
			return nil, false, errToo1xx
		}
		if code == http.StatusContinue {
			// Not passed on: the body writer's first read of the body
			// makes net/http send the client its own 100 Continue, once,
			// whatever the backend sends and whenever.
			if w != nil {
				w.proceed(true)
			}
		} else if trace != nil && trace.Got1xxResponse != nil {
			// Other interim responses (103 Early Hints) reach the client
			// through the trace ReverseProxy installs.
			if err := trace.Got1xxResponse(code, textproto.MIMEHeader(resp.Header)); err != nil {
				return nil, false, err
			}
		}
		pc.head.left = MaxResponseHeaderBytes
	}
	pc.head.left = math.MaxInt64
	if resp.StatusCode == http.StatusSwitchingProtocols {
		pc.SetDeadline(time.Time{})
		if !stop() {
			return nil, false, ctx.Err() // the client left as the answer came
		}
		resp.Body = &upgraded{pc: pc, slot: s}
		return resp, false, nil
	}
	rb := &h1Body{ReadCloser: resp.Body, pc: pc, ctx: ctx, stop: stop, keep: !resp.Close, w: w, slot: s, left: resp.ContentLength}
	if w != nil {
		w.answered()
		if rb.unread() {
			rb.arm()
		}
		if ctx.Err() != nil {
			pc.abort()
		}
	} else if rb.unread() {
		// The header deadline must not cut the body short, and the body
		// deadline starts; when the body is already read (most small
		// responses) it goes with the connection to the pool, which
		// clears the deadline.
		rb.arm()
		if ctx.Err() != nil {
			pc.abort() // the client left as the deadline was moved
		}
	}
	resp.Body = rb
	return resp, false, nil
}

// headErr names a response head that grew past the limit.
func (pc *h1Conn) headErr(err error) error {
	if pc.head.left <= 0 {
		return errHeaderTooLarge
	}
	return err
}

// checkUpgrade checks that a 101 answer switches to the protocol the
// request asked for, as ReverseProxy does.
func checkUpgrade(req *http.Request, resp *http.Response) error {
	asked := req.Header.Get("Upgrade")
	if asked == "" {
		return errUnasked101
	}
	if got := resp.Header.Get("Upgrade"); !strings.EqualFold(got, asked) {
		return fmt.Errorf("backend switched protocols to %q, not %q", got, asked)
	}
	return nil
}

// upgraded is the body of a 101 response: the connection, which now
// belongs to whoever tunnels it.
type upgraded struct {
	pc   *h1Conn
	slot *Slot
}

func (u *upgraded) Read([]byte) (int, error) { return 0, io.EOF }
func (u *upgraded) Close() error             { return u.pc.Close() }

// expectContinueTimeout is how long the body of a request with Expect:
// 100-continue waits for the backend's 100 Continue before it is sent
// anyway, as net/http's Transport does by default: some backends never
// send one.
const expectContinueTimeout = time.Second

// errBodyNotSent is a body not sent: the backend gave its final answer to
// a head that asked for 100 Continue.
var errBodyNotSent = errors.New("final response before 100 Continue: body not sent")

// expectsContinue reports whether req asks for 100 Continue before its
// body.
func expectsContinue(req *http.Request) bool {
	for _, v := range req.Header["Expect"] {
		if strings.EqualFold(textproto.TrimString(v), "100-continue") {
			return true
		}
	}
	return false
}

// bodyWriter sends a request body while the response is awaited.
type bodyWriter struct {
	conn net.Conn
	done chan struct{} // closed when the body is sent or failed
	err  error         // set before done closes
	// client tells that err is the client's (reading its body failed).
	client bool
	// cont, for a request with Expect: 100-continue, gets true when the
	// backend asks for the body, false when it answered without it; nil
	// for other requests.
	cont chan bool
	// asked is set once cont got its one value.
	asked atomic.Bool

	mu       sync.Mutex
	response bool // the response header came
}

// run sends req's body on pc, then arms the response timeout, unless the
// response came first. A client whose body breaks aborts the exchange: the
// backend got a truncated request. So does a backend that takes no byte of
// the body for the response timeout, before answering: the upload would
// otherwise stall for ever, and the wait for its answer with it.
func (w *bodyWriter) run(t *h1Transport, pc *h1Conn, req *http.Request) {
	client, err := false, w.awaitContinue(req)
	if err == nil {
		client, err = writeBody(pc.bw, req, pc.Conn, t.timeout)
	}
	if err == nil {
		err = pc.bw.Flush()
	}
	w.mu.Lock()
	w.err, w.client = err, client
	switch {
	case err == nil && !w.response && t.timeout > 0:
		pc.SetReadDeadline(time.Now().Add(t.timeout))
		if req.Context().Err() != nil {
			pc.abort() // the client left as the deadline was set
		}
	case !client && isTimeout(err) && !w.response:
		pc.abort()
	}
	// Once the answer came, it is passed on whole: a body that broke
	// only keeps the connection from being reused.
	abort := client && !w.response
	w.mu.Unlock()
	close(w.done)
	if abort {
		pc.abort()
	}
}

// awaitContinue waits, for a request with Expect: 100-continue, until the
// backend asks for the body, or expectContinueTimeout passes; it fails if
// the backend answered without it, or the client left.
func (w *bodyWriter) awaitContinue(req *http.Request) error {
	if w.cont == nil {
		return nil
	}
	timer := time.NewTimer(expectContinueTimeout)
	defer timer.Stop()
	select {
	case send := <-w.cont:
		if !send {
			return errBodyNotSent
		}
	case <-timer.C:
	case <-req.Context().Done():
		return req.Context().Err()
	}
	return nil
}

// proceed tells a writer that awaits 100 Continue whether to send the
// body; only the first word counts.
func (w *bodyWriter) proceed(send bool) {
	if w.cont != nil && w.asked.CompareAndSwap(false, true) {
		w.cont <- send
	}
}

// answered tells the writer that the response header came; the response
// timeout no longer applies, and a body still awaiting 100 Continue is not
// sent.
func (w *bodyWriter) answered() {
	w.proceed(false)
	w.mu.Lock()
	w.response = true
	w.conn.SetReadDeadline(time.Time{})
	w.mu.Unlock()
}

// sent reports whether the whole body went out.
func (w *bodyWriter) sent() bool {
	select {
	case <-w.done:
		return w.err == nil
	default:
		return false
	}
}

// clientErr is the client's error, if its body failed already.
func (w *bodyWriter) clientErr() error {
	if w == nil {
		return nil
	}
	select {
	case <-w.done:
		if w.client {
			return &ClientError{w.err}
		}
	default:
	}
	return nil
}

// writeBody copies req's body to bw, chunked when its length is unknown,
// with its trailers; client reports that err came from reading the body.
// Each write to conn, bw's connection, must make progress within timeout
// (0: no limit); the client's pace does not count.
func writeBody(bw *bufio.Writer, req *http.Request, conn net.Conn, timeout time.Duration) (client bool, err error) {
	buf := bufferPool.Get()
	defer bufferPool.Put(buf)
	var dst io.Writer = bw
	var cw io.WriteCloser
	if req.ContentLength < 0 {
		cw = httputil.NewChunkedWriter(bw)
		dst = cw
	}
	for {
		n, rerr := req.Body.Read(buf)
		if n > 0 {
			if err := armWrite(conn, req, timeout); err != nil {
				return false, err
			}
			if _, err := dst.Write(buf[:n]); err != nil {
				return false, err
			}
			// A streamed upload reaches the backend as it comes.
			if err := bw.Flush(); err != nil {
				return false, err
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return true, rerr
		}
	}
	if cw == nil {
		return false, nil
	}
	// The client may have taken its time to end the body.
	if err := armWrite(conn, req, timeout); err != nil {
		return false, err
	}
	if err := cw.Close(); err != nil {
		return false, err
	}
	for k, vv := range req.Trailer {
		k = http.CanonicalHeaderKey(k)
		if dropTrailer(k) {
			continue
		}
		for _, v := range vv {
			writeField(bw, k, v)
		}
	}
	_, err = bw.WriteString("\r\n")
	return false, err
}

// armWrite gives the next write of req's body to conn timeout to make
// progress (0: no limit), unless the client left meanwhile: the deadline
// in the past that aborted the exchange must not be undone.
func armWrite(conn net.Conn, req *http.Request, timeout time.Duration) error {
	if timeout <= 0 {
		return nil
	}
	conn.SetWriteDeadline(time.Now().Add(timeout))
	return req.Context().Err()
}

// trailersDropped are the fields a request trailer may not set (RFC 9110
// §6.5.1): a backend that merges trailers into the header would take them
// for what routed, framed or forwarded the request, which hipsterd checked
// or wrote in the head. Keys are canonical.
var trailersDropped = []string{
	"Authorization", "Cache-Control", "Connection", "Content-Encoding",
	"Content-Length", "Content-Range", "Content-Type", "Cookie", "Expect",
	"Forwarded", "Host", "If-Match", "If-Modified-Since", "If-None-Match",
	"If-Range", "If-Unmodified-Since", "Keep-Alive", "Max-Forwards", "Pragma",
	"Proxy-Authorization", "Proxy-Connection", "Range", "Te", "Trailer",
	"Transfer-Encoding", "Upgrade", "Via", "X-Forwarded-For",
	"X-Forwarded-Host", "X-Forwarded-Proto", "X-Real-Ip",
}

// dropTrailer reports whether the request trailer field k (canonical) is
// left out.
func dropTrailer(k string) bool { return slices.Contains(trailersDropped, k) }

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

// keysPool lends writeRequest a slice to sort header names in.
var keysPool = sync.Pool{New: func() any { s := make([]string, 0, 32); return &s }}

// writeRequest writes req's head as net/http's Transport does (Request.write):
// the request line with URL.RequestURI, Host, User-Agent, the framing
// headers, then the other headers sorted by name, values trimmed and on
// one line.
func writeRequest(w *bufio.Writer, req *http.Request) {
	uri := req.URL.RequestURI()
	if req.Method == "CONNECT" && req.URL.Path == "" {
		uri = req.URL.Host
		if req.URL.Opaque != "" {
			uri = req.URL.Opaque
		}
	}
	w.WriteString(req.Method)
	w.WriteByte(' ')
	w.WriteString(uri)
	w.WriteString(" HTTP/1.1\r\nHost: ")
	host := req.Host
	if host == "" {
		host = req.URL.Host
	}
	w.WriteString(host)
	w.WriteString("\r\n")
	// ReverseProxy sets an empty User-Agent to mean "send none".
	if ua := req.Header.Get("User-Agent"); ua != "" {
		writeField(w, "User-Agent", ua)
	}
	switch body := hasBody(req); {
	case body && req.ContentLength > 0:
		w.WriteString("Content-Length: ")
		w.Write(strconv.AppendInt(w.AvailableBuffer(), req.ContentLength, 10))
		w.WriteString("\r\n")
	case body:
		w.WriteString("Transfer-Encoding: chunked\r\n")
	case req.Method == "POST" || req.Method == "PUT" || req.Method == "PATCH":
		// As net/http does: servers expect a length for these methods.
		w.WriteString("Content-Length: 0\r\n")
	}
	if len(req.Trailer) > 0 && hasBody(req) && req.ContentLength < 0 {
		names := make([]string, 0, len(req.Trailer))
		for k := range req.Trailer {
			if k = http.CanonicalHeaderKey(k); !dropTrailer(k) {
				names = append(names, k)
			}
		}
		if len(names) > 0 {
			slices.Sort(names)
			writeField(w, "Trailer", strings.Join(names, ","))
		}
	}
	kp := keysPool.Get().(*[]string)
	keys := (*kp)[:0]
	for k := range req.Header {
		switch k {
		case "Host", "User-Agent", "Content-Length", "Transfer-Encoding", "Trailer":
			continue
		}
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		for _, v := range req.Header[k] {
			writeField(w, k, v)
		}
	}
	clear(keys)
	*kp = keys[:0]
	keysPool.Put(kp)
	w.WriteString("\r\n")
}

func writeField(w *bufio.Writer, k, v string) {
	if strings.ContainsAny(v, "\r\n") {
		v = newlineToSpace.Replace(v)
	}
	w.WriteString(k)
	w.WriteString(": ")
	w.WriteString(textproto.TrimString(v))
	w.WriteString("\r\n")
}

// h1Body is a response body; once read to its end, its connection goes back
// to the pool.
type h1Body struct {
	io.ReadCloser
	pc   *h1Conn
	ctx  context.Context // the request's
	stop func() bool
	keep bool        // the response allows reusing the connection
	w    *bodyWriter // nil for a request without a body
	slot *Slot
	// left is what the Content-Length says is still to come; -1 when
	// the body has no length.
	left int64
	// deadline is the read deadline the body timeout set last; zero:
	// none.
	deadline time.Time
}

// ErrBodyTimeout is a backend that sent no byte of a response body for its
// body-timeout. The client's response ends cut short; the backend's health
// does not suffer (it answered).
var ErrBodyTimeout = errors.New("no byte of the response body within body-timeout")

func (b *h1Body) Read(p []byte) (int, error) {
	if b.pc == nil {
		return 0, io.EOF
	}
	if b.pc.t.bodyTimeout > 0 && b.unread() {
		b.arm()
	}
	n, err := b.ReadCloser.Read(p)
	if b.left > 0 {
		b.left -= int64(n)
	}
	if err == io.EOF {
		b.release(true)
	} else if err != nil && isTimeout(err) && b.ctx.Err() == nil {
		err = fmt.Errorf("%w (%v): %w", ErrBodyTimeout, b.pc.t.bodyTimeout, err)
	}
	return n, err
}

// unread reports whether a read of the body may have to wait for the
// backend: what is left of it is not all in the buffer.
func (b *h1Body) unread() bool {
	return b.left < 0 || int64(b.pc.br.Buffered()) < b.left
}

// arm gives the backend body-timeout for its next bytes. The deadline
// moves only when it would move by more than an eighth of the timeout,
// which is precision enough and spares a timer update per read of a
// streamed body. Its caller checks that the client did not leave
// meanwhile: that abort's deadline must not be undone.
func (b *h1Body) arm() {
	timeout := b.pc.t.bodyTimeout
	if timeout <= 0 {
		// Called at the head only: the header deadline must not cut
		// the body (a request body's writer cleared it already).
		if b.pc.t.timeout > 0 && b.w == nil {
			b.pc.SetReadDeadline(time.Time{})
		}
		return
	}
	if d := time.Now().Add(timeout); d.Sub(b.deadline) > timeout/8 {
		b.deadline = d
		b.pc.SetReadDeadline(d)
		if b.ctx.Err() != nil {
			b.pc.abort()
		}
	}
}

func (b *h1Body) Close() error {
	if b.pc != nil {
		b.release(false)
	}
	return nil
}

// release ends the exchange: the connection is kept when its response was
// read to the end, the request body went out whole, and nothing else came.
func (b *h1Body) release(complete bool) {
	pc := b.pc
	b.pc = nil
	b.slot.Release()
	// stop fails when the client went away: the deadline may be set.
	if !b.stop() || !complete || !b.keep || (b.w != nil && !b.w.sent()) {
		pc.Close()
		return
	}
	if n := pc.br.Buffered(); n > 0 {
		stray, _ := pc.br.Peek(min(n, 64))
		pc.t.unsolicited(stray)
		pc.Close()
		return
	}
	pc.t.put(pc)
}

// unsolicited logs bytes a backend sent that no request asked for: the
// connection they came on is closed, and no client gets them.
func (t *h1Transport) unsolicited(stray []byte) {
	t.log.Warn("Unsolicited response received on idle HTTP channel; connection closed", "starting_with", fmt.Sprintf("%q", stray))
}

// get returns the most recently used idle connection that is still fit for
// a request, or nil.
func (t *h1Transport) get() *h1Conn {
	for {
		t.mu.Lock()
		n := len(t.idle)
		if n == 0 {
			t.mu.Unlock()
			return nil
		}
		pc := t.idle[n-1]
		t.idle[n-1] = nil
		t.idle = t.idle[:n-1]
		t.mu.Unlock()
		if pc.fit() {
			return pc
		}
		pc.Close()
	}
}

// fit checks an idle connection, without blocking, before a request goes on
// it: one the backend closed, or sent bytes on unasked, is not fit. Those
// bytes are logged: they are an answer to no request, and sent on they
// would reach the wrong client.
func (pc *h1Conn) fit() bool {
	stray, open, ok := pc.peekSocket()
	if !ok {
		stray, open = pc.peekBuffered()
	}
	if len(stray) > 0 {
		pc.t.unsolicited(stray)
		return false
	}
	return open
}

// tlsPeekWait is how long peekBuffered lets bytes queued on a TLS
// connection's socket be read and decrypted.
const tlsPeekWait = 10 * time.Millisecond

// peekBuffered looks for bytes through the buffered reader: for TLS
// connections, whose socket may hold records that carry no data (session
// tickets). A deadline already past would not even read the socket, and
// stray bytes or a close queued there would go unseen: when the socket
// holds something (or cannot be looked at), the read may take a moment.
func (pc *h1Conn) peekBuffered() (stray []byte, open bool) {
	deadline := time.Unix(1, 0)
	if queued, open, ok := pc.peekRaw(); !ok || len(queued) > 0 || !open {
		deadline = time.Now().Add(tlsPeekWait)
	}
	pc.SetReadDeadline(deadline)
	_, err := pc.br.Peek(1)
	pc.SetReadDeadline(time.Time{})
	if n := pc.br.Buffered(); n > 0 {
		stray, _ = pc.br.Peek(min(n, 64))
		return stray, false
	}
	return nil, isTimeout(err)
}

func (t *h1Transport) put(pc *h1Conn) {
	pc.idleAt = time.Now()
	// No deadline of the exchange outlives it.
	pc.SetDeadline(time.Time{})
	if pc.owner != nil || t.sendProxy {
		// Checked at its next use; closed with its client connection.
		if pc.owner == nil || !pc.owner.put(pc) {
			pc.Close()
		}
		return
	}
	t.mu.Lock()
	if t.closed || len(t.idle) >= h1MaxIdle {
		t.mu.Unlock()
		pc.Close()
		return
	}
	t.idle = append(t.idle, pc)
	if !t.sweeping {
		t.sweeping = true
		time.AfterFunc(h1IdleCheck, t.sweep)
	}
	t.mu.Unlock()
}

// sweep runs every h1IdleCheck while connections are idle. It closes
// those idle for longer than h1IdleTimeout, which sit at the bottom of the
// stack, and looks at the others' sockets without waiting: one the backend
// sent bytes on unasked, or closed, leaves the pool now, not only at its
// next use, and the bytes are logged (fit).
func (t *h1Transport) sweep() {
	cutoff := time.Now().Add(-h1IdleTimeout)
	var suspect []*h1Conn
	t.mu.Lock()
	n := 0
	for n < len(t.idle) && t.idle[n].idleAt.Before(cutoff) {
		t.idle[n].Close()
		n++
	}
	t.idle = slices.Delete(t.idle, 0, n)
	t.idle = slices.DeleteFunc(t.idle, func(pc *h1Conn) bool {
		queued, open, ok := pc.peekRaw()
		if ok && (len(queued) > 0 || !open) {
			suspect = append(suspect, pc)
			return true
		}
		return false
	})
	t.sweeping = len(t.idle) > 0 && !t.closed
	if t.sweeping {
		time.AfterFunc(h1IdleCheck, t.sweep)
	}
	t.mu.Unlock()
	for _, pc := range suspect {
		if pc.fit() {
			t.put(pc) // TLS records that carried no data
			continue
		}
		pc.Close()
	}
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
