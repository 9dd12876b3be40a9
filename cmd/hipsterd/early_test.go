package main

// End-to-end tests of answers that come before the request body is all
// sent: the request head reaches the backend at once, Expect: 100-continue
// is answered by the backend (or after a short wait), and an early answer
// reaches the client whole.

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hipsterd/hipsterd/internal/testcert"
)

// headBackend serves each connection with serve, given the request head it
// read (its body not read) and the reader holding what followed.
func headBackend(t *testing.T, serve func(c *net.TCPConn, br *bufio.Reader, req *http.Request)) string {
	t.Helper()
	return rawListener(t, func(c *net.TCPConn) {
		defer c.Close()
		br := bufio.NewReader(c)
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		serve(c, br, req)
	})
}

// oneFrontend starts hipsterd with one frontend in front of backend, with
// the keys in frontKeys and backKeys added to their sections, and returns
// the frontend's address.
func oneFrontend(t *testing.T, backend, frontKeys, backKeys string) string {
	t.Helper()
	front, _ := startOneFrontend(t, backend, frontKeys, backKeys)
	return front
}

// startOneFrontend is oneFrontend for a test that needs the process too.
func startOneFrontend(t *testing.T, backend, frontKeys, backKeys string) (string, *proc) {
	t.Helper()
	front := freePort(t, "tcp", "127.0.0.1")
	p := startHipsterd(t, writeConfig(t, fmt.Sprintf(`
[frontend f]
bind = %s
backends = b
%s
[backend b]
connect = %s
%s
`, front, frontKeys, backend, backKeys)), front)
	return front, p
}

// rawClient is a client connection that writes raw bytes and reads
// responses.
type rawClient struct {
	net.Conn
	br *bufio.Reader
}

func dialRaw(t *testing.T, addr string) *rawClient {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawClient{Conn: c, br: bufio.NewReader(c)}
}

// response reads the next response, interim ones included, within wait,
// its body whole.
func (c *rawClient) response(t *testing.T, wait time.Duration) (*http.Response, []byte) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(wait))
	defer c.SetReadDeadline(time.Time{})
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		t.Fatalf("reading a response: %v", err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading the body of a %d: %v", resp.StatusCode, err)
	}
	return resp, body
}

// closed reports whether the peer closed the connection within wait, with
// nothing more sent.
func (c *rawClient) closed(wait time.Duration) error {
	c.SetReadDeadline(time.Now().Add(wait))
	defer c.SetReadDeadline(time.Time{})
	b, err := c.br.ReadByte()
	if err == nil {
		return fmt.Errorf("byte %q after the response", b)
	}
	if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || strings.Contains(err.Error(), "reset") {
		return nil
	}
	return err
}

// pattern is n bytes that show where a byte sits in them.
func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte('a' + i%23)
	}
	return b
}

// A backend that streams a whole answer while the client is still sending
// an 8 MiB upload that it never reads: the client gets every byte of the
// answer, then the connection closes (the upload is not finished).
func TestEarlyAnswerStreamedOverUpload(t *testing.T) {
	t.Parallel()
	const upload = 8 << 20
	answer := pattern(1 << 20)
	done := make(chan struct{})
	defer close(done)
	backend := headBackend(t, func(c *net.TCPConn, br *bufio.Reader, req *http.Request) {
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
		for rest := answer; len(rest) > 0; {
			n := min(len(rest), 64<<10)
			fmt.Fprintf(c, "%x\r\n%s\r\n", n, rest[:n])
			rest = rest[n:]
		}
		io.WriteString(c, "0\r\n\r\n")
		// Hold the connection without reading, as a backend busy with
		// something else would: the upload stalls on it.
		<-done
	})
	front := oneFrontend(t, backend, "", "")
	c := dialRaw(t, front)
	answered := make(chan struct{})
	go func() {
		// The first MiB, then the rest once the answer is all in:
		// the upload is not finished before.
		fmt.Fprintf(c, "PUT /up HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n", upload)
		chunk := make([]byte, 64<<10)
		for sent := 0; sent < upload; sent += len(chunk) {
			if sent == 1<<20 {
				<-answered
			}
			if _, err := c.Write(chunk); err != nil {
				return
			}
		}
	}()
	resp, body := c.response(t, 10*time.Second)
	close(answered)
	if resp.StatusCode != 200 || !bytes.Equal(body, answer) {
		t.Fatalf("%d with %d bytes, want 200 with the %d bytes the backend sent", resp.StatusCode, len(body), len(answer))
	}
	if err := c.closed(5 * time.Second); err != nil {
		t.Errorf("after an answer to an unfinished upload: %v, want the connection closed", err)
	}
}

// A backend's 401 on the head of an upload that the client holds back
// reaches the client at once: the head went to the backend without waiting
// for the body.
func TestEarlyAnswerOnHead(t *testing.T) {
	t.Parallel()
	backend := headBackend(t, func(c *net.TCPConn, br *bufio.Reader, req *http.Request) {
		io.WriteString(c, "HTTP/1.1 401 Unauthorized\r\nContent-Length: 5\r\n\r\nwho? ")
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		io.Copy(io.Discard, br)
	})
	front := oneFrontend(t, backend, "", "")
	for _, length := range []int{100, 1 << 20} {
		t.Run(fmt.Sprint(length), func(t *testing.T) {
			c := dialRaw(t, front)
			fmt.Fprintf(c, "POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n", length)
			start := time.Now()
			resp, body := c.response(t, 3*time.Second)
			if resp.StatusCode != 401 || string(body) != "who? " {
				t.Fatalf("%d %q, want the backend's 401", resp.StatusCode, body)
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("the 401 took %v", d)
			}
			// The rest of the upload, or part of it: then the connection
			// closes, or the whole body was sent and it serves on.
			c.Write(pattern(min(length, 64<<10)))
			if length > 64<<10 {
				if err := c.closed(5 * time.Second); err != nil {
					t.Errorf("after an answer to an unfinished upload: %v, want the connection closed", err)
				}
			}
		})
	}
}

// expectHead sends the head of a POST with Expect: 100-continue and a
// 5-byte body, which it holds back.
func expectHead(t *testing.T, front string) *rawClient {
	t.Helper()
	c := dialRaw(t, front)
	io.WriteString(c, "POST /e HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
	return c
}

// The backend's 100 Continue reaches the client, once, when the backend
// sends it; then the body goes through.
func TestExpectContinueFromBackend(t *testing.T) {
	t.Parallel()
	var continued atomic.Int64 // when the backend sent its 100, in ns
	backend := headBackend(t, func(c *net.TCPConn, br *bufio.Reader, req *http.Request) {
		if req.Header.Get("Expect") != "100-continue" {
			fmt.Fprintf(c, "HTTP/1.1 417 Expectation Failed\r\nContent-Length: 0\r\n\r\n")
			return
		}
		// Nothing of the body may come before the 100.
		c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		if n, _ := br.Read(make([]byte, 1)); n > 0 {
			fmt.Fprintf(c, "HTTP/1.1 400 Bad Request\r\nContent-Length: 11\r\n\r\nbody early")
			return
		}
		c.SetReadDeadline(time.Time{})
		continued.Store(time.Now().UnixNano())
		io.WriteString(c, "HTTP/1.1 100 Continue\r\n\r\n")
		b, _ := io.ReadAll(req.Body)
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(b), b)
	})
	front := oneFrontend(t, backend, "", "")
	c := expectHead(t, front)
	resp, _ := c.response(t, 3*time.Second)
	got := time.Now().UnixNano()
	if resp.StatusCode != 100 {
		t.Fatalf("%d, want 100 Continue", resp.StatusCode)
	}
	if sent := continued.Load(); sent == 0 || got < sent {
		t.Fatalf("100 Continue came before the backend sent one")
	}
	io.WriteString(c, "hello")
	resp, body := c.response(t, 3*time.Second)
	if resp.StatusCode != 200 || string(body) != "hello" {
		t.Fatalf("%d %q, want 200 \"hello\" (one 100 Continue only)", resp.StatusCode, body)
	}
}

// A backend that never sends 100 Continue: the client gets one after about
// a second, and once only, even when the backend's own comes later.
func TestExpectContinueWait(t *testing.T) {
	t.Parallel()
	for _, late := range []bool{false, true} {
		t.Run(fmt.Sprintf("late=%v", late), func(t *testing.T) {
			t.Parallel()
			backend := headBackend(t, func(c *net.TCPConn, br *bufio.Reader, req *http.Request) {
				b, _ := io.ReadAll(req.Body)
				if late {
					io.WriteString(c, "HTTP/1.1 100 Continue\r\n\r\n")
				}
				fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(b), b)
			})
			front := oneFrontend(t, backend, "", "")
			c := expectHead(t, front)
			start := time.Now()
			resp, _ := c.response(t, 3*time.Second)
			if d := time.Since(start); resp.StatusCode != 100 || d < 700*time.Millisecond {
				t.Fatalf("%d after %v, want 100 Continue after about 1s", resp.StatusCode, d)
			}
			io.WriteString(c, "hello")
			resp, body := c.response(t, 3*time.Second)
			if resp.StatusCode != 200 || string(body) != "hello" {
				t.Fatalf("%d %q, want 200 \"hello\" (one 100 Continue only)", resp.StatusCode, body)
			}
		})
	}
}

// A backend's final answer to the head of an Expect: 100-continue request
// reaches the client at once, with no 100 Continue before it, and the body
// is not awaited: the connection closes.
func TestExpectContinueFinalAnswer(t *testing.T) {
	t.Parallel()
	backend := headBackend(t, func(c *net.TCPConn, br *bufio.Reader, req *http.Request) {
		io.WriteString(c, "HTTP/1.1 413 Content Too Large\r\nContent-Length: 4\r\n\r\nbig!")
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		io.Copy(io.Discard, br)
	})
	// net/http waits for the body a client may send anyway, for
	// client-timeout.
	front := oneFrontend(t, backend, "client-timeout = 1s", "")
	c := expectHead(t, front)
	start := time.Now()
	resp, body := c.response(t, 3*time.Second)
	if resp.StatusCode != 413 || string(body) != "big!" || !resp.Close {
		t.Fatalf("%d %q (Connection: close %v), want the backend's 413 first, closing", resp.StatusCode, body, resp.Close)
	}
	if d := time.Since(start); d > 700*time.Millisecond {
		t.Errorf("the 413 took %v", d)
	}
	if err := c.closed(5 * time.Second); err != nil {
		t.Errorf("after a final answer to an Expect: 100-continue head: %v, want the connection closed", err)
	}
}

// Over HTTP/2 a request's Expect: 100-continue is Go's HTTP/2 server's
// own: it takes the field out of the request, and sends 100 Continue as
// the body is first read, which hipsterd does at once. The client's body
// goes through without its own wait (5s here), and a final answer to the
// head is passed on. That answer may reach the client before or after the
// 100 Continue that hipsterd's first read of the body sends: the two race,
// and either order is correct HTTP.
func TestExpectContinueHTTP2(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cert, key := testcert.Files(t, dir, "localhost")
	refuse := headBackend(t, func(c *net.TCPConn, br *bufio.Reader, req *http.Request) {
		io.WriteString(c, "HTTP/1.1 413 Content Too Large\r\nContent-Length: 4\r\n\r\nbig!")
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		io.Copy(io.Discard, br)
	})
	// net/http's server sends 100 Continue as its handler reads the body.
	echo := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "got %s", b)
	})
	front := freePort(t, "tcp", "127.0.0.1")
	startHipsterd(t, writeConfig(t, fmt.Sprintf(`
[frontend f]
bind = %s
https = true
certfile = %s
keyfile = %s
hosts = refuse echo
[host refuse]
backends = refuse
[host echo]
backends = echo
[backend refuse]
connect = %s
[backend echo]
connect = %s
`, front, cert, key, refuse, echo)), front)
	tr := &http.Transport{
		TLSClientConfig:       &tls.Config{RootCAs: testcert.Pool(t, cert), ServerName: "localhost"},
		ForceAttemptHTTP2:     true,
		ExpectContinueTimeout: 5 * time.Second,
	}
	defer tr.CloseIdleConnections()
	for _, tc := range []struct {
		host string
		code int
		body string
		// continues: the body had to be read, so 100 Continue came first.
		continues bool
	}{{"refuse", 413, "big!", false}, {"echo", 200, "got hello", true}} {
		var continued atomic.Bool
		trace := &httptrace.ClientTrace{Got100Continue: func() { continued.Store(true) }}
		req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(t.Context(), trace), "POST", "https://"+front+"/", strings.NewReader("hello"))
		req.Host = tc.host
		req.Header.Set("Expect", "100-continue")
		start := time.Now()
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.ProtoMajor != 2 || resp.StatusCode != tc.code || string(b) != tc.body || tc.continues && !continued.Load() {
			t.Errorf("%s: %s %d %q (100 Continue: %v), want HTTP/2 %d %q (after a 100 Continue: %v)", tc.host, resp.Proto, resp.StatusCode, b, continued.Load(), tc.code, tc.body, tc.continues)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("%s: the answer took %v", tc.host, d)
		}
	}
}
