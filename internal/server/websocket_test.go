package server

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/hipsterd/hipsterd/internal/testcert"
	"github.com/hipsterd/hipsterd/internal/testutil"
)

func wsFrontend(t *testing.T, extra string) (s *Server, addr string, closed chan error, logPath string) {
	t.Helper()
	echo, closed := echoServer(t)
	logPath = filepath.Join(t.TempDir(), "access.log")
	s, addrs := start(t, fmt.Sprintf("[global]\naccesslog = %s\n[frontend ws]\nbind = 127.0.0.1:0\nbackends = echo\n%s\n[backend echo]\nconnect = %s\n", logPath, extra, echo))
	return s, addrs["ws"], closed, logPath
}

func TestWebSocketEcho(t *testing.T) {
	t.Parallel()
	s, addr, closed, logPath := wsFrontend(t, "add-x-forwarded-for = true")
	c, resp, err := websocket.DefaultDialer.Dial("ws://"+addr+"/echo", http.Header{"X-Forwarded-For": {"10.1.1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.Header.Get("X-Backend-Saw-Xff"); got != "10.1.1.1, 127.0.0.1" {
		t.Errorf("backend saw X-Forwarded-For %q", got)
	}
	big := make([]byte, 1<<20)
	rand.Read(big)
	msgs := []struct {
		typ  int
		data []byte
	}{
		{websocket.TextMessage, []byte("hello")},
		{websocket.BinaryMessage, []byte{0, 1, 2, 255}},
		{websocket.BinaryMessage, big},
		{websocket.TextMessage, bytes.Repeat([]byte("x"), 100000)},
	}
	for _, m := range msgs {
		c.NetConn().SetDeadline(time.Now().Add(10 * time.Second))
		if err := c.WriteMessage(m.typ, m.data); err != nil {
			t.Fatal(err)
		}
		typ, got, err := c.ReadMessage()
		if err != nil {
			t.Fatal(err)
		}
		if typ != m.typ || !bytes.Equal(got, m.data) {
			t.Fatalf("echo of %d bytes (type %d) came back as %d bytes (type %d)", len(m.data), m.typ, len(got), typ)
		}
	}
	if n := s.OpenTunnels(); n != 1 {
		t.Errorf("open tunnels = %d, want 1", n)
	}

	// Closing the client ends the backend's side and the tunnel.
	c.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""))
	c.Close()
	select {
	case err := <-closed:
		if !websocket.IsCloseError(err, websocket.CloseNormalClosure) && !strings.Contains(err.Error(), "EOF") {
			t.Errorf("backend saw %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("backend did not see the client's close")
	}
	testutil.Eventually(t, "the tunnel to close", func() bool { return s.OpenTunnels() == 0 })
	line := readLog(t, logPath, 1)[0]
	if !strings.Contains(line, `"GET /echo HTTP/1.1" 101 `) {
		t.Errorf("access log line %q, want a 101 for GET /echo", line)
	}
}

func TestWebSocketBackendCloses(t *testing.T) {
	t.Parallel()
	s, addr, _, _ := wsFrontend(t, "")
	c, _, err := websocket.DefaultDialer.Dial("ws://"+addr+"/hangup", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, _, err = c.ReadMessage()
	if !websocket.IsCloseError(err, websocket.CloseNormalClosure) {
		t.Fatalf("want the backend's close frame, got %v", err)
	}
	// And then the connection itself ends.
	if _, err := c.NetConn().Read(make([]byte, 1)); err == nil {
		t.Error("connection still open after the backend closed")
	}
	testutil.Eventually(t, "the tunnel to close", func() bool { return s.OpenTunnels() == 0 })
}

// A client that sends its request and first frame in one write, and uses
// Firefox's Connection header: the early frame must not be lost.
func TestWebSocketEarlyBytesAndFirefoxHeader(t *testing.T) {
	t.Parallel()
	_, addr, _, _ := wsFrontend(t, "")
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	frame := []byte{0x81, 0x82, 1, 2, 3, 4, 'h' ^ 1, 'i' ^ 2} // masked text "hi"
	req := "GET /echo HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n" +
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
	if _, err := c.Write(append([]byte(req), frame...)); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 101 || resp.Header.Get("Sec-Websocket-Accept") != "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" {
		t.Fatalf("response %s %v", resp.Status, resp.Header)
	}
	echo := make([]byte, 4)
	if _, err := io.ReadFull(br, echo); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(echo, []byte{0x81, 2, 'h', 'i'}) {
		t.Errorf("echo frame % x", echo)
	}
}

func TestWebSocketRefusedPassesThrough(t *testing.T) {
	t.Parallel()
	_, addr, _, logPath := wsFrontend(t, "")
	_, resp, err := websocket.DefaultDialer.Dial("ws://"+addr+"/refuse", nil)
	if err == nil {
		t.Fatal("dial succeeded")
	}
	if resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("response %v, want the backend's 403", resp)
	}
	body, _ := io.ReadAll(resp.Body)
	if !strings.Contains(string(body), "go away") {
		t.Errorf("body %q", body)
	}
	if line := readLog(t, logPath, 1)[0]; !strings.Contains(line, `"GET /refuse HTTP/1.1" 403 `) {
		t.Errorf("log line %q", line)
	}
}

func TestWebSocketBackendDown(t *testing.T) {
	t.Parallel()
	dead := testutil.RefusingAddr(t)
	_, addrs := start(t, "[frontend f]\nbind = 127.0.0.1:0\nbackends = d\n[backend d]\nconnect = "+dead+"\n")
	_, resp, err := websocket.DefaultDialer.Dial("ws://"+addrs["f"]+"/", nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("want 502, got %v %v", resp, err)
	}
}

func TestWebSocketOverHTTPS(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cert, key := testcert.Files(t, dir, "localhost")
	echo, _ := echoServer(t)
	_, addrs := start(t, fmt.Sprintf("[frontend tls]\nbind = 127.0.0.1:0\nbackends = echo\nhttps = true\ncertfile = %s\nkeyfile = %s\n[backend echo]\nconnect = %s\n", cert, key, echo))
	d := websocket.Dialer{TLSClientConfig: &tls.Config{RootCAs: testcert.Pool(t, cert), ServerName: "localhost"}}
	c, _, err := d.Dial("wss://"+addrs["tls"]+"/echo", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.NetConn().SetDeadline(time.Now().Add(10 * time.Second))
	if err := c.WriteMessage(websocket.TextMessage, []byte("secure")); err != nil {
		t.Fatal(err)
	}
	if _, msg, err := c.ReadMessage(); err != nil || string(msg) != "secure" {
		t.Fatalf("echo %q, %v", msg, err)
	}

	// Plain HTTP on the same frontend works too.
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: testcert.Pool(t, cert), ServerName: "localhost"}}}
	resp, err := client.Get("https://" + addrs["tls"] + "/refuse")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("https GET: %d, want the backend's 403", resp.StatusCode)
	}
}

func TestShutdownClosesTunnelsAtDeadline(t *testing.T) {
	t.Parallel()
	s, addr, closed, logPath := wsFrontend(t, "")
	c, _, err := websocket.DefaultDialer.Dial("ws://"+addr+"/echo", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Wide enough for the echo below to come first under -race on a
	// loaded machine.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	done := make(chan struct{})
	go func() {
		s.Shutdown(ctx)
		close(done)
	}()
	// The tunnel works until the deadline...
	c.NetConn().SetDeadline(time.Now().Add(10 * time.Second))
	if err := c.WriteMessage(websocket.TextMessage, []byte("still here")); err != nil {
		t.Fatal(err)
	}
	if _, msg, err := c.ReadMessage(); err != nil || string(msg) != "still here" {
		t.Fatalf("echo during shutdown: %q %v", msg, err)
	}
	// ...and is closed then.
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Shutdown did not return")
	}
	if _, _, err := c.ReadMessage(); err == nil {
		t.Error("tunnel still open after shutdown")
	}
	<-closed
	// The access log was flushed on the way out.
	if line := readLog(t, logPath, 1)[0]; !strings.Contains(line, " 101 ") {
		t.Errorf("log line %q", line)
	}
}

func TestWebSocketTunnelTimeout(t *testing.T) {
	t.Parallel()
	// Wide enough for the echo below to come first under -race on a
	// loaded machine.
	s, addr, closed, logPath := wsFrontend(t, "tunnel-timeout = 1s")
	c, _, err := websocket.DefaultDialer.Dial("ws://"+addr+"/echo", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.NetConn().SetDeadline(time.Now().Add(10 * time.Second))
	if err := c.WriteMessage(websocket.TextMessage, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	if _, msg, err := c.ReadMessage(); err != nil || string(msg) != "hello" {
		t.Fatalf("echo %q, %v", msg, err)
	}
	// Then nothing moves: the tunnel is closed, both ways, and logged.
	if _, _, err := c.ReadMessage(); err == nil {
		t.Fatal("a message came on an idle tunnel")
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("an idle tunnel outlived its tunnel-timeout")
	}
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("the backend's side stayed open")
	}
	testutil.Eventually(t, "the tunnel to close", func() bool { return s.OpenTunnels() == 0 })
	if line := readLog(t, logPath, 1)[0]; !strings.Contains(line, `"GET /echo HTTP/1.1" 101 `) {
		t.Errorf("log line %q, want the tunnel's 101", line)
	}
}

// A WebSocket handshake has no body (RFC 6455 §4.1): one announced is
// refused at once, not sent to the backend to wait for.
func TestWebSocketUpgradeWithBody(t *testing.T) {
	t.Parallel()
	_, addr, _, logPath := wsFrontend(t, "")
	const upgrade = "GET /echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n" +
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
	for _, tc := range []struct{ name, header string }{
		{"content-length", "Content-Length: 5\r\n"},
		{"chunked", "Transfer-Encoding: chunked\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The body is held back: the answer must not wait for it.
			resp := rawExchange(t, addr, upgrade+tc.header+"\r\n")
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadRequest || !resp.Close {
				t.Errorf("status %d, closing %v; want 400, and the connection closed (its body unread)", resp.StatusCode, resp.Close)
			}
		})
	}
	for _, line := range readLog(t, logPath, 2) {
		if !strings.Contains(line, `"GET /echo HTTP/1.1" 400 `) {
			t.Errorf("log line %q, want a 400", line)
		}
	}
}

// A backend that switches protocols without switching to WebSocket gets no
// tunnel: the client gets a 502, as net/http's ReverseProxy answers.
func TestWebSocket101WithoutUpgrade(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ name, header string }{
		{"no upgrade", ""},
		{"other protocol", "Upgrade: h2c\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			backend := switchingBackend(t, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"+tc.header+"\r\n")
			s, addrs := start(t, "[frontend f]\nbind = 127.0.0.1:0\nbackends = raw\n[backend raw]\nconnect = "+backend+"\n")
			_, resp, err := websocket.DefaultDialer.Dial("ws://"+addrs["f"]+"/", nil)
			if err == nil || resp == nil || resp.StatusCode != http.StatusBadGateway {
				t.Fatalf("got %v, %v; want a 502", resp, err)
			}
			if n := s.OpenTunnels(); n != 0 {
				t.Errorf("%d tunnels open, want none", n)
			}
		})
	}
}

// switchingBackend is a raw TCP backend that answers every request with
// head and then holds the connection open until the other side closes it.
func switchingBackend(t *testing.T, head string) string {
	t.Helper()
	return testutil.RawServer(t, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
			return
		}
		io.WriteString(c, head)
		io.Copy(io.Discard, c)
	})
}
