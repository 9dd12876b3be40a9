package stats

import (
	_ "embed"
	"encoding/json"
	"math"
	"net/http"
	"slices"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"

	"github.com/hipsterd/hipsterd/internal/upstream"
)

// Status is what /status.json answers, and what the status page shows.
type Status struct {
	Version       string    `json:"version"`
	Now           time.Time `json:"now"`
	Started       time.Time `json:"started"`
	UptimeSeconds float64   `json:"uptime_seconds"`
	// Generation counts the configurations applied, the first included;
	// Applied is when the running one was.
	Generation uint64    `json:"generation"`
	Applied    time.Time `json:"applied"`
	ReloadsOK  uint64    `json:"reloads_ok"`
	// ReloadsFailed counts failed reloads; LastReloadError is the error of
	// the last one, at LastReloadFailed, if any failed.
	ReloadsFailed    uint64     `json:"reloads_failed"`
	LastReloadError  string     `json:"last_reload_error,omitempty"`
	LastReloadFailed *time.Time `json:"last_reload_failed,omitempty"`
	ShuttingDown     bool       `json:"shutting_down"`
	// Connections are the client connections open over every frontend,
	// against [global] max-connections.
	Connections    int64            `json:"connections_open"`
	MaxConnections int64            `json:"max_connections"`
	Frontends      []FrontendStatus `json:"frontends"`
	// FrontendsTotal sums the counts of Frontends.
	FrontendsTotal FrontendCounts `json:"frontends_total"`
	// Certificates are those obtained from the ACME CA.
	Certificates []ManagedCert `json:"acme_certificates,omitempty"`
}

// FrontendStatus is one frontend's side of Status.
type FrontendStatus struct {
	Name  string `json:"name"`
	Mode  string `json:"mode"`
	Bind  string `json:"bind"`
	HTTPS bool   `json:"https"` // TLS to clients: https, or a tcp frontend's TLS
	// Certificates are those the frontend serves, its own and its [host]
	// sections', with their expiry.
	Certificates   []CertStatus `json:"certificates,omitempty"`
	MaxConnections int64        `json:"max_connections"` // 0: none
	FrontendCounts
	// Backends are the frontend's backends, each once, with the pools that
	// send it traffic; BackendsTotal sums them.
	Backends      []BackendStatus `json:"backends"`
	BackendsTotal BackendTotal    `json:"backends_total"`
	Routes        []RouteStatus   `json:"routes"`
}

// RouteStatus is one [route] of a frontend: the requests it took.
type RouteStatus struct {
	Name      string  `json:"name"`
	Requests  uint64  `json:"requests"`
	Responses Classes `json:"responses"`
}

// FrontendCounts are a frontend's counts, or their sum over frontends.
type FrontendCounts struct {
	ConnectionsOpen  int64  `json:"connections_open"`
	ConnectionsTotal uint64 `json:"connections_total"`
	InFlight         int64  `json:"in_flight"`
	BytesIn          uint64 `json:"bytes_in"`
	BytesOut         uint64 `json:"bytes_out"`
	// Requests and Responses count every request of the frontend;
	// NoBackend those no backend was involved in.
	Requests  uint64  `json:"requests"`
	Responses Classes `json:"responses"`
	NoBackend uint64  `json:"no_backend"`
}

func (c *FrontendCounts) add(o FrontendCounts) {
	c.ConnectionsOpen += o.ConnectionsOpen
	c.ConnectionsTotal += o.ConnectionsTotal
	c.InFlight += o.InFlight
	c.BytesIn += o.BytesIn
	c.BytesOut += o.BytesOut
	c.Requests += o.Requests
	c.NoBackend += o.NoBackend
	c.Responses.add(o.Responses)
}

// CertStatus is a certificate a frontend serves.
type CertStatus struct {
	Name     string    `json:"name"` // its first DNS name, else its subject's common name
	NotAfter time.Time `json:"not_after"`
	ACME     bool      `json:"acme,omitempty"` // obtained from the ACME CA, not a file
}

// Classes counts responses by status class ("2xx"); "other" holds codes
// outside 100 to 599.
type Classes map[string]uint64

func (c Classes) add(o Classes) {
	for k, n := range o {
		c[k] += n
	}
}

// BackendStatus is a backend as one frontend sees it. Requests,
// Responses, the latencies and Tunnels are this frontend's; the rest is
// the backend's, whichever frontend sent it traffic.
type BackendStatus struct {
	Name       string    `json:"name"`
	Addr       string    `json:"addr"`
	State      string    `json:"state"` // UP or DOWN
	LastChange time.Time `json:"last_change"`
	LastCheck  string    `json:"last_check,omitempty"` // the last active check's result
	Weight     int       `json:"weight"`
	// Pools are the frontend's pools that use the backend: "backends" for
	// its own backends key, "host NAME…" for a [host] section's, "route
	// NAME" for a [route]'s.
	Pools []string `json:"pools"`
	// P50 and P99 are estimated from the request duration histogram since
	// start, in seconds; absent before the first request.
	P50 *float64 `json:"p50_seconds,omitempty"`
	P99 *float64 `json:"p99_seconds,omitempty"`
	BackendCounts
}

// BackendCounts are a backend's counts, or their sum over backends.
type BackendCounts struct {
	Requests        uint64  `json:"requests"`
	Responses       Classes `json:"responses"`
	ConnectFailures uint64  `json:"connect_failures"`
	Retries         uint64  `json:"retries"`
	Resends         uint64  `json:"resends"`
	InFlight        int64   `json:"in_flight"`
	Queued          int     `json:"queued"` // waiting for max-connections
	Tunnels         int64   `json:"tunnels"`
}

func (c *BackendCounts) add(o BackendCounts) {
	c.Requests += o.Requests
	c.Responses.add(o.Responses)
	c.ConnectFailures += o.ConnectFailures
	c.Retries += o.Retries
	c.Resends += o.Resends
	c.InFlight += o.InFlight
	c.Queued += o.Queued
	c.Tunnels += o.Tunnels
}

// BackendTotal sums a frontend's backends, as HAProxy's Backend row does.
type BackendTotal struct {
	Up     int `json:"up"` // how many are UP
	Count  int `json:"count"`
	Weight int `json:"weight"`
	BackendCounts
}

// Status returns a snapshot of the registry.
func (r *Registry) Status() Status {
	l, applied := r.current()
	conns, global := r.conns(l)
	now := time.Now()
	s := Status{
		Version:        r.version,
		Now:            now,
		Started:        r.started,
		UptimeSeconds:  now.Sub(r.started).Seconds(),
		Generation:     r.generation.Load(),
		Applied:        applied,
		ReloadsOK:      r.reloadsOK.Load(),
		ReloadsFailed:  r.reloadsFailed.Load(),
		ShuttingDown:   r.stopping.Load(),
		Connections:    global.Open,
		MaxConnections: global.Max,
		Frontends:      []FrontendStatus{},
		FrontendsTotal: FrontendCounts{Responses: Classes{}},
		Certificates:   r.managed(),
	}
	r.mu.Lock()
	if r.lastReloadErr != "" {
		t := r.lastFailed
		s.LastReloadError, s.LastReloadFailed = r.lastReloadErr, &t
	}
	r.mu.Unlock()
	for _, fl := range l.Frontends {
		fs := frontendStatus(fl, conns[fl.name], l.Certs, s.Certificates)
		s.FrontendsTotal.add(fs.FrontendCounts)
		s.Frontends = append(s.Frontends, fs)
	}
	return s
}

// frontendStatus is the status of the frontend of fl, with conns its
// connections, among certs and managed the certificates of every
// frontend, from files and from the ACME CA.
func frontendStatus(fl FrontendLayout, conns Conns, certs []Cert, managed []ManagedCert) FrontendStatus {
	f := fl.Frontend
	fs := FrontendStatus{
		Name: f.name, Mode: f.mode, Bind: fl.Bind, HTTPS: fl.HTTPS,
		MaxConnections: conns.Max,
		FrontendCounts: FrontendCounts{
			ConnectionsOpen:  conns.Open,
			ConnectionsTotal: f.accepted.Load(),
			InFlight:         f.inflight.Load(),
			BytesIn:          f.bytesIn.Load(),
			BytesOut:         f.bytesOut.Load(),
			Responses:        Classes{},
		},
		Backends:      []BackendStatus{},
		BackendsTotal: BackendTotal{BackendCounts: BackendCounts{Responses: Classes{}}},
		Routes:        []RouteStatus{},
	}
	for _, name := range fl.Routes {
		rs := RouteStatus{Name: name, Responses: Classes{}}
		rs.Requests = f.RouteSeries(name).classes(rs.Responses)
		fs.Routes = append(fs.Routes, rs)
	}
	for _, c := range certs {
		if c.Frontend == f.name {
			fs.Certificates = append(fs.Certificates, CertStatus{Name: c.Name, NotAfter: c.NotAfter})
		}
	}
	for _, c := range managed {
		if !c.NotAfter.IsZero() && slices.Contains(c.Frontends, f.name) {
			fs.Certificates = append(fs.Certificates, CertStatus{Name: c.Names[0], NotAfter: c.NotAfter, ACME: true})
		}
	}
	routes := map[string]*Route{}
	for _, rt := range fl.routes {
		routes[rt.backend] = rt
		n := rt.classes(fs.Responses)
		fs.Requests += n
		if rt.backend == NoBackend {
			fs.NoBackend = n
		}
	}
	// A backend several pools list is one row: its counts are the
	// frontend's, whichever pool sent the request.
	index := map[string]int{}
	for _, p := range fl.Pools {
		pool := "backends"
		switch {
		case p.Route != "":
			pool = "route " + p.Route
		case p.Name != "":
			pool = "host " + p.Name
		}
		for _, b := range p.Backends {
			if i, ok := index[b.Name]; ok {
				if bs := &fs.Backends[i]; !slices.Contains(bs.Pools, pool) {
					bs.Pools = append(bs.Pools, pool)
				}
				continue
			}
			index[b.Name] = len(fs.Backends)
			fs.Backends = append(fs.Backends, backendStatus(b, pool, routes[b.Name]))
		}
	}
	for _, b := range fs.Backends {
		t := &fs.BackendsTotal
		t.Count++
		if b.State == "UP" {
			t.Up++
		}
		t.Weight += b.Weight
		t.add(b.BackendCounts)
	}
	return fs
}

// backendStatus is the status of b in pool, with rt the frontend's series
// of it (nil: none yet).
func backendStatus(b *upstream.Backend, pool string, rt *Route) BackendStatus {
	h, cs := b.Health(), b.Counters()
	bs := BackendStatus{
		Name: b.Name, Addr: b.Addr, State: "DOWN",
		LastChange: h.LastChange, LastCheck: h.LastCheck,
		Weight: b.Config().Weight,
		Pools:  []string{pool},
		BackendCounts: BackendCounts{
			Responses:       Classes{},
			ConnectFailures: cs.ConnectFailures.Load(),
			Retries:         cs.Retries.Load(),
			Resends:         cs.Resends.Load(),
			InFlight:        b.InFlight(),
			Queued:          b.Queued(),
		},
	}
	if h.Up {
		bs.State = "UP"
	}
	if rt != nil {
		bs.Requests = rt.classes(bs.Responses)
		bs.Tunnels = rt.tunnels.Load()
		bs.P50, bs.P99 = rt.quantiles()
	}
	return bs
}

// classes adds the route's responses to c by class and returns their sum.
func (rt *Route) classes(c Classes) uint64 { return addClasses(&rt.codes, c) }

// classes adds the route's responses to c by class and returns their sum.
func (rc *RouteCounts) classes(c Classes) uint64 { return addClasses(&rc.codes, c) }

func addClasses(codes *[600]atomic.Uint64, c Classes) uint64 {
	var sum uint64
	for code := range codes {
		n := codes[code].Load()
		if n == 0 {
			continue
		}
		class := "other"
		if code > 0 {
			class = string(rune('0'+code/100)) + "xx"
		}
		c[class] += n
		sum += n
	}
	return sum
}

// quantiles estimates the median and the 99th percentile of the route's
// request durations.
func (rt *Route) quantiles() (p50, p99 *float64) {
	var m dto.Metric
	if rt.duration.Write(&m) != nil || m.Histogram.GetSampleCount() == 0 {
		return nil, nil
	}
	a, b := quantile(0.5, m.Histogram), quantile(0.99, m.Histogram)
	return &a, &b
}

// quantile estimates the q-quantile of h as Prometheus's
// histogram_quantile does: linearly within the bucket it falls in. Past
// the last bound, it is the last bound.
func quantile(q float64, h *dto.Histogram) float64 {
	rank := q * float64(h.GetSampleCount())
	lower, below := 0.0, 0.0
	for _, b := range h.Bucket {
		upper, count := b.GetUpperBound(), float64(b.GetCumulativeCount())
		if count >= rank && !math.IsInf(upper, 1) {
			if count == below {
				return upper
			}
			return lower + (upper-lower)*(rank-below)/(count-below)
		}
		lower, below = upper, count
	}
	return lower
}

//go:embed favicon.svg
var favicon []byte

// Handler serves the stats listener: /metrics, / (the status page),
// /status.json, /healthz and the page's icon.
func (r *Registry) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(r.prom, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) { servePage(w, r.Status()) })
	mux.HandleFunc("GET /favicon.ico", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "image/svg+xml")
		w.Header().Set("Cache-Control", "max-age=86400")
		w.Write(favicon)
	})
	mux.HandleFunc("GET /status.json", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(r.Status())
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if r.stopping.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			w.Write([]byte("shutting down\n"))
			return
		}
		w.Write([]byte("ok\n"))
	})
	return mux
}
