package main

// End-to-end tests of what takes a backend down: its active checks, which
// answered traffic does not overrule, and passive failures of every kind.

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hipsterd/hipsterd/internal/testutil"
)

// rawListener serves each accepted connection with serve, on a goroutine.
func rawListener(t *testing.T, serve func(c *net.TCPConn)) string {
	t.Helper()
	return testutil.Serve(testutil.Listen(t), func(c net.Conn) { serve(c.(*net.TCPConn)) })
}

// until sends GETs to url, one every gap, until stderr holds substr; it
// returns how many it sent.
func until(t *testing.T, p *proc, url, substr string, gap time.Duration) int {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	n := 0
	for !strings.Contains(p.stderr.String(), substr) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q after %d requests:\n%s", substr, n, p.stderr.String())
		}
		if resp, err := http.Get(url); err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		n++
		time.Sleep(gap)
	}
	return n
}

// A backend that fails its health check goes down after health-fall
// checks, however much traffic it answers meanwhile.
func TestFailingCheckWinsOverAnsweredTraffic(t *testing.T) {
	t.Parallel()
	sick := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/health" {
			http.Error(w, "sick", http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "sick")
	})
	well := backend(t, "well", nil)
	front := freePort(t, "tcp", "127.0.0.1")
	cfg := writeConfig(t, fmt.Sprintf(`
[frontend f]
bind = %s
backends = sick well
[backend sick]
connect = %s
health-check = /health
health-interval = 200ms
health-fall = 3
[backend well]
connect = %s
`, front, sick, well))
	p := startHipsterd(t, cfg, front)
	// Ten requests per check interval, half of them to the sick backend,
	// each answered 200.
	start := time.Now()
	until(t, p, "http://"+front+"/", "backend is DOWN: GET /health: 503", 20*time.Millisecond)
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("down after %v; 3 checks at 200ms take about 0.6s", d)
	}
	if got := tally(t, http.DefaultClient, "http://"+front+"/", 10, nil); got["200 well"] != 10 {
		t.Errorf("after DOWN: %v, want 10 × well", got)
	}
}

// Passive failures of every kind take a backend down: connections reset
// before any response, and responses that never come (504).
func TestPassiveFailuresTakeBackendsDown(t *testing.T) {
	t.Parallel()
	reset := rawListener(t, func(c *net.TCPConn) {
		c.SetLinger(0)
		c.Close()
	})
	silent := rawListener(t, func(c *net.TCPConn) {
		defer c.Close()
		http.ReadRequest(bufio.NewReader(c))
		io.Copy(io.Discard, c) // never answers
	})
	well := backend(t, "well", nil)
	resetFront, silentFront := freePort(t, "tcp", "127.0.0.1"), freePort(t, "tcp", "127.0.0.1")
	cfg := writeConfig(t, fmt.Sprintf(`
[frontend r]
bind = %s
backends = reset well
[frontend s]
bind = %s
backends = silent well2
[backend reset]
connect = %s
health-fall = 3
[backend silent]
connect = %s
response-timeout = 100ms
health-fall = 3
[backend well]
connect = %s
[backend well2]
connect = %s
`, resetFront, silentFront, reset, silent, well, well))
	p := startHipsterd(t, cfg, resetFront)
	// A GET that meets a reset goes to the next backend: no client sees it.
	got := tally(t, http.DefaultClient, "http://"+resetFront+"/", 8, nil)
	if got["200 well"] != 8 {
		t.Errorf("GETs past a resetting backend: %v, want 8 × 200", got)
	}
	p.waitStderr(t, "backend is DOWN", 1)
	if !strings.Contains(p.stderr.String(), "backend=reset") {
		t.Errorf("the resetting backend is not the one down:\n%s", p.stderr.String())
	}
	// A silent backend: 504s, then down, then only the other one.
	got = tally(t, http.DefaultClient, "http://"+silentFront+"/", 6, nil)
	if got["504 Gateway Timeout"] != 3 || got["200 well"] != 3 {
		t.Errorf("silent backend: %v, want 3 × 504 then 3 × 200", got)
	}
	p.waitStderr(t, "backend is DOWN", 2)
	if got := tally(t, http.DefaultClient, "http://"+silentFront+"/", 4, nil); got["200 well"] != 4 {
		t.Errorf("after DOWN: %v, want 4 × well", got)
	}
}
