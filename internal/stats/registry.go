package stats

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/hipsterd/hipsterd/internal/upstream"
)

// Registry holds the counts of every frontend and backend of the running
// configuration, and of the process. It is safe for concurrent use.
type Registry struct {
	version string
	started time.Time
	prom    *prometheus.Registry
	// openConns returns the open connections of each http frontend, by
	// name, hijacked ones excluded; nil: none known.
	openConns func() map[string]int64

	reloadsOK     atomic.Uint64
	reloadsFailed atomic.Uint64
	generation    atomic.Uint64
	stopping      atomic.Bool

	mu            sync.Mutex
	layout        *Layout
	frontends     map[string]*Frontend // the layout's, by name
	lastApplied   time.Time            // of the current configuration
	lastReloadErr string               // of the last reload, if it failed
	lastFailed    time.Time
}

// NewRegistry returns a registry; openConns, if not nil, tells the open
// connections of each http frontend.
func NewRegistry(openConns func() map[string]int64) *Registry {
	r := &Registry{
		version:   "dev",
		started:   time.Now(),
		prom:      prometheus.NewRegistry(),
		openConns: openConns,
		layout:    &Layout{},
		frontends: map[string]*Frontend{},
	}
	r.prom.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collector{r},
	)
	return r
}

// SetVersion sets the version shown. Call it before the registry is
// served.
func (r *Registry) SetVersion(v string) { r.version = v }

// Layout is what a configuration serves, as the status page shows it.
type Layout struct {
	Frontends []FrontendLayout // in file order
	Backends  []*upstream.Backend
	Certs     []Cert
}

// FrontendLayout is one frontend and the pools it forwards to.
type FrontendLayout struct {
	*Frontend
	Bind  string
	Pools []PoolLayout // the frontend's backends first, then each [host]'s
	// routes are the frontend's series: NoBackend's, then each backend's
	// once, in pool order (Swap).
	routes []*Route
}

// PoolLayout is one pool of a frontend.
type PoolLayout struct {
	// Name is "" for the frontend's own backends, else the names of the
	// [host] section.
	Name     string
	Backends []*upstream.Backend
}

// Cert is a certificate a frontend serves.
type Cert struct {
	Frontend string
	Name     string // its first DNS name, else its subject's common name
	NotAfter time.Time
}

// Frontend returns the counts of the frontend called name, of mode ("http"
// or "tcp"): those of the running configuration if it has the same
// frontend, else new ones. They are counted on at once, and shown from the
// Swap of a layout that holds them.
func (r *Registry) Frontend(name, mode string) *Frontend {
	r.mu.Lock()
	defer r.mu.Unlock()
	if f := r.frontends[name]; f != nil && f.mode == mode {
		return f
	}
	return newFrontend(name, mode)
}

// Swap makes l the layout shown, for a configuration just applied: the
// series of frontends and backends no longer in it are let go.
func (r *Registry) Swap(l *Layout) {
	frontends := make(map[string]*Frontend, len(l.Frontends))
	for i := range l.Frontends {
		fl := &l.Frontends[i]
		f := fl.Frontend
		frontends[f.name] = f
		fl.routes = append(fl.routes[:0], f.none)
		keep := map[string]bool{}
		for _, p := range fl.Pools {
			for _, b := range p.Backends {
				if !keep[b.Name] {
					keep[b.Name] = true
					fl.routes = append(fl.routes, f.Route(b.Name))
				}
			}
		}
		f.mu.Lock()
		for name := range f.routes {
			if !keep[name] {
				delete(f.routes, name)
			}
		}
		f.mu.Unlock()
	}
	r.generation.Add(1)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.layout, r.frontends, r.lastApplied = l, frontends, time.Now()
}

// Reloaded counts a reload, failed when err is not nil.
func (r *Registry) Reloaded(err error) {
	if err == nil {
		r.reloadsOK.Add(1)
		return
	}
	r.reloadsFailed.Add(1)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lastReloadErr, r.lastFailed = err.Error(), time.Now()
}

// ShuttingDown makes /healthz answer 503 from now on.
func (r *Registry) ShuttingDown() { r.stopping.Store(true) }

// current returns the layout shown and when it was applied.
func (r *Registry) current() (*Layout, time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.layout, r.lastApplied
}

// conns returns the open connections by frontend: the server's count for
// http frontends, the tunnels for tcp ones.
func (r *Registry) conns(l *Layout) map[string]int64 {
	out := map[string]int64{}
	if r.openConns != nil {
		out = r.openConns()
	}
	for _, fl := range l.Frontends {
		if fl.mode == "tcp" {
			out[fl.name] = fl.connsOpen.Load()
		}
	}
	return out
}
