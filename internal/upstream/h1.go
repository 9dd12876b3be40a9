package upstream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"strings"
	"sync"
	"time"
)

// MaxResponseHeaderBytes bounds a backend's response head: its status line
// and header fields, each interim (1xx) response's on its own. Past it the
// exchange fails with a 502. net/http's Transport allows 10 MiB, nginx 4 to
// 8 KiB.
const MaxResponseHeaderBytes = 64 << 10

// h1Transport sends requests to one backend over kept-alive HTTP/1.1
// connections, on the caller's goroutine; a request body is sent by a
// goroutine of its own while the caller waits for the response, which may
// come before the body is done. Its parts: the connection (h1conn.go), the
// request writer (h1request.go), the response body (h1body.go) and the
// idle pool (h1idle.go). It never tries a request twice: it says how an
// exchange failed (exchangeError), and Pool.try decides.
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

// h1Max1xx bounds the interim responses read before the final one, as
// net/http does.
const h1Max1xx = 5

var (
	errToo1xx     = errors.New("too many 1xx responses")
	errUnasked101 = errors.New("101 Switching Protocols to a request that asked for no upgrade")
)

// hasBody reports whether req has a body to send.
func hasBody(req *http.Request) bool {
	return req.Body != nil && req.Body != http.NoBody && req.ContentLength != 0
}

// roundTrip sends req, on one connection, and returns the response with
// its header read; s is the slot the request holds, released when the
// response body is done. Its errors are *exchangeError.
func (t *h1Transport) roundTrip(req *http.Request, s *Slot) (*http.Response, error) {
	ctx := req.Context()
	// The PROXY header of a send-proxy backend's connection names one
	// client: such a connection serves one client connection only (owner),
	// and an upgrade, whose connection becomes that client's tunnel, gets a
	// new one.
	var owner *ClientConn
	if t.sendProxy && req.Header.Get("Upgrade") == "" {
		owner = clientConnOf(ctx)
	}
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
			kind := faultConnect
			if IsLocal(err) {
				kind = faultLocal
			}
			return nil, &exchangeError{kind: kind, err: err}
		}
		pc = t.newConn(c)
		pc.owner = owner
	}
	resp, kind, err := t.exchange(ctx, pc, req, s)
	if err != nil {
		pc.Close()
		return nil, &exchangeError{kind: kind, reused: reused, err: err}
	}
	return resp, nil
}

// exchange sends req on pc and reads the response header; kind says how it
// failed.
func (t *h1Transport) exchange(ctx context.Context, pc *h1Conn, req *http.Request, s *Slot) (resp *http.Response, kind fault, err error) {
	var w *bodyWriter // set once the head is sent
	body := hasBody(req)
	if !body && t.timeout > 0 {
		// Set before the abort can come, which no later deadline may undo.
		pc.SetReadDeadline(time.Now().Add(t.timeout))
	}
	// The client going away aborts the exchange, and the body after it.
	stop := context.AfterFunc(ctx, pc.abort)
	defer func() {
		if err == nil {
			return
		}
		stop()
		if w != nil && ctx.Err() != nil {
			// The client's connection failed (its body stalled past
			// client-timeout, or was cut short) and net/http cancelled
			// the request: the body writer, whose read of the body
			// fails too, tells whose fault it was.
			<-w.done
		}
		switch cerr := w.clientErr(); {
		case cerr != nil:
			err, kind = cerr, faultClient
		case ctx.Err() != nil:
			kind = faultClient
		case IsLocal(err):
			kind = faultLocal
		}
	}()
	pc.out.n = 0
	writeRequest(pc.bw, req)
	// The head goes at once, body or not: the backend may answer it
	// before the body comes (a 401, a 413, a 100 Continue), as with
	// net/http's Transport, which flushes the head of a body not in memory.
	if err := pc.send(body); err != nil {
		if pc.out.n == 0 {
			return nil, faultUnsent, err
		}
		if IsTimeout(err) {
			return nil, faultTimeout, err
		}
		return nil, faultLost, err
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
		if IsTimeout(err) {
			return nil, faultTimeout, err
		}
		return nil, faultLost, pc.headErr(err)
	}
	trace := httptrace.ContextClientTrace(ctx)
	for n := 0; ; n++ {
		resp, err = http.ReadResponse(pc.br, req)
		if err != nil {
			return nil, faultBroken, pc.headErr(err)
		}
		code := resp.StatusCode
		if code < 100 || code > 599 {
			// http.ReadResponse takes any three digits, and a
			// ResponseWriter panics on a code below 100; RFC 9110 §15
			// defines 100 to 599 only.
			return nil, faultBroken, fmt.Errorf("malformed HTTP status code %03d", code)
		}
		if code >= 200 {
			break
		}
		if code == http.StatusSwitchingProtocols {
			if err := checkUpgrade(req, resp); err != nil {
				return nil, faultBroken, err
			}
			break
		}
		if n == h1Max1xx {
			return nil, faultBroken, errToo1xx
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
				return nil, faultBroken, err
			}
		}
		pc.head.left = MaxResponseHeaderBytes
	}
	pc.head.left = math.MaxInt64
	if resp.StatusCode == http.StatusSwitchingProtocols {
		pc.SetDeadline(time.Time{})
		if !stop() {
			return nil, faultClient, ctx.Err() // the client left as the answer came
		}
		resp.Body = &upgraded{pc: pc, slot: s}
		return resp, faultNone, nil
	}
	pc.body = bodyState{ctx: ctx, left: resp.ContentLength}
	rb := &h1Body{ReadCloser: resp.Body, pc: pc, stop: stop, keep: !resp.Close, w: w, slot: s}
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
	return resp, faultNone, nil
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
