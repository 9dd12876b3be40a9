// Package router decides where a frontend's request goes: by its path to
// one of the frontend's routes, else by its Host header to a [host]
// section's pool, else to the frontend's own backends. It also holds the
// header rules that apply on the way.
package router

import (
	"net"
	"net/http"
	"strings"

	"github.com/hipsterd/hipsterd/internal/config"
	"github.com/hipsterd/hipsterd/internal/exchange"
	"github.com/hipsterd/hipsterd/internal/upstream"
	"github.com/hipsterd/hipsterd/internal/urlpath"
)

// Target is where a request goes when no route takes it: a [host]
// section's pool, or the frontend's own backends.
type Target struct {
	// Host is the [host] section's names, "" for the frontend's own.
	Host     string
	Backends []string // none: the frontend has no backends of its own
	Balance  config.Balance
	Pool     *upstream.Pool // nil without backends, or when explaining
	// Request are the request header rules: the frontend's, then the
	// host's.
	Request []config.HeaderRule
	// edits are the response header rules by route index, the last for no
	// route: the frontend's, the host's, the route's.
	edits []Edit
}

// Route is one route of the frontend.
type Route struct {
	config.Route
	Pool   *upstream.Pool // nil for a redirect, or when explaining
	Series exchange.Series
	index  int // in the frontend's routes, which breaks ties
	hosts  hostSet[bool]
}

// Location is the Location of a redirect route's answer to a request
// whose path has rest after the route's prefix, and rawQuery as its query:
// the redirect, its trailing / trimmed, then rest, then the query.
func (r *Route) Location(rest, rawQuery string) string {
	loc := strings.TrimRight(r.Redirect, "/") + rest
	if !strings.Contains(r.Redirect, "://") {
		// A path on this host must not turn into //host/…, which a
		// browser would take for another host.
		loc = "/" + strings.TrimLeft(loc, "/")
	}
	if rawQuery != "" {
		loc += "?" + rawQuery
	}
	return loc
}

// Edit changes a response's header; nil means no change.
type Edit func(http.Header)

// Router decides for one frontend. Build makes one.
type Router struct {
	hosts    hostSet[*Target]
	fallback *Target
	routes   []*Route
}

// Label says which pool a PoolFunc makes: a [host] section's (Host set), a
// route's (Route set) or the frontend's own.
type Label struct{ Host, Route string }

// PoolFunc makes the pool of backends names, balanced by balance.
type PoolFunc func(names []string, balance config.Balance, l Label) *upstream.Pool

// Build returns the router of frontend fc of cfg. pool, if not nil, makes
// the pools (nil: a router to explain, without pools); series, if not nil,
// returns the metrics of a route.
func Build(cfg *config.Config, fc *config.Frontend, pool PoolFunc, series func(route string) exchange.Series) *Router {
	mkPool := func(names []string, b config.Balance, l Label) *upstream.Pool {
		if pool == nil || len(names) == 0 {
			return nil
		}
		return pool(names, b, l)
	}
	rt := &Router{hosts: newHostSet[*Target]()}
	for i, name := range fc.Routes {
		rc := cfg.Route(name)
		if rc == nil {
			continue // config validation rules this out
		}
		r := &Route{Route: *rc, index: i, hosts: newHostSet[bool]()}
		for _, h := range rc.Hosts {
			r.hosts.add(h, true)
		}
		if series != nil {
			r.Series = series(name)
		}
		rt.routes = append(rt.routes, r)
	}
	target := func(host string, backends []string, b config.Balance, rules config.HeaderRules) *Target {
		t := &Target{Host: host, Backends: backends, Balance: b,
			Request: concat(fc.Headers.Request, rules.Request)}
		t.Pool = mkPool(backends, b, Label{Host: host})
		for _, r := range rt.routes {
			t.edits = append(t.edits, edit(fc.Headers.Response, rules.Response, r.Headers.Response))
		}
		t.edits = append(t.edits, edit(fc.Headers.Response, rules.Response))
		return t
	}
	rt.fallback = target("", fc.Backends, fc.Balance, config.HeaderRules{})
	// One target per [host] section, shared by the names it lists.
	byHost := map[*config.Host]*Target{}
	for _, name := range fc.Hosts {
		hc := cfg.HostFor(name)
		if hc == nil {
			continue // config validation rules this out
		}
		if byHost[hc] == nil {
			byHost[hc] = target(strings.Join(hc.Names, " "), hc.Backends, hc.Balance, hc.Headers)
		}
		rt.hosts.add(name, byHost[hc])
	}
	for _, r := range rt.routes {
		r.Pool = mkPool(r.Backends, r.Balance, Label{Route: r.Name})
	}
	return rt
}

// HasRoutes reports whether the frontend has routes, so that Decide needs
// the request's path.
func (rt *Router) HasRoutes() bool { return len(rt.routes) > 0 }

// Routes returns the frontend's routes, in the order it lists them.
func (rt *Router) Routes() []*Route { return rt.routes }

// Decision is where a request goes.
type Decision struct {
	Target *Target
	Route  *Route // nil when no route matched
	// Path is the request's path in normal form, and Rest what follows
	// the route's prefix in it (at least "/"); both "" when the frontend
	// has no routes.
	Path, Rest string
	// BadPath is set when the frontend has routes and the request's path
	// could not be put in normal form: it is answered with a 400.
	BadPath error
}

// Pool is the pool the request goes to; nil for a redirect, or when
// neither a route, a host section nor the frontend's backends apply.
func (d *Decision) Pool() *upstream.Pool {
	if d.Route != nil {
		return d.Route.Pool
	}
	return d.Target.Pool
}

// Edit is the response header rules that apply to the decision; nil for
// none.
func (d *Decision) Edit() Edit {
	i := len(d.Target.edits) - 1
	if d.Route != nil {
		i = d.Route.index
	}
	return d.Target.edits[i]
}

// Decide decides for a request with Host header host and escaped path p
// (URL.EscapedPath). A frontend without routes looks at the host only.
//
// Among the routes whose hosts match (or that have none), the longest path
// wins; at equal length a route naming the host beats one without hosts;
// then the first listed.
func (rt *Router) Decide(host, p string) Decision {
	d := Decision{Target: rt.target(host)}
	if len(rt.routes) == 0 {
		return d
	}
	switch p {
	case "*":
		return d // OPTIONS *: no path to route by
	case "":
		// An absolute-form target without a path ("GET http://a.example
		// HTTP/1.1"): the backend gets "/", and so must the route for /.
		p = "/"
	}
	norm, err := urlpath.Normalize(p)
	if err != nil {
		d.BadPath = err
		return d
	}
	d.Path = norm
	for _, r := range rt.routes {
		named, ok := r.hostMatch(host)
		if !ok {
			continue
		}
		rest, ok := urlpath.Match(norm, r.Path)
		if !ok {
			continue
		}
		if d.Route == nil || beats(r, named, d.Route, len(d.Route.Hosts) > 0) {
			d.Route, d.Rest = r, rest
		}
	}
	return d
}

// beats reports whether route a beats route b, both matching; named says
// whether each names the request's host. The order of routes breaks ties,
// and Decide walks them in order.
func beats(a *Route, aNamed bool, b *Route, bNamed bool) bool {
	if len(a.Path) != len(b.Path) {
		return len(a.Path) > len(b.Path)
	}
	return aNamed && !bNamed
}

// hostMatch reports whether the route applies to host, and whether it
// names it (rather than having no hosts).
func (r *Route) hostMatch(host string) (named, ok bool) {
	if len(r.Hosts) == 0 {
		return false, true
	}
	_, ok = r.hosts.lookup(host)
	return ok, ok
}

// target is the [host] section's target for host, else the frontend's.
func (rt *Router) target(host string) *Target {
	if t, ok := rt.hosts.lookup(host); ok {
		return t
	}
	return rt.fallback
}

// ApplyRequest applies request header rules to r, whose header the caller
// owns: a set Host sets r.Host.
func ApplyRequest(rules []config.HeaderRule, r *http.Request) {
	for _, rule := range rules {
		if rule.Name == "Host" {
			r.Host = rule.Value
			continue
		}
		apply(rule, r.Header)
	}
}

func apply(rule config.HeaderRule, h http.Header) {
	switch rule.Op {
	case config.HeaderSet:
		h[rule.Name] = []string{rule.Value}
	case config.HeaderAdd:
		h[rule.Name] = append(h[rule.Name], rule.Value)
	case config.HeaderDel:
		delete(h, rule.Name)
		return
	}
	// A header the other side names in Connection is dropped as
	// hop-by-hop after the rules ran: what a rule wrote must stay.
	if c := h["Connection"]; len(c) > 0 {
		h["Connection"] = dropToken(c, rule.Name)
	}
}

// dropToken returns the Connection values c without the token name.
func dropToken(c []string, name string) []string {
	var out []string
	for _, v := range c {
		var kept []string
		for item := range strings.SplitSeq(v, ",") {
			if item = strings.TrimSpace(item); item != "" && !strings.EqualFold(item, name) {
				kept = append(kept, item)
			}
		}
		if len(kept) > 0 {
			out = append(out, strings.Join(kept, ", "))
		}
	}
	return out
}

// edit returns the Edit applying lists of rules in order; nil when they
// are all empty.
func edit(lists ...[]config.HeaderRule) Edit {
	rules := concat(lists...)
	if len(rules) == 0 {
		return nil
	}
	return func(h http.Header) {
		for _, rule := range rules {
			apply(rule, h)
		}
	}
}

func concat(lists ...[]config.HeaderRule) []config.HeaderRule {
	var out []config.HeaderRule
	for _, l := range lists {
		out = append(out, l...)
	}
	return out
}

// hostSet maps host names, as [host] sections list them, to values.
type hostSet[T any] struct {
	exact map[string]T // lower-case host, possibly with :port
	wild  map[string]T // "example.com" for "*.example.com"
}

func newHostSet[T any]() hostSet[T] {
	return hostSet[T]{exact: map[string]T{}, wild: map[string]T{}}
}

func (s hostSet[T]) add(name string, v T) {
	s.exact[name] = v
	if suffix, ok := strings.CutPrefix(name, "*."); ok {
		s.wild[suffix] = v
	}
}

// lookup returns the value for a Host header.
//
// The exact name (which may carry a port, as in drunken-hipster's
// "localhost:9000") wins; then the name without its port, then without a
// trailing dot; then a wildcard name for its first label.
func (s hostSet[T]) lookup(host string) (T, bool) {
	var zero T
	if len(s.exact) == 0 {
		return zero, false
	}
	if v, ok := s.exact[host]; ok {
		return v, true
	}
	lower := strings.ToLower(host)
	if v, ok := s.exact[lower]; ok {
		return v, true
	}
	name := lower
	// Only a name with a port is split: the error of one without costs an
	// allocation.
	if strings.Contains(lower, ":") {
		if n, _, err := net.SplitHostPort(lower); err == nil {
			name = n
			if v, ok := s.exact[name]; ok {
				return v, true
			}
			// An IPv6 literal is listed with its brackets.
			if strings.Contains(name, ":") {
				if v, ok := s.exact["["+name+"]"]; ok {
					return v, true
				}
			}
		}
	}
	// A fully qualified name's trailing dot names the same host, as nginx
	// reads it: without this, "example.com." escaped the host's section
	// and the routes that name it.
	if n, ok := strings.CutSuffix(name, "."); ok && n != "" {
		name = n
		if v, ok := s.exact[name]; ok {
			return v, true
		}
	}
	// A wildcard name matches one label: *.example.com matches a.example.com.
	if _, rest, ok := strings.Cut(name, "."); ok {
		if v, ok := s.wild[rest]; ok {
			return v, true
		}
	}
	return zero, false
}
