package config

import (
	"maps"
	"net/textproto"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"gopkg.in/ini.v1"

	"github.com/hipsterd/hipsterd/internal/urlpath"
)

// DefaultRedirectCode is a route's redirect-code when not set: permanent,
// and the method and body kept (as redirect-https's).
const DefaultRedirectCode = 308

// unsettable are the headers no rule may touch: hop-by-hop headers, which
// hipsterd sets itself per connection, and the framing of the message.
var unsettable = []string{"Connection", "Keep-Alive", "Proxy-Connection", "Te", "Trailer", "Transfer-Encoding", "Upgrade", "Content-Length"}

func (p *parser) route(sec *ini.Section) {
	rc := Route{
		Name:         strings.Fields(sec.Name())[1],
		Hosts:        fields(strings.ToLower(value(sec, "hosts"))),
		Path:         value(sec, "path"),
		Backends:     fields(value(sec, "backends")),
		Balance:      p.balance(sec),
		Redirect:     value(sec, "redirect"),
		RedirectCode: DefaultRedirectCode,
		Headers:      p.headerRules(sec),
	}
	if sec.HasKey("hosts") && len(rc.Hosts) == 0 {
		p.errorf(sec.Name(), "hosts", "empty: leave the key out for a route of any host")
	}
	for _, h := range rc.Hosts {
		if rest := strings.TrimPrefix(h, "*."); rest == "" || strings.ContainsAny(rest, "*/\\?#@") {
			p.errorf(sec.Name(), "hosts", "%q is not a host name (a wildcard is written *.example.com)", h)
		}
		p.trailingDot(sec, "hosts", h)
	}
	switch {
	case rc.Path == "":
		p.errorf(sec.Name(), "path", "missing: a route needs a path prefix, as in path = /api (path = / for every path)")
	case strings.ContainsAny(rc.Path, "?# \t"):
		p.errorf(sec.Name(), "path", "%q: a path prefix has no query, fragment or space", rc.Path)
	default:
		// Requests are matched by their escaped path, in which é arrives
		// as %C3%A9 and \ as %5C, whichever way the client sent it: a
		// prefix written otherwise would match no request.
		esc := rc.Path
		if u, err := url.ParseRequestURI(rc.Path); err == nil {
			esc = u.EscapedPath()
		}
		if n, err := urlpath.Normalize(esc); err != nil {
			p.errorf(sec.Name(), "path", "%q: %v", rc.Path, err)
		} else if n != rc.Path {
			p.errorf(sec.Name(), "path", "%q is not in normal form, which requests are matched in: write %q", rc.Path, n)
		}
	}
	p.boolean(sec, "strip-prefix", &rc.StripPrefix)
	if sec.HasKey("redirect-code") {
		switch v := value(sec, "redirect-code"); v {
		case "301", "302", "303", "307", "308":
			rc.RedirectCode, _ = strconv.Atoi(v)
		default:
			p.errorf(sec.Name(), "redirect-code", "%q is not 301, 302, 303, 307 or 308", v)
		}
	}
	switch {
	case sec.HasKey("redirect") && len(rc.Backends) > 0:
		p.errorf(sec.Name(), "redirect", "set with backends: a route either forwards to backends or redirects, not both")
	case sec.HasKey("redirect"):
		p.redirect(sec, &rc)
		for _, k := range []string{"balance", "strip-prefix"} {
			if sec.HasKey(k) {
				p.errorf(sec.Name(), k, "set on a redirect route: it applies to backends only (a redirect always drops the prefix)")
			}
		}
	case len(rc.Backends) == 0:
		p.errorf(sec.Name(), "backends", "missing: a route needs backends, or a redirect")
	default:
		if sec.HasKey("redirect-code") {
			p.errorf(sec.Name(), "redirect-code", "set but redirect is not")
		}
	}
	if len(rc.Headers.Request) > 0 && rc.Redirect != "" {
		p.errorf(sec.Name(), "", "request header rules on a redirect route: no request is forwarded")
	}
	p.backendRefs(sec, rc.Backends)
	p.cfg.Routes = append(p.cfg.Routes, rc)
}

// redirect checks a route's redirect: an http or https URL, or an absolute
// path on the same host, with no query or fragment (the request's query is
// appended).
func (p *parser) redirect(sec *ini.Section, rc *Route) {
	u, err := url.Parse(rc.Redirect)
	switch {
	case err != nil:
		p.errorf(sec.Name(), "redirect", "%q is not a URL: %v", rc.Redirect, err)
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || strings.Contains(rc.Redirect, "#"):
		p.errorf(sec.Name(), "redirect", "%q has a query or fragment: the request's path and query are appended to it", rc.Redirect)
	case strings.Contains(rc.Redirect, "\\"):
		// Browsers read "\\" as "/": "/\\evil.com" would send clients to another site.
		p.errorf(sec.Name(), "redirect", "%q has a backslash: browsers read it as /; write %q", rc.Redirect, strings.ReplaceAll(rc.Redirect, "\\", "%5C"))
	case u.Scheme == "" && u.Host == "" && strings.HasPrefix(rc.Redirect, "/") && !strings.HasPrefix(rc.Redirect, "//"):
	case (u.Scheme == "http" || u.Scheme == "https") && u.Host != "" && u.User == nil:
	default:
		p.errorf(sec.Name(), "redirect", "%q is neither an http:// or https:// URL nor a path starting with /", rc.Redirect)
	}
}

// routeRefs checks a frontend's routes.
func (p *parser) routeRefs(sec *ini.Section, fe Frontend) {
	if sec.HasKey("routes") && len(fe.Routes) == 0 {
		p.errorf(sec.Name(), "routes", "empty: list [route] section names, or leave the key out")
	}
	if fe.RedirectHTTPS {
		for _, k := range append([]string{"routes"}, headerRuleKeys...) {
			if sec.HasKey(k) {
				p.errorf(sec.Name(), k, "set with redirect-https, which answers every request with a redirect")
			}
		}
	}
	known := make([]string, len(p.cfg.Routes))
	for i, r := range p.cfg.Routes {
		known[i] = r.Name
	}
	seen := map[string]bool{}
	for _, n := range fe.Routes {
		switch {
		case seen[n]:
			p.errorf(sec.Name(), "routes", "route %q listed twice", n)
		case p.cfg.Route(n) == nil:
			p.errorf(sec.Name(), "routes", "unknown route %q%s", n, didYouMean(n, known))
		}
		seen[n] = true
	}
}

// unusedRoutes warns of routes no frontend lists: likely a frontend's
// routes key forgotten.
func (p *parser) unusedRoutes() {
	used := map[string]bool{}
	for _, fe := range p.cfg.Frontends {
		for _, n := range fe.Routes {
			used[n] = true
		}
	}
	for _, r := range p.cfg.Routes {
		if !used[r.Name] {
			p.warnf("route "+r.Name, "", "no frontend lists this route in its routes, so it is not used")
		}
	}
}

// headerRules reads a section's header rules, each list in file order.
func (p *parser) headerRules(sec *ini.Section) HeaderRules {
	var hr HeaderRules
	for _, kv := range p.ruleValues(sec) {
		op, side, _ := strings.Cut(kv.key, "-")
		rule := HeaderRule{Op: map[string]HeaderOp{"set": HeaderSet, "add": HeaderAdd, "del": HeaderDel}[op]}
		name, val, colon := strings.Cut(kv.value, ":")
		rule.Name = strings.TrimSpace(name)
		if rule.Op == HeaderDel {
			if colon {
				p.errorf(sec.Name(), kv.key, "%q: write only the header's name", kv.value)
				continue
			}
		} else if !colon {
			p.errorf(sec.Name(), kv.key, "%q has no ':': write Name: value, as in %s = X-Env: prod", kv.value, kv.key)
			continue
		}
		rule.Value = strings.TrimSpace(val)
		if !validName(rule.Name) {
			p.errorf(sec.Name(), kv.key, "%q is not a header name", rule.Name)
			continue
		}
		if !validValue(rule.Value) {
			p.errorf(sec.Name(), kv.key, "%q is not a valid header value", rule.Value)
			continue
		}
		rule.Name = textproto.CanonicalMIMEHeaderKey(rule.Name)
		response := side == "response-header"
		switch {
		case slices.Contains(unsettable, rule.Name):
			p.errorf(sec.Name(), kv.key, "%s is a hop-by-hop or framing header, which hipsterd sets itself", rule.Name)
			continue
		case rule.Name == "Host" && response:
			p.errorf(sec.Name(), kv.key, "Host is not a response header")
			continue
		case rule.Name == "Host" && rule.Op != HeaderSet:
			p.errorf(sec.Name(), kv.key, "a request has one Host: set it, neither add nor delete it")
			continue
		}
		if response {
			hr.Response = append(hr.Response, rule)
		} else {
			hr.Request = append(hr.Request, rule)
		}
	}
	return hr
}

type keyValue struct{ key, value string }

// ruleValues returns a section's header rule lines in file order. The INI
// library gives a repeated key's values together, losing how the lines of
// different keys interleave; the line index puts them back in order.
// Should the index disagree with the library, the library's order stands.
func (p *parser) ruleValues(sec *ini.Section) []keyValue {
	values := map[string][]string{}
	var byKey []keyValue
	total := 0
	for _, k := range sec.Keys() {
		if slices.Contains(headerRuleKeys, k.Name()) {
			vs := k.ValueWithShadows()
			values[k.Name()] = vs
			for _, v := range vs {
				byKey = append(byKey, keyValue{k.Name(), strings.TrimSpace(v)})
			}
			total += len(vs)
		}
	}
	order := p.ruleOrder(sec.Name())
	if len(order) != total {
		return byKey
	}
	out := make([]keyValue, 0, total)
	next := map[string]int{}
	for _, k := range order {
		vs := values[k]
		if next[k] >= len(vs) {
			return byKey
		}
		out = append(out, keyValue{k, strings.TrimSpace(vs[next[k]])})
		next[k]++
	}
	return out
}

// ruleOrder returns the header rule keys of the section called name, one
// for each line setting one, in file order.
func (p *parser) ruleOrder(name string) []string {
	s := p.occurrence(name)
	if s == nil {
		return nil
	}
	keyAt := map[int]string{}
	for _, k := range headerRuleKeys {
		for _, n := range s.keys[k] {
			keyAt[n] = k
		}
	}
	lines := slices.Sorted(maps.Keys(keyAt))
	out := make([]string, len(lines))
	for i, n := range lines {
		out[i] = keyAt[n]
	}
	return out
}

// validName reports whether s is a header name: an RFC 9110 token.
func validName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0 {
			continue
		}
		return false
	}
	return true
}

// validValue reports whether s may be a header value: no control
// character but tab.
func validValue(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}
