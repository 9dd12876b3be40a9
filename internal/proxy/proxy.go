// Package proxy is a frontend's request handler: it routes a request by its
// path and Host header to a pool and forwards it there, over HTTP or, for a
// WebSocket upgrade, as a byte tunnel; or answers a route's redirect.
package proxy

import (
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/hipsterd/hipsterd/internal/config"
	"github.com/hipsterd/hipsterd/internal/exchange"
	"github.com/hipsterd/hipsterd/internal/router"
	"github.com/hipsterd/hipsterd/internal/tunnel"
)

// NoBackendBody is the body of the 503 sent when no pool applies; it keeps
// drunken-hipster's words, which scripts may look for.
const NoBackendBody = "no suitable backend found for request"

// Handler serves one frontend. It runs inside an exchange.Frontend's
// handler: the request's context is its exchange.
type Handler struct {
	Router *router.Router
	// Tunnels runs WebSocket tunnels and records them, for shutdown.
	// Required.
	Tunnels *tunnel.Registry
	// TunnelTimeout closes a tunnel in which no byte moved either way for
	// that long, or whose write to a peer made no progress for that long.
	// Zero means no limit.
	TunnelTimeout time.Duration
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodConnect {
		// A reverse proxy has no tunnel to open to the client's authority;
		// forwarded, the request reached the backend naming the backend's
		// own address, and a 2xx to it leaves client and proxy out of
		// step. nginx answers 405 too.
		w.Header().Set("Allow", "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS")
		http.Error(w, "CONNECT is not served by a reverse proxy", http.StatusMethodNotAllowed)
		return
	}
	if r.RequestURI == "*" && r.Method != http.MethodOptions {
		// RFC 9112, section 3.2.4: the asterisk form is for OPTIONS
		// only. net/http lets "PRI * HTTP/2.0" (a prior-knowledge h2c
		// preface) and "GET *" through, and backends got them as
		// requests.
		http.Error(w, "request target * is for OPTIONS only", http.StatusBadRequest)
		return
	}
	if r.URL.Opaque != "" {
		// An absolute URI without an authority ("a:b") has no origin form
		// to forward: its opaque part would reach the backend as the
		// request target, which is not a valid one. Found by fuzzing.
		http.Error(w, "request target has no origin form", http.StatusBadRequest)
		return
	}
	var path string
	if h.Router.HasRoutes() {
		path = r.URL.EscapedPath()
	}
	d := h.Router.Decide(r.Host, path)
	if d.BadPath != nil {
		http.Error(w, "bad request path: "+d.BadPath.Error(), http.StatusBadRequest)
		return
	}
	x := exchange.FromContext(r.Context())
	if d.Route != nil {
		x.Route, x.RouteSeries = d.Route.Name, d.Route.Series
		if d.Route.Redirect != "" {
			redirect(w, r, &d)
			return
		}
	}
	pool := d.Pool()
	if pool == nil {
		http.Error(w, NoBackendBody, http.StatusServiceUnavailable)
		return
	}
	if r.ProtoMajor == 1 && len(r.TransferEncoding) > 0 {
		// A request with both Content-Length and Transfer-Encoding must
		// have its connection closed after the answer (RFC 9112 §6.3), and
		// net/http drops Content-Length before a handler can tell: every
		// chunked request's connection is closed. They are rare.
		w.Header().Set("Connection", "close")
	}
	x.Edit = d.Edit()
	r = prepare(r, &d)
	if r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0 {
		// A backend may answer before the body is all sent (a 413, a
		// 401): its answer goes to the client at once, while the body
		// still goes to the backend, as in HAProxy. Without this, net/http
		// holds the answer back until it has read and dropped what is
		// left of the body, from under the transport sending it.
		// (HTTP/2 is full duplex already.)
		http.NewResponseController(w).EnableFullDuplex()
	}
	if IsWebSocket(r.Header) {
		h.serveWebSocket(x, w, r, pool)
		return
	}
	if _, ok := r.Header["Upgrade"]; ok {
		// Only WebSocket upgrades are tunnelled. Without the header,
		// ReverseProxy forwards the request as a plain one (and drops the
		// Connection: upgrade token as a hop-by-hop header).
		r.Header.Del("Upgrade")
	}
	pool.ServeHTTP(w, r)
}

// prepare returns r as it goes to the backend: less the route's prefix
// with strip-prefix, with the request header rules applied, and carrying
// the response header rules. r itself is left as it came, for the access
// log; without anything to change, it is returned as it is. The response
// rules are the exchange's Edit.
func prepare(r *http.Request, d *router.Decision) *http.Request {
	var routeRules []config.HeaderRule
	strip := false
	if d.Route != nil {
		routeRules, strip = d.Route.Headers.Request, d.Route.StripPrefix
	}
	if !strip && len(d.Target.Request) == 0 && len(routeRules) == 0 {
		return r
	}
	out := r.WithContext(r.Context())
	if strip {
		// What follows the prefix in the path's normal form: for a path
		// already normal, what the client sent less the prefix.
		u := *r.URL
		u.Path, _ = url.PathUnescape(d.Rest)
		u.RawPath = d.Rest
		out.URL = &u
	}
	if len(d.Target.Request) > 0 || len(routeRules) > 0 {
		out.Header = r.Header.Clone()
		router.ApplyRequest(d.Target.Request, out)
		router.ApplyRequest(routeRules, out)
	}
	return out
}

// redirect answers a redirect route: its URL, the path after the prefix
// and the query.
func redirect(w http.ResponseWriter, r *http.Request, d *router.Decision) {
	if edit := d.Edit(); edit != nil {
		edit(w.Header())
	}
	w.Header().Set("Location", d.Route.Location(d.Rest, r.URL.RawQuery))
	w.WriteHeader(d.Route.RedirectCode)
}

// IsWebSocket reports whether h asks for a WebSocket upgrade: an Upgrade
// header naming websocket and a Connection header holding the token upgrade,
// in any case and among other tokens ("keep-alive, Upgrade", as Firefox sends).
func IsWebSocket(h http.Header) bool {
	return hasToken(h["Upgrade"], "websocket") && hasToken(h["Connection"], "upgrade")
}

// hasToken reports whether any of the comma-separated lists in values holds
// token, compared case-insensitively.
func hasToken(values []string, token string) bool {
	for _, v := range values {
		for v != "" {
			var item string
			item, v, _ = strings.Cut(v, ",")
			if strings.EqualFold(strings.TrimSpace(item), token) {
				return true
			}
		}
	}
	return false
}

// RedirectHTTPS answers every request with a 308 to the same URL on https,
// at the request's host and the given port.
func RedirectHTTPS(port int) http.Handler {
	suffix := ""
	if port != 443 {
		suffix = ":" + strconv.Itoa(port)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host := r.Host
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
			if strings.Contains(host, ":") {
				host = "[" + host + "]"
			}
		}
		if host == "" {
			http.Error(w, "missing Host header", http.StatusBadRequest)
			return
		}
		http.Redirect(w, r, "https://"+host+suffix+r.URL.RequestURI(), http.StatusPermanentRedirect)
	})
}
