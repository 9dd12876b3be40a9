package upstream

import (
	"bufio"
	"fmt"
	"math"
	"net"
	"runtime"
	"time"
)

// h1Conn is one connection to the backend.
type h1Conn struct {
	net.Conn
	t      *h1Transport
	head   headLimit // between Conn and br
	br     *bufio.Reader
	out    sentCount // between bw and Conn
	bw     *bufio.Writer
	abort  func() // ends the exchange under way: the client went away
	idleAt time.Time
	// owner is the client connection a send-proxy backend's connection
	// serves; nil for a connection of the backend's pool.
	owner *ClientConn
	sock  sockOps
	body  bodyState // of the response under way
	// send's state, and its callback made once (no allocation per request);
	// quiet: fit found the socket empty and open, just before this request.
	quiet   bool
	sending bool
	sendErr error
	sendFn  func(uintptr) bool
}

func (t *h1Transport) newConn(c net.Conn) *h1Conn {
	pc := &h1Conn{Conn: c, t: t, head: headLimit{c: c, left: math.MaxInt64}}
	pc.br = bufio.NewReader(&pc.head)
	pc.out.c = c
	pc.bw = bufio.NewWriter(&pc.out)
	pc.abort = func() { pc.SetDeadline(time.Unix(1, 0)) }
	pc.sendFn = pc.sendInWait
	pc.initSock()
	return pc
}

// sentCount counts the bytes written to the connection since the exchange
// began, which tells a request that did not reach the backend at all.
type sentCount struct {
	c net.Conn
	n int64
}

func (s *sentCount) Write(p []byte) (int, error) {
	n, err := s.c.Write(p)
	s.n += int64(n)
	return n, err
}

// headLimit counts what is read from the connection while a response head
// is read, so that a backend sending header fields without end fails the
// exchange instead of growing memory. The count includes what the buffered
// reader reads ahead, as net/http's does.
type headLimit struct {
	c    net.Conn
	left int64
}

var errHeaderTooLarge = fmt.Errorf("response header larger than %d bytes", MaxResponseHeaderBytes)

func (l *headLimit) Read(p []byte) (int, error) {
	if l.left <= 0 {
		return 0, errHeaderTooLarge
	}
	if int64(len(p)) > l.left {
		p = p[:l.left]
	}
	n, err := l.c.Read(p)
	l.left -= int64(n)
	return n, err
}

// headErr names a response head that grew past the limit.
func (pc *h1Conn) headErr(err error) error {
	if pc.head.left <= 0 {
		return errHeaderTooLarge
	}
	return err
}

// fit checks an idle connection, without blocking, before a request goes on
// it: one the backend closed, or sent bytes on unasked, is not fit. Those
// bytes are logged: they are an answer to no request, and sent on they
// would reach the wrong client.
func (pc *h1Conn) fit() bool {
	stray, open, ok := pc.peekSocket()
	pc.quiet = ok && open && len(stray) == 0
	if !ok {
		stray, open = pc.peekBuffered()
	}
	if len(stray) > 0 {
		pc.t.unsolicited(stray)
		return false
	}
	return open
}

// tlsPeekWait is how long peekBuffered lets bytes queued on a TLS
// connection's socket be read and decrypted.
const tlsPeekWait = 10 * time.Millisecond

// peekBuffered looks for bytes through the buffered reader: for TLS
// connections, whose socket may hold records that carry no data (session
// tickets). A deadline already past would not even read the socket, and
// stray bytes or a close queued there would go unseen: when the socket
// holds something (or cannot be looked at), the read may take a moment.
func (pc *h1Conn) peekBuffered() (stray []byte, open bool) {
	deadline := time.Unix(1, 0)
	if queued, open, ok := pc.peekRaw(); !ok || len(queued) > 0 || !open {
		deadline = time.Now().Add(tlsPeekWait)
	}
	pc.SetReadDeadline(deadline)
	_, err := pc.br.Peek(1)
	pc.SetReadDeadline(time.Time{})
	if n := pc.br.Buffered(); n > 0 {
		stray, _ = pc.br.Peek(min(n, 64))
		return stray, false
	}
	return nil, IsTimeout(err)
}

// send flushes the request. A request without a body on a plain
// connection is written from inside the wait for the answer: the wait's
// readiness is reset before the request goes, and the goroutine parks
// until the answer is there instead of first reading a socket that holds
// nothing yet (a system call for nothing). The reset forgets bytes or a
// close already there, which would then wake nothing until the backend
// sends more: so only when fit has just seen the socket empty (a kept
// connection) and the whole head goes in that write; a new connection's
// backend may speak first, and a large head's first writes may be answered
// before the last. What comes in the moment between fit's look and the
// reset is missed that way still.
func (pc *h1Conn) send(body bool) error {
	quiet := pc.quiet
	pc.quiet = false
	if body {
		return pc.bw.Flush() // its body follows at once
	}
	if !quiet || pc.out.n > 0 {
		err := pc.bw.Flush()
		// Other goroutines first: the backend has had no time to answer
		// yet, and a read now would most often find nothing.
		runtime.Gosched()
		return err
	}
	pc.sending = true
	pc.sendErr = nil
	err := pc.sock.rc.Read(pc.sendFn)
	if pc.sendErr != nil {
		return pc.sendErr
	}
	return err
}

// sendInWait is send's RawConn.Read callback: the first call writes the
// request, and the next ones, once the socket has something, end the wait.
func (pc *h1Conn) sendInWait(uintptr) bool {
	if !pc.sending {
		return true
	}
	pc.sending = false
	pc.sendErr = pc.bw.Flush()
	return pc.sendErr != nil
}
