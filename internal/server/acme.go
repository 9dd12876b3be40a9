package server

import (
	"crypto/tls"
	"slices"

	"github.com/hipsterd/hipsterd/internal/acme"
	"github.com/hipsterd/hipsterd/internal/config"
	"github.com/hipsterd/hipsterd/internal/stats"
)

// acmeManager returns the ACME manager cfg needs, given the sockets its
// frontends will serve (by bindKey): the running one if its options stay,
// else a new one; nil when no [host] has acme = true.
func (s *Server) acmeManager(cfg *config.Config, socks map[string]*listener) (*acme.Manager, error) {
	if len(cfg.ACMENames()) == 0 {
		return nil, nil
	}
	opts := acme.Options{ACME: cfg.Global.ACME, CARootPEM: string(cfg.Files[cfg.Global.ACME.CARoot]), RenewCheck: s.ACMERenewCheck}
	for _, fc := range cfg.Frontends {
		addr := socks[bindKey(fc)].sock.Addr().String()
		switch {
		case opts.HTTPAddr == "" && !fc.HTTPS && fc.Mode == config.ModeHTTP:
			opts.HTTPAddr = addr
		case opts.TLSAddr == "" && fc.HTTPS && slices.ContainsFunc(fc.Hosts, func(n string) bool { return cfg.HostFor(n).ACME }):
			opts.TLSAddr = addr
		}
	}
	if s.acme != nil && s.acme.Options() == opts {
		return s.acme, nil
	}
	return acme.New(opts, s.log)
}

// swapACME makes m the running ACME manager, managing the names of cfg;
// a manager replaced stops renewing (its certificates serve on until the
// frontends using it are swapped). The CA's challenges come a round trip
// after the order, when the new frontends serve.
func (s *Server) swapACME(cfg *config.Config, m *acme.Manager) {
	if old := s.acme; old != nil && old != m {
		old.Stop()
	}
	s.acme = m
	if m != nil {
		m.Manage(cfg.ACMENames())
	}
}

// acmeNames returns the names of fc's hosts whose certificates m manages.
func acmeNames(cfg *config.Config, fc config.Frontend) map[string]bool {
	names := map[string]bool{}
	for _, n := range fc.Hosts {
		if cfg.HostFor(n).ACME {
			names[config.HostName(n)] = true
		}
	}
	return names
}

// challengeConfig returns, for the CA's TLS-ALPN-01 handshake for one of
// names, a configuration that negotiates its protocol and presents its
// challenge certificate; nil for any other handshake.
func challengeConfig(m *acme.Manager, names map[string]bool, hello *tls.ClientHelloInfo) *tls.Config {
	if m == nil || len(hello.SupportedProtos) != 1 || hello.SupportedProtos[0] != acme.ALPNProto || !names[normalSNI(hello.ServerName)] {
		return nil
	}
	return &tls.Config{
		GetCertificate: m.GetCertificate,
		NextProtos:     []string{acme.ALPNProto},
		MinVersion:     tls.VersionTLS12,
	}
}

// managedCerts lists the certificates the ACME manager keeps, with the
// https frontends serving each, for the stats.
func (s *Server) managedCerts() []stats.ManagedCert {
	s.mu.Lock()
	m, gen := s.acme, s.current
	s.mu.Unlock()
	if m == nil || gen == nil {
		return nil
	}
	cfg := gen.cfg
	var out []stats.ManagedCert
	for _, st := range m.Status() {
		mc := stats.ManagedCert{Names: st.Names, Issuer: st.Issuer, NotAfter: st.NotAfter, NextRenewal: st.NextRenewal, LastError: st.LastError, LastErrorAt: st.LastErrorAt}
		for _, fc := range cfg.Frontends {
			if fc.HTTPS && acmeNames(cfg, fc)[st.Name] {
				mc.Frontends = append(mc.Frontends, fc.Name)
			}
		}
		out = append(out, mc)
	}
	return out
}
