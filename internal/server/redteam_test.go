package server

// Attacks on the backend path through the whole server (client-timeout,
// WebSocket handoff, max-connections), with raw TCP peers on loopback.

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/hipsterd/hipsterd/internal/testcert"
	"github.com/hipsterd/hipsterd/internal/testutil"
)

// WebSocket tunnels hold a slot of max-connections for as long as they
// last: a request past the limit waits, and gets 503 at queue-timeout;
// once the tunnel ends, the slot comes back.
func TestRedteamTunnelsHoldMaxConnections(t *testing.T) {
	t.Parallel()
	ws, _ := echoServer(t)
	s, addrs := start(t, fmt.Sprintf(`[frontend f]
bind = 127.0.0.1:0
backends = b
[backend b]
connect = %s
max-connections = 1
queue-timeout = 200ms
`, ws))
	c, _, err := websocket.DefaultDialer.Dial("ws://"+addrs["f"]+"/echo", nil)
	if err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, "the tunnel's slot", func() bool { return s.backend("b").InFlight() == 1 })
	if code, _ := get(t, "http://"+addrs["f"]+"/plain", ""); code != http.StatusServiceUnavailable {
		t.Errorf("a request past max-connections while a tunnel is open: %d, want 503", code)
	}
	if _, resp, err := websocket.DefaultDialer.Dial("ws://"+addrs["f"]+"/echo", nil); err == nil {
		t.Error("a second tunnel past max-connections was opened")
	} else if resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("a second tunnel past max-connections: %v, want 503", err)
	}
	c.NetConn().SetDeadline(time.Now().Add(10 * time.Second))
	if err := c.WriteMessage(websocket.TextMessage, []byte("hi")); err != nil {
		t.Fatal(err)
	}
	if _, msg, err := c.ReadMessage(); err != nil || string(msg) != "hi" {
		t.Fatalf("echo: %q %v", msg, err)
	}
	c.Close()
	testutil.Eventually(t, "the tunnel's slot back", func() bool { return s.backend("b").InFlight() == 0 })
	c, _, err = websocket.DefaultDialer.Dial("ws://"+addrs["f"]+"/echo", nil)
	if err != nil {
		t.Fatalf("a tunnel once the slot came back: %v", err)
	}
	c.Close()
	testutil.Eventually(t, "every slot back", func() bool { return s.backend("b").InFlight() == 0 })
}

// A backend answers a POST early and closes while the client is still
// sending a body that looks like requests: what is left of the body is
// never taken for a request, by hipsterd or by the backend.
func TestRedteamEarlyAnswerBodyNotSmuggled(t *testing.T) {
	t.Parallel()
	var smuggled, requests atomic.Int64
	backendAddr := testutil.RawServer(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			requests.Add(1)
			if req.URL.Path == "/smuggled" {
				smuggled.Add(1)
			}
			if req.URL.Path == "/upload" {
				io.CopyN(io.Discard, req.Body, 10)
				io.WriteString(c, "HTTP/1.1 413 Request Entity Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
				return
			}
			io.Copy(io.Discard, req.Body)
			fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(req.URL.Path), req.URL.Path)
		}
	})
	s, addrs := start(t, fmt.Sprintf(`[global]
client-timeout = 2s
[frontend f]
bind = 127.0.0.1:0
backends = b
[backend b]
connect = %s
`, backendAddr))
	evil := strings.Repeat("GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n", 2000)
	c, err := net.Dial("tcp", addrs["f"])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n", len(evil))
	sent := make(chan error, 1)
	go func() {
		_, err := io.WriteString(c, evil) // may fail once hipsterd closes
		sent <- err
	}()
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("status %d, want 413", resp.StatusCode)
	}
	// The next request on the connection, if it stays open, gets its own
	// answer: not one to a request hidden in the body.
	want := 1
	if <-sent == nil {
		io.WriteString(c, "GET /after HTTP/1.1\r\nHost: h\r\n\r\n")
		if resp, err := http.ReadResponse(br, nil); err == nil {
			got, _ := io.ReadAll(resp.Body)
			if string(got) != "/after" {
				t.Errorf("the request after the body got %d %q", resp.StatusCode, got)
			}
			want = 2
		}
	}
	testutil.Eventually(t, "every slot back", func() bool { return s.backend("b").InFlight() == 0 })
	if n := smuggled.Load(); n != 0 {
		t.Errorf("the backend got %d requests hidden in a body", n)
	}
	if n := requests.Load(); n != int64(want) {
		t.Errorf("the backend got %d requests, want %d", n, want)
	}
}

// A backend answers at once and keeps reading a slow upload, under
// client-timeout: the client gets the answer, and nothing stays in flight
// or open.
func TestRedteamEarlyAnswerSlowUpload(t *testing.T) {
	t.Parallel()
	backendAddr := testutil.RawServer(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nearly")
		io.Copy(io.Discard, req.Body)
	})
	s, addrs := start(t, fmt.Sprintf(`[global]
client-timeout = 1s
[frontend f]
bind = 127.0.0.1:0
backends = b
[backend b]
connect = %s
`, backendAddr))
	c, err := net.Dial("tcp", addrs["f"])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 100000\r\n\r\n")
	go func() {
		for range 10 {
			if _, err := io.WriteString(c, strings.Repeat("u", 1000)); err != nil {
				return
			}
			time.Sleep(20 * time.Millisecond) // a slow client
		}
	}()
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(got) != "early" {
		t.Errorf("got %d %q", resp.StatusCode, got)
	}
	c.Close()
	testutil.Eventually(t, "every slot back", func() bool { return s.backend("b").InFlight() == 0 })
	testutil.Eventually(t, "every client connection closed", func() bool { return s.openConns() == 0 })
}

// A client that sent part of its body and waits: the backend's early
// answer reaches it at once, not at client-timeout.
func TestRedteamEarlyAnswerToAPausedUpload(t *testing.T) {
	t.Parallel()
	backendAddr := testutil.RawServer(t, func(c net.Conn) {
		req, err := http.ReadRequest(bufio.NewReader(c))
		if err != nil {
			return
		}
		io.CopyN(io.Discard, req.Body, 10)
		io.WriteString(c, "HTTP/1.1 413 Request Entity Too Large\r\nContent-Length: 8\r\nConnection: close\r\n\r\ntoo big!")
	})
	s, addrs := start(t, fmt.Sprintf(`[global]
client-timeout = 5s
[frontend f]
bind = 127.0.0.1:0
backends = b
[backend b]
connect = %s
`, backendAddr))
	for _, size := range []int{1000, 1 << 20} {
		c, err := net.Dial("tcp", addrs["f"])
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(c, "POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n0123456789", size)
		start := time.Now()
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 413 || string(got) != "too big!" {
			t.Errorf("body of %d: got %d %q", size, resp.StatusCode, got)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("body of %d: the early answer came after %v", size, d)
		}
	}
	testutil.Eventually(t, "every slot back", func() bool { return s.backend("b").InFlight() == 0 })
}

// Many HTTP/2 streams on one client connection, uploading at once, some
// cancelled mid-upload: each answer is its own stream's, and every slot
// comes back.
func TestRedteamHTTP2ConcurrentUploads(t *testing.T) {
	t.Parallel()
	cert, key := testcert.Files(t, t.TempDir(), "localhost")
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			return
		}
		fmt.Fprintf(w, "%s %d", r.URL.Path, len(body))
	}))
	t.Cleanup(backend.Close)
	s, addrs := start(t, fmt.Sprintf("[frontend tls]\nbind = 127.0.0.1:0\nbackends = b\nhttps = true\ncertfile = %s\nkeyfile = %s\nclient-timeout = 5s\n[backend b]\nconnect = %s\n",
		cert, key, backend.Listener.Addr()))
	client := &http.Client{Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: testcert.Pool(t, cert), ServerName: "localhost"},
		ForceAttemptHTTP2: true,
	}}
	t.Cleanup(client.CloseIdleConnections)
	const streams = 30
	errs := make(chan error, streams)
	for i := range streams {
		go func() {
			path := fmt.Sprintf("/s%d", i)
			size := 1000 * (i + 1)
			var body io.Reader = strings.NewReader(strings.Repeat("x", size))
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if i%3 == 0 {
				// Cancelled once part of the body is sent.
				pr, pw := io.Pipe()
				go func() {
					pw.Write(make([]byte, 500))
					cancel()
					pw.Close()
				}()
				body = pr
			}
			req, _ := http.NewRequestWithContext(ctx, "POST", "https://"+addrs["tls"]+path, body)
			resp, err := client.Do(req)
			if i%3 == 0 {
				if err == nil {
					resp.Body.Close()
				}
				errs <- nil
				return
			}
			if err != nil {
				errs <- err
				return
			}
			got, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if want := fmt.Sprintf("%s %d", path, size); resp.ProtoMajor != 2 || string(got) != want {
				errs <- fmt.Errorf("%s: got %s %q, want %q", path, resp.Proto, got, want)
				return
			}
			errs <- nil
		}()
	}
	for range streams {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	testutil.Eventually(t, "every slot back", func() bool { return s.backend("b").InFlight() == 0 })
}
