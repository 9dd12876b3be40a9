package upstream

import "sync/atomic"

// Pool picks backends in strict rotation. A backend listed twice gets two turns
// per round. It is safe for concurrent use and takes no lock.
type Pool struct {
	backends []*Backend
	next     atomic.Uint64
}

// NewPool returns a pool over backends, in the given order. It panics on an
// empty list: config validation rules that out.
func NewPool(backends []*Backend) *Pool {
	if len(backends) == 0 {
		panic("upstream: empty pool")
	}
	return &Pool{backends: backends}
}

// Next returns the backend whose turn it is.
func (p *Pool) Next() *Backend {
	n := p.next.Add(1) - 1
	return p.backends[n%uint64(len(p.backends))]
}

// Len is the number of entries, counting repeats.
func (p *Pool) Len() int { return len(p.backends) }
