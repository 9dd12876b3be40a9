package upstream

import (
	"testing"
	"time"
)

// fakeClock is a clock that moves only when told.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time             { return c.t }
func (c *fakeClock) add(d time.Duration)        { c.t = c.t.Add(d) }
func withClock(h *Health, c *fakeClock) *Health { h.now = c.now; return h }

func TestHealthPassive(t *testing.T) {
	t.Parallel()
	clock := &fakeClock{t: time.Unix(1000, 0)}
	h := withClock(newHealth("b", 2, 3, false, 2*time.Second, discard), clock)
	if !h.Up() {
		t.Fatal("a backend starts up")
	}
	h.Failed("refused")
	h.Failed("refused")
	h.Passed(false) // a success resets the count
	h.Failed("refused")
	h.Failed("refused")
	if !h.Up() {
		t.Fatal("down after 2 consecutive failures with fall 3")
	}
	h.Failed("refused")
	if h.Up() {
		t.Fatal("up after 3 consecutive failures")
	}
	clock.add(1999 * time.Millisecond)
	if h.Up() {
		t.Fatal("retried before the interval passed")
	}
	clock.add(time.Millisecond)
	if !h.Up() {
		t.Fatal("not retried after the interval")
	}
	h.Failed("refused again")
	if h.Up() {
		t.Fatal("a failed retry leaves it up")
	}
	clock.add(2 * time.Second)
	h.Passed(false)
	clock.add(-time.Hour) // only the state counts now, not the retry time
	if !h.Up() {
		t.Fatal("a successful retry does not bring it up")
	}
}

func TestHealthActive(t *testing.T) {
	t.Parallel()
	clock := &fakeClock{t: time.Unix(1000, 0)}
	h := withClock(newHealth("b", 2, 3, true, 2*time.Second, discard), clock)
	for i := 0; i < 3; i++ {
		h.Failed("GET /health: 500")
	}
	clock.add(time.Hour)
	if h.Up() {
		t.Fatal("a checked backend that is down is retried by requests")
	}
	h.Passed(false)
	if h.Up() {
		t.Fatal("a request's success brought a checked backend up")
	}
	h.Passed(true)
	if h.Up() {
		t.Fatal("up after 1 pass with rise 2")
	}
	h.Failed("GET /health: 500")
	h.Passed(true)
	if h.Up() {
		t.Fatal("passes must be consecutive")
	}
	h.Passed(true)
	if !h.Up() {
		t.Fatal("down after 2 consecutive passes")
	}
	other := newHealth("b", 2, 3, true, 2*time.Second, discard)
	for i := 0; i < 3; i++ {
		h.Failed("x")
	}
	other.inherit(h)
	if other.Up() {
		t.Error("state not inherited")
	}
}
