package upstream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hipsterd/hipsterd/internal/config"
	"github.com/hipsterd/hipsterd/internal/exchange"
)

// ErrNoBackend is returned when every backend of a pool is down.
var ErrNoBackend = errors.New("no backend available: every backend of this pool is down")

// Pool is one list of backends (a frontend's, or a [host] section's within a
// frontend) and the way it picks among them. It forwards HTTP requests
// (ServeHTTP) and opens tunnels (Dial); when connecting to the chosen
// backend fails it tries the next, until each backend was tried once, as
// try's rule says (which also covers a lost connection).
// It is safe for concurrent use.
type Pool struct {
	entries []*Backend // as listed, each repeated Weight times
	unique  []*Backend
	share   []int64 // per unique backend: its entries
	balance config.Balance
	xff     bool
	next    atomic.Uint64
	ring    ring
	series  []exchange.Series // per unique backend, for the metrics: see SetSeries
	proxy   *httputil.ReverseProxy
	log     *slog.Logger
}

// NewPool returns a pool over list (a backend listed twice gets twice the
// share, as does weight 2) that picks by balance, adding X-Forwarded-For to
// requests when xff is true. It panics on an empty list: config validation
// rules that out.
func NewPool(list []*Backend, balance config.Balance, xff bool, log *slog.Logger) *Pool {
	if len(list) == 0 {
		panic("upstream: empty pool")
	}
	p := &Pool{balance: balance, xff: xff, log: log}
	index := map[*Backend]int{}
	for _, b := range list {
		i, ok := index[b]
		if !ok {
			i = len(p.unique)
			index[b] = i
			p.unique = append(p.unique, b)
			p.share = append(p.share, 0)
		}
		for w := 0; w < max(b.cfg.Weight, 1); w++ {
			p.entries = append(p.entries, b)
			p.share[i]++
		}
	}
	if balance == config.Source {
		p.ring = newRing(p.unique, p.share)
	}
	p.proxy = &httputil.ReverseProxy{
		Rewrite:      p.rewrite,
		Transport:    p,
		BufferPool:   bufferPool,
		ErrorHandler: p.proxyError,
		ErrorLog:     slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	return p
}

// ServeHTTP forwards r to a backend of the pool.
func (p *Pool) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	defer flushOnAbort(w)
	p.proxy.ServeHTTP(w, r)
}

// flushOnAbort sends the client what is buffered of a response whose body
// broke (body-timeout, a backend reset): ReverseProxy then aborts the
// handler with http.ErrAbortHandler, and net/http would close the
// connection without it. The client gets every byte the backend sent, in
// a response cut short.
func flushOnAbort(w http.ResponseWriter) {
	if v := recover(); v != nil {
		if v == http.ErrAbortHandler {
			http.NewResponseController(w).Flush()
		}
		panic(v)
	}
}

// pick returns the backend to try next, skipping those that are down or
// already tried; nil when none is left. key is the client's hash (source).
func (p *Pool) pick(key uint64, tried []*Backend) *Backend {
	switch p.balance {
	case config.LeastConn:
		// Any backend with a free slot before one whose queue it joins.
		if b := p.leastConn(tried, true); b != nil {
			return b
		}
		return p.leastConn(tried, false)
	case config.Source:
		return p.ring.pick(p.unique, key, tried)
	}
	n := p.next.Add(1) - 1
	l := uint64(len(p.entries))
	var queued *Backend // the first in turn, though at max-connections
	for i := uint64(0); i < l; i++ {
		if b := p.entries[(n+i)%l]; b.Up() && !slices.Contains(tried, b) {
			if !b.full() {
				return b
			}
			if queued == nil {
				queued = b
			}
		}
	}
	return queued
}

// leastConn returns the backend with the fewest requests and tunnels in
// flight for its share, among those with a free slot if free is true; ties
// go round-robin.
func (p *Pool) leastConn(tried []*Backend, free bool) *Backend {
	var bestLoad, bestShare int64
	ties := uint64(0)
	for j, b := range p.unique {
		if !b.Up() || slices.Contains(tried, b) || free && b.full() {
			continue
		}
		load := b.inflight.Load()
		// Compare load/share with bestLoad/bestShare, without division.
		switch l, r := load*bestShare, bestLoad*p.share[j]; {
		case ties == 0 || l < r:
			bestLoad, bestShare, ties = load, p.share[j], 1
		case l == r:
			ties++
		}
	}
	if ties == 0 {
		return nil
	}
	k := (p.next.Add(1) - 1) % ties
	for j, b := range p.unique {
		if b.Up() && !slices.Contains(tried, b) && !(free && b.full()) && b.inflight.Load()*bestShare == bestLoad*p.share[j] {
			if k == 0 {
				return b
			}
			k--
		}
	}
	// Loads moved between the two passes; any candidate will do.
	for _, b := range p.unique {
		if b.Up() && !slices.Contains(tried, b) && !(free && b.full()) {
			return b
		}
	}
	return nil
}

// clientHash hashes the client's IP for source balancing: with
// add-x-forwarded-for, the first address of X-Forwarded-For (the client as
// the first proxy saw it); otherwise, and when there is none, the peer.
func (p *Pool) clientHash(remoteAddr string, hdr http.Header) uint64 {
	if p.balance != config.Source {
		return 0
	}
	if p.xff {
		if v := hdr["X-Forwarded-For"]; len(v) > 0 {
			first, _, _ := strings.Cut(v[0], ",")
			return hashString(strings.TrimSpace(first))
		}
	}
	host, _, err := net.SplitHostPort(remoteAddr)
	if err != nil {
		host = remoteAddr
	}
	return hashString(host)
}

// errHandedOff ends ReverseProxy's part in an upgrade that a Handoff took
// over: there is nothing left for it to answer.
var errHandedOff = errors.New("connection handed off to a tunnel")

// RoundTrip sends req to a backend of the pool, with try's rule for trying
// another. A 101 answer to an upgrade request goes to the request's Handoff.
func (p *Pool) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	// The body is not closed here: it may still be on its way to the
	// backend while the answer goes to the client. ReverseProxy hands
	// over a body whose Close does nothing, and net/http closes the
	// client's when the handler returns.
	withBody := hasBody(req)
	x := exchange.FromContext(ctx)
	var resp *http.Response
	err := p.try(ctx, p.clientHash(req.RemoteAddr, req.Header), x, !withBody && replayable(req), func(b *Backend, s *Slot) (err error) {
		req.URL.Scheme, req.URL.Host = b.Scheme, b.Addr
		resp, err = b.h1.roundTrip(req, s)
		return err
	})
	if err != nil {
		return nil, err
	}
	if x != nil && x.Edit != nil {
		x.Edit(resp.Header)
	}
	if u, ok := resp.Body.(*upgraded); ok {
		return nil, passUpgraded(x, resp, u)
	}
	return resp, nil
}

// passUpgraded gives the connection of a backend that switched protocols
// to the exchange's Handoff.
func passUpgraded(x *exchange.Exchange, resp *http.Response, u *upgraded) error {
	pc, slot := u.pc, u.slot
	if x == nil || x.Handoff == nil {
		pc.Close()
		slot.Release()
		return errUnasked101
	}
	var early []byte
	if n := pc.br.Buffered(); n > 0 {
		early, _ = pc.br.Peek(n)
	}
	if err := x.Handoff(resp, pc.Conn, early, slot); err != nil {
		pc.Close()
		slot.Release()
		return fmt.Errorf("backend %s: %w", slot.b.Name, err)
	}
	return errHandedOff
}

// Dial connects to a backend of the pool for a raw tunnel, with try's rule
// for trying another. remoteAddr is the client's address and hdr its
// request's header, nil for a raw TCP connection (both for source
// balancing). The caller releases the slot when the tunnel ends.
func (p *Pool) Dial(ctx context.Context, remoteAddr string, hdr http.Header) (net.Conn, *Slot, error) {
	var conn net.Conn
	var slot *Slot
	err := p.try(ctx, p.clientHash(remoteAddr, hdr), exchange.FromContext(ctx), false, func(b *Backend, s *Slot) (err error) {
		conn, err = b.dial(ctx)
		slot = s
		return err
	})
	if err != nil {
		return nil, nil, err
	}
	return conn, slot, nil
}

// try is the pool's one loop for picking a backend and trying another,
// for requests and tunnels alike. Each backend that is up gets at most one
// try, in the order of the pool's balance. do makes the try, holding a slot
// on the backend; do's caller owns the slot once do succeeds, and try
// releases it when do fails.
//
// The rule for trying again after a failure, from how it failed (fault):
//   - a kept-alive connection lost as the request went out (the backend's
//     idle timeout may have closed it): the request goes again to the
//     same backend, on a new connection, if nothing of it was sent or it
//     may be sent twice (resend: GET, HEAD, OPTIONS, TRACE or an
//     Idempotency-Key, without a body); the backend is not to blame;
//   - a failed connect (refused, unreachable, timed out, TLS handshake),
//     or a connection lost before any byte of the request left: nothing
//     reached the backend, so any request, whatever its method and body,
//     goes to the next;
//   - a connection lost before any byte of a response: the request may
//     have reached the backend, so only one that may be sent twice goes to
//     the next;
//   - anything else (a response-timeout, a broken response, the client
//     gone, this process out of file descriptors): none.
//
// Each failure the backend is to blame for counts as a passive failure;
// each try after the first counts once, as a retry on another backend or
// a resend on the same one. x, when not nil, records the backend tried,
// the retries and the time to the response header.
func (p *Pool) try(ctx context.Context, key uint64, x *exchange.Exchange, resend bool, do func(*Backend, *Slot) error) error {
	var triedBuf [4]*Backend // a few fit on the stack
	tried := triedBuf[:0]
	var lastErr error
	var start time.Time
	if x != nil {
		start = time.Now()
	}
	// A down backend is tried by one request at a time (Health.admit),
	// until the outcome of its try is recorded.
	var probing *Backend
	endProbe := func() {
		if probing != nil {
			probing.health.endProbe()
			probing = nil
		}
	}
	defer endProbe()
	for {
		endProbe()
		b := p.pick(key, tried)
		if b == nil {
			break
		}
		probe, ok := b.health.admit()
		if !ok {
			continue // another request tries it, and pick passes it over meanwhile
		}
		if probe {
			probing = b
		}
		if n := len(tried); n > 0 {
			// Counted on the backend that failed the try before.
			tried[n-1].counters.Retries.Add(1)
			if x != nil {
				x.Retries++
			}
		}
		if x != nil {
			x.Backend = b.Name
			x.Series = p.seriesOf(b)
		}
		tried = append(tried, b)
		s, err := b.take(ctx)
		if err != nil {
			// Queued past queue-timeout, its queue full, or the client
			// left meanwhile.
			lastErr = fmt.Errorf("backend %s: %w", b.Name, err)
			if errors.Is(err, ErrQueueFull) {
				continue // as HAProxy redispatches past a server's maxqueue
			}
			break
		}
		err = do(b, s)
		for err != nil && ctx.Err() == nil && resendable(err, resend) {
			b.counters.Resends.Add(1)
			if x != nil {
				x.Retries++
			}
			err = do(b, s)
		}
		if err == nil {
			b.health.Answered()
			if x != nil {
				x.Header = time.Since(start)
			}
			return nil
		}
		s.Release()
		lastErr = fmt.Errorf("backend %s: %w", b.Name, err)
		f := faultOf(err)
		if ctx.Err() != nil || f == faultLocal || f == faultClient {
			break
		}
		b.health.PassiveFailed(err.Error())
		if f == faultConnect {
			b.counters.ConnectFailures.Add(1)
		}
		if !f.another(resend) {
			break
		}
	}
	if lastErr == nil {
		return ErrNoBackend
	}
	return lastErr
}

// forwardingHeaders are the headers that ReverseProxy removes before Rewrite
// is called. drunken-hipster passed them on untouched, and so does hipsterd.
var forwardingHeaders = []string{"Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"}

func (p *Pool) rewrite(pr *httputil.ProxyRequest) {
	// RoundTrip sets the scheme and host of the backend it picks.
	// ReverseProxy drops query parameters it cannot parse; the backend gets
	// the query exactly as the client sent it.
	pr.Out.URL.RawQuery = pr.In.URL.RawQuery
	// net/http fills the incoming request's trailers once its body is read
	// to the end; Out's are a copy made before, which would stay empty.
	pr.Out.Trailer = pr.In.Trailer
	for _, h := range forwardingHeaders {
		if v, ok := pr.In.Header[h]; ok {
			pr.Out.Header[h] = v
		}
	}
	if p.xff {
		AppendForwardedFor(pr.Out.Header, pr.In.Header, pr.In.RemoteAddr)
	}
}

// AppendForwardedFor sets out's X-Forwarded-For to in's, with the client IP of
// remoteAddr appended, as one header line: a backend may read only the first.
func AppendForwardedFor(out, in http.Header, remoteAddr string) {
	ip, _, err := net.SplitHostPort(remoteAddr)
	if err != nil {
		return
	}
	if prior := in["X-Forwarded-For"]; len(prior) > 0 {
		ip = strings.Join(prior, ", ") + ", " + ip
	}
	out["X-Forwarded-For"] = []string{ip}
}

// proxyError answers a request that could not be forwarded (StatusFor): 503
// when every backend is down, the request's queue-timeout passed, the
// queues it could join were full or this process lacked a resource, 502
// when none could be reached or one broke the exchange, 504 when it did not
// answer in time, 400 or 408 when the client's body was bad or stalled. A client that went away otherwise gets
// nothing; the access log records 499 for it.
func (p *Pool) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	status := StatusFor(err)
	clientFault := status == http.StatusBadRequest || status == http.StatusRequestTimeout
	// A client whose own body failed may still read why, though net/http
	// cancelled its request.
	if errors.Is(err, errHandedOff) || r.Context().Err() != nil && !clientFault {
		return
	}
	switch {
	case errors.Is(err, ErrNoBackend) || errors.Is(err, ErrQueueTimeout) || errors.Is(err, ErrQueueFull):
		// The backends' going down was logged; each refused request is in
		// the access log. The body names no backend.
		msg := ErrNoBackend.Error()
		for _, e := range []error{ErrQueueTimeout, ErrQueueFull} {
			if errors.Is(err, e) {
				msg = e.Error()
			}
		}
		http.Error(w, msg, status)
		return
	case clientFault:
		// The client's fault: worth a line when debugging only. What is
		// left of its body cannot be told from a next request: the
		// connection closes, and says so.
		w.Header().Set("Connection", "close")
		p.log.Debug("bad request body", "method", r.Method, "uri", r.RequestURI, "err", err)
		http.Error(w, http.StatusText(status), status)
		return
	}
	p.log.Error("proxy error", "method", r.Method, "uri", r.RequestURI, "status", status, "err", err)
	http.Error(w, http.StatusText(status), status)
}

// copyBufferSize is the size of ReverseProxy's copy buffers, one per
// response body being copied: 64 KiB moves a 64 KiB body in one read and one
// write where 32 KiB took two of each (2 system calls and a wake-up of the
// client fewer; 64 KiB keep-alive requests 10-25 % cheaper).
const copyBufferSize = 64 << 10

// bufferPool lends ReverseProxy copy buffers, so a response body copy
// allocates nothing.
var bufferPool = &bytePool{pool: sync.Pool{New: func() any { return new([copyBufferSize]byte) }}}

// bytePool keeps arrays, not slices: a pointer to an array goes in and out
// of a sync.Pool without an allocation.
type bytePool struct{ pool sync.Pool }

func (p *bytePool) Get() []byte { return p.pool.Get().(*[copyBufferSize]byte)[:] }

func (p *bytePool) Put(b []byte) {
	if cap(b) >= copyBufferSize {
		p.pool.Put((*[copyBufferSize]byte)(b[:copyBufferSize]))
	}
}
