// Package tunnel copies bytes both ways between two connections, as a
// WebSocket proxy does once the upgrade is done, and keeps a registry of the
// open tunnels: http.Server.Shutdown does not see hijacked connections.
package tunnel

import (
	"net"
	"sync"
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

type tunnel struct {
	a, b net.Conn
}

func (t *tunnel) close() {
	t.a.Close()
	t.b.Close()
}

// Splice copies bytes from a to b and from b to a until both directions have
// ended, then closes both. When one side ends its stream cleanly, the other
// side's writing half is shut down (a half-close is passed on); when a
// direction fails, both connections are closed.
//
// With *net.TCPConn on both sides io.Copy uses splice(2), so callers should
// pass the raw connections, having forwarded any bytes they buffered.
// It returns the bytes copied to a and to b.
func (r *Registry) Splice(a, b net.Conn) (toA, toB int64) {
	t := &tunnel{a: a, b: b}
	r.add(t)
	defer r.remove(t)
	defer t.close()

	linger := r.HalfCloseTimeout
	if linger <= 0 {
		linger = DefaultHalfCloseTimeout
	}
	done := make(chan int64, 1)
	go copyHalf(done, t, b, a, linger)
	toA = pipe(t, a, b, linger)
	toB = <-done
	return toA, toB
}

// copyHalf is a goroutine of its own so that a stack dump names it.
func copyHalf(done chan<- int64, t *tunnel, dst, src net.Conn, linger time.Duration) {
	done <- pipe(t, dst, src, linger)
}

// pipe copies src to dst. When src ends cleanly it passes the half-close on
// to dst and gives dst linger to finish the other direction.
func pipe(t *tunnel, dst, src net.Conn, linger time.Duration) int64 {
	n, err := copyStream(dst, src)
	if err != nil {
		t.close()
		return n
	}
	if cw, ok := dst.(closeWriter); ok && cw.CloseWrite() == nil {
		dst.SetReadDeadline(time.Now().Add(linger))
		return n
	}
	t.close()
	return n
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

// CloseAll closes every open tunnel; their Splice calls return soon after.
func (r *Registry) CloseAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for t := range r.open {
		t.close()
	}
}
