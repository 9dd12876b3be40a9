package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/hipsterd/hipsterd/internal/config"
)

// ErrNoBackend is returned when every backend of a pool is down.
var ErrNoBackend = errors.New("no backend available: every backend of this pool is down")

// Pool is one list of backends (a frontend's, or a [host] section's within a
// frontend) and the way it picks among them. It forwards HTTP requests
// (ServeHTTP) and opens tunnels (Dial); when connecting to the chosen
// backend fails, it tries the next, until each backend was tried once.
// It is safe for concurrent use.
type Pool struct {
	entries []*Backend // as listed, each repeated Weight times
	unique  []*Backend
	share   []int64 // per unique backend: its entries
	balance config.Balance
	xff     bool
	next    atomic.Uint64
	ring    ring
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
	p.proxy.ServeHTTP(w, r)
}

// pick returns the backend to try next, skipping those that are down or
// already tried; nil when none is left. key is the client's hash (source).
func (p *Pool) pick(key uint64, tried []*Backend) *Backend {
	switch p.balance {
	case config.LeastConn:
		return p.leastConn(tried)
	case config.Source:
		return p.ring.pick(p.unique, key, tried)
	}
	n := p.next.Add(1) - 1
	l := uint64(len(p.entries))
	for i := uint64(0); i < l; i++ {
		if b := p.entries[(n+i)%l]; b.Up() && !contains(tried, b) {
			return b
		}
	}
	return nil
}

// leastConn returns the backend with the fewest requests and tunnels in
// flight for its share; ties go round-robin.
func (p *Pool) leastConn(tried []*Backend) *Backend {
	var bestLoad, bestShare int64
	ties := uint64(0)
	for j, b := range p.unique {
		if !b.Up() || contains(tried, b) {
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
		if b.Up() && !contains(tried, b) && b.inflight.Load()*bestShare == bestLoad*p.share[j] {
			if k == 0 {
				return b
			}
			k--
		}
	}
	// Loads moved between the two passes; any candidate will do.
	for _, b := range p.unique {
		if b.Up() && !contains(tried, b) {
			return b
		}
	}
	return nil
}

func contains(list []*Backend, b *Backend) bool {
	for _, x := range list {
		if x == b {
			return true
		}
	}
	return false
}

// clientKey hashes the client's IP for source balancing: with
// add-x-forwarded-for, the first address of X-Forwarded-For (the client as
// the first proxy saw it); otherwise, and when there is none, the peer.
func (p *Pool) clientKey(remoteAddr string, hdr http.Header) uint64 {
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

// RoundTrip sends req to a backend of the pool. A request that could not be
// connected is tried on the next backend, whatever its method: none of it
// reached a backend. A replayable request (GET, HEAD, OPTIONS, TRACE, or
// one with an idempotency key) without a body that failed before any
// response is tried on the next backend too. Everything else is sent once.
func (p *Pool) RoundTrip(req *http.Request) (*http.Response, error) {
	key := p.clientKey(req.RemoteAddr, req.Header)
	body := req.Body
	hasBody := body != nil && body != http.NoBody
	if hasBody {
		// The transport closes the body when it fails; after a failed
		// connect the body is unread and must survive for the next try.
		req.Body = noCloseBody{body}
	}
	fast := canFastPath(req)
	idempotent := !hasBody && replayable(req)
	var triedBuf [4]*Backend // a few fit on the stack
	tried := triedBuf[:0]
	var lastErr error
	for {
		b := p.pick(key, tried)
		if b == nil {
			break
		}
		tried = append(tried, b)
		req.URL.Scheme, req.URL.Host = b.Scheme, b.Addr
		b.inflight.Add(1)
		var resp *http.Response
		var err error
		if fast {
			// The body, when done, takes the request out of flight.
			resp, err = b.h1.RoundTrip(req)
		} else if resp, err = b.transport.RoundTrip(req); err == nil {
			resp.Body = &releaseBody{ReadCloser: resp.Body, b: b}
		}
		if err == nil {
			b.health.Passed(false)
			return resp, nil
		}
		b.inflight.Add(-1)
		lastErr = fmt.Errorf("backend %s: %w", b.Name, err)
		if req.Context().Err() != nil {
			break
		}
		if isDial(err) {
			b.health.Failed(err.Error())
			continue
		}
		if idempotent && StatusFor(err) != http.StatusGatewayTimeout {
			continue
		}
		break
	}
	if hasBody {
		body.Close()
	}
	if lastErr == nil {
		return nil, ErrNoBackend
	}
	return nil, lastErr
}

// Dial connects to a backend of the pool for a tunnel, trying the next
// backend when a connect fails. remoteAddr is the client's address and hdr
// its request's header, nil for a raw TCP connection (both for source
// balancing). The caller must call Release on the backend when the tunnel
// ends.
func (p *Pool) Dial(ctx context.Context, remoteAddr string, hdr http.Header) (net.Conn, *Backend, error) {
	key := p.clientKey(remoteAddr, hdr)
	var triedBuf [4]*Backend // a few fit on the stack
	tried := triedBuf[:0]
	var lastErr error
	for {
		b := p.pick(key, tried)
		if b == nil {
			break
		}
		tried = append(tried, b)
		c, err := b.dial(ctx)
		if err == nil {
			b.inflight.Add(1)
			return c, b, nil
		}
		lastErr = fmt.Errorf("backend %s: %w", b.Name, err)
		if ctx.Err() != nil {
			break
		}
		if isDial(err) {
			b.health.Failed(err.Error())
		}
	}
	if lastErr == nil {
		return nil, nil, ErrNoBackend
	}
	return nil, nil, lastErr
}

// noCloseBody keeps the transport from closing a request body it may need
// to send again.
type noCloseBody struct{ io.ReadCloser }

func (noCloseBody) Close() error { return nil }

// releaseBody counts a response as in flight until its body is closed.
type releaseBody struct {
	io.ReadCloser
	b    *Backend
	done atomic.Bool
}

func (r *releaseBody) Close() error {
	if r.done.CompareAndSwap(false, true) {
		r.b.inflight.Add(-1)
	}
	return r.ReadCloser.Close()
}

// forwardingHeaders are the headers that ReverseProxy removes before Rewrite
// is called. drunken-hipster passed them on untouched, and so does hipsterd.
var forwardingHeaders = []string{"Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"}

func (p *Pool) rewrite(pr *httputil.ProxyRequest) {
	// RoundTrip sets the scheme and host of the backend it picks.
	// ReverseProxy drops query parameters it cannot parse; the backend gets
	// the query exactly as the client sent it.
	pr.Out.URL.RawQuery = pr.In.URL.RawQuery
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

// proxyError answers a request that could not be forwarded: 503 when every
// backend is down, 502 when none could be reached or one broke the exchange,
// 504 when it did not answer in time. A client that went away gets nothing;
// the access log records 499 for it.
func (p *Pool) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	if r.Context().Err() != nil {
		return
	}
	status := StatusFor(err)
	if status == http.StatusServiceUnavailable {
		// The backends' going down was logged; each refused request is in
		// the access log.
		http.Error(w, ErrNoBackend.Error(), status)
		return
	}
	p.log.Error("proxy error", "method", r.Method, "uri", r.RequestURI, "status", status, "err", err)
	http.Error(w, http.StatusText(status), status)
}

// copyBufferSize is the size of ReverseProxy's copy buffers.
const copyBufferSize = 32 << 10

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
