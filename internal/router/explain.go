package router

import (
	"errors"
	"fmt"
	"io"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/hipsterd/hipsterd/internal/config"
	"github.com/hipsterd/hipsterd/internal/urlpath"
)

// Explain writes where a request for rawURL would go in cfg, by the same
// decision the running frontend makes: the frontend (the one named, else
// the one whose bind has the URL's port), the [host] section, the route
// and why it won, the backends and their balance (or the redirect), the
// target forwarded and the header rules. It binds and connects nothing.
func Explain(w io.Writer, cfg *config.Config, rawURL, frontend string) error {
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("-route %q: give an absolute http:// or https:// URL, as in http://example.com/api/x", rawURL)
	}
	fc, why, err := pickFrontend(cfg, u, frontend)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	defer tw.Flush()
	line := func(label, format string, args ...any) {
		fmt.Fprintf(tw, "%s\t%s\n", label, fmt.Sprintf(format, args...))
	}
	line("request", "GET %s (Host %s)", u.String(), u.Host)
	line("frontend", "%s (mode %s, bind %s; %s)", fc.Name, fc.Mode, fc.Bind, why)
	if fc.Mode == config.ModeTCP {
		line("backends", "%s (balance %s): a tcp frontend forwards every connection there, and sees no HTTP", strings.Join(fc.Backends, " "), fc.Balance)
		return nil
	}
	if fc.RedirectHTTPS {
		line("answer", "308 to https:// on port %d: the frontend has redirect-https, which answers every request", fc.RedirectHTTPSPort)
		return nil
	}
	rt := Build(cfg, fc, nil, nil)
	p := u.EscapedPath()
	if p == "" {
		p = "/"
	}
	d := rt.Decide(u.Host, p)
	if d.Target.Host != "" {
		line("host", "[host %s], for Host %s", d.Target.Host, u.Host)
	} else {
		line("host", "no [host] section of this frontend is for Host %s: its own backends apply", u.Host)
	}
	if d.BadPath != nil {
		line("answer", "400: the path %s cannot be matched: %v", p, d.BadPath)
		return nil
	}
	if rt.HasRoutes() {
		if d.Path != p {
			line("path", "%s (the normal form of %s, which routes are matched against)", d.Path, p)
		} else {
			line("path", "%s", d.Path)
		}
		line("routes", "%s", "the longest matching path wins; at equal length a route naming the host; then the first listed")
		for _, r := range rt.routes {
			line("", "  %s\t%s", r.Name, routeVerdict(&d, r, u.Host))
		}
	} else {
		line("routes", "none: the frontend lists no routes")
	}
	query := ""
	if u.RawQuery != "" {
		query = "?" + u.RawQuery
	}
	switch {
	case d.Route != nil && d.Route.Redirect != "":
		line("answer", "%d redirect, Location: %s", d.Route.RedirectCode, d.Route.Location(d.Rest, u.RawQuery))
	case d.Route == nil && len(d.Target.Backends) == 0:
		line("answer", "503: neither a route, a [host] section nor the frontend's backends apply")
		return nil
	default:
		backends, balance, from := d.Target.Backends, d.Target.Balance, "the frontend's"
		if d.Route != nil {
			backends, balance, from = d.Route.Backends, d.Route.Balance, "route "+d.Route.Name+"'s"
		} else if d.Target.Host != "" {
			from = "[host " + d.Target.Host + "]'s"
		}
		line("backends", "%s (balance %s), %s", strings.Join(backends, " "), balance, from)
		switch {
		case d.Route != nil && d.Route.StripPrefix:
			line("forwarded", "%s%s (strip-prefix takes %s off)", d.Rest, query, strings.TrimSuffix(d.Route.Path, "/"))
		default:
			line("forwarded", "%s%s (the target as sent)", p, query)
		}
	}
	rules := func(label string, pick func(config.HeaderRules) []config.HeaderRule) {
		type src struct {
			where string
			rules []config.HeaderRule
		}
		srcs := []src{{"[frontend " + fc.Name + "]", pick(fc.Headers)}}
		if d.Target.Host != "" {
			srcs = append(srcs, src{"[host " + d.Target.Host + "]", pick(cfg.HostFor(strings.Fields(d.Target.Host)[0]).Headers)})
		}
		if d.Route != nil {
			srcs = append(srcs, src{"[route " + d.Route.Name + "]", pick(d.Route.Headers)})
		}
		n := 0
		for _, s := range srcs {
			for _, r := range s.rules {
				line(label, "  %s\t%s", r, s.where)
				label, n = "", n+1
			}
		}
		if n == 0 {
			line(label, "none")
		}
	}
	if d.Route == nil || d.Route.Redirect == "" {
		rules("request headers", func(h config.HeaderRules) []config.HeaderRule { return h.Request })
	}
	rules("response headers", func(h config.HeaderRules) []config.HeaderRule { return h.Response })
	return nil
}

// routeVerdict says whether route r matched the decision's request, and
// why it won or lost.
func routeVerdict(d *Decision, r *Route, host string) string {
	desc := "path " + r.Path
	if len(r.Hosts) > 0 {
		desc += ", hosts " + strings.Join(r.Hosts, " ")
	}
	named, ok := r.hostMatch(host)
	if !ok {
		return desc + ": not for this host"
	}
	if _, ok := urlpath.Match(d.Path, r.Path); !ok {
		return desc + ": the path does not match"
	}
	w := d.Route
	if w == r {
		return desc + ": CHOSEN"
	}
	wNamed, _ := w.hostMatch(host)
	switch {
	case len(w.Path) > len(r.Path):
		return desc + ": matches, but " + w.Name + "'s path is longer"
	case wNamed && !named:
		return desc + ": matches, but " + w.Name + " names the host, at the same length"
	default:
		return desc + ": matches, but " + w.Name + " is listed first, at the same length"
	}
}

// pickFrontend returns the frontend named, else the one whose bind has the
// URL's port, and says how it was chosen.
func pickFrontend(cfg *config.Config, u *url.URL, name string) (*config.Frontend, string, error) {
	if name != "" {
		for i := range cfg.Frontends {
			if cfg.Frontends[i].Name == name {
				return &cfg.Frontends[i], "named by -frontend", nil
			}
		}
		return nil, "", fmt.Errorf("-frontend %q: no such frontend in %s (%s)", name, cfg.File, list(cfg, nil))
	}
	port := u.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443"}[u.Scheme]
	}
	n, _ := strconv.Atoi(port)
	var found []*config.Frontend
	for i := range cfg.Frontends {
		if fc := &cfg.Frontends[i]; fc.Listen.Port == n {
			found = append(found, fc)
		}
	}
	switch len(found) {
	case 0:
		return nil, "", fmt.Errorf("no frontend of %s binds port %s; name one with -frontend (%s)", cfg.File, port, list(cfg, nil))
	case 1:
		return found[0], "its bind has the URL's port " + port, nil
	}
	return nil, "", errors.New("several frontends bind port " + port + "; name one with -frontend (" + list(cfg, found) + ")")
}

// list names frontends and their binds, those of only when not nil.
func list(cfg *config.Config, only []*config.Frontend) string {
	var out []string
	for i := range cfg.Frontends {
		fc := &cfg.Frontends[i]
		if only == nil || slices.Contains(only, fc) {
			out = append(out, fc.Name+" on "+fc.Bind)
		}
	}
	return strings.Join(out, ", ")
}
