package main

// End-to-end tests of routes: paths within hosts, redirects, header rules,
// and -route.

import (
	"bufio"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/hipsterd/hipsterd/internal/testcert"
)

// seen is what an echo backend saw of a request.
type seen struct {
	Name   string      `json:"name"`
	URI    string      `json:"uri"`
	Host   string      `json:"host"`
	Header http.Header `json:"header"`
}

// echoBackend answers with what it saw, and with headers for the response
// rules to work on.
func echoBackend(t *testing.T, name string) string {
	t.Helper()
	return newServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Powered-By", "php")
		w.Header().Set("X-Via", "backend")
		json.NewEncoder(w).Encode(seen{name, r.RequestURI, r.Host, r.Header})
	})
}

// rawGet sends a GET for target, as written, on a connection of its own,
// and returns the response and its body.
func rawGet(t *testing.T, addr, target, host string, extra ...string) (*http.Response, string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	req := "GET " + target + " HTTP/1.1\r\nHost: " + host + "\r\nConnection: close\r\n"
	for _, h := range extra {
		req += h + "\r\n"
	}
	if _, err := io.WriteString(c, req+"\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("GET %s: %v", target, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

const routesConfig = `
[global]
stats = %s
accesslog = %s
accesslog-format = json

[frontend web]
bind = %s
hosts = example.com
backends = fb
routes = api named-api admin static old moved go ws
set-request-header = X-Env: prod
del-response-header = X-Powered-By
add-response-header = X-Via: frontend

[host example.com www.example.com]
backends = web
add-request-header = X-Layer: host
add-response-header = X-Via: host

[route api]
path = /api
backends = api
strip-prefix = true
add-request-header = X-Layer: route
del-request-header = Cookie
add-request-header = X-Layer: route-again
set-response-header = Cache-Control: no-store

[route named-api]
hosts = named.example.com
path = /api
backends = admin

[route admin]
path = /admin
backends = admin

[route static]
path = /static/
backends = api

[route old]
path = /old
redirect = https://new.example.com/
redirect-code = 301

[route moved]
path = /moved/
redirect = /new/

[route go]
path = /go
redirect = /

[route ws]
path = /ws
backends = ws

[backend fb]
connect = %s
[backend web]
connect = %s
[backend api]
connect = %s
[backend admin]
connect = %s
[backend ws]
connect = %s
`

func TestRoutesEndToEnd(t *testing.T) {
	t.Parallel()
	front, stats := freePort(t, "tcp", "127.0.0.1"), freePort(t, "tcp", "127.0.0.1")
	logPath := filepath.Join(t.TempDir(), "access.log")
	ws := newServer(t, wsEcho)
	cfg := writeConfig(t, fmt.Sprintf(routesConfig, stats, logPath, front,
		echoBackend(t, "fb"), echoBackend(t, "web"), echoBackend(t, "api"), echoBackend(t, "admin"), ws))
	if code, stdout, stderr := runBinary(t, "-t", "-config", cfg); code != 0 || stderr != "" {
		t.Fatalf("-t: exit %d\n%s%s", code, stdout, stderr)
	}
	startHipsterd(t, cfg, front)

	t.Run("forwarding", func(t *testing.T) {
		for _, tc := range []struct{ host, target, backend, uri string }{
			{"example.com", "/api/v1/x?q=1", "api", "/v1/x?q=1"},
			{"example.com", "/api", "api", "/"},
			{"example.com", "/api/", "api", "/"},
			{"example.com", "/apix", "web", "/apix"},
			{"other.test", "/apix", "fb", "/apix"},
			// A route naming the host beats one without, at equal length.
			{"named.example.com", "/api/x", "admin", "/api/x"},
			{"NAMED.example.com:80", "/api/x", "admin", "/api/x"},
			// The longest path wins; a trailing / takes what is under it.
			{"other.test", "/static/a.css", "api", "/static/a.css"},
			{"other.test", "/static", "fb", "/static"},
			// Dressed paths match as the backend reads them; the target
			// goes as sent, or in normal form less the prefix.
			{"other.test", "/api/../admin/x", "admin", "/api/../admin/x"},
			{"other.test", "/%61dmin/x", "admin", "/%61dmin/x"},
			{"other.test", "/api/%2e%2e/admin", "admin", "/api/%2e%2e/admin"},
			{"other.test", "/api/v1/../../x", "fb", "/api/v1/../../x"},
			{"other.test", "/admin/../%61pi/v2/%7Eme?a=%20", "api", "/v2/~me?a=%20"},
			{"other.test", "/api/a%2Fb", "api", "/a%2Fb"},
			{"other.test", "/api%2Fx", "fb", "/api%2Fx"},
			// The absolute form: its authority is the Host.
			{"other.test", "http://named.example.com/api/x", "admin", "/api/x"},
			{"other.test", "http://other.test/api/v1?z", "api", "/v1?z"},
		} {
			resp, b := rawGet(t, front, tc.target, tc.host)
			var got seen
			if resp.StatusCode != 200 || json.Unmarshal([]byte(b), &got) != nil || got.Name != tc.backend || got.URI != tc.uri {
				t.Errorf("%s %s: %d %+v; want %s with %s", tc.host, tc.target, resp.StatusCode, got, tc.backend, tc.uri)
			}
		}
	})

	t.Run("bad paths", func(t *testing.T) {
		for _, target := range []string{"/../etc/passwd", "/api/../../x", "/%2e%2e/x"} {
			if resp, b := rawGet(t, front, target, "other.test"); resp.StatusCode != 400 || strings.Contains(b, `"name"`) {
				t.Errorf("%s: %d %q, want a 400 from hipsterd", target, resp.StatusCode, b)
			}
		}
	})

	t.Run("header rules", func(t *testing.T) {
		// A hostile client names X-Env as hop-by-hop, to have it dropped.
		resp, b := rawGet(t, front, "/api/x", "example.com", "Cookie: secret=1", "X-Env: dev", "X-Layer: client", "Connection: X-Env, close")
		var got seen
		json.Unmarshal([]byte(b), &got)
		// Frontend, then host, then route; each key repeated in order.
		want := map[string][]string{"X-Env": {"prod"}, "X-Layer": {"client", "host", "route", "route-again"}, "Cookie": nil}
		for k, v := range want {
			if !reflect.DeepEqual(got.Header[k], v) {
				t.Errorf("backend got %s %q, want %q", k, got.Header[k], v)
			}
		}
		if v := resp.Header["X-Via"]; !reflect.DeepEqual(v, []string{"backend", "frontend", "host"}) {
			t.Errorf("client got X-Via %q", v)
		}
		if v := resp.Header.Get("X-Powered-By"); v != "" {
			t.Errorf("X-Powered-By %q not deleted", v)
		}
		if v := resp.Header.Get("Cache-Control"); v != "no-store" {
			t.Errorf("Cache-Control %q", v)
		}
		// Another host, no route: the frontend's rules only.
		resp, b = rawGet(t, front, "/x", "other.test", "Cookie: kept=1")
		got = seen{}
		json.Unmarshal([]byte(b), &got)
		if got.Header.Get("Cookie") != "kept=1" || got.Header.Get("X-Env") != "prod" || len(got.Header["X-Layer"]) != 0 {
			t.Errorf("other host: backend got %v", got.Header)
		}
		if v := resp.Header["X-Via"]; !reflect.DeepEqual(v, []string{"backend", "frontend"}) {
			t.Errorf("other host: X-Via %q", v)
		}
	})

	t.Run("redirects", func(t *testing.T) {
		for _, tc := range []struct {
			host, target string
			code         int
			location     string
		}{
			{"other.test", "/old/a/b?x=1&y", 301, "https://new.example.com/a/b?x=1&y"},
			{"other.test", "/old", 301, "https://new.example.com/"},
			{"other.test", "/old/", 301, "https://new.example.com/"},
			{"other.test", "/api/../old/%7Ex", 301, "https://new.example.com/~x"},
			{"other.test", "/moved/x?y", 308, "/new/x?y"},
			{"other.test", "/moved/", 308, "/new/"},
			{"other.test", "/go/x", 308, "/x"},
			// Not a way to send the browser to another host.
			{"other.test", "/go//evil.example", 308, "/evil.example"},
			{"other.test", "/go", 308, "/"},
		} {
			resp, _ := rawGet(t, front, tc.target, tc.host)
			if resp.StatusCode != tc.code || resp.Header.Get("Location") != tc.location {
				t.Errorf("%s: %d %q, want %d %q", tc.target, resp.StatusCode, resp.Header.Get("Location"), tc.code, tc.location)
			}
		}
		// Response rules apply to a redirect too.
		resp, _ := rawGet(t, front, "/old", "example.com")
		if v := resp.Header["X-Via"]; !reflect.DeepEqual(v, []string{"frontend", "host"}) {
			t.Errorf("redirect: X-Via %q", v)
		}
	})

	t.Run("websocket", func(t *testing.T) {
		c, resp, err := websocket.DefaultDialer.Dial("ws://"+front+"/ws/../ws/chat", nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if v := resp.Header["X-Via"]; !reflect.DeepEqual(v, []string{"frontend"}) {
			t.Errorf("101: X-Via %q", v)
		}
		if err := c.WriteMessage(websocket.TextMessage, []byte("hello")); err != nil {
			t.Fatal(err)
		}
		if _, msg, err := c.ReadMessage(); err != nil || string(msg) != "hello" {
			t.Errorf("echo %q, %v", msg, err)
		}
	})

	// The metrics, the status page's data and the json access log name
	// the route.
	m := metricsText(t, stats)
	for _, want := range []string{
		`hipsterd_route_requests_total{code="200",frontend="web",route="api"} `,
		`hipsterd_route_requests_total{code="301",frontend="web",route="old"} 5`,
		`hipsterd_route_requests_total{code="101",frontend="web",route="ws"} 1`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	resp, err := http.Get("http://" + stats + "/status.json")
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Frontends []struct {
			Routes []struct {
				Name     string `json:"name"`
				Requests int    `json:"requests"`
			} `json:"routes"`
			Pools []struct {
				Route string `json:"route"`
			} `json:"pools"`
		} `json:"frontends"`
	}
	json.NewDecoder(resp.Body).Decode(&st)
	resp.Body.Close()
	if len(st.Frontends) != 1 || len(st.Frontends[0].Routes) != 8 || st.Frontends[0].Routes[4].Name != "old" || st.Frontends[0].Routes[4].Requests != 5 {
		t.Errorf("status.json routes: %+v", st.Frontends)
	}
	var lines []string
	deadline := time.Now().Add(10 * time.Second)
	for {
		data, _ := os.ReadFile(logPath)
		lines = strings.Split(string(data), "\n")
		if strings.Contains(string(data), `"uri":"/go"`) || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	found := map[string]string{}
	for _, l := range lines {
		var e struct {
			URI   string  `json:"uri"`
			Route *string `json:"route"`
		}
		if json.Unmarshal([]byte(l), &e) == nil {
			r := "null"
			if e.Route != nil {
				r = *e.Route
			}
			found[e.URI] = r
		}
	}
	for uri, route := range map[string]string{"/api/v1/x?q=1": "api", "/apix": "null", "/go": "go", "/api/../admin/x": "admin"} {
		if found[uri] != route {
			t.Errorf("access log: %s has route %q, want %q", uri, found[uri], route)
		}
	}
}

func TestRoutesOverHTTP2(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cert, key := testcert.Make(t, filepath.Join(dir, "c"), testcert.Options{Names: []string{"localhost"}})
	front := freePort(t, "tcp", "127.0.0.1")
	cfg := writeConfig(t, fmt.Sprintf(`
[frontend s]
bind = %s
https = true
certfile = %s
keyfile = %s
backends = web
routes = api old
[route api]
path = /api/
backends = api
strip-prefix = true
set-response-header = X-Route: api
[route old]
path = /old
redirect = https://new.example.com
redirect-code = 307
[backend web]
connect = %s
[backend api]
connect = %s
`, front, cert, key, echoBackend(t, "web"), echoBackend(t, "api")))
	startHipsterd(t, cfg, front)
	client := &http.Client{
		Transport: &http.Transport{
			TLSClientConfig:   &tls.Config{RootCAs: testcert.Pool(t, cert), ServerName: "localhost"},
			ForceAttemptHTTP2: true,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	defer client.CloseIdleConnections()
	get := func(path string) (*http.Response, seen) {
		resp, err := client.Get("https://" + front + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var got seen
		json.NewDecoder(resp.Body).Decode(&got)
		if resp.Proto != "HTTP/2.0" {
			t.Errorf("%s: spoke %s", path, resp.Proto)
		}
		return resp, got
	}
	if resp, got := get("/api/v1?x"); got.Name != "api" || got.URI != "/v1?x" || resp.Header.Get("X-Route") != "api" {
		t.Errorf("/api/v1: %+v %v", got, resp.Header)
	}
	if _, got := get("/api"); got.Name != "web" {
		t.Errorf("/api is not under /api/: %+v", got)
	}
	if resp, _ := get("/old/a"); resp.StatusCode != 307 || resp.Header.Get("Location") != "https://new.example.com/a" {
		t.Errorf("/old/a: %d %q", resp.StatusCode, resp.Header.Get("Location"))
	}
}

func TestRoutesCheck(t *testing.T) {
	t.Parallel()
	base := `
[frontend web]
bind = 127.0.0.1:1
backends = b
routes = api
[route api]
path = /api
backends = b
[backend b]
connect = 127.0.0.1:2
`
	for _, tc := range []struct{ name, from, to, want string }{
		{"tcp frontend", "routes = api", "routes = api\nmode = tcp", "[frontend web] routes: makes no sense on a tcp frontend"},
		{"backends and redirect", "backends = b\n[backend", "backends = b\nredirect = /x\n[backend", "[route api] redirect: set with backends"},
		{"no path", "path = /api\n", "", "[route api] path: missing"},
		{"unknown route", "routes = api", "routes = apj", `[frontend web] routes: unknown route "apj" (did you mean "api"?)`},
		{"rule without colon", "routes = api", "routes = api\nadd-request-header = X-A 1", `[frontend web] add-request-header: "X-A 1" has no ':'`},
		{"framing header", "routes = api", "routes = api\nset-response-header = Transfer-Encoding: chunked", "Transfer-Encoding is a hop-by-hop or framing header"},
	} {
		code, stdout, stderr := runBinary(t, "-t", "-config", writeConfig(t, strings.Replace(base, tc.from, tc.to, 1)))
		if code != 1 || !strings.Contains(stderr, tc.want) || stdout != "" {
			t.Errorf("%s: exit %d, stderr %q; want %q", tc.name, code, stderr, tc.want)
		}
	}
	// A route no frontend lists is a warning.
	code, stdout, stderr := runBinary(t, "-t", "-config", writeConfig(t, base+"[route spare]\npath = /s\nbackends = b\n"))
	if code != 0 || stdout != "configuration OK\n" || !strings.Contains(stderr, "warning: ") || !strings.Contains(stderr, "[route spare]: no frontend lists this route") {
		t.Errorf("unused route: exit %d, %q %q", code, stdout, stderr)
	}
}

func TestRouteExplain(t *testing.T) {
	t.Parallel()
	front := freePort(t, "tcp", "127.0.0.1")
	_, port, _ := net.SplitHostPort(front)
	cfg := writeConfig(t, fmt.Sprintf(routesConfig, "127.0.0.1:7", filepath.Join(t.TempDir(), "log"), front,
		"127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4", "127.0.0.1:5", "127.0.0.1:6")+
		"[frontend other]\nbind = 127.0.0.1:1\nbackends = fb\n")
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"-route", "http://example.com:" + port + "/api/v1/x?q=1"}, []string{
			"frontend  web (mode http, bind " + front + "; its bind has the URL's port " + port + ")",
			"[host example.com www.example.com], for Host example.com:" + port,
			"api        path /api: CHOSEN",
			"named-api  path /api, hosts named.example.com: not for this host",
			"admin      path /admin: the path does not match",
			"backends          api (balance roundrobin), route api's",
			"forwarded         /v1/x?q=1 (strip-prefix takes /api off)",
			"set X-Env: prod                  [frontend web]",
			"add X-Layer: host                [host example.com www.example.com]",
			"add X-Layer: route               [route api]",
			"del Cookie                       [route api]",
			"add X-Layer: route-again         [route api]",
			"set Cache-Control: no-store      [route api]",
		}},
		{[]string{"-route", "http://named.example.com/api/../%61pi/x", "-frontend", "web"}, []string{
			"named by -frontend",
			"/api/x (the normal form of /api/../%61pi/x, which routes are matched against)",
			"api        path /api: matches, but named-api names the host, at the same length",
			"named-api  path /api, hosts named.example.com: CHOSEN",
			"forwarded         /api/../%61pi/x (the target as sent)",
		}},
		{[]string{"-route", "http://x:" + port + "/old/a?b=1"}, []string{"answer            301 redirect, Location: https://new.example.com/a?b=1"}},
		{[]string{"-route", "http://x:" + port + "/nothing"}, []string{"backends          fb (balance roundrobin), the frontend's", "no [host] section of this frontend is for Host x:" + port}},
		{[]string{"-route", "http://x:" + port + "/../x"}, []string{"400: the path /../x cannot be matched"}},
		{[]string{"-route", "http://x:1/", "-frontend", "other"}, []string{"routes            none: the frontend lists no routes"}},
	} {
		code, stdout, stderr := runBinary(t, append([]string{"-config", cfg}, tc.args...)...)
		if code != 0 || stderr != "" {
			t.Errorf("%v: exit %d, stderr %q", tc.args, code, stderr)
		}
		// Columns are aligned by the longest cell: compare words.
		words := func(s string) string { return strings.Join(strings.Fields(s), " ") }
		for _, w := range tc.want {
			if !strings.Contains(words(stdout), words(w)) {
				t.Errorf("%v: output lacks %q:\n%s", tc.args, w, stdout)
			}
		}
	}
	// Nothing was bound: the frontend's port is still free.
	if ln, err := net.Listen("tcp", front); err != nil {
		t.Errorf("-route bound %s: %v", front, err)
	} else {
		ln.Close()
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-route", "http://x:9/"}, "no frontend of " + cfg + " binds port 9; name one with -frontend"},
		{[]string{"-route", "/relative"}, "give an absolute http:// or https:// URL"},
		{[]string{"-route", "http://x/", "-frontend", "nope"}, `-frontend "nope": no such frontend`},
	} {
		code, _, stderr := runBinary(t, append([]string{"-config", cfg}, tc.args...)...)
		if code != 1 || !strings.Contains(stderr, tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want %q", tc.args, code, stderr, tc.want)
		}
	}
	if code, _, _ := runBinary(t, "-config", cfg, "-frontend", "web"); code != 2 {
		t.Errorf("-frontend without -route: exit %d, want 2", code)
	}
}

func TestRoutesReload(t *testing.T) {
	t.Parallel()
	front := freePort(t, "tcp", "127.0.0.1")
	web, api := echoBackend(t, "web"), echoBackend(t, "api")
	conf := func(path, extra string) string {
		return fmt.Sprintf("[frontend web]\nbind = %s\nbackends = web\nroutes = r\n[route r]\npath = %s\nbackends = api\n%s[backend web]\nconnect = %s\n[backend api]\nconnect = %s\n", front, path, extra, web, api)
	}
	cfg := writeConfig(t, conf("/a", ""))
	p := startHipsterd(t, cfg, front)
	backendOf := func(target string) string {
		_, b := rawGet(t, front, target, "x")
		var got seen
		json.Unmarshal([]byte(b), &got)
		return got.Name
	}
	if a, b := backendOf("/a/x"), backendOf("/b/x"); a != "api" || b != "web" {
		t.Fatalf("before reload: /a/x to %s, /b/x to %s", a, b)
	}
	// A bad rule keeps the running routes.
	p.reload(t, cfg, conf("/b", "add-request-header = X-No-Colon\n"), "reload failed", 1)
	if !strings.Contains(p.stderr.String(), `[route r] add-request-header: \"X-No-Colon\" has no ':'`) {
		t.Errorf("the failed reload does not name the rule:\n%s", p.stderr.String())
	}
	if a := backendOf("/a/x"); a != "api" {
		t.Errorf("after a failed reload, /a/x to %s", a)
	}
	p.reload(t, cfg, conf("/b", ""), "reloaded", 1)
	if a, b := backendOf("/a/x"), backendOf("/b/x"); a != "web" || b != "api" {
		t.Errorf("after reload: /a/x to %s, /b/x to %s", a, b)
	}
}
