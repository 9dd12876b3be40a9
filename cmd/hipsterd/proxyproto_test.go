package main

// End-to-end tests of the PROXY protocol: send-proxy to backends,
// accept-proxy on frontends, and HAProxy in front of hipsterd.

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/pires/go-proxyproto"

	"github.com/hipsterd/hipsterd/internal/testcert"
	"github.com/hipsterd/hipsterd/internal/testpeer"
	"github.com/hipsterd/hipsterd/internal/testutil"
)

func TestTCPFrontendTLS(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	def, defKey := testcert.Make(t, filepath.Join(dir, "def"), testcert.Options{Names: []string{"default.test"}})
	one, oneKey := testcert.Make(t, filepath.Join(dir, "one"), testcert.Options{Names: []string{"one.test"}})
	a := lineEcho(t, "a", nil)
	front := freePort(t, "tcp", "127.0.0.1")
	cfg := writeConfig(t, fmt.Sprintf(`
[frontend s]
bind = %s
mode = tcp
https = true
certfile = %s
keyfile = %s
hosts = one.test
backends = a
[host one.test]
backends = a
certfile = %s
keyfile = %s
[backend a]
connect = %s
`, front, def, defKey, one, oneKey, a))
	code, _, stderr := runBinary(t, "-t", "-config", cfg)
	if code != 0 || !strings.Contains(stderr, "[frontend s] hosts: on a tcp frontend only the SNI certificates of these [host] sections are used, not their backends") {
		t.Errorf("-t: exit %d, stderr %q", code, stderr)
	}
	startHipsterd(t, cfg, front)
	for sni, want := range map[string]string{"one.test": "one.test", "other.test": "default.test"} {
		c, err := tls.Dial("tcp", front, &tls.Config{ServerName: sni, InsecureSkipVerify: true, NextProtos: []string{"x-custom"}})
		if err != nil {
			t.Fatalf("SNI %s: %v", sni, err)
		}
		defer c.Close()
		st := c.ConnectionState()
		if got := st.PeerCertificates[0].Subject.CommonName; got != want {
			t.Errorf("SNI %s: served %s, want %s", sni, got, want)
		}
		if st.NegotiatedProtocol != "" {
			t.Errorf("SNI %s: ALPN negotiated %q", sni, st.NegotiatedProtocol)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		r := bufio.NewReader(c)
		if l, err := r.ReadString('\n'); err != nil || l != "a\n" {
			t.Fatalf("SNI %s: greeting %q, %v", sni, l, err)
		}
		echoLine(t, c, r, "decrypted for "+sni)
	}
}

// proxyBackend is a raw backend that reads a PROXY header and sends it on
// headers, then answers requests with "ok" until one asks for an upgrade,
// which it answers with 101, and then echoes. It sends on closed when a
// connection that carried no upgrade ends.
func proxyBackend(t *testing.T, headers chan<- *proxyproto.Header, closed chan<- struct{}) string {
	t.Helper()
	return testutil.RawServer(t, func(c net.Conn) {
		r := bufio.NewReader(c)
		h, err := proxyproto.Read(r)
		if err != nil {
			return
		}
		headers <- h
		for {
			req, err := http.ReadRequest(r)
			if err != nil {
				closed <- struct{}{}
				return
			}
			if req.Header.Get("Upgrade") != "" {
				break
			}
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
		io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		io.Copy(c, r)
	})
}

func recvHeader(t *testing.T, headers <-chan *proxyproto.Header) *proxyproto.Header {
	t.Helper()
	select {
	case h := <-headers:
		return h
	case <-time.After(10 * time.Second):
		t.Fatal("no PROXY header reached the backend")
		return nil
	}
}

func checkHeader(t *testing.T, what string, h *proxyproto.Header, version byte, src, dst string) {
	t.Helper()
	if h.Version != version || !h.Command.IsProxy() || h.SourceAddr.String() != src || h.DestinationAddr.String() != dst {
		t.Errorf("%s: PROXY v%d %v %v -> %v, want v%d PROXY %s -> %s", what, h.Version, h.Command, h.SourceAddr, h.DestinationAddr, version, src, dst)
	}
}

func TestSendProxy(t *testing.T) {
	t.Parallel()
	h1, h2, hws, hcheck := make(chan *proxyproto.Header, 16), make(chan *proxyproto.Header, 16), make(chan *proxyproto.Header, 16), make(chan *proxyproto.Header, 16)
	wsClosed := make(chan struct{}, 16)
	v1, v2, ws, checked := lineEcho(t, "v1", h1), lineEcho(t, "v2", h2), proxyBackend(t, hws, wsClosed), lineEcho(t, "checked", hcheck)
	tcp, web, chk := freePort(t, "tcp", "127.0.0.1"), freePort(t, "tcp", "127.0.0.1"), freePort(t, "tcp", "127.0.0.1")
	cfg := writeConfig(t, fmt.Sprintf(`
[frontend tcp]
bind = %s
mode = tcp
backends = v1 v2
[frontend web]
bind = %s
backends = ws
[frontend chk]
bind = %s
backends = checked
[backend v1]
connect = %s
send-proxy = v1
health-fall = 1000
[backend v2]
connect = %s
send-proxy = v2
health-fall = 1000
[backend ws]
connect = %s
send-proxy = v2
[backend checked]
connect = %s
send-proxy = v1
health-check = tcp
health-interval = 100ms
`, tcp, web, chk, v1, v2, ws, checked))
	startHipsterd(t, cfg, tcp)
	// startHipsterd's probe reached v1 or v2; take its header.
	select {
	case <-h1:
	case <-h2:
	case <-time.After(10 * time.Second):
		t.Fatal("the probe's connection reached no backend")
	}

	for i := 0; i < 2; i++ {
		c, r, name := dialLine(t, tcp)
		echoLine(t, c, r, "after the header")
		headers, version := h1, byte(1)
		if name == "v2" {
			headers, version = h2, 2
		}
		h := recvHeader(t, headers)
		checkHeader(t, "tcp frontend to "+name, h, version, c.LocalAddr().String(), tcp)
		if version == 1 {
			raw, _ := h.Format()
			if want := fmt.Sprintf("PROXY TCP4 127.0.0.1 127.0.0.1 %d %d\r\n", c.LocalAddr().(*net.TCPAddr).Port, atoi(t, port(tcp))); string(raw) != want {
				t.Errorf("v1 header %q, want %q", raw, want)
			}
		}
	}

	// Plain requests: a connection to a send-proxy backend serves one
	// client connection, whose addresses its header names; it is kept
	// alive between that client's requests and closed with it.
	for i := 0; i < 2; i++ {
		c, err := net.Dial("tcp", web)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		r := bufio.NewReader(c)
		for j := 0; j < 3; j++ {
			io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
			resp, err := http.ReadResponse(r, nil)
			if err != nil {
				t.Fatalf("plain request %d.%d: %v", i, j, err)
			}
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != 200 || string(b) != "ok" {
				t.Fatalf("plain request %d.%d: %d %q", i, j, resp.StatusCode, b)
			}
		}
		checkHeader(t, "plain requests", recvHeader(t, hws), 2, c.LocalAddr().String(), web)
		select {
		case h := <-hws:
			t.Errorf("a second backend connection for one client connection: %v -> %v", h.SourceAddr, h.DestinationAddr)
		default:
		}
		c.Close()
		select {
		case <-wsClosed:
		case <-time.After(10 * time.Second):
			t.Fatal("the backend connection outlived its client connection")
		}
	}

	// A WebSocket tunnel, though a connection is idle: a new one, whose
	// header names the client, before the upgrade request.
	c, err := net.Dial("tcp", web)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
	r := bufio.NewReader(c)
	resp, err := http.ReadResponse(r, nil)
	if err != nil || resp.StatusCode != 101 {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	checkHeader(t, "WebSocket", recvHeader(t, hws), 2, c.LocalAddr().String(), web)
	echoLine(t, c, r, "through the tunnel")

	// The health check's header names the checker and the backend.
	h := recvHeader(t, hcheck)
	if h.Version != 1 || h.SourceAddr.(*net.TCPAddr).IP.String() != "127.0.0.1" || h.DestinationAddr.String() != checked {
		t.Errorf("health check: PROXY v%d %v -> %v, want v1 127.0.0.1:* -> %s", h.Version, h.SourceAddr, h.DestinationAddr, checked)
	}
}

// proxyHeader formats a PROXY header from src to dst.
func proxyHeader(t *testing.T, version byte, src, dst string) []byte {
	t.Helper()
	sa, err := net.ResolveTCPAddr("tcp", src)
	if err != nil {
		t.Fatal(err)
	}
	da, err := net.ResolveTCPAddr("tcp", dst)
	if err != nil {
		t.Fatal(err)
	}
	b, err := proxyproto.HeaderProxyFromAddrs(version, sa, da).Format()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// exchange connects to addr, sends data, half-closes if halfClose, and
// returns all it reads until the server closes (or resets) it.
func exchange(t *testing.T, addr string, halfClose bool, data ...[]byte) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	for _, d := range data {
		if _, err := c.Write(d); err != nil {
			break // closed already: what it sent, if anything, is below
		}
	}
	if halfClose {
		c.(*net.TCPConn).CloseWrite()
	}
	got, err := io.ReadAll(c)
	// A server that closes with unread bytes resets the connection.
	if err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("%s: %v after %q", addr, err, got)
	}
	return string(got)
}

func TestAcceptProxy(t *testing.T) {
	t.Parallel()
	logPath := filepath.Join(t.TempDir(), "access.log")
	x, a, echo := backend(t, "x", nil), lineEcho(t, "a", nil), newServer(t, wsEcho)
	web, db, picky := freePort(t, "tcp", "127.0.0.1"), freePort(t, "tcp", "127.0.0.1"), freePort(t, "tcp", "127.0.0.1")
	cfg := writeConfig(t, fmt.Sprintf(`
[global]
accesslog = %s
read-header-timeout = 500ms
[frontend web]
bind = %s
backends = x
hosts = ws
add-x-forwarded-for = true
accept-proxy = true
[host ws]
backends = echo
[frontend db]
bind = %s
mode = tcp
backends = a
accept-proxy = true
accept-proxy-from = 127.0.0.0/8
[frontend picky]
bind = %s
backends = x
accept-proxy = true
accept-proxy-from = 10.0.0.0/8 192.0.2.7
[backend x]
connect = %s
[backend a]
connect = %s
[backend echo]
connect = %s
`, logPath, web, db, picky, x, a, echo))
	startHipsterd(t, cfg, web)

	get := []byte("GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
	for _, v := range []byte{1, 2} {
		src := fmt.Sprintf("203.0.113.7:4000%d", v)
		if got := exchange(t, web, false, proxyHeader(t, v, src, "192.0.2.1:80"), get); !strings.HasSuffix(got, "\r\n\r\nx 203.0.113.7") {
			t.Errorf("http frontend, v%d header: %q", v, got)
		}
	}
	if got := exchange(t, db, true, proxyHeader(t, 2, "[2001:db8::7]:5555", "[2001:db8::1]:5432"), []byte("hi\n")); got != "a\nhi\n" {
		t.Errorf("tcp frontend, v2 header: %q", got)
	}
	d := websocket.Dialer{NetDialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &prefixWriter{Conn: c, prefix: proxyHeader(t, 1, "203.0.113.8:7000", "192.0.2.1:80")}, nil
	}}
	ws, _, err := d.Dial("ws://"+web+"/chat", http.Header{"Host": {"ws"}})
	if err != nil {
		t.Fatalf("WebSocket after a PROXY header: %v", err)
	}
	ws.NetConn().SetDeadline(time.Now().Add(10 * time.Second))
	ws.WriteMessage(websocket.TextMessage, []byte("tunnelled"))
	if _, msg, err := ws.ReadMessage(); err != nil || string(msg) != "tunnelled" {
		t.Errorf("WebSocket echo %q, %v", msg, err)
	}
	ws.Close()

	// Refused: no header, a silent client, a peer outside
	// accept-proxy-from. Each is closed without a byte.
	for name, tc := range map[string]struct {
		addr string
		data [][]byte
	}{
		"http, no header":        {web, [][]byte{get}},
		"http, silent":           {web, nil},
		"tcp, no header":         {db, [][]byte{[]byte("hi\n")}},
		"tcp, silent":            {db, nil},
		"http, peer not allowed": {picky, [][]byte{proxyHeader(t, 1, "192.0.2.7:1", "192.0.2.1:80"), get}},
	} {
		if got := exchange(t, tc.addr, false, tc.data...); got != "" {
			t.Errorf("%s: answered %q", name, got)
		}
	}

	lines := waitLines(t, logPath, 4)
	text := strings.Join(lines, "\n")
	for _, want := range []string{
		` 203.0.113.8:7000 ws "GET /chat HTTP/1.1" 101 `,
		` 203.0.113.7:40001 h "GET / HTTP/1.1" 200 `,
		` 203.0.113.7:40002 h "GET / HTTP/1.1" 200 `,
		` [2001:db8::7]:5555 a "TCP" 3 5 `,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("access log lacks %q:\n%s", want, text)
		}
	}
	if len(lines) != 4 {
		t.Errorf("access log has %d lines, want 4 (refused connections are not logged):\n%s", len(lines), text)
	}
}

func TestTCPReloadAndShutdown(t *testing.T) {
	t.Parallel()
	a, b := lineEcho(t, "a", nil), lineEcho(t, "b", nil)
	front := freePort(t, "tcp", "127.0.0.1")
	conf := func(backend string) string {
		return fmt.Sprintf("[global]\nshutdown-timeout = 1s\n[frontend t]\nbind = %s\nmode = tcp\nbackends = %s\n[backend a]\nconnect = %s\n[backend b]\nconnect = %s\n", front, backend, a, b)
	}
	path := writeConfig(t, conf("a"))
	p := startHipsterd(t, path, front)
	old, oldR, name := dialLine(t, front)
	if name != "a" {
		t.Fatalf("before the reload: %s", name)
	}
	p.reload(t, path, conf("b"), "msg=reloaded", 1)
	echoLine(t, old, oldR, "after the reload")
	if _, _, name := dialLine(t, front); name != "b" {
		t.Errorf("after the reload: %s, want b", name)
	}

	// SIGTERM: new connections are refused, the open one runs on until
	// shutdown-timeout, then it is closed.
	p.signal(t, syscall.SIGTERM)
	p.waitStderr(t, "msg=\"shutting down\"", 1)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		c, err := net.Dial("tcp", front)
		if err != nil {
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("still accepting after SIGTERM")
		}
	}
	echoLine(t, old, oldR, "during the shutdown")
	if rest, err := io.ReadAll(oldR); err != nil || len(rest) != 0 {
		t.Errorf("at shutdown-timeout: %q, %v", rest, err)
	}
	if code := p.wait(t); code != 0 {
		t.Errorf("exit code %d", code)
	}
}

// TestHAProxySendProxyV2 puts Debian's haproxy, sending PROXY v2 headers,
// in front of an http and a tcp frontend with accept-proxy.
func TestHAProxySendProxyV2(t *testing.T) {
	haproxy, err := exec.LookPath("haproxy")
	if err != nil {
		testpeer.Missing(t, "haproxy is not installed (apt-get install haproxy)")
	}
	t.Parallel()
	dir := t.TempDir()
	logPath := filepath.Join(dir, "access.log")
	x, a := backend(t, "x", nil), lineEcho(t, "a", nil)
	web, db := freePort(t, "tcp", "127.0.0.1"), freePort(t, "tcp", "127.0.0.1")
	hWeb, hDB := freePort(t, "tcp", "127.0.0.1"), freePort(t, "tcp", "127.0.0.1")
	cfg := writeConfig(t, fmt.Sprintf(`
[global]
accesslog = %s
[frontend web]
bind = %s
backends = x
add-x-forwarded-for = true
accept-proxy = true
accept-proxy-from = 127.0.0.1
[frontend db]
bind = %s
mode = tcp
backends = a
accept-proxy = true
[backend x]
connect = %s
[backend a]
connect = %s
`, logPath, web, db, x, a))
	startHipsterd(t, cfg, web)

	hcfg := filepath.Join(dir, "haproxy.cfg")
	os.WriteFile(hcfg, []byte(fmt.Sprintf(`
defaults
	mode tcp
	timeout connect 5s
	timeout client 30s
	timeout server 30s
frontend web
	bind %s
	default_backend web
frontend db
	bind %s
	default_backend db
backend web
	server hipsterd %s send-proxy-v2
backend db
	server hipsterd %s send-proxy-v2
`, hWeb, hDB, web, db)), 0o644)
	hp := exec.Command(haproxy, "-db", "-f", hcfg)
	hout := &testutil.Buffer{}
	hp.Stdout, hp.Stderr = hout, hout
	if err := hp.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		hp.Process.Kill()
		hp.Wait()
		if t.Failed() {
			t.Logf("haproxy output:\n%s", hout.String())
		}
	})
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		c, err := net.Dial("tcp", hDB)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("haproxy did not listen on %s", hDB)
		}
	}

	c, err := net.Dial("tcp", hWeb)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "GET /via-haproxy HTTP/1.1\r\nHost: h\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	if string(got) != "x 127.0.0.1" {
		t.Errorf("through haproxy: %q", got)
	}
	dc, dr, name := dialLine(t, hDB)
	echoLine(t, dc, dr, "through haproxy")
	dc.Close()
	if name != "a" {
		t.Errorf("tcp through haproxy: greeting %q", name)
	}

	// The client hipsterd logs is the test's own socket, not haproxy's.
	text := strings.Join(waitLines(t, logPath, 2), "\n")
	for _, want := range []string{
		" " + c.LocalAddr().String() + ` h "GET /via-haproxy HTTP/1.1" 200 `,
		" " + dc.LocalAddr().String() + ` a "TCP" 16 18 `,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("access log lacks %q:\n%s", want, text)
		}
	}
}

// prefixWriter sends prefix with its first write, so that a PROXY header
// and what follows it arrive together.
type prefixWriter struct {
	net.Conn
	prefix []byte
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	if p.prefix != nil {
		_, err := p.Conn.Write(append(p.prefix, b...))
		p.prefix = nil
		return len(b), err
	}
	return p.Conn.Write(b)
}

func TestAcceptProxyTLS(t *testing.T) {
	t.Parallel()
	cert, key := testcert.Files(t, t.TempDir(), "localhost")
	x, a := backend(t, "x", nil), lineEcho(t, "a", nil)
	web, db := freePort(t, "tcp", "127.0.0.1"), freePort(t, "tcp", "127.0.0.1")
	cfg := writeConfig(t, fmt.Sprintf(`
[frontend web]
bind = %s
https = true
certfile = %s
keyfile = %s
backends = x
add-x-forwarded-for = true
accept-proxy = true
[frontend db]
bind = %s
mode = tcp
https = true
certfile = %s
keyfile = %s
backends = a
accept-proxy = true
[backend x]
connect = %s
[backend a]
connect = %s
`, web, cert, key, db, cert, key, x, a))
	startHipsterd(t, cfg, web)
	tlsDial := func(addr, src string) (*tls.Conn, *bufio.Reader) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(10 * time.Second))
		// The header and the ClientHello in one write.
		tc := tls.Client(&prefixWriter{Conn: c, prefix: proxyHeader(t, 2, src, "192.0.2.1:443")}, &tls.Config{RootCAs: testcert.Pool(t, cert), ServerName: "localhost"})
		if err := tc.Handshake(); err != nil {
			t.Fatalf("%s: TLS handshake after a PROXY header: %v", addr, err)
		}
		return tc, bufio.NewReader(tc)
	}

	tc, r := tlsDial(web, "203.0.113.9:1234")
	io.WriteString(tc, "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
	resp, err := http.ReadResponse(r, nil)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	if string(got) != "x 203.0.113.9" {
		t.Errorf("https frontend: %q", got)
	}

	tc, r = tlsDial(db, "203.0.113.9:1235")
	if l, err := r.ReadString('\n'); err != nil || l != "a\n" {
		t.Fatalf("tcp frontend with https: greeting %q, %v", l, err)
	}
	echoLine(t, tc, r, "over TLS after a PROXY header")
}

func TestAcceptProxySourceBalancing(t *testing.T) {
	t.Parallel()
	a, b := lineEcho(t, "a", nil), lineEcho(t, "b", nil)
	front := freePort(t, "tcp", "127.0.0.1")
	cfg := writeConfig(t, fmt.Sprintf("[frontend t]\nbind = %s\nmode = tcp\nbalance = source\naccept-proxy = true\nbackends = a b\n[backend a]\nconnect = %s\n[backend b]\nconnect = %s\n", front, a, b))
	startHipsterd(t, cfg, front)
	// Every connection comes from 127.0.0.1; only the headers' addresses
	// can spread them, and each sticks to its backend.
	first := map[string]string{}
	seen := map[string]int{}
	for round := 0; round < 2; round++ {
		for i := 1; i <= 20; i++ {
			src := fmt.Sprintf("198.51.100.%d:999", i)
			got := strings.TrimSpace(exchange(t, front, true, proxyHeader(t, 1, src, "192.0.2.1:5432")))
			if round == 0 {
				first[src] = got
				seen[got]++
			} else if got != first[src] {
				t.Errorf("%s: %s, then %s", src, first[src], got)
			}
		}
	}
	if seen["a"] == 0 || seen["b"] == 0 || seen["a"]+seen["b"] != 20 {
		t.Errorf("20 clients by source: %v", seen)
	}
}
