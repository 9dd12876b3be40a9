//go:build linux

package upstream

import (
	"crypto/tls"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// sockOps are a backend connection's raw socket calls: a peek without
// waiting, and a flush followed by a wait for the answer; their functions
// are made once per connection so that using them allocates nothing per
// request.
type sockOps struct {
	rc     syscall.RawConn // nil: not a socket
	plain  bool            // no TLS: bytes on the socket are bytes of HTTP
	buf    [64]byte
	n      int
	errno  syscall.Errno
	peekFn func(fd uintptr)

	flushed  bool
	flushErr error
	flushFn  func(fd uintptr) bool
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
	s.flushFn = func(uintptr) bool {
		if s.flushed {
			return true // woken: something to read, or a deadline
		}
		s.flushed, s.flushErr = true, pc.bw.Flush()
		return s.flushErr != nil
	}
}

// flushAwait sends the request head buffered in bw, then waits until the
// backend's answer can be read, or the read deadline passes (the caller's
// next read reports it). A read straight after the write would find
// nothing: the backend has not run yet, the more so on one CPU. That read
// costs a system call per request, which the wait spares: the socket's
// readiness is reset (RawConn.Read's prepareRead) before the request goes
// out, so that no answer to it can come unseen. Bytes that came before,
// unasked, were looked for before the connection was taken (fit), and any
// left unseen arrive with the answer, as they would without the wait.
func (pc *h1Conn) flushAwait() error {
	s := &pc.sock
	if !s.plain || pc.br.Buffered() > 0 {
		return pc.bw.Flush()
	}
	s.flushed, s.flushErr = false, nil
	s.rc.Read(s.flushFn)
	if !s.flushed {
		return pc.bw.Flush() // the deadline had passed before the wait
	}
	return s.flushErr
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
