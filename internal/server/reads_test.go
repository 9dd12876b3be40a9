package server

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// net/http's background read waits without reading while a request without
// a body is handled (reads.go); a client that leaves is still seen: one
// that sends its request and its FIN at once, and one that leaves later.
func TestClientLeavingSeenByWaitingBackgroundRead(t *testing.T) {
	t.Parallel()
	logPath := filepath.Join(t.TempDir(), "access.log")
	arrived := make(chan string, 2)
	gone := make(chan string, 2)
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived <- r.URL.Path
		select {
		case <-r.Context().Done():
			gone <- r.URL.Path
		case <-time.After(20 * time.Second):
		}
	}))
	t.Cleanup(backend.Close)
	_, addrs := start(t, fmt.Sprintf("[global]\naccesslog = %s\n[frontend f]\nbind = 127.0.0.1:0\nbackends = b\n[backend b]\nconnect = %s\n",
		logPath, backend.Listener.Addr()))
	for _, leave := range []string{"/with-request", "/later"} {
		c, err := net.Dial("tcp", addrs["f"])
		if err != nil {
			t.Fatal(err)
		}
		if leave == "/with-request" {
			// The FIN goes with the request, before the handler runs.
			io.WriteString(c, "GET "+leave+" HTTP/1.1\r\nHost: x\r\n\r\n")
			c.(*net.TCPConn).CloseWrite()
		} else {
			io.WriteString(c, "GET "+leave+" HTTP/1.1\r\nHost: x\r\n\r\n")
		}
		select {
		case p := <-arrived:
			if p != leave {
				t.Fatalf("backend got %s, want %s", p, leave)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s did not reach the backend", leave)
		}
		begin := time.Now()
		c.Close()
		select {
		case <-gone:
			if d := time.Since(begin); d > 2*time.Second {
				t.Errorf("%s: the backend's request was cancelled %v after the client left", leave, d)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: the backend's request was not cancelled when the client left", leave)
		}
	}
	for _, l := range readLog(t, logPath, 2) {
		if f := strings.Fields(l); f[len(f)-2] != "499" {
			t.Errorf("logged %q, want 499", l)
		}
	}
}

// Requests sent back to back, before the first is answered (pipelining),
// are all answered, in order, while the background read waits.
func TestPipelinedRequestsWhileBackgroundReadWaits(t *testing.T) {
	t.Parallel()
	first, release := make(chan struct{}), make(chan struct{})
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/1" {
			close(first)
			<-release
		}
		io.WriteString(w, r.URL.Path)
	}))
	t.Cleanup(backend.Close)
	_, addrs := start(t, fmt.Sprintf("[frontend f]\nbind = 127.0.0.1:0\nbackends = b\n[backend b]\nconnect = %s\n", backend.Listener.Addr()))
	c, err := net.Dial("tcp", addrs["f"])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "GET /1 HTTP/1.1\r\nHost: x\r\n\r\n")
	br := bufio.NewReader(c)
	read := func(want string) {
		t.Helper()
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		if err != nil || string(body) != want {
			t.Fatalf("body %q, %v; want %q", body, err, want)
		}
	}
	// The second and third come while the first is with the backend.
	<-first
	io.WriteString(c, "GET /2 HTTP/1.1\r\nHost: x\r\n\r\nGET /3 HTTP/1.1\r\nHost: x\r\n\r\n")
	close(release)
	for _, want := range []string{"/1", "/2", "/3"} {
		read(want)
	}
}
