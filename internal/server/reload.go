package server

import (
	"crypto/tls"
	"net"
	"slices"

	"github.com/hipsterd/hipsterd/internal/acme"
	"github.com/hipsterd/hipsterd/internal/config"
)

// apply makes cfg current, in three steps: plan works out what becomes of
// each socket from the sockets open now and cfg alone (pure, so tested
// without sockets); prepare does everything that can fail (new binds, the
// ACME manager, certificates, the stats listener, access logs) and undoes it
// all when one fails, so that the running configuration is untouched; commit swaps the
// new generation in, and cannot fail.
func (s *Server) apply(cfg *config.Config) error {
	plan := planSockets(s.openSockets(), cfg.Frontends)
	prep, err := s.prepare(cfg, plan)
	if err != nil {
		return err
	}
	s.commit(cfg, plan, prep)
	return nil
}

// openSocket is what plan knows of a listening socket: its address as
// bound, and whether it is closing after moveGrace (moveAway).
type openSocket struct {
	addr   config.Address
	moving bool
}

// openSockets returns the server's listening sockets, by bindKey.
func (s *Server) openSockets() map[string]openSocket {
	open := make(map[string]openSocket, len(s.listeners)+len(s.moving))
	for key, l := range s.listeners {
		open[key] = openSocket{addr: l.addr}
	}
	for key, l := range s.moving {
		open[key] = openSocket{addr: l.addr, moving: true}
	}
	return open
}

// socketPlan is what a configuration does to the listening sockets.
type socketPlan struct {
	// serve is each frontend with the key of its socket, then each open
	// socket that a new wildcard bind covers with that frontend: the
	// kernel gives a connection to the most specific address, so it
	// would take connections until the moment it closed, and those in its
	// queue then would be reset.
	serve []serving
	// bind is the frontends whose socket is to be bound, in file order,
	// each with the keys of the open sockets its address overlaps.
	bind []newBind
	// revive is the keys of sockets closing after moveGrace that are taken
	// back before they closed: they never stopped listening.
	revive []string
	// retire is the keys of the current sockets that no frontend serves,
	// true for those that a new bind overlaps (moved away after moveGrace),
	// false for those closed now.
	retire map[string]bool
}

type serving struct {
	key string
	fc  config.Frontend
}

type newBind struct {
	key     string
	fc      config.Frontend
	overlap []string
}

// planSockets plans frontends over the open sockets.
func planSockets(open map[string]openSocket, frontends []config.Frontend) socketPlan {
	p := socketPlan{retire: map[string]bool{}}
	next := map[string]bool{}
	for _, fc := range frontends {
		key := bindKey(fc)
		p.serve = append(p.serve, serving{key, fc})
		next[key] = true
		if o, ok := open[key]; ok {
			if o.moving {
				p.revive = append(p.revive, key)
			}
			continue
		}
		var overlap []string
		for k, o := range open {
			if o.addr.Conflicts(fc.Listen) {
				overlap = append(overlap, k)
			}
		}
		slices.Sort(overlap)
		p.bind = append(p.bind, newBind{key, fc, overlap})
	}
	for key, o := range open {
		if next[key] {
			continue
		}
		for _, fc := range frontends {
			if fc.Listen.Covers(o.addr) {
				next[key] = true
				p.serve = append(p.serve, serving{key, fc})
				if o.moving {
					p.revive = append(p.revive, key)
				}
				break
			}
		}
	}
	for key, o := range open {
		if next[key] || o.moving {
			continue
		}
		overlapped := false
		for _, fc := range frontends {
			overlapped = overlapped || fc.Listen.Conflicts(o.addr)
		}
		p.retire[key] = overlapped
	}
	return p
}

// prepared is what prepare made ready for commit.
type prepared struct {
	fresh    map[string]*listener   // the sockets bound, by key
	socks    map[string]*listener   // the socket of each of plan.serve, by key
	acme     *acme.Manager          // nil without a [host] with acme = true
	tlsConfs map[string]*tls.Config // each https frontend's, by name
	stats    *statsListener         // nil when the running one stays, or none
}

// undo lets go of what prepare made, after a failure.
func (prep *prepared) undo(s *Server) {
	for _, l := range prep.fresh {
		l.sock.Close()
	}
	if prep.acme != nil && prep.acme != s.acme {
		prep.acme.Stop()
	}
	if prep.stats != nil {
		prep.stats.sock.Close()
	}
}

// prepare does what can fail in applying cfg: it binds the sockets plan
// asks for, gets the ACME manager cfg needs, reads the frontends'
// certificates (from the bytes cfg was checked with), binds the stats
// listener and opens the access log files. On error it has undone what it
// did.
func (s *Server) prepare(cfg *config.Config, plan socketPlan) (*prepared, error) {
	prep := &prepared{fresh: map[string]*listener{}, tlsConfs: map[string]*tls.Config{}}
	fail := func(err error) (*prepared, error) {
		prep.undo(s)
		return nil, err
	}
	for _, nb := range plan.bind {
		var overlap []*net.TCPListener
		for _, k := range nb.overlap {
			overlap = append(overlap, s.socket(k).sock)
		}
		sock, err := bind(nb.fc, overlap)
		if err != nil {
			return fail(err)
		}
		// The address as bound, which for a host name is its IP address.
		addr, err := config.ParseBind(sock.Addr().String())
		if err != nil {
			addr = nb.fc.Listen
		}
		prep.fresh[nb.key] = &listener{key: nb.key, addr: addr, sock: sock, log: s.log, global: &s.global}
	}
	prep.socks = map[string]*listener{}
	for _, sv := range plan.serve {
		if prep.socks[sv.key] = prep.fresh[sv.key]; prep.socks[sv.key] == nil {
			prep.socks[sv.key] = s.socket(sv.key)
		}
	}
	var err error
	if prep.acme, err = s.acmeManager(cfg, prep.socks); err != nil {
		return fail(err)
	}
	for _, fc := range cfg.Frontends {
		if fc.HTTPS {
			tc, err := loadTLS(cfg, fc, prep.acme)
			if err != nil {
				return fail(err)
			}
			prep.tlsConfs[fc.Name] = tc
		}
	}
	if prep.stats, err = s.bindStats(cfg); err != nil {
		return fail(err)
	}
	if err := s.openLogs(cfg); err != nil {
		return fail(err)
	}
	return prep, nil
}

// socket returns the open listener of key: current or moving away.
func (s *Server) socket(key string) *listener {
	if l := s.listeners[key]; l != nil {
		return l
	}
	return s.moving[key]
}

// commit makes cfg, planned and prepared, current.
func (s *Server) commit(cfg *config.Config, plan socketPlan, prep *prepared) {
	gen := s.newGeneration(cfg, s.logs, prep.tlsConfs, prep.acme)
	s.live.Add(1)
	gen.release = func() { go s.releaseGeneration(gen) }

	s.setMaxConnections(cfg)
	// Before the new TLS configurations serve: they find the certificates
	// in storage loaded.
	s.swapACME(cfg, prep.acme)
	next := prep.socks
	for _, key := range plan.revive {
		l := s.moving[key]
		delete(s.moving, key)
		l.stopAccepting()
		l.srv, l.view = nil, nil // the old server drains as it was (moveAway); a new one starts
	}
	for _, sv := range plan.serve {
		l, fc := next[sv.key], sv.fc
		if l.key != bindKey(fc) && (l.srv == nil || l.key == bindKey(l.cfg)) {
			s.log.Info("frontend keeps serving a socket its bind covers", "frontend", fc.Name, "addr", l.sock.Addr().String())
		}
		if tc := prep.tlsConfs[fc.Name]; tc != nil {
			l.tlsConf.Store(tc)
		}
		l.route.Store(&route{gen: gen, handler: gen.handlers[fc.Name], tcp: gen.tcp[fc.Name], stats: gen.stats[fc.Name], log: gen.loggers[fc.Name]})
		l.limit.setMax(int64(fc.MaxConnections))
		switch {
		case l.view == nil:
			l.startServer(fc, s.serveErrs)
			s.log.Info("frontend listening", "frontend", fc.Name, "addr", l.sock.Addr().String(), "mode", string(fc.Mode), "https", fc.HTTPS)
		case !sameServer(l.cfg, fc):
			s.drain(l, cfg.Global.ShutdownTimeout)
			l.startServer(fc, s.serveErrs)
			s.log.Info("frontend restarted on its socket", "frontend", fc.Name, "addr", l.sock.Addr().String(), "https", fc.HTTPS)
		default:
			l.cfg = fc
		}
	}
	for key, move := range plan.retire {
		l := s.listeners[key]
		if move {
			s.log.Info("frontend moved to another address; the old socket accepts for a moment more", "frontend", l.cfg.Name, "addr", l.sock.Addr().String())
			s.moveAway(l, cfg.Global.ShutdownTimeout)
			continue
		}
		s.log.Info("frontend removed; draining its connections", "frontend", l.cfg.Name, "addr", l.sock.Addr().String())
		s.drain(l, cfg.Global.ShutdownTimeout)
		l.sock.Close()
	}
	s.listeners = next
	for name, b := range s.backends {
		if gen.backends[name] != b {
			b.StopChecks()
		}
	}
	for _, b := range gen.backends {
		b.StartChecks()
	}
	s.backends = gen.backends
	s.stats.Swap(&gen.layout)
	s.swapStats(cfg, prep.stats)
	old := s.current
	s.current = gen
	if old != nil {
		old.retire()
	}
}
