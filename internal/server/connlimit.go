package server

import (
	"cmp"
	"crypto/tls"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hipsterd/hipsterd/internal/config"
	"github.com/hipsterd/hipsterd/internal/upstream"
)

// max-connections, as HAProxy's maxconn: at the limit, an accept loop stops
// calling accept(2), so that further connections wait in the kernel's
// backlog, and resumes as soon as a connection closes. A connection counts
// from its accept until it is closed, whoever closes it: net/http, or the
// WebSocket or tcp tunnel it became.

// limitLogEvery is how often, at most, reaching a limit is logged.
const limitLogEvery = time.Minute

// localRetry is how long an accept loop waits after the process ran out of
// file descriptors or memory (EMFILE and the like), unless a connection
// closes first: HAProxy waits 100 ms too.
const localRetry = 100 * time.Millisecond

// Headroom of the default global max-connections: the file descriptors
// hipsterd needs beside its client connections and the backend connection
// each may hold.
const (
	// fdReserve covers stdio, the access logs, the epoll sets of Go's
	// poller and of the tunnel reactors, and the odd file.
	fdReserve = 64
	// fdPerBackend covers a backend's idle connections (upstream's
	// h1MaxIdle) and its health check.
	fdPerBackend = 256 + 1
)

// defaultMaxConnections is the global max-connections when the config sets
// none, for nofile file descriptors: half of what is left after the
// listening sockets, fdReserve and fdPerBackend for each backend, since each
// client connection may hold a backend connection; at least a quarter of
// nofile, so that a low limit still serves.
func defaultMaxConnections(nofile uint64, cfg *config.Config) int64 {
	reserve := uint64(fdReserve + len(cfg.Frontends) + fdPerBackend*len(cfg.Backends))
	n := nofile / 4
	if nofile > reserve {
		n = max(n, (nofile-reserve)/2)
	}
	return int64(min(max(n, 1), config.MaxMaxConnections))
}

// fileLimit is the process's soft limit on open file descriptors.
func fileLimit() uint64 {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return 1024 // Linux's usual default
	}
	return lim.Cur
}

// A connLimit counts open connections against a maximum.
type connLimit struct {
	max     atomic.Int64 // zero: no limit
	open    atomic.Int64
	reached atomic.Uint64 // times an accept loop found it full
	logged  atomic.Int64  // unix nanoseconds of the last log line about it

	// waiting spares release the lock while no accept loop waits: a
	// waiter sets it before it checks the count again, a release looks at
	// it after it changed the count, so one of them sees the other.
	waiting atomic.Bool
	mu      sync.Mutex
	freed   chan struct{} // closed when a slot frees; nil while nobody waits
}

// take counts a connection if the limit allows one more.
func (c *connLimit) take() bool {
	for {
		n, m := c.open.Load(), c.max.Load()
		if m > 0 && n >= m {
			return false
		}
		if c.open.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

func (c *connLimit) full() bool {
	m := c.max.Load()
	return m > 0 && c.open.Load() >= m
}

// release gives back a slot and wakes whoever waits for one.
func (c *connLimit) release() {
	c.open.Add(-1)
	c.wake()
}

func (c *connLimit) wake() {
	if !c.waiting.Load() {
		return
	}
	c.mu.Lock()
	c.waiting.Store(false)
	if c.freed != nil {
		close(c.freed)
		c.freed = nil
	}
	c.mu.Unlock()
}

// waitFreed returns a channel closed when a slot is next freed. A caller
// checks the count after taking it, so as not to miss a release between
// its check and its wait.
func (c *connLimit) waitFreed() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.freed == nil {
		c.freed = make(chan struct{})
	}
	c.waiting.Store(true)
	return c.freed
}

func (c *connLimit) setMax(n int64) {
	if c.max.Swap(n) != n {
		c.wake() // a higher limit lets waiting accept loops go on
	}
}

// hit counts that the limit stopped an accept loop, and says so in the log
// unless it did within limitLogEvery.
func (c *connLimit) hit(log *slog.Logger, msg string, args ...any) {
	c.reached.Add(1)
	now := time.Now().UnixNano()
	last := c.logged.Load()
	if now-last < int64(limitLogEvery) || !c.logged.CompareAndSwap(last, now) {
		return
	}
	log.Warn(msg, args...)
}

// isLocalAcceptError reports whether accept failed for want of this
// process's or the system's resources rather than because of the socket.
func isLocalAcceptError(err error) bool { return upstream.IsLocal(err) }

// countedConn is an accepted connection holding a slot of its frontend's
// limit and of the global one, which it gives back when it is closed.
type countedConn struct {
	*net.TCPConn
	fe, global *connLimit
	released   atomic.Bool
	reclaim    *httpConns // the list it is on, for an HTTP frontend's

	// For reclaiming (httpConns); list is nil for a tcp frontend's.
	state      atomic.Int32
	since      atomic.Int64 // unix nanoseconds of its accept, then of its last change to idle
	list       *httpConns   // guarded by list.mu, as are prev and next
	prev, next *countedConn

	// For logging requests net/http refuses (refused.go); refused is nil
	// for a tcp frontend's connection.
	refused   func(top net.Conn, status int, body int64)
	top       net.Conn    // as net/http serves it, if refusals are looked for
	answering atomic.Bool // the next write may be a refusal
	// Under TLS (refused.go): tlsTop is the connection net/http serves;
	// proto is 0 until known, then protoH1 or protoH2; unanswered is set
	// while a request read has reached no handler; wrote, if something was
	// written then; read counts the bytes read since the connection was
	// new or idle.
	tlsTop     *tls.Conn
	proto      atomic.Int32
	unanswered atomic.Bool
	wrote      atomic.Bool
	read       atomic.Int64

	// client carries the backend connections of send-proxy backends kept
	// for this connection, closed with it.
	client upstream.ClientConn

	// net/http's background read (reads.go): bg is bgOff, bgOn or
	// bgParked; bgw is what it waits with while parked.
	bg  atomic.Int32
	bgw *bgWaiter
}

func (c *countedConn) Close() error {
	err := c.TCPConn.Close()
	c.wakeBackgroundRead()
	if l := c.reclaim; l != nil {
		l.remove(c)
	}
	c.release()
	return err
}

// release gives back the connection's slots, once: for a caller that
// closes the inner connection itself (a tcp frontend's).
func (c *countedConn) release() {
	if c.released.CompareAndSwap(false, true) {
		c.fe.release()
		c.global.release()
	}
}

// TCP returns the connection without its counting, for the tunnel reactor,
// which works on the socket; the tunnel still closes c itself.
func (c *countedConn) TCP() *net.TCPConn { return c.TCPConn }

// At a limit, an HTTP frontend closes connections of its own to make room
// for clients waiting in its socket's backlog, as nginx reuses connections,
// so that idle clients cannot keep out those with a request to make. Which
// ones, in order:
//
//  1. Silent connections: accepted at least reclaimSilentAfter ago, and not
//     one byte received since, as the kernel counts them (TCP_INFO). A
//     client connects to send a request, and sends it at once: one that
//     says nothing holds a slot for nothing. Oldest first.
//  2. Stalled connections: they sent part of a first request (or a TLS
//     handshake), completed none, and have sent nothing for
//     reclaimStalledAfter (TCP_INFO again): a client sends its request
//     head in one go. Oldest first.
//  3. Keep-alive connections idle between requests for at least
//     reclaimIdleAfter, the longest idle first: a client that just had an
//     answer is the likeliest to send its next request at the moment of
//     the close. Only while no connection that has completed no request
//     is open: clients that use their connections go last.
//
// Never one with a request in progress, nor a kept-alive one whose next
// request has begun to arrive (read-header-timeout bounds those), nor a
// tunnel. Closing is atomic with respect to requests: a connection is
// claimed (its state moved to connClosing) before it is checked, and is
// closed only if then nothing of a request has reached it (see
// countedConn.tryReclaim).

// reclaimSilentAfter is how long a connection may stay silent after it was
// accepted before it may be closed: a client sends its request with the
// last packet of the TCP handshake, so this covers a lost packet's quick
// retransmission rather than any real client's pace. Clients waiting
// behind silent ones in the backlog get in at max-connections per
// reclaimSilentAfter, so it must stay short.
const reclaimSilentAfter = 50 * time.Millisecond

// reclaimStalledAfter is how long a connection that has completed no
// request may go without sending a byte before it may be closed.
const reclaimStalledAfter = time.Second

// reclaimIdleAfter is how long a keep-alive connection must have been idle
// before it may be closed: a client that sends its requests in a loop is
// never cut between two of them.
const reclaimIdleAfter = 250 * time.Millisecond

// reclaimEvery is how often an accept loop at a limit looks for clients
// waiting in its socket's backlog, to make room for them.
const reclaimEvery = 10 * time.Millisecond

// reclaimBatch is how many connections are closed at once, at most, to make
// room, as nginx drains up to 32 reusable connections at a time; never more
// than clients wait.
const reclaimBatch = 32

// reclaimScan bounds the connections looked at, oldest first, for ones to
// close at the limit.
const reclaimScan = 1024

// HTTP connection states, as reclaiming sees them.
const (
	connBusy     int32 = iota // a request is being served, or it is a tunnel
	connNew                   // accepted, nothing read yet
	connStarting              // accepted, something read, no request yet
	connIdle                  // kept alive between requests
	connClosing               // claimed by reclaim, which checks and closes it
)

// httpConns are the open connections of an HTTP frontend's socket, oldest
// first, for reclaiming at a limit.
type httpConns struct {
	mu         sync.Mutex
	head, tail *countedConn
}

func (l *httpConns) add(c *countedConn) {
	c.state.Store(connNew)
	c.since.Store(time.Now().UnixNano())
	l.mu.Lock()
	c.list, c.prev = l, l.tail
	if l.tail != nil {
		l.tail.next = c
	} else {
		l.head = c
	}
	l.tail = c
	l.mu.Unlock()
}

func (l *httpConns) remove(c *countedConn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if c.list != l {
		return
	}
	if c.prev != nil {
		c.prev.next = c.next
	} else {
		l.head = c.next
	}
	if c.next != nil {
		c.next.prev = c.prev
	} else {
		l.tail = c.prev
	}
	c.prev, c.next, c.list = nil, nil, nil
}

// reclaim closes up to n connections, silent ones first, then stalled
// ones, then the longest idle, looking at no more than reclaimScan, and
// returns how many it closed. Idle ones only when no connection that has
// completed no request is left: a young one will be silent or stalled soon
// enough, or send its request.
func (l *httpConns) reclaim(n int) int {
	now := time.Now().UnixNano()
	var silent, stalled, idle []*countedConn
	unfinished := 0
	l.mu.Lock()
	seen := 0
	for c := l.head; c != nil && seen < reclaimScan; c, seen = c.next, seen+1 {
		switch c.state.Load() {
		case connNew:
			unfinished++
			if now-c.since.Load() >= int64(reclaimSilentAfter) {
				silent = append(silent, c)
			}
		case connStarting:
			unfinished++
			if now-c.since.Load() >= int64(reclaimStalledAfter) {
				stalled = append(stalled, c)
			}
		case connIdle:
			if now-c.since.Load() >= int64(reclaimIdleAfter) {
				idle = append(idle, c)
			}
		}
	}
	l.mu.Unlock()
	closed := 0
	for _, c := range slices.Concat(silent, stalled) {
		if closed == n {
			return closed
		}
		if c.tryReclaim() {
			closed++
		}
	}
	if unfinished > closed {
		return closed
	}
	slices.SortFunc(idle, func(a, b *countedConn) int { return cmp.Compare(a.since.Load(), b.since.Load()) })
	for _, c := range idle {
		if closed == n {
			break
		}
		if c.tryReclaim() {
			closed++
		}
	}
	return closed
}

// tryReclaim closes c if it is still in the state it was found in and
// nothing of a request has reached it, and reports whether it did. The
// claim keeps the state from changing under the check: a request that
// arrives after it is one sent after the close began, as after any
// server's idle timeout.
func (c *countedConn) tryReclaim() bool {
	from := c.state.Load()
	if from != connNew && from != connStarting && from != connIdle || !c.state.CompareAndSwap(from, connClosing) {
		return false
	}
	if st := c.quiet(from); st != connClosing {
		c.state.CompareAndSwap(connClosing, st)
		return false
	}
	c.Close()
	return true
}

// quiet asks the kernel whether c's client has sent anything since it came
// to state from, and returns connClosing if not, else the state it is in:
// for connNew, any byte at all (it is then connStarting); for
// connStarting, a byte within reclaimStalledAfter; for connIdle, bytes
// waiting to be read. When the socket cannot tell, c is left as it was,
// so that nothing is closed on a guess.
func (c *countedConn) quiet(from int32) int32 {
	rc, err := c.TCPConn.SyscallConn()
	if err != nil {
		return from
	}
	st := from
	rc.Control(func(fd uintptr) {
		if from == connIdle {
			if n, err := unix.IoctlGetInt(int(fd), unix.SIOCINQ); err == nil && n == 0 {
				st = connClosing
			}
			return
		}
		info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
		switch {
		case err != nil:
		case from == connNew && info.Bytes_received > 0:
			st = connStarting
		case from == connNew:
			st = connClosing
		case time.Duration(info.Last_data_recv)*time.Millisecond >= reclaimStalledAfter:
			st = connClosing
		}
	})
	return st
}

// setConnState records an HTTP connection's state, as net/http reports it.
func setConnState(c net.Conn, st http.ConnState) {
	cc := countedOf(c)
	if cc == nil {
		return
	}
	switch st {
	case http.StateNew:
		cc.watchAnswers(c)
	case http.StateActive, http.StateHijacked:
		cc.state.Store(connBusy)
		if st == http.StateActive && cc.tlsTop != nil {
			cc.tlsActive()
		}
		if st == http.StateHijacked {
			cc.hijacked()
		}
	case http.StateIdle:
		cc.since.Store(time.Now().UnixNano())
		cc.state.Store(connIdle)
		cc.answering.Store(cc.top != nil)
		cc.unanswered.Store(false)
		cc.read.Store(0)
	case http.StateClosed:
		if cc.tlsTop != nil {
			cc.tlsClosed()
		}
	}
}

// Read moves the connection on as soon as a byte arrives: a new one is
// starting its first request, an idle one its next request, which is in
// progress from then on. net/http reports a connection active only once it
// has read a whole request head, which may take long.
func (c *countedConn) Read(p []byte) (int, error) {
	c.waitBeforeRead()
	n, err := c.TCPConn.Read(p)
	if c.tlsTop != nil {
		c.read.Add(int64(n))
	}
	if n > 0 {
		switch st := c.state.Load(); st {
		case connNew:
			c.state.CompareAndSwap(st, connStarting)
		case connIdle:
			c.state.CompareAndSwap(st, connBusy)
		}
	}
	return n, err
}

// countedOf finds the countedConn under the wrappers of TLS and of the
// PROXY protocol.
func countedOf(c net.Conn) *countedConn {
	for {
		switch x := c.(type) {
		case *countedConn:
			return x
		case *tls.Conn:
			c = x.NetConn()
		case interface{ Raw() net.Conn }:
			c = x.Raw()
		default:
			return nil
		}
	}
}

// backlog returns how many clients wait in sock's accept queue, as Linux
// tells for a listening socket in TCP_INFO's unacked field (0 if it cannot
// tell).
func backlog(sock *net.TCPListener) int {
	rc, err := sock.SyscallConn()
	if err != nil {
		return 0
	}
	n := 0
	rc.Control(func(fd uintptr) {
		if info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
			n = int(info.Unacked)
		}
	})
	return n
}
