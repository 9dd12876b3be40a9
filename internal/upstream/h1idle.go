package upstream

import (
	"fmt"
	"slices"
	"time"
)

const (
	// h1MaxIdle is the most idle connections kept per backend: enough for
	// the concurrency of a busy frontend, so bursts do not open new ones.
	h1MaxIdle = 256
	// h1IdleTimeout is how long an idle connection is kept.
	h1IdleTimeout = 90 * time.Second
	// h1IdleCheck is how often idle connections are looked at for bytes
	// their backend sent unasked, or a close.
	h1IdleCheck = time.Second
)

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

// keep puts pc, whose exchange is over, back in the pool, unless its
// backend sent more than was asked.
func (t *h1Transport) keep(pc *h1Conn) {
	if n := pc.br.Buffered(); n > 0 {
		stray, _ := pc.br.Peek(min(n, 64))
		t.unsolicited(stray)
		pc.Close()
		return
	}
	t.put(pc)
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
