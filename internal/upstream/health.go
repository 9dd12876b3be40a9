package upstream

import (
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// Health is a backend's up/down state. A backend starts up. Two counts can
// take it down, each after fall consecutive failures:
//
//   - active checks that failed, reset only by a passing check: traffic
//     the backend still answers says nothing about its health check, as in
//     HAProxy and Caddy;
//   - passive failures of proxied traffic (a refused or timed-out connect,
//     a failed TLS handshake, a connection lost before any response
//     header, a response-timeout), reset by any response.
//
// With active checks, rise consecutive passing checks bring a down backend
// back. Without them a down backend is given another try after retryAfter,
// by one request at a time (admit), and the first response from it brings
// it back.
type Health struct {
	name       string
	log        *slog.Logger
	rise, fall int // guarded by mu
	active     atomic.Bool
	retryAfter atomic.Int64     // a time.Duration
	now        func() time.Time // a field so that tests can move time

	up      atomic.Bool
	retryAt atomic.Int64 // UnixNano; for a down backend without active checks
	probing atomic.Bool  // a request is trying the down backend: see admit
	clean   atomic.Bool  // up with no passive failure counted: the fast path of Answered

	mu           sync.Mutex
	checkFails   int
	checkPasses  int
	passiveFails int
	lastChange   time.Time
	lastCheck    string // the last check's result, for the status page
}

func newHealth(name string, rise, fall int, active bool, retryAfter time.Duration, log *slog.Logger) *Health {
	h := &Health{name: name, log: log, now: time.Now}
	h.configure(rise, fall, active, retryAfter)
	h.up.Store(true)
	h.clean.Store(true)
	h.lastChange = h.now()
	return h
}

// configure sets how h counts, for a backend whose section a reload
// changed: its up/down state and counts carry on under the new figures.
func (h *Health) configure(rise, fall int, active bool, retryAfter time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.rise, h.fall = rise, fall
	h.active.Store(active)
	h.retryAfter.Store(int64(retryAfter))
}

// Up reports whether the backend may be sent traffic: it is up, or it is
// down, due another try, and no request is trying it now.
func (h *Health) Up() bool {
	if h.up.Load() {
		return true
	}
	return !h.active.Load() && !h.probing.Load() && h.now().UnixNano() >= h.retryAt.Load()
}

// admit reports whether a request may go to the backend, and whether it is
// the one request that tries the down backend (probe). Without active
// checks a down backend takes one request at a time once retryAfter has
// passed, so that the others do not wait for a connect that may never
// complete; the caller ends a probe with endProbe, after it recorded the
// outcome.
func (h *Health) admit() (probe, ok bool) {
	if h.up.Load() {
		return false, true
	}
	if h.active.Load() || h.now().UnixNano() < h.retryAt.Load() || !h.probing.CompareAndSwap(false, true) {
		return false, false
	}
	return true, true
}

// endProbe ends the try admit allowed. A probe that ended without an
// outcome (the client left) lets the next request try at once.
func (h *Health) endProbe() { h.probing.Store(false) }

// CheckFailed records a failed active check; reason says what failed.
func (h *Health) CheckFailed(reason string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.lastCheck = reason
	h.checkPasses = 0
	h.checkFails++
	if h.up.Load() && h.checkFails >= h.fall {
		h.down(reason)
	}
}

// CheckPassed records a passing active check.
func (h *Health) CheckPassed() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.lastCheck = "passed"
	h.checkFails = 0
	if h.up.Load() {
		return
	}
	if h.checkPasses++; h.checkPasses >= h.rise {
		h.toUp()
	}
}

// PassiveFailed records a failure of proxied traffic; reason says what
// failed.
func (h *Health) PassiveFailed(reason string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.clean.Store(false)
	h.passiveFails++
	switch {
	case h.up.Load() && h.passiveFails >= h.fall:
		h.down(reason)
	case !h.up.Load() && !h.active.Load():
		// The retry failed: wait again.
		h.retryAt.Store(h.now().Add(h.wait()).UnixNano())
	}
}

// Answered records a response from the backend, of any status.
func (h *Health) Answered() {
	if h.clean.Load() {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.passiveFails = 0
	if h.up.Load() {
		h.clean.Store(true)
		return
	}
	if !h.active.Load() {
		h.toUp()
	}
}

// down takes the backend down; h.mu is held.
func (h *Health) down(reason string) {
	h.up.Store(false)
	h.checkPasses = 0
	h.lastChange = h.now()
	h.retryAt.Store(h.now().Add(h.wait()).UnixNano())
	h.log.Warn("backend is DOWN: "+reason, "backend", h.name)
}

// wait is how long a down backend waits for its next try.
func (h *Health) wait() time.Duration { return time.Duration(h.retryAfter.Load()) }

// toUp brings the backend up with clean counts; h.mu is held.
func (h *Health) toUp() {
	h.checkFails, h.checkPasses, h.passiveFails = 0, 0, 0
	h.up.Store(true)
	h.clean.Store(true)
	h.lastChange = h.now()
	h.log.Info("backend is UP", "backend", h.name)
}

// State is a snapshot of a backend's health, for status pages.
type State struct {
	Up         bool
	LastChange time.Time
	LastCheck  string // "" without active checks
}

// State returns a snapshot of h.
func (h *Health) State() State {
	h.mu.Lock()
	defer h.mu.Unlock()
	return State{Up: h.up.Load(), LastChange: h.lastChange, LastCheck: h.lastCheck}
}
