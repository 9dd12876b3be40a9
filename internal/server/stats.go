package server

import (
	"context"
	"fmt"
	"log"
	"net"
	"net/http"
	"time"

	"github.com/hipsterd/hipsterd/internal/config"
	"github.com/hipsterd/hipsterd/internal/exchange"
	"github.com/hipsterd/hipsterd/internal/router"
	"github.com/hipsterd/hipsterd/internal/stats"
	"github.com/hipsterd/hipsterd/internal/upstream"
)

// statsTimeout bounds the stats listener's reads and writes: its clients
// are scrapers and browsers asking for a page, never a long exchange.
const statsTimeout = 10 * time.Second

// statsListener is the listener of [global] stats: the metrics, the status
// page and the health answer.
type statsListener struct {
	addr config.Address
	sock net.Listener
	srv  *http.Server
}

// bindStats binds the stats listener of cfg, unless the running one has its
// address (however it is written); nil when cfg has none or the running one
// stays.
func (s *Server) bindStats(cfg *config.Config) (*statsListener, error) {
	g := cfg.Global
	if g.Stats == "" || (s.statsL != nil && s.statsL.addr == g.StatsListen) {
		return nil, nil
	}
	sock, err := net.Listen(g.StatsListen.Network(), g.StatsListen.String())
	if err != nil {
		return nil, fmt.Errorf("[global] stats: cannot listen on %s: %w", g.Stats, err)
	}
	return &statsListener{addr: g.StatsListen, sock: sock}, nil
}

// swapStats makes fresh (from bindStats) the stats listener of cfg, and
// closes the running one if cfg has none or another.
func (s *Server) swapStats(cfg *config.Config, fresh *statsListener) {
	if fresh == nil && cfg.Global.Stats != "" {
		return // the running one stays
	}
	if old := s.statsL; old != nil {
		old.srv.Close()
		s.statsL = nil
		s.log.Info("stats listener closed", "addr", old.sock.Addr().String())
	}
	if fresh == nil {
		return
	}
	fresh.srv = &http.Server{
		Handler:           s.stats.Handler(),
		ReadHeaderTimeout: statsTimeout,
		ReadTimeout:       statsTimeout,
		WriteTimeout:      statsTimeout,
		IdleTimeout:       2 * statsTimeout,
		ErrorLog:          log.New(serverLog{s.log}, "", 0),
	}
	go fresh.srv.Serve(fresh.sock)
	s.statsL = fresh
	s.log.Info("stats listening", "addr", fresh.sock.Addr().String())
}

// closeStats closes the stats listener, for shutdown; its open connections
// are let finish for a moment.
func (s *Server) closeStats() {
	s.mu.Lock()
	l := s.statsL
	s.statsL = nil
	s.mu.Unlock()
	if l == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if l.srv.Shutdown(ctx) != nil {
		l.srv.Close()
	}
}

// StatsAddr is the address of the stats listener, nil without one.
func (s *Server) StatsAddr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.statsL == nil {
		return nil
	}
	return s.statsL.sock.Addr()
}

// ReloadFailed counts a reload that failed before it reached Reload (the
// configuration did not load).
func (s *Server) ReloadFailed(err error) { s.stats.Reloaded(err) }

// connCounts returns the connection limits and the open connections of
// http frontends not taken over by a tunnel, for the stats (which count
// tunnels themselves). The limits' own counts include the slot an accept
// loop holds while it waits for a connection.
func (s *Server) connCounts() []stats.Conns {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := []stats.Conns{{Max: s.global.max.Load(), Reached: s.global.reached.Load()}}
	for _, l := range s.listeners {
		c := stats.Conns{Frontend: l.cfg.Name, Max: l.limit.max.Load(), Reached: l.limit.reached.Load()}
		if l.conns != nil {
			c.Open = l.conns.Load()
		}
		out = append(out, c)
	}
	return out
}

// frontendStats returns the counts of frontend fc for generation g, or nil
// when g's configuration serves no stats.
func (s *Server) frontendStats(g *generation, fc config.Frontend) *stats.Frontend {
	if g.cfg.Global.Stats == "" {
		return nil
	}
	f := s.stats.Frontend(fc.Name, string(fc.Mode))
	g.stats[fc.Name] = f
	return f
}

// countPool makes pool count its requests in f, and records it in g's
// layout under its label (none for the frontend's own backends). f may be
// nil.
func (g *generation) countPool(f *stats.Frontend, l router.Label, pool *upstream.Pool) {
	if f == nil {
		return
	}
	pool.SetSeries(func(b *upstream.Backend) exchange.Series { return f.Route(b.Name) })
	fl := g.layoutOf(f)
	fl.Pools = append(fl.Pools, stats.PoolLayout{Name: l.Host, Route: l.Route, Backends: pool.Backends()})
}

// layoutOf returns f's entry in g's layout, adding it.
func (g *generation) layoutOf(f *stats.Frontend) *stats.FrontendLayout {
	for i := range g.layout.Frontends {
		if g.layout.Frontends[i].Frontend == f {
			return &g.layout.Frontends[i]
		}
	}
	g.layout.Frontends = append(g.layout.Frontends, stats.FrontendLayout{Frontend: f})
	return &g.layout.Frontends[len(g.layout.Frontends)-1]
}

// finishLayout completes g's layout once its frontends are built.
func (g *generation) finishLayout() {
	if g.cfg.Global.Stats == "" {
		return
	}
	for _, fc := range g.cfg.Frontends {
		if f := g.stats[fc.Name]; f != nil {
			fl := g.layoutOf(f)
			fl.Bind, fl.HTTPS = fc.Bind, fc.HTTPS
		}
	}
	for _, bc := range g.cfg.Backends {
		g.layout.Backends = append(g.layout.Backends, g.backends[bc.Name])
	}
	g.layout.Certs = stats.CertsOf(g.cfg)
}

// countConn counts a connection accepted for the route's frontend.
func (rt *route) countConn() {
	if rt.stats != nil {
		rt.stats.Accepted()
	}
}
