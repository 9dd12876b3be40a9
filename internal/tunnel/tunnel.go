// Package tunnel copies bytes both ways between two connections, as a
// WebSocket proxy does once the upgrade is done, and keeps a registry of the
// open tunnels: http.Server.Shutdown does not see hijacked connections.
//
// Between two TCP connections on Linux a tunnel costs no goroutine while it
// is idle, nor a place in Go's poller: both sockets wait in an epoll set of
// the package's own, and a burst is copied when it arrives (see
// reactor_linux.go). Elsewhere, and for TLS connections, each direction is
// a goroutine.
//
// A tunnel may have a timeout: when no byte moved either way for that long,
// or a write made no progress for that long, it is closed. One timer per
// Registry looks at the byte counts now and then (idle tunnels still cost
// no goroutine), and writes that block carry a deadline.
//
// A side that breaks (a reset, a failed read or write) ends the tunnel with
// a reset of both connections (SO_LINGER 0), so that the peer of the other
// side does not take a cut stream for a complete one.
package tunnel

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// closeWriter is a connection that can shut down its sending side alone
// (*net.TCPConn, *tls.Conn), passing a half-close on.
type closeWriter interface {
	CloseWrite() error
}

// Options are a tunnel's timeouts.
type Options struct {
	// Timeout closes the tunnel when no byte moved either way for that
	// long, or when a write made no progress for that long (a peer that
	// stopped reading); zero means none.
	Timeout time.Duration
	// HalfClosed closes the tunnel that long after one side ended its
	// stream: a peer that closed its connection entirely cannot be told
	// apart from one that only shut down its sending half, and a protocol
	// with no use for half-open streams (WebSocket) need not keep one.
	// Zero keeps the other direction open under Timeout alone, as HAProxy
	// does without timeout client-fin and server-fin.
	HalfClosed time.Duration
}

// End is how a tunnel ended.
type End uint8

// The ends of a tunnel.
const (
	// Done: both sides ended their streams.
	Done End = iota
	// Timeout: Options.Timeout or Options.HalfClosed passed.
	Timeout
	// FailedA: a's side broke (a reset, or a read or write on it failed);
	// both connections were reset.
	FailedA
	// FailedB: b's side broke, likewise.
	FailedB
	// Closed: hipsterd closed it (CloseAll, at shutdown), or could not
	// run it.
	Closed
)

// Registry tracks open tunnels. Its zero value is ready to use.
type Registry struct {
	mu   sync.Mutex
	open map[*tunnel]struct{}
	// sweep runs sweepIdle every tick while a tunnel with a timeout is open;
	// tick is zero when it is not armed.
	sweep *time.Timer
	tick  time.Duration
}

// A tunnel is two connections and the bytes copied to each.
type tunnel struct {
	a, b     net.Conn // on a reactor, only wrappers (see watch)
	toA, toB atomic.Int64
	linger   time.Duration // zero: none
	timeout  time.Duration // zero: none
	reg      *Registry
	done     func(toA, toB int64, end End)
	// why is how it ended, plus one; zero until that is known.
	why atomic.Uint32

	ended     atomic.Int32 // directions that ended cleanly
	closeOnce sync.Once
	lingering atomic.Pointer[time.Timer]
	// sides are the tunnel's two directions in a reactor, allocated with
	// it; nil for a tunnel run by goroutines.
	sides *sides

	// For sweepIdle, guarded by reg.mu: the bytes moved when it last
	// looked, and since when (monotonic) that count has stood still.
	moved int64
	still time.Duration
}

// clockBase makes monotonic times of time.Since, which are smaller to keep
// than a time.Time.
var clockBase = time.Now()

func monotonic() time.Duration { return time.Since(clockBase) }

// Start copies bytes from a to b and from b to a until both directions have
// ended, then closes both and calls done with the bytes copied to a and to
// b, and how the tunnel ended. It returns at once. When one side ends its
// stream cleanly, the other side's writing half is shut down (a half-close
// is passed on), and the other direction runs on (for o.HalfClosed, if
// set); when a side breaks, both connections are reset. o.Timeout closes
// the tunnel when nothing moved for that long.
//
// Callers should pass the raw connections (*net.TCPConn where possible),
// having forwarded any bytes they buffered, and use them no more: a tunnel
// on the reactor takes their sockets over at once and closes the
// *net.TCPConns under them (a wrapper's Close is still called at the end).
func (r *Registry) Start(a, b net.Conn, o Options, done func(toA, toB int64, end End)) {
	// A tunnel on a reactor is allocated with its sides, and keeps of a
	// and b only their wrappers.
	t, arm := watch(a, b)
	if t == nil {
		t = &tunnel{a: a, b: b}
	}
	t.reg, t.done, t.linger, t.timeout = r, done, max(o.HalfClosed, 0), max(o.Timeout, 0)
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
	go copyHalf(half, t, t.b, t.a, &t.toB, FailedB, FailedA)
	t.pipe(t.a, t.b, &t.toA, FailedA, FailedB)
	<-half
	t.close(Done)
}

// copyHalf is a goroutine of its own so that a stack dump names it.
func copyHalf(done chan<- struct{}, t *tunnel, dst, src net.Conn, n *atomic.Int64, dstFailed, srcFailed End) {
	t.pipe(dst, src, n, dstFailed, srcFailed)
	close(done)
}

// pipe copies src to dst. When src ends cleanly it passes the half-close on
// to dst and gives dst linger (if any) to finish the other direction.
func (t *tunnel) pipe(dst, src net.Conn, count *atomic.Int64, dstFailed, srcFailed End) {
	r := &reader{conn: src}
	_, err := io.Copy(meter{dst, count, t.timeout}, r)
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		// A write that made no progress, or the half-closed time out.
		t.setWhy(Timeout)
		t.shut()
	case errors.Is(err, net.ErrClosed):
		// Closed by the other direction, or from outside: it said why.
		t.shut()
	case err != nil && r.err != nil:
		t.abort(srcFailed)
	case err != nil:
		t.abort(dstFailed)
	default:
		if cw, ok := dst.(closeWriter); ok && cw.CloseWrite() == nil {
			if t.linger > 0 {
				dst.SetReadDeadline(time.Now().Add(t.linger))
			}
			return
		}
		t.abort(dstFailed)
	}
}

// reader is what a goroutine copies from: it keeps the error of a read, so
// that a failure is put on the side it came from.
type reader struct {
	conn net.Conn
	err  error
}

func (r *reader) Read(p []byte) (int, error) {
	n, err := r.conn.Read(p)
	if err != nil && err != io.EOF {
		r.err = err
	}
	return n, err
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
// (if any) from now.
func (t *tunnel) endedOne() {
	if t.ended.Add(1) == 2 {
		t.close(Done)
		return
	}
	if t.linger > 0 {
		t.lingering.Store(time.AfterFunc(t.linger, func() { t.close(Timeout) }))
	}
}

// shut closes both connections, which ends whatever copies between them.
// A tunnel on a reactor closes its sockets, and what is left of a and b:
// the wrappers among them.
func (t *tunnel) shut() {
	if t.sides != nil {
		t.sides.close()
	}
	for _, c := range []net.Conn{t.a, t.b} {
		if c != nil {
			c.Close()
		}
	}
}

// setWhy records how the tunnel ended, unless that is known already.
func (t *tunnel) setWhy(why End) {
	t.why.CompareAndSwap(0, uint32(why)+1)
}

// abort ends a tunnel one of whose sides broke: both connections are
// reset rather than closed, so that neither peer takes the stream for a
// complete one.
func (t *tunnel) abort(failed End) {
	t.setWhy(failed)
	if t.sides != nil {
		t.sides.reset()
		t.close(failed)
		return
	}
	for _, c := range []net.Conn{t.a, t.b} {
		if tc := Socket(c); tc != nil {
			tc.SetLinger(0)
		}
	}
	// A goroutine tunnel ends once its copies see their connections
	// closed. Under TLS, a close_notify would tell the peer that the
	// stream is complete: the connection under it is closed instead.
	for _, c := range []net.Conn{t.a, t.b} {
		if tc, ok := c.(*tls.Conn); ok {
			c = tc.NetConn()
		}
		c.Close()
	}
}

// Socket returns the TCP connection under c's wrappers (TLS, PROXY header,
// connection counting), or nil.
func Socket(c net.Conn) *net.TCPConn {
	for {
		switch x := c.(type) {
		case *net.TCPConn:
			return x
		case *tls.Conn:
			c = x.NetConn()
		case interface{ Raw() net.Conn }:
			c = x.Raw()
		case interface{ TCP() *net.TCPConn }:
			return x.TCP()
		default:
			return nil
		}
	}
}

// close ends the tunnel, once: its sockets leave the reactor and close, it
// leaves the registry, and done learns the byte counts and why (why, unless
// that was known before).
func (t *tunnel) close(why End) {
	t.setWhy(why)
	t.closeOnce.Do(func() {
		if lt := t.lingering.Load(); lt != nil {
			lt.Stop()
		}
		if t.sides != nil {
			t.sides.unwatch()
		}
		t.shut()
		t.reg.remove(t)
		t.done(t.toA.Load(), t.toB.Load(), End(t.why.Load()-1))
	})
}

// end closes t from outside, as CloseAll and sweepIdle do. A goroutine
// tunnel ends, and reports, once its copies return; a reactor tunnel has
// nothing running that would notice.
func (t *tunnel) end(why End) {
	t.setWhy(why)
	if t.sides != nil {
		t.close(why)
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
		t.still = monotonic()
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
	now := monotonic()
	var idle []*tunnel
	r.mu.Lock()
	r.tick = 0
	for t := range r.open {
		if t.timeout == 0 {
			continue
		}
		if moved := t.toA.Load() + t.toB.Load(); moved != t.moved {
			t.moved, t.still = moved, now
		} else if now-t.still >= t.timeout {
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
		t.end(Timeout)
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
		t.end(Closed)
	}
}
