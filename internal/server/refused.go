package server

import (
	"bytes"
	"crypto/tls"
	"net"
	"net/http"
)

// net/http answers a request its parser refuses (control bytes in the
// target or a header, a bad method or version, a head over MaxHeaderBytes)
// itself, on the connection, without calling any handler: neither the access
// log nor the stats would see it. countedConn looks at the first write on a
// connection after it is new or idle: the answer to its next request, which
// is net/http's own if it has its fixed header, never that of an answer
// through a handler. (net/http does not always report the connection active
// first: not when the refused head was already buffered.) That is on
// connections without TLS, where what is written is the answer itself; under
// TLS see tlsActive.

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
		if c.unanswered.Load() {
			c.wrote.Store(true)
		}
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
	if t, isTLS := top.(*tls.Conn); isTLS {
		c.tlsTop = t
		return
	}
	c.top = top
	c.answering.Store(true)
}

// Under TLS what is written is encrypted, and net/http's answer cannot be
// read. There net/http's order of events tells it instead: it reports an
// HTTP/1 connection active once it has read a request, then either calls the
// handler (which marks the connection, served) or writes its refusal and
// closes the connection. So a connection that closes after a write made
// while a request read had reached no handler refused that request. Its
// status is 431 if more than the largest head was read, else 400; its body's
// size is not known (0 is logged). HTTP/2 is left out: its server writes
// frames of its own, and refuses a bad request on its stream.
const (
	protoH1 = 1
	protoH2 = 2
)

// tlsActive is called as net/http reports a TLS connection active.
func (c *countedConn) tlsActive() {
	p := c.proto.Load()
	if p == 0 {
		// Called after the handshake, on the connection's own goroutine.
		p = protoH1
		if c.tlsTop.ConnectionState().NegotiatedProtocol == "h2" {
			p = protoH2
		}
		c.proto.Store(p)
	}
	if p == protoH1 {
		c.wrote.Store(false)
		c.unanswered.Store(true)
	}
}

// served marks that the request read last reached a handler.
func (c *countedConn) served() { c.unanswered.Store(false) }

// tlsClosed is called as net/http reports a TLS connection closed.
func (c *countedConn) tlsClosed() {
	if !c.unanswered.Load() || !c.wrote.Load() {
		return
	}
	c.unanswered.Store(false)
	status := http.StatusBadRequest
	if c.read.Load() > maxHeaderBytes {
		status = http.StatusRequestHeaderFieldsTooLarge
	}
	c.refused(c.tlsTop, status, 0)
}

// servedKey is the context key of a connection's countedConn, which
// its requests mark served.
type servedKey struct{}

// markServed marks r's TLS connection, if any, as having passed r to a
// handler.
func markServed(r *http.Request) {
	if r.TLS == nil || r.ProtoMajor != 1 {
		return
	}
	if c, ok := r.Context().Value(servedKey{}).(*countedConn); ok {
		c.served()
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
