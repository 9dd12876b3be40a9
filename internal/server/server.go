// Package server builds hipsterd's runtime from a config.Config and owns its
// life: binding the frontends, serving, reloading and shutting down.
//
// A reload is "build new, swap, drain old": the new configuration's backends
// and handlers are built beside the running ones, swapped in at once, and the
// old ones are let go when the last request that started on them ends.
// Sockets whose bind address stays are kept, so no connection is refused; a
// bind that moves between the wildcard and an address of its port is bound
// beside the old socket before that one goes (see apply, in reload.go).
package server

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hipsterd/hipsterd/internal/accesslog"
	"github.com/hipsterd/hipsterd/internal/acme"
	"github.com/hipsterd/hipsterd/internal/config"
	"github.com/hipsterd/hipsterd/internal/stats"
	"github.com/hipsterd/hipsterd/internal/tunnel"
	"github.com/hipsterd/hipsterd/internal/upstream"
)

// closeGrace bounds the wait, after shutdown closed every connection, for
// their handlers to return and write their access log lines.
const closeGrace = 2 * time.Second

// moveGrace is how long a socket whose address a reload gave to another,
// overlapping one keeps accepting: long enough for a handshake begun on it
// to finish (a round trip), and for the connections in its queue.
const moveGrace = time.Second

// Server runs the frontends of the current configuration.
type Server struct {
	log       *slog.Logger
	tunnels   tunnel.Registry
	live      sync.WaitGroup // generations not yet released
	global    connLimit      // [global] max-connections
	serveErrs chan error

	mu        sync.Mutex
	current   *generation
	listeners map[string]*listener           // by bindKey
	moving    map[string]*listener           // sockets closing after moveGrace, by bindKey
	draining  map[*http.Server]*atomic.Int64 // servers replaced or removed, with their open connections
	backends  map[string]*upstream.Backend   // the current generation's
	stats     *stats.Registry
	statsL    *statsListener // nil without [global] stats
	acme      *acme.Manager  // nil without a [host] with acme = true

	logMu sync.Mutex
	logs  map[string]*logFile // by path

	// ACMERenewCheck is how often ACME certificates are checked for
	// renewal; zero for certmagic's default. Set it before Start.
	ACMERenewCheck time.Duration
}

// New returns a server that logs its events to log.
func New(log *slog.Logger) *Server {
	s := &Server{
		log:       log,
		serveErrs: make(chan error, 1),
		listeners: map[string]*listener{},
		moving:    map[string]*listener{},
		draining:  map[*http.Server]*atomic.Int64{},
		logs:      map[string]*logFile{},
	}
	s.stats = stats.NewRegistry(s.connCounts)
	s.stats.SetManaged(s.managedCerts)
	return s
}

// SetVersion sets the version the stats show. Call it before Start.
func (s *Server) SetVersion(v string) { s.stats.SetVersion(v) }

// Start binds every frontend of cfg and starts serving. If anything fails,
// nothing is left bound and the error names the frontend and the address.
func (s *Server) Start(cfg *config.Config) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.current != nil {
		return errors.New("server: already started")
	}
	return s.apply(cfg)
}

// Reload switches to cfg. On error nothing has changed: the old
// configuration keeps serving.
func (s *Server) Reload(cfg *config.Config) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.current == nil {
		return errors.New("server: not running")
	}
	err := s.apply(cfg)
	s.stats.Reloaded(err)
	return err
}

// drain stops l's server from accepting and lets its connections finish in
// the background, for up to timeout (0: no limit): idle keep-alive
// connections are closed now, busy ones after their response.
//
// http.Server.Shutdown is not used: it drops, unanswered, a request it reads
// after it started, and a connection accepted a moment before would lose its
// first request that way.
//
// A tcp frontend's connections are tunnels, which live on like WebSocket
// tunnels: only its accepting stops.
func (s *Server) drain(l *listener, timeout time.Duration) {
	if l.srv == nil {
		l.stopAccepting()
		return
	}
	srv, conns := l.srv, l.conns
	s.draining[srv] = conns
	l.stopAccepting()
	srv.SetKeepAlivesEnabled(false)
	go func() {
		if !waitZero(conns, timeout) {
			srv.Close()
		}
		s.mu.Lock()
		delete(s.draining, srv)
		s.mu.Unlock()
	}()
}

// moveAway lets l's server accept for moveGrace more, so that connections
// whose handshake began on l's socket before an overlapping new socket
// listened are served, then closes the socket and drains the server as
// drain does. A reload may take the socket back meanwhile (apply).
func (s *Server) moveAway(l *listener, timeout time.Duration) {
	srv, conns, served := l.srv, l.conns, l.served
	s.moving[l.key] = l
	if srv != nil {
		s.draining[srv] = conns
		srv.SetKeepAlivesEnabled(false)
	}
	l.view.finish(moveGrace)
	go func() {
		<-served
		s.mu.Lock()
		if s.moving[l.key] == l { // not taken back
			delete(s.moving, l.key)
			l.sock.Close()
		}
		s.mu.Unlock()
		if srv == nil {
			return // a tcp frontend: its connections are tunnels
		}
		if !waitZero(conns, timeout) {
			srv.Close()
		}
		s.mu.Lock()
		delete(s.draining, srv)
		s.mu.Unlock()
	}()
}

// waitZero polls n until it is zero, for up to timeout (0: no limit), and
// reports whether it got there. Polling, as http.Server.Shutdown does:
// connections end too often to signal each.
func waitZero(n *atomic.Int64, timeout time.Duration) bool {
	var deadline <-chan time.Time
	if timeout > 0 {
		t := time.NewTimer(timeout)
		defer t.Stop()
		deadline = t.C
	}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for n.Load() > 0 {
		select {
		case <-deadline:
			return false
		case <-tick.C:
		}
	}
	return true
}

// Shutdown stops accepting at once, lets requests in flight finish and
// tunnels (WebSocket, tcp frontends' connections) run until ctx ends, then
// closes whatever is left and flushes the access logs. Reaching the
// deadline is not an error.
func (s *Server) Shutdown(ctx context.Context) {
	s.mu.Lock()
	gen := s.current
	if gen == nil {
		s.mu.Unlock()
		return
	}
	// The stats listener answers until the end, /healthz with 503.
	s.stats.ShuttingDown()
	defer s.closeStats()
	for _, l := range s.listeners {
		s.drain(l, 0)
		l.sock.Close()
	}
	for _, l := range s.moving {
		l.view.Close() // ends the grace now
	}
	for _, b := range s.backends {
		b.StopChecks()
	}
	if s.acme != nil {
		s.acme.Stop() // lets go of its storage locks, for another instance
		s.acme = nil
	}
	s.listeners, s.current, s.backends = nil, nil, nil
	s.mu.Unlock()
	gen.retire()

	released := make(chan struct{})
	go func() {
		s.live.Wait()
		close(released)
	}()
	select {
	case <-released:
	case <-ctx.Done():
		// Past the deadline: close what is left, and give the handlers a
		// moment to return and log.
		s.tunnels.CloseAll()
		s.mu.Lock()
		for srv := range s.draining {
			srv.Close()
		}
		s.mu.Unlock()
		select {
		case <-released:
		case <-time.After(closeGrace):
			s.log.Warn("requests still running after shutdown; their access log lines may be lost")
		}
	}
	// A handler returns before net/http has written the end of its
	// response out; a draining connection closes once it has.
	s.mu.Lock()
	open := make([]*atomic.Int64, 0, len(s.draining))
	for _, conns := range s.draining {
		open = append(open, conns)
	}
	s.mu.Unlock()
	for _, conns := range open {
		waitZero(conns, closeGrace)
	}
	s.logMu.Lock()
	defer s.logMu.Unlock()
	for path, lf := range s.logs {
		if err := lf.file.Close(); err != nil {
			s.log.Error("closing access log", "path", path, "err", err)
		}
		delete(s.logs, path)
	}
}

// setMaxConnections sets the global max-connections of cfg: its own, or
// what the file-descriptor limit allows. It logs the value when it changes.
func (s *Server) setMaxConnections(cfg *config.Config) {
	n := int64(cfg.Global.MaxConnections)
	nofile := fileLimit()
	if n == 0 {
		n = defaultMaxConnections(nofile, cfg)
	}
	if old := s.global.max.Load(); old != n {
		s.log.Info("max-connections", "max-connections", n, "file-descriptors", nofile, "default", cfg.Global.MaxConnections == 0)
	}
	s.global.setMax(n)
}

// MaxConnections returns the global max-connections in force.
func (s *Server) MaxConnections() int64 { return s.global.max.Load() }

// ConnLimit is a max-connections limit as it stands.
type ConnLimit struct {
	Frontend string // "" for the global limit
	Max      int64  // zero: none
	Open     int64
	// Reached counts the times an accept loop found the limit full and
	// stopped accepting; the global one counts too the times accept failed
	// for want of file descriptors or memory.
	Reached uint64
}

// ConnLimits returns the global limit, then each frontend's.
func (s *Server) ConnLimits() []ConnLimit {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := []ConnLimit{{Max: s.global.max.Load(), Open: s.global.open.Load(), Reached: s.global.reached.Load()}}
	for _, l := range s.listeners {
		out = append(out, ConnLimit{Frontend: l.cfg.Name, Max: l.limit.max.Load(), Open: l.limit.open.Load(), Reached: l.limit.reached.Load()})
	}
	return out
}

// Addrs returns the bound address of each frontend, by frontend name.
func (s *Server) Addrs() map[string]net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]net.Addr{}
	for _, l := range s.listeners {
		if l.key == bindKey(l.cfg) { // not a socket kept for a covering bind
			out[l.cfg.Name] = l.sock.Addr()
		}
	}
	return out
}

// Errors delivers the first error of a frontend that stopped serving on its
// own (its socket failed).
func (s *Server) Errors() <-chan error { return s.serveErrs }

// OpenTunnels is the number of tunnels open now: WebSocket connections and
// connections of tcp frontends.
func (s *Server) OpenTunnels() int { return s.tunnels.Len() }

// ReopenLogs reopens every access log file, for log rotation.
func (s *Server) ReopenLogs() {
	s.logMu.Lock()
	defer s.logMu.Unlock()
	for path, lf := range s.logs {
		if err := lf.file.Reopen(); err != nil {
			s.log.Error("reopening access log; still writing to the old file", "path", path, "err", err)
		}
	}
}

// openLogs opens the access log files cfg names that are not open yet, and
// takes a reference on each file cfg names. On error it has changed nothing.
func (s *Server) openLogs(cfg *config.Config) error {
	s.logMu.Lock()
	defer s.logMu.Unlock()
	var opened []string
	for _, fc := range cfg.Frontends {
		path := fc.AccessLog
		if path == "" || s.logs[path] != nil {
			continue
		}
		f, err := accesslog.OpenLogged(path, s.log)
		if err != nil {
			for _, p := range opened {
				s.logs[p].file.Close()
				delete(s.logs, p)
			}
			return errors.New("frontend " + fc.Name + ": access log: " + err.Error())
		}
		s.logs[path] = &logFile{file: f}
		opened = append(opened, path)
	}
	seen := map[string]bool{}
	for _, fc := range cfg.Frontends {
		if fc.AccessLog != "" && !seen[fc.AccessLog] {
			seen[fc.AccessLog] = true
			s.logs[fc.AccessLog].refs++
		}
	}
	return nil
}

// releaseGeneration lets go of what a retired generation held once nothing
// runs on it any more.
func (s *Server) releaseGeneration(g *generation) {
	defer s.live.Done()
	s.mu.Lock()
	for name, b := range g.backends {
		if s.backends[name] != b {
			b.Close()
		}
	}
	s.mu.Unlock()
	s.logMu.Lock()
	defer s.logMu.Unlock()
	for _, path := range g.logPaths {
		lf := s.logs[path]
		if lf == nil {
			continue
		}
		if lf.refs--; lf.refs == 0 {
			if err := lf.file.Close(); err != nil {
				s.log.Error("closing access log", "path", path, "err", err)
			}
			delete(s.logs, path)
		}
	}
}
