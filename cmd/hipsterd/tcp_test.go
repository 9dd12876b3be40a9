package main

// End-to-end tests of tcp frontends and of the PROXY protocol.

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"

	"github.com/hipsterd/hipsterd/internal/testutil"
)

// lineEcho is a raw TCP backend: it greets each connection with its name
// and a newline, then echoes every line until the client half-closes, and
// then closes. Each connection's PROXY header, when sendProxy is set, is
// read first and sent on headers.
func lineEcho(t *testing.T, name string, headers chan<- *proxyproto.Header) string {
	t.Helper()
	return testutil.Serve(testutil.Listen(t), func(c net.Conn) { serveLineEcho(c, name, headers) })
}

func serveLineEcho(c net.Conn, name string, headers chan<- *proxyproto.Header) {
	defer c.Close()
	r := bufio.NewReader(c)
	if headers != nil {
		h, err := proxyproto.Read(r)
		if err != nil {
			return
		}
		headers <- h
	}
	io.WriteString(c, name+"\n")
	for {
		line, err := r.ReadBytes('\n')
		if len(line) > 0 {
			if _, err := c.Write(line); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// dialLine connects to addr and returns the connection and its first line.
func dialLine(t *testing.T, addr string) (net.Conn, *bufio.Reader, string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("%s: first line: %v", addr, err)
	}
	return c, r, strings.TrimSpace(line)
}

// echoLine sends a line on c and checks it comes back.
func echoLine(t *testing.T, c net.Conn, r *bufio.Reader, line string) {
	t.Helper()
	if _, err := io.WriteString(c, line+"\n"); err != nil {
		t.Fatal(err)
	}
	got, err := r.ReadString('\n')
	if err != nil || got != line+"\n" {
		t.Fatalf("echo of %q: %q, %v", line, got, err)
	}
}

// waitFile waits until the file at path holds n lines and returns them.
func waitLines(t *testing.T, path string, n int) []string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		data, _ := os.ReadFile(path)
		lines := strings.Split(strings.TrimSpace(string(data)), "\n")
		if len(data) > 0 && len(lines) >= n {
			return lines
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s has not %d lines:\n%s", path, n, data)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestTCPFrontend(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	logPath, noneLog := filepath.Join(dir, "access.log"), filepath.Join(dir, "none.log")
	a, b, c := lineEcho(t, "a", nil), lineEcho(t, "b", nil), lineEcho(t, "c", nil)
	down, refused := closedPort(t), closedPort(t)
	front, retry, skip, none := freePort(t, "tcp", "127.0.0.1"), freePort(t, "tcp", "127.0.0.1"), freePort(t, "tcp", "127.0.0.1"), freePort(t, "tcp", "127.0.0.1")
	cfg := writeConfig(t, fmt.Sprintf(`
[frontend tcp]
bind = %s
mode = tcp
backends = a b c
accesslog = %s

[frontend retry]
bind = %s
mode = tcp
backends = refused a

[frontend skip]
bind = %s
mode = tcp
backends = down b

[frontend none]
bind = %s
mode = tcp
backends = refused
accesslog = %s

[backend a]
connect = %s
[backend b]
connect = %s
[backend c]
connect = %s
[backend refused]
connect = %s
health-fall = 1000
[backend down]
connect = %s
health-check = tcp
health-interval = 50ms
health-fall = 1
`, front, logPath, retry, skip, none, noneLog, a, b, c, refused, down))
	p := startHipsterd(t, cfg, front)

	// The access log's line of each connection, by the client's address.
	type line struct {
		backend string
		in, out int
	}
	want := map[string]line{}
	// startHipsterd's probe took a turn, maybe after the first connection
	// below: wait for its line.
	waitLines(t, logPath, 1)
	var order []string
	for i := 0; i < 6; i++ {
		conn, r, name := dialLine(t, front)
		echoLine(t, conn, r, "hello "+name)
		conn.Close()
		order = append(order, name)
		want[conn.LocalAddr().String()] = line{name, len("hello a\n"), len("a\nhello a\n")}
	}
	if got := strings.Join(order, " "); got != "b c a b c a" {
		t.Errorf("round robin: %s", got)
	}

	// 256 KiB of lines, written while they are read back; then a
	// half-close, which the backend answers by closing.
	conn, r, name := dialLine(t, front)
	var sent bytes.Buffer
	for i := 0; sent.Len() < 256<<10; i++ {
		fmt.Fprintf(&sent, "%07d %s\n", i, strings.Repeat("x", 55))
	}
	sent.Truncate(256 << 10)
	sent.Bytes()[sent.Len()-1] = '\n'
	werr := make(chan error, 1)
	go func() {
		_, err := conn.Write(sent.Bytes())
		if err == nil {
			err = conn.(*net.TCPConn).CloseWrite()
		}
		werr <- err
	}()
	got, err := io.ReadAll(r)
	if err != nil || !bytes.Equal(got, sent.Bytes()) {
		t.Fatalf("256 KiB echo: %d bytes, equal %v, err %v", len(got), bytes.Equal(got, sent.Bytes()), err)
	}
	if err := <-werr; err != nil {
		t.Fatal(err)
	}

	// refused is tried first each time, and each time the connect is
	// retried on a.
	for i := 0; i < 3; i++ {
		if _, _, name := dialLine(t, retry); name != "a" {
			t.Errorf("retry frontend, connection %d: %s, want a", i, name)
		}
	}
	p.waitStderr(t, `msg="backend is DOWN: tcp check`, 1)
	for i := 0; i < 3; i++ {
		if _, _, name := dialLine(t, skip); name != "b" {
			t.Errorf("skip frontend, connection %d: %s, want b", i, name)
		}
	}

	want[conn.LocalAddr().String()] = line{name, 256 << 10, 2 + 256<<10}

	// No backend to be reached: closed at once, logged with "-".
	nc, err := net.Dial("tcp", none)
	if err != nil {
		t.Fatal(err)
	}
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	if got, err := io.ReadAll(nc); len(got) != 0 || err != nil {
		t.Errorf("no backend: read %q, %v", got, err)
	}
	noneRe := regexp.MustCompile(`^frontend:none \S+ \S+ ` + regexp.QuoteMeta(nc.LocalAddr().String()) + ` - "TCP" 0 0 \d+\.\d{3}s$`)
	nc.Close()
	if l := waitLines(t, noneLog, 1); len(l) != 1 || !noneRe.MatchString(l[0]) {
		t.Errorf("access log of a connection that reached no backend: %q", l)
	}

	re := regexp.MustCompile(`^frontend:tcp \d{4}/\d\d/\d\d \d\d:\d\d:\d\d\.\d{6} (127\.0\.0\.1:\d+) (a|b|c|-) "TCP" (\d+) (\d+) \d+\.\d{3}s$`)
	for _, l := range waitLines(t, logPath, 8) { // with the probe's
		m := re.FindStringSubmatch(l)
		if m == nil {
			t.Errorf("access log line %q", l)
			continue
		}
		w, ok := want[m[1]]
		if !ok {
			continue
		}
		delete(want, m[1])
		if got := fmt.Sprint(line{m[2], atoi(t, m[3]), atoi(t, m[4])}); got != fmt.Sprint(w) {
			t.Errorf("access log line %q: %s, want %v", l, got, w)
		}
	}
	if len(want) > 0 {
		t.Errorf("no access log line for %v", want)
	}
}

func atoi(t *testing.T, s string) int {
	t.Helper()
	var n int
	if _, err := fmt.Sscan(s, &n); err != nil {
		t.Fatal(err)
	}
	return n
}
