package upstream

import (
	"sync/atomic"

	"github.com/hipsterd/hipsterd/internal/exchange"
)

// Counters are a backend's event counts, for the metrics. The Backends that
// follow one another under one name across reloads share them
// (ShareCounters), so that they count on.
type Counters struct {
	ChecksPassed    atomic.Uint64 // active health checks
	ChecksFailed    atomic.Uint64
	ConnectFailures atomic.Uint64 // connects (TLS handshake included) that failed
	// Retries counts the requests and tunnels that went on to the next
	// backend after this one failed them.
	Retries atomic.Uint64
	// Resends counts the requests sent again, on a new connection, after a
	// kept-alive connection closed as they went out.
	Resends atomic.Uint64
}

// Counters returns the backend's counters.
func (b *Backend) Counters() *Counters { return b.counters }

// ShareCounters makes b count on old's counters, for a backend rebuilt by a
// reload under the same name. Call it before b serves anything.
func (b *Backend) ShareCounters(old *Backend) { b.counters = old.counters }

// Backends returns the pool's backends, each once, in the order listed.
func (p *Pool) Backends() []*Backend { return p.unique }

// SetSeries gives the pool the metrics series of each of its backends, which
// it puts in the exchange of each request with the backend picked. Call
// it before the pool serves anything.
func (p *Pool) SetSeries(series func(*Backend) exchange.Series) {
	p.series = make([]exchange.Series, len(p.unique))
	for i, b := range p.unique {
		p.series[i] = series(b)
	}
}

// seriesOf returns b's series: a scan of the pool's few backends, cheaper
// than a map.
func (p *Pool) seriesOf(b *Backend) exchange.Series {
	for i, x := range p.unique {
		if x == b && i < len(p.series) {
			return p.series[i]
		}
	}
	return nil
}

// Queued is the number of requests and tunnels waiting for a slot of the
// backend's max-connections.
func (b *Backend) Queued() int {
	b.slots.mu.Lock()
	defer b.slots.mu.Unlock()
	return len(b.slots.waiting)
}
