package stats

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, labels, nil)
}

var (
	descRequests      = desc("hipsterd_requests_total", "Requests answered, by the status code sent to the client (backend \"-\": no backend was involved).", "frontend", "backend", "code")
	descRouteRequests = desc("hipsterd_route_requests_total", "Requests a [route] took, by the status code sent to the client.", "frontend", "route", "code")
	descTunnels       = desc("hipsterd_tunnels_open", "Tunnels open: WebSocket connections of http frontends, connections of tcp frontends.", "frontend", "backend")
	descInFlight      = desc("hipsterd_requests_in_flight", "Requests being served.", "frontend")
	descConnsOpen     = desc("hipsterd_connections_open", "Client connections open, WebSocket and tcp tunnels included.", "frontend")
	descConnsMax      = desc("hipsterd_connections_max", "The frontend's max-connections; 0: none.", "frontend")
	descConnsReached  = desc("hipsterd_connections_limit_reached_total", "Times the frontend's max-connections was found full and accepting stopped.", "frontend")
	descGlobalOpen    = desc("hipsterd_global_connections_open", "Client connections open over every frontend.")
	descGlobalMax     = desc("hipsterd_global_connections_max", "[global] max-connections in force.")
	descGlobalReached = desc("hipsterd_global_connections_limit_reached_total", "Times [global] max-connections was found full (or accept failed for want of file descriptors) and accepting stopped.")
	descConnsTotal    = desc("hipsterd_connections_total", "Client connections accepted.", "frontend")
	descBytesIn       = desc("hipsterd_received_bytes_total", "Bytes received from clients: request bodies, and what tcp frontends' clients sent.", "frontend")
	descBytesOut      = desc("hipsterd_sent_bytes_total", "Bytes sent to clients: response bodies, WebSocket tunnels' bytes, and what tcp frontends sent.", "frontend")
	descUp            = desc("hipsterd_backend_up", "1 while the backend is up, 0 while it is down.", "backend")
	descChecks        = desc("hipsterd_backend_checks_total", "Active health checks, by result.", "backend", "result")
	descLastChange    = desc("hipsterd_backend_last_change_timestamp_seconds", "When the backend last went up or down (or hipsterd started).", "backend")
	descConnectFails  = desc("hipsterd_backend_connect_failures_total", "Connects to the backend that failed, TLS handshakes included.", "backend")
	descRetries       = desc("hipsterd_backend_retries_total", "Requests and tunnels that went on to the next backend after this one failed them.", "backend")
	descResends       = desc("hipsterd_backend_resends_total", "Requests sent again on a new connection after a kept-alive one closed as they went out.", "backend")
	descBackendFlight = desc("hipsterd_backend_in_flight", "Requests and tunnels the backend serves now.", "backend")
	descBackendQueued = desc("hipsterd_backend_queued", "Requests and tunnels waiting for a slot of the backend's max-connections.", "backend")
	descLogLost       = desc("hipsterd_accesslog_lost_lines_total", "Access log lines that could not be written: the write failed (disk full) or the file was too slow to take them.", "path")
	descReloads       = desc("hipsterd_reloads_total", "Reloads, by result.", "result")
	descLastReload    = desc("hipsterd_last_reload_success_timestamp_seconds", "When the running configuration was applied.")
	descGeneration    = desc("hipsterd_config_generation", "Configurations applied since start, the first one included.")
	descCertExpiry    = desc("hipsterd_certificate_expiry_seconds", "Seconds until a served certificate expires (negative: expired).", "frontend", "name")
	descBuildInfo     = desc("hipsterd_build_info", "Always 1; the version is a label.", "version")
	descStart         = desc("hipsterd_start_time_seconds", "When hipsterd started.")
)

// collector reads the registry's counts when Prometheus scrapes. It is
// unchecked (Describe sends nothing): the series come and go with reloads.
type collector struct{ r *Registry }

func (collector) Describe(chan<- *prometheus.Desc) {}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	r := c.r
	l, applied := r.current()
	conns, global := r.conns(l)
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	for _, fl := range l.Frontends {
		f := fl.Frontend
		for _, rt := range fl.routes {
			for code := range rt.codes {
				if n := rt.codes[code].Load(); n > 0 {
					counter(descRequests, n, f.name, rt.backend, codeLabel(code))
				}
			}
			rt.duration.Collect(ch)
			if rt.header != nil {
				rt.header.Collect(ch)
				gauge(descTunnels, float64(rt.tunnels.Load()), f.name, rt.backend)
			}
		}
		for _, name := range fl.Routes {
			rc := f.RouteSeries(name)
			for code := range rc.codes {
				if n := rc.codes[code].Load(); n > 0 {
					counter(descRouteRequests, n, f.name, name, codeLabel(code))
				}
			}
		}
		gauge(descInFlight, float64(f.inflight.Load()), f.name)
		c := conns[f.name]
		gauge(descConnsOpen, float64(c.Open), f.name)
		gauge(descConnsMax, float64(c.Max), f.name)
		counter(descConnsReached, c.Reached, f.name)
		counter(descConnsTotal, f.accepted.Load(), f.name)
		counter(descBytesIn, f.bytesIn.Load(), f.name)
		counter(descBytesOut, f.bytesOut.Load(), f.name)
	}
	for _, b := range l.Backends {
		h, cs := b.Health(), b.Counters()
		up := 0.0
		if h.Up {
			up = 1
		}
		gauge(descUp, up, b.Name)
		if b.Config().Health.Kind != 0 {
			counter(descChecks, cs.ChecksPassed.Load(), b.Name, "passed")
			counter(descChecks, cs.ChecksFailed.Load(), b.Name, "failed")
		}
		gauge(descLastChange, seconds(h.LastChange), b.Name)
		counter(descConnectFails, cs.ConnectFailures.Load(), b.Name)
		counter(descRetries, cs.Retries.Load(), b.Name)
		counter(descResends, cs.Resends.Load(), b.Name)
		gauge(descBackendFlight, float64(b.InFlight()), b.Name)
		gauge(descBackendQueued, float64(b.Queued()), b.Name)
	}
	for _, al := range l.AccessLogs {
		counter(descLogLost, al.Lost(), al.Path())
	}
	now := time.Now()
	fromFiles := map[[2]string]bool{}
	for _, cert := range l.Certs {
		gauge(descCertExpiry, cert.NotAfter.Sub(now).Seconds(), cert.Frontend, cert.Name)
		fromFiles[[2]string{cert.Frontend, cert.Name}] = true
	}
	collectManaged(ch, r.managed(), fromFiles, now)
	if r.connsOf != nil {
		gauge(descGlobalOpen, float64(global.Open))
		gauge(descGlobalMax, float64(global.Max))
		counter(descGlobalReached, global.Reached)
	}
	counter(descReloads, r.reloadsOK.Load(), "ok")
	counter(descReloads, r.reloadsFailed.Load(), "failed")
	if !applied.IsZero() {
		gauge(descLastReload, seconds(applied))
	}
	gauge(descGeneration, float64(r.generation.Load()))
	gauge(descBuildInfo, 1, r.version)
	gauge(descStart, seconds(r.started))
}

// codeLabel is the code label of a status code's index; 0 holds those
// outside 100 to 599.
func codeLabel(code int) string {
	if code == 0 {
		return "other"
	}
	return strconv.Itoa(code)
}

func seconds(t time.Time) float64 { return float64(t.UnixNano()) / 1e9 }
