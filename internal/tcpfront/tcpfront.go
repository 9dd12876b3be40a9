// Package tcpfront serves a tcp frontend: each connection it is given is
// connected to a backend of the frontend's pool, and the two are handed to
// a tunnel registry, which copies bytes both ways until both sides are done.
//
//	h := &tcpfront.Handler{Pool: pool, Tunnels: &reg}
//	for {
//		c, err := ln.AcceptTCP()
//		…
//		go h.Serve(c, func() {})
//	}
//
// Only the set-up (the PROXY header, the TLS handshake, the connect) runs on
// the connection's goroutine; an idle tunnel between plain TCP sockets costs
// none (see package tunnel).
package tcpfront

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"time"

	"github.com/hipsterd/hipsterd/internal/acceptproxy"
	"github.com/hipsterd/hipsterd/internal/exchange"
	"github.com/hipsterd/hipsterd/internal/tunnel"
	"github.com/hipsterd/hipsterd/internal/upstream"
)

// keepAlivePeriod is the TCP keep-alive period of client connections, so
// that a client that vanished without a word is noticed on an idle tunnel
// (as for WebSocket tunnels).
const keepAlivePeriod = 30 * time.Second

// Handler serves the connections of one tcp frontend. Its fields must not
// change once Serve has been called.
type Handler struct {
	Pool    *upstream.Pool
	Tunnels *tunnel.Registry
	// TLS terminates TLS with this configuration, and the decrypted bytes
	// are forwarded; nil passes the bytes through untouched.
	TLS *tls.Config
	// HandshakeTimeout bounds the wait for the PROXY header and the TLS
	// handshake; zero means no limit.
	HandshakeTimeout time.Duration
	// TunnelTimeout closes a connection in which no byte moved either way
	// for that long; zero means no limit.
	TunnelTimeout time.Duration
	// AcceptProxy, when not nil, requires a PROXY header first.
	AcceptProxy *acceptproxy.Policy
	// Exchanges makes each connection an exchange, which its sinks (the
	// access log, the metrics) hear of when a backend took it and when it
	// has closed. Required.
	Exchanges *exchange.Frontend
	// Log gets the errors (a backend that cannot be reached); a refused
	// client (no PROXY header, a failed TLS handshake) only at debug level.
	// Nil means slog.Default().
	Log *slog.Logger
}

// Serve handles c, and calls done once c is closed: at once when it is
// refused, else when its tunnel has ended. It returns once the tunnel is
// running; call it on a goroutine of its own.
func (h *Handler) Serve(c *net.TCPConn, done func()) {
	start := time.Now()
	var client net.Conn = c
	src, dst := c.RemoteAddr(), c.LocalAddr()
	var early []byte // the client's bytes that came with its PROXY header
	refuse := func(msg string, err error) {
		h.log().Debug(msg, "client", c.RemoteAddr().String(), "err", err)
		c.Close()
		done()
	}
	if h.AcceptProxy != nil {
		var err error
		if src, dst, early, err = h.AcceptProxy.Read(c); err != nil {
			refuse("tcp: connection refused: no valid PROXY header", err)
			return
		}
	}
	if h.TLS != nil {
		var raw net.Conn = c
		if len(early) > 0 {
			raw = &prefixConn{Conn: c, r: io.MultiReader(bytes.NewReader(early), c)}
			early = nil
		}
		tc := tls.Server(raw, h.TLS)
		ctx, cancel := context.Background(), context.CancelFunc(func() {})
		if h.HandshakeTimeout > 0 {
			ctx, cancel = context.WithTimeout(ctx, h.HandshakeTimeout)
		}
		err := tc.HandshakeContext(ctx)
		cancel()
		if err != nil {
			refuse("tcp: TLS handshake failed", err)
			return
		}
		client = tc
	}

	x := h.Exchanges.NewTCP(upstream.WithClient(context.Background(), src, dst), src.String(), start)
	bconn, slot, err := h.Pool.Dial(x, src.String(), nil)
	if err != nil {
		if !errors.Is(err, upstream.ErrNoBackend) {
			h.log().Error("tcp: no backend could be reached", "client", src.String(), "err", err)
		}
		client.Close()
		x.Backend, x.Termination = "", "no-backend" // the line names none reached
		x.End()
		done()
		return
	}
	x.Keep(slot)
	if len(early) > 0 {
		if _, err := bconn.Write(early); err != nil {
			client.Close()
			bconn.Close()
			x.Termination = terminations[tunnel.FailedB]
			x.End()
			done()
			return
		}
	}
	c.SetKeepAlive(true)
	c.SetKeepAlivePeriod(keepAlivePeriod)
	x.BytesIn.Store(int64(len(early)))
	x.Tunneled = true
	x.Begin()
	// After a half-close the other direction stays open under
	// TunnelTimeout alone, as in HAProxy: a client may shut down its
	// sending side and wait long for the answer.
	h.Tunnels.Start(client, bconn, tunnel.Options{Timeout: h.TunnelTimeout}, func(toClient, toBackend int64, end tunnel.End) {
		x.BytesIn.Add(toBackend)
		x.BytesOut = toClient
		x.Termination = terminations[end]
		x.End()
		done()
	})
}

// terminations are the access log's words for how a tunnel ended, the
// client being its side a.
var terminations = [...]string{
	tunnel.Done:    "done",
	tunnel.Timeout: "timeout",
	tunnel.FailedA: "client-error",
	tunnel.FailedB: "backend-error",
	tunnel.Closed:  "closed",
}

func (h *Handler) log() *slog.Logger {
	if h.Log == nil {
		return slog.Default()
	}
	return h.Log
}

// prefixConn is a connection whose first bytes were read already, with the
// PROXY header: TLS must read them first.
type prefixConn struct {
	net.Conn
	r io.Reader
}

func (p *prefixConn) Read(b []byte) (int, error) { return p.r.Read(b) }
