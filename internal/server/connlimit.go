package server

import (
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hipsterd/hipsterd/internal/config"
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
func isLocalAcceptError(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.ENOMEM)
}

// countedConn is an accepted connection holding a slot of its frontend's
// limit and of the global one, which it gives back when it is closed.
type countedConn struct {
	*net.TCPConn
	fe, global *connLimit
	released   atomic.Bool
}

func (c *countedConn) Close() error {
	err := c.TCPConn.Close()
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
