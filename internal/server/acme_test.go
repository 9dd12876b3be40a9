package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/hipsterd/hipsterd/internal/acme/acmetest"
	"github.com/hipsterd/hipsterd/internal/config"
	"github.com/hipsterd/hipsterd/internal/testpeer"
)

const acmeName = "site.hipsterd.test"

// startACME starts Pebble, with certificates valid for validity (zero:
// its default), and a server whose host acmeName is under ACME, with a
// plain-HTTP frontend "web" (redirect-https) and an https frontend "tls";
// Pebble validates at both. It returns the server, the bound addresses and
// the roots of Pebble's certificates.
func startACME(t *testing.T, validity, renewCheck time.Duration) (*Server, map[string]string, *x509.CertPool) {
	t.Helper()
	httpPort, tlsPort := acmetest.FreePort(t), acmetest.FreePort(t)
	peb := acmetest.Start(t, acmetest.Options{HTTPPort: httpPort, TLSPort: tlsPort, Validity: validity})
	cfg, err := config.Parse("test.ini", fmt.Appendf(nil, `
[global]
acme-ca = %s
acme-ca-root = %s
acme-storage = %s
stats = 127.0.0.1:0
[frontend web]
bind = 127.0.0.1:%d
redirect-https = true
[frontend tls]
bind = 127.0.0.1:%d
https = true
hosts = %s
[host %s]
acme = true
backends = b
[backend b]
connect = %s
`, peb.Directory, peb.Root, t.TempDir(), httpPort, tlsPort, acmeName, acmeName, namedBackend(t, "b")))
	if err != nil {
		t.Fatal(err)
	}
	s := New(slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})))
	s.ACMERenewCheck = renewCheck
	if err := s.Start(cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Shutdown(ctx)
	})
	addrs := map[string]string{}
	for name, a := range s.Addrs() {
		addrs[name] = a.String()
	}
	return s, addrs, peb.Roots(t)
}

// serial returns the serial of the certificate served for name, verified
// with roots.
func serial(addr, name string, roots *x509.CertPool) (string, error) {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, &tls.Config{ServerName: name, RootCAs: roots})
	if err != nil {
		return "", err
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].SerialNumber.String(), nil
}

// The https frontend swaps a renewed certificate in with no failed
// handshake: Pebble's certificates last 15 seconds, renewal checks run
// every second, and clients connect throughout.
func TestACMERenewalThroughServer(t *testing.T) {
	t.Parallel()
	_, addrs, roots := startACME(t, 15*time.Second, time.Second)
	var first string
	poll(t, 30*time.Second, "the first certificate", func() bool {
		first, _ = serial(addrs["tls"], acmeName, roots)
		return first != ""
	})
	// A client posing as the CA, with no challenge pending, gets no
	// certificate, and for a name not under ACME no acme-tls/1 either.
	for _, name := range []string{acmeName, "other.hipsterd.test"} {
		c, err := tls.Dial("tcp", addrs["tls"], &tls.Config{ServerName: name, NextProtos: []string{"acme-tls/1"}, InsecureSkipVerify: true})
		if err == nil {
			c.Close()
			t.Errorf("a TLS-ALPN-01 handshake for %s with no challenge pending succeeded", name)
		}
	}
	failed, lastErr := 0, error(nil)
	poll(t, 30*time.Second, "a renewed certificate", func() bool {
		s, err := serial(addrs["tls"], acmeName, roots)
		if err != nil {
			failed, lastErr = failed+1, err
		}
		return s != "" && s != first
	})
	if failed > 0 {
		t.Errorf("%d handshakes failed during the renewal; the last: %v", failed, lastErr)
	}
}

// The status page lists the ACME certificate with its issuer and no error.
func TestACMEStatusPageInChromium(t *testing.T) {
	t.Parallel()
	bin, err := exec.LookPath("chromium")
	if err != nil {
		testpeer.Missing(t, "chromium is not installed (apt-get install chromium): the ACME row of the status page is not tested in a browser")
	}
	s, addrs, roots := startACME(t, 0, 0)
	poll(t, 30*time.Second, "the certificate", func() bool {
		sn, _ := serial(addrs["tls"], acmeName, roots)
		return sn != ""
	})
	b := startChromium(t, bin)
	page := b.newPage(t)
	page.call(t, "Runtime.enable", nil)
	page.call(t, "Log.enable", nil)
	page.call(t, "Page.enable", nil)
	page.call(t, "Page.navigate", map[string]any{"url": "http://" + statsAddr(t, s) + "/"})
	row := func() string {
		var res struct {
			Result struct {
				Value string `json:"value"`
			} `json:"result"`
		}
		page.callInto(t, "Runtime.evaluate", map[string]any{
			"expression":    `(document.querySelector('#acme tr[data-certificate="` + acmeName + `"]') || {}).innerText || ""`,
			"returnByValue": true,
		}, &res)
		return res.Result.Value
	}
	var got string
	poll(t, 30*time.Second, "the page to list the certificate", func() bool {
		got = row()
		return strings.Contains(got, "Pebble Intermediate CA")
	})
	if !strings.Contains(got, acmeName) || !strings.Contains(got, "tls") || strings.Count(got, "–") != 1 {
		t.Errorf("certificate row %q: want its name, frontend, issuer, dates, and – for no error", got)
	}
	for _, e := range b.errors() {
		t.Errorf("browser console: %s", e)
	}
}
