package main

// End-to-end tests of operations: reload, log rotation, systemd notification.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/hipsterd/hipsterd/internal/testcert"
)

// waitStderr waits until hipsterd's stderr holds substr at least n times.
func (p *proc) waitStderr(t *testing.T, substr string, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for strings.Count(p.stderr.String(), substr) < n {
		if time.Now().After(deadline) {
			t.Fatalf("stderr has not %d × %q:\n%s", n, substr, p.stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// reload rewrites the config, sends SIGHUP and waits for the n-th outcome.
func (p *proc) reload(t *testing.T, path, text, outcome string, n int) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	p.signal(t, syscall.SIGHUP)
	p.waitStderr(t, outcome, n)
}

func TestReloadUnderLoad(t *testing.T) {
	t.Parallel()
	a, b, c := backend(t, "a", nil), backend(t, "b", nil), backend(t, "c", nil)
	front := freePort(t, "tcp", "127.0.0.1")
	conf := func(i int) string {
		backends, idle := "a", "120s"
		if i%2 == 1 {
			backends = "b c"
		}
		if i%4 == 3 {
			idle = "60s" // a server setting: a new http.Server takes over the socket
		}
		return fmt.Sprintf("[global]\nidle-timeout = %s\n[frontend f]\nbind = %s\nbackends = %s\n[backend a]\nconnect = %s\n[backend b]\nconnect = %s\n[backend c]\nconnect = %s\n",
			idle, front, backends, a, b, c)
	}
	path := writeConfig(t, conf(0))
	p := startHipsterd(t, path, front)

	var ok, failed atomic.Int64
	var firstErr atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < 6; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Four workers keep their keep-alive connection across reloads;
			// two open a new connection for every request.
			client := &http.Client{Transport: &http.Transport{DisableKeepAlives: w >= 4}, Timeout: 10 * time.Second}
			deadline := time.Now().Add(60 * time.Second)
			for time.Now().Before(deadline) {
				select {
				case <-stop:
					return
				default:
				}
				resp, err := client.Get("http://" + front + "/")
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 {
						err = fmt.Errorf("status %d", resp.StatusCode)
					}
				}
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				ok.Add(1)
			}
		}()
	}
	for i := 1; i <= 20; i++ {
		before := ok.Load()
		p.reload(t, path, conf(i), "msg=reloaded", i)
		// Let some requests through on each configuration.
		for deadline := time.Now().Add(10 * time.Second); ok.Load() < before+50 && time.Now().Before(deadline); {
			time.Sleep(time.Millisecond)
		}
	}
	close(stop)
	wg.Wait()
	if failed.Load() != 0 {
		t.Errorf("%d of %d requests failed across 20 reloads; first: %v", failed.Load(), failed.Load()+ok.Load(), firstErr.Load())
	}
	// conf(20) routes to a only.
	for i := 0; i < 10; i++ {
		if _, s := body(t, http.DefaultClient, "http://"+front+"/", ""); s != "a " {
			t.Fatalf("after the last reload: %q, want a", s)
		}
	}
	t.Logf("%d requests during 20 reloads", ok.Load())
}

func TestReloadInvalidKeepsRunning(t *testing.T) {
	t.Parallel()
	a, b := backend(t, "a", nil), backend(t, "b", nil)
	front := freePort(t, "tcp", "127.0.0.1")
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	base := fmt.Sprintf("[frontend f]\nbind = %s\nbackends = a\n[backend a]\nconnect = %s\n[backend b]\nconnect = %s\n", front, a, b)
	path := writeConfig(t, base)
	p := startHipsterd(t, path, front)

	// A keep-alive connection opened before a reload serves after it.
	var reused []bool
	client := &http.Client{Transport: &http.Transport{}}
	trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) { reused = append(reused, info.Reused) }}
	keepAlive := func() string {
		t.Helper()
		req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), "GET", "http://"+front+"/", nil)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	keepAlive()
	p.reload(t, path, strings.Replace(base, "backends = a", "backends = b", 1), "msg=reloaded", 1)
	if got := keepAlive(); got != "b " || len(reused) != 2 || !reused[1] {
		t.Errorf("after reload: %q, connection reused: %v; want b on the same connection", got, reused)
	}
	p.reload(t, path, base, "msg=reloaded", 2)

	// A typo: the whole reload is refused and every error logged.
	p.reload(t, path, strings.Replace(base, "backends = a", "backends = b\nbakends = a", 1), "reload failed", 1)
	if !strings.Contains(p.stderr.String(), "bakends: unknown key") {
		t.Errorf("the error is not logged:\n%s", p.stderr.String())
	}
	// A new bind that cannot be bound fails the reload too.
	p.reload(t, path, base+fmt.Sprintf("[frontend g]\nbind = %s\nbackends = b\n", taken.Addr()), "reload failed", 2)
	if _, s := body(t, http.DefaultClient, "http://"+front+"/", ""); s != "a " {
		t.Errorf("after failed reloads: %q, want the old routing to a", s)
	}
	if n := strings.Count(p.stderr.String(), "msg=reloaded"); n != 2 {
		t.Errorf("%d reloads reported as done, want the 2 good ones", n)
	}
}

func TestReloadFrontendsAndTunnels(t *testing.T) {
	t.Parallel()
	a, b := backend(t, "a", nil), backend(t, "b", nil)
	echo := newServer(t, wsEcho)
	one, two := freePort(t, "tcp", "127.0.0.1"), freePort(t, "tcp", "127.0.0.1")
	backends := fmt.Sprintf("[backend a]\nconnect = %s\n[backend b]\nconnect = %s\n[backend echo]\nconnect = %s\n", a, b, echo)
	path := writeConfig(t, fmt.Sprintf("[frontend one]\nbind = %s\nbackends = echo\nhosts = plain\n[host plain]\nbackends = a\n", one)+backends)
	p := startHipsterd(t, path, one)

	ws, _, err := websocket.DefaultDialer.Dial("ws://"+one+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	echoOnce := func(msg string) {
		t.Helper()
		ws.NetConn().SetDeadline(time.Now().Add(10 * time.Second))
		if err := ws.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		if _, got, err := ws.ReadMessage(); err != nil || string(got) != msg {
			t.Fatalf("echo %q: %q, %v", msg, got, err)
		}
	}
	echoOnce("before")

	// Frontend one now routes plain to b and gains a sibling on a new port.
	p.reload(t, path, fmt.Sprintf("[frontend one]\nbind = %s\nbackends = echo\nhosts = plain\n[host plain]\nbackends = b\n[frontend two]\nbind = %s\nbackends = a\n", one, two)+backends, "msg=reloaded", 1)
	echoOnce("after the reload")
	if _, s := body(t, http.DefaultClient, "http://"+one+"/", "plain"); s != "b " {
		t.Errorf("one, Host plain: %q, want b", s)
	}
	if _, s := body(t, http.DefaultClient, "http://"+two+"/", ""); s != "a " {
		t.Errorf("new frontend two: %q, want a", s)
	}

	// Frontend one is removed: it stops accepting, its tunnel lives on.
	p.reload(t, path, fmt.Sprintf("[frontend two]\nbind = %s\nbackends = a\n", two)+backends, "msg=reloaded", 2)
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", one)
		if err != nil {
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("removed frontend still accepts")
		}
		time.Sleep(10 * time.Millisecond)
	}
	echoOnce("after its frontend left")
}

func TestReloadRereadsCertificate(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cert, key := testcert.Files(t, dir, "localhost")
	a := backend(t, "a", nil)
	front := freePort(t, "tcp", "127.0.0.1")
	text := fmt.Sprintf("[frontend s]\nbind = %s\nhttps = true\ncertfile = %s\nkeyfile = %s\nbackends = a\n[backend a]\nconnect = %s\n", front, cert, key, a)
	path := writeConfig(t, text)
	p := startHipsterd(t, path, front)

	serial := func() string {
		t.Helper()
		c, err := tls.Dial("tcp", front, &tls.Config{InsecureSkipVerify: true})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].SerialNumber.String()
	}
	first := serial()
	newCert, _ := testcert.Files(t, dir, "localhost") // same paths, new certificate
	p.reload(t, path, text, "msg=reloaded", 1)
	if got := serial(); got == first {
		t.Error("the certificate was not re-read on reload")
	}
	// A broken certificate fails the reload; the one loaded keeps serving.
	second := serial()
	if err := os.WriteFile(newCert, []byte("not a certificate"), 0o644); err != nil {
		t.Fatal(err)
	}
	p.reload(t, path, text, "reload failed", 1)
	if got := serial(); got != second {
		t.Error("a failed reload changed the certificate")
	}
	testcert.Files(t, dir, "localhost")
	p.reload(t, path, text, "msg=reloaded", 2)
	data, _ := os.ReadFile(newCert)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(data)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "localhost"}}}
	if code, s := body(t, client, "https://"+front+"/", ""); code != 200 || s != "a " {
		t.Errorf("https after reload: %d %q", code, s)
	}
}

func TestLogRotationAndPerFrontendLogs(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	all, own := filepath.Join(dir, "all.log"), filepath.Join(dir, "own.log")
	a := backend(t, "a", nil)
	shared1, shared2, private := freePort(t, "tcp", "127.0.0.1"), freePort(t, "tcp", "127.0.0.1"), freePort(t, "tcp", "127.0.0.1")
	path := writeConfig(t, fmt.Sprintf(`
[global]
accesslog = %s
[frontend s1]
bind = %s
backends = a
[frontend s2]
bind = %s
backends = a
[frontend p]
bind = %s
backends = a
accesslog = %s
[backend a]
connect = %s
`, all, shared1, shared2, private, own, a))
	p := startHipsterd(t, path, private)

	const perPhase = 30
	hit := func() {
		for i := 0; i < perPhase; i++ {
			for _, addr := range []string{shared1, shared2, private} {
				body(t, http.DefaultClient, "http://"+addr+"/", "")
			}
		}
	}
	hit()
	if err := os.Rename(all, all+".1"); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(own, own+".1"); err != nil {
		t.Fatal(err)
	}
	p.signal(t, syscall.SIGUSR1)
	p.waitStderr(t, "reopening access logs", 1)
	hit()
	p.signal(t, syscall.SIGTERM)
	if code := p.wait(t); code != 0 {
		t.Fatalf("exit %d", code)
	}
	count := func(path, prefix string) int {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, l := range strings.Split(strings.TrimSpace(string(data)), "\n") {
			if !strings.HasPrefix(l, prefix) {
				t.Errorf("%s: line %q is not %s", filepath.Base(path), l, prefix)
			}
			n++
		}
		return n
	}
	// Each file saw its own frontends' lines, and the lines before and after
	// the rotation add up to the requests served: none lost, none twice.
	for _, f := range []struct {
		path, prefix string
		want         int
	}{
		{all, "frontend:s", 2 * perPhase},
		{own, "frontend:p ", perPhase},
	} {
		before, after := count(f.path+".1", f.prefix), count(f.path, f.prefix)
		if before+after != 2*f.want || after != f.want {
			t.Errorf("%s: %d lines before rotation and %d after, want %d and %d", filepath.Base(f.path), before, after, f.want, f.want)
		}
	}
}

func TestSystemdNotify(t *testing.T) {
	t.Parallel()
	sockPath := filepath.Join(t.TempDir(), "notify.sock")
	sock, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sockPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer sock.Close()
	a := backend(t, "a", nil)
	front := freePort(t, "tcp", "127.0.0.1")
	text := fmt.Sprintf("[frontend f]\nbind = %s\nbackends = a\n[backend a]\nconnect = %s\n", front, a)
	path := writeConfig(t, text)

	p := launch(t, path, "NOTIFY_SOCKET="+sockPath)

	next := func() string {
		t.Helper()
		buf := make([]byte, 1024)
		sock.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := sock.Read(buf)
		if err != nil {
			t.Fatalf("no notification: %v\n%s", err, p.stderr.String())
		}
		return string(buf[:n])
	}
	status := regexp.QuoteMeta("serving 1 frontend: f on " + front)
	if got := next(); !regexp.MustCompile(`^READY=1\nSTATUS=` + status + `$`).MatchString(got) {
		t.Fatalf("first notification %q, want READY=1 and STATUS=serving 1 frontend: f on %s", got, front)
	}
	// READY comes after binding: the frontend accepts now.
	if c, err := net.Dial("tcp", front); err != nil {
		t.Errorf("READY=1 before the frontend was bound: %v", err)
	} else {
		c.Close()
	}
	p.signal(t, syscall.SIGHUP)
	if got := next(); !strings.HasPrefix(got, "RELOADING=1\nMONOTONIC_USEC=") {
		t.Errorf("on SIGHUP %q, want RELOADING=1 with MONOTONIC_USEC", got)
	}
	stamp := `\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \S+`
	if got := next(); !regexp.MustCompile(`^READY=1\nSTATUS=reloaded at ` + stamp + `; ` + status + `$`).MatchString(got) {
		t.Errorf("after reload %q, want READY=1 and STATUS=reloaded at TIME; serving …", got)
	}
	// A reload that fails says so, with its first error.
	if err := os.WriteFile(path, []byte(text+"bakends = a\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	p.signal(t, syscall.SIGHUP)
	next() // RELOADING=1
	if got := next(); !regexp.MustCompile(`^READY=1\nSTATUS=reload failed at ` + stamp + `: .*\[backend a\] bakends: unknown key.*; serving the previous configuration$`).MatchString(got) {
		t.Errorf("after a failed reload %q, want READY=1 and STATUS=reload failed at TIME: ERROR; serving the previous configuration", got)
	}
	p.signal(t, syscall.SIGTERM)
	if got := next(); !strings.HasPrefix(got, "STOPPING=1\nSTATUS=shutting down") {
		t.Errorf("on SIGTERM %q, want STOPPING=1 and STATUS=shutting down…", got)
	}
	if code := p.wait(t); code != 0 {
		t.Errorf("exit %d", code)
	}
}
