package upstream

import (
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// Health is a backend's up/down state. A backend starts up. Consecutive
// failures (connects that failed, active checks that failed) take it down
// after fall of them; with active checks, rise consecutive passing checks
// bring it back. Without active checks a down backend is given another try
// after retryAfter, and the first request that reaches it brings it back.
type Health struct {
	name       string
	log        *slog.Logger
	rise, fall int
	active     bool
	retryAfter time.Duration
	now        func() time.Time // a field so that tests can move time

	up      atomic.Bool
	retryAt atomic.Int64 // UnixNano; for a down backend without active checks
	clean   atomic.Bool  // up with no failure counted: the fast path of Passed

	mu     sync.Mutex
	fails  int
	passes int
}

func newHealth(name string, rise, fall int, active bool, retryAfter time.Duration, log *slog.Logger) *Health {
	h := &Health{name: name, log: log, rise: rise, fall: fall, active: active, retryAfter: retryAfter, now: time.Now}
	h.up.Store(true)
	h.clean.Store(true)
	return h
}

// Up reports whether the backend may be sent traffic.
func (h *Health) Up() bool {
	if h.up.Load() {
		return true
	}
	return !h.active && h.now().UnixNano() >= h.retryAt.Load()
}

// Failed records a failure; reason says what failed, for the log.
func (h *Health) Failed(reason string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.clean.Store(false)
	h.passes = 0
	h.fails++
	switch {
	case h.up.Load() && h.fails >= h.fall:
		h.up.Store(false)
		h.retryAt.Store(h.now().Add(h.retryAfter).UnixNano())
		h.log.Warn("backend is DOWN: "+reason, "backend", h.name)
	case !h.up.Load() && !h.active:
		// The retry failed: wait again.
		h.retryAt.Store(h.now().Add(h.retryAfter).UnixNano())
	}
}

// Passed records a success: a response from the backend (check false) or a
// passing active check (check true).
func (h *Health) Passed(check bool) {
	if h.clean.Load() {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.fails = 0
	if h.up.Load() {
		h.clean.Store(true)
		return
	}
	if h.active && !check {
		return // only the checks bring a checked backend back
	}
	if check {
		if h.passes++; h.passes < h.rise {
			return
		}
	}
	h.passes = 0
	h.up.Store(true)
	h.clean.Store(true)
	h.log.Info("backend is UP", "backend", h.name)
}

// inherit takes over old's state, for a backend that survives a reload.
func (h *Health) inherit(old *Health) {
	old.mu.Lock()
	defer old.mu.Unlock()
	h.mu.Lock()
	defer h.mu.Unlock()
	h.fails, h.passes = old.fails, old.passes
	h.up.Store(old.up.Load())
	h.clean.Store(old.clean.Load())
	h.retryAt.Store(old.retryAt.Load())
}
