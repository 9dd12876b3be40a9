package server

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/hipsterd/hipsterd/internal/config"
	"github.com/hipsterd/hipsterd/internal/testcert"
	"github.com/hipsterd/hipsterd/internal/testutil"
)

// refusedWait is how long a client past the limit is shown to stay
// unanswered: long enough for hipsterd to have answered it had it accepted
// it.
const refusedWait = 300 * time.Millisecond

// limitReached are the log lines of a max-connections limit being reached.
const limitReached = "max-connections reached"

// keepAlive sends a GET on a new connection, reads its answer, and returns
// the connection, idle and open.
func keepAlive(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	c := dialRaw(t, addr)
	if got := exchangeOn(t, c, 10*time.Second); got != http.StatusOK {
		t.Fatalf("status %d, want 200", got)
	}
	return c
}

// holdBackend answers /hold only when the request is cancelled (its client
// left), and anything else at once.
func holdBackend(t *testing.T) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hold" {
			<-r.Context().Done()
			return
		}
		io.WriteString(w, "ok")
	}))
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

// busy opens a connection whose request is in flight until it is closed:
// not idle, so no limit reclaims it.
func busy(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	c := dialRaw(t, addr)
	if _, err := io.WriteString(c, "GET /hold HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	return c
}

// exchangeOn sends a GET on c and returns the status of its answer, or 0 if
// none came within wait.
func exchangeOn(t *testing.T, c net.Conn, wait time.Duration) int {
	t.Helper()
	c.SetDeadline(time.Now().Add(wait))
	defer c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	return readStatus(t, bufio.NewReader(c))
}

// readStatus reads a response from br and returns its status, or 0 on a
// timeout.
func readStatus(t *testing.T, br *bufio.Reader) int {
	t.Helper()
	resp, err := http.ReadResponse(br, nil)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// waiting sends a GET on a new connection, shows that it is not answered
// while the limit holds, and returns a function that waits for its answer.
func waiting(t *testing.T, addr string) (answered func() int) {
	t.Helper()
	c := dialRaw(t, addr) // the kernel's backlog takes it
	c.SetDeadline(time.Now().Add(refusedWait))
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	if got := readStatus(t, br); got != 0 {
		t.Fatalf("a client past max-connections was answered (%d) at once", got)
	}
	return func() int {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		return readStatus(t, br)
	}
}

func (s *Server) limitOf(frontend string) ConnLimit {
	for _, cl := range s.ConnLimits() {
		if cl.Frontend == frontend {
			return cl
		}
	}
	return ConnLimit{}
}

func TestFrontendMaxConnectionsWaits(t *testing.T) {
	t.Parallel()
	s, addr, logs := limitedFrontend(t)
	first := busy(t, addr)
	second := busy(t, addr)
	testutil.Eventually(t, "2 open connections counted", func() bool { return s.limitOf("f").Open == 2 })
	// Clients past the limit wait, however many try.
	third := waiting(t, addr)
	fourth := waiting(t, addr)
	if cl := s.limitOf("f"); cl.Open != 2 || cl.Max != 2 || cl.Reached == 0 {
		t.Errorf("frontend limit %+v: want 2 open of 2, reached", cl)
	}
	// Each closed connection lets one waiting client in.
	first.Close()
	second.Close()
	for _, answered := range []func() int{third, fourth} {
		if got := answered(); got != http.StatusOK {
			t.Fatalf("a waiting client got %d once connections closed, want 200", got)
		}
	}
	if n := strings.Count(logs.String(), limitReached); n != 1 {
		t.Errorf("%d log lines say the limit was reached, want 1 (at most one a minute)", n)
	}
	if strings.Contains(logs.String(), "level=ERROR") {
		t.Error("an error was logged")
	}
}

func TestGlobalMaxConnectionsAcrossFrontends(t *testing.T) {
	t.Parallel()
	b := holdBackend(t)
	s, addrs, _ := startLogged(t, fmt.Sprintf(`
[global]
max-connections = 2
[frontend a]
bind = 127.0.0.1:0
backends = b
[frontend c]
bind = 127.0.0.1:0
backends = b
[backend b]
connect = %s
`, b))
	if got := s.MaxConnections(); got != 2 {
		t.Fatalf("MaxConnections() = %d, want 2", got)
	}
	// One on each: waiting accept loops hold no slot of their own.
	busy(t, addrs["a"])
	onC := busy(t, addrs["c"])
	testutil.Eventually(t, "2 open connections counted", func() bool { return s.limitOf("").Open == 2 })
	answered := waiting(t, addrs["a"])
	onC.Close()
	if got := answered(); got != http.StatusOK {
		t.Fatalf("the waiting client got %d once a connection closed, want 200", got)
	}
	testutil.Eventually(t, "2 open connections counted", func() bool { return s.limitOf("").Open == 2 })
}

func TestWebSocketHoldsItsSlot(t *testing.T) {
	t.Parallel()
	echo, _ := echoServer(t)
	s, addrs, _ := startLogged(t, fmt.Sprintf(`
[frontend ws]
bind = 127.0.0.1:0
backends = echo
max-connections = 1
[backend echo]
connect = %s
`, echo))
	ws, _, err := websocket.DefaultDialer.Dial("ws://"+addrs["ws"]+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	// The 101 is written before the tunnel is registered.
	testutil.Eventually(t, "the tunnel to open", func() bool { return s.OpenTunnels() == 1 })
	// The tunnel took the connection from net/http, and still counts.
	answered := waiting(t, addrs["ws"])
	ws.Close()
	// The echo backend refuses a plain GET: an answer shows the client
	// was accepted.
	if got := answered(); got != http.StatusBadRequest {
		t.Fatalf("the waiting client got %d once the tunnel closed, want the backend's 400", got)
	}
	testutil.Eventually(t, "the tunnel to close", func() bool { return s.OpenTunnels() == 0 })
}

func TestTCPFrontendMaxConnections(t *testing.T) {
	t.Parallel()
	// An echo backend.
	backendAddr := testutil.RawServer(t, func(c net.Conn) {
		io.Copy(c, c)
	})
	s, addrs, _ := startLogged(t, fmt.Sprintf(`
[frontend t]
bind = 127.0.0.1:0
mode = tcp
backends = echo
max-connections = 1
[backend echo]
connect = %s
`, backendAddr))
	echoes := func(c net.Conn, wait time.Duration) bool {
		c.SetDeadline(time.Now().Add(wait))
		if _, err := c.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 4)
		_, err := io.ReadFull(c, buf)
		return err == nil && string(buf) == "ping"
	}
	first := dialRaw(t, addrs["t"])
	if !echoes(first, 10*time.Second) {
		t.Fatal("no echo through the tcp frontend")
	}
	second := dialRaw(t, addrs["t"])
	if echoes(second, refusedWait) {
		t.Fatal("a connection past max-connections was served at once")
	}
	first.Close()
	second.SetDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 4)
	if _, err := io.ReadFull(second, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("the waiting connection read %q, %v once the first closed", buf, err)
	}
	if cl := s.limitOf("t"); cl.Open != 1 {
		t.Errorf("frontend limit %+v: want 1 open", cl)
	}
}

// A reload keeps the connections of a kept socket counted, and a new limit
// applies at once: raising it lets the waiting clients in.
func TestReloadChangesMaxConnections(t *testing.T) {
	t.Parallel()
	b := holdBackend(t)
	src := func(n int) string {
		return fmt.Sprintf("[frontend f]\nbind = 127.0.0.1:0\nbackends = b\nmax-connections = %d\n[backend b]\nconnect = %s\n", n, b)
	}
	s, addrs, _ := startLogged(t, src(1))
	busy(t, addrs["f"])
	testutil.Eventually(t, "1 open connection counted", func() bool { return s.limitOf("f").Open == 1 })
	answered := waiting(t, addrs["f"])
	cfg, err := config.Parse("test.ini", []byte(src(2)))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	if got := answered(); got != http.StatusOK {
		t.Fatalf("the waiting client got %d once the limit was raised, want 200", got)
	}
	if cl := s.limitOf("f"); cl.Open != 2 || cl.Max != 2 {
		t.Errorf("frontend limit %+v: want 2 open of 2", cl)
	}
}

// At the limit, an idle connection — kept alive between requests, or silent
// since it was accepted — is closed to let a waiting client in, as nginx
// does: idle clients cannot keep out those with a request to make.
func TestLimitReclaimsIdleConnections(t *testing.T) {
	t.Parallel()
	s, addr, _ := limitedFrontend(t)
	idle := keepAlive(t, addr)
	held := busy(t, addr)
	defer held.Close()
	testutil.Eventually(t, "2 open connections counted", func() bool { return s.limitOf("f").Open == 2 })
	c := dialRaw(t, addr)
	if got := exchangeOn(t, c, 10*time.Second); got != http.StatusOK {
		t.Fatalf("a client past the limit, with an idle connection open: %d, want 200", got)
	}
	idle.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := idle.Read(make([]byte, 1)); err == nil {
		t.Error("the idle connection was not closed to make room")
	}
	// The busy one was left alone.
	held.SetReadDeadline(time.Now().Add(refusedWait))
	if _, err := held.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("the busy connection: %v, want still open", err)
	}
}

func TestDefaultMaxConnections(t *testing.T) {
	t.Parallel()
	cfg := &config.Config{Frontends: make([]config.Frontend, 2), Backends: make([]config.Backend, 4)}
	reserve := uint64(fdReserve + 2 + 4*fdPerBackend)
	for _, tc := range []struct {
		name   string
		nofile uint64
		want   int64
	}{
		{"systemd's hard limit", 524288, int64((524288 - reserve) / 2)},
		{"100 000 WebSocket clients fit", 1 << 20, int64((1<<20 - reserve) / 2)},
		{"low: a quarter", 1024, 256},
		{"tiny", 2, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := defaultMaxConnections(tc.nofile, cfg); got != tc.want {
				t.Errorf("defaultMaxConnections(%d) = %d, want %d", tc.nofile, got, tc.want)
			}
		})
	}
}

// A kept-alive connection's next request is in progress from its first
// byte, though net/http reports the connection active only once the whole
// head has come: it is not reclaimed meanwhile, however long the connection
// had been idle before.
func TestLimitSparesKeptAliveRequest(t *testing.T) {
	t.Parallel()
	_, addrs, _ := startLogged(t, fmt.Sprintf(`
[frontend f]
bind = 127.0.0.1:0
backends = b
max-connections = 1
[backend b]
connect = %s
`, holdBackend(t)))
	addr := addrs["f"]
	c := keepAlive(t, addr)
	defer c.Close()
	time.Sleep(reclaimIdleAfter) // idle past it, not a synchronisation
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHo"); err != nil {
		t.Fatal(err)
	}
	answered := waiting(t, addr)
	if _, err := io.WriteString(c, "st: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if got := readStatus(t, bufio.NewReader(c)); got != http.StatusOK {
		t.Fatalf("the request whose head came slowly: %d, want 200", got)
	}
	// Idle again, it makes room in turn.
	if got := answered(); got != http.StatusOK {
		t.Errorf("the waiting client: %d, want 200", got)
	}
}

// A silent connection is closed to make room once reclaimSilentAfter has
// passed, and one that sent part of a request head is not.
func TestLimitClosesSilentNotStarted(t *testing.T) {
	t.Parallel()
	_, addr, _ := limitedFrontend(t)
	started := dialRaw(t, addr)
	defer started.Close()
	io.WriteString(started, "GET / HTTP/1.1\r\nHo")
	silent := dialRaw(t, addr)
	defer silent.Close()
	if got := exchangeOn(t, dialRaw(t, addr), 10*time.Second); got != http.StatusOK {
		t.Fatalf("a client past the limit: %d, want 200", got)
	}
	silent.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := silent.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("the silent connection: %v, want closed", err)
	}
	io.WriteString(started, "st: x\r\n\r\n")
	if got := readStatus(t, bufio.NewReader(started)); got != http.StatusOK {
		t.Errorf("the connection whose head had begun: %d, want 200", got)
	}
}

// A connection that began its first request (or a TLS handshake) and then
// went quiet is closed before a keep-alive connection that served one.
func TestLimitClosesStalledBeforeIdle(t *testing.T) {
	t.Parallel()
	_, addr, _ := limitedFrontend(t)
	idle := keepAlive(t, addr)
	defer idle.Close()
	stalled := dialRaw(t, addr)
	defer stalled.Close()
	io.WriteString(stalled, "GET / HTTP/1.1\r\nHo")
	time.Sleep(reclaimStalledAfter) // quiet that long, not a synchronisation
	if got := exchangeOn(t, dialRaw(t, addr), 10*time.Second); got != http.StatusOK {
		t.Fatalf("a client past the limit: %d, want 200", got)
	}
	stalled.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := stalled.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("the stalled connection: %v, want closed", err)
	}
	idle.SetReadDeadline(time.Now().Add(refusedWait))
	if _, err := idle.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("the idle keep-alive connection: %v, want still open", err)
	}
}

// Over TLS: a client that completes its handshake and then sends nothing
// is closed to make room once it stalled reclaimStalledAfter, and an
// HTTP/2 connection with a stream in flight is not.
func TestLimitClosesStalledTLS(t *testing.T) {
	t.Parallel()
	cert, key := testcert.Files(t, t.TempDir(), "localhost")
	s, addrs, _ := startLogged(t, fmt.Sprintf(`
[frontend f]
bind = 127.0.0.1:0
backends = b
https = true
certfile = %s
keyfile = %s
max-connections = 2
[backend b]
connect = %s
`, cert, key, holdBackend(t)))
	addr := addrs["f"]
	tc := func() *tls.Config { return &tls.Config{RootCAs: testcert.Pool(t, cert), ServerName: "localhost"} }
	h2 := &http.Client{Transport: &http.Transport{TLSClientConfig: tc(), ForceAttemptHTTP2: true}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	held := make(chan error, 1)
	go func() {
		req, _ := http.NewRequestWithContext(ctx, "GET", "https://"+addr+"/hold", nil)
		resp, err := h2.Do(req)
		if err == nil {
			resp.Body.Close()
			err = fmt.Errorf("answered %d", resp.StatusCode)
		}
		held <- err
	}()
	stalled, err := tls.Dial("tcp", addr, tc())
	if err != nil {
		t.Fatal(err)
	}
	defer stalled.Close()
	testutil.Eventually(t, "2 open connections counted", func() bool { return s.limitOf("f").Open == 2 })
	time.Sleep(reclaimStalledAfter) // quiet that long, not a synchronisation
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: tc()}, Timeout: 10 * time.Second}
	resp, err := client.Get("https://" + addr + "/")
	if err != nil {
		t.Fatalf("a client past the limit: %v", err)
	}
	resp.Body.Close()
	stalled.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := stalled.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("the stalled TLS connection: %v, want closed", err)
	}
	select {
	case err := <-held:
		t.Errorf("the HTTP/2 request in flight ended: %v", err)
	default:
	}
}

// limitedFrontend starts a frontend f with max-connections = 2 before a
// backend that holds its requests, and returns the server, f's address and
// the server's log.
func limitedFrontend(t *testing.T) (*Server, string, *logBuffer) {
	t.Helper()
	s, addrs, logs := startLogged(t, fmt.Sprintf(`
[frontend f]
bind = 127.0.0.1:0
backends = b
max-connections = 2
[backend b]
connect = %s
`, holdBackend(t)))
	return s, addrs["f"], logs
}
