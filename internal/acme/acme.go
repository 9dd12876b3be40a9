// Package acme gets, stores and renews the certificates of [host] sections
// with acme = true from an ACME CA (Let's Encrypt by default), with
// certmagic, Caddy's engine.
//
// hipsterd's own frontends answer the challenges: HTTP-01 through
// Manager.HandleHTTP in front of a plain-HTTP frontend's routing,
// TLS-ALPN-01 through Manager.GetCertificate on an https frontend. The
// challenge data and the certificates live in the storage directory, whose
// lock files make instances that share it order each certificate once, and
// let any of them answer a challenge another created.
package acme

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3"
	"go.uber.org/zap"

	"github.com/hipsterd/hipsterd/internal/config"
)

// ALPNProto is the ALPN protocol of TLS-ALPN-01 handshakes.
const ALPNProto = acmez.ACMETLS1Protocol

// Options are what a Manager is built from; a reload that changes them
// needs a new Manager.
type Options struct {
	config.ACME
	// HTTPAddr and TLSAddr are the bound addresses of a plain-HTTP
	// frontend and of an https frontend listing managed names, which answer
	// HTTP-01 and TLS-ALPN-01; "" turns that challenge off. certmagic,
	// finding them taken, leaves the answering to those frontends instead
	// of binding its own listener.
	HTTPAddr, TLSAddr string
	// CARootPEM is the content of CARoot as the configuration check read
	// it: a reload that changes the file builds a new Manager.
	CARootPEM string
	// RenewCheck is how often certificates are checked for renewal (and
	// OCSP staples refreshed); zero for certmagic's default (10 minutes).
	RenewCheck time.Duration
}

// Manager keeps certificates for a set of names.
type Manager struct {
	opts   Options
	log    *slog.Logger
	magic  *certmagic.Config
	issuer *certmagic.ACMEIssuer
	cache  *certmagic.Cache
	ctx    context.Context
	cancel context.CancelFunc

	mu     sync.Mutex
	names  map[string]bool    // managed now
	failed map[string]failure // the last failure of each name, until it obtains one
}

type failure struct {
	err string
	at  time.Time
}

// New returns a Manager that manages no name yet. It contacts no CA.
func New(opts Options, log *slog.Logger) (*Manager, error) {
	m := &Manager{opts: opts, log: log, names: map[string]bool{}, failed: map[string]failure{}}
	var roots *x509.CertPool
	if opts.CARoot != "" {
		roots = x509.NewCertPool()
		if !roots.AppendCertsFromPEM([]byte(opts.CARootPEM)) {
			return nil, fmt.Errorf("[global] acme-ca-root: %s holds no PEM certificate", opts.CARoot)
		}
	}
	zl := zap.New(&slogCore{log: log})
	m.cache = certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert:   func(certmagic.Certificate) (*certmagic.Config, error) { return m.magic, nil },
		RenewCheckInterval: opts.RenewCheck,
		OCSPCheckInterval:  opts.RenewCheck,
		Logger:             zl,
	})
	m.magic = certmagic.New(m.cache, certmagic.Config{
		Storage: &certmagic.FileStorage{Path: opts.Storage},
		OnEvent: m.event,
		Logger:  zl,
	})
	iss := certmagic.ACMEIssuer{
		CA:           opts.CA,
		Email:        opts.Email,
		Agreed:       true,
		TrustedRoots: roots,
		Logger:       zl,
	}
	// One ListenHost serves both challenges: the frontends' common host,
	// else the wildcard, which conflicts with either socket.
	hosts := map[string]bool{}
	for _, c := range []struct {
		addr    string
		port    *int
		disable *bool
	}{{opts.HTTPAddr, &iss.AltHTTPPort, &iss.DisableHTTPChallenge}, {opts.TLSAddr, &iss.AltTLSALPNPort, &iss.DisableTLSALPNChallenge}} {
		if c.addr == "" {
			*c.disable = true
			continue
		}
		host, port, err := net.SplitHostPort(c.addr)
		if err != nil {
			return nil, err
		}
		*c.port, _ = strconv.Atoi(port)
		if isWildcard(host) {
			host = ""
		}
		hosts[host] = true
		iss.ListenHost = host
	}
	if len(hosts) > 1 {
		iss.ListenHost = ""
	}
	m.issuer = certmagic.NewACMEIssuer(m.magic, iss)
	m.magic.Issuers = []certmagic.Issuer{m.issuer}
	m.ctx, m.cancel = context.WithCancel(context.Background())
	return m, nil
}

func isWildcard(host string) bool {
	ip := net.ParseIP(host)
	return ip != nil && ip.IsUnspecified()
}

// Options returns what m was built from.
func (m *Manager) Options() Options { return m.opts }

// Manage makes names the managed ones: those new are loaded from storage
// now, so that they serve at once, or else obtained in the background (a
// handshake for them fails until then); those gone are no longer renewed.
func (m *Manager) Manage(names []string) {
	m.mu.Lock()
	var added []string
	keep := map[string]bool{}
	for _, n := range names {
		keep[n] = true
		if !m.names[n] {
			added = append(added, n)
		}
	}
	var gone []certmagic.SubjectIssuer
	for n := range m.names {
		if !keep[n] {
			gone = append(gone, certmagic.SubjectIssuer{Subject: n})
			delete(m.failed, n)
		}
	}
	m.names = keep
	m.mu.Unlock()
	if len(gone) > 0 {
		m.cache.RemoveManaged(gone)
	}
	if len(added) == 0 {
		return
	}
	m.log.Info("acme: managing certificates", "names", strings.Join(added, " "), "ca", m.opts.CA, "storage", m.opts.Storage)
	var wg sync.WaitGroup
	for _, n := range added {
		wg.Go(func() {
			cert, err := m.magic.CacheManagedCertificate(m.ctx, n)
			if err != nil || cert.NeedsRenewal(m.magic) {
				// Not in storage, or due: ManageAsync (re)loads it, then
				// obtains or renews it, and swaps the result in. Only a
				// canceled context makes it fail.
				m.cache.RemoveManaged([]certmagic.SubjectIssuer{{Subject: n}})
				m.magic.ManageAsync(m.ctx, []string{n})
			}
		})
	}
	// Loading reads the storage, and fetches an OCSP staple where the
	// certificate names a responder and none is stored: a responder that
	// does not answer must not hold up the start or the reload for long.
	loaded := make(chan struct{})
	go func() {
		wg.Wait()
		close(loaded)
	}()
	select {
	case <-loaded:
	case <-time.After(preloadWait):
		m.log.Warn("acme: loading certificates from storage takes long; serving without those not loaded yet", "wait", preloadWait)
	}
}

// preloadWait bounds how long Manage waits for certificates in storage.
const preloadWait = 2 * time.Second

// Managed reports whether name (lower case) is managed.
func (m *Manager) Managed(name string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.names[name]
}

// GetCertificate returns the certificate of a managed name, or for a
// TLS-ALPN-01 handshake of the CA, its challenge certificate.
func (m *Manager) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	return m.magic.GetCertificate(hello)
}

// HandleHTTP answers HTTP-01 challenges for managed names, whichever
// instance sharing the storage created them, and passes every other
// request to next.
func (m *Manager) HandleHTTP(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if certmagic.LooksLikeHTTPChallenge(r) && m.Managed(hostOnly(r.Host)) && m.issuer.HandleHTTPChallenge(w, r) {
			return
		}
		next.ServeHTTP(w, r)
	})
}

func hostOnly(hostport string) string {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	return strings.ToLower(strings.TrimSuffix(host, "."))
}

// Stop stops obtaining and renewing, and lets go of the storage's locks.
func (m *Manager) Stop() {
	m.cancel()
	m.cache.Stop()
}

// Status is a managed certificate as it stands.
type Status struct {
	Name  string   // the managed name
	Names []string // the certificate's names; Name alone before it has one
	// Issuer is the common name of the certificate's issuer; "" before it
	// has one.
	Issuer   string
	NotAfter time.Time // zero before it has one
	// NextRenewal is when it is due for renewal: the time chosen in the
	// CA's ARI window, else when a third of its lifetime is left.
	NextRenewal time.Time
	// LastError is the last failure to obtain or renew it, at
	// LastErrorAt; "" once it succeeded.
	LastError   string
	LastErrorAt time.Time
}

// Status returns each managed name's certificate, in name order.
func (m *Manager) Status() []Status {
	m.mu.Lock()
	names := make([]string, 0, len(m.names))
	for n := range m.names {
		names = append(names, n)
	}
	failed := make(map[string]failure, len(m.failed))
	for n, f := range m.failed {
		failed[n] = f
	}
	m.mu.Unlock()
	slices.Sort(names)
	out := make([]Status, 0, len(names))
	for _, n := range names {
		st := Status{Name: n, Names: []string{n}, LastError: failed[n].err, LastErrorAt: failed[n].at}
		var best *x509.Certificate
		for _, c := range m.cache.AllMatchingCertificates(n) {
			if c.Leaf != nil && (best == nil || c.Leaf.NotAfter.After(best.NotAfter)) {
				best = c.Leaf
			}
		}
		if best != nil {
			st.Names, st.Issuer, st.NotAfter = best.DNSNames, best.Issuer.CommonName, best.NotAfter
			st.NextRenewal = m.nextRenewal(n, best)
		}
		out = append(out, st)
	}
	return out
}

// nextRenewal is when certmagic renews leaf: at the time it chose in the
// CA's ARI window, kept with the certificate in storage, else when a
// third of its lifetime is left (certmagic's default ratio).
func (m *Manager) nextRenewal(name string, leaf *x509.Certificate) time.Time {
	fallback := leaf.NotAfter.Add(-leaf.NotAfter.Sub(leaf.NotBefore) / 3)
	data, err := m.magic.Storage.Load(m.ctx, certmagic.StorageKeys.SiteMeta(m.issuer.IssuerKey(), name))
	if err != nil {
		return fallback
	}
	var meta struct {
		IssuerData struct {
			RenewalInfo *struct {
				SelectedTime time.Time `json:"_selectedTime"`
			} `json:"renewal_info"`
		} `json:"issuer_data"`
	}
	if json.Unmarshal(data, &meta) != nil || meta.IssuerData.RenewalInfo == nil || meta.IssuerData.RenewalInfo.SelectedTime.IsZero() {
		return fallback
	}
	return meta.IssuerData.RenewalInfo.SelectedTime
}

// event logs what certmagic does with a name, and keeps its last failure.
func (m *Manager) event(_ context.Context, event string, data map[string]any) error {
	name, _ := data["identifier"].(string)
	renewal, _ := data["renewal"].(bool)
	what := "obtaining"
	if renewal {
		what = "renewing"
	}
	switch event {
	case "cert_obtaining":
		m.log.Info("acme: "+what+" certificate", "name", name, "ca", m.opts.CA)
	case "cert_obtained":
		m.mu.Lock()
		delete(m.failed, name)
		m.mu.Unlock()
		m.log.Info("acme: certificate obtained", "name", name, "renewal", renewal)
	case "cert_failed":
		err, _ := data["error"].(error)
		if err == nil {
			err = errors.New("unknown error")
		}
		m.mu.Lock()
		if m.names[name] {
			m.failed[name] = failure{err: err.Error(), at: time.Now()}
		}
		m.mu.Unlock()
		// certmagic tries again with backoff (a minute, then longer), and
		// a certificate still valid keeps being served meanwhile.
		m.log.Error("acme: "+what+" certificate failed; will retry", "name", name, "ca", m.opts.CA, "err", err)
	case "cached_managed_cert":
		if sans, ok := data["sans"].([]string); ok {
			m.log.Info("acme: certificate in use", "names", strings.Join(sans, " "))
		}
	}
	return nil
}
