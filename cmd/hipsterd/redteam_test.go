package main

// End-to-end tests of what the red team found from outside: requests
// dressed to slip past a route, methods a reverse proxy must not forward.

import (
	be "encoding/binary"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

const slashesConfig = `
[frontend web]
bind = %s
backends = web
routes = admin api

[route admin]
path = /admin
backends = admin
set-request-header = X-Admin-Checked: yes

[route api]
path = /api
backends = api
strip-prefix = true

[backend web]
connect = %s
[backend admin]
connect = %s
[backend api]
connect = %s
`

// TestRoutesMergeSlashes: most backends read //admin as /admin, so a route
// for /admin must take it too, or its requests reach another backend
// without the route's rules.
func TestRoutesMergeSlashes(t *testing.T) {
	t.Parallel()
	front := freePort(t, "tcp", "127.0.0.1")
	cfg := writeConfig(t, fmt.Sprintf(slashesConfig, front,
		echoBackend(t, "web"), echoBackend(t, "admin"), echoBackend(t, "api")))
	startHipsterd(t, cfg, front)
	for _, tc := range []struct{ target, backend, uri string }{
		{"//admin/x", "admin", "//admin/x"},
		{"///admin", "admin", "///admin"},
		{"/api/..//admin/x", "admin", "/api/..//admin/x"},
		{"/x//../admin/", "admin", "/x//../admin/"},
		{"//api//v1/x?q", "api", "/v1/x?q"},
		// An encoded slash is no separator: it stays where it was.
		{"/%2Fadmin", "web", "/%2Fadmin"},
	} {
		resp, b := rawGet(t, front, tc.target, "example.com")
		var got seen
		if resp.StatusCode != 200 || json.Unmarshal([]byte(b), &got) != nil || got.Name != tc.backend || got.URI != tc.uri {
			t.Errorf("%s: %d %+v; want %s with %s", tc.target, resp.StatusCode, got, tc.backend, tc.uri)
			continue
		}
		if checked := got.Header.Get("X-Admin-Checked"); (tc.backend == "admin") != (checked == "yes") {
			t.Errorf("%s: X-Admin-Checked %q at %s", tc.target, checked, got.Name)
		}
	}
}

// TestConnectRefused: CONNECT through a reverse proxy is answered 405 and
// never reaches a backend (it reached it naming the backend's own address).
func TestConnectRefused(t *testing.T) {
	t.Parallel()
	var reached atomic.Int32
	be := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		reached.Add(1)
		w.WriteHeader(200)
	})
	front := freePort(t, "tcp", "127.0.0.1")
	cfg := writeConfig(t, fmt.Sprintf(`
[frontend web]
bind = %s
backends = b
routes = api
[route api]
path = /api
backends = b
[backend b]
connect = %s
`, front, be))
	startHipsterd(t, cfg, front)
	for _, req := range []string{
		"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n",
		"CONNECT /api/x HTTP/1.1\r\nHost: example.com\r\n\r\n",
	} {
		c, err := net.Dial("tcp", front)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(c, req)
		// The answer, then nothing more: the connection is not a tunnel.
		c.(*net.TCPConn).CloseWrite()
		b, _ := io.ReadAll(c)
		c.Close()
		if !strings.HasPrefix(string(b), "HTTP/1.1 405 ") || !strings.Contains(string(b), "\r\nAllow: ") {
			t.Errorf("%q: got %q, want a 405 with Allow", strings.SplitN(req, "\r\n", 2)[0], b)
		}
	}
	if n := reached.Load(); n != 0 {
		t.Errorf("%d CONNECT requests reached the backend", n)
	}
}

// TestHostTrailingDot: "example.com." is example.com, for [host] sections
// and for routes that name hosts; it escaped both.
func TestHostTrailingDot(t *testing.T) {
	t.Parallel()
	front := freePort(t, "tcp", "127.0.0.1")
	cfg := writeConfig(t, fmt.Sprintf(`
[frontend web]
bind = %s
hosts = example.com *.example.org
backends = fb
routes = named open
[host example.com *.example.org]
backends = web
[route named]
hosts = api.example.com
path = /api
backends = api
[route open]
path = /
redirect = https://elsewhere.example/
[backend fb]
connect = %s
[backend web]
connect = %s
[backend api]
connect = %s
`, front, echoBackend(t, "fb"), echoBackend(t, "web"), echoBackend(t, "api")))
	startHipsterd(t, cfg, front)
	for _, tc := range []struct{ host, target, backend string }{
		{"api.example.com.", "/api/x", "api"},
		{"API.Example.COM.:80", "/api/x", "api"},
		// The absolute form's authority is the Host.
		{"other.test", "http://api.example.com./api/x", "api"},
	} {
		resp, b := rawGet(t, front, tc.target, tc.host)
		var got seen
		if resp.StatusCode != 200 || json.Unmarshal([]byte(b), &got) != nil || got.Name != tc.backend {
			t.Errorf("Host %s, %s: %d %q; want %s", tc.host, tc.target, resp.StatusCode, b, tc.backend)
		}
	}
	// Without routes in the way: the [host] section's backends.
	front2 := freePort(t, "tcp", "127.0.0.1")
	cfg2 := writeConfig(t, fmt.Sprintf(`
[frontend web]
bind = %s
hosts = example.com *.example.org
backends = fb
[host example.com *.example.org]
backends = web
[backend fb]
connect = %s
[backend web]
connect = %s
`, front2, echoBackend(t, "fb"), echoBackend(t, "web")))
	startHipsterd(t, cfg2, front2)
	for _, host := range []string{"example.com.", "Example.COM.:80", "a.example.org."} {
		resp, b := rawGet(t, front2, "/", host)
		var got seen
		if resp.StatusCode != 200 || json.Unmarshal([]byte(b), &got) != nil || got.Name != "web" {
			t.Errorf("Host %s: %d %q; want web", host, resp.StatusCode, b)
		}
	}
}

// TestAsteriskFormOnlyForOptions: "GET *" and an h2c preface ("PRI *
// HTTP/2.0") on an HTTP/1.1 frontend are refused with 400; net/http let
// them through and the backend got them. OPTIONS * still goes through.
func TestAsteriskFormOnlyForOptions(t *testing.T) {
	t.Parallel()
	var got atomic.Value
	got.Store("")
	be := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		got.Store(got.Load().(string) + r.Method + " " + r.RequestURI + "\n")
	})
	front := freePort(t, "tcp", "127.0.0.1")
	cfg := writeConfig(t, fmt.Sprintf(`
[frontend web]
bind = %s
backends = b
[backend b]
connect = %s
`, front, be))
	startHipsterd(t, cfg, front)
	for _, tc := range []struct {
		req    string
		status string
	}{
		{"GET * HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", "400"},
		{"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "400"},
		{"OPTIONS * HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", "200"},
	} {
		c, err := net.Dial("tcp", front)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(c, tc.req)
		b, _ := io.ReadAll(c)
		c.Close()
		if !strings.HasPrefix(string(b), "HTTP/1.1 "+tc.status+" ") {
			t.Errorf("%q: got %q, want %s", strings.SplitN(tc.req, "\r\n", 2)[0], b, tc.status)
		}
	}
	// (A Go backend answers OPTIONS * itself, without its handler.)
	if g := got.Load().(string); g != "" {
		t.Errorf("the backend got %q, want nothing", g)
	}
}

// TestRoutePathAsRequestsArrive: requests are matched by their escaped
// path, so a prefix with é or \ matched nothing and passed -t; it is now a
// config error that names the form to write, and that form matches é
// however the client sends it.
func TestRoutePathAsRequestsArrive(t *testing.T) {
	t.Parallel()
	front := freePort(t, "tcp", "127.0.0.1")
	conf := `
[frontend web]
bind = %s
backends = web
routes = cafe
[route cafe]
path = %s
backends = cafe
[backend web]
connect = %s
[backend cafe]
connect = %s
`
	web, cafe := echoBackend(t, "web"), echoBackend(t, "cafe")
	for _, tc := range []struct{ path, want string }{
		{"/café", `"/caf%C3%A9"`},
		{`/a\b`, `"/a%5Cb"`},
	} {
		bad := writeConfig(t, fmt.Sprintf(conf, front, tc.path, web, cafe))
		code, _, stderr := runBinary(t, "-t", "-config", bad)
		if code == 0 || !strings.Contains(stderr, bad+":7: [route cafe] path:") || !strings.Contains(stderr, "write "+tc.want) {
			t.Errorf("path = %s: -t exit %d, %q; want an error suggesting %s", tc.path, code, stderr, tc.want)
		}
	}
	startHipsterd(t, writeConfig(t, fmt.Sprintf(conf, front, "/caf%C3%A9", web, cafe)), front)
	for _, target := range []string{"/café/x", "/caf%c3%a9/x", "/caf%C3%A9"} {
		resp, b := rawGet(t, front, target, "example.com")
		var got seen
		if resp.StatusCode != 200 || json.Unmarshal([]byte(b), &got) != nil || got.Name != "cafe" {
			t.Errorf("%s: %d %q; want cafe", target, resp.StatusCode, b)
		}
	}
}

// TestProxyHeaderCRC32C: a PROXY v2 header whose CRC32c TLV does not match
// is refused, as HAProxy refuses it; it named the client all the same.
func TestProxyHeaderCRC32C(t *testing.T) {
	t.Parallel()
	xff := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.Header.Get("X-Forwarded-For"))
	})
	front := freePort(t, "tcp", "127.0.0.1")
	cfg := writeConfig(t, fmt.Sprintf(`
[frontend web]
bind = %s
accept-proxy = true
add-x-forwarded-for = true
backends = b
[backend b]
connect = %s
`, front, xff))
	startHipsterd(t, cfg, front)
	withCRC := func(damage bool) []byte {
		addrs := []byte{203, 0, 113, 7, 192, 0, 2, 1, 0x30, 0x39, 0, 80}
		h := v2Header(0x21, 0x11, append(addrs, 0x03, 0, 4, 0, 0, 0, 0))
		sum := crc32.Checksum(h, crc32.MakeTable(crc32.Castagnoli))
		if damage {
			sum++
		}
		be.BigEndian.PutUint32(h[len(h)-4:], sum)
		return h
	}
	req := []byte("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
	if got, _ := rawExchange(t, front, false, 0, append(withCRC(false), req...)); !strings.HasPrefix(got, "HTTP/1.1 200 ") || !strings.HasSuffix(got, "203.0.113.7") {
		t.Errorf("a header with its CRC32c: %q, want a 200 for 203.0.113.7", got)
	}
	if got, _ := rawExchange(t, front, false, 0, append(withCRC(true), req...)); got != "" {
		t.Errorf("a header whose CRC32c does not match: %q, want the connection closed", got)
	}
}
