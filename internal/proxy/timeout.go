package proxy

import (
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/hipsterd/hipsterd/internal/upstream"
)

// clientClock enforces client-timeout on one request: the client may go at
// most timeout without sending a byte of its body while it is read, and
// without taking a byte while the response is written (nginx's
// client_body_timeout and send_timeout, HAProxy's timeout client). Each
// read of the body and each write of the response pushes the connection's
// deadline out; for HTTP/2 the deadlines are the stream's.
//
// A deadline is moved only when it would move by more than an eighth of the
// timeout: moving one costs a timer update (for HTTP/2, a message to the
// connection's goroutine), and a stream of small writes needs no more
// precision than that.
type clientClock struct {
	rc      http.ResponseController
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

	// The wrappers live here, so that a request costs one allocation.
	writer clientWriter
	body   clientBody
}

// newClientClock returns the clock of a request answered on w, and the
// writer to answer it on.
func newClientClock(w http.ResponseWriter, timeout time.Duration) (*clientClock, *clientWriter) {
	c := &clientClock{rc: *http.NewResponseController(w), timeout: timeout, slack: timeout / 8}
	c.writer = clientWriter{ResponseWriter: w, c: c}
	return c, &c.writer
}

// wrapBody returns body, read under the clock.
func (c *clientClock) wrapBody(body io.ReadCloser) io.ReadCloser {
	c.body = clientBody{ReadCloser: body, c: c}
	return &c.body
}

// extendRead pushes the read deadline out before a read of the body.
func (c *clientClock) extendRead() {
	c.mu.Lock()
	if !c.over && !c.bodyDone {
		if d := time.Now().Add(c.timeout); d.Sub(c.read) > c.slack {
			c.read = d
			c.rc.SetReadDeadline(d)
		}
	}
	c.mu.Unlock()
}

// bodyEnded records how a read of the body ended. Past its end the read
// deadline must go: net/http's HTTP/1 server then reads the connection in
// the background to notice the client leaving, and a deadline firing there
// would cancel the request (it clears the deadline itself at the end of the
// body, but a read after it would set one again).
func (c *clientClock) bodyEnded(err error) {
	c.mu.Lock()
	if !c.bodyDone && !upstream.IsTimeout(err) {
		c.bodyDone = true
		if !c.over && !c.read.IsZero() {
			c.read = time.Time{}
			c.rc.SetReadDeadline(time.Time{})
		}
	}
	c.mu.Unlock()
}

// extendWrite pushes the write deadline out before a write of the response.
// Only the handler's goroutine writes.
func (c *clientClock) extendWrite() {
	if d := time.Now().Add(c.timeout); d.Sub(c.write) > c.slack {
		c.mu.Lock()
		if !c.over {
			c.write = d
			c.rc.SetWriteDeadline(d)
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
func (c *clientClock) stop() {
	c.mu.Lock()
	c.over = true
	if c.body.c != nil && !c.bodyDone && c.read.IsZero() {
		c.rc.SetReadDeadline(time.Now().Add(c.timeout))
	}
	c.mu.Unlock()
}

// clientBody is a request body read under a clientClock.
type clientBody struct {
	io.ReadCloser
	c *clientClock
}

func (b *clientBody) Read(p []byte) (int, error) {
	b.c.extendRead()
	n, err := b.ReadCloser.Read(p)
	if err != nil {
		b.c.bodyEnded(err)
	}
	return n, err
}

// clientWriter is a response written under a clientClock. Unwrap keeps
// http.ResponseController's Flush and Hijack reachable.
type clientWriter struct {
	http.ResponseWriter
	c *clientClock
}

// WriteHeader may write to the connection: interim (1xx) responses go out
// at once.
func (w *clientWriter) WriteHeader(code int) {
	w.c.extendWrite()
	w.ResponseWriter.WriteHeader(code)
}

func (w *clientWriter) Write(p []byte) (int, error) {
	w.c.extendWrite()
	return w.ResponseWriter.Write(p)
}

// FlushError is what http.ResponseController.Flush calls.
func (w *clientWriter) FlushError() error {
	w.c.extendWrite()
	return w.c.rc.Flush()
}

// Unwrap returns the wrapped writer, for http.ResponseController.
func (w *clientWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
