package server

import (
	"bytes"
	"crypto/tls"
	"net"
)

// net/http answers a request its parser refuses (control bytes in the
// target or a header, a bad method or version, a head over MaxHeaderBytes)
// itself, on the connection, without calling any handler: neither the access
// log nor the stats would see it. countedConn looks at the first write on a
// connection after it is new or idle: the answer to its next request, which
// is net/http's own if it has its fixed header, never that of an answer
// through a handler. (net/http does not always report the connection active
// first: not when the refused head was already buffered.) Only on
// connections without TLS, where what is written is the answer itself; over
// TLS it is not seen.

// refusalHeader is the header net/http puts on its own answers, between the
// status line and the body: never the same as an answer through a handler,
// which always carries Date.
const refusalHeader = "\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"

// refusal recognises net/http's own answer to a request it refused, and
// returns its status and the size of its body.
func refusal(p []byte) (status int, body int64, ok bool) {
	const proto = "HTTP/1.1 "
	if len(p) < len(proto)+4 || string(p[:len(proto)]) != proto {
		return 0, 0, false
	}
	for _, d := range p[len(proto) : len(proto)+3] {
		if d < '0' || d > '9' {
			return 0, 0, false
		}
		status = 10*status + int(d-'0')
	}
	i := bytes.IndexByte(p, '\n') - 1 // the status line's end
	if status < 400 || i < 0 || !bytes.HasPrefix(p[i:], []byte(refusalHeader)) {
		return 0, 0, false
	}
	return status, int64(len(p) - i - len(refusalHeader)), true
}

// Write looks at the first write on a new or idle connection for net/http's
// own refusal of a request (see refusal).
func (c *countedConn) Write(p []byte) (int, error) {
	if !c.answering.Load() {
		return c.TCPConn.Write(p)
	}
	c.answering.Store(false)
	if status, body, ok := refusal(p); ok {
		c.refused(c.top, status, body)
	}
	return c.TCPConn.Write(p)
}

// watchAnswers makes c look for refusals (unless it is under TLS, or a tcp
// frontend's): top is the connection as net/http serves it, c new.
func (c *countedConn) watchAnswers(top net.Conn) {
	if c.refused == nil {
		return
	}
	if _, isTLS := top.(*tls.Conn); !isTLS {
		c.top = top
		c.answering.Store(true)
	}
}

// refused logs and counts a request that net/http refused with status,
// answering it with body bytes, on connection c, as the current route's
// frontend.
func (l *listener) refused(c net.Conn, status int, body int64) {
	rt := l.enter()
	defer rt.gen.leave()
	if rt.log != nil {
		rt.log.Refused(c.RemoteAddr().String(), status, body)
	}
	if rt.stats != nil {
		rt.stats.Refused(status)
	}
}
