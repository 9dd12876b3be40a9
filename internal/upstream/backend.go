// Package upstream holds the runtime side of backends: how to reach one (an
// HTTP reverse proxy over a tuned transport, a dialer for tunnels) and pools
// that pick one in turn.
package upstream

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"strings"
	"sync"
	"time"

	"github.com/hipsterd/hipsterd/internal/config"
)

// tcpKeepAlive is the keep-alive period of backend connections, so that a
// backend that vanished without a FIN is noticed on idle tunnels.
const tcpKeepAlive = 30 * time.Second

// Backend is one [backend] section made live. It is shared by every pool that
// lists it and is safe for concurrent use.
type Backend struct {
	Name string
	Addr string // host:port
	// ResponseTimeout bounds the wait for the response header; 0: none.
	ResponseTimeout time.Duration

	dialer    *net.Dialer
	transport *http.Transport
	// proxies[1] adds X-Forwarded-For, proxies[0] does not; a frontend picks
	// one by its add-x-forwarded-for, so nothing is decided per request.
	proxies [2]*httputil.ReverseProxy
	log     *slog.Logger
}

// NewBackend builds the backend described by c. Errors are logged to log.
func NewBackend(c config.Backend, log *slog.Logger) *Backend {
	b := &Backend{
		Name:            c.Name,
		Addr:            c.Address,
		ResponseTimeout: c.ResponseTimeout,
		dialer:          &net.Dialer{Timeout: c.ConnectTimeout, KeepAlive: tcpKeepAlive},
		log:             log.With("backend", c.Name),
	}
	b.transport = &http.Transport{
		DialContext:           b.dialer.DialContext,
		ResponseHeaderTimeout: c.ResponseTimeout,
		// Go's default of 2 idle connections per host makes every burst
		// above two concurrent requests open and close connections.
		MaxIdleConns:        1024,
		MaxIdleConnsPerHost: 256,
		IdleConnTimeout:     90 * time.Second,
		// Bodies pass through as the backend sent them.
		DisableCompression: true,
		// No Proxy: HTTP_PROXY in the environment must not divert traffic.
		ExpectContinueTimeout: time.Second,
	}
	errorLog := slog.NewLogLogger(b.log.Handler(), slog.LevelWarn)
	for i, xff := range []bool{false, true} {
		b.proxies[i] = &httputil.ReverseProxy{
			Rewrite:      b.rewrite(xff),
			Transport:    b.transport,
			BufferPool:   bufferPool,
			ErrorHandler: b.proxyError,
			ErrorLog:     errorLog,
		}
	}
	return b
}

// Proxy returns the handler that forwards a request to this backend, adding
// X-Forwarded-For when xff is true.
func (b *Backend) Proxy(xff bool) http.Handler {
	if xff {
		return b.proxies[1]
	}
	return b.proxies[0]
}

// Dial opens a TCP connection to the backend, for a tunnel.
func (b *Backend) Dial(ctx context.Context) (net.Conn, error) {
	return b.dialer.DialContext(ctx, "tcp", b.Addr)
}

// Close releases the backend's idle connections.
func (b *Backend) Close() {
	b.transport.CloseIdleConnections()
}

// forwardingHeaders are the headers that ReverseProxy removes before Rewrite
// is called. drunken-hipster passed them on untouched, and so does hipsterd.
var forwardingHeaders = []string{"Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"}

func (b *Backend) rewrite(xff bool) func(*httputil.ProxyRequest) {
	return func(pr *httputil.ProxyRequest) {
		pr.Out.URL.Scheme = "http"
		pr.Out.URL.Host = b.Addr
		// ReverseProxy drops query parameters it cannot parse; the backend
		// gets the query exactly as the client sent it.
		pr.Out.URL.RawQuery = pr.In.URL.RawQuery
		for _, h := range forwardingHeaders {
			if v, ok := pr.In.Header[h]; ok {
				pr.Out.Header[h] = v
			}
		}
		if xff {
			AppendForwardedFor(pr.Out.Header, pr.In.Header, pr.In.RemoteAddr)
		}
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

// proxyError answers a request that could not be forwarded: 502 when the
// backend could not be reached or broke the exchange, 504 when it did not
// answer in time. A client that went away gets nothing; the access log
// records 499 for it.
func (b *Backend) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	if r.Context().Err() != nil {
		return
	}
	status := StatusFor(err)
	b.log.Error("proxy error", "method", r.Method, "uri", r.RequestURI, "status", status, "err", err)
	http.Error(w, http.StatusText(status), status)
}

// StatusFor maps an error talking to a backend to the status a client gets:
// failing to connect is 502 whatever the cause, a timeout after connecting is
// 504, anything else 502.
func StatusFor(err error) int {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return http.StatusBadGateway
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return http.StatusGatewayTimeout
	}
	return http.StatusBadGateway
}

// bufferPool lends ReverseProxy 32 KiB copy buffers, so a response body copy
// allocates nothing.
var bufferPool = &bytePool{pool: sync.Pool{New: func() any { b := make([]byte, 32*1024); return &b }}}

type bytePool struct{ pool sync.Pool }

func (p *bytePool) Get() []byte  { return *p.pool.Get().(*[]byte) }
func (p *bytePool) Put(b []byte) { p.pool.Put(&b) }
