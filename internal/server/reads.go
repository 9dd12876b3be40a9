package server

import (
	"net/http"
	"runtime"
	"sync"
	"time"
)

// How a client connection's reads wait. Go's netpoller parks a goroutine on
// a socket only after a read found nothing (EAGAIN), so every wait costs a
// system call that reads nothing. Two of a proxied request's waits need not
// read at once:
//
//   - the read for the next request, right after the answer went: the
//     client has not had the time to send it. The reader first lets the
//     other goroutines run (runtime.Gosched), by which time it has often
//     come.
//   - net/http's background read while the handler runs (it watches for the
//     client leaving, to cancel the request): it waits without reading for
//     net/http to call it off when the handler is done, the connection to
//     close, or bgReadWait, after which it reads as before. A client that
//     leaves during a request is seen at most bgReadWait late; HAProxy
//     does not look at all by default (option abortonclose).
//
// Neither changes what is read, nor when a request is answered.

// bgReadWait is how long net/http's background read waits before it
// reads: longer than most requests take, short against a person's wait.
const bgReadWait = 50 * time.Millisecond

// States of a connection's background read (countedConn.bg).
const (
	bgOff    int32 = iota // reads read
	bgOn                  // a request without a body is being handled
	bgParked              // and its background read waits
)

// backgroundReadQuiet marks r's connection as handling r, if r is an HTTP/1
// request without a body (then net/http's only read of the connection until
// the handler returns is its background read), and returns the connection,
// whose handled ends the mark; nil if not marked.
func backgroundReadQuiet(r *http.Request) *countedConn {
	if r.ProtoMajor != 1 || r.Body != http.NoBody {
		return nil
	}
	c, _ := r.Context().Value(servedKey{}).(*countedConn)
	if c != nil {
		c.bg.Store(bgOn)
	}
	return c
}

// handled ends the mark of backgroundReadQuiet. A background read still
// waiting stays so until net/http calls it off (SetReadDeadline), as it does
// next.
func (c *countedConn) handled() { c.bg.CompareAndSwap(bgOn, bgOff) }

// hijacked ends c's background read's part: the reads of a hijacked
// connection are net/http's no more. net/http called its background read
// off before it let go; a read still parked would be woken all the same.
func (c *countedConn) hijacked() { c.wakeBackgroundRead() }

// bgWaiter is what a parked background read waits with. A connection parks
// at most one read at a time, and most connections serve few requests:
// waiters are lent from a pool for the wait rather than made per
// connection (a channel and a timer each).
type bgWaiter struct {
	wake  chan struct{} // buffered: the waker never blocks
	timer *time.Timer
}

var bgWaiters = sync.Pool{New: func() any {
	t := time.NewTimer(bgReadWait)
	t.Stop()
	return &bgWaiter{wake: make(chan struct{}, 1), timer: t}
}}

// waitBeforeRead is called before each read of c.
func (c *countedConn) waitBeforeRead() {
	if c.bg.Load() == bgOn {
		// Set before bg says parked, and read by a waker only after it
		// saw that: it is c's until the wait below ends.
		w := bgWaiters.Get().(*bgWaiter)
		c.bgw = w
		if c.bg.CompareAndSwap(bgOn, bgParked) {
			w.timer.Reset(bgReadWait)
			select {
			case <-w.wake:
			case <-w.timer.C:
				if !c.bg.CompareAndSwap(bgParked, bgOff) {
					<-w.wake // sent as the timer fired
				}
			}
			w.timer.Stop()
		}
		// No waker can hold w now: it sends only after taking bg from
		// parked, and the wait above took its value.
		c.bgw = nil
		bgWaiters.Put(w)
		return
	}
	if c.state.Load() == connIdle {
		runtime.Gosched()
	}
}

// wakeBackgroundRead calls a waiting background read off.
func (c *countedConn) wakeBackgroundRead() {
	if c.bg.Swap(bgOff) == bgParked {
		c.bgw.wake <- struct{}{}
	}
}

// SetReadDeadline calls a waiting background read off when t is past, as
// net/http does to end it: after the fd's deadline is set, so that the read
// then returns at once.
func (c *countedConn) SetReadDeadline(t time.Time) error {
	err := c.TCPConn.SetReadDeadline(t)
	c.wakeIfPast(t)
	return err
}

// SetDeadline is SetReadDeadline and the write deadline.
func (c *countedConn) SetDeadline(t time.Time) error {
	err := c.TCPConn.SetDeadline(t)
	c.wakeIfPast(t)
	return err
}

// wakeIfPast calls a waiting background read off if the read deadline just
// set, t, is past.
func (c *countedConn) wakeIfPast(t time.Time) {
	if c.bg.Load() != bgOff && !t.IsZero() && t.Before(time.Now()) {
		c.wakeBackgroundRead()
	}
}
