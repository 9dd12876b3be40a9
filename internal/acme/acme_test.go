package acme

import (
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hipsterd/hipsterd/internal/acme/acmetest"
	"github.com/hipsterd/hipsterd/internal/config"
	"github.com/hipsterd/hipsterd/internal/testutil"
)

// serve answers HTTP-01 through m on a loopback listener, and returns its
// address.
func serve(t *testing.T, m *Manager) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: m.HandleHTTP(http.NotFoundHandler())}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// serveTLS serves m's certificates on a loopback listener.
func serveTLS(t *testing.T, m *Manager) string {
	t.Helper()
	return testutil.Serve(tls.NewListener(testutil.Listen(t), &tls.Config{GetCertificate: m.GetCertificate}), func(c net.Conn) {
		c.(*tls.Conn).Handshake()
		c.Close()
	})
}

// handshake returns the serial of the certificate served for name.
func handshake(addr, name string, roots *x509.CertPool) (string, error) {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, &tls.Config{ServerName: name, RootCAs: roots})
	if err != nil {
		return "", err
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].SerialNumber.String(), nil
}

// A certificate due for renewal is renewed, through HTTP-01 alone, while
// clients keep connecting: every handshake succeeds, and the serial
// changes. Pebble's certificates last 15 seconds here; its ARI window
// runs from issue to expiry.
func TestRenewalWithoutFailedHandshakes(t *testing.T) {
	t.Parallel()
	const name = "renew.hipsterd.test"
	var logs testutil.Buffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("manager log:\n%s", logs.String())
		}
	})

	// The port first: Pebble must know where to validate.
	httpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	peb := acmetest.Start(t, acmetest.Options{HTTPPort: httpLn.Addr().(*net.TCPAddr).Port, TLSPort: acmetest.FreePort(t), Validity: 15 * time.Second})
	root, err := os.ReadFile(peb.Root)
	if err != nil {
		t.Fatal(err)
	}
	m, err := New(Options{
		ACME:       config.ACME{CA: peb.Directory, CARoot: peb.Root, Storage: t.TempDir()},
		CARootPEM:  string(root),
		HTTPAddr:   httpLn.Addr().String(),
		RenewCheck: time.Second,
	}, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Stop)
	srv := &http.Server{Handler: m.HandleHTTP(http.NotFoundHandler())}
	go srv.Serve(httpLn)
	t.Cleanup(func() { srv.Close() })
	addr := serveTLS(t, m)
	roots := peb.Roots(t)

	m.Manage([]string{name})
	var first string
	deadline := time.Now().Add(30 * time.Second)
	for first == "" {
		if time.Now().After(deadline) {
			t.Fatalf("no certificate for %s after 30s; status %+v", name, m.Status())
		}
		first, _ = handshake(addr, name, roots)
		time.Sleep(50 * time.Millisecond)
	}
	st := m.Status()
	if len(st) != 1 || st[0].Issuer == "" || st[0].NotAfter.IsZero() || st[0].NextRenewal.IsZero() || !st[0].NextRenewal.Before(st[0].NotAfter) {
		t.Errorf("status after the first certificate: %+v", st)
	}

	// Clients connect without pause until the serial changes.
	var failed atomic.Int64
	var lastErr atomic.Value
	deadline = time.Now().Add(45 * time.Second)
	for {
		serial, err := handshake(addr, name, roots)
		if err != nil {
			failed.Add(1)
			lastErr.Store(err.Error())
		}
		if serial != "" && serial != first {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not renewed after 45s; status %+v", m.Status())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n := failed.Load(); n > 0 {
		t.Errorf("%d handshakes failed during the renewal; the last: %v", n, lastErr.Load())
	}
	if !strings.Contains(logs.String(), "acme: renewing certificate") {
		t.Errorf("the renewal was not logged")
	}
}

// A CA that cannot be reached is logged with the name and the error, and
// shown in the status, and the manager carries on.
func TestUnreachableCA(t *testing.T) {
	t.Parallel()
	const name = "down.hipsterd.test"
	var logs testutil.Buffer
	m, err := New(Options{
		ACME:     config.ACME{CA: "https://127.0.0.1:" + strconv.Itoa(acmetest.FreePort(t)) + "/dir", Storage: t.TempDir()},
		HTTPAddr: "127.0.0.1:" + strconv.Itoa(acmetest.FreePort(t)),
	}, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Stop)
	serve(t, m)
	m.Manage([]string{name})
	deadline := time.Now().Add(20 * time.Second)
	for {
		st := m.Status()
		if len(st) == 1 && st[0].LastError != "" {
			if !strings.Contains(st[0].LastError, "connection refused") || !st[0].NotAfter.IsZero() {
				t.Errorf("status: %+v", st[0])
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no failure after 20s; status %+v\nlog:\n%s", st, logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	line := ""
	for _, l := range strings.Split(logs.String(), "\n") {
		if strings.Contains(l, "certificate failed; will retry") {
			line = l
		}
	}
	if !strings.Contains(line, "level=ERROR") || !strings.Contains(line, "name="+name) || !strings.Contains(line, "connection refused") {
		t.Errorf("failure logged as %q\nlog:\n%s", line, logs.String())
	}
}

// HandleHTTP passes on every request that is no challenge of a managed
// name, challenge paths of other names included.
func TestHandleHTTPPassesOthers(t *testing.T) {
	t.Parallel()
	m, err := New(Options{ACME: config.ACME{CA: config.DefaultACMECA, Storage: t.TempDir()}, HTTPAddr: "127.0.0.1:1"}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Stop)
	m.mu.Lock()
	m.names["a.hipsterd.test"] = true // managed, without starting to obtain
	m.mu.Unlock()
	h := m.HandleHTTP(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(299) }))
	for _, tc := range []struct{ host, path string }{
		{"a.hipsterd.test", "/"},
		{"a.hipsterd.test", "/.well-known/acme-challenge/unknown-token"},
		{"b.hipsterd.test", "/.well-known/acme-challenge/x"},
		{"../../certificates", "/.well-known/acme-challenge/x"},
		{"A.hipsterd.test.", "/.well-known/acme-challenge/x"},
	} {
		rec := httptest.NewRecorder()
		r := httptest.NewRequest("GET", tc.path, nil)
		r.Host = tc.host
		h.ServeHTTP(rec, r)
		if rec.Code != 299 {
			t.Errorf("%s%s: answered %d, not passed on", tc.host, tc.path, rec.Code)
		}
	}
}
