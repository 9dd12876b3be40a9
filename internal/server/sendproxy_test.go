package server

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"

	"github.com/hipsterd/hipsterd/internal/testcert"
	"github.com/hipsterd/hipsterd/internal/testutil"
)

// spConn is a connection to a send-proxy backend: its number and the
// client its PROXY header names.
type spConn struct {
	id  int64
	src string
}

// sendProxyBackend starts a backend that reads a PROXY header on each
// connection, reports it on opened, answers each request on it with the
// connection's number and the request's path (a 101 for an upgrade, then
// echoes), and reports on closed when the proxy closes it.
func sendProxyBackend(t *testing.T) (addr string, opened, closed chan spConn) {
	t.Helper()
	opened, closed = make(chan spConn, 64), make(chan spConn, 64)
	var n atomic.Int64
	addr = testutil.RawServer(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		h, err := proxyproto.Read(br)
		if err != nil {
			return
		}
		sc := spConn{n.Add(1), h.SourceAddr.String()}
		opened <- sc
		defer func() { closed <- sc }()
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			if req.Header.Get("Upgrade") != "" {
				io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
				io.Copy(c, br)
				return
			}
			io.Copy(io.Discard, req.Body)
			body := fmt.Sprintf("%d %s", sc.id, req.URL.Path)
			fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
		}
	})
	return addr, opened, closed
}

// recvSP receives a backend connection's report from ch.
func recvSP(t *testing.T, what string, ch chan spConn) spConn {
	t.Helper()
	select {
	case sc := <-ch:
		return sc
	case <-time.After(testutil.Patience):
		t.Fatalf("timed out waiting for %s", what)
	}
	return spConn{}
}

// spClient is a client connection to a frontend, with its PROXY header
// sent (if header) and TLS (if tls) under HTTP/1.1.
type spClient struct {
	net.Conn
	br  *bufio.Reader
	src string // as the backend's header should name it
}

func dialSP(t *testing.T, addr, cert string, path clientPath) *spClient {
	t.Helper()
	c, src := path.dial(t, addr, cert)
	return &spClient{Conn: c, br: bufio.NewReader(c), src: src}
}

// get sends a GET for path and returns the answer's body.
func (c *spClient) get(t *testing.T, path string) string {
	t.Helper()
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path)
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %q, %v", path, resp.StatusCode, body, err)
	}
	return string(body)
}

// A send-proxy backend's connection is kept for its client connection's
// requests, and closed with it, whatever the frontend: plain, TLS (HTTP/1.1
// and HTTP/2), behind a PROXY header, or both; and however the client
// connection ends: the client leaves, a WebSocket upgrade takes it, the
// limit reclaims it, the server shuts down.
func TestSendProxyConnectionPerClientConnection(t *testing.T) {
	t.Parallel()
	cert, key := testcert.Files(t, t.TempDir(), "localhost")
	for _, tc := range clientPaths {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			backend, opened, closed := sendProxyBackend(t)
			fe := "[frontend f]\nbind = 127.0.0.1:0\nbackends = b\nmax-connections = 2\n"
			fe += tc.frontend(cert, key)
			s, addrs := start(t, fe+fmt.Sprintf("[backend b]\nconnect = %s\nsend-proxy = v2\n", backend))
			dial := func() *spClient { return dialSP(t, addrs["f"], cert, tc) }
			// use makes requests on c, all on one backend connection,
			// which names c's client, and returns that connection.
			use := func(c *spClient) spConn {
				t.Helper()
				first := c.get(t, "/first")
				sc := recvSP(t, "a backend connection", opened)
				if want := fmt.Sprintf("%d /first", sc.id); first != want {
					t.Errorf("first request: %q, want %q", first, want)
				}
				if sc.src != c.src {
					t.Errorf("the backend's header names %s, want %s", sc.src, c.src)
				}
				if got, want := c.get(t, "/again"), fmt.Sprintf("%d /again", sc.id); got != want {
					t.Errorf("on a kept-alive client connection: %q, want %q (its backend connection)", got, want)
				}
				select {
				case o := <-opened:
					t.Errorf("a second backend connection (%d) for one client connection", o.id)
				default:
				}
				return sc
			}
			ended := func(how string, sc spConn) {
				t.Helper()
				if got := recvSP(t, "the backend connection to close: "+how, closed); got != sc {
					t.Errorf("%s: backend connection %d closed, want %d", how, got.id, sc.id)
				}
			}

			// The client leaves.
			c := dial()
			sc := use(c)
			c.Close()
			ended("the client left", sc)

			// A WebSocket upgrade: its own backend connection; the kept
			// one closes as the client connection is taken over.
			c = dial()
			sc = use(c)
			fmt.Fprintf(c, "GET /up HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
			resp, err := http.ReadResponse(c.br, nil)
			if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
				t.Fatalf("upgrade: %v, %v", resp, err)
			}
			ended("upgraded", sc)
			up := recvSP(t, "the upgrade's backend connection", opened)
			if up.src != c.src {
				t.Errorf("the upgrade's header names %s, want %s", up.src, c.src)
			}
			io.WriteString(c, "ping\n")
			if l, err := c.br.ReadString('\n'); l != "ping\n" {
				t.Fatalf("through the tunnel: %q, %v", l, err)
			}
			c.Close()
			ended("the tunnel's client left", up)

			// The limit (2) reclaims the longest idle connection for a
			// waiting client.
			idle := dial()
			sc = use(idle)
			other := dial()
			osc := use(other)
			// The client that waits, sending its request at once, is let in
			// once one idle connection is closed; its wait (in the backlog)
			// is what the reclaim is for.
			third := dial()
			ended3 := make(chan string, 1)
			go func() {
				fmt.Fprintf(third, "GET /third HTTP/1.1\r\nHost: x\r\n\r\n")
				resp, err := http.ReadResponse(third.br, nil)
				if err != nil {
					ended3 <- err.Error()
					return
				}
				b, _ := io.ReadAll(resp.Body)
				ended3 <- string(b)
			}()
			got := recvSP(t, "an idle client's backend connection to close: reclaimed", closed)
			if got != sc && got != osc {
				t.Errorf("backend connection %d closed, want %d or %d", got.id, sc.id, osc.id)
			}
			select {
			case b := <-ended3:
				if !strings.HasSuffix(b, " /third") {
					t.Errorf("the waiting client: %q", b)
				}
			case <-time.After(testutil.Patience):
				t.Fatal("the waiting client was not answered")
			}
			recvSP(t, "the waiting client's backend connection", opened)

			// The server shuts down: all that is left closes.
			ctx, cancel := context.WithTimeout(context.Background(), testutil.Patience)
			defer cancel()
			s.Shutdown(ctx)
			for range 2 {
				recvSP(t, "backend connections to close at shutdown", closed)
			}
		})
	}
}

// Over HTTP/2, a client connection's requests in turn share one send-proxy
// backend connection, closed with the client connection.
func TestSendProxyConnectionPerHTTP2Connection(t *testing.T) {
	t.Parallel()
	cert, key := testcert.Files(t, t.TempDir(), "localhost")
	backend, opened, closed := sendProxyBackend(t)
	_, addrs := start(t, fmt.Sprintf("[frontend f]\nbind = 127.0.0.1:0\nbackends = b\nhttps = true\ncertfile = %s\nkeyfile = %s\n[backend b]\nconnect = %s\nsend-proxy = v2\n", cert, key, backend))
	var local string
	tr := &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: testcert.Pool(t, cert), ServerName: "localhost"},
		ForceAttemptHTTP2: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			if err == nil {
				local = c.LocalAddr().String()
			}
			return c, err
		},
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: testutil.Patience}
	var id int64
	for i := range 3 {
		resp, err := client.Get("https://" + addrs["f"] + "/" + fmt.Sprint(i))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.ProtoMajor != 2 {
			t.Fatalf("HTTP/%d, want HTTP/2", resp.ProtoMajor)
		}
		if i == 0 {
			sc := recvSP(t, "a backend connection", opened)
			if sc.src != local {
				t.Errorf("the backend's header names %s, want %s", sc.src, local)
			}
			id = sc.id
		}
		if want := fmt.Sprintf("%d /%d", id, i); string(body) != want {
			t.Errorf("request %d: %q, want %q", i, body, want)
		}
	}
	select {
	case o := <-opened:
		t.Errorf("a second backend connection (%d) for one client connection", o.id)
	default:
	}
	tr.CloseIdleConnections()
	if got := recvSP(t, "the backend connection to close with its client's", closed); got.id != id {
		t.Errorf("backend connection %d closed, want %d", got.id, id)
	}
}
