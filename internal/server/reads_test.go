package server

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hipsterd/hipsterd/internal/testcert"
	"github.com/hipsterd/hipsterd/internal/testutil"
)

// net/http's background read waits without reading while a request without
// a body is handled (reads.go); a client that leaves is still seen. One that
// sends its FIN with its request may be seen before its request reaches
// the backend (the background read can look first) or after: either way
// the backend's request, if made, is cancelled, and the log says 499.
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
	cancelled := func(path string) {
		t.Helper()
		select {
		case p := <-gone:
			if p != path {
				t.Errorf("backend request %s cancelled, want %s", p, path)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: the backend's request was not cancelled when the client left", path)
		}
	}

	// Leaves later, while its request is with the backend.
	c, err := net.Dial("tcp", addrs["f"])
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(c, "GET /later HTTP/1.1\r\nHost: x\r\n\r\n")
	select {
	case p := <-arrived:
		if p != "/later" {
			t.Fatalf("backend got %s, want /later", p)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("/later did not reach the backend")
	}
	c.Close()
	cancelled("/later")

	// The FIN goes with the request, before the handler runs.
	c, err = net.Dial("tcp", addrs["f"])
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(c, "GET /with-request HTTP/1.1\r\nHost: x\r\n\r\n")
	c.(*net.TCPConn).CloseWrite()
	defer c.Close()
	for _, l := range readLog(t, logPath, 2) {
		if f := strings.Fields(l); f[len(f)-2] != "499" {
			t.Errorf("logged %q, want 499", l)
		}
	}
	select {
	case <-arrived:
		cancelled("/with-request")
	default: // seen leaving before its request went
	}
}

// Requests sent back to back, before the first is answered (pipelining),
// are all answered, in order, while the background read waits: over plain
// connections, TLS, and either behind a PROXY header.
func TestPipelinedRequestsWhileBackgroundReadWaits(t *testing.T) {
	t.Parallel()
	cert, key := testcert.Files(t, t.TempDir(), "localhost")
	for _, tc := range clientPaths {
		t.Run(tc.name, func(t *testing.T) {
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
			fe := "[frontend f]\nbind = 127.0.0.1:0\nbackends = b\n" + tc.frontend(cert, key)
			_, addrs := start(t, fe+fmt.Sprintf("[backend b]\nconnect = %s\n", backend.Listener.Addr()))
			c, _ := tc.dial(t, addrs["f"], cert)
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
		})
	}
}

// Bytes a client sends right after its upgrade request, before the 101
// comes, all reach the backend through the tunnel, in order: while the
// background read waits without reading (the backend answers at once),
// and once it read (the backend answers after the wait ran out), over
// plain connections and TLS.
func TestUpgradeBytesAfterRequestWhileBackgroundReadWaits(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cert, key := testcert.Files(t, dir, "localhost")
	plain, overTLS := clientPaths[0], clientPaths[1]
	for _, tc := range []struct {
		name  string
		path  clientPath
		delay time.Duration // before the backend answers, once the bytes went
	}{
		{"plain, prompt backend", plain, 0},
		{"plain, slow backend", plain, 3 * bgReadWait},
		{"tls, prompt backend", overTLS, 0},
		{"tls, slow backend", overTLS, 3 * bgReadWait},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			sent := make(chan struct{})
			backend := testutil.RawServer(t, func(c net.Conn) {
				br := bufio.NewReader(c)
				if _, err := http.ReadRequest(br); err != nil {
					return
				}
				<-sent
				time.Sleep(tc.delay) // a slow backend, not a synchronisation
				io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
				io.Copy(c, br)
			})
			fe := "[frontend f]\nbind = 127.0.0.1:0\nbackends = b\n" + tc.path.frontend(cert, key)
			_, addrs := start(t, fe+fmt.Sprintf("[backend b]\nconnect = %s\n", backend))
			c, _ := tc.path.dial(t, addrs["f"], cert)
			io.WriteString(c, "GET /up HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
			after := make([]byte, 300)
			for i := range after {
				after[i] = byte(i)
			}
			// In three writes, each its own TCP segment (or TLS record).
			for i := 0; i < len(after); i += 100 {
				if _, err := c.Write(after[i : i+100]); err != nil {
					t.Fatal(err)
				}
			}
			close(sent)
			br := bufio.NewReader(c)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != http.StatusSwitchingProtocols {
				t.Fatalf("status %d, want 101", resp.StatusCode)
			}
			got := make([]byte, len(after))
			if _, err := io.ReadFull(br, got); err != nil {
				t.Fatalf("echo: %v (got % x)", err, got)
			}
			if !bytes.Equal(got, after) {
				t.Errorf("echo % x, want % x", got, after)
			}
		})
	}
}
