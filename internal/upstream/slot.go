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

// A Slot is one request or tunnel in flight to a backend, as leastconn
// and max-connections count them. It is the only way the count changes: a
// slot is taken before the first byte goes to the backend, and Released,
// once, when the exchange is over; more calls do nothing.
type Slot struct {
	b    *Backend
	done atomic.Bool
}

// queue holds the requests waiting for a slot of a backend at its
// max-connections, first come first served (HAProxy's server queue).
type queue struct {
	max     int64 // 0: no limit, and no queue
	timeout time.Duration

	mu      sync.Mutex
	waiting []chan *Slot
}

// full reports whether b has no free slot now.
func (b *Backend) full() bool {
	return b.queue.max > 0 && b.inflight.Load() >= b.queue.max
}

// tryTake takes a slot if one is free and nobody waits for one.
func (b *Backend) tryTake() *Slot {
	q := &b.queue
	if q.max == 0 {
		b.inflight.Add(1)
		return &Slot{b: b}
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.waiting) > 0 || b.inflight.Load() >= q.max {
		return nil
	}
	b.inflight.Add(1)
	return &Slot{b: b}
}

// take returns a slot, waiting in the backend's queue for up to its
// queue-timeout while none is free; it gives up when ctx ends.
func (b *Backend) take(ctx context.Context) (*Slot, error) {
	if s := b.tryTake(); s != nil {
		return s, nil
	}
	q := &b.queue
	q.mu.Lock()
	if len(q.waiting) == 0 && b.inflight.Load() < q.max {
		b.inflight.Add(1) // one was freed meanwhile
		q.mu.Unlock()
		return &Slot{b: b}, nil
	}
	ch := make(chan *Slot, 1)
	q.waiting = append(q.waiting, ch)
	q.mu.Unlock()

	timer := time.NewTimer(q.timeout)
	defer timer.Stop()
	var err error
	select {
	case s := <-ch:
		return s, nil
	case <-timer.C:
		err = ErrQueueTimeout
	case <-ctx.Done():
		err = ctx.Err()
	}
	q.mu.Lock()
	if i := slices.Index(q.waiting, ch); i >= 0 {
		q.waiting = slices.Delete(q.waiting, i, i+1)
		q.mu.Unlock()
		return nil, err
	}
	q.mu.Unlock()
	// A slot was handed over as the wait ended: pass it on.
	(<-ch).Release()
	return nil, err
}

// Release gives the slot back: to the first request in the backend's
// queue, if any.
func (s *Slot) Release() {
	if !s.done.CompareAndSwap(false, true) {
		return
	}
	b := s.b
	q := &b.queue
	if q.max == 0 {
		b.inflight.Add(-1)
		return
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.waiting) > 0 {
		ch := q.waiting[0]
		q.waiting = slices.Delete(q.waiting, 0, 1)
		ch <- &Slot{b: b} // the count stays: the slot changes hands
		return
	}
	b.inflight.Add(-1)
}

// Backend is the backend the slot is held on.
func (s *Slot) Backend() *Backend { return s.b }
