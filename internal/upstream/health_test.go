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
	h.PassiveFailed("refused")
	h.PassiveFailed("refused")
	h.Answered() // passive failures count only while consecutive
	h.PassiveFailed("refused")
	h.PassiveFailed("refused")
	if !h.Up() {
		t.Fatal("down after 2 consecutive failures with fall 3")
	}
	h.PassiveFailed("refused")
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
	h.PassiveFailed("refused again")
	if h.Up() {
		t.Fatal("a failed retry leaves it up")
	}
	clock.add(2 * time.Second)
	h.Answered()
	clock.add(-time.Hour) // only the state counts now, not the retry time
	if !h.Up() {
		t.Fatal("a successful retry does not bring it up")
	}
}

func TestHealthActive(t *testing.T) {
	t.Parallel()
	clock := &fakeClock{t: time.Unix(1000, 0)}
	h := withClock(newHealth("b", 2, 3, true, 2*time.Second, discard), clock)
	// Traffic the backend answers says nothing of its check: the check
	// failures add up however many responses come between them.
	for i := 0; i < 3; i++ {
		h.CheckFailed("GET /health: 500")
		for range 10 {
			h.Answered()
		}
	}
	if h.Up() {
		t.Fatal("answered traffic kept a backend that fails its checks up")
	}
	clock.add(time.Hour)
	if h.Up() {
		t.Fatal("a checked backend that is down is retried by requests")
	}
	h.Answered()
	if h.Up() {
		t.Fatal("a response brought a checked backend up")
	}
	h.CheckPassed()
	if h.Up() {
		t.Fatal("up after 1 pass with rise 2")
	}
	h.CheckFailed("GET /health: 500")
	h.CheckPassed()
	if h.Up() {
		t.Fatal("passes must be consecutive")
	}
	h.CheckPassed()
	if !h.Up() {
		t.Fatal("down after 2 consecutive passes")
	}
	if st := h.State(); !st.Up || st.LastCheck != "passed" || !st.LastChange.Equal(clock.t) {
		t.Errorf("state %+v", st)
	}
}

func TestHealthPassiveWithChecks(t *testing.T) {
	t.Parallel()
	h := newHealth("b", 2, 3, true, 2*time.Second, discard)
	// A passing check does not forgive passive failures: they are
	// counted apart.
	h.PassiveFailed("reset")
	h.CheckPassed()
	h.PassiveFailed("reset")
	if !h.Up() {
		t.Fatal("down after 2 passive failures with fall 3")
	}
	h.PassiveFailed("timeout")
	if h.Up() {
		t.Fatal("3 passive failures did not take a checked backend down")
	}
	h.CheckPassed()
	h.CheckPassed()
	if !h.Up() {
		t.Fatal("checks did not bring it back")
	}
}

// A down backend without active checks is tried by one request at a time;
// the others pass it over until that one's outcome is known.
func TestHealthOneProbe(t *testing.T) {
	t.Parallel()
	clock := &fakeClock{t: time.Unix(1000, 0)}
	h := withClock(newHealth("b", 2, 1, false, 2*time.Second, discard), clock)
	if probe, ok := h.admit(); !ok || probe {
		t.Fatalf("up: admit = %v, %v; want every request, none a probe", probe, ok)
	}
	h.PassiveFailed("refused")
	if _, ok := h.admit(); ok {
		t.Fatal("admitted before the interval passed")
	}
	clock.add(2 * time.Second)
	if probe, ok := h.admit(); !ok || !probe {
		t.Fatalf("due: admit = %v, %v; want the probe", probe, ok)
	}
	if _, ok := h.admit(); ok || h.Up() {
		t.Fatal("a second request admitted while the probe runs")
	}
	// The probe failed: wait another interval.
	h.PassiveFailed("refused")
	h.endProbe()
	if _, ok := h.admit(); ok {
		t.Fatal("admitted right after a failed probe")
	}
	clock.add(2 * time.Second)
	// A probe that ended without an outcome (its client left) lets the
	// next request try at once.
	h.admit()
	h.endProbe()
	if probe, ok := h.admit(); !ok || !probe {
		t.Fatalf("after a probe without outcome: admit = %v, %v; want a new probe", probe, ok)
	}
	h.Answered()
	h.endProbe()
	for range 3 {
		if probe, ok := h.admit(); !ok || probe {
			t.Fatalf("back up: admit = %v, %v; want every request", probe, ok)
		}
	}
}

// With active checks only the checks try a down backend.
func TestHealthActiveNoProbe(t *testing.T) {
	t.Parallel()
	clock := &fakeClock{t: time.Unix(1000, 0)}
	h := withClock(newHealth("b", 2, 1, true, 2*time.Second, discard), clock)
	h.CheckFailed("GET /health: 500")
	clock.add(time.Hour)
	if _, ok := h.admit(); ok {
		t.Fatal("a request admitted to a checked backend that is down")
	}
}
