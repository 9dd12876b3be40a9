package upstream

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// ErrQueueTimeout is returned for a request that waited its backend's
// queue-timeout for a free connection.
var ErrQueueTimeout = errors.New("no free connection to the backend within queue-timeout")

// ErrQueueFull is returned for a request that found the queue of every
// backend it could go to at its queue-size.
var ErrQueueFull = errors.New("no free connection to the backend and its queue is full (queue-size)")

// A Slot is one request or tunnel in flight to a backend, as leastconn
// and max-connections count them. It is the only way the count changes: a
// slot is taken before the first byte goes to the backend, and Released,
// once, when the exchange is over; more calls do nothing.
type Slot struct {
	b    *Backend
	done atomic.Bool
}

// slots are what a backend owes the requests sent to it: its requests and
// tunnels in flight, and the queue for its max-connections. A reload that
// keeps a backend's connect hands them to the Backend built from the new
// section (Inherit), so that the limit holds across the reload: slots
// taken on the old Backend are released here too.
type slots struct {
	inflight atomic.Int64 // requests and tunnels: see Slot
	max      atomic.Int64 // max-connections; 0: no limit, and no queue
	size     atomic.Int64 // queue-size; 0: no limit

	mu      sync.Mutex
	waiting []chan struct{} // first come first served (HAProxy's server queue)
}

// setLimits sets max-connections and queue-size. A new max-connections
// applies at once to what is in flight: requests that a higher limit (or
// none) lets in leave the queue now; a lower one cuts nothing, and the
// queue waits until the count falls below it. Requests already queued stay
// queued when queue-size shrinks.
func (st *slots) setLimits(max, size int64) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.max.Store(max)
	st.size.Store(size)
	for len(st.waiting) > 0 && (max == 0 || st.inflight.Load() < max) {
		st.inflight.Add(1)
		st.pass()
	}
}

// pass hands a slot, counted already, to the first request in the queue,
// which may have queued on another generation's Backend; st.mu is held.
func (st *slots) pass() {
	ch := st.waiting[0]
	st.waiting = slices.Delete(st.waiting, 0, 1)
	ch <- struct{}{}
}

// full reports whether b has no free slot now.
func (b *Backend) full() bool {
	max := b.slots.max.Load()
	return max > 0 && b.slots.inflight.Load() >= max
}

// tryTake takes a slot if one is free and nobody waits for one.
func (b *Backend) tryTake() *Slot {
	st := b.slots
	if st.max.Load() == 0 {
		st.inflight.Add(1)
		return &Slot{b: b}
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if max := st.max.Load(); len(st.waiting) > 0 || max > 0 && st.inflight.Load() >= max {
		return nil
	}
	st.inflight.Add(1)
	return &Slot{b: b}
}

// take returns a slot, waiting in the backend's queue for up to its
// queue-timeout while none is free; it gives up when ctx ends, and at once
// with ErrQueueFull when queue-size requests wait already.
func (b *Backend) take(ctx context.Context) (*Slot, error) {
	if s := b.tryTake(); s != nil {
		return s, nil
	}
	st := b.slots
	st.mu.Lock()
	if max := st.max.Load(); len(st.waiting) == 0 && (max == 0 || st.inflight.Load() < max) {
		st.inflight.Add(1) // one was freed meanwhile
		st.mu.Unlock()
		return &Slot{b: b}, nil
	}
	if size := st.size.Load(); size > 0 && int64(len(st.waiting)) >= size {
		st.mu.Unlock()
		return nil, ErrQueueFull
	}
	ch := make(chan struct{}, 1)
	st.waiting = append(st.waiting, ch)
	st.mu.Unlock()

	timer := time.NewTimer(b.cfg.QueueTimeout)
	defer timer.Stop()
	var err error
	select {
	case <-ch:
		return &Slot{b: b}, nil
	case <-timer.C:
		err = ErrQueueTimeout
	case <-ctx.Done():
		err = ctx.Err()
	}
	st.mu.Lock()
	if i := slices.Index(st.waiting, ch); i >= 0 {
		st.waiting = slices.Delete(st.waiting, i, i+1)
		st.mu.Unlock()
		return nil, err
	}
	st.mu.Unlock()
	// A slot was handed over as the wait ended: pass it on.
	<-ch
	(&Slot{b: b}).Release()
	return nil, err
}

// Release gives the slot back: to the first request in the backend's
// queue, if any and the limit lets it in.
func (s *Slot) Release() {
	if !s.done.CompareAndSwap(false, true) {
		return
	}
	st := s.b.slots
	if st.max.Load() == 0 {
		// Nobody waits: setLimits let them all in as it lifted the limit.
		st.inflight.Add(-1)
		return
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if max := st.max.Load(); len(st.waiting) > 0 && (max == 0 || st.inflight.Load() <= max) {
		st.pass() // the count stays: the slot changes hands
		return
	}
	st.inflight.Add(-1)
}

// Backend is the backend the slot is held on.
func (s *Slot) Backend() *Backend { return s.b }
