package main

// End-to-end tests: they build the real binary once and run it against real
// loopback backends, as a user would.

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/hipsterd/hipsterd"
	"github.com/hipsterd/hipsterd/internal/testcert"
	"github.com/hipsterd/hipsterd/internal/testutil"
)

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "hipsterd-e2e")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "hipsterd")
	build := exec.Command("go", "build", "-o", binary, ".")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building hipsterd:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// givenPorts are the ports freePort handed out: the kernel may give a port
// just closed to the next bind on port 0, and two frontends of one test
// must not get the same one.
var givenPorts sync.Map

// freePort returns a loopback address that was free a moment ago, and that
// no other call in this test binary returned.
func freePort(t *testing.T, network, host string) string {
	t.Helper()
	for {
		ln, err := net.Listen(network, net.JoinHostPort(host, "0"))
		if err != nil {
			t.Skipf("cannot listen on %s: %v", host, err)
		}
		addr := ln.Addr().String()
		ln.Close()
		if _, taken := givenPorts.LoadOrStore(network+" "+addr, true); !taken {
			return addr
		}
	}
}

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "hipster.ini")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// run runs the binary to completion and returns its exit code and output.
func runBinary(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	cmd := exec.Command(binary, args...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), out.String(), errOut.String()
	}
	if err != nil {
		t.Fatal(err)
	}
	return 0, out.String(), errOut.String()
}

type proc struct {
	cmd    *exec.Cmd
	stderr *testutil.Buffer
	exited chan struct{}
	code   int
}

// newServer starts a backend with handler h and returns its address.
func newServer(t *testing.T, h http.HandlerFunc) string {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

// launch starts the binary on config, with env added to its environment.
func launch(t *testing.T, config string, env ...string) *proc {
	t.Helper()
	return launchCmd(t, exec.Command(binary, "-config", config), env...)
}

// launchCmd starts cmd, which runs the binary, with env added to its
// environment.
func launchCmd(t *testing.T, cmd *exec.Cmd, env ...string) *proc {
	t.Helper()
	p := &proc{cmd: cmd, stderr: &testutil.Buffer{}, exited: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stderr = p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.cmd.Wait()
		p.code = p.cmd.ProcessState.ExitCode()
		close(p.exited)
	}()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.exited
		if t.Failed() {
			t.Logf("hipsterd stderr:\n%s", p.stderr.String())
		}
	})
	return p
}

// wsEcho is a WebSocket backend's handler: it echoes every message.
func wsEcho(w http.ResponseWriter, r *http.Request) {
	c, err := (&websocket.Upgrader{}).Upgrade(w, r, nil)
	if err != nil {
		return
	}
	defer c.Close()
	for {
		typ, msg, err := c.ReadMessage()
		if err != nil || c.WriteMessage(typ, msg) != nil {
			return
		}
	}
}

// startHipsterd starts the binary on config and waits until addr accepts.
func startHipsterd(t *testing.T, config, addr string) *proc {
	t.Helper()
	return waitListening(t, launch(t, config), addr)
}

// waitListening waits until addr accepts, and returns p.
func waitListening(t *testing.T, p *proc, addr string) *proc {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			return p
		}
		select {
		case <-p.exited:
			t.Fatalf("hipsterd exited with %d:\n%s", p.code, p.stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("hipsterd did not listen on %s:\n%s", addr, p.stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (p *proc) signal(t *testing.T, sig os.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
}

func (p *proc) wait(t *testing.T) int {
	t.Helper()
	select {
	case <-p.exited:
		return p.code
	case <-time.After(20 * time.Second):
		t.Fatal("hipsterd did not exit")
		return -1
	}
}

// backend answers with its name and the X-Forwarded-For it got. /slow takes
// two seconds, after a send on slowStarted if that is not nil.
func backend(t *testing.T, name string, slowStarted chan<- struct{}) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			if slowStarted != nil {
				slowStarted <- struct{}{}
			}
			time.Sleep(2 * time.Second)
		}
		fmt.Fprintf(w, "%s %s", name, r.Header.Get("X-Forwarded-For"))
	}))
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

func body(t *testing.T, client *http.Client, url, host string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	req.Host = host
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestCommandLine(t *testing.T) {
	t.Parallel()
	good := writeConfig(t, "[frontend f]\nbind = 127.0.0.1:1\nbackends = b\n[backend b]\nconnect = 127.0.0.1:2\n")
	bad := writeConfig(t, "[frontend f]\nbakends = b\n[backend b]\nconnect-timeout = x\n")

	code, _, stderr := runBinary(t)
	if code != 2 || !strings.Contains(stderr, "usage: hipsterd -config FILE") {
		t.Errorf("no arguments: exit %d, stderr %q", code, stderr)
	}
	// go build records no commit where GOFLAGS has -buildvcs=false.
	code, stdout, _ := runBinary(t, "-version")
	if want := regexp.MustCompile(`^hipsterd ` + regexp.QuoteMeta(hipsterd.Version) + ` \((unknown|[0-9a-f]{12}(-dirty)?)\)\n$`); code != 0 || !want.MatchString(stdout) {
		t.Errorf("-version: exit %d, %q; want %s", code, stdout, want)
	}
	for _, args := range [][]string{{"-t", "-config", good}, {"-check", "--config", good}, {"--config=" + good, "-t"}} {
		code, stdout, stderr := runBinary(t, args...)
		if code != 0 || stdout != "configuration OK\n" {
			t.Errorf("%v: exit %d, stdout %q, stderr %q", args, code, stdout, stderr)
		}
	}
	code, _, stderr = runBinary(t, "-t", "-config", bad)
	if code != 1 {
		t.Errorf("-t on a bad config: exit %d", code)
	}
	for _, want := range []string{
		bad + ":1: [frontend f] bind: missing",
		bad + `:2: [frontend f] bakends: unknown key (did you mean "backends"?)`,
		bad + ":3: [backend b] connect: missing",
		bad + `:4: [backend b] connect-timeout: "x" is not a duration`,
	} {
		if !strings.Contains(stderr, want) {
			t.Errorf("-t stderr lacks %q:\n%s", want, stderr)
		}
	}
}

// -t finds what start would: an access log that cannot be written. It
// creates no file.
func TestCheckAccessLogs(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	noDir, underFile, fine := filepath.Join(dir, "none", "access.log"), filepath.Join(file, "access.log"), filepath.Join(dir, "access.log")
	conf := func(global, own string) string {
		return writeConfig(t, fmt.Sprintf("[global]\naccesslog = %s\n[frontend f]\nbind = 127.0.0.1:1\nbackends = b\n[frontend g]\nbind = 127.0.0.1:2\nbackends = b\naccesslog = %s\n[backend b]\nconnect = 127.0.0.1:3\n", global, own))
	}
	bad := conf(noDir, underFile)
	code, stdout, stderr := runBinary(t, "-t", "-config", bad)
	if code != 1 || stdout != "" {
		t.Errorf("-t: exit %d, stdout %q", code, stdout)
	}
	for _, want := range []string{
		bad + ":2: [global] accesslog: cannot write " + noDir + ": directory " + filepath.Dir(noDir) + ": no such file or directory",
		bad + ":9: [frontend g] accesslog: cannot write " + underFile + ": not a directory",
	} {
		if !strings.Contains(stderr, want) {
			t.Errorf("-t stderr lacks %q:\n%s", want, stderr)
		}
	}
	good := conf(fine, fine)
	if code, stdout, stderr := runBinary(t, "-t", "-config", good); code != 0 || stdout != "configuration OK\n" {
		t.Errorf("-t with a writable access log: exit %d, %q, %q", code, stdout, stderr)
	}
	for _, path := range []string{noDir, underFile, fine} {
		if _, err := os.Stat(path); err == nil {
			t.Errorf("-t created %s", path)
		}
	}
}

// bind = *:PORT, HAProxy's way to write the wildcard, listens on every address.
func TestStarBind(t *testing.T) {
	t.Parallel()
	// Free on every address, as the wildcard needs.
	addr := "127.0.0.1:" + port(freePort(t, "tcp", ""))
	cfg := writeConfig(t, fmt.Sprintf("[frontend f]\nbind = *:%s\nbackends = b\n[backend b]\nconnect = %s\n", port(addr), backend(t, "b", nil)))
	if code, stdout, stderr := runBinary(t, "-t", "-config", cfg); code != 0 {
		t.Fatalf("-t: exit %d, %q, %q", code, stdout, stderr)
	}
	startHipsterd(t, cfg, addr)
	if code, s := body(t, http.DefaultClient, "http://"+addr+"/", ""); code != 200 || !strings.HasPrefix(s, "b ") {
		t.Errorf("got %d %q", code, s)
	}
}

func TestBadConfigBindsNothing(t *testing.T) {
	t.Parallel()
	addr := freePort(t, "tcp", "127.0.0.1")
	cfg := writeConfig(t, fmt.Sprintf("[frontend ok]\nbind = %s\nbackends = b\n[frontend broken]\nbind = 127.0.0.1:1\nbackends = nope\n[backend b]\nconnect = 127.0.0.1:2\n", addr))
	code, _, stderr := runBinary(t, "-config", cfg)
	if code != 1 || !strings.Contains(stderr, `[frontend broken] backends: unknown backend "nope"`) {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	if c, err := net.Dial("tcp", addr); err == nil {
		c.Close()
		t.Errorf("%s accepted connections from a refused config", addr)
	}
}

func TestBindFailure(t *testing.T) {
	t.Parallel()
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	free := freePort(t, "tcp", "127.0.0.1")
	cfg := writeConfig(t, fmt.Sprintf("[frontend a]\nbind = %s\nbackends = b\n[frontend z]\nbind = %s\nbackends = b\n[backend b]\nconnect = 127.0.0.1:2\n", free, taken.Addr()))
	code, _, stderr := runBinary(t, "-config", cfg)
	if code != 1 || !strings.Contains(stderr, taken.Addr().String()) || !strings.Contains(stderr, "frontend z") {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
}

func TestProxyEndToEnd(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cert, key := testcert.Files(t, dir, "localhost")
	logPath := filepath.Join(dir, "access.log")
	slowStarted := make(chan struct{}, 1)
	a, b, h := backend(t, "a", slowStarted), backend(t, "b", slowStarted), backend(t, "h", nil)
	plain, secure := freePort(t, "tcp", "127.0.0.1"), freePort(t, "tcp", "127.0.0.1")

	echo := newServer(t, wsEcho)

	cfg := writeConfig(t, fmt.Sprintf(`
[global]
accesslog = %s

[frontend web]
bind = %s
backends = a b
hosts = localhost:%s
add-x-forwarded-for = true

[frontend secure]
bind = %s
https = true
certfile = %s
keyfile = %s
hosts = ws.example
backends = a

[host localhost:%s]
backends = h

[host ws.example]
backends = echo

[backend a]
connect = %s
[backend b]
connect = %s
[backend h]
connect = %s
[backend echo]
connect = %s
`, logPath, plain, port(plain), secure, cert, key, port(plain), a, b, h, echo))
	p := startHipsterd(t, cfg, plain)

	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: testcert.Pool(t, cert), ServerName: "localhost"}}}
	var got []string
	for i := 0; i < 4; i++ {
		_, s := body(t, client, "http://"+plain+"/", "")
		got = append(got, s)
	}
	if want := []string{"a 127.0.0.1", "b 127.0.0.1", "a 127.0.0.1", "b 127.0.0.1"}; strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("round robin: %q, want %q", got, want)
	}
	if _, s := body(t, client, "http://"+plain+"/", "localhost:"+port(plain)); s != "h 127.0.0.1" {
		t.Errorf("host route: %q", s)
	}
	if code, s := body(t, client, "https://"+secure+"/", "anything"); code != 200 || s != "a " {
		t.Errorf("https: %d %q", code, s)
	}

	d := websocket.Dialer{TLSClientConfig: &tls.Config{RootCAs: testcert.Pool(t, cert), ServerName: "localhost"}}
	hdr := http.Header{"Host": {"ws.example"}}
	ws, _, err := d.Dial("wss://"+secure+"/chat", hdr)
	if err != nil {
		t.Fatal(err)
	}
	ws.WriteMessage(websocket.TextMessage, []byte("over wss"))
	ws.NetConn().SetDeadline(time.Now().Add(10 * time.Second))
	if _, msg, err := ws.ReadMessage(); err != nil || string(msg) != "over wss" {
		t.Errorf("wss echo %q %v", msg, err)
	}
	ws.Close()

	// SIGTERM during a slow request: it completes, and so does the process.
	slow := make(chan string)
	go func() {
		resp, err := http.Get("http://" + plain + "/slow")
		if err != nil {
			slow <- err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		slow <- fmt.Sprint(resp.StatusCode, " ", string(b))
	}()
	select {
	case <-slowStarted:
	case <-time.After(10 * time.Second):
		t.Fatal("the slow request did not reach a backend")
	}
	p.signal(t, syscall.SIGTERM)
	// New connections are refused at once, while the slow request runs on.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		c, err := net.Dial("tcp", plain)
		if err != nil {
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("still accepting after SIGTERM")
		}
	}
	select {
	case r := <-slow:
		t.Fatalf("the slow request ended before the listener closed: %s", r)
	default:
	}
	if r := <-slow; !strings.HasPrefix(r, "200 ") {
		t.Errorf("slow request during shutdown: %s", r)
	}
	if code := p.wait(t); code != 0 {
		t.Errorf("exit code %d after SIGTERM", code)
	}
	if c, err := net.Dial("tcp", plain); err == nil {
		c.Close()
		t.Error("still accepting after exit")
	}

	data, _ := os.ReadFile(logPath)
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	re := regexp.MustCompile(`^frontend:(web|secure) \d{4}/\d\d/\d\d \d\d:\d\d:\d\d\.\d{6} 127\.0\.0\.1:\d+ \S+ "GET /\S* HTTP/1\.1" (200|101) \d+$`)
	n101 := 0
	for _, l := range lines {
		if !re.MatchString(l) {
			t.Errorf("access log line %q", l)
		}
		if strings.Contains(l, " 101 ") {
			n101++
		}
	}
	if len(lines) != 8 || n101 != 1 {
		t.Errorf("access log has %d lines (%d of 101), want 8 (1):\n%s", len(lines), n101, data)
	}
}

func port(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}

func TestIPv6(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "v6 "+r.Header.Get("X-Forwarded-For"))
	}))
	srv.Listener.Close()
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	front := freePort(t, "tcp6", "::1")
	cfg := writeConfig(t, fmt.Sprintf("[frontend v6]\nbind = %s\nbackends = b\nadd-x-forwarded-for = true\n[backend b]\nconnect = %s\n", front, ln.Addr()))
	startHipsterd(t, cfg, front)
	if code, s := body(t, http.DefaultClient, "http://"+front+"/", ""); code != 200 || s != "v6 ::1" {
		t.Errorf("got %d %q", code, s)
	}
}
