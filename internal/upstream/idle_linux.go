//go:build linux

package upstream

import (
	"crypto/tls"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// peekSocket looks at a connection's socket without blocking: stray holds
// the first bytes queued on it, open is false when the peer closed it; ok
// is false when it cannot tell (TLS, whose records may carry no data).
func peekSocket(c net.Conn) (stray []byte, open, ok bool) {
	if _, isTLS := c.(*tls.Conn); isTLS {
		return nil, false, false
	}
	sc, isSys := c.(syscall.Conn)
	if !isSys {
		return nil, false, false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil, false, true
	}
	var buf [64]byte
	var n int
	var perr error
	if err := rc.Control(func(fd uintptr) {
		n, _, perr = unix.Recvfrom(int(fd), buf[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
	}); err != nil {
		return nil, false, true
	}
	switch {
	case perr == unix.EAGAIN:
		return nil, true, true
	case n > 0:
		return buf[:n], false, true
	}
	return nil, false, true // closed, or failed
}

// idleWatcher wakes when an idle backend connection becomes readable: its
// backend sent bytes unasked, or closed it. Both are noticed while the
// connection sits in the pool, not only at its next use. The connections
// wait in an epoll set of its own, which Go's poller watches as one file,
// so watching costs no goroutine per connection.
type idleWatcher struct {
	epfd int

	mu    sync.Mutex
	next  uint64
	conns map[uint64]*h1Conn
}

var (
	watcherOnce sync.Once
	watcher     *idleWatcher
)

func startWatcher() {
	fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return
	}
	f := os.NewFile(uintptr(fd), "idle-epoll")
	// Only a file in Go's poller takes a deadline: this one must be.
	if err := f.SetReadDeadline(time.Time{}); err != nil {
		f.Close()
		return
	}
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return
	}
	watcher = &idleWatcher{epfd: fd, conns: map[uint64]*h1Conn{}}
	go watcher.loop(rc)
}

// loop hands each connection that became readable to its transport.
func (w *idleWatcher) loop(rc syscall.RawConn) {
	events := make([]unix.EpollEvent, 64)
	rc.Read(func(fd uintptr) bool {
		for {
			n, err := unix.EpollWait(int(fd), events, 0)
			if err == unix.EINTR {
				continue
			}
			for _, ev := range events[:max(n, 0)] {
				key := uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
				w.mu.Lock()
				pc := w.conns[key]
				w.mu.Unlock()
				if pc != nil {
					pc.t.evict(pc)
				}
			}
			if n < len(events) {
				return false // wait for the next event
			}
		}
	})
}

// watchIdle starts watching pc, which was just put in its pool.
func watchIdle(pc *h1Conn) {
	watcherOnce.Do(startWatcher)
	if watcher == nil {
		return
	}
	c := pc.Conn
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return
	}
	w := watcher
	w.mu.Lock()
	w.next++
	key := w.next
	w.conns[key] = pc
	w.mu.Unlock()
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT, Fd: int32(uint32(key)), Pad: int32(key >> 32)}
	if rc.Control(func(fd uintptr) {
		err = unix.EpollCtl(w.epfd, unix.EPOLL_CTL_ADD, int(fd), &ev)
	}) != nil || err != nil {
		w.mu.Lock()
		delete(w.conns, key)
		w.mu.Unlock()
		return
	}
	pc.watch = key
}

// unwatchIdle stops watching pc, taken out of its pool.
func unwatchIdle(pc *h1Conn) {
	if pc.watch == 0 {
		return
	}
	w := watcher
	w.mu.Lock()
	delete(w.conns, pc.watch)
	w.mu.Unlock()
	pc.watch = 0
	c := pc.Conn
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	if rc, err := c.(syscall.Conn).SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) {
			unix.EpollCtl(w.epfd, unix.EPOLL_CTL_DEL, int(fd), nil)
		})
	}
}
