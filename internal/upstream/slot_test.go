package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hipsterd/hipsterd/internal/config"
	"github.com/hipsterd/hipsterd/internal/testutil"
)

func limitedBackend(name, addr string, max int, queueTimeout time.Duration) *Backend {
	return NewBackend(config.Backend{Name: name, Address: addr, Weight: 1, MaxConnections: max, QueueTimeout: queueTimeout,
		Health: config.HealthCheck{Rise: 2, Fall: 3}}, nil, discard)
}

// concurrency counts the requests a test backend serves at once, and the
// most it ever served at once.
type concurrency struct{ now, peak atomic.Int64 }

func (c *concurrency) enter() {
	n := c.now.Add(1)
	for p := c.peak.Load(); n > p && !c.peak.CompareAndSwap(p, n); p = c.peak.Load() {
	}
}

func (c *concurrency) leave() { c.now.Add(-1) }

func TestMaxConnectionsQueues(t *testing.T) {
	t.Parallel()
	var load concurrency
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		load.enter()
		defer load.leave()
		<-release
		io.WriteString(w, "ok")
	}))
	defer srv.Close()
	b := limitedBackend("small", srv.Listener.Addr().String(), 2, 5*time.Second)
	defer b.Close()
	front := httptest.NewServer(NewPool([]*Backend{b}, config.RoundRobin, false, discard))
	defer front.Close()

	const n = 6
	codes := make(chan int, n)
	for range n {
		go func() {
			resp, err := http.Get(front.URL)
			if err != nil {
				codes <- 0
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			codes <- resp.StatusCode
		}()
	}
	testutil.Eventually(t, "two requests at the backend, four in its queue", func() bool {
		return load.now.Load() == 2 && b.Queued() == n-2
	})
	close(release)
	for range n {
		if code := <-codes; code != 200 {
			t.Errorf("status %d, want 200", code)
		}
	}
	if p := load.peak.Load(); p != 2 {
		t.Errorf("the backend saw %d requests at once, max-connections is 2", p)
	}
	if b.InFlight() != 0 || b.Queued() != 0 {
		t.Errorf("in flight %d, queued %d after every answer", b.InFlight(), b.Queued())
	}
}

func TestQueueTimeoutAndLeavers(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-release
	}))
	defer srv.Close()
	b := limitedBackend("small", srv.Listener.Addr().String(), 1, 100*time.Millisecond)
	defer b.Close()
	p := NewPool([]*Backend{b}, config.RoundRobin, false, discard)
	front := httptest.NewServer(p)
	defer front.Close()
	defer close(release) // before the servers wait for their handlers

	go http.Get(front.URL) // holds the only slot
	testutil.Eventually(t, "the slot taken", func() bool { return b.InFlight() == 1 })
	start := time.Now()
	resp, err := http.Get(front.URL)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 503 {
		t.Errorf("queued past queue-timeout: %d, want 503", resp.StatusCode)
	}
	// The backend is up: the answer must not say every backend is down.
	if !strings.Contains(string(body), "queue-timeout") {
		t.Errorf("queued past queue-timeout, the body says %q", body)
	}
	if d := time.Since(start); d < 100*time.Millisecond || d > 5*time.Second {
		t.Errorf("503 after %v, queue-timeout is 100ms", d)
	}
	if !b.Health().Up {
		t.Error("a full queue took the backend down")
	}

	// A client that leaves is dropped from the queue at once.
	long := limitedBackend("long", srv.Listener.Addr().String(), 1, time.Hour)
	defer long.Close()
	s, err := long.take(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := long.take(ctx)
		done <- err
	}()
	testutil.Eventually(t, "one waiting", func() bool { return long.Queued() == 1 })
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("leaver got %v", err)
	}
	if long.Queued() != 0 {
		t.Error("a leaver stayed in the queue")
	}
	s.Release()
	if long.InFlight() != 0 {
		t.Errorf("in flight %d", long.InFlight())
	}
}

// A request goes to any backend of the pool with a free slot before it
// queues.
func TestFreeSlotBeforeQueue(t *testing.T) {
	t.Parallel()
	for _, balance := range []config.Balance{config.RoundRobin, config.LeastConn} {
		t.Run(string(balance), func(t *testing.T) {
			t.Parallel()
			var bs []*Backend
			for i := range 3 {
				bs = append(bs, limitedBackend(fmt.Sprint("b", i), fmt.Sprintf("b%d:80", i), 1, time.Second))
			}
			p := NewPool(bs, balance, false, discard)
			var held []*Slot
			for range 3 {
				b := p.pick(0, nil)
				s := b.tryTake()
				if s == nil {
					t.Fatalf("%s picked while full", b.Name)
				}
				held = append(held, s)
			}
			for _, b := range bs {
				if b.InFlight() != 1 {
					t.Errorf("%s has %d in flight; each should have one", b.Name, b.InFlight())
				}
			}
			// All full: the pick still names one, to queue on.
			if p.pick(0, nil) == nil {
				t.Error("no backend to queue on")
			}
			var wg sync.WaitGroup
			for _, s := range held {
				wg.Add(1)
				go func() { defer wg.Done(); s.Release() }()
			}
			wg.Wait()
		})
	}
}

// A request that finds its backend's queue at queue-size goes to another
// backend of the pool; when every queue is full it gets 503 at once.
func TestQueueSize(t *testing.T) {
	t.Parallel()
	var load concurrency
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		load.enter()
		defer load.leave()
		<-release
		io.WriteString(w, "ok")
	}))
	defer srv.Close()
	var bs []*Backend
	for i := range 2 {
		b := NewBackend(config.Backend{Name: fmt.Sprint("b", i), Address: srv.Listener.Addr().String(), Weight: 1,
			MaxConnections: 1, QueueTimeout: time.Minute, QueueSize: 1, Health: config.HealthCheck{Rise: 2, Fall: 3}}, nil, discard)
		defer b.Close()
		bs = append(bs, b)
	}
	front := httptest.NewServer(NewPool(bs, config.RoundRobin, false, discard))
	defer front.Close()
	get := func() (int, string) {
		resp, err := http.Get(front.URL)
		if err != nil {
			return 0, err.Error()
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode, string(body)
	}

	codes := make(chan int, 4)
	for range 4 {
		go func() { code, _ := get(); codes <- code }()
	}
	testutil.Eventually(t, "one request at each backend, one in each queue", func() bool {
		return load.now.Load() == 2 && bs[0].Queued() == 1 && bs[1].Queued() == 1
	})
	start := time.Now()
	code, body := get()
	if code != 503 || !strings.Contains(body, "queue-size") {
		t.Errorf("every queue full: %d %q, want 503 naming queue-size", code, body)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("the 503 took %v; a full queue refuses at once", d)
	}
	for _, b := range bs {
		if !b.Health().Up {
			t.Errorf("a full queue took %s down", b.Name)
		}
	}
	close(release)
	for range 4 {
		if code := <-codes; code != 200 {
			t.Errorf("queued request: %d, want 200", code)
		}
	}
}

// A Backend built by a reload for the same server carries on the old one's
// slots and queue: the limit counts both generations' requests, and a new
// max-connections applies at once.
func TestInheritKeepsSlotsAndQueue(t *testing.T) {
	t.Parallel()
	cfg := config.Backend{Name: "b", Address: "b:80", Weight: 1, MaxConnections: 2, QueueTimeout: time.Minute,
		QueueSize: 10, Health: config.HealthCheck{Rise: 2, Fall: 3}}
	old := NewBackend(cfg, nil, discard)
	var held []*Slot
	for range 2 {
		held = append(held, old.tryTake())
	}
	got := make(chan *Slot, 4)
	go func() {
		s, _ := old.take(context.Background())
		got <- s
	}()
	testutil.Eventually(t, "one queued on the old backend", func() bool { return old.Queued() == 1 })
	old.health.PassiveFailed("refused")

	cfg.Weight = 5
	nb := NewBackend(cfg, nil, discard)
	if !nb.SameServer(old) {
		t.Fatal("same connect, not the same server")
	}
	nb.Inherit(old)
	if nb.InFlight() != 2 || nb.Queued() != 1 || nb.tryTake() != nil {
		t.Fatalf("after Inherit: in flight %d, queued %d, or a slot free; want 2, 1, none", nb.InFlight(), nb.Queued())
	}
	// A slot of the old generation, released, goes to the request queued
	// on it; the count stays at the limit.
	held[0].Release()
	s := <-got
	if s.Backend() != old || nb.InFlight() != 2 {
		t.Errorf("hand-over: backend %s, in flight %d; want the old backend's, 2", s.Backend().Name, nb.InFlight())
	}
	held[0] = s
	// Health carried on: one more failure with fall 2 takes it down.
	cfg.Health.Fall = 2
	next := NewBackend(cfg, nil, discard)
	next.Inherit(nb)
	next.health.PassiveFailed("refused")
	if next.Health().Up {
		t.Error("passive failures were not carried over")
	}

	// A lower limit cuts nothing, and lets nobody in until the count falls
	// below it.
	cfg.MaxConnections = 1
	lower := NewBackend(cfg, nil, discard)
	lower.Inherit(next)
	go func() {
		s, _ := lower.take(context.Background())
		got <- s
	}()
	testutil.Eventually(t, "one queued under the lower limit", func() bool { return lower.Queued() == 1 })
	held[0].Release()
	if lower.InFlight() != 1 || lower.Queued() != 1 {
		t.Errorf("at the lower limit: in flight %d, queued %d; want 1, 1", lower.InFlight(), lower.Queued())
	}
	// A higher one lets the queue in at once.
	cfg.MaxConnections = 3
	higher := NewBackend(cfg, nil, discard)
	higher.Inherit(lower)
	held[0] = <-got
	if higher.InFlight() != 2 || higher.Queued() != 0 {
		t.Errorf("after raising the limit: in flight %d, queued %d; want 2, 0", higher.InFlight(), higher.Queued())
	}
	held[0].Release()
	held[1].Release()
	if higher.InFlight() != 0 {
		t.Errorf("in flight %d after every release", higher.InFlight())
	}
}
