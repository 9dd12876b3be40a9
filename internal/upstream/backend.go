// Package upstream holds the runtime side of backends: how to reach one (an
// HTTP/1.1 transport of its own, a dialer for tunnels), whether it is up (passive and
// active health checks), and pools that pick one and try another when a
// connect fails, or, for a request that may be sent twice, when the
// connection is lost before any answer (Pool.try).
package upstream

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"time"

	"github.com/hipsterd/hipsterd/internal/config"
)

// tcpKeepAlive is the keep-alive period of backend connections, so that a
// backend that vanished without a FIN is noticed on idle tunnels.
const tcpKeepAlive = 30 * time.Second

// Backend is one [backend] section made live. It is shared by every pool that
// lists it, and by successive configurations while its section is unchanged;
// while its connect is unchanged, the Backends of successive configurations
// share its slots and health (Inherit). It is safe for concurrent use.
type Backend struct {
	Name string
	Addr string // host:port
	// Scheme is "https" for a TLS backend, else "http".
	Scheme string
	// ResponseTimeout bounds the wait for the response header; 0: none.
	ResponseTimeout time.Duration

	cfg      config.Backend
	dialer   *net.Dialer
	h1       *h1Transport
	tls      *tls.Config // nil for plain backends
	health   *Health
	*slots   // in flight, and the queue for max-connections
	counters *Counters
	log      *slog.Logger

	stopChecks chan struct{} // nil unless checks run
}

// NewBackend builds the backend described by c; caPEM is the contents of
// its ca-file, if it has one. Its active checks, if any, do not run until
// StartChecks.
func NewBackend(c config.Backend, caPEM []byte, log *slog.Logger) *Backend {
	b := &Backend{
		Name:            c.Name,
		Addr:            c.Address,
		Scheme:          "http",
		ResponseTimeout: c.ResponseTimeout,
		cfg:             c,
		dialer:          &net.Dialer{Timeout: c.ConnectTimeout, KeepAlive: tcpKeepAlive},
		log:             log.With("backend", c.Name),
		counters:        new(Counters),
	}
	if c.TLS {
		b.Scheme = "https"
		b.tls = clientTLS(c, caPEM, b.log)
	}
	b.h1 = &h1Transport{dial: b.dial, timeout: c.ResponseTimeout, bodyTimeout: c.BodyTimeout, log: b.log, sendProxy: c.SendProxy != 0}
	hc := c.Health
	b.health = newHealth(c.Name, hc.Rise, hc.Fall, hc.Kind != config.HealthNone, hc.Interval, log)
	b.slots = new(slots)
	b.setLimits(int64(c.MaxConnections), int64(c.QueueSize))
	return b
}

// clientTLS is the TLS configuration for talking to backend c, whose
// ca-file holds caPEM. A ca-file without a certificate (validation rules it
// out) leaves an empty pool: every connect then fails verification, with a
// 502, and the error is logged.
func clientTLS(c config.Backend, caPEM []byte, log *slog.Logger) *tls.Config {
	conf := &tls.Config{
		ServerName:         c.TLSServerName,
		InsecureSkipVerify: c.TLSSkipVerify,
		MinVersion:         tls.VersionTLS12,
	}
	if conf.ServerName == "" {
		conf.ServerName, _, _ = net.SplitHostPort(c.Address)
	}
	if c.CAFile != "" {
		conf.RootCAs = x509.NewCertPool()
		if !conf.RootCAs.AppendCertsFromPEM(caPEM) {
			log.Error("reading ca-file", "path", c.CAFile, "err", "no PEM certificate in it")
		}
	}
	return conf
}

// ConnectError is a failure to connect to a backend, its TLS handshake
// included: nothing of a request reached it, so any request may be tried on
// another backend.
type ConnectError struct{ Err error }

func (e *ConnectError) Error() string { return e.Err.Error() }
func (e *ConnectError) Unwrap() error { return e.Err }

// dial connects to the backend, with TLS for a TLS backend.
func (b *Backend) dial(ctx context.Context) (net.Conn, error) {
	c, err := b.dialTCP(ctx, "tcp", b.Addr)
	if err != nil {
		return nil, &ConnectError{err}
	}
	if b.tls == nil {
		return c, nil
	}
	tc := tls.Client(c, b.tls)
	if err := tc.HandshakeContext(ctx); err != nil {
		c.Close()
		return nil, &ConnectError{fmt.Errorf("TLS handshake with %s: %w", b.Addr, err)}
	}
	return tc, nil
}

// Config is the section the backend was built from.
func (b *Backend) Config() config.Backend { return b.cfg }

// Up reports whether the backend may be sent traffic.
func (b *Backend) Up() bool { return b.health.Up() }

// InFlight is the number of requests and tunnels the backend serves now.
func (b *Backend) InFlight() int64 { return b.inflight.Load() }

// Health returns a snapshot of the backend's health.
func (b *Backend) Health() State { return b.health.State() }

// SameServer reports whether b and old connect to the same server: their
// connect is the same.
func (b *Backend) SameServer(old *Backend) bool {
	return b.Addr == old.Addr && b.Scheme == old.Scheme
}

// Inherit makes b, built by a reload from a changed section of the same
// server (SameServer), carry on old's state: its requests and tunnels in
// flight, its queue, its health. b's max-connections, queue-size and health
// figures then apply to both, as one server has one limit. Call it before b
// serves anything.
func (b *Backend) Inherit(old *Backend) {
	b.slots, b.health = old.slots, old.health
	hc := b.cfg.Health
	b.health.configure(hc.Rise, hc.Fall, hc.Kind != config.HealthNone, hc.Interval)
	b.setLimits(int64(b.cfg.MaxConnections), int64(b.cfg.QueueSize))
}

// Close stops the active checks and closes idle connections.
func (b *Backend) Close() {
	b.StopChecks()
	b.h1.close()
}

// StartChecks starts the active health checks, if the section asks for
// them. Calling it again does nothing.
func (b *Backend) StartChecks() {
	if b.cfg.Health.Kind == config.HealthNone || b.stopChecks != nil {
		return
	}
	b.stopChecks = make(chan struct{})
	go b.checkLoop(b.stopChecks)
}

// StopChecks stops the active health checks.
func (b *Backend) StopChecks() {
	if b.stopChecks != nil {
		close(b.stopChecks)
		b.stopChecks = nil
	}
}

// checkLoop runs the active checks until stop is closed. Each backend starts
// at a random point of its interval and every interval varies by ±10%, so
// that many backends are not probed in the same instant.
func (b *Backend) checkLoop(stop <-chan struct{}) {
	hc := b.cfg.Health
	client := &http.Client{
		Transport: &http.Transport{
			DialContext:       b.dialTCP,
			DisableKeepAlives: true,
			TLSClientConfig:   b.tls,
		},
		Timeout: hc.Timeout,
		// A redirect is an answer, and 3xx passes.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	timer := time.NewTimer(rand.N(hc.Interval))
	defer timer.Stop()
	for {
		select {
		case <-stop:
			return
		case <-timer.C:
		}
		if err := b.check(client); IsLocal(err) {
			// Out of file descriptors here says nothing of the backend.
			b.log.Warn("health check not run", "err", err)
		} else if err != nil {
			b.counters.ChecksFailed.Add(1)
			b.health.CheckFailed(err.Error())
		} else {
			b.counters.ChecksPassed.Add(1)
			b.health.CheckPassed()
		}
		timer.Reset(hc.Interval - hc.Interval/10 + rand.N(hc.Interval/5+1))
	}
}

func (b *Backend) check(client *http.Client) error {
	hc := b.cfg.Health
	ctx, cancel := context.WithTimeout(context.Background(), hc.Timeout)
	defer cancel()
	if hc.Kind == config.HealthTCP {
		c, err := b.dialTCP(ctx, "tcp", b.Addr)
		if err != nil {
			return fmt.Errorf("tcp check: %w", err)
		}
		return c.Close()
	}
	req, err := http.NewRequestWithContext(ctx, "GET", b.Scheme+"://"+b.Addr+hc.Path, nil)
	if err != nil {
		return fmt.Errorf("GET %s: %w", hc.Path, err)
	}
	if hc.Host != "" {
		req.Host = hc.Host
	}
	resp, err := client.Do(req)
	if err != nil {
		var ue interface{ Unwrap() error }
		if errors.As(err, &ue) {
			err = ue.Unwrap() // drop the *url.Error's repetition of the URL
		}
		return fmt.Errorf("GET %s: %w", hc.Path, err)
	}
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 399 {
		return fmt.Errorf("GET %s: %d", hc.Path, resp.StatusCode)
	}
	return nil
}

// isConnect reports whether err is a failure to connect: nothing of the
// request reached the backend.
func isConnect(err error) bool {
	var ce *ConnectError
	return errors.As(err, &ce)
}

// StatusFor maps an error forwarding a request to the status a client gets:
// no backend up, no room in a queue, or none reachable for lack of a local
// resource, is 503; a request body from the client that stalled past
// client-timeout 408, a bad one 400; failing to connect 502 whatever the
// cause; a timeout after connecting 504; anything else 502.
func StatusFor(err error) int {
	var ce *ClientError
	switch {
	case errors.Is(err, ErrNoBackend) || errors.Is(err, ErrQueueTimeout) || errors.Is(err, ErrQueueFull) || IsLocal(err):
		return http.StatusServiceUnavailable
	case errors.As(err, &ce) && IsTimeout(ce.Err):
		return http.StatusRequestTimeout
	case errors.As(err, &ce):
		return http.StatusBadRequest
	case isConnect(err):
		return http.StatusBadGateway
	case IsTimeout(err):
		return http.StatusGatewayTimeout
	}
	return http.StatusBadGateway
}
