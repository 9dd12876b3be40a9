package router

import (
	"net/http"
	"reflect"
	"testing"

	"github.com/hipsterd/hipsterd/internal/config"
)

func TestHostLookup(t *testing.T) {
	t.Parallel()
	s := newHostSet[string]()
	for name, v := range map[string]string{
		"localhost:9000":  "exact",
		"example.com":     "bare",
		"[::1]":           "v6",
		"*.apps.test":     "wild",
		"www.example.com": "bare",
	} {
		s.add(name, v)
	}
	tests := []struct{ host, want string }{
		{"localhost:9000", "exact"},
		{"LocalHost:9000", "exact"},
		{"localhost", ""},
		{"localhost:9001", ""},
		{"example.com", "bare"},
		{"EXAMPLE.com:8080", "bare"},
		{"[::1]:9000", "v6"},
		{"other.org", ""},
		{"a.apps.test", "wild"},
		{"B.apps.test:8080", "wild"},
		{"a.b.apps.test", ""},
		{"apps.test", ""},
		{"", ""},
	}
	for _, tc := range tests {
		if got, _ := s.lookup(tc.host); got != tc.want {
			t.Errorf("lookup(%q) = %q, want %q", tc.host, got, tc.want)
		}
	}
}

// precedence is the configuration of the precedence table.
const precedence = `
[frontend web]
bind = 127.0.0.1:0
hosts = example.com
backends = web
routes = any-api named-api admin static root-named long
set-response-header = X-F: 1

[host example.com]
backends = web
set-response-header = X-H: 1

[route any-api]
path = /api
backends = b

[route named-api]
hosts = example.com *.example.org
path = /api
backends = b
set-response-header = X-R: 1

[route admin]
path = /admin
backends = b

[route static]
path = /static/
backends = b

[route root-named]
hosts = other.com
path = /
backends = b

[route long]
path = /api/v2
backends = b

[backend web]
connect = 127.0.0.1:1
[backend b]
connect = 127.0.0.1:2
`

func build(t testing.TB, src string) *Router {
	t.Helper()
	cfg, err := config.Parse("test.ini", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	return Build(cfg, &cfg.Frontends[0], nil, nil)
}

func TestPrecedence(t *testing.T) {
	t.Parallel()
	rt := build(t, precedence)
	tests := []struct {
		host, path, route, rest, target string
	}{
		// No route: the [host] section, then the frontend's backends.
		{"example.com", "/x", "", "", "example.com"},
		{"unknown.com", "/x", "", "", ""},
		// Longest path wins, at segment boundaries.
		{"unknown.com", "/api/v2/x", "long", "/x", ""},
		{"unknown.com", "/api/v2", "long", "/", ""},
		{"unknown.com", "/api/v23", "any-api", "/v23", ""},
		{"unknown.com", "/apix", "", "", ""},
		// At equal length a route naming the host beats one without,
		// whatever the order; else the first listed.
		{"example.com", "/api/x", "named-api", "/x", "example.com"},
		{"EXAMPLE.COM:8080", "/api", "named-api", "/", "example.com"},
		{"a.example.org", "/api/x", "named-api", "/x", ""},
		{"a.b.example.org", "/api/x", "any-api", "/x", ""},
		// A trailing / in path: what is under it only.
		{"x", "/static/a.css", "static", "/a.css", ""},
		{"x", "/static", "", "", ""},
		// A route for / of a host takes the rest of that host.
		{"other.com", "/anything", "root-named", "/anything", ""},
		{"other.com", "/api/x", "any-api", "/x", ""},
		// An absolute-form target without a path is the backend's "/".
		{"other.com", "", "root-named", "/", ""},
		// Dressed paths match as the backend reads them.
		{"x", "/api/../admin/x", "admin", "/x", ""},
		{"x", "/%61dmin/x", "admin", "/x", ""},
		{"x", "/api/%2e%2e/admin", "admin", "/", ""},
		{"x", "/api%2Fx", "", "", ""},
	}
	for _, tc := range tests {
		d := rt.Decide(tc.host, tc.path)
		name := ""
		if d.Route != nil {
			name = d.Route.Name
		}
		if name != tc.route || d.Rest != tc.rest || d.Target.Host != tc.target || d.BadPath != nil {
			t.Errorf("%s %s: route %q rest %q target %q (%v); want %q %q %q", tc.host, tc.path, name, d.Rest, d.Target.Host, d.BadPath, tc.route, tc.rest, tc.target)
		}
	}
	if d := rt.Decide("x", "/../etc/passwd"); d.BadPath == nil {
		t.Errorf("a path above / was routed: %+v", d)
	}
	if d := rt.Decide("x", "*"); d.BadPath != nil || d.Route != nil {
		t.Errorf("OPTIONS *: %+v", d)
	}
}

func TestResponseRulesOrder(t *testing.T) {
	t.Parallel()
	rt := build(t, precedence)
	for _, tc := range []struct {
		host, path string
		want       http.Header
	}{
		{"example.com", "/api", http.Header{"X-F": {"1"}, "X-H": {"1"}, "X-R": {"1"}}},
		{"example.com", "/x", http.Header{"X-F": {"1"}, "X-H": {"1"}}},
		{"a.example.org", "/api", http.Header{"X-F": {"1"}, "X-R": {"1"}}},
		{"a.example.org", "/admin", http.Header{"X-F": {"1"}}},
	} {
		d := rt.Decide(tc.host, tc.path)
		h := http.Header{}
		d.Edit()(h)
		if !reflect.DeepEqual(h, tc.want) {
			t.Errorf("%s %s: %v, want %v", tc.host, tc.path, h, tc.want)
		}
	}
}

func TestRequestRules(t *testing.T) {
	t.Parallel()
	r, _ := http.NewRequest("GET", "http://example.com/", nil)
	r.Header = http.Header{"X-A": {"0"}, "Cookie": {"a=b"}}
	ApplyRequest([]config.HeaderRule{
		{Op: config.HeaderAdd, Name: "X-A", Value: "1"},
		{Op: config.HeaderDel, Name: "Cookie"},
		{Op: config.HeaderSet, Name: "X-B", Value: "2"},
		{Op: config.HeaderAdd, Name: "X-B", Value: "3"},
		{Op: config.HeaderSet, Name: "Host", Value: "internal"},
	}, r)
	if want := (http.Header{"X-A": {"0", "1"}, "X-B": {"2", "3"}}); !reflect.DeepEqual(r.Header, want) || r.Host != "internal" {
		t.Errorf("header %v host %q", r.Header, r.Host)
	}
	// A client naming a header in Connection cannot have a rule's header
	// dropped as hop-by-hop.
	r.Header = http.Header{"Connection": {"X-Env, upgrade", "x-env"}, "Upgrade": {"websocket"}}
	ApplyRequest([]config.HeaderRule{{Op: config.HeaderSet, Name: "X-Env", Value: "prod"}}, r)
	if want := (http.Header{"Connection": {"upgrade"}, "Upgrade": {"websocket"}, "X-Env": {"prod"}}); !reflect.DeepEqual(r.Header, want) {
		t.Errorf("header %v, want %v", r.Header, want)
	}
}

func TestNoRoutesNoAllocation(t *testing.T) {
	rt := build(t, `
[frontend web]
bind = 127.0.0.1:0
hosts = example.com
backends = web
[host example.com]
backends = web
[backend web]
connect = 127.0.0.1:1
`)
	if n := testing.AllocsPerRun(100, func() { rt.Decide("example.com:8080", "/a/../b") }); n != 0 {
		t.Errorf("%v allocations per request without routes", n)
	}
}

func BenchmarkDecide(b *testing.B) {
	b.Run("no routes", func(b *testing.B) {
		rt := build(b, `
[frontend web]
bind = 127.0.0.1:0
hosts = example.com www.example.com
backends = web
[host example.com www.example.com]
backends = web
[backend web]
connect = 127.0.0.1:1
`)
		b.ReportAllocs()
		for b.Loop() {
			rt.Decide("www.example.com", "/api/v1/users/42")
		}
	})
	b.Run("six routes", func(b *testing.B) {
		rt := build(b, precedence)
		b.ReportAllocs()
		for b.Loop() {
			rt.Decide("example.com", "/api/v1/users/42")
		}
	})
	b.Run("six routes, dressed path", func(b *testing.B) {
		rt := build(b, precedence)
		b.ReportAllocs()
		for b.Loop() {
			rt.Decide("example.com", "/api/v1/../%75sers/42")
		}
	})
}
