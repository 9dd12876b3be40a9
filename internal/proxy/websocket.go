package proxy

import (
	"bytes"
	"errors"
	"net"
	"net/http"
	"time"

	"github.com/hipsterd/hipsterd/internal/exchange"
	"github.com/hipsterd/hipsterd/internal/tunnel"
	"github.com/hipsterd/hipsterd/internal/upstream"
)

// serveWebSocket forwards an upgrade request like any other request, through
// the pool (the same backend choice, retries, header rewriting and error
// answers), and, if the backend switches protocols, takes over the client
// connection and tunnels it to the backend's. A refusal passes through as
// it is, on w, whose connection the tunnel takes over otherwise; the
// tunnel's end ends the exchange x.
func (h *Handler) serveWebSocket(x *exchange.Exchange, w http.ResponseWriter, r *http.Request, pool *upstream.Pool) {
	if r.ContentLength != 0 || len(r.TransferEncoding) > 0 {
		// A WebSocket handshake has no body (RFC 6455, section 4.1).
		// Closing spares net/http waiting to discard one never sent.
		w.Header().Set("Connection", "close")
		http.Error(w, "a WebSocket upgrade request has no body", http.StatusBadRequest)
		return
	}
	x.Handoff = func(resp *http.Response, bconn net.Conn, early []byte, slot exchange.Releaser) error {
		return h.tunnel(x, w, resp, bconn, early, slot)
	}
	pool.ServeHTTP(w, r)
}

// tunnel takes over the client connection of w, answers it with resp's head
// and the bytes the backend sent after it, and tunnels it to bconn. From
// then on the tunnel's end of the exchange (x.Tunnel) owns slot, and ends
// the exchange when the tunnel closes.
func (h *Handler) tunnel(x *exchange.Exchange, w http.ResponseWriter, resp *http.Response, bconn net.Conn, early []byte, slot exchange.Releaser) error {
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return errors.New("websocket: cannot take over the client connection: " + err.Error())
	}
	// Deadlines net/http set while reading the request must not end the tunnel.
	conn.SetDeadline(time.Time{})
	keepAlive(conn)

	x.Keep(slot)
	head := append(responseHead(resp), early...)
	sent := int64(len(head))
	end := x.Tunnel(sent)
	if _, err := conn.Write(head); err != nil {
		conn.Close()
		bconn.Close()
		end.EndTunnel(0)
		return nil
	}
	// Bytes the client sent after its request sit in brw.
	if n := brw.Reader.Buffered(); n > 0 {
		more, _ := brw.Reader.Peek(n)
		if _, err := bconn.Write(more); err != nil {
			conn.Close()
			bconn.Close()
			end.EndTunnel(sent)
			return nil
		}
	}
	h.Tunnels.Start(conn, bconn, tunnel.Options{Timeout: h.TunnelTimeout, HalfClosed: wsHalfClosed}, func(toClient, _ int64, _ tunnel.End) {
		end.EndTunnel(sent + toClient)
	})
	return nil
}

// wsHalfClosed is how long a WebSocket tunnel stays open after one side
// ended its stream: WebSocket has no use for a half-open connection, and a
// peer gone entirely looks the same as one that only shut down its sending
// side.
const wsHalfClosed = 5 * time.Second

// tunnelKeepAlive is the TCP keep-alive period of a tunnel's client
// connection, so that an idle tunnel to a client that vanished without a
// word is noticed.
const tunnelKeepAlive = 30 * time.Second

func keepAlive(c net.Conn) {
	if tc := tunnel.Socket(c); tc != nil {
		tc.SetKeepAlive(true)
		tc.SetKeepAlivePeriod(tunnelKeepAlive)
	}
}

// responseHead is the backend's 101 response as the client will see it.
func responseHead(resp *http.Response) []byte {
	var buf bytes.Buffer
	buf.WriteString("HTTP/1.1 " + resp.Status + "\r\n")
	resp.Header.Write(&buf)
	buf.WriteString("\r\n")
	return buf.Bytes()
}
