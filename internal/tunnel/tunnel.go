// Package tunnel copies bytes both ways between two connections, as a
// WebSocket proxy does once the upgrade is done, and keeps a registry of the
// open tunnels: http.Server.Shutdown does not see hijacked connections.
//
// Between two TCP connections on Linux a tunnel costs no goroutine while it
// is idle: both sockets wait in an epoll set of the package's own, and a
// burst is copied when it arrives (see reactor_linux.go). Elsewhere, and for
// TLS connections, each direction is a goroutine.
package tunnel

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// closeWriter is a connection that can shut down its sending side alone
// (*net.TCPConn, *tls.Conn), passing a half-close on.
type closeWriter interface {
	CloseWrite() error
}

// DefaultHalfCloseTimeout is how long a tunnel stays half-closed.
const DefaultHalfCloseTimeout = 5 * time.Second

// Registry tracks open tunnels. Its zero value is ready to use.
type Registry struct {
	// HalfCloseTimeout is how long the other side may go on sending after one
	// side ended its stream; then the tunnel is closed. A peer that closed
	// its connection entirely cannot be told apart from one that only shut
	// down its sending half, and WebSocket has no use for half-open tunnels,
	// so this bounds how long such a tunnel lingers. Zero means
	// DefaultHalfCloseTimeout.
	HalfCloseTimeout time.Duration

	mu   sync.Mutex
	open map[*tunnel]struct{}
}

// A tunnel is two connections and the bytes copied to each.
type tunnel struct {
	a, b     net.Conn
	toA, toB atomic.Int64
	linger   time.Duration
	reg      *Registry
	done     func(toA, toB int64)

	ended     atomic.Int32 // directions that ended cleanly
	closeOnce sync.Once
	mu        sync.Mutex
	lingering *time.Timer
	// unwatch takes the tunnel's sockets out of the reactor; nil for a
	// tunnel run by goroutines.
	unwatch func()
}

// Start copies bytes from a to b and from b to a until both directions have
// ended, then closes both and calls done with the bytes copied to a and to
// b. It returns at once. When one side ends its stream cleanly, the other
// side's writing half is shut down (a half-close is passed on), and the
// other direction has HalfCloseTimeout to end too; when a direction fails,
// both connections are closed.
//
// Callers should pass the raw connections (*net.TCPConn where possible),
// having forwarded any bytes they buffered.
func (r *Registry) Start(a, b net.Conn, done func(toA, toB int64)) {
	t := &tunnel{a: a, b: b, reg: r, done: done, linger: r.HalfCloseTimeout}
	if t.linger <= 0 {
		t.linger = DefaultHalfCloseTimeout
	}
	arm := watch(t)
	r.add(t)
	if arm != nil {
		arm()
	} else {
		go t.run()
	}
}

// run copies both directions with a goroutine each.
func (t *tunnel) run() {
	half := make(chan struct{})
	go copyHalf(half, t, t.b, t.a, &t.toB)
	t.pipe(t.a, t.b, &t.toA)
	<-half
	t.close()
}

// copyHalf is a goroutine of its own so that a stack dump names it.
func copyHalf(done chan<- struct{}, t *tunnel, dst, src net.Conn, n *atomic.Int64) {
	t.pipe(dst, src, n)
	close(done)
}

// pipe copies src to dst. When src ends cleanly it passes the half-close on
// to dst and gives dst linger to finish the other direction.
func (t *tunnel) pipe(dst, src net.Conn, count *atomic.Int64) {
	n, err := io.Copy(dst, src)
	count.Add(n)
	if err != nil {
		t.shut()
		return
	}
	if cw, ok := dst.(closeWriter); ok && cw.CloseWrite() == nil {
		dst.SetReadDeadline(time.Now().Add(t.linger))
		return
	}
	t.shut()
}

// endedOne is called by the reactor when a direction ended cleanly, after it
// passed the half-close on: the tunnel closes when both have, or linger
// from now.
func (t *tunnel) endedOne() {
	if t.ended.Add(1) == 2 {
		t.close()
		return
	}
	t.mu.Lock()
	t.lingering = time.AfterFunc(t.linger, t.close)
	t.mu.Unlock()
}

// shut closes both connections, which ends whatever copies between them.
func (t *tunnel) shut() {
	t.a.Close()
	t.b.Close()
}

// close ends the tunnel, once: its sockets leave the reactor and close, it
// leaves the registry, and done learns the byte counts.
func (t *tunnel) close() {
	t.closeOnce.Do(func() {
		t.mu.Lock()
		if t.lingering != nil {
			t.lingering.Stop()
		}
		t.mu.Unlock()
		if t.unwatch != nil {
			t.unwatch()
		}
		t.shut()
		t.reg.remove(t)
		t.done(t.toA.Load(), t.toB.Load())
	})
}

func (r *Registry) add(t *tunnel) {
	r.mu.Lock()
	if r.open == nil {
		r.open = map[*tunnel]struct{}{}
	}
	r.open[t] = struct{}{}
	r.mu.Unlock()
}

func (r *Registry) remove(t *tunnel) {
	r.mu.Lock()
	delete(r.open, t)
	r.mu.Unlock()
}

// Len is the number of open tunnels.
func (r *Registry) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.open)
}

// CloseAll closes every open tunnel.
func (r *Registry) CloseAll() {
	r.mu.Lock()
	open := make([]*tunnel, 0, len(r.open))
	for t := range r.open {
		open = append(open, t)
	}
	r.mu.Unlock()
	for _, t := range open {
		// A goroutine tunnel ends, and reports, once its copies return; a
		// reactor tunnel has nothing running that would notice.
		if t.unwatch != nil {
			t.close()
		} else {
			t.shut()
		}
	}
}
