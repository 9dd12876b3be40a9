package server

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hipsterd/hipsterd/internal/config"
	"github.com/hipsterd/hipsterd/internal/testcert"
	"github.com/hipsterd/hipsterd/internal/testutil"
)

// freePort returns a port that was free on every IPv4 address a moment ago,
// below the range of ephemeral ports where it can: there, a connection
// from another loopback address (127.0.0.2:port, say) may take it while it
// is bound to 127.0.0.1 only, and then the wildcard cannot be bound.
func freePort(t *testing.T) int {
	t.Helper()
	low := 0
	if data, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		fmt.Sscan(string(data), &low)
	}
	for range 100 {
		port := 0
		if low > 2048 {
			port = 1024 + rand.IntN(low-1024)
		}
		ln, err := net.Listen("tcp4", fmt.Sprintf("0.0.0.0:%d", port))
		if err == nil {
			defer ln.Close()
			return ln.Addr().(*net.TCPAddr).Port
		}
	}
	t.Fatal("no free port")
	return 0
}

func reload(t *testing.T, s *Server, src string) error {
	t.Helper()
	cfg, err := config.Parse("test.ini", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	return s.Reload(cfg)
}

func (s *Server) movingSockets() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.moving)
}

// A bind moved between the wildcard and a specific address on one port,
// back and forth under load, refuses and resets no connection: the new
// socket is bound beside the old, and the old one is kept (when the new
// wildcard covers it) or accepts until its last handshakes are done.
func TestBindMovesWithoutRefusing(t *testing.T) {
	t.Parallel()
	port := freePort(t)
	specific, wildcard := fmt.Sprintf("127.0.0.1:%d", port), fmt.Sprintf("0.0.0.0:%d", port)
	conf := func(bind string) string {
		return fmt.Sprintf("[frontend f]\nbind = %s\nbackends = a\n[backend a]\nconnect = %s\n", bind, namedBackend(t, "a"))
	}
	s, _ := start(t, conf(specific))

	var ok atomic.Int64
	var mu sync.Mutex
	var failures []string
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < 6; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Four workers open a new connection for every request, two
			// keep theirs alive across reloads.
			client := &http.Client{Transport: &http.Transport{DisableKeepAlives: w < 4}, Timeout: 10 * time.Second}
			defer client.CloseIdleConnections()
			for {
				select {
				case <-stop:
					return
				default:
				}
				resp, err := client.Get("http://" + specific + "/")
				if err == nil {
					var body []byte
					body, err = io.ReadAll(resp.Body)
					resp.Body.Close()
					if err == nil && (resp.StatusCode != 200 || string(body) != "a") {
						err = fmt.Errorf("%d %q", resp.StatusCode, body)
					}
				}
				if err != nil {
					mu.Lock()
					failures = append(failures, err.Error())
					mu.Unlock()
					continue
				}
				ok.Add(1)
			}
		}()
	}
	defer func() {
		close(stop)
		wg.Wait()
		if len(failures) > 0 {
			t.Errorf("%d requests failed (%d passed), the first: %s", len(failures), ok.Load(), failures[0])
		}
	}()

	for i := 1; i <= 8; i++ {
		bind := specific
		if i%2 == 1 {
			bind = wildcard
		}
		if err := reload(t, s, conf(bind)); err != nil {
			t.Fatalf("reload %d to %s: %v", i, bind, err)
		}
		if got := s.Addrs()["f"].String(); got != bind {
			t.Errorf("reload %d: frontend f on %s, want %s", i, got, bind)
		}
		from := ok.Load()
		testutil.Eventually(t, "requests after the reload", func() bool { return ok.Load() >= from+100 })
		// Every third reload lets the old socket close first; the others
		// come while it still accepts, and take it back.
		if i%3 == 0 {
			testutil.Eventually(t, "the old socket to close", func() bool { return s.movingSockets() == 0 })
		}
	}
	testutil.Eventually(t, "the old wildcard socket to close", func() bool { return s.movingSockets() == 0 })
	if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.2:%d", port)); err == nil {
		c.Close()
		t.Errorf("127.0.0.2:%d still accepts after the bind moved to %s", port, specific)
	}
}

// With SO_REUSEPORT, which moving a bind needs, Linux would let hipsterd bind
// beside another process's socket; hipsterd refuses to.
func TestMovedBindRefusesForeignListener(t *testing.T) {
	t.Parallel()
	port := freePort(t)
	conf := func(bind string) string {
		return fmt.Sprintf("[frontend f]\nbind = %s\nbackends = a\n[backend a]\nconnect = %s\n", bind, namedBackend(t, "a"))
	}
	s, _ := start(t, conf(fmt.Sprintf("127.0.0.1:%d", port)))
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1) })
	}}
	foreign, err := lc.Listen(context.Background(), "tcp4", fmt.Sprintf("127.0.0.2:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	defer foreign.Close()
	err = reload(t, s, conf(fmt.Sprintf("0.0.0.0:%d", port)))
	if want := fmt.Sprintf("another process listens on 127.0.0.2:%d", port); err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("reload: %v, want an error saying %q", err, want)
	}
	if code, body := get(t, fmt.Sprintf("http://127.0.0.1:%d/", port), ""); code != 200 || body != "a" {
		t.Errorf("after the failed reload: %d %q", code, body)
	}
}

// A backend's ca-file is read again on reload even when its section is
// unchanged, as frontend certificates are.
func TestReloadRereadsBackendCA(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	load := func(name string) (tls.Certificate, []byte) {
		certFile, keyFile := testcert.Files(t, filepath.Join(dir, name), "backend")
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			t.Fatal(err)
		}
		pem, err := os.ReadFile(certFile)
		if err != nil {
			t.Fatal(err)
		}
		return cert, pem
	}
	cert1, pem1 := load("one")
	cert2, pem2 := load("two")
	var current atomic.Pointer[tls.Certificate]
	current.Store(&cert1)
	be := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "tls backend")
	}))
	// Not GetCertificate: without SNI (the backend is an IP address) the
	// certificate httptest adds would be served.
	be.TLS = &tls.Config{GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
		return &tls.Config{Certificates: []tls.Certificate{*current.Load()}}, nil
	}}
	// Every request on a new connection, so each is verified afresh.
	be.Config.SetKeepAlivesEnabled(false)
	be.StartTLS()
	t.Cleanup(be.Close)

	ca := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(ca, pem1, 0o644); err != nil {
		t.Fatal(err)
	}
	src := fmt.Sprintf("[frontend f]\nbind = 127.0.0.1:0\nbackends = b\n[backend b]\nconnect = https://%s\nca-file = %s\n", be.Listener.Addr(), ca)
	s, addrs := start(t, src)
	url := "http://" + addrs["f"] + "/"
	if code, body := get(t, url, ""); code != 200 || body != "tls backend" {
		t.Fatalf("first CA: %d %q", code, body)
	}

	current.Store(&cert2)
	if code, _ := get(t, url, ""); code != http.StatusBadGateway {
		t.Fatalf("new backend certificate, old CA: %d, want 502", code)
	}
	if err := os.WriteFile(ca, pem2, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := reload(t, s, src); err != nil {
		t.Fatal(err)
	}
	if code, body := get(t, url, ""); code != 200 || body != "tls backend" {
		t.Errorf("after reload with the new CA: %d %q", code, body)
	}
}

// What -t accepts, start binds: different addresses on one port.
func TestDifferentAddressesOnOnePort(t *testing.T) {
	t.Parallel()
	port := freePort(t)
	binds := []string{fmt.Sprintf("127.0.0.1:%d", port), fmt.Sprintf("127.0.0.2:%d", port)}
	if ln, err := net.Listen("tcp6", "[::1]:0"); err == nil {
		ln.Close()
		binds = append(binds, fmt.Sprintf("[::1]:%d", port))
	}
	var src strings.Builder
	for i, b := range binds {
		fmt.Fprintf(&src, "[frontend f%d]\nbind = %s\nbackends = b%d\n[backend b%d]\nconnect = %s\n", i, b, i, i, namedBackend(t, fmt.Sprint(i)))
	}
	start(t, src.String())
	for i, b := range binds {
		if code, body := get(t, "http://"+b+"/", ""); code != 200 || body != fmt.Sprint(i) {
			t.Errorf("%s: %d %q", b, code, body)
		}
	}
}
