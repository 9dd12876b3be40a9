package main

// End-to-end tests of failing backends, health checks and balancing.

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/hipsterd/hipsterd/internal/testutil"
)

// closedPort returns a loopback address that refuses connections while the
// test runs.
func closedPort(t *testing.T) string { return testutil.RefusingAddr(t) }

// tally sends n GETs and counts the answers by body.
func tally(t *testing.T, client *http.Client, url string, n int, header http.Header) map[string]int {
	t.Helper()
	got := map[string]int{}
	for i := 0; i < n; i++ {
		req, _ := http.NewRequest("GET", url, nil)
		for k, v := range header {
			req.Header[k] = v
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		got[fmt.Sprint(resp.StatusCode, " ", strings.TrimSpace(string(b)))]++
	}
	return got
}

func TestDeadBackendIsRetried(t *testing.T) {
	t.Parallel()
	a := backend(t, "a", nil)
	echo := newServer(t, wsEcho)
	front, ws := freePort(t, "tcp", "127.0.0.1"), freePort(t, "tcp", "127.0.0.1")
	cfg := writeConfig(t, fmt.Sprintf(`
[frontend f]
bind = %s
backends = dead a
[frontend ws]
bind = %s
backends = deadws echo
[backend dead]
connect = %s
[backend deadws]
connect = %s
[backend a]
connect = %s
[backend echo]
connect = %s
`, front, ws, closedPort(t), closedPort(t), a, echo))
	p := startHipsterd(t, cfg, front)
	got := tally(t, http.DefaultClient, "http://"+front+"/", 100, nil)
	if got["200 a"] != 100 {
		t.Errorf("100 requests with one backend refusing: %v, want 100 × 200", got)
	}
	p.waitStderr(t, "backend is DOWN", 1)
	for i := 0; i < 4; i++ {
		c, _, err := websocket.DefaultDialer.Dial("ws://"+ws+"/", nil)
		if err != nil {
			t.Fatalf("websocket %d with one backend refusing: %v", i, err)
		}
		c.WriteMessage(websocket.TextMessage, []byte("hi"))
		if _, msg, err := c.ReadMessage(); err != nil || string(msg) != "hi" {
			t.Errorf("echo %q %v", msg, err)
		}
		c.Close()
	}
}

func TestHealthChecks(t *testing.T) {
	t.Parallel()
	var healthy atomic.Bool
	healthy.Store(true)
	flaky := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/health" {
			if !healthy.Load() {
				http.Error(w, "sick", 500)
			}
			return
		}
		io.WriteString(w, "flaky")
	})
	steady := backend(t, "steady", nil)
	front := freePort(t, "tcp", "127.0.0.1")
	cfg := writeConfig(t, fmt.Sprintf(`
[frontend f]
bind = %s
backends = flaky steady
[backend flaky]
connect = %s
health-check = /health
health-interval = 50ms
health-fall = 2
health-rise = 2
[backend steady]
connect = %s
`, front, flaky, steady))
	p := startHipsterd(t, cfg, front)
	if got := tally(t, http.DefaultClient, "http://"+front+"/", 10, nil); got["200 flaky"] != 5 {
		t.Fatalf("both up: %v", got)
	}
	healthy.Store(false)
	p.waitStderr(t, "backend is DOWN: GET /health: 500", 1)
	if got := tally(t, http.DefaultClient, "http://"+front+"/", 20, nil); got["200 steady"] != 20 {
		t.Errorf("flaky down: %v, want all on steady", got)
	}
	healthy.Store(true)
	p.waitStderr(t, "backend is UP", 1)
	if got := tally(t, http.DefaultClient, "http://"+front+"/", 10, nil); got["200 flaky"] != 5 {
		t.Errorf("flaky back: %v, want half on flaky", got)
	}
}

func TestAllBackendsDown(t *testing.T) {
	t.Parallel()
	// Backends that accept connections and never answer: only the checks'
	// timeout tells they are gone.
	ln1, _ := net.Listen("tcp", "127.0.0.1:0")
	ln2, _ := net.Listen("tcp", "127.0.0.1:0")
	defer ln1.Close()
	defer ln2.Close()
	front := freePort(t, "tcp", "127.0.0.1")
	cfg := writeConfig(t, fmt.Sprintf(`
[frontend f]
bind = %s
backends = x y
[backend x]
connect = %s
health-check = /health
health-timeout = 200ms
health-interval = 50ms
health-fall = 1
[backend y]
connect = %s
health-check = tcp
health-timeout = 200ms
health-interval = 50ms
health-fall = 1
`, front, ln1.Addr(), ln2.Addr()))
	p := startHipsterd(t, cfg, front)
	p.waitStderr(t, "backend is DOWN", 1)
	ln2.Close() // y now refuses: its tcp check fails
	p.waitStderr(t, "backend is DOWN", 2)
	begin := time.Now()
	resp, err := http.Get("http://" + front + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 503 || !strings.Contains(string(body), "down") {
		t.Errorf("all down: %d %q, want 503 saying so", resp.StatusCode, body)
	}
	if d := time.Since(begin); d > 200*time.Millisecond+300*time.Millisecond {
		t.Errorf("the 503 took %v", d)
	}
}

func TestLeastConnAvoidsBusyBackend(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	var arrived sync.WaitGroup
	busy := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			arrived.Done()
			<-release
		}
		io.WriteString(w, "busy")
	})
	idle := backend(t, "idle", nil)
	only, lc := freePort(t, "tcp", "127.0.0.1"), freePort(t, "tcp", "127.0.0.1")
	cfg := writeConfig(t, fmt.Sprintf(`
[frontend only]
bind = %s
backends = busy
[frontend lc]
bind = %s
backends = busy idle
balance = leastconn
[backend busy]
connect = %s
[backend idle]
connect = %s
`, only, lc, busy, idle))
	startHipsterd(t, cfg, lc)

	// busy holds 10 slow requests (sent through a frontend of its own: the
	// count is the backend's, whatever pool the requests came through).
	arrived.Add(10)
	var done sync.WaitGroup
	for i := 0; i < 10; i++ {
		done.Add(1)
		go func() {
			defer done.Done()
			if resp, err := http.Get("http://" + only + "/slow"); err == nil {
				resp.Body.Close()
			}
		}()
	}
	waitGroup(t, &arrived)
	got := tally(t, http.DefaultClient, "http://"+lc+"/", 20, nil)
	close(release)
	done.Wait()
	if got["200 idle"] != 20 {
		t.Errorf("with busy holding 10 requests: %v, want all 20 on idle", got)
	}
}

func waitGroup(t *testing.T, wg *sync.WaitGroup) {
	t.Helper()
	c := make(chan struct{})
	go func() {
		wg.Wait()
		close(c)
	}()
	select {
	case <-c:
	case <-time.After(10 * time.Second):
		t.Fatal("timed out")
	}
}

func TestSourceHashing(t *testing.T) {
	t.Parallel()
	names := []string{"s1", "s2", "s3", "s4"}
	addrs := map[string]string{}
	for _, n := range names {
		addrs[n] = backend(t, n, nil)
	}
	front, peer := freePort(t, "tcp", "127.0.0.1"), freePort(t, "tcp", "127.0.0.1")
	conf := func(list string) string {
		s := fmt.Sprintf("[frontend f]\nbind = %s\nbackends = %s\nbalance = source\nadd-x-forwarded-for = true\n[frontend peer]\nbind = %s\nbackends = s1 s2 s3 s4\nbalance = source\n", front, list, peer)
		for _, n := range names {
			s += fmt.Sprintf("[backend %s]\nconnect = %s\n", n, addrs[n])
		}
		return s
	}
	path := writeConfig(t, conf("s1 s2 s3 s4"))
	p := startHipsterd(t, path, front)

	// Clients told apart by X-Forwarded-For (add-x-forwarded-for is on).
	owner := func() map[string]string {
		out := map[string]string{}
		for c := 0; c < 40; c++ {
			ip := fmt.Sprintf("198.51.100.%d", c)
			got := tally(t, http.DefaultClient, "http://"+front+"/", 5, http.Header{"X-Forwarded-For": {ip}})
			if len(got) != 1 {
				t.Fatalf("client %s was spread over %v", ip, got)
			}
			for k := range got {
				out[ip] = strings.Fields(k)[1]
			}
		}
		return out
	}
	before := owner()
	used := map[string]bool{}
	for _, b := range before {
		used[b] = true
	}
	if len(used) < 3 {
		t.Errorf("40 clients landed on only %v", used)
	}
	p.reload(t, path, conf("s1 s2 s4"), "msg=reloaded", 1)
	after := owner()
	for ip, b := range before {
		if b != "s3" && after[ip] != b {
			t.Errorf("client %s moved from %s to %s when s3 was removed", ip, b, after[ip])
		}
		if after[ip] == "s3" {
			t.Errorf("client %s still on the removed s3", ip)
		}
	}

	// Without add-x-forwarded-for the socket peer is the client: each
	// loopback address sticks to its backend over 100 requests.
	for _, local := range []string{"127.0.0.2", "127.0.0.3"} {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
		client := &http.Client{Transport: &http.Transport{
			DisableKeepAlives: true,
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return d.DialContext(ctx, network, addr)
			},
		}}
		if got := tally(t, client, "http://"+peer+"/", 100, nil); len(got) != 1 {
			t.Errorf("peer %s over 100 requests: %v", local, got)
		}
	}
}

func TestWeights(t *testing.T) {
	t.Parallel()
	a, b := backend(t, "a", nil), backend(t, "b", nil)
	front := freePort(t, "tcp", "127.0.0.1")
	cfg := writeConfig(t, fmt.Sprintf("[frontend f]\nbind = %s\nbackends = a b\n[backend a]\nconnect = %s\nweight = 3\n[backend b]\nconnect = %s\n", front, a, b))
	startHipsterd(t, cfg, front)
	got := tally(t, http.DefaultClient, "http://"+front+"/", 400, nil)
	if got["200 a"] != 300 || got["200 b"] != 100 {
		t.Errorf("weights 3:1 over 400 requests: %v", got)
	}
}

func TestHealthAcrossReload(t *testing.T) {
	t.Parallel()
	var sickHits, keptHits atomic.Int64
	sick := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/health" {
			sickHits.Add(1)
			http.Error(w, "sick", 500)
			return
		}
		io.WriteString(w, "sick")
	})
	kept := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/health" {
			keptHits.Add(1)
			return
		}
		io.WriteString(w, "kept")
	})
	front := freePort(t, "tcp", "127.0.0.1")
	conf := func(weight int, withSick bool) string {
		s := fmt.Sprintf("[frontend f]\nbind = %s\nbackends = kept%s\n[backend kept]\nconnect = %s\nhealth-check = /health\nhealth-interval = 30ms\n", front, map[bool]string{true: " sick"}[withSick], kept)
		if withSick {
			s += fmt.Sprintf("[backend sick]\nconnect = %s\nweight = %d\nhealth-check = /health\nhealth-interval = 30ms\nhealth-fall = 1\nhealth-rise = 1000\n", sick, weight)
		}
		return s
	}
	path := writeConfig(t, conf(1, true))
	p := startHipsterd(t, path, front)
	p.waitStderr(t, "backend is DOWN", 1)

	// The same section, then a changed one: sick stays down both times.
	p.reload(t, path, conf(1, true), "msg=reloaded", 1)
	p.reload(t, path, conf(2, true), "msg=reloaded", 2)
	if got := tally(t, http.DefaultClient, "http://"+front+"/", 10, nil); got["200 kept"] != 10 {
		t.Errorf("after reloads: %v, want sick still down", got)
	}

	// Removed: its checks stop while kept's go on.
	p.reload(t, path, conf(1, false), "msg=reloaded", 3)
	before := sickHits.Load()
	k := keptHits.Load()
	for deadline := time.Now().Add(10 * time.Second); keptHits.Load() < k+10; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("kept is not checked any more")
		}
	}
	if n := sickHits.Load() - before; n > 1 {
		t.Errorf("a removed backend was checked %d more times", n)
	}
}
