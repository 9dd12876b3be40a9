// Package router picks a frontend's backend pool by the request's Host header.
package router

import (
	"net"
	"strings"

	"github.com/hipsterd/hipsterd/internal/upstream"
)

// Router maps host names to pools. Its zero value routes everything to nil.
type Router struct {
	hosts    map[string]*upstream.Pool // lower-case host, possibly with :port
	wild     map[string]*upstream.Pool // "example.com" for "*.example.com"
	fallback *upstream.Pool
}

// New returns a router over hosts (keys lower case), falling back to fallback,
// which may be nil.
func New(hosts map[string]*upstream.Pool, fallback *upstream.Pool) *Router {
	rt := &Router{hosts: hosts, wild: map[string]*upstream.Pool{}, fallback: fallback}
	for name, p := range hosts {
		if suffix, ok := strings.CutPrefix(name, "*."); ok {
			rt.wild[suffix] = p
		}
	}
	return rt
}

// Route returns the pool for a request with Host header host, or nil when
// neither a host section nor the frontend's own backends apply.
//
// The exact name (which may carry a port, as in drunken-hipster's
// "localhost:9000") wins; then the name without its port; then a wildcard
// name for its first label; then the fallback.
func (rt *Router) Route(host string) *upstream.Pool {
	if len(rt.hosts) == 0 {
		return rt.fallback
	}
	if p, ok := rt.hosts[host]; ok {
		return p
	}
	lower := strings.ToLower(host)
	if p, ok := rt.hosts[lower]; ok {
		return p
	}
	name := lower
	if n, _, err := net.SplitHostPort(lower); err == nil {
		name = n
		if p, ok := rt.hosts[name]; ok {
			return p
		}
		// An IPv6 literal is listed with its brackets.
		if strings.Contains(name, ":") {
			if p, ok := rt.hosts["["+name+"]"]; ok {
				return p
			}
		}
	}
	// A wildcard name matches one label: *.example.com matches a.example.com.
	if _, rest, ok := strings.Cut(name, "."); ok {
		if p, ok := rt.wild[rest]; ok {
			return p
		}
	}
	return rt.fallback
}
