package server

import (
	"bufio"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hipsterd/hipsterd/internal/testcert"
	"github.com/hipsterd/hipsterd/internal/testutil"
)

// logBuffer keeps what the server logs, and sends it to the test's log too.
type logBuffer struct {
	t  *testing.T
	mu sync.Mutex
	b  strings.Builder
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.t.Log(strings.TrimSpace(string(p)))
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startLogged is start, with the server's log (debug lines included) kept.
func startLogged(t *testing.T, src string) (*Server, map[string]string, *logBuffer) {
	t.Helper()
	logs := &logBuffer{t: t}
	s, addrs := startWith(t, src, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	return s, addrs, logs
}

func (s *Server) backend(name string) interface {
	InFlight() int64
	Up() bool
} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.backends[name]
}

// openConns counts the frontends' open connections, hijacked ones excluded.
func (s *Server) openConns() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var n int64
	for _, l := range s.listeners {
		n += l.conns.Load()
	}
	return n
}

// clientTimeout is wide: the tests of a client that keeps its pace must
// not see it fire when a goroutine of theirs, or of hipsterd, waits for a
// CPU under -race on a loaded machine (300ms was seen to).
const clientTimeout = time.Second

// limitsConfig is a frontend with client-timeout = 1s before backend b,
// which one failure would take down.
func limitsConfig(logPath, backend string) string {
	return fmt.Sprintf(`
[global]
accesslog = %s
client-timeout = %s
[frontend f]
bind = 127.0.0.1:0
backends = b
[backend b]
connect = %s
health-fall = 1
`, logPath, clientTimeout, backend)
}

// dialRaw connects to addr, closing the connection at the end of the test.
func dialRaw(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

func TestClientTimeoutSlowBody(t *testing.T) {
	t.Parallel()
	logPath := filepath.Join(t.TempDir(), "access.log")
	bodyErr := make(chan error, 1)
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, err := io.ReadAll(r.Body)
		bodyErr <- err
	}))
	t.Cleanup(backend.Close)
	s, addrs, logs := startLogged(t, limitsConfig(logPath, backend.Listener.Addr().String()))

	c := dialRaw(t, addrs["f"])
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
	sent := time.Now()
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(sent)
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestTimeout || !resp.Close {
		t.Errorf("status %d, closing %v; want 408 and the connection closed", resp.StatusCode, resp.Close)
	}
	if elapsed < clientTimeout*3/4 || elapsed > clientTimeout+2*time.Second {
		t.Errorf("408 after %v, want about %v", elapsed, clientTimeout)
	}
	select {
	case err := <-bodyErr:
		if err == nil {
			t.Error("the backend read a whole body")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the backend's request was not cut")
	}
	b := s.backend("b")
	testutil.Eventually(t, "the backend's slot released", func() bool { return b.InFlight() == 0 })
	if !b.Up() || strings.Contains(logs.String(), "level=ERROR") {
		t.Errorf("the client's stall was held against the backend (up %v):\n%s", b.Up(), logs)
	}
	if line := readLog(t, logPath, 1)[0]; !strings.Contains(line, `"POST /upload HTTP/1.1" 408 `) {
		t.Errorf("log line %q, want a 408", line)
	}
}

func TestClientTimeoutSlowButSteadyBody(t *testing.T) {
	t.Parallel()
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "got %d bytes", len(body))
	}))
	t.Cleanup(backend.Close)
	_, addrs, _ := startLogged(t, limitsConfig(filepath.Join(t.TempDir(), "access.log"), backend.Listener.Addr().String()))

	// 15 bytes a tenth of the timeout apart: longer than the timeout in
	// all, never silent for as long.
	pr, pw := io.Pipe()
	go func() {
		for i := 0; i < 15; i++ {
			time.Sleep(clientTimeout / 10) // the client's pace, not synchronisation
			pw.Write([]byte{'x'})
		}
		pw.Close()
	}()
	resp, err := http.Post("http://"+addrs["f"]+"/", "text/plain", pr)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "got 15 bytes" {
		t.Errorf("%d %q, want the whole body through", resp.StatusCode, body)
	}
}

func TestClientTimeoutStalledReader(t *testing.T) {
	t.Parallel()
	logPath := filepath.Join(t.TempDir(), "access.log")
	writeErr := make(chan error, 1)
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		chunk := make([]byte, 64<<10)
		for {
			if _, err := w.Write(chunk); err != nil {
				writeErr <- err
				return
			}
		}
	}))
	t.Cleanup(backend.Close)
	s, addrs, _ := startLogged(t, limitsConfig(logPath, backend.Listener.Addr().String()))

	c := dialRaw(t, addrs["f"])
	c.SetReadBuffer(4096)
	c.SetDeadline(time.Now().Add(20 * time.Second))
	io.WriteString(c, "GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
	br := bufio.NewReaderSize(c, 4096)
	if line, err := br.ReadString('\n'); err != nil || !strings.HasPrefix(line, "HTTP/1.1 200") {
		t.Fatalf("status line %q, %v", line, err)
	}
	// The client reads no more; hipsterd's writes to it stall.
	stalled := time.Now()
	select {
	case <-writeErr:
	case <-time.After(clientTimeout + 10*time.Second):
		t.Fatal("the backend's response was not cut")
	}
	if d := time.Since(stalled); d < clientTimeout*3/4 {
		t.Errorf("cut after %v, before client-timeout", d)
	}
	b := s.backend("b")
	testutil.Eventually(t, "the backend's slot released", func() bool { return b.InFlight() == 0 })
	// hipsterd closed the client's connection (the kernel may still hold
	// bytes for it, sent as the client reads).
	testutil.Eventually(t, "the client's connection closed", func() bool { return s.openConns() == 0 })
	line := readLog(t, logPath, 1)[0]
	var n int64
	if _, err := fmt.Sscanf(line[strings.Index(line, `" `)+2:], "200 %d", &n); err != nil || n <= 0 {
		t.Errorf("log line %q, want 200 with the bytes sent", line)
	}
	if !b.Up() {
		t.Error("a client that stopped reading took the backend down")
	}
}

func TestClientTimeoutSpareStreams(t *testing.T) {
	t.Parallel()
	const events = 6
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		for i := 0; i < events; i++ {
			fmt.Fprintf(w, "data: %d\n\n", i)
			w.(http.Flusher).Flush()
			time.Sleep(clientTimeout / 3) // the stream's pace
		}
	}))
	t.Cleanup(backend.Close)
	_, addrs, _ := startLogged(t, limitsConfig(filepath.Join(t.TempDir(), "access.log"), backend.Listener.Addr().String()))

	// After a request body, the body's deadline must not outlive it.
	for _, method := range []string{"GET", "POST"} {
		t.Run(method, func(t *testing.T) {
			t.Parallel()
			var body io.Reader
			if method == "POST" {
				body = strings.NewReader("a request body")
			}
			req, err := http.NewRequest(method, "http://"+addrs["f"]+"/events", body)
			if err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || strings.Count(string(got), "data: ") != events {
				t.Errorf("after %v: %d events, %v; want all %d", time.Since(start), strings.Count(string(got), "data: "), err, events)
			}
			if time.Since(start) < 3*clientTimeout/2 {
				t.Errorf("the stream took %v, not longer than client-timeout", time.Since(start))
			}
		})
	}
}

func TestBadBodyIsTheClientsFault(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, req string
	}{
		{"malformed chunked", "POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n"},
		{"shorter than Content-Length", "POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			logPath := filepath.Join(t.TempDir(), "access.log")
			backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				io.Copy(io.Discard, r.Body)
			}))
			t.Cleanup(backend.Close)
			s, addrs, logs := startLogged(t, limitsConfig(logPath, backend.Listener.Addr().String()))
			const tries = 3
			for i := 0; i < tries; i++ {
				c := dialRaw(t, addrs["f"])
				c.SetDeadline(time.Now().Add(10 * time.Second))
				io.WriteString(c, tc.req)
				c.CloseWrite() // the body ends here
				resp, err := http.ReadResponse(bufio.NewReader(c), nil)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusBadRequest {
					t.Errorf("try %d: status %d, want 400", i, resp.StatusCode)
				}
			}
			b := s.backend("b")
			testutil.Eventually(t, "the backend's slots released", func() bool { return b.InFlight() == 0 })
			if !b.Up() {
				t.Errorf("bad bodies took the backend down (health-fall = 1)")
			}
			out := logs.String()
			if strings.Count(out, `level=DEBUG msg="bad request body"`) != tries || strings.Contains(out, "level=ERROR") || strings.Contains(out, "level=WARN") {
				t.Errorf("want %d debug lines and no error:\n%s", tries, out)
			}
			for _, line := range readLog(t, logPath, tries) {
				if !strings.Contains(line, `"POST /up HTTP/1.1" 400 `) {
					t.Errorf("log line %q, want a 400", line)
				}
			}
		})
	}
}

// h2Frame is an HTTP/2 frame: the test speaks raw frames to do what a
// well-behaved client would not.
func h2Frame(typ, flags byte, stream uint32, payload []byte) []byte {
	n := len(payload)
	return append([]byte{byte(n >> 16), byte(n >> 8), byte(n), typ, flags,
		byte(stream >> 24), byte(stream >> 16), byte(stream >> 8), byte(stream)}, payload...)
}

const (
	h2Data          = 0
	h2Headers       = 1
	h2RSTStream     = 3
	h2Settings      = 4
	h2GoAway        = 7
	h2EndStream     = 0x1
	h2Ack           = 0x1
	h2EndHeaders    = 0x4
	h2Protocol      = 1
	h2RefusedStream = 7
)

// h2Get is a HEADERS frame for GET https://localhost/ on stream id, in
// HPACK without Huffman coding or indexing.
func h2Get(id uint32) []byte {
	block := []byte{0x82, 0x87, 0x84, 0x01, 9} // :method GET, :scheme https, :path /, :authority (9 bytes)
	block = append(block, "localhost"...)
	return h2Frame(h2Headers, h2EndHeaders|h2EndStream, id, block)
}

func TestHTTP2StreamsPastTheLimitAreRefused(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cert, key := testcert.Files(t, dir, "localhost")
	var arrived atomic.Int64
	release := make(chan struct{})
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived.Add(1)
		<-release
		io.WriteString(w, "ok")
	}))
	t.Cleanup(backend.Close)
	var once sync.Once
	free := func() { once.Do(func() { close(release) }) }
	t.Cleanup(free)
	_, addrs := start(t, fmt.Sprintf("[frontend tls]\nbind = 127.0.0.1:0\nbackends = b\nhttps = true\ncertfile = %s\nkeyfile = %s\n[backend b]\nconnect = %s\n",
		cert, key, backend.Listener.Addr()))

	c, err := tls.Dial("tcp", addrs["tls"], &tls.Config{RootCAs: testcert.Pool(t, cert), ServerName: "localhost", NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if p := c.ConnectionState().NegotiatedProtocol; p != "h2" {
		t.Fatalf("ALPN gave %q", p)
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	send := func(b []byte) {
		t.Helper()
		if _, err := c.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	send(append([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), h2Frame(h2Settings, 0, 0, nil)...))

	// Frames from hipsterd, read in the background; its SETTINGS are
	// acknowledged as they come.
	type frame struct {
		typ, flags byte
		stream     uint32
		payload    []byte
	}
	frames := make(chan frame, 1024)
	go func() {
		defer close(frames)
		br := bufio.NewReader(c)
		var head [9]byte
		for {
			if _, err := io.ReadFull(br, head[:]); err != nil {
				return
			}
			f := frame{typ: head[3], flags: head[4], stream: binary.BigEndian.Uint32(head[5:]) & 0x7fffffff,
				payload: make([]byte, int(head[0])<<16|int(head[1])<<8|int(head[2]))}
			if _, err := io.ReadFull(br, f.payload); err != nil {
				return
			}
			if f.typ == h2Settings && f.flags&h2Ack == 0 {
				c.Write(h2Frame(h2Settings, h2Ack, 0, nil))
			}
			frames <- f
		}
	}()
	next := func() frame {
		t.Helper()
		f, ok := <-frames
		if !ok {
			t.Fatal("hipsterd closed the connection")
		}
		if f.typ == h2GoAway {
			t.Fatalf("GOAWAY, error code %d", binary.BigEndian.Uint32(f.payload[4:]))
		}
		return f
	}

	for i := uint32(0); i < h2MaxStreams; i++ {
		send(h2Get(2*i + 1))
	}
	testutil.Eventually(t, "every allowed stream at the backend", func() bool { return arrived.Load() == h2MaxStreams })
	over := uint32(2*h2MaxStreams + 1)
	send(h2Get(over))
	for {
		f := next()
		if f.typ == h2RSTStream {
			code := binary.BigEndian.Uint32(f.payload)
			if f.stream != over || code != h2Protocol && code != h2RefusedStream {
				t.Fatalf("RST_STREAM on stream %d, code %d; want stream %d refused", f.stream, code, over)
			}
			break
		}
	}

	// The connection carries on: the open streams are answered, and a
	// new one is served.
	free()
	done := map[uint32]bool{}
	for len(done) < h2MaxStreams {
		if f := next(); f.typ == h2Data && f.flags&h2EndStream != 0 {
			done[f.stream] = true
		}
	}
	send(h2Get(over + 2))
	for {
		if f := next(); f.stream == over+2 && f.typ == h2Data && f.flags&h2EndStream != 0 {
			break
		}
	}
	if n := arrived.Load(); n != h2MaxStreams+1 {
		t.Errorf("the backend saw %d requests, want %d: the refused stream reached it", n, h2MaxStreams+1)
	}
}

func TestClientTimeoutHTTP2SlowBody(t *testing.T) {
	t.Parallel()
	cert, key := testcert.Files(t, t.TempDir(), "localhost")
	bodyErr := make(chan error, 1)
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, err := io.ReadAll(r.Body)
		bodyErr <- err
	}))
	t.Cleanup(backend.Close)
	s, addrs, _ := startLogged(t, fmt.Sprintf("[frontend tls]\nbind = 127.0.0.1:0\nbackends = b\nhttps = true\ncertfile = %s\nkeyfile = %s\nclient-timeout = %s\n[backend b]\nconnect = %s\nhealth-fall = 1\n",
		cert, key, clientTimeout, backend.Listener.Addr()))
	client := &http.Client{Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: testcert.Pool(t, cert), ServerName: "localhost"},
		ForceAttemptHTTP2: true,
	}}
	t.Cleanup(client.CloseIdleConnections)

	// Ten bytes, then nothing: the stream stalls, not the connection.
	pr, pw := io.Pipe()
	t.Cleanup(func() { pw.Close() })
	go pw.Write([]byte("0123456789"))
	resp, err := client.Post("https://"+addrs["tls"]+"/upload", "text/plain", pr)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.ProtoMajor != 2 || resp.StatusCode != http.StatusRequestTimeout {
		t.Errorf("%s %d, want HTTP/2 and 408", resp.Proto, resp.StatusCode)
	}
	select {
	case err := <-bodyErr:
		if err == nil {
			t.Error("the backend read a whole body")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the backend's request was not cut")
	}
	b := s.backend("b")
	testutil.Eventually(t, "the backend's slot released", func() bool { return b.InFlight() == 0 })
	if !b.Up() {
		t.Error("the client's stall took the backend down")
	}
}

func TestClientTimeoutHTTP2StalledReader(t *testing.T) {
	t.Parallel()
	cert, key := testcert.Files(t, t.TempDir(), "localhost")
	writeErr := make(chan error, 1)
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		chunk := make([]byte, 64<<10)
		for {
			if _, err := w.Write(chunk); err != nil {
				writeErr <- err
				return
			}
		}
	}))
	t.Cleanup(backend.Close)
	s, addrs, _ := startLogged(t, fmt.Sprintf("[frontend tls]\nbind = 127.0.0.1:0\nbackends = b\nhttps = true\ncertfile = %s\nkeyfile = %s\nclient-timeout = %s\n[backend b]\nconnect = %s\n",
		cert, key, clientTimeout, backend.Listener.Addr()))
	client := &http.Client{Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: testcert.Pool(t, cert), ServerName: "localhost"},
		ForceAttemptHTTP2: true,
	}}
	t.Cleanup(client.CloseIdleConnections)

	resp, err := client.Get("https://" + addrs["tls"] + "/big")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.ProtoMajor != 2 {
		t.Fatalf("%s, want HTTP/2", resp.Proto)
	}
	// The client reads no more: once its stream's flow-control window is
	// full, hipsterd's writes stall, and the stream is reset.
	select {
	case <-writeErr:
	case <-time.After(clientTimeout + 10*time.Second):
		t.Fatal("the backend's response was not cut")
	}
	testutil.Eventually(t, "the backend's slot released", func() bool { return s.backend("b").InFlight() == 0 })
	if _, err := io.Copy(io.Discard, resp.Body); err == nil {
		t.Error("the stream ended cleanly; want it reset")
	}
}

func TestClientTimeoutLeavesKeepAliveAlone(t *testing.T) {
	t.Parallel()
	b := namedBackend(t, "hello")
	_, addrs, _ := startLogged(t, limitsConfig(filepath.Join(t.TempDir(), "access.log"), b))
	c := dialRaw(t, addrs["f"])
	c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	for i, req := range []string{
		"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody",
		"GET /b HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /c HTTP/1.1\r\nHost: x\r\n\r\n",
	} {
		if i > 0 {
			// Idle between requests for longer than client-timeout: the
			// deadlines of the last exchange must not end this one.
			time.Sleep(2 * clientTimeout)
		}
		io.WriteString(c, req)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("request %d on the kept-alive connection: %v", i, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(body) != "hello" {
			t.Errorf("request %d: %d %q", i, resp.StatusCode, body)
		}
	}
}
