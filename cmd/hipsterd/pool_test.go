package main

// End-to-end tests of what a backend is promised: one probe at a time
// while it is down, its limits across a reload, the length of its queue.

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// blackHole returns the address of a listening socket that never completes
// a connect: its accept queue (backlog 0) is full with one connection that
// is never accepted, so the kernel drops every SYN, as a host that vanished
// behind a firewall would.
func blackHole(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
	filler, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { filler.Close() })
	// The queue is full once a connect no longer completes.
	if c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond); err == nil {
		c.Close()
		t.Fatalf("%s still completes connects", addr)
	}
	return addr
}

// A backend that was taken down is tried again by one request at a time:
// the others go to the live backend meanwhile, and no GET fails.
func TestDeadBackendOneProbe(t *testing.T) {
	t.Parallel()
	live := backend(t, "live", nil)
	front := freePort(t, "tcp", "127.0.0.1")
	const connectTimeout, interval = 400 * time.Millisecond, 200 * time.Millisecond
	cfg := writeConfig(t, fmt.Sprintf(`
[frontend f]
bind = %s
backends = hole live
[backend hole]
connect = %s
connect-timeout = %v
health-interval = %v
health-fall = 1
[backend live]
connect = %s
`, front, blackHole(t), connectTimeout, interval, live))
	p := startHipsterd(t, cfg, front)

	// The first request to the black hole waits connect-timeout, then
	// takes the backend down and goes to the live one.
	if got := tally(t, http.DefaultClient, "http://"+front+"/", 2, nil); got["200 live"] != 2 {
		t.Fatalf("first requests: %v, want 2 × live", got)
	}
	p.waitStderr(t, "backend is DOWN", 1)

	// Eight clients in a loop, for several intervals.
	const clients, run = 8, 2 * time.Second
	var slow, total, failed atomic.Int64
	start := time.Now()
	var wg sync.WaitGroup
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := &http.Client{Transport: &http.Transport{}, Timeout: 10 * time.Second}
			defer client.CloseIdleConnections()
			// Paced, to spare the shared machine: many requests arrive in
			// each interval all the same.
			tick := time.NewTicker(20 * time.Millisecond)
			defer tick.Stop()
			for ; time.Since(start) < run; <-tick.C {
				t0 := time.Now()
				resp, err := client.Get("http://" + front + "/")
				if err != nil {
					failed.Add(1)
					t.Errorf("GET: %v", err)
					continue
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				total.Add(1)
				if resp.StatusCode != 200 || !strings.HasPrefix(string(b), "live") {
					failed.Add(1)
					t.Errorf("GET: %d %q, want 200 from live", resp.StatusCode, b)
				}
				if time.Since(t0) >= connectTimeout {
					slow.Add(1)
				}
			}
		}()
	}
	waitGroup(t, &wg)
	elapsed := time.Since(start)
	// One probe per interval at most (each probe itself takes
	// connect-timeout, so fewer happen); one more for the rounding.
	limit := int64(elapsed/interval) + 1
	t.Logf("%d requests in %v, %d waited connect-timeout (limit %d)", total.Load(), elapsed, slow.Load(), limit)
	if slow.Load() > limit {
		t.Errorf("%d of %d requests waited connect-timeout in %v; at most one per health-interval (%d) may", slow.Load(), total.Load(), elapsed, limit)
	}
	if slow.Load() == 0 {
		t.Error("no request probed the dead backend")
	}
	if n := strings.Count(p.stderr.String(), "backend is UP"); n != 0 {
		t.Errorf("the black hole came up %d times", n)
	}
}

// holdingBackend serves /hold until release is closed, counting the
// requests it serves at once.
func holdingBackend(t *testing.T, release <-chan struct{}) (addr string, now, peak *atomic.Int64) {
	now, peak = new(atomic.Int64), new(atomic.Int64)
	addr = newServer(t, func(w http.ResponseWriter, r *http.Request) {
		n := now.Add(1)
		defer now.Add(-1)
		for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
		}
		if r.URL.Path == "/hold" {
			<-release
		}
		io.WriteString(w, "held")
	})
	return addr, now, peak
}

// waitMetric waits until the stats listener at addr shows line.
func waitMetric(t *testing.T, addr, line string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		m := metricsText(t, addr)
		if strings.Contains(m, line+"\n") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("/metrics has no %s:\n%s", line, m)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// getAsync sends a GET to url on a goroutine and delivers its status.
func getAsync(url string) <-chan int {
	ch := make(chan int, 1)
	go func() {
		resp, err := http.Get(url)
		if err != nil {
			ch <- 0
			return
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		ch <- resp.StatusCode
	}()
	return ch
}

// A reload that changes a backend's section but not its connect keeps
// what it was promised: max-connections counts the requests that started
// before the reload, and the queue carries on.
func TestReloadKeepsMaxConnections(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	addr, now, peak := holdingBackend(t, release)
	front, stats := freePort(t, "tcp", "127.0.0.1"), freePort(t, "tcp", "127.0.0.1")
	conf := func(weight, max int) string {
		return fmt.Sprintf("[global]\nstats = %s\n[frontend f]\nbind = %s\nbackends = b\n[backend b]\nconnect = %s\nweight = %d\nmax-connections = %d\nqueue-timeout = 30s\n", stats, front, addr, weight, max)
	}
	path := writeConfig(t, conf(1, 2))
	p := startHipsterd(t, path, front)
	defer func() {
		select {
		case <-release:
		default:
			close(release)
		}
	}()

	first := []<-chan int{getAsync("http://" + front + "/hold"), getAsync("http://" + front + "/hold")}
	waitMetric(t, stats, `hipsterd_backend_in_flight{backend="b"} 2`)
	p.reload(t, path, conf(3, 2), "msg=reloaded", 1)

	// The third request, after the reload, queues.
	third := getAsync("http://" + front + "/hold")
	waitMetric(t, stats, `hipsterd_backend_queued{backend="b"} 1`)
	if n := now.Load(); n != 2 {
		t.Errorf("the backend serves %d requests; max-connections is 2", n)
	}

	// Raised by a reload, the limit lets the queued request in at once.
	p.reload(t, path, conf(3, 3), "msg=reloaded", 2)
	waitMetric(t, stats, `hipsterd_backend_queued{backend="b"} 0`)
	for deadline := time.Now().Add(10 * time.Second); now.Load() != 3; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("after raising max-connections to 3 the backend serves %d", now.Load())
		}
	}
	close(release)
	for i, ch := range append(first, third) {
		if code := <-ch; code != 200 {
			t.Errorf("request %d: %d, want 200", i, code)
		}
	}
	if pk := peak.Load(); pk != 3 {
		t.Errorf("the backend served %d at once; want 2 before the raise, 3 after", pk)
	}
	waitMetric(t, stats, `hipsterd_backend_in_flight{backend="b"} 0`)
}

// A request that finds every queue it could join at queue-size gets 503 at
// once, logged and counted as a queue-timeout is.
func TestQueueSizeEndToEnd(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	addr, _, peak := holdingBackend(t, release)
	logPath := filepath.Join(t.TempDir(), "access.log")
	front, stats := freePort(t, "tcp", "127.0.0.1"), freePort(t, "tcp", "127.0.0.1")
	path := writeConfig(t, fmt.Sprintf(`
[global]
stats = %s
[frontend f]
bind = %s
backends = b
accesslog = %s
accesslog-format = json
[backend b]
connect = %s
max-connections = 1
queue-size = 2
queue-timeout = 30s
`, stats, front, logPath, addr))
	p := startHipsterd(t, path, front)
	defer func() {
		select {
		case <-release:
		default:
			close(release)
		}
	}()

	var held []<-chan int
	held = append(held, getAsync("http://"+front+"/hold"))
	waitMetric(t, stats, `hipsterd_backend_in_flight{backend="b"} 1`)
	held = append(held, getAsync("http://"+front+"/hold"), getAsync("http://"+front+"/hold"))
	waitMetric(t, stats, `hipsterd_backend_queued{backend="b"} 2`)

	start := time.Now()
	code, text := body(t, http.DefaultClient, "http://"+front+"/full", "")
	if code != 503 || !strings.Contains(text, "queue-size") {
		t.Errorf("past queue-size: %d %q, want 503 naming queue-size", code, text)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("the 503 took %v; a full queue answers at once", d)
	}
	waitMetric(t, stats, `hipsterd_requests_total{backend="b",code="503",frontend="f"} 1`)
	if m := metricsText(t, stats); !strings.Contains(m, `hipsterd_backend_up{backend="b"} 1`+"\n") {
		t.Error("a full queue took the backend down")
	}

	close(release)
	for i, ch := range held {
		if code := <-ch; code != 200 {
			t.Errorf("request %d: %d, want 200", i, code)
		}
	}
	if pk := peak.Load(); pk != 1 {
		t.Errorf("the backend served %d at once; max-connections is 1", pk)
	}
	p.signal(t, syscall.SIGTERM)
	if code := p.wait(t); code != 0 {
		t.Fatalf("exit %d", code)
	}
	data, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, l := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		var rec struct {
			URI     string `json:"uri"`
			Status  int    `json:"status"`
			Backend string `json:"backend"`
		}
		if err := json.Unmarshal([]byte(l), &rec); err != nil {
			t.Fatalf("access log line %q: %v", l, err)
		}
		if rec.URI == "/full" {
			found = true
			if rec.Status != 503 || rec.Backend != "b" {
				t.Errorf("the refused request is logged as %d from %q, want 503 from b", rec.Status, rec.Backend)
			}
		}
	}
	if !found {
		t.Errorf("no access log line for the refused request:\n%s", data)
	}
}
