package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/hipsterd/hipsterd/internal/upstream"
)

// Detacher is implemented by response writers that log or count a request
// when its handler returns (the access log's). A WebSocket handler returns
// once its tunnel is running; Detach tells the writer so, and returns what
// to call, with the status sent and the bytes sent to the client, when the
// tunnel has closed.
type Detacher interface {
	Detach() (end func(status int, bytesToClient int64))
}

// serveWebSocket dials the backend, forwards the upgrade request and, if the
// backend switches protocols, hijacks the client connection and hands the
// two connections to a tunnel, which outlives the handler. Until the backend
// has agreed, the client is answered through w, so a failure is an ordinary
// 502/504 and a refusal passes through as it is.
func (h *Handler) serveWebSocket(w http.ResponseWriter, r *http.Request, pool *upstream.Pool) {
	if r.ContentLength > 0 || len(r.TransferEncoding) > 0 {
		// A handshake has no body (RFC 6455 §4.1), and one sent behind the
		// header would reach the backend as the tunnel's first bytes. The
		// body is not read: the connection closes after the answer.
		w.Header().Set("Connection", "close")
		http.Error(w, "a WebSocket handshake has no body", http.StatusBadRequest)
		return
	}
	bconn, b, err := pool.Dial(r.Context(), r.RemoteAddr, r.Header)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	hijacked := false
	defer func() {
		if !hijacked {
			b.Release()
			bconn.Close()
		}
	}()

	if b.ResponseTimeout > 0 {
		bconn.SetDeadline(time.Now().Add(b.ResponseTimeout))
	}
	// Close the backend connection if the client goes away while we wait.
	stop := context.AfterFunc(r.Context(), func() { bconn.Close() })
	defer stop()

	if _, err := bconn.Write(upgradeRequest(r, h.AddXForwardedFor)); err != nil {
		h.fail(w, r, fmt.Errorf("backend %s: %w", b.Name, err))
		return
	}
	br := bufio.NewReader(bconn)
	resp, err := http.ReadResponse(br, r)
	if err != nil {
		h.fail(w, r, fmt.Errorf("backend %s: %w", b.Name, err))
		return
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		passResponse(w, resp)
		return
	}
	if !hasToken(resp.Header["Upgrade"], "websocket") {
		// Switching to a protocol the client did not ask for: not a
		// tunnel to open (net/http's ReverseProxy answers 502 too).
		h.fail(w, r, fmt.Errorf("backend %s: 101 Switching Protocols without Upgrade: websocket", b.Name))
		return
	}
	if !stop() {
		return // the client is gone; the deferred Close ends the backend side
	}
	bconn.SetDeadline(time.Time{})

	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		// Not hijacked, so an ordinary answer is still possible.
		h.Log.Error("websocket: cannot take over the client connection", "err", err)
		http.Error(w, "websocket upgrade not possible on this connection", http.StatusInternalServerError)
		return
	}
	hijacked = true
	// Deadlines net/http set while reading the request must not end the tunnel.
	conn.SetDeadline(time.Time{})
	keepAlive(conn)

	// From here the tunnel outlives this handler: whoever logs or counts
	// the request hears of it when the tunnel closes.
	var logEnd func(int, int64)
	if d, ok := w.(Detacher); ok {
		logEnd = d.Detach()
	}
	var release func()
	if h.Hold != nil {
		release = h.Hold()
	}
	end := func(toClient int64) {
		b.Release()
		if logEnd != nil {
			logEnd(http.StatusSwitchingProtocols, toClient)
		}
		if release != nil {
			release()
		}
	}

	head := responseHead(resp)
	// Bytes the backend sent after its 101 sit in br; bytes the client sent
	// after its request sit in brw. Forward both before handing over the raw
	// connections.
	if n := br.Buffered(); n > 0 {
		more, _ := br.Peek(n)
		head = append(head, more...)
	}
	if _, err := conn.Write(head); err != nil {
		conn.Close()
		bconn.Close()
		end(0)
		return
	}
	if n := brw.Reader.Buffered(); n > 0 {
		early, _ := brw.Reader.Peek(n)
		if _, err := bconn.Write(early); err != nil {
			conn.Close()
			bconn.Close()
			end(int64(len(head)))
			return
		}
	}
	sent := int64(len(head))
	h.Tunnels.Start(conn, bconn, h.TunnelTimeout, func(toClient, _ int64) { end(sent + toClient) })
}

// tunnelKeepAlive is the TCP keep-alive period of a tunnel's client
// connection, so that an idle tunnel to a client that vanished without a
// word is noticed.
const tunnelKeepAlive = 30 * time.Second

func keepAlive(c net.Conn) {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetKeepAlive(true)
		tc.SetKeepAlivePeriod(tunnelKeepAlive)
	}
}

func (h *Handler) fail(w http.ResponseWriter, r *http.Request, err error) {
	if r.Context().Err() != nil {
		return // client gone: logged as 499
	}
	status := upstream.StatusFor(err)
	if status == http.StatusServiceUnavailable {
		http.Error(w, err.Error(), status)
		return
	}
	h.Log.Error("websocket proxy error", "uri", r.RequestURI, "status", status, "err", err)
	http.Error(w, http.StatusText(status), status)
}

// wsHopHeaders are removed from a forwarded upgrade request; Connection is
// rewritten and Upgrade kept.
var wsHopHeaders = []string{"Keep-Alive", "Proxy-Connection", "Proxy-Authorization", "Proxy-Authenticate", "Te", "Trailer"}

// upgradeRequest is the request to send the backend: the client's request
// line, Host and headers, minus the hop-by-hop ones but for the upgrade.
func upgradeRequest(r *http.Request, xff bool) []byte {
	hdr := r.Header.Clone()
	for _, name := range r.Header["Connection"] {
		for _, tok := range splitTokens(name) {
			if !strings.EqualFold(tok, "upgrade") {
				hdr.Del(tok)
			}
		}
	}
	for _, name := range wsHopHeaders {
		hdr.Del(name)
	}
	hdr["Connection"] = []string{"Upgrade"}
	if xff {
		upstream.AppendForwardedFor(hdr, r.Header, r.RemoteAddr)
	}
	var buf bytes.Buffer
	buf.WriteString(r.Method + " " + r.RequestURI + " HTTP/1.1\r\nHost: " + r.Host + "\r\n")
	hdr.Write(&buf)
	buf.WriteString("\r\n")
	return buf.Bytes()
}

// responseHead is the backend's 101 response as the client will see it.
func responseHead(resp *http.Response) []byte {
	var buf bytes.Buffer
	buf.WriteString("HTTP/1.1 " + resp.Status + "\r\n")
	resp.Header.Write(&buf)
	buf.WriteString("\r\n")
	return buf.Bytes()
}

// respHopHeaders are not copied from a backend's response to the client.
var respHopHeaders = []string{"Connection", "Keep-Alive", "Proxy-Connection", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

// passResponse sends a backend's refusal of an upgrade on to the client.
func passResponse(w http.ResponseWriter, resp *http.Response) {
	defer resp.Body.Close()
	dst := w.Header()
	for k, v := range resp.Header {
		dst[k] = v
	}
	for _, name := range resp.Header["Connection"] {
		for _, tok := range splitTokens(name) {
			dst.Del(tok)
		}
	}
	for _, name := range respHopHeaders {
		dst.Del(name)
	}
	w.WriteHeader(resp.StatusCode)
	io.Copy(w, resp.Body)
}

func splitTokens(v string) []string {
	var out []string
	for _, f := range strings.Split(v, ",") {
		if t := strings.TrimSpace(f); t != "" {
			out = append(out, t)
		}
	}
	return out
}
