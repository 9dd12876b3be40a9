package main

// End-to-end tests of automatic certificates, against Pebble (Let's
// Encrypt's ACME test server) run by internal/acme/acmetest.

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hipsterd/hipsterd/internal/acme/acmetest"
)

const acmeName = "shop.hipsterd.test"

// acmeConf is a configuration whose host acmeName gets its certificate
// from peb, kept in storage. httpAddr is a plain-HTTP frontend's bind
// (none if ""), tlsAddr the https frontend's.
func acmeConf(peb *acmetest.Pebble, storage, httpAddr, tlsAddr, statsAddr, app, accessLog string) string {
	conf := fmt.Sprintf("[global]\nacme-ca = %s\nacme-ca-root = %s\nacme-email = ops@hipsterd.test\nacme-storage = %s\n", peb.Directory, peb.Root, storage)
	if statsAddr != "" {
		conf += "stats = " + statsAddr + "\n"
	}
	if httpAddr != "" {
		conf += "[frontend web]\nbind = " + httpAddr + "\nredirect-https = true\n"
		if accessLog != "" {
			conf += "accesslog = " + accessLog + "\n"
		}
	}
	return conf + "[frontend tls]\nbind = " + tlsAddr + "\nhttps = true\nhosts = " + acmeName + "\n" +
		"[host " + acmeName + "]\nacme = true\nbackends = app\n" +
		"[backend app]\nconnect = " + app + "\n"
}

func portOf(t *testing.T, addr string) int {
	t.Helper()
	n, err := strconv.Atoi(port(addr))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// servedSerial waits until a TLS handshake with addr for name succeeds,
// verified with roots, and returns the serial of the certificate served.
func servedSerial(t *testing.T, p *proc, addr, name string, roots *x509.CertPool, wait time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", addr, &tls.Config{ServerName: name, RootCAs: roots})
		if err == nil {
			defer c.Close()
			return c.ConnectionState().PeerCertificates[0].SerialNumber.String()
		}
		select {
		case <-p.exited:
			t.Fatalf("hipsterd exited with %d:\n%s", p.code, p.stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no valid certificate for %s on %s after %v: %v", name, addr, wait, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// httpsGet fetches url for the host name, with its certificate verified
// by roots.
func httpsGet(t *testing.T, url, name string, roots *x509.CertPool) (int, string) {
	t.Helper()
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: name}}}
	defer client.CloseIdleConnections()
	req, _ := http.NewRequest("GET", url, nil)
	req.Host = name
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// HTTP-01 alone: Pebble's TLS-ALPN-01 port is closed, so the certificate
// comes through the plain-HTTP frontend, whose redirect-https lets the
// challenge pass. It shows in the metrics and the status page.
func TestACMEHTTP01(t *testing.T) {
	t.Parallel()
	app := backend(t, "app", nil)
	httpAddr, tlsAddr, statsAddr := freePort(t, "tcp", "127.0.0.1"), freePort(t, "tcp", "127.0.0.1"), freePort(t, "tcp", "127.0.0.1")
	peb := acmetest.Start(t, acmetest.Options{HTTPPort: portOf(t, httpAddr), TLSPort: portOf(t, freePort(t, "tcp", "127.0.0.1"))})
	accessLog := filepath.Join(t.TempDir(), "access.log")
	conf := writeConfig(t, acmeConf(peb, filepath.Join(t.TempDir(), "acme"), httpAddr, tlsAddr, statsAddr, app, accessLog))
	p := startHipsterd(t, conf, tlsAddr)
	// The rest serves at once, before any certificate.
	if code, _ := body(t, &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}, "http://"+httpAddr+"/x", acmeName); code != http.StatusPermanentRedirect {
		t.Errorf("redirect-https answered %d", code)
	}

	roots := peb.Roots(t)
	servedSerial(t, p, tlsAddr, acmeName, roots, 30*time.Second)
	code, got := httpsGet(t, "https://"+tlsAddr+"/", acmeName, roots)
	if code != 200 || !strings.HasPrefix(got, "app") {
		t.Errorf("through the https frontend: %d %q", code, got)
	}
	// The access log is flushed every second.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		data, _ := os.ReadFile(accessLog)
		if strings.Contains(string(data), "/.well-known/acme-challenge/") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no challenge request in the plain frontend's access log:\n%s", data)
		}
	}
	p.waitStderr(t, "acme: certificate obtained", 1)

	metrics := metricsText(t, statsAddr)
	for _, want := range []string{
		`hipsterd_acme_certificate_info{issuer="Pebble Intermediate CA`,
		`hipsterd_acme_certificate_failing{name="` + acmeName + `"} 0`,
		`hipsterd_acme_certificate_next_renewal_timestamp_seconds{name="` + acmeName + `"}`,
		`hipsterd_acme_certificate_not_after_timestamp_seconds{name="` + acmeName + `"}`,
		`hipsterd_certificate_expiry_seconds{frontend="tls",name="` + acmeName + `"}`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	resp, err := http.Get("http://" + statsAddr + "/status.json")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st struct {
		Certs []struct {
			Names       []string  `json:"names"`
			Frontends   []string  `json:"frontends"`
			Issuer      string    `json:"issuer"`
			NotAfter    time.Time `json:"not_after"`
			NextRenewal time.Time `json:"next_renewal"`
			LastError   string    `json:"last_error"`
		} `json:"acme_certificates"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	if len(st.Certs) != 1 {
		t.Fatalf("status.json acme_certificates: %+v", st.Certs)
	}
	c := st.Certs[0]
	if c.Names[0] != acmeName || c.Frontends[0] != "tls" || !strings.HasPrefix(c.Issuer, "Pebble") || time.Until(c.NotAfter) < 24*time.Hour ||
		!c.NextRenewal.After(time.Now()) || !c.NextRenewal.Before(c.NotAfter) || c.LastError != "" {
		t.Errorf("status.json certificate: %+v", c)
	}
}

// TLS-ALPN-01 alone: no plain-HTTP frontend, and Pebble's HTTP-01 port is
// closed.
func TestACMETLSALPN01(t *testing.T) {
	t.Parallel()
	app := backend(t, "app", nil)
	tlsAddr := freePort(t, "tcp", "127.0.0.1")
	peb := acmetest.Start(t, acmetest.Options{HTTPPort: portOf(t, freePort(t, "tcp", "127.0.0.1")), TLSPort: portOf(t, tlsAddr)})
	conf := writeConfig(t, acmeConf(peb, filepath.Join(t.TempDir(), "acme"), "", tlsAddr, "", app, ""))
	p := startHipsterd(t, conf, tlsAddr)
	servedSerial(t, p, tlsAddr, acmeName, peb.Roots(t), 30*time.Second)
	// A name without a certificate gets none, as before ACME.
	if _, err := tls.Dial("tcp", tlsAddr, &tls.Config{ServerName: "other.hipsterd.test", InsecureSkipVerify: true}); err == nil {
		t.Error("a handshake for a name without a certificate succeeded")
	}
}

// A restart with the CA down serves the certificate from storage.
func TestACMERestartWithCADown(t *testing.T) {
	t.Parallel()
	app := backend(t, "app", nil)
	tlsAddr := freePort(t, "tcp", "127.0.0.1")
	peb := acmetest.Start(t, acmetest.Options{HTTPPort: portOf(t, freePort(t, "tcp", "127.0.0.1")), TLSPort: portOf(t, tlsAddr)})
	conf := writeConfig(t, acmeConf(peb, filepath.Join(t.TempDir(), "acme"), "", tlsAddr, "", app, ""))
	roots := peb.Roots(t)
	p := startHipsterd(t, conf, tlsAddr)
	first := servedSerial(t, p, tlsAddr, acmeName, roots, 30*time.Second)
	p.signal(t, syscall.SIGTERM)
	if code := p.wait(t); code != 0 {
		t.Fatalf("exit %d", code)
	}
	peb.Stop()

	p = startHipsterd(t, conf, tlsAddr)
	if again := servedSerial(t, p, tlsAddr, acmeName, roots, 5*time.Second); again != first {
		t.Errorf("after a restart: serial %s, before %s", again, first)
	}
	if strings.Contains(p.stderr.String(), "acme: obtaining certificate") {
		t.Errorf("obtained again:\n%s", p.stderr.String())
	}
}

// Two instances sharing acme-storage make one order: the other waits on
// the storage's lock and loads the certificate. Pebble validates at the
// first instance's ports only, so if the second orders, the first answers
// its challenge from storage.
func TestACMESharedStorage(t *testing.T) {
	t.Parallel()
	app := backend(t, "app", nil)
	storage := filepath.Join(t.TempDir(), "acme")
	httpA, tlsA := freePort(t, "tcp", "127.0.0.1"), freePort(t, "tcp", "127.0.0.1")
	httpB, tlsB := freePort(t, "tcp", "127.0.0.1"), freePort(t, "tcp", "127.0.0.1")
	peb := acmetest.Start(t, acmetest.Options{HTTPPort: portOf(t, httpA), TLSPort: portOf(t, tlsA)})
	a := launch(t, writeConfig(t, acmeConf(peb, storage, httpA, tlsA, "", app, "")))
	b := launch(t, writeConfig(t, acmeConf(peb, storage, httpB, tlsB, "", app, "")))
	roots := peb.Roots(t)
	serialA := servedSerial(t, a, tlsA, acmeName, roots, 30*time.Second)
	serialB := servedSerial(t, b, tlsB, acmeName, roots, 30*time.Second)
	if serialA != serialB {
		t.Errorf("two certificates: %s and %s", serialA, serialB)
	}
	ordersA := strings.Count(a.stderr.String(), "acme: obtaining certificate")
	ordersB := strings.Count(b.stderr.String(), "acme: obtaining certificate")
	if ordersA+ordersB != 1 {
		t.Errorf("%d orders by the first instance, %d by the second; want one in all", ordersA, ordersB)
	}
	t.Logf("orders: first instance %d, second %d", ordersA, ordersB)
	if n := strings.Count(peb.Output(), "Issued certificate serial"); n != 1 {
		t.Errorf("Pebble issued %d certificates", n)
	}
}

// -t checks the ACME keys without contacting the CA, and rejects what
// cannot work.
func TestACMECheck(t *testing.T) {
	t.Parallel()
	// A "CA" that counts the connections it gets.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var contacted atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			contacted.Add(1)
			c.Close()
		}
	}()
	dir := t.TempDir()
	base := "[global]\nacme-ca = https://" + ln.Addr().String() + "/dir\nacme-storage = " + filepath.Join(dir, "acme") + "\n" +
		"[frontend web]\nbind = 127.0.0.1:1\nhosts = shop.hipsterd.test\n[backend b]\nconnect = 127.0.0.1:2\n"
	code, stdout, stderr := runBinary(t, "-t", "-config", writeConfig(t, base+"[host shop.hipsterd.test]\nacme = true\nbackends = b\n"))
	if code != 0 || stdout != "configuration OK\n" {
		t.Errorf("-t: exit %d, %q, %q", code, stdout, stderr)
	}
	if n := contacted.Load(); n > 0 {
		t.Errorf("-t contacted the CA %d times", n)
	}
	if _, err := os.Stat(filepath.Join(dir, "acme")); err == nil {
		t.Error("-t created acme-storage")
	}

	for _, tc := range []struct{ host, want string }{
		{"[host shop.hipsterd.test *.hipsterd.test]\nacme = true\nbackends = b\n", `[host shop.hipsterd.test *.hipsterd.test] acme: "*.hipsterd.test" is a wildcard: a wildcard certificate needs the ACME DNS-01 challenge`},
		{"[host shop.hipsterd.test]\nacme = true\ncertfile = /x.pem\nkeyfile = /x.key\nbackends = b\n", "[host shop.hipsterd.test] acme: set with certfile/keyfile"},
	} {
		code, _, stderr := runBinary(t, "-t", "-config", writeConfig(t, base+tc.host))
		if code != 1 || !strings.Contains(stderr, tc.want) {
			t.Errorf("exit %d, stderr %q; want 1 and %q", code, stderr, tc.want)
		}
	}
}

// -t under systemd warns of an acme-storage that ProtectSystem=strict
// would make read-only, and takes the default from $STATE_DIRECTORY.
func TestACMEStorageUnderSystemd(t *testing.T) {
	t.Parallel()
	state := t.TempDir()
	conf := func(storage string) string {
		return writeConfig(t, "[global]\n"+storage+"[frontend web]\nbind = 127.0.0.1:1\nhosts = shop.hipsterd.test\n"+
			"[host shop.hipsterd.test]\nacme = true\nbackends = b\n[backend b]\nconnect = 127.0.0.1:2\n")
	}
	for _, tc := range []struct {
		name, config string
		warning      bool
	}{
		{"default", conf(""), false},
		{"inside", conf("acme-storage = " + state + "/certs\n"), false},
		{"outside", conf("acme-storage = " + t.TempDir() + "/acme\n"), true},
	} {
		code, stderr := runWithStderr(t, []string{"INVOCATION_ID=1", "STATE_DIRECTORY=" + state}, "-t", "-config", tc.config)
		if code != 0 {
			t.Errorf("%s: exit %d: %s", tc.name, code, stderr)
		}
		warned := strings.Contains(stderr, tc.config+":2: [global] acme-storage: ") && strings.Contains(stderr, "ProtectSystem=strict")
		if warned != tc.warning {
			t.Errorf("%s: stderr %q; warning wanted: %v", tc.name, stderr, tc.warning)
		}
	}
}

// A reload that adds a name obtains its certificate without holding up
// the reload, and the names kept serve their certificate throughout.
func TestACMEReloadAddsName(t *testing.T) {
	t.Parallel()
	app := backend(t, "app", nil)
	tlsAddr := freePort(t, "tcp", "127.0.0.1")
	peb := acmetest.Start(t, acmetest.Options{HTTPPort: portOf(t, freePort(t, "tcp", "127.0.0.1")), TLSPort: portOf(t, tlsAddr)})
	storage := filepath.Join(t.TempDir(), "acme")
	one := acmeConf(peb, storage, "", tlsAddr, "", app, "")
	const second = "blog.hipsterd.test"
	two := strings.Replace(one, "hosts = "+acmeName, "hosts = "+acmeName+" "+second, 1) +
		"[host " + second + "]\nacme = true\nbackends = app\n"
	path := writeConfig(t, one)
	roots := peb.Roots(t)
	p := startHipsterd(t, path, tlsAddr)
	first := servedSerial(t, p, tlsAddr, acmeName, roots, 30*time.Second)

	p.reload(t, path, two, "reloaded", 1)
	if got := servedSerial(t, p, tlsAddr, acmeName, roots, time.Second); got != first {
		t.Errorf("after the reload %s serves serial %s, before %s", acmeName, got, first)
	}
	servedSerial(t, p, tlsAddr, second, roots, 30*time.Second)
	if n := strings.Count(p.stderr.String(), "acme: obtaining certificate"); n != 2 {
		t.Errorf("%d orders; want one per name", n)
	}
}
