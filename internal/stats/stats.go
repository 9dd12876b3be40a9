// Package stats counts what hipsterd serves and shows it: Prometheus
// metrics (/metrics), a live status page (/) and its data (/status.json),
// and a health answer for whatever is in front of hipsterd (/healthz).
//
// Counting costs a few atomic adds per request and nothing else: each
// frontend's series, and each of its backends', are resolved when the
// configuration is built (Registry.Frontend, Frontend.Route) and found
// through the request's exchange, which the pool fills in. Labels are
// only ever put together when Prometheus scrapes.
//
//	reg := stats.NewRegistry(nil)
//	f := reg.Frontend("web", "http")
//	pool.SetSeries(func(b *upstream.Backend) exchange.Series { return f.Route(b.Name) })
//	handler = (&exchange.Frontend{Sinks: []exchange.Sink{f}}).Handler(handler)
//	reg.Swap(&stats.Layout{…})
//	http.Serve(ln, reg.Handler())
package stats

import (
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hipsterd/hipsterd/internal/exchange"
)

// NoBackend is the backend label of requests no backend was involved in (a
// 503 without a pool, a redirect).
const NoBackend = "-"

// durationBuckets are the upper bounds, in seconds, of the request and
// response header histograms: from a millisecond, for proxies on one
// host, to a minute, response-timeout's default.
var durationBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}

// Frontend holds the counts of one frontend. It outlives reloads that keep
// the frontend's name.
type Frontend struct {
	name string
	mode string

	inflight atomic.Int64
	accepted atomic.Uint64
	bytesIn  atomic.Uint64
	bytesOut atomic.Uint64
	none     *Route // requests no backend was involved in

	mu     sync.Mutex
	routes map[string]*Route       // by backend name
	paths  map[string]*RouteCounts // by [route] name
}

func newFrontend(name, mode string) *Frontend {
	f := &Frontend{name: name, mode: mode, routes: map[string]*Route{}, paths: map[string]*RouteCounts{}}
	f.none = newRoute(f, NoBackend)
	return f
}

// Route returns the series of the frontend's requests to backend, the same
// one for as long as both stay in the configuration.
func (f *Frontend) Route(backend string) *Route {
	f.mu.Lock()
	defer f.mu.Unlock()
	r := f.routes[backend]
	if r == nil {
		r = newRoute(f, backend)
		f.routes[backend] = r
	}
	return r
}

// RouteSeries returns the counts of the requests the frontend's [route]
// called name took, the same for as long as the frontend lists the route.
func (f *Frontend) RouteSeries(name string) *RouteCounts {
	f.mu.Lock()
	defer f.mu.Unlock()
	rc := f.paths[name]
	if rc == nil {
		rc = &RouteCounts{name: name}
		f.paths[name] = rc
	}
	return rc
}

// RouteCounts counts the requests one [route] of a frontend took, by
// status code.
type RouteCounts struct {
	name  string
	codes [600]atomic.Uint64 // as Route's
}

// Done counts a request answered with code.
func (rc *RouteCounts) Done(code int, _, _ time.Duration) {
	if code < 100 || code >= len(rc.codes) {
		code = 0
	}
	rc.codes[code].Add(1)
}

// Accepted counts a connection accepted by the frontend.
func (f *Frontend) Accepted() { f.accepted.Add(1) }

// Refused counts a request the HTTP parser refused with code, which no
// handler saw, as one no backend was involved in.
func (f *Frontend) Refused(code int) {
	if code < 100 || code >= len(f.none.codes) {
		code = 0
	}
	f.none.codes[code].Add(1)
}

// Route counts the requests of one frontend to one backend: by status code,
// their durations, and the tunnels open.
type Route struct {
	frontend *Frontend
	backend  string
	codes    [600]atomic.Uint64 // by status code; 0 holds those outside 100 to 599
	tunnels  atomic.Int64
	duration prometheus.Histogram
	header   prometheus.Histogram // nil for NoBackend
}

func newRoute(f *Frontend, backend string) *Route {
	labels := prometheus.Labels{"frontend": f.name, "backend": backend}
	r := &Route{frontend: f, backend: backend}
	r.duration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:        "hipsterd_request_duration_seconds",
		Help:        "Time from a request's arrival to the end of its response (to the backend's 101, for a WebSocket).",
		ConstLabels: labels,
		Buckets:     durationBuckets,
	})
	if backend != NoBackend {
		r.header = prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:        "hipsterd_backend_header_duration_seconds",
			Help:        "Time from a request's first try to the backend's response header, retries included.",
			ConstLabels: labels,
			Buckets:     durationBuckets,
		})
	}
	return r
}

// Done counts a request answered with code, which took total, and header
// until the backend's response header (0 when none came).
func (r *Route) Done(code int, total, header time.Duration) {
	if code < 100 || code >= len(r.codes) {
		code = 0
	}
	r.codes[code].Add(1)
	r.duration.Observe(total.Seconds())
	if header > 0 && r.header != nil {
		r.header.Observe(header.Seconds())
	}
}

// routeOf is the series an exchange was counted in: its backend's, or the
// frontend's own when no backend was involved.
func (f *Frontend) routeOf(x *exchange.Exchange) *Route {
	if r, ok := x.Series.(*Route); ok && r != nil {
		return r
	}
	return f.none
}

// Begin counts a request in flight, or a tcp connection's tunnel open
// (exchange.Sink).
func (f *Frontend) Begin(x *exchange.Exchange) {
	if !x.HTTP() {
		f.routeOf(x).tunnels.Add(1)
		return
	}
	f.inflight.Add(1)
}

// Tunnel counts a WebSocket request whose tunnel outlives its handler now,
// with its 101, and its tunnel as open until it ends.
func (f *Frontend) Tunnel(x *exchange.Exchange) {
	f.count(x, http.StatusSwitchingProtocols)
	f.routeOf(x).tunnels.Add(1)
}

// End counts the end of an exchange: a request with its status, or a
// tunnel's close, with the bytes received from the client and sent to it.
func (f *Frontend) End(x *exchange.Exchange) {
	switch {
	case x.Tunneled:
		f.routeOf(x).tunnels.Add(-1)
	case !x.HTTP():
		return // a tcp connection no backend took: never counted open
	default:
		f.count(x, x.Status())
	}
	f.bytesIn.Add(uint64(x.BytesIn.Load()))
	f.bytesOut.Add(uint64(x.BytesOut))
}

// count counts a request with the status it got.
func (f *Frontend) count(x *exchange.Exchange, status int) {
	f.inflight.Add(-1)
	total := time.Since(x.Start)
	f.routeOf(x).Done(status, total, x.Header)
	if rs := x.RouteSeries; rs != nil {
		rs.Done(status, total, x.Header)
	}
}
