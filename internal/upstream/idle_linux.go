//go:build linux

package upstream

import (
	"crypto/tls"
	"os"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// sockOps are a backend connection's raw socket calls: a peek without
// waiting, and the idle watcher's epoll registration. They are made once
// per connection, so that checking and watching it allocate nothing per
// request.
type sockOps struct {
	rc     syscall.RawConn // nil: not a socket
	plain  bool            // no TLS: bytes on the socket are bytes of HTTP
	buf    [64]byte
	n      int
	errno  syscall.Errno
	ev     unix.EpollEvent
	op     int
	peekFn func(fd uintptr)
	ctlFn  func(fd uintptr)
}

func (pc *h1Conn) initSock() {
	c := pc.Conn
	tc, isTLS := c.(*tls.Conn)
	if isTLS {
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
	s := &pc.sock
	s.rc, s.plain = rc, !isTLS
	s.peekFn = func(fd uintptr) {
		n, _, errno := unix.Syscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&s.buf[0])), uintptr(len(s.buf)),
			unix.MSG_PEEK|unix.MSG_DONTWAIT, 0, 0)
		s.n, s.errno = int(n), errno
	}
	s.ctlFn = func(fd uintptr) {
		_, _, s.errno = unix.Syscall6(unix.SYS_EPOLL_CTL, uintptr(watcher.epfd), uintptr(s.op), fd, uintptr(unsafe.Pointer(&s.ev)), 0, 0)
	}
}

// peekSocket looks at a plain connection's socket without blocking: stray
// holds the first bytes queued on it, open is false when the peer closed
// it; ok is false when it cannot tell (TLS, whose records may carry no
// data).
func (pc *h1Conn) peekSocket() (stray []byte, open, ok bool) {
	if !pc.sock.plain {
		return nil, false, false
	}
	return pc.peekRaw()
}

// peekRaw is peekSocket for the socket under any connection, TLS or not:
// for TLS, queued holds the first bytes of records, not of HTTP.
func (pc *h1Conn) peekRaw() (queued []byte, open, ok bool) {
	s := &pc.sock
	if s.rc == nil {
		return nil, false, false
	}
	if s.rc.Control(s.peekFn) != nil {
		return nil, false, true
	}
	switch {
	case s.errno == unix.EAGAIN:
		return nil, true, true
	case s.errno == 0 && s.n > 0:
		return s.buf[:s.n], false, true
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
	s := &pc.sock
	if watcher == nil || s.rc == nil {
		return
	}
	w := watcher
	w.mu.Lock()
	w.next++
	key := w.next
	w.conns[key] = pc
	w.mu.Unlock()
	s.ev = unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT, Fd: int32(uint32(key)), Pad: int32(key >> 32)}
	s.op = unix.EPOLL_CTL_ADD
	if s.rc.Control(s.ctlFn) != nil || s.errno != 0 {
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
	pc.sock.op = unix.EPOLL_CTL_DEL
	pc.sock.rc.Control(pc.sock.ctlFn)
}
