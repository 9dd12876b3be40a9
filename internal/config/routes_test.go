package config

import (
	"reflect"
	"strings"
	"testing"
)

const routeBase = `
[frontend web]
bind = 127.0.0.1:8080
hosts = example.com
backends = web
routes = api old
set-request-header = X-Env: prod
add-response-header = X-A: 1

[host example.com www.example.com]
backends = web
del-request-header = Cookie

[route api]
hosts = Example.com api.example.com
path = /api
backends = api api
balance = leastconn
strip-prefix = true
add-request-header = X-A: 1
del-request-header = X-B
add-request-header = X-A: 2
set-response-header = Cache-Control: no-store
add-response-header = Set-Cookie: a=1
add-response-header = Set-Cookie: a=1

[route old]
path = /old/
redirect = https://new.example.com/
redirect-code = 301

[backend web]
connect = 127.0.0.1:1
[backend api]
connect = 127.0.0.1:2
`

func TestRoutes(t *testing.T) {
	t.Parallel()
	cfg, err := parse(t, routeBase)
	if err != nil {
		t.Fatal(err)
	}
	fe := cfg.Frontends[0]
	if !reflect.DeepEqual(fe.Routes, []string{"api", "old"}) {
		t.Errorf("routes %q", fe.Routes)
	}
	if want := []HeaderRule{{HeaderSet, "X-Env", "prod"}}; !reflect.DeepEqual(fe.Headers.Request, want) {
		t.Errorf("frontend request rules %+v", fe.Headers.Request)
	}
	if want := []HeaderRule{{HeaderDel, "Cookie", ""}}; !reflect.DeepEqual(cfg.Hosts[0].Headers.Request, want) {
		t.Errorf("host request rules %+v", cfg.Hosts[0].Headers.Request)
	}
	api := cfg.Route("api")
	want := Route{Name: "api", Hosts: []string{"example.com", "api.example.com"}, Path: "/api", Backends: []string{"api", "api"},
		Balance: LeastConn, StripPrefix: true, RedirectCode: DefaultRedirectCode, Headers: HeaderRules{
			// In file order, across keys.
			Request: []HeaderRule{{HeaderAdd, "X-A", "1"}, {HeaderDel, "X-B", ""}, {HeaderAdd, "X-A", "2"}},
			// Lines alike are kept.
			Response: []HeaderRule{{HeaderSet, "Cache-Control", "no-store"}, {HeaderAdd, "Set-Cookie", "a=1"}, {HeaderAdd, "Set-Cookie", "a=1"}},
		}}
	if !reflect.DeepEqual(*api, want) {
		t.Errorf("route api:\n%+v\nwant\n%+v", *api, want)
	}
	old := cfg.Route("old")
	if old.Redirect != "https://new.example.com/" || old.RedirectCode != 301 || old.Path != "/old/" {
		t.Errorf("route old %+v", *old)
	}
	if len(cfg.Warnings) != 0 {
		t.Errorf("warnings %q", cfg.Warnings)
	}
}

func TestRouteErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, edit, want string
	}{
		{"rule without colon", "set-request-header = X-Env: prod\n=>set-request-header = X-Env prod",
			`test.ini:7: [frontend web] set-request-header: "X-Env prod" has no ':'`},
		{"del with value", "del-request-header = Cookie\n=>del-request-header = Cookie: x",
			`[host example.com www.example.com] del-request-header: "Cookie: x": write only the header's name`},
		{"hop-by-hop", "add-response-header = X-A: 1\n=>add-response-header = Connection: close",
			`[frontend web] add-response-header: Connection is a hop-by-hop or framing header`},
		{"framing", "add-response-header = X-A: 1\n=>add-response-header = content-length: 5",
			`Content-Length is a hop-by-hop or framing header`},
		{"response Host", "add-response-header = X-A: 1\n=>set-response-header = Host: x",
			`Host is not a response header`},
		{"add Host", "add-response-header = X-A: 1\n=>add-request-header = Host: x",
			`a request has one Host`},
		{"bad name", "add-response-header = X-A: 1\n=>add-response-header = X A: 1",
			`"X A" is not a header name`},
		{"unknown route", "routes = api old\n=>routes = api olld",
			`[frontend web] routes: unknown route "olld" (did you mean "old"?)`},
		{"route twice", "routes = api old\n=>routes = api old api",
			`route "api" listed twice`},
		{"both", "redirect-code = 301\n=>redirect-code = 301\nbackends = web",
			`[route old] redirect: set with backends`},
		{"neither", "redirect = https://new.example.com/\n=>",
			`[route old] backends: missing: a route needs backends, or a redirect`},
		{"no path", "path = /api\n=>",
			`[route api] path: missing`},
		{"dressed path", "path = /api\n=>path = /x/../api",
			`[route api] path: "/x/../api" is not in normal form, which requests are matched in: write "/api"`},
		{"relative path", "path = /api\n=>path = api",
			`[route api] path: "api": the path does not start with /`},
		{"bad code", "redirect-code = 301\n=>redirect-code = 300",
			`[route old] redirect-code: "300" is not 301, 302, 303, 307 or 308`},
		{"redirect with query", "redirect = https://new.example.com/\n=>redirect = https://new.example.com/?a=1",
			`has a query or fragment`},
		{"redirect backslash", "redirect = https://new.example.com/\n=>redirect = /\\evil.com",
			`has a backslash: browsers read it as /`},
		{"route host with dot", "hosts = Example.com api.example.com\n=>hosts = example.com.",
			`[route api] hosts: host name "example.com." ends with a dot`},
		{"host with dot", "[host example.com www.example.com]\n=>[host example.com. www.example.com]",
			`host name "example.com." ends with a dot`},
		{"redirect scheme", "redirect = https://new.example.com/\n=>redirect = ftp://new.example.com/",
			`is neither an http:// or https:// URL nor a path starting with /`},
		{"strip on redirect", "redirect-code = 301\n=>redirect-code = 301\nstrip-prefix = true",
			`[route old] strip-prefix: set on a redirect route`},
		{"tcp", "routes = api old\n=>routes = api old\nmode = tcp",
			`[frontend web] routes: makes no sense on a tcp frontend`},
		{"unknown backend", "backends = api api\n=>backends = apo",
			`[route api] backends: unknown backend "apo" (did you mean "api"?)`},
		{"route name", "[route api]\n=>[route api v2]",
			`[route api v2]: a route needs exactly one name`},
		{"route key", "balance = leastconn\n=>balance = leastconn\nbind = x",
			`[route api] bind: unknown key`},
		{"bad host", "hosts = Example.com api.example.com\n=>hosts = a.*.com",
			`[route api] hosts: "a.*.com" is not a host name`},
		{"repeated plain key", "path = /api\n=>path = /api\npath = /b",
			`[route api] path: key set 2 times`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			from, to, _ := strings.Cut(tt.edit, "=>")
			if to != "" {
				to += "\n"
			}
			src := strings.Replace(routeBase, from, to, 1)
			if src == routeBase {
				t.Fatalf("edit %q changed nothing", from)
			}
			_, err := parse(t, src)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v\nwant %s", err, tt.want)
			}
		})
	}
}

func TestUnusedRouteWarns(t *testing.T) {
	t.Parallel()
	cfg, err := parse(t, strings.Replace(routeBase, "routes = api old", "routes = api", 1))
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Warnings) != 1 || !strings.Contains(cfg.Warnings[0], "[route old]: no frontend lists this route") {
		t.Errorf("warnings %q", cfg.Warnings)
	}
}

func TestRoutesOnlyFrontend(t *testing.T) {
	t.Parallel()
	src := strings.Replace(routeBase, "hosts = example.com\nbackends = web\n", "", 1)
	if _, err := parse(t, src); err != nil {
		t.Fatal(err)
	}
}
