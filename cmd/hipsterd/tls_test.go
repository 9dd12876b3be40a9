package main

// End-to-end tests of TLS: SNI, versions, HTTP/2, redirects, TLS backends.

import (
	"bufio"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/hipsterd/hipsterd/internal/testcert"
)

func TestSNI(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	def, defKey := testcert.Make(t, filepath.Join(dir, "def"), testcert.Options{Names: []string{"default.test"}})
	one, oneKey := testcert.Make(t, filepath.Join(dir, "one"), testcert.Options{Names: []string{"one.test"}})
	two, twoKey := testcert.Make(t, filepath.Join(dir, "two"), testcert.Options{Names: []string{"two.test"}})
	wild, wildKey := testcert.Make(t, filepath.Join(dir, "wild"), testcert.Options{Names: []string{"*.wild.test"}})
	a := backend(t, "a", nil)
	front := freePort(t, "tcp", "127.0.0.1")
	cfg := writeConfig(t, fmt.Sprintf(`
[frontend s]
bind = %s
https = true
certfile = %s
keyfile = %s
hosts = one.test two.test *.wild.test
backends = a
[host one.test]
backends = a
certfile = %s
keyfile = %s
[host two.test]
backends = a
certfile = %s
keyfile = %s
[host *.wild.test]
backends = a
certfile = %s
keyfile = %s
[backend a]
connect = %s
`, front, def, defKey, one, oneKey, two, twoKey, wild, wildKey, a))
	startHipsterd(t, cfg, front)
	for sni, want := range map[string]string{
		"one.test":       "one.test",
		"TWO.test":       "two.test",
		"x.wild.test":    "*.wild.test",
		"a.b.wild.test":  "default.test", // a wildcard matches one label
		"unknown.test":   "default.test",
		"wild.test":      "default.test",
		"www.one.test":   "default.test",
		"one.test.other": "default.test",
	} {
		c, err := tls.Dial("tcp", front, &tls.Config{ServerName: sni, InsecureSkipVerify: true})
		if err != nil {
			t.Fatalf("SNI %s: %v", sni, err)
		}
		got := c.ConnectionState().PeerCertificates[0].Subject.CommonName
		c.Close()
		if got != want {
			t.Errorf("SNI %s: served %s, want %s", sni, got, want)
		}
	}
}

func TestTLSVersionsAndHTTP2(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cert, key := testcert.Files(t, dir, "localhost")
	events := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprintf(w, "data: %s\n\n", r.Proto)
		w.(http.Flusher).Flush()
		<-r.Context().Done() // hold the response open
	})
	h2, h1, strict := freePort(t, "tcp", "127.0.0.1"), freePort(t, "tcp", "127.0.0.1"), freePort(t, "tcp", "127.0.0.1")
	tlsKeys := fmt.Sprintf("https = true\ncertfile = %s\nkeyfile = %s\nbackends = e\n", cert, key)
	cfg := writeConfig(t, fmt.Sprintf("[frontend h2]\nbind = %s\n%s[frontend h1]\nbind = %s\n%shttp2 = false\n[frontend strict]\nbind = %s\n%stls-min-version = 1.3\n[backend e]\nconnect = %s\n",
		h2, tlsKeys, h1, tlsKeys, strict, tlsKeys, events))
	startHipsterd(t, cfg, strict)
	roots := testcert.Pool(t, cert)

	// A TLS 1.1 client is refused everywhere; a TLS 1.2 one where 1.3 is the minimum.
	if c, err := tls.Dial("tcp", h2, &tls.Config{RootCAs: roots, ServerName: "localhost", MaxVersion: tls.VersionTLS11, MinVersion: tls.VersionTLS10}); err == nil {
		c.Close()
		t.Error("a TLS 1.1 client was served")
	}
	if c, err := tls.Dial("tcp", strict, &tls.Config{RootCAs: roots, ServerName: "localhost", MaxVersion: tls.VersionTLS12}); err == nil {
		c.Close()
		t.Error("a TLS 1.2 client was served with tls-min-version = 1.3")
	}
	c, err := tls.Dial("tcp", h2, &tls.Config{RootCAs: roots, ServerName: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	if v := c.ConnectionState().Version; v != tls.VersionTLS13 {
		t.Errorf("negotiated %x, want TLS 1.3", v)
	}
	c.Close()

	for _, tc := range []struct{ addr, proto string }{{h2, "HTTP/2.0"}, {h1, "HTTP/1.1"}} {
		client := &http.Client{Transport: &http.Transport{
			TLSClientConfig:   &tls.Config{RootCAs: roots, ServerName: "localhost"},
			ForceAttemptHTTP2: true,
		}}
		resp, err := client.Get("https://" + tc.addr + "/events")
		if err != nil {
			t.Fatal(err)
		}
		if resp.Proto != tc.proto {
			t.Errorf("%s: client spoke %s, want %s", tc.addr, resp.Proto, tc.proto)
		}
		// The event arrives while the backend holds the response open: the
		// stream is flushed, over HTTP/2 too. The backend is spoken to in
		// HTTP/1.1.
		line, err := bufio.NewReader(resp.Body).ReadString('\n')
		if err != nil || line != "data: HTTP/1.1\n" {
			t.Errorf("%s: first line %q, %v", tc.addr, line, err)
		}
		resp.Body.Close()
		client.CloseIdleConnections()
	}
}

func TestRedirectHTTPS(t *testing.T) {
	t.Parallel()
	plain, custom := freePort(t, "tcp", "127.0.0.1"), freePort(t, "tcp", "127.0.0.1")
	cfg := writeConfig(t, fmt.Sprintf("[frontend r]\nbind = %s\nredirect-https = true\n[frontend c]\nbind = %s\nredirect-https = true\nredirect-https-port = 8443\n", plain, custom))
	startHipsterd(t, cfg, custom)
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	for _, tc := range []struct{ addr, host, want string }{
		{plain, "example.com:8080", "https://example.com/a/b?c=d"},
		{plain, "example.com", "https://example.com/a/b?c=d"},
		{custom, "example.com", "https://example.com:8443/a/b?c=d"},
	} {
		req, _ := http.NewRequest("POST", "http://"+tc.addr+"/a/b?c=d", strings.NewReader("x"))
		req.Host = tc.host
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusPermanentRedirect || resp.Header.Get("Location") != tc.want {
			t.Errorf("%s Host %s: %d %q, want 308 %q", tc.addr, tc.host, resp.StatusCode, resp.Header.Get("Location"), tc.want)
		}
	}
}

// tlsBackend is an https backend with its own certificate, echoing
// WebSocket messages on /ws.
func tlsBackend(t *testing.T) (addr, certFile string) {
	t.Helper()
	dir := t.TempDir()
	certFile, keyFile := testcert.Files(t, dir, "backend.test")
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/ws" {
			wsEcho(w, r)
			return
		}
		fmt.Fprintf(w, "tls backend %v", r.TLS != nil)
	}))
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String(), certFile
}

func TestTLSBackends(t *testing.T) {
	t.Parallel()
	addr, caFile := tlsBackend(t)
	dir := t.TempDir()
	cert, key := testcert.Files(t, dir, "localhost")
	untrusted, trusted, skip, wss := freePort(t, "tcp", "127.0.0.1"), freePort(t, "tcp", "127.0.0.1"), freePort(t, "tcp", "127.0.0.1"), freePort(t, "tcp", "127.0.0.1")
	cfg := writeConfig(t, fmt.Sprintf(`
[frontend untrusted]
bind = %s
backends = untrusted
[frontend trusted]
bind = %s
backends = trusted
[frontend skip]
bind = %s
backends = skip
[frontend wss]
bind = %s
https = true
certfile = %s
keyfile = %s
backends = trusted
[backend untrusted]
connect = https://%s
[backend trusted]
connect = https://%s
ca-file = %s
tls-server-name = backend.test
[backend skip]
connect = https://%s
tls-skip-verify = true
`, untrusted, trusted, skip, wss, cert, key, addr, addr, caFile, addr))
	p := startHipsterd(t, cfg, wss)
	if !strings.Contains(p.stderr.String(), "tls-skip-verify: the backend's certificate is not verified") {
		t.Errorf("no warning for tls-skip-verify:\n%s", p.stderr.String())
	}
	for _, tc := range []struct {
		addr   string
		status int
	}{{untrusted, 502}, {trusted, 200}, {skip, 200}} {
		code, body := body(t, http.DefaultClient, "http://"+tc.addr+"/", "")
		if code != tc.status || (code == 200 && body != "tls backend true") {
			t.Errorf("%s: %d %q, want %d", tc.addr, code, body, tc.status)
		}
	}

	// wss end to end: https frontend, TLS backend.
	d := websocket.Dialer{TLSClientConfig: &tls.Config{RootCAs: testcert.Pool(t, cert), ServerName: "localhost"}}
	c, _, err := d.Dial("wss://"+wss+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.NetConn().SetDeadline(time.Now().Add(10 * time.Second))
	c.WriteMessage(websocket.BinaryMessage, []byte("tls both ways"))
	if _, msg, err := c.ReadMessage(); err != nil || string(msg) != "tls both ways" {
		t.Errorf("wss echo %q %v", msg, err)
	}
}

func TestExpiredCertificate(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	old, oldKey := testcert.Make(t, filepath.Join(dir, "old"), testcert.Options{Names: []string{"old.test"}, NotAfter: time.Now().Add(-time.Minute)})
	soon, soonKey := testcert.Make(t, filepath.Join(dir, "soon"), testcert.Options{Names: []string{"soon.test"}, NotAfter: time.Now().Add(5 * 24 * time.Hour)})
	tmpl := "[frontend s]\nbind = 127.0.0.1:1\nhttps = true\ncertfile = %s\nkeyfile = %s\nbackends = a\n[backend a]\nconnect = 127.0.0.1:2\n"
	code, _, stderr := runBinary(t, "-t", "-config", writeConfig(t, fmt.Sprintf(tmpl, old, oldKey)))
	if code != 1 || !strings.Contains(stderr, "certfile: "+old+" expired on") {
		t.Errorf("expired: exit %d, %q", code, stderr)
	}
	code, stdout, stderr := runBinary(t, "-t", "-config", writeConfig(t, fmt.Sprintf(tmpl, soon, soonKey)))
	if code != 0 || stdout != "configuration OK\n" || !strings.Contains(stderr, "warning: ") || !strings.Contains(stderr, soon+" expires on") {
		t.Errorf("expiring soon: exit %d, %q, %q", code, stdout, stderr)
	}
}

// TestScanner runs testssl.sh against an https frontend when it is
// installed: no protocol below TLS 1.2, no weak cipher, no vulnerability
// rated high or critical.
func TestScanner(t *testing.T) {
	testssl, err := exec.LookPath("testssl")
	if err != nil {
		if testssl, err = exec.LookPath("testssl.sh"); err != nil {
			t.Skip("testssl.sh not installed")
		}
	}
	t.Parallel()
	cert, key := testcert.Files(t, t.TempDir(), "localhost")
	front := freePort(t, "tcp", "127.0.0.1")
	cfg := writeConfig(t, fmt.Sprintf("[frontend s]\nbind = %s\nhttps = true\ncertfile = %s\nkeyfile = %s\nbackends = a\n[backend a]\nconnect = %s\n", front, cert, key, backend(t, "a", nil)))
	startHipsterd(t, cfg, front)
	report := filepath.Join(t.TempDir(), "report.json")
	cmd := exec.Command(testssl, "--quiet", "--warnings", "off", "--protocols", "--std", "--vulnerable", "--jsonfile", report, front)
	out, _ := cmd.CombinedOutput()
	raw, err := os.ReadFile(report)
	if err != nil {
		t.Fatalf("no report: %v\n%s", err, out)
	}
	var findings []struct{ ID, Severity, Finding string }
	if err := json.Unmarshal(raw, &findings); err != nil {
		t.Fatalf("report: %v\n%s", err, raw)
	}
	notOffered := map[string]bool{"SSLv2": true, "SSLv3": true, "TLS1": true, "TLS1_1": true,
		"cipherlist_NULL": true, "cipherlist_aNULL": true, "cipherlist_EXPORT": true, "cipherlist_LOW": true, "cipherlist_3DES_IDEA": true}
	seen := 0
	for _, f := range findings {
		if f.Severity == "HIGH" || f.Severity == "CRITICAL" {
			t.Errorf("testssl.sh: %s %s: %s", f.Severity, f.ID, f.Finding)
		}
		if notOffered[f.ID] {
			seen++
			if !strings.Contains(f.Finding, "not offered") {
				t.Errorf("testssl.sh: %s: %s", f.ID, f.Finding)
			}
		}
	}
	if seen != len(notOffered) {
		t.Errorf("the report covers %d of the %d protocol and cipher checks", seen, len(notOffered))
	}
}
