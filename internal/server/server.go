// Package server builds hipsterd's runtime from a config.Config and owns its
// life: binding the frontends, serving, and shutting down.
package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/hipsterd/hipsterd/internal/accesslog"
	"github.com/hipsterd/hipsterd/internal/config"
	"github.com/hipsterd/hipsterd/internal/proxy"
	"github.com/hipsterd/hipsterd/internal/router"
	"github.com/hipsterd/hipsterd/internal/tunnel"
	"github.com/hipsterd/hipsterd/internal/upstream"
)

// tcpKeepAlive is the keep-alive period of accepted client connections, so
// that idle tunnels to vanished clients are noticed.
const tcpKeepAlive = 30 * time.Second

// Server runs the frontends of one configuration.
type Server struct {
	log *slog.Logger

	tunnels tunnel.Registry
	// upgrades counts WebSocket handlers in flight: http.Server.Shutdown
	// does not wait for hijacked connections.
	upgrades sync.WaitGroup

	mu        sync.Mutex
	cfg       *config.Config
	frontends []*frontend
	backends  map[string]*upstream.Backend
	logs      map[string]*accesslog.File // by path
	serveErrs chan error
}

type frontend struct {
	cfg    config.Frontend
	ln     net.Listener
	srv    *http.Server
	served chan struct{} // closed when Serve has returned
}

// New returns a server that logs its events to log.
func New(log *slog.Logger) *Server {
	return &Server{log: log, serveErrs: make(chan error, 1)}
}

// Start binds every frontend of cfg and starts serving. If any bind fails,
// nothing is left bound and the error names the address.
func (s *Server) Start(cfg *config.Config) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cfg != nil {
		return errors.New("server: already started")
	}
	tlsConfs, err := loadTLS(cfg.Frontends)
	if err != nil {
		return err
	}
	lns, err := bindAll(cfg.Frontends)
	if err != nil {
		return err
	}
	logs, err := openLogs(cfg, nil)
	if err != nil {
		closeAll(lns)
		return err
	}
	backends := s.newBackends(cfg)
	for i, fc := range cfg.Frontends {
		h := s.newHandler(cfg, fc, backends, logs)
		s.frontends = append(s.frontends, s.serve(fc, lns[i], tlsConfs[i], h))
	}
	s.cfg, s.backends, s.logs = cfg, backends, logs
	return nil
}

// Addrs returns the bound address of each frontend, by frontend name.
func (s *Server) Addrs() map[string]net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]net.Addr{}
	for _, f := range s.frontends {
		out[f.cfg.Name] = f.ln.Addr()
	}
	return out
}

// Errors delivers the first error of a frontend that stopped serving on its
// own (its listener failed).
func (s *Server) Errors() <-chan error { return s.serveErrs }

// Shutdown stops accepting at once, lets requests in flight finish and
// WebSocket tunnels run until ctx ends, then closes whatever is left and
// flushes the access logs. Reaching the deadline is not an error.
func (s *Server) Shutdown(ctx context.Context) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var wg sync.WaitGroup
	for _, f := range s.frontends {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if f.srv.Shutdown(ctx) != nil {
				f.srv.Close()
			}
			<-f.served
		}()
	}
	wg.Wait()

	tunnelsDone := make(chan struct{})
	go func() {
		s.upgrades.Wait()
		close(tunnelsDone)
	}()
	select {
	case <-tunnelsDone:
	case <-ctx.Done():
		s.tunnels.CloseAll()
		<-tunnelsDone
	}
	for _, b := range s.backends {
		b.Close()
	}
	for path, f := range s.logs {
		if err := f.Close(); err != nil {
			s.log.Error("closing access log", "path", path, "err", err)
		}
	}
	s.frontends, s.logs = nil, nil
}

// ReopenLogs reopens every access log file, for log rotation.
func (s *Server) ReopenLogs() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for path, f := range s.logs {
		if err := f.Reopen(); err != nil {
			s.log.Error("reopening access log; still writing to the old file", "path", path, "err", err)
		}
	}
}

// OpenTunnels is the number of WebSocket tunnels open now.
func (s *Server) OpenTunnels() int { return s.tunnels.Len() }

func bindAll(fcs []config.Frontend) ([]net.Listener, error) {
	lc := net.ListenConfig{KeepAlive: tcpKeepAlive}
	var lns []net.Listener
	for _, fc := range fcs {
		ln, err := lc.Listen(context.Background(), "tcp", fc.Bind)
		if err != nil {
			closeAll(lns)
			return nil, fmt.Errorf("frontend %s: cannot listen on %s: %w", fc.Name, fc.Bind, err)
		}
		lns = append(lns, ln)
	}
	return lns, nil
}

func closeAll(lns []net.Listener) {
	for _, ln := range lns {
		ln.Close()
	}
}

// openLogs opens every access log file cfg names, each once, reusing those
// of have that are still named.
func openLogs(cfg *config.Config, have map[string]*accesslog.File) (map[string]*accesslog.File, error) {
	logs := map[string]*accesslog.File{}
	for _, fc := range cfg.Frontends {
		path := fc.AccessLog
		if path == "" || logs[path] != nil {
			continue
		}
		if f := have[path]; f != nil {
			logs[path] = f
			continue
		}
		f, err := accesslog.Open(path)
		if err != nil {
			for p, f := range logs {
				if have[p] == nil {
					f.Close()
				}
			}
			return nil, fmt.Errorf("frontend %s: access log: %w", fc.Name, err)
		}
		logs[path] = f
	}
	return logs, nil
}

func (s *Server) newBackends(cfg *config.Config) map[string]*upstream.Backend {
	out := make(map[string]*upstream.Backend, len(cfg.Backends))
	for _, bc := range cfg.Backends {
		out[bc.Name] = upstream.NewBackend(bc, s.log)
	}
	return out
}

// newHandler builds a frontend's handler: access log around host routing
// around the proxy.
func (s *Server) newHandler(cfg *config.Config, fc config.Frontend, backends map[string]*upstream.Backend, logs map[string]*accesslog.File) http.Handler {
	pool := func(names []string) *upstream.Pool {
		bs := make([]*upstream.Backend, len(names))
		for i, n := range names {
			bs[i] = backends[n]
		}
		return upstream.NewPool(bs)
	}
	var fallback *upstream.Pool
	if len(fc.Backends) > 0 {
		fallback = pool(fc.Backends)
	}
	// One pool per [host] section, shared by the names it lists.
	hostPools := map[*config.Host]*upstream.Pool{}
	routes := map[string]*upstream.Pool{}
	for _, name := range fc.Hosts {
		hc := cfg.HostFor(name)
		if hostPools[hc] == nil {
			hostPools[hc] = pool(hc.Backends)
		}
		routes[name] = hostPools[hc]
	}
	var h http.Handler = &proxy.Handler{
		Router:           router.New(routes, fallback),
		AddXForwardedFor: fc.AddXForwardedFor,
		Tunnels:          &s.tunnels,
		Log:              s.log.With("frontend", fc.Name),
	}
	if f := logs[fc.AccessLog]; f != nil {
		h = accesslog.NewLogger(fc.Name, f).Handler(h)
	}
	next := h
	h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if proxy.IsWebSocket(r.Header) {
			s.upgrades.Add(1)
			defer s.upgrades.Done()
		}
		next.ServeHTTP(w, r)
	})
	return h
}

// serve starts an http.Server for fc on ln.
func (s *Server) serve(fc config.Frontend, ln net.Listener, tlsConf *tls.Config, h http.Handler) *frontend {
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: fc.ReadHeaderTimeout,
		IdleTimeout:       fc.IdleTimeout,
		// Per-connection noise (TLS handshake failures from scanners, bad
		// requests) stays out of the log unless debugging.
		ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		// HTTP/2 is not offered: drunken-hipster spoke HTTP/1.1 only, and
		// WebSocket upgrades need it.
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
	}
	f := &frontend{cfg: fc, ln: ln, srv: srv, served: make(chan struct{})}
	l := ln
	if tlsConf != nil {
		l = tls.NewListener(ln, tlsConf)
	}
	go func() {
		defer close(f.served)
		err := srv.Serve(l)
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("frontend stopped serving", "frontend", fc.Name, "err", err)
			select {
			case s.serveErrs <- fmt.Errorf("frontend %s: %w", fc.Name, err):
			default:
			}
		}
	}()
	s.log.Info("frontend listening", "frontend", fc.Name, "addr", ln.Addr().String(), "https", fc.HTTPS)
	return f
}

// loadTLS returns the TLS configuration of each frontend, nil for plain ones.
func loadTLS(fcs []config.Frontend) ([]*tls.Config, error) {
	out := make([]*tls.Config, len(fcs))
	for i, fc := range fcs {
		if !fc.HTTPS {
			continue
		}
		cert, err := tls.LoadX509KeyPair(fc.CertFile, fc.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("frontend %s: certfile %s, keyfile %s: %w", fc.Name, fc.CertFile, fc.KeyFile, err)
		}
		out[i] = &tls.Config{
			Certificates: []tls.Certificate{cert},
			MinVersion:   tls.VersionTLS12,
			NextProtos:   []string{"http/1.1"},
		}
	}
	return out, nil
}
