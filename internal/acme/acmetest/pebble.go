// Package acmetest runs Pebble, Let's Encrypt's ACME test server, with
// pebble-challtestsrv as its DNS (every name is 127.0.0.1), for tests.
// Both are Go tools of this module (go.mod's tool directive): `go tool`
// builds them, so a fresh machine needs nothing installed.
package acmetest

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hipsterd/hipsterd/internal/testcert"
)

// Options say where Pebble validates challenges and how long its
// certificates last.
type Options struct {
	// HTTPPort and TLSPort are the ports on 127.0.0.1 Pebble connects to
	// for HTTP-01 and TLS-ALPN-01.
	HTTPPort, TLSPort int
	// Validity is the lifetime of the certificates; zero for Pebble's
	// default (90 days).
	Validity time.Duration
}

// Pebble is a running Pebble with its DNS.
type Pebble struct {
	// Directory is the ACME directory URL; Root the PEM file of the root
	// of its HTTPS certificate (acme-ca-root).
	Directory, Root string
	mgmt            string // the management API's address
	cmd             *exec.Cmd
	out             *syncBuffer
	exited          chan struct{}
	stopOnce        sync.Once
}

// tools builds pebble and pebble-challtestsrv once per test binary.
var tools = sync.OnceValues(func() (map[string]string, error) {
	paths := map[string]string{}
	for _, name := range []string{"pebble", "pebble-challtestsrv"} {
		out, err := exec.Command("go", "tool", "-n", name).Output()
		if err != nil {
			msg := err.Error()
			if ee, ok := err.(*exec.ExitError); ok {
				msg += ": " + string(ee.Stderr)
			}
			return nil, fmt.Errorf("building %s with `go tool -n %s` (it is a tool of go.mod; run go mod download): %s", name, name, msg)
		}
		paths[name] = strings.TrimSpace(string(out))
	}
	return paths, nil
})

// FreePort returns a port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// dnsPort returns a port on 127.0.0.1 free a moment ago for both TCP and
// UDP, as a DNS server needs.
func dnsPort(t testing.TB) int {
	t.Helper()
	for range 100 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		c, err := net.ListenPacket("udp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		ln.Close()
		if err == nil {
			c.Close()
			return port
		}
	}
	t.Fatal("no port free for both TCP and UDP on 127.0.0.1")
	return 0
}

// Start runs Pebble and its DNS until the test ends. A missing tool fails
// the test: the tools come with the module.
func Start(t testing.TB, o Options) *Pebble {
	t.Helper()
	bins, err := tools()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cert, key := testcert.Files(t, dir, "localhost")
	dns := dnsPort(t)
	dnsMgmt := FreePort(t)
	listen := FreePort(t)
	p := &Pebble{
		Directory: fmt.Sprintf("https://127.0.0.1:%d/dir", listen),
		Root:      cert,
		mgmt:      fmt.Sprintf("127.0.0.1:%d", FreePort(t)),
		out:       &syncBuffer{},
		exited:    make(chan struct{}),
	}
	profile := map[string]any{"description": "test"}
	if o.Validity > 0 {
		profile["validityPeriod"] = int(o.Validity / time.Second)
	}
	conf, _ := json.Marshal(map[string]any{"pebble": map[string]any{
		"listenAddress":           fmt.Sprintf("127.0.0.1:%d", listen),
		"managementListenAddress": p.mgmt,
		"certificate":             cert,
		"privateKey":              key,
		"httpPort":                o.HTTPPort,
		"tlsPort":                 o.TLSPort,
		"ocspResponderURL":        "",
		"keyAlgorithm":            "ecdsa",
		"profiles":                map[string]any{"default": profile},
	}})
	confPath := filepath.Join(dir, "pebble.json")
	if err := os.WriteFile(confPath, conf, 0o644); err != nil {
		t.Fatal(err)
	}

	// Every name is 127.0.0.1, and no AAAA record: the tests listen on
	// 127.0.0.1 only.
	dnsCmd := exec.Command(bins["pebble-challtestsrv"], "-http01", "", "-https01", "", "-doh", "", "-tlsalpn01", "",
		"-dnsserver", fmt.Sprintf("127.0.0.1:%d", dns), "-management", fmt.Sprintf("127.0.0.1:%d", dnsMgmt),
		"-defaultIPv4", "127.0.0.1", "-defaultIPv6", "")
	dnsOut := &syncBuffer{}
	dnsCmd.Stdout, dnsCmd.Stderr = dnsOut, dnsOut
	if err := dnsCmd.Start(); err != nil {
		t.Fatalf("starting pebble-challtestsrv: %v", err)
	}
	dnsDone := make(chan struct{})
	go func() { dnsCmd.Wait(); close(dnsDone) }()
	t.Cleanup(func() {
		dnsCmd.Process.Kill()
		<-dnsDone
		if t.Failed() {
			t.Logf("pebble-challtestsrv output:\n%s", dnsOut.String())
		}
	})
	waitTCP(t, fmt.Sprintf("127.0.0.1:%d", dnsMgmt), dnsDone, dnsOut)
	waitTCP(t, fmt.Sprintf("127.0.0.1:%d", dns), dnsDone, dnsOut)

	p.cmd = exec.Command(bins["pebble"], "-config", confPath, "-dnsserver", fmt.Sprintf("127.0.0.1:%d", dns))
	p.cmd.Env = append(os.Environ(), "PEBBLE_VA_NOSLEEP=1", "PEBBLE_WFE_NONCEREJECT=0")
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("starting pebble: %v", err)
	}
	go func() { p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		p.Stop()
		if t.Failed() {
			t.Logf("pebble output:\n%s", p.out.String())
		}
	})
	waitTCP(t, fmt.Sprintf("127.0.0.1:%d", listen), p.exited, p.out)
	return p
}

// Stop stops Pebble (its DNS runs on until the test ends): the CA is
// unreachable from then on.
func (p *Pebble) Stop() {
	p.stopOnce.Do(func() {
		p.cmd.Process.Kill()
		<-p.exited
	})
}

// Output is what Pebble logged so far.
func (p *Pebble) Output() string { return p.out.String() }

// Roots returns the roots Pebble's certificates chain to: the test
// trusts them as a browser trusts Let's Encrypt's.
func (p *Pebble) Roots(t testing.TB) *x509.CertPool {
	t.Helper()
	pebbleRoot, err := os.ReadFile(p.Root)
	if err != nil {
		t.Fatal(err)
	}
	mgmtRoots := x509.NewCertPool()
	mgmtRoots.AppendCertsFromPEM(pebbleRoot)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: mgmtRoots}}, Timeout: 5 * time.Second}
	resp, err := client.Get("https://" + p.mgmt + "/roots/0")
	if err != nil {
		t.Fatalf("Pebble's root: %v", err)
	}
	defer resp.Body.Close()
	var pem bytes.Buffer
	pem.ReadFrom(resp.Body)
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem.Bytes()) {
		t.Fatalf("Pebble's /roots/0 is no PEM certificate: %q", pem.String())
	}
	return roots
}

// waitTCP waits until addr accepts, failing the test if the process that
// should listen there exits or ten seconds pass.
func waitTCP(t testing.TB, addr string, exited <-chan struct{}, out *syncBuffer) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return
		}
		select {
		case <-exited:
			t.Fatalf("exited before listening on %s:\n%s", addr, out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("nothing listens on %s after 10s:\n%s", addr, out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// syncBuffer collects a process's output safely while it runs.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
