//go:build linux

package upstream

import (
	"crypto/tls"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// sockOps are a backend connection's raw socket call: a peek without
// waiting, made once per connection so that checking it allocates nothing
// per request.
type sockOps struct {
	rc     syscall.RawConn // nil: not a socket
	plain  bool            // no TLS: bytes on the socket are bytes of HTTP
	buf    [64]byte
	n      int
	errno  syscall.Errno
	peekFn func(fd uintptr)
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
