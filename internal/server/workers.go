package server

import (
	"fmt"
	"net/http"
	"runtime/debug"
	"sync"
)

// HTTP/2 runs every stream's handler on a goroutine of its own, which starts
// with a small stack and grows it, copying it each time, on the way down to
// the backend's socket (about 5 % of an HTTP/2 request's CPU). Workers run
// those handlers on goroutines kept from one request to the next, whose
// stacks have already grown. HTTP/1 needs none: a connection's goroutine
// serves all its requests.

// h2Call is one handler call handed to a worker.
type h2Call struct {
	h    http.Handler
	w    http.ResponseWriter
	r    *http.Request
	done chan any // the handler's panic, or nil
}

var (
	h2Calls     = make(chan *h2Call) // to idle workers
	h2CallPool  = sync.Pool{New: func() any { return &h2Call{done: make(chan any, 1)} }}
	h2IdleLimit = make(chan struct{}, 512) // a token per idle worker
)

// serveOnWorker calls h.ServeHTTP(w, r) on a worker and returns when it
// has; a panic of the handler (http.ErrAbortHandler) is raised again here,
// where net/http expects it.
func serveOnWorker(h http.Handler, w http.ResponseWriter, r *http.Request) {
	c := h2CallPool.Get().(*h2Call)
	c.h, c.w, c.r = h, w, r
	select {
	case h2Calls <- c:
	default:
		go h2Worker(c)
	}
	p := <-c.done
	c.h, c.w, c.r = nil, nil, nil
	h2CallPool.Put(c)
	if p != nil {
		panic(p)
	}
}

// h2Worker runs c, then waits for the next call while fewer than
// cap(h2IdleLimit) workers wait.
func h2Worker(c *h2Call) {
	for {
		c.done <- run(c)
		select {
		case h2IdleLimit <- struct{}{}:
		default:
			return
		}
		c = <-h2Calls
		<-h2IdleLimit
	}
}

// run calls c's handler; a panic other than http.ErrAbortHandler comes back
// with the worker's stack, which net/http's log of it would lack.
func run(c *h2Call) (p any) {
	defer func() {
		if p = recover(); p != nil && p != http.ErrAbortHandler {
			p = fmt.Sprintf("%v\n\nhandler goroutine's stack:\n%s", p, debug.Stack())
		}
	}()
	c.h.ServeHTTP(c.w, c.r)
	return nil
}
