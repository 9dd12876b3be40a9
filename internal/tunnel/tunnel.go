// Package tunnel copies bytes both ways between two connections, as a
// WebSocket proxy does once the upgrade is done, and keeps a registry of the
// open tunnels: http.Server.Shutdown does not see hijacked connections.
//
// Between two TCP connections on Linux a tunnel costs no goroutine while it
// is idle: both sockets wait in an epoll set of the package's own, and a
// burst is copied when it arrives (see reactor_linux.go). Elsewhere, and for
// TLS connections, each direction is a goroutine.
//
// A tunnel may have a timeout: when no byte moved either way for that long,
// or a write made no progress for that long, it is closed. One timer per
// Registry looks at the byte counts now and then (idle tunnels still cost
// no goroutine), and writes that block carry a deadline.
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
	// sweep runs sweepIdle every tick while a tunnel with a timeout is open;
	// tick is zero when it is not armed.
	sweep *time.Timer
	tick  time.Duration
}

// A tunnel is two connections and the bytes copied to each.
type tunnel struct {
	a, b     net.Conn
	toA, toB atomic.Int64
	linger   time.Duration
	timeout  time.Duration // zero: none
	reg      *Registry
	done     func(toA, toB int64)

	ended     atomic.Int32 // directions that ended cleanly
	closeOnce sync.Once
	mu        sync.Mutex
	lingering *time.Timer
	// unwatch takes the tunnel's sockets out of the reactor; nil for a
	// tunnel run by goroutines.
	unwatch func()

	// For sweepIdle, guarded by reg.mu: the bytes moved when it last
	// looked, and since when that count has stood still.
	moved int64
	still time.Time
}

// Start copies bytes from a to b and from b to a until both directions have
// ended, then closes both and calls done with the bytes copied to a and to
// b. It returns at once. When one side ends its stream cleanly, the other
// side's writing half is shut down (a half-close is passed on), and the
// other direction has HalfCloseTimeout to end too; when a direction fails,
// both connections are closed. A timeout above zero closes the tunnel when no
// byte moved either way for that long, or when a write made no progress for
// that long (a peer that stopped reading).
//
// Callers should pass the raw connections (*net.TCPConn where possible),
// having forwarded any bytes they buffered.
func (r *Registry) Start(a, b net.Conn, timeout time.Duration, done func(toA, toB int64)) {
	t := &tunnel{a: a, b: b, reg: r, done: done, linger: r.HalfCloseTimeout, timeout: max(timeout, 0)}
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
	_, err := io.Copy(meter{dst, count, t.timeout}, src)
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

// meter is where a goroutine copies to: it counts each write as it is done,
// for sweepIdle to see, and gives it timeout (if any) to complete.
type meter struct {
	conn    net.Conn
	count   *atomic.Int64
	timeout time.Duration
}

func (m meter) Write(p []byte) (int, error) {
	if m.timeout > 0 {
		m.conn.SetWriteDeadline(time.Now().Add(m.timeout))
	}
	n, err := m.conn.Write(p)
	m.count.Add(int64(n))
	return n, err
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

// end closes t from outside, as CloseAll and sweepIdle do. A goroutine
// tunnel ends, and reports, once its copies return; a reactor tunnel has
// nothing running that would notice.
func (t *tunnel) end() {
	if t.unwatch != nil {
		t.close()
	} else {
		t.shut()
	}
}

func (r *Registry) add(t *tunnel) {
	r.mu.Lock()
	if r.open == nil {
		r.open = map[*tunnel]struct{}{}
	}
	r.open[t] = struct{}{}
	if t.timeout > 0 {
		t.still = time.Now()
		if tick := sweepTick(t.timeout); r.tick == 0 || tick < r.tick {
			r.tick = tick
			if r.sweep == nil {
				r.sweep = time.AfterFunc(tick, r.sweepIdle)
			} else {
				r.sweep.Reset(tick)
			}
		}
	}
	r.mu.Unlock()
}

// sweepTick is how often tunnels with timeout d are looked at: often
// enough that one closes at most two ticks late, seldom enough that many
// idle tunnels cost little.
func sweepTick(d time.Duration) time.Duration {
	return min(max(d/8, 10*time.Millisecond), time.Second)
}

// sweepIdle closes the tunnels in which no byte moved for their timeout, and
// comes back while tunnels with a timeout are open. A count that moved
// since the last look restarts the tunnel's quiet time from now, so a
// tunnel is never closed early, and at most two ticks late.
func (r *Registry) sweepIdle() {
	now := time.Now()
	var idle []*tunnel
	r.mu.Lock()
	r.tick = 0
	for t := range r.open {
		if t.timeout == 0 {
			continue
		}
		if moved := t.toA.Load() + t.toB.Load(); moved != t.moved {
			t.moved, t.still = moved, now
		} else if now.Sub(t.still) >= t.timeout {
			idle = append(idle, t)
			continue
		}
		if tick := sweepTick(t.timeout); r.tick == 0 || tick < r.tick {
			r.tick = tick
		}
	}
	if r.tick > 0 {
		r.sweep.Reset(r.tick)
	}
	r.mu.Unlock()
	for _, t := range idle {
		t.end()
	}
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
		t.end()
	}
}
