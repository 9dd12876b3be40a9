// Package stats counts what hipsterd serves and shows it: Prometheus
// metrics (/metrics), a live status page (/) and its data (/status.json),
// and a health answer for whatever is in front of hipsterd (/healthz).
//
// Counting costs a few atomic adds per request and nothing else: each
// frontend's series, and each of its backends', are resolved when the
// configuration is built (Registry.Frontend, Frontend.Route) and found
// through the request's exchange.Info, which the pool fills in. Labels are
// only ever put together when Prometheus scrapes.
//
//	reg := stats.NewRegistry(nil)
//	f := reg.Frontend("web", "http")
//	pool.SetSeries(func(b *upstream.Backend) exchange.Series { return f.Route(b.Name) })
//	handler = f.Handler(handler)
//	reg.Swap(&stats.Layout{…})
//	http.Serve(ln, reg.Handler())
package stats

import (
	"io"
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

// routeOf is the series a request was counted in: its backend's, or the
// frontend's own when no backend was involved.
func (f *Frontend) routeOf(info *exchange.Info) *Route {
	if r, ok := info.Series.(*Route); ok && r != nil {
		return r
	}
	return f.none
}

// TCPOpened counts a tcp frontend's connection to the backend of info.
func (f *Frontend) TCPOpened(info *exchange.Info) {
	f.routeOf(info).tunnels.Add(1)
}

// TCPClosed counts the end of a connection TCPOpened counted, with the
// bytes received from the client and sent to it.
func (f *Frontend) TCPClosed(info *exchange.Info, in, out int64) {
	f.routeOf(info).tunnels.Add(-1)
	f.bytesIn.Add(uint64(in))
	f.bytesOut.Add(uint64(out))
}

// Handler wraps next, a frontend's handler, so that every request it serves
// is counted. It puts an exchange.Info in the request's context, unless an
// outer handler did, for the pool to fill in.
func (f *Frontend) Handler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rw := &responseWriter{ResponseWriter: w, f: f, start: time.Now()}
		rw.info = exchange.FromContext(r.Context())
		if rw.info == nil {
			rw.info = &rw.ownInfo
			r = r.WithContext(exchange.NewContext(r.Context(), rw.info))
		} else if hasBody(r) {
			// A copy carries the counting body: net/http looks at the
			// original's body to decide what to do with what is left.
			r = r.WithContext(r.Context())
		}
		if hasBody(r) {
			rw.body.ReadCloser = r.Body
			r.Body = &rw.body
		}
		f.inflight.Add(1)
		rw.r = r
		// Deferred, so that a handler that aborts with a panic (as
		// ReverseProxy does when a response body breaks) is counted too.
		defer rw.done()
		next.ServeHTTP(rw, r)
	})
}

func hasBody(r *http.Request) bool { return r.Body != nil && r.Body != http.NoBody }

// statusClientGone is counted, as the access log writes it, for a request
// whose client went away before any response was sent.
const statusClientGone = 499

// responseWriter records the status and the body size of a response.
// Unwrap keeps the wrapped writer's Flush and Hijack reachable through
// http.ResponseController.
type responseWriter struct {
	http.ResponseWriter
	f        *Frontend
	r        *http.Request
	start    time.Time
	status   int
	bytes    int64
	detached bool
	body     countingBody
	info     *exchange.Info
	ownInfo  exchange.Info
}

func (rw *responseWriter) WriteHeader(code int) {
	// 1xx responses other than 101 are interim; the final status follows.
	if rw.status == 0 && (code >= 200 || code == http.StatusSwitchingProtocols) {
		rw.status = code
	}
	rw.ResponseWriter.WriteHeader(code)
}

func (rw *responseWriter) Write(p []byte) (int, error) {
	if rw.status == 0 {
		rw.status = http.StatusOK
	}
	n, err := rw.ResponseWriter.Write(p)
	rw.bytes += int64(n)
	return n, err
}

// Unwrap returns the wrapped writer, for http.ResponseController.
func (rw *responseWriter) Unwrap() http.ResponseWriter { return rw.ResponseWriter }

// count counts the request with the status it got.
func (rw *responseWriter) count(status int) *Route {
	f := rw.f
	f.inflight.Add(-1)
	f.bytesIn.Add(uint64(rw.body.n.Load()))
	f.bytesOut.Add(uint64(rw.bytes))
	route := f.routeOf(rw.info)
	total := time.Since(rw.start)
	route.Done(status, total, rw.info.Header)
	if rs := rw.info.RouteSeries; rs != nil {
		rs.Done(status, total, rw.info.Header)
	}
	return route
}

func (rw *responseWriter) done() {
	if rw.detached {
		return
	}
	status := rw.status
	if status == 0 {
		if rw.r.Context().Err() != nil {
			status = statusClientGone
		} else {
			status = http.StatusOK
		}
	}
	rw.count(status)
}

// detacher is a writer that logs or counts a request when its handler
// returns (proxy.Detacher).
type detacher interface {
	Detach() (end func(status int, bytesToClient int64))
}

// Detach counts a WebSocket request whose tunnel outlives its handler now,
// and its tunnel as open until the function it returns is called. An outer
// writer that detaches too (the access log's) hears of it in turn.
func (rw *responseWriter) Detach() func(status int, bytesToClient int64) {
	rw.detached = true
	var outer func(int, int64)
	if d, ok := rw.ResponseWriter.(detacher); ok {
		outer = d.Detach()
	}
	route := rw.count(http.StatusSwitchingProtocols)
	route.tunnels.Add(1)
	f := rw.f
	return func(status int, n int64) {
		route.tunnels.Add(-1)
		f.bytesOut.Add(uint64(n))
		if outer != nil {
			outer(status, n)
		}
	}
}

// countingBody counts the bytes of a request body read.
// The body may still be read, by the transport's goroutine sending it, as
// the handler returns: n is atomic.
type countingBody struct {
	io.ReadCloser
	n atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}
