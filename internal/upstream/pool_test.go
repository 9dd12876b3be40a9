package upstream

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hipsterd/hipsterd/internal/config"
	"github.com/hipsterd/hipsterd/internal/testutil"
)

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

func newBackend(name, addr string, weight int) *Backend {
	return NewBackend(config.Backend{Name: name, Address: addr, Weight: weight,
		Health: config.HealthCheck{Rise: 2, Fall: 3, Interval: time.Second, Timeout: time.Second}}, nil, discard)
}

func backends(names ...string) map[string]*Backend {
	out := map[string]*Backend{}
	for _, n := range names {
		out[n] = newBackend(n, n+":80", 1)
	}
	return out
}

func pick(p *Pool) *Backend { return p.pick(0, nil) }

func TestRoundRobin(t *testing.T) {
	t.Parallel()
	bs := backends("a", "b")
	heavy := newBackend("h", "h:80", 3)
	tests := []struct {
		name  string
		list  []*Backend
		total int
		want  map[string]int
	}{
		{"two", []*Backend{bs["a"], bs["b"]}, 1000, map[string]int{"a": 500, "b": 500}},
		{"listed twice", []*Backend{bs["a"], bs["a"], bs["b"]}, 999, map[string]int{"a": 666, "b": 333}},
		{"weight 3", []*Backend{heavy, bs["b"]}, 1000, map[string]int{"b": 250, "h": 750}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := NewPool(tc.list, config.RoundRobin, false, discard)
			var mu sync.Mutex
			got := map[string]int{}
			var wg sync.WaitGroup
			// Concurrent pickers: strict rotation must hold under contention.
			for w := 0; w < 10; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					local := map[string]int{}
					for i := 0; i < tc.total/10; i++ {
						local[pick(p).Name]++
					}
					mu.Lock()
					for k, v := range local {
						got[k] += v
					}
					mu.Unlock()
				}()
			}
			wg.Wait()
			for i := 0; i < tc.total%10; i++ {
				got[pick(p).Name]++
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("split = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestRoundRobinOrderAndDown(t *testing.T) {
	t.Parallel()
	bs := backends("a", "b", "c")
	p := NewPool([]*Backend{bs["a"], bs["b"], bs["c"]}, config.RoundRobin, false, discard)
	var seq string
	for i := 0; i < 7; i++ {
		seq += pick(p).Name
	}
	if seq != "abcabca" {
		t.Errorf("sequence %q, want abcabca", seq)
	}
	for i := 0; i < 3; i++ {
		bs["b"].health.PassiveFailed("test")
	}
	bs["b"].health.retryAt.Store(time.Now().Add(time.Hour).UnixNano())
	seq = ""
	for i := 0; i < 6; i++ {
		seq += pick(p).Name
	}
	if strings.Contains(seq, "b") {
		t.Errorf("down backend picked: %q", seq)
	}
	if got := p.pick(0, []*Backend{bs["a"], bs["c"]}); got != nil {
		t.Errorf("all tried or down: got %s, want none", got.Name)
	}
}

func TestLeastConn(t *testing.T) {
	t.Parallel()
	bs := backends("a", "b", "c")
	p := NewPool([]*Backend{bs["a"], bs["b"], bs["c"]}, config.LeastConn, false, discard)
	bs["a"].inflight.Store(10)
	bs["b"].inflight.Store(2)
	bs["c"].inflight.Store(3)
	for i := 0; i < 5; i++ {
		if got := pick(p); got != bs["b"] {
			t.Fatalf("picked %s, want b (fewest in flight)", got.Name)
		}
	}
	// Ties go round-robin.
	bs["c"].inflight.Store(2)
	seen := map[string]int{}
	for i := 0; i < 10; i++ {
		seen[pick(p).Name]++
	}
	if seen["b"] != 5 || seen["c"] != 5 {
		t.Errorf("ties split %v, want b and c 5 each", seen)
	}
	// A weight-2 backend takes twice the load before it loses.
	heavy := newBackend("h", "h:80", 2)
	light := newBackend("l", "l:80", 1)
	q := NewPool([]*Backend{heavy, light}, config.LeastConn, false, discard)
	heavy.inflight.Store(3)
	light.inflight.Store(2)
	if got := pick(q); got != heavy {
		t.Errorf("picked %s, want h (3/2 < 2/1)", got.Name)
	}
}

func TestSourceHashing(t *testing.T) {
	t.Parallel()
	var list []*Backend
	for i := 0; i < 5; i++ {
		list = append(list, newBackend(fmt.Sprintf("b%d", i), fmt.Sprintf("10.0.0.%d:80", i), 1))
	}
	full := NewPool(list, config.Source, false, discard)
	without := NewPool(append(append([]*Backend{}, list[:2]...), list[3:]...), config.Source, false, discard)
	const clients = 5000
	before := map[string]string{}
	count := map[string]int{}
	for i := 0; i < clients; i++ {
		key := hashString(fmt.Sprintf("192.0.2.%d/%d", i%250, i))
		ip := fmt.Sprint(key)
		b := full.pick(key, nil)
		if again := full.pick(key, nil); again != b {
			t.Fatalf("client %d moved between two picks", i)
		}
		before[ip] = b.Name
		count[b.Name]++
	}
	for name, n := range count {
		if n < clients/5*7/10 || n > clients/5*13/10 {
			t.Errorf("%s has %d of %d clients; want about a fifth", name, n, clients)
		}
	}
	moved := 0
	for ip, name := range before {
		var key uint64
		fmt.Sscan(ip, &key)
		now := without.pick(key, nil).Name
		if name != "b2" && now != name {
			t.Fatalf("a client of %s moved to %s when b2 was removed", name, now)
		}
		if name == "b2" {
			moved++
		}
	}
	if moved != count["b2"] {
		t.Errorf("moved %d, want b2's %d", moved, count["b2"])
	}
	// A backend that is down: only its clients go elsewhere.
	for i := 0; i < 3; i++ {
		list[2].health.PassiveFailed("test")
	}
	list[2].health.retryAt.Store(time.Now().Add(time.Hour).UnixNano())
	for ip, name := range before {
		var key uint64
		fmt.Sscan(ip, &key)
		if now := full.pick(key, nil).Name; name != "b2" && now != name {
			t.Fatalf("a client of %s moved to %s when b2 went down", name, now)
		}
	}
}

func TestClientKey(t *testing.T) {
	t.Parallel()
	b := newBackend("a", "a:80", 1)
	plain := NewPool([]*Backend{b}, config.Source, false, discard)
	xff := NewPool([]*Backend{b}, config.Source, true, discard)
	r := httptest.NewRequest("GET", "/", nil)
	r.RemoteAddr = "192.0.2.9:4444"
	r.Header.Set("X-Forwarded-For", "198.51.100.1, 10.0.0.1")
	if plain.clientHash(r.RemoteAddr, r.Header) != hashString("192.0.2.9") {
		t.Error("without add-x-forwarded-for the peer is the client")
	}
	if xff.clientHash(r.RemoteAddr, r.Header) != hashString("198.51.100.1") {
		t.Error("with add-x-forwarded-for the first X-Forwarded-For address is the client")
	}
	r.Header.Del("X-Forwarded-For")
	if xff.clientHash(r.RemoteAddr, r.Header) != hashString("192.0.2.9") {
		t.Error("with no X-Forwarded-For the peer is the client")
	}
}

func TestRoundTripRetriesOnConnectFailure(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s", r.Method, body)
	}))
	defer srv.Close()
	dead := testutil.RefusingAddr(t)
	up, down := newBackend("up", srv.Listener.Addr().String(), 1), newBackend("down", dead, 1)
	p := NewPool([]*Backend{down, up}, config.RoundRobin, false, discard)
	front := httptest.NewServer(p)
	defer front.Close()
	for i := 0; i < 10; i++ {
		method := "GET"
		var body io.Reader
		if i%2 == 1 {
			method, body = "POST", strings.NewReader("payload")
		}
		req, _ := http.NewRequest(method, front.URL, body)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.HasPrefix(string(got), method) {
			t.Fatalf("%s: %d %q", method, resp.StatusCode, got)
		}
		if method == "POST" && string(got) != "POST payload" {
			t.Fatalf("retried POST lost its body: %q", got)
		}
	}
	if down.Up() {
		t.Error("a backend that refused every connect is still up")
	}
	if up.InFlight() != 0 {
		t.Errorf("in flight %d after all responses were read", up.InFlight())
	}

	// With every backend down: 503, at once.
	only := NewPool([]*Backend{down}, config.RoundRobin, false, discard)
	front2 := httptest.NewServer(only)
	defer front2.Close()
	resp, err := http.Get(front2.URL)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 503 || !strings.Contains(string(got), "down") {
		t.Errorf("all down: %d %q", resp.StatusCode, got)
	}
}

func benchmarkPick(b *testing.B, balance config.Balance) {
	list := make([]*Backend, 1000)
	for i := range list {
		list[i] = newBackend(fmt.Sprintf("b%d", i), fmt.Sprintf("10.0.%d.%d:80", i/250, i%250), 1)
	}
	p := NewPool(list, balance, false, discard)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		var key uint64
		for pb.Next() {
			key += 0x9e3779b97f4a7c15
			p.pick(key, nil)
		}
	})
}

func BenchmarkPickRoundRobin1000(b *testing.B) { benchmarkPick(b, config.RoundRobin) }
func BenchmarkPickLeastConn1000(b *testing.B)  { benchmarkPick(b, config.LeastConn) }
func BenchmarkPickSource1000(b *testing.B)     { benchmarkPick(b, config.Source) }

func BenchmarkRewrite(b *testing.B) {
	p := NewPool([]*Backend{newBackend("a", "a:80", 1)}, config.RoundRobin, true, discard)
	in := httptest.NewRequest("GET", "/path?q=1", nil)
	in.Header.Set("X-Forwarded-For", "10.0.0.1")
	in.Header.Set("Accept", "*/*")
	b.ReportAllocs()
	for b.Loop() {
		out := in.Clone(in.Context())
		p.rewrite(&httputil.ProxyRequest{In: in, Out: out})
	}
}
