package server

import (
	"bytes"
	"crypto/tls"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"

	"github.com/hipsterd/hipsterd/internal/acceptproxy"
	"github.com/hipsterd/hipsterd/internal/accesslog"
	"github.com/hipsterd/hipsterd/internal/acme"
	"github.com/hipsterd/hipsterd/internal/config"
	"github.com/hipsterd/hipsterd/internal/exchange"
	"github.com/hipsterd/hipsterd/internal/proxy"
	"github.com/hipsterd/hipsterd/internal/router"
	"github.com/hipsterd/hipsterd/internal/stats"
	"github.com/hipsterd/hipsterd/internal/tcpfront"
	"github.com/hipsterd/hipsterd/internal/upstream"
)

// A generation is the runtime built from one configuration: its backends,
// its frontends' handlers and its references to access log files. A reload
// builds a new generation and retires the old one, which is released (its
// idle backend connections closed, its log files let go) once the last
// request or tunnel that started on it has ended.
type generation struct {
	cfg      *config.Config
	backends map[string]*upstream.Backend
	handlers map[string]http.Handler      // http frontends', by name
	tcp      map[string]*tcpfront.Handler // tcp frontends', by name
	loggers  map[string]*accesslog.Logger // http frontends' access logs, by name
	logPaths []string                     // the access log files it holds
	caPEM    map[string][]byte            // each backend's ca-file as read for it
	stats    map[string]*stats.Frontend   // each frontend's counts, with [global] stats
	layout   stats.Layout                 // what the status page shows of it
	acme     *acme.Manager                // nil without a [host] with acme = true

	inflight atomic.Int64
	retired  atomic.Bool
	once     sync.Once
	release  func()
}

// enter and leave bracket a request served by this generation.
func (g *generation) enter() { g.inflight.Add(1) }

func (g *generation) leave() {
	if g.inflight.Add(-1) == 0 && g.retired.Load() {
		g.once.Do(g.release)
	}
}

// retire marks the generation as no longer current; it is released as soon
// as nothing runs on it.
func (g *generation) retire() {
	g.retired.Store(true)
	if g.inflight.Load() == 0 {
		g.once.Do(g.release)
	}
}

// newGeneration builds the runtime of cfg. logs must hold an open file for
// every access log path cfg names; tlsConfs holds the TLS configuration of
// each https frontend. A backend whose section and ca-file are unchanged is
// reused; one that changed but still has the same connect carries on its
// requests in flight, queue and health (upstream.Backend.Inherit).
func (s *Server) newGeneration(cfg *config.Config, logs map[string]*logFile, tlsConfs map[string]*tls.Config, mgr *acme.Manager) *generation {
	g := &generation{
		cfg:      cfg,
		acme:     mgr,
		backends: make(map[string]*upstream.Backend, len(cfg.Backends)),
		handlers: make(map[string]http.Handler, len(cfg.Frontends)),
		caPEM:    map[string][]byte{},
		tcp:      map[string]*tcpfront.Handler{},
		loggers:  map[string]*accesslog.Logger{},
		stats:    map[string]*stats.Frontend{},
	}
	for _, bc := range cfg.Backends {
		if bc.TLS && bc.CAFile != "" {
			// Read again on every reload, as frontend certificates are:
			// the backend is rebuilt when the file changed.
			g.caPEM[bc.Name] = cfg.Files[bc.CAFile]
		}
		old := s.backends[bc.Name]
		if old != nil && old.Config() == bc && bytes.Equal(g.caPEM[bc.Name], s.current.caPEM[bc.Name]) {
			g.backends[bc.Name] = old // idle connections and health carry on
			continue
		}
		b := upstream.NewBackend(bc, g.caPEM[bc.Name], s.log)
		if old != nil {
			b.ShareCounters(old)
		}
		if old != nil && b.SameServer(old) {
			b.Inherit(old)
		}
		g.backends[bc.Name] = b
	}
	seen := map[string]bool{}
	for _, fc := range cfg.Frontends {
		var lf *accesslog.File
		if fc.AccessLog != "" {
			lf = logs[fc.AccessLog].file
			if !seen[fc.AccessLog] {
				seen[fc.AccessLog] = true
				g.logPaths = append(g.logPaths, fc.AccessLog)
				g.layout.AccessLogs = append(g.layout.AccessLogs, lf)
			}
		}
		if fc.Mode == config.ModeTCP {
			g.tcp[fc.Name] = s.newTCPHandler(g, fc, lf, tlsConfs[fc.Name])
			continue
		}
		g.handlers[fc.Name] = s.newHandler(g, fc, lf)
	}
	g.finishLayout()
	return g
}

// pool returns a new pool of g's backends called names.
func (g *generation) pool(names []string, balance config.Balance, xff bool, log *slog.Logger) *upstream.Pool {
	bs := make([]*upstream.Backend, len(names))
	for i, n := range names {
		bs[i] = g.backends[n]
	}
	return upstream.NewPool(bs, balance, xff, log)
}

// newTCPHandler builds a tcp frontend's handler of generation g; tc is its
// TLS configuration, nil for TLS passthrough.
func (s *Server) newTCPHandler(g *generation, fc config.Frontend, lf *accesslog.File, tc *tls.Config) *tcpfront.Handler {
	log := s.log.With("frontend", fc.Name)
	st := s.frontendStats(g, fc)
	pool := g.pool(fc.Backends, fc.Balance, false, log)
	g.countPool(st, router.Label{}, pool)
	h := &tcpfront.Handler{
		Pool:             pool,
		Exchanges:        &exchange.Frontend{Sinks: sinks(st, logger(g, fc, lf))},
		Tunnels:          &s.tunnels,
		TLS:              tc,
		HandshakeTimeout: fc.ReadHeaderTimeout,
		TunnelTimeout:    fc.TunnelTimeout,
		AcceptProxy:      proxyPolicy(fc),
		Log:              log,
	}
	return h
}

// logger returns the access logger of frontend fc writing to lf; nil
// when fc has no access log.
func logger(g *generation, fc config.Frontend, lf *accesslog.File) *accesslog.Logger {
	if lf == nil {
		return nil
	}
	l := accesslog.NewLogger(fc.Name, lf, logFormats[fc.AccessLogFormat])
	if fc.Mode != config.ModeTCP {
		g.loggers[fc.Name] = l
	}
	return l
}

// sinks are the ones of st and l that are there, for a frontend's
// exchanges.
func sinks(st *stats.Frontend, l *accesslog.Logger) []exchange.Sink {
	var out []exchange.Sink
	if st != nil {
		out = append(out, st)
	}
	if l != nil {
		out = append(out, l)
	}
	return out
}

// proxyPolicy is the accept-proxy policy of fc; nil without accept-proxy.
func proxyPolicy(fc config.Frontend) *acceptproxy.Policy {
	if !fc.AcceptProxy {
		return nil
	}
	return &acceptproxy.Policy{From: fc.AcceptProxyFrom, Timeout: fc.ReadHeaderTimeout}
}

// newHandler builds a frontend's handler of generation g: each request an
// exchange (logged and counted as it ends), routed by the proxy.
func (s *Server) newHandler(g *generation, fc config.Frontend, lf *accesslog.File) http.Handler {
	cfg := g.cfg
	log := s.log.With("frontend", fc.Name)
	pool := func(names []string, balance config.Balance) *upstream.Pool {
		return g.pool(names, balance, fc.AddXForwardedFor, log)
	}
	st := s.frontendStats(g, fc)
	counted := func(names []string, balance config.Balance, l router.Label) *upstream.Pool {
		p := pool(names, balance)
		g.countPool(st, l, p)
		return p
	}
	var series func(string) exchange.Series
	if st != nil {
		series = func(name string) exchange.Series {
			fl := g.layoutOf(st)
			fl.Routes = append(fl.Routes, name)
			return st.RouteSeries(name)
		}
	}
	var h http.Handler = &proxy.Handler{
		Router:        router.Build(cfg, &fc, counted, series),
		Tunnels:       &s.tunnels,
		TunnelTimeout: fc.TunnelTimeout,
	}
	if fc.RedirectHTTPS {
		h = proxy.RedirectHTTPS(fc.RedirectHTTPSPort)
	}
	if g.acme != nil && !fc.HTTPS {
		// HTTP-01 before routing and before redirect-https.
		h = g.acme.HandleHTTP(h)
	}
	f := &exchange.Frontend{Sinks: sinks(st, logger(g, fc, lf)), ClientTimeout: fc.ClientTimeout, Release: g.leave}
	return f.Handler(h)
}

// logFormats maps the config's access log formats to the logger's.
var logFormats = map[config.LogFormat]accesslog.Format{
	config.LogHipster:  accesslog.Hipster,
	config.LogCombined: accesslog.Combined,
	config.LogJSON:     accesslog.JSON,
}

// logFile is an open access log file and the number of generations using it.
type logFile struct {
	file *accesslog.File
	refs int
}
