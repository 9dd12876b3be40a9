package main

// End-to-end tests of what hostile peers tried at the edge (issue 17):
// PROXY headers that forge log lines or arrive in pieces, tcp lines in
// every log format, half-closed and reset tcp streams, WebSocket tunnels
// after a PROXY header, names that are not UTF-8.

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// v2Header builds a PROXY v2 header of cmd and fam with body after its
// fixed part, whatever the body holds.
func v2Header(cmd, fam byte, body []byte) []byte {
	b := append([]byte("\r\n\r\n\x00\r\nQUIT\n"), cmd, fam, byte(len(body)>>8), byte(len(body)))
	return append(b, body...)
}

// forgedUnix is an AF_UNIX address block whose source "path" writes a whole
// access-log line of the attacker's choosing, in each format.
func forgedUnix() []byte {
	b := make([]byte, 216)
	copy(b, "x\nfrontend:web 2026/01/01 00:00:00.000000 6.6.6.6:1 h \"GET /forged HTTP/1.1\" 200 0\n6.6.6.6 - - [01/Jan/2026:00:00:00 +0000] \"GET /forged HTTP/1.1\" 200 0 \"-\" \"-\"\n{\"forged\":true}\n")
	return b
}

// rawExchange connects to addr, writes each piece (pausing between them if
// pause is set), half-closes if halfClose, and returns what it read until
// the server closed, and the connection's own address.
func rawExchange(t *testing.T, addr string, halfClose bool, pause time.Duration, pieces ...[]byte) (string, string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	for i, p := range pieces {
		if i > 0 && pause > 0 {
			time.Sleep(pause) // the attack itself: a header in pieces
		}
		if _, err := c.Write(p); err != nil {
			break
		}
	}
	if halfClose {
		c.(*net.TCPConn).CloseWrite()
	}
	got, err := io.ReadAll(c)
	if err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("%s: %v after %q", addr, err, got)
	}
	return string(got), c.LocalAddr().String()
}

// A PROXY v2 header of the AF_UNIX family, whose "address" holds newlines
// and whole log lines, is taken as LOCAL: the client is the connection's
// own peer in every log format and in X-Forwarded-For, and no line is
// forged. UDP and a TLV running past the header are refused.
func TestProxyHeaderCannotForgeLogLines(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	x, a := backend(t, "x", nil), lineEcho(t, "a", nil)
	fronts := map[string]string{}
	var cfg strings.Builder
	for _, format := range []string{"hipster", "combined", "json"} {
		fronts[format] = freePort(t, "tcp", "127.0.0.1")
		fmt.Fprintf(&cfg, "[frontend web-%s]\nbind = %s\nbackends = x\nadd-x-forwarded-for = true\naccept-proxy = true\naccesslog = %s\naccesslog-format = %s\n",
			format, fronts[format], filepath.Join(dir, format+".log"), format)
	}
	db := freePort(t, "tcp", "127.0.0.1")
	fmt.Fprintf(&cfg, "[frontend db]\nbind = %s\nmode = tcp\nbackends = a\naccept-proxy = true\naccesslog = %s\n[backend x]\nconnect = %s\n[backend a]\nconnect = %s\n",
		db, filepath.Join(dir, "db.log"), x, a)
	startHipsterd(t, writeConfig(t, cfg.String()), db)

	inet := []byte{203, 0, 113, 7, 192, 0, 2, 1, 0x9c, 0x40, 0, 80}
	get := []byte("GET /real HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
	for _, format := range []string{"hipster", "combined", "json"} {
		front := fronts[format]
		got, self := rawExchange(t, front, false, 0, append(v2Header(0x21, 0x31, forgedUnix()), get...))
		if !strings.HasSuffix(got, "\r\n\r\nx 127.0.0.1") {
			t.Errorf("%s: AF_UNIX header: answered %q, want the backend's answer with X-Forwarded-For 127.0.0.1", format, got)
		}
		for name, hdr := range map[string][]byte{
			"UDP4":                   v2Header(0x21, 0x12, inet),
			"TLV past the header":    v2Header(0x21, 0x11, append(inet, 0xe0, 0x01, 0x00, 'a')),
			"UNIX datagram":          v2Header(0x21, 0x32, forgedUnix()),
			"undefined family":       v2Header(0x21, 0x41, inet),
			"v1 with a forged line":  []byte("PROXY TCP4 1.2.3.4\nfrontend:web 5.6.7.8 1 2\r\n"),
			"v1 address with spaces": []byte("PROXY TCP4 1.2.3.4 x 5.6.7.8 1 2\r\n"),
		} {
			if got, _ := rawExchange(t, front, false, 0, append(hdr, get...)); got != "" {
				t.Errorf("%s: %s: answered %q, want the connection closed", format, name, got)
			}
		}
		lines := waitLines(t, filepath.Join(dir, format+".log"), 1)
		if len(lines) != 1 {
			t.Fatalf("%s: %d lines, want 1 (refused connections are not logged):\n%s", format, len(lines), strings.Join(lines, "\n"))
		}
		host, _, _ := net.SplitHostPort(self)
		want := map[string]string{
			"hipster":  ` ` + self + ` h "GET /real HTTP/1.1" 200 `,
			"combined": host + ` - - [`,
			"json":     `"client":"` + host + `"`,
		}[format]
		if !strings.Contains(lines[0], want) || strings.Contains(lines[0], "forged") {
			t.Errorf("%s: line %q, want it to hold %q and nothing forged", format, lines[0], want)
		}
		if format == "json" && !json.Valid([]byte(lines[0])) {
			t.Errorf("json: %q is not JSON", lines[0])
		}
	}

	got, self := rawExchange(t, db, true, 0, append(v2Header(0x21, 0x31, forgedUnix()), "hi\n"...))
	if got != "a\nhi\n" {
		t.Errorf("tcp frontend, AF_UNIX header: %q", got)
	}
	if got, _ := rawExchange(t, db, true, 0, append(v2Header(0x21, 0x12, inet), "hi\n"...)); got != "" {
		t.Errorf("tcp frontend, UDP header: answered %q", got)
	}
	lines := waitLines(t, filepath.Join(dir, "db.log"), 1)
	if len(lines) != 1 || !strings.Contains(lines[0], " "+self+` a "TCP" 3 5 `) {
		t.Errorf("tcp frontend's log: %q, want one line for %s", lines, self)
	}
}

// A PROXY header sent in pieces, with pauses between them, is waited for
// (up to read-header-timeout), on http and tcp frontends, v1 and v2.
func TestProxyHeaderInPieces(t *testing.T) {
	t.Parallel()
	x, a := backend(t, "x", nil), lineEcho(t, "a", nil)
	web, db := freePort(t, "tcp", "127.0.0.1"), freePort(t, "tcp", "127.0.0.1")
	cfg := fmt.Sprintf(`
[global]
read-header-timeout = 3s
[frontend web]
bind = %s
backends = x
add-x-forwarded-for = true
accept-proxy = true
[frontend db]
bind = %s
mode = tcp
backends = a
accept-proxy = true
read-header-timeout = 1s
[backend x]
connect = %s
[backend a]
connect = %s
`, web, db, x, a)
	startHipsterd(t, writeConfig(t, cfg), web)
	v1 := []byte("PROXY TCP4 203.0.113.7 192.0.2.1 40000 80\r\n")
	v2 := v2Header(0x21, 0x11, []byte{203, 0, 113, 8, 192, 0, 2, 1, 0x9c, 0x40, 0, 80})
	split := func(b []byte, n int) [][]byte {
		var out [][]byte
		for i := 0; i < len(b); i += n {
			out = append(out, b[i:min(i+n, len(b))])
		}
		return out
	}
	get := []byte("GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
	for name, tc := range map[string]struct {
		pieces [][]byte
		want   string
	}{
		"v1 in three": {[][]byte{v1[:9], v1[9:30], v1[30:], get}, "x 203.0.113.7"},
		"v1 by bytes": {append(split(v1, 1), get), "x 203.0.113.7"},
		"v2 in four":  {[][]byte{v2[:3], v2[3:15], v2[15:20], v2[20:], get}, "x 203.0.113.8"},
	} {
		if got, _ := rawExchange(t, web, false, 5*time.Millisecond, tc.pieces...); !strings.HasSuffix(got, "\r\n\r\n"+tc.want) {
			t.Errorf("http frontend, %s: %q, want an answer ending in %q", name, got, tc.want)
		}
	}
	if got, _ := rawExchange(t, db, true, 20*time.Millisecond, v1[:20], v1[20:40], v1[40:], []byte("hi\n")); got != "a\nhi\n" {
		t.Errorf("tcp frontend, v1 in three: %q", got)
	}
	// A header that never ends is closed at read-header-timeout.
	c, err := net.Dial("tcp", db)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write(v1[:20])
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	start := time.Now()
	if n, err := c.Read(make([]byte, 1)); n != 0 || err == nil || time.Since(start) > 5*time.Second {
		t.Errorf("unfinished header: read %d, %v after %v; want closed at read-header-timeout", n, err, time.Since(start))
	}
}

// tcpJSON is a tcp frontend's line in the JSON format.
type tcpJSON struct {
	Time        string   `json:"time"`
	Mode        string   `json:"mode"`
	Frontend    string   `json:"frontend"`
	Client      string   `json:"client"`
	Backend     *string  `json:"backend"`
	BytesIn     int64    `json:"bytes_in"`
	BytesOut    int64    `json:"bytes_out"`
	Duration    *float64 `json:"duration"`
	Termination string   `json:"termination"`
}

func decodeTCPJSON(t *testing.T, line string) tcpJSON {
	t.Helper()
	var l tcpJSON
	dec := json.NewDecoder(strings.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&l); err != nil {
		t.Fatalf("tcp line %q: %v", line, err)
	}
	return l
}

// A tcp frontend's line keeps its log's format: a JSON object in a json
// log, the documented TCP line in hipster and combined ones.
func TestTCPLinesKeepTheLogFormat(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	a := lineEcho(t, "a", nil)
	none := closedPort(t)
	fronts := map[string]string{}
	var cfg strings.Builder
	for _, format := range []string{"hipster", "combined", "json"} {
		fronts[format] = freePort(t, "tcp", "127.0.0.1")
		fmt.Fprintf(&cfg, "[frontend db-%s]\nbind = %s\nmode = tcp\nbackends = a\naccesslog = %s\naccesslog-format = %s\n",
			format, fronts[format], filepath.Join(dir, format+".log"), format)
	}
	down := freePort(t, "tcp", "127.0.0.1")
	fmt.Fprintf(&cfg, "[frontend down]\nbind = %s\nmode = tcp\nbackends = none\naccesslog = %s\naccesslog-format = json\n[backend a]\nconnect = %s\n[backend none]\nconnect = %s\nhealth-fall = 1000\n",
		down, filepath.Join(dir, "down.log"), a, none)
	startHipsterd(t, writeConfig(t, cfg.String()), down)

	for _, format := range []string{"hipster", "combined", "json"} {
		path := filepath.Join(dir, format+".log")
		got, self := rawExchange(t, fronts[format], true, 0, []byte("hello\n"))
		if got != "a\nhello\n" {
			t.Fatalf("%s: %q", format, got)
		}
		lines := waitLines(t, path, 1)
		last := lines[len(lines)-1]
		if format != "json" {
			re := regexp.MustCompile(`^frontend:db-` + format + ` \d{4}/\d\d/\d\d \d\d:\d\d:\d\d\.\d{6} ` + regexp.QuoteMeta(self) + ` a "TCP" 6 8 \d+\.\d{3}s$`)
			if !re.MatchString(last) {
				t.Errorf("%s: line %q, want %s", format, last, re)
			}
			continue
		}
		l := decodeTCPJSON(t, last)
		host, _, _ := net.SplitHostPort(self)
		if l.Mode != "tcp" || l.Frontend != "db-json" || l.Client != host || l.Backend == nil || *l.Backend != "a" ||
			l.BytesIn != 6 || l.BytesOut != 8 || l.Duration == nil || *l.Duration < 0 || l.Termination != "done" {
			t.Errorf("json: line %q", last)
		}
		if _, err := time.Parse(time.RFC3339Nano, l.Time); err != nil {
			t.Errorf("json: time %q: %v", l.Time, err)
		}
	}

	if got, _ := rawExchange(t, down, true, 0, []byte("hello\n")); got != "" {
		t.Errorf("no backend: %q", got)
	}
	lines := waitLines(t, filepath.Join(dir, "down.log"), 2)
	l := decodeTCPJSON(t, lines[len(lines)-1])
	if l.Backend != nil || l.Termination != "no-backend" || l.BytesIn != 0 {
		t.Errorf("no backend: line %q", lines[len(lines)-1])
	}
}

// After the client's shutdown(SHUT_WR), the backend's side of a tcp stream
// stays open under tunnel-timeout, however long the answer takes (there was
// a fixed 5 s cut), and a quiet half-closed stream is closed at
// tunnel-timeout like any other.
func TestTCPHalfCloseUnderTunnelTimeout(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	// The backend reads the request to its end, waits as the first line
	// says, and answers.
	slow := rawListener(t, func(c *net.TCPConn) {
		defer c.Close()
		req, err := io.ReadAll(c)
		if err != nil {
			return
		}
		ms, _ := strconv.Atoi(strings.TrimSpace(string(req)))
		time.Sleep(time.Duration(ms) * time.Millisecond) // the slow backend
		io.WriteString(c, "late answer\n")
	})
	long, short := freePort(t, "tcp", "127.0.0.1"), freePort(t, "tcp", "127.0.0.1")
	cfg := fmt.Sprintf(`
[global]
accesslog-format = json
[frontend long]
bind = %s
mode = tcp
backends = slow
tunnel-timeout = 20s
accesslog = %s
[frontend short]
bind = %s
mode = tcp
backends = slow
tunnel-timeout = 300ms
accesslog = %s
[backend slow]
connect = %s
`, long, filepath.Join(dir, "long.log"), short, filepath.Join(dir, "short.log"), slow)
	startHipsterd(t, writeConfig(t, cfg), short)

	type result struct {
		got     string
		elapsed time.Duration
	}
	ask := func(addr string, wait time.Duration) <-chan result {
		ch := make(chan result, 1)
		go func() {
			start := time.Now()
			got, _ := rawExchange(t, addr, true, 0, []byte(strconv.Itoa(int(wait.Milliseconds()))+"\n"))
			ch <- result{got, time.Since(start)}
		}()
		return ch
	}
	// Past the old fixed 5 s.
	longRes := ask(long, 5500*time.Millisecond)
	shortRes := ask(short, 2*time.Second)
	if r := <-shortRes; r.got != "" || r.elapsed > 1900*time.Millisecond {
		t.Errorf("tunnel-timeout 300ms, answer after 2s: got %q after %v, want nothing, closed at the timeout", r.got, r.elapsed)
	}
	if r := <-longRes; r.got != "late answer\n" {
		t.Errorf("tunnel-timeout 20s, answer 5.5s after the half-close: got %q after %v", r.got, r.elapsed)
	}
	for name, want := range map[string]string{"long": "done", "short": "timeout"} {
		n := map[string]int{"long": 1, "short": 2}[name] // and startHipsterd's probe
		lines := waitLines(t, filepath.Join(dir, name+".log"), n)
		found := false
		for _, line := range lines {
			if l := decodeTCPJSON(t, line); l.BytesIn > 0 {
				found = true
				if l.Termination != want {
					t.Errorf("%s: termination %q, want %q", name, l.Termination, want)
				}
			}
		}
		if !found {
			t.Errorf("%s: no line of the stream:\n%s", name, strings.Join(lines, "\n"))
		}
	}
}

// A backend that resets its stream resets the client's too, so that a cut
// stream does not look complete; and a client's reset reaches the backend.
func TestTCPResetPassedOn(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	read := make(chan struct{})
	backendErr := make(chan error, 1)
	be := rawListener(t, func(c *net.TCPConn) {
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		r := bufio.NewReader(c)
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		switch line {
		case "cut me\n":
			io.WriteString(c, "partial")
			<-read
			c.SetLinger(0)
		case "i will cut\n":
			io.WriteString(c, "ok\n")
			_, err := io.ReadAll(r)
			backendErr <- err
		}
	})
	front := freePort(t, "tcp", "127.0.0.1")
	log := filepath.Join(dir, "access.log")
	cfg := fmt.Sprintf("[frontend t]\nbind = %s\nmode = tcp\nbackends = b\naccesslog = %s\naccesslog-format = json\n[backend b]\nconnect = %s\n", front, log, be)
	startHipsterd(t, writeConfig(t, cfg), front)
	n := len(waitLines(t, log, 1)) // startHipsterd's probe

	c, err := net.Dial("tcp", front)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "cut me\n")
	buf := make([]byte, len("partial"))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	close(read)
	if rest, err := io.ReadAll(c); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("backend reset its stream: the client read %q, %v; want a reset", rest, err)
	}

	c2, err := net.Dial("tcp", front)
	if err != nil {
		t.Fatal(err)
	}
	c2.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c2, "i will cut\n")
	if _, err := bufio.NewReader(c2).ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	c2.(*net.TCPConn).SetLinger(0)
	c2.Close()
	select {
	case err := <-backendErr:
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("client reset its stream: the backend read to %v; want a reset", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the backend's side stayed open")
	}
	lines := waitLines(t, log, n+2)
	ends := map[string]bool{}
	for _, line := range lines[n:] {
		ends[decodeTCPJSON(t, line).Termination] = true
	}
	if !ends["backend-error"] || !ends["client-error"] {
		t.Errorf("terminations %v, want backend-error and client-error:\n%s", ends, strings.Join(lines, "\n"))
	}
}

// goroutines reads go_goroutines from the stats listener at addr.
func goroutines(t *testing.T, addr string) int {
	t.Helper()
	m := regexp.MustCompile(`(?m)^go_goroutines (\d+)$`).FindStringSubmatch(metricsText(t, addr))
	if m == nil {
		t.Fatal("no go_goroutines on /metrics")
	}
	return atoi(t, m[1])
}

// WebSocket tunnels after a PROXY header run on the tunnel reactor like the
// others: idle, they hold no goroutine (on goroutines, each held two and
// two 32 KiB buffers).
func TestAcceptProxyWebSocketOnReactor(t *testing.T) {
	t.Parallel()
	echo := newServer(t, wsEcho)
	web, stats := freePort(t, "tcp", "127.0.0.1"), freePort(t, "tcp", "127.0.0.1")
	cfg := fmt.Sprintf("[global]\nstats = %s\n[frontend web]\nbind = %s\nbackends = echo\naccept-proxy = true\n[backend echo]\nconnect = %s\n", stats, web, echo)
	p := startHipsterd(t, writeConfig(t, cfg), web)
	waitListening(t, p, stats)
	before := goroutines(t, stats)

	const n = 100
	upgrade := "GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
	// A masked text frame "hi", sent with the header and the upgrade, as
	// the bytes read past the PROXY header that must go first.
	frame := []byte{0x81, 0x82, 1, 2, 3, 4, 'h' ^ 1, 'i' ^ 2}
	for i := range n {
		c, err := net.Dial("tcp", web)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(10 * time.Second))
		hdr := fmt.Sprintf("PROXY TCP4 203.0.113.%d 192.0.2.1 %d 80\r\n", i%250+1, 1000+i)
		c.Write(append([]byte(hdr+upgrade), frame...))
		r := bufio.NewReader(c)
		resp, err := http.ReadResponse(r, nil)
		if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
			t.Fatalf("tunnel %d: %v %v", i, resp, err)
		}
		echoed := make([]byte, 4)
		if _, err := io.ReadFull(r, echoed); err != nil || string(echoed) != "\x81\x02hi" {
			t.Fatalf("tunnel %d: echo %q, %v", i, echoed, err)
		}
	}
	// Goroutines that end after a handler returns take a moment.
	var after int
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if after = goroutines(t, stats); after-before < n/2 || time.Now().After(deadline) {
			break
		}
	}
	if after-before >= n/2 {
		t.Errorf("%d goroutines for %d idle tunnels (from %d to %d): not on the reactor", after-before, n, before, after)
	}
}

// Names that are not valid UTF-8 are configuration errors (they pass as
// labels nowhere: every /metrics scrape answered 500).
func TestNamesNotUTF8Refused(t *testing.T) {
	t.Parallel()
	cfg := writeConfig(t, "[frontend web\xff]\nbind = 127.0.0.1:0\nbackends = b\xe9\n[backend b\xe9]\nconnect = 127.0.0.1:1\n")
	code, _, stderr := runBinary(t, "-t", "-config", cfg)
	if want := "hipsterd: " + cfg + ":1: byte 0xff is not UTF-8: save the file as UTF-8\n"; code != 1 || stderr != want {
		t.Errorf("-t: exit %d, stderr %q, want exit 1 and %q", code, stderr, want)
	}
}
