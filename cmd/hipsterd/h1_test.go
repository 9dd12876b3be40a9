package main

// End-to-end tests of what crosses hipsterd between client and backend on
// the HTTP/1.1 path: status codes, request trailers, response bodies.

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"

	"slices"
	"strings"
	"testing"
	"time"
)

// A status code outside 100–599 is a broken response: the client gets a
// 502, not the code.
func TestStatusOutOfRange(t *testing.T) {
	t.Parallel()
	for _, status := range []string{"999 Weird", "600 Past", "099 Below"} {
		t.Run(status, func(t *testing.T) {
			t.Parallel()
			backend := headBackend(t, func(c *net.TCPConn, br *bufio.Reader, req *http.Request) {
				io.WriteString(c, "HTTP/1.1 "+status+"\r\nContent-Length: 2\r\n\r\nok")
			})
			front := oneFrontend(t, backend, "", "")
			resp, err := http.Get("http://" + front + "/")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadGateway {
				t.Errorf("status %d, want 502", resp.StatusCode)
			}
		})
	}
}

// Request trailers that name routing, framing or forwarding fields do not
// reach the backend, announced or sent; others do.
func TestRequestTrailersFiltered(t *testing.T) {
	t.Parallel()
	type seen struct {
		announced string
		trailer   http.Header
		body      string
	}
	got := make(chan seen, 1)
	backend := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		// net/http moves the announced names from the header to the
		// keys of Trailer.
		var names []string
		for k := range r.Trailer {
			names = append(names, k)
		}
		slices.Sort(names)
		announced := strings.Join(names, ",")
		b, _ := io.ReadAll(r.Body)
		got <- seen{announced, r.Trailer, string(b)}
	})
	front := oneFrontend(t, backend, "add-x-forwarded-for = true", "")
	c := dialRaw(t, front)
	io.WriteString(c, "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"+
		"Trailer: Host, X-Forwarded-For, Connection, Forwarded, X-Check\r\n\r\n"+
		"5\r\nhello\r\n0\r\n"+
		"Host: evil.example\r\nX-Forwarded-For: 6.6.6.6\r\nConnection: keep-alive, x-check\r\nForwarded: for=6.6.6.6\r\nX-Check: ok\r\n\r\n")
	resp, _ := c.response(t, 5*time.Second)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	s := <-got
	if s.body != "hello" {
		t.Errorf("body %q", s.body)
	}
	if s.announced != "X-Check" {
		t.Errorf("Trailer announced to the backend: %q, want X-Check only", s.announced)
	}
	var keys []string
	for k := range s.trailer {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	if strings.Join(keys, ",") != "X-Check" || s.trailer.Get("X-Check") != "ok" {
		t.Errorf("trailers at the backend: %v, want X-Check: ok only", fmt.Sprint(s.trailer))
	}
}

// A backend that sends a head and part of a body, then stalls, is cut after
// body-timeout: the client's response ends truncated (the connection
// closes, a chunked body is not terminated), the access log has the line
// with the bytes that went out, and the backend is not taken down for it.
func TestBodyTimeout(t *testing.T) {
	t.Parallel()
	hold := make(chan struct{})
	defer close(hold)
	backend := headBackend(t, func(c *net.TCPConn, br *bufio.Reader, req *http.Request) {
		switch req.URL.Path {
		case "/length":
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789")
		case "/chunked":
			io.WriteString(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n")
		default:
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			return
		}
		<-hold
	})
	front := freePort(t, "tcp", "127.0.0.1")
	logPath := t.TempDir() + "/access.log"
	p := startHipsterd(t, writeConfig(t, fmt.Sprintf(`
[global]
accesslog = %s
[frontend f]
bind = %s
backends = b
[backend b]
connect = %s
body-timeout = 300ms
health-fall = 1
`, logPath, front, backend)), front)
	for _, path := range []string{"/length", "/chunked"} {
		c := dialRaw(t, front)
		start := time.Now()
		fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		resp, err := http.ReadResponse(c.br, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		if string(b) != "0123456789" || !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("%s: body %q, %v; want the 10 bytes sent, then a cut (unexpected EOF)", path, b, err)
		}
		if d := time.Since(start); d < 200*time.Millisecond || d > 3*time.Second {
			t.Errorf("%s: cut after %v, want about 300ms", path, d)
		}
	}
	// Not a failure of the backend's: with health-fall = 1 one would
	// take it down.
	for i := 0; i < 3; i++ {
		resp, err := http.Get("http://" + front + "/ok")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("after the cut bodies: %d", resp.StatusCode)
		}
	}
	if strings.Contains(p.stderr.String(), "DOWN") {
		t.Errorf("the backend was taken down:\n%s", p.stderr.String())
	}
	if !strings.Contains(p.stderr.String(), "body-timeout") {
		t.Errorf("the cut is not logged as body-timeout:\n%s", p.stderr.String())
	}
	lines := waitLines(t, logPath, 5)
	for i, path := range []string{"/length", "/chunked"} {
		if !strings.Contains(lines[i], "GET "+path+" HTTP/1.1\" 200 10") {
			t.Errorf("access log line %q, want %s with 200 and the 10 bytes sent", lines[i], path)
		}
	}
}

// A request with both Content-Length and Transfer-Encoding is answered,
// framed by Transfer-Encoding, and its connection closed after the answer
// (RFC 9112 §6.3): bytes after it are never read as another request.
func TestContentLengthWithTransferEncodingCloses(t *testing.T) {
	t.Parallel()
	bodies := make(chan string, 2)
	backend := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		bodies <- r.URL.Path + " " + string(b)
	})
	front := oneFrontend(t, backend, "", "")
	c := dialRaw(t, front)
	io.WriteString(c, "POST /first HTTP/1.1\r\nHost: x\r\nContent-Length: 30\r\nTransfer-Encoding: chunked\r\n\r\n"+
		"5\r\nhello\r\n0\r\n\r\n"+
		"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, _ := c.response(t, 5*time.Second)
	if resp.StatusCode != 200 || !resp.Close {
		t.Fatalf("status %d, close %v: want 200 and Connection: close", resp.StatusCode, resp.Close)
	}
	if got := <-bodies; got != "/first hello" {
		t.Errorf("backend got %q", got)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.br.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Errorf("after the answer: read %d bytes, err %v; want the connection closed", n, err)
	}
	select {
	case got := <-bodies:
		t.Errorf("a second request reached the backend: %q", got)
	default:
	}
}
