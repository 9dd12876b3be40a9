package stats

import (
	"slices"
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
	// conns tells the client connections and their limits; nil: none
	// known.
	connsOf func() []Conns
	// managedOf lists the ACME certificates; nil: none.
	managedOf func() []ManagedCert

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

// Conns are the client connections open against a max-connections limit:
// a frontend's, or with Frontend "", the process's.
type Conns struct {
	Frontend string
	Max      int64 // zero: no limit
	// Open counts an http frontend's connections not taken over by a
	// tunnel; the registry adds the tunnels it counted.
	Open int64
	// Reached counts the times the limit was found full and accepting
	// stopped.
	Reached uint64
}

// NewRegistry returns a registry; conns, if not nil, tells the client
// connections and their limits (a frontend may be listed more than once,
// for each of its sockets).
func NewRegistry(conns func() []Conns) *Registry {
	r := &Registry{
		version:   "dev",
		started:   time.Now(),
		prom:      prometheus.NewRegistry(),
		connsOf:   conns,
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
	Frontends  []FrontendLayout // in file order
	Backends   []*upstream.Backend
	Certs      []Cert
	AccessLogs []AccessLog
}

// AccessLog is an access log file, for the lines it could not write.
type AccessLog interface {
	Path() string
	Lost() uint64
}

// FrontendLayout is one frontend and the pools it forwards to.
type FrontendLayout struct {
	*Frontend
	Bind  string
	HTTPS bool         // TLS to clients
	Pools []PoolLayout // the frontend's backends first, then each [host]'s, then each route's
	// Routes are the names of the frontend's routes, in its order.
	Routes []string
	// routes are the frontend's series: NoBackend's, then each backend's
	// once, in pool order (Swap).
	routes []*Route
}

// PoolLayout is one pool of a frontend.
type PoolLayout struct {
	// Name is "" for the frontend's own backends and for a route's, else
	// the names of the [host] section.
	Name     string
	Route    string // the [route]'s name, for a route's pool
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
		for name := range f.paths {
			if !slices.Contains(fl.Routes, name) {
				delete(f.paths, name)
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

// conns returns the connections of each frontend of l, by name, and the
// process's: those the server counts, and the tunnels.
func (r *Registry) conns(l *Layout) (byFrontend map[string]Conns, global Conns) {
	byFrontend = map[string]Conns{}
	var counts []Conns
	if r.connsOf != nil {
		counts = r.connsOf()
	}
	for _, c := range counts {
		if c.Frontend == "" {
			global = c
			continue
		}
		sum := byFrontend[c.Frontend]
		sum.Frontend = c.Frontend
		sum.Max = max(sum.Max, c.Max) // each socket of a frontend has its limit
		sum.Open += c.Open
		sum.Reached += c.Reached
		byFrontend[c.Frontend] = sum
	}
	global.Open = 0
	for _, fl := range l.Frontends {
		c := byFrontend[fl.name]
		for _, rt := range fl.routes {
			c.Open += rt.tunnels.Load()
		}
		byFrontend[fl.name] = c
		global.Open += c.Open
	}
	return byFrontend, global
}
