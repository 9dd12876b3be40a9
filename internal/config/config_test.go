package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode"

	"github.com/hipsterd/hipsterd/internal/testcert"
)

func parse(t *testing.T, src string) (*Config, error) {
	t.Helper()
	return Parse("test.ini", []byte(src))
}

func TestDrunkenHipsterExamples(t *testing.T) {
	t.Parallel()
	// The configurations of drunken-hipster's README, unchanged.
	simple := `
[frontend frontend1]
bind = 0.0.0.0:9000
backends = backend1

[backend backend1]
connect = 127.0.0.1:8000
`
	hosts := `
[frontend frontend1]
bind = 0.0.0.0:9000
hosts = example.com www.example.com foobar.com www.foobar.com
backends = fallback

[host example.com www.example.com]
backends = backend1

[host foobar.com www.foobar.com]
backends = backend2

[backend backend1]
connect = 127.0.0.1:8000

[backend backend2]
connect = 192.168.0.1:8000

[backend fallback]
connect = 192.168.0.2:7000
`
	xff := `
[global]
accesslog = /var/log/hipsterd.access.log

[frontend foo]
bind = 0.0.0.0:8000
backends = bar baz quux
add-x-forwarded-for = true

[backend bar]
connect = a:1
[backend baz]
connect = b
[backend quux]
connect = [::1]:3
`
	c, err := parse(t, simple)
	if err != nil {
		t.Fatal(err)
	}
	want := Frontend{Name: "frontend1", Bind: "0.0.0.0:9000", Listen: Address{Port: 9000, Family: 4}, Backends: []string{"backend1"},
		ReadHeaderTimeout: DefaultReadHeaderTimeout, IdleTimeout: DefaultIdleTimeout, TunnelTimeout: DefaultTunnelTimeout, ClientTimeout: DefaultClientTimeout, Balance: RoundRobin,
		TLSMinVersion: "1.2", HTTP2: true, RedirectHTTPSPort: 443, AccessLogFormat: LogHipster, Mode: ModeHTTP}
	if !reflect.DeepEqual(c.Frontends, []Frontend{want}) {
		t.Errorf("frontends = %+v, want %+v", c.Frontends, want)
	}
	wantB := Backend{Name: "backend1", Address: "127.0.0.1:8000", ConnectTimeout: DefaultConnectTimeout, ResponseTimeout: DefaultResponseTimeout, BodyTimeout: DefaultBodyTimeout, QueueTimeout: DefaultQueueTimeout,
		Weight: 1, Health: HealthCheck{Kind: HealthNone, Timeout: 2 * time.Second, Interval: 2 * time.Second, Rise: 2, Fall: 3}}
	wantB.QueueSize = DefaultQueueSize
	if !reflect.DeepEqual(c.Backends, []Backend{wantB}) {
		t.Errorf("backends = %+v, want %+v", c.Backends, wantB)
	}
	if c.Global.ShutdownTimeout != DefaultShutdownTimeout || c.Global.TunnelTimeout != time.Hour || c.Global.AccessLog != "" || c.Frontends[0].AccessLogFormat != LogHipster {
		t.Errorf("global = %+v", c.Global)
	}

	c, err = parse(t, hosts)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.HostFor("www.foobar.com"); got == nil || !reflect.DeepEqual(got.Backends, []string{"backend2"}) {
		t.Errorf("www.foobar.com → %+v", got)
	}
	if got := c.Frontends[0].Hosts; len(got) != 4 {
		t.Errorf("hosts = %v", got)
	}

	c, err = parse(t, xff)
	if err != nil {
		t.Fatal(err)
	}
	fe := c.Frontends[0]
	if !fe.AddXForwardedFor || fe.AccessLog != "/var/log/hipsterd.access.log" {
		t.Errorf("frontend = %+v", fe)
	}
	var addrs []string
	for _, b := range c.Backends {
		addrs = append(addrs, b.Address)
	}
	if want := []string{"a:1", "b:80", "[::1]:3"}; !reflect.DeepEqual(addrs, want) {
		t.Errorf("addresses = %v, want %v", addrs, want)
	}
}

func TestValues(t *testing.T) {
	t.Parallel()
	c, err := parse(t, `
[global]
read-header-timeout = 3s
idle-timeout = 1m
shutdown-timeout = 0
tunnel-timeout = 10m
accesslog = /tmp/all.log
accesslog-format = combined
stats = 127.0.0.1:9100

[frontend a]
bind = [::1]:0
backends =   b1    b1	b2
hosts = Example.COM
idle-timeout = 5s
tunnel-timeout = 0
accesslog = /tmp/a.log
accesslog-format = JSON
add-x-forwarded-for = yes

[frontend b]
bind = :9001
backends = b2

[host example.com EXAMPLE.org:9000]
backends = b2

[backend b1]
connect = ::1
connect-timeout = 250ms
response-timeout = 0s
body-timeout = 0

[backend b2]
Connect = localhost:81
`)
	if err != nil {
		t.Fatal(err)
	}
	a, b := c.Frontends[0], c.Frontends[1]
	if !reflect.DeepEqual(a.Backends, []string{"b1", "b1", "b2"}) {
		t.Errorf("backends split on white space: %q", a.Backends)
	}
	if !reflect.DeepEqual(a.Hosts, []string{"example.com"}) {
		t.Errorf("hosts = %q, want lower case", a.Hosts)
	}
	if a.ReadHeaderTimeout != 3*time.Second || a.IdleTimeout != 5*time.Second {
		t.Errorf("a timeouts: %v %v", a.ReadHeaderTimeout, a.IdleTimeout)
	}
	if b.ReadHeaderTimeout != 3*time.Second || b.IdleTimeout != time.Minute {
		t.Errorf("b timeouts from [global]: %v %v", b.ReadHeaderTimeout, b.IdleTimeout)
	}
	if a.TunnelTimeout != 0 || b.TunnelTimeout != 10*time.Minute {
		t.Errorf("tunnel-timeout: a %v (0: none), b %v (from [global])", a.TunnelTimeout, b.TunnelTimeout)
	}
	if a.AccessLog != "/tmp/a.log" || b.AccessLog != "/tmp/all.log" {
		t.Errorf("access logs: %q %q", a.AccessLog, b.AccessLog)
	}
	if a.AccessLogFormat != LogJSON || b.AccessLogFormat != LogCombined {
		t.Errorf("access log formats: %q %q, want json and combined from [global]", a.AccessLogFormat, b.AccessLogFormat)
	}
	if !a.AddXForwardedFor || b.AddXForwardedFor {
		t.Errorf("xff: %v %v", a.AddXForwardedFor, b.AddXForwardedFor)
	}
	if c.Global.ShutdownTimeout != 0 {
		t.Errorf("shutdown-timeout = %v", c.Global.ShutdownTimeout)
	}
	if g := c.Global; g.Stats != "127.0.0.1:9100" || g.StatsListen != (Address{Host: "127.0.0.1", Port: 9100, Family: 4}) {
		t.Errorf("stats = %q, %+v", g.Stats, g.StatsListen)
	}
	b1, b2 := c.Backend("b1"), c.Backend("b2")
	if b1.Address != "[::1]:80" || b1.ConnectTimeout != 250*time.Millisecond || b1.ResponseTimeout != 0 || b1.BodyTimeout != 0 {
		t.Errorf("b1 = %+v", b1)
	}
	if b2.Address != "localhost:81" {
		t.Errorf("b2 = %+v", b2)
	}
	if h := c.HostFor("example.org:9000"); h == nil {
		t.Errorf("host names of a section are lower-cased")
	}
}

func TestQueueSize(t *testing.T) {
	t.Parallel()
	c, err := parse(t, "[frontend a]\nbind = :9000\nbackends = b c\n[backend b]\nconnect = a:1\nmax-connections = 2\n[backend c]\nconnect = a:2\nmax-connections = 2\nqueue-size = 0\n")
	if err != nil {
		t.Fatal(err)
	}
	if b, c := c.Backends[0].QueueSize, c.Backends[1].QueueSize; b != DefaultQueueSize || c != 0 {
		t.Errorf("queue-size: b %d, c %d; want %d (default) and 0 (no limit)", b, c, DefaultQueueSize)
	}
	for _, tc := range []struct{ name, src, want string }{
		{"negative", "[frontend a]\nbind = :9000\nbackends = b\n[backend b]\nconnect = a:1\nmax-connections = 2\nqueue-size = -1\n", `test.ini:7: [backend b] queue-size: "-1" is not a whole number`},
		{"without max-connections", "[frontend a]\nbind = :9000\nbackends = b\n[backend b]\nconnect = a:1\nqueue-size = 10\n", `[backend b] queue-size: set but max-connections is not`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parse(t, tc.src)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cert, key := testcert.Files(t, dir, "localhost")
	other, _ := testcert.Files(t, filepath.Join(dir, "other"), "other")
	expired, expiredKey := testcert.Make(t, filepath.Join(dir, "expired"), testcert.Options{Names: []string{"old"}, NotAfter: time.Now().Add(-time.Hour)})
	const backend = "\n[backend b]\nconnect = 127.0.0.1:8000\n"
	tests := []struct {
		name string
		src  string
		want []string // each must appear in the one error line, in order
	}{
		{"missing bind", "[frontend f]\nbackends = b\n" + backend, []string{"test.ini:1: [frontend f] bind: missing"}},
		{"bad bind", "[frontend f]\nbind = 9000\nbackends = b\n" + backend, []string{"[frontend f] bind:", "not host:port"}},
		{"bad bind port", "[frontend f]\nbind = :http\nbackends = b\n" + backend, []string{"[frontend f] bind:", "not a number"}},
		{"no backends nor hosts", "[frontend f]\nbind = :9000\n", []string{"[frontend f] backends:", "neither backends nor hosts"}},
		{"undefined backend", "[frontend f]\nbind = :9000\nbackends = c\n" + backend, []string{"[frontend f] backends:", `unknown backend "c"`}},
		{"undefined backend hint", "[frontend f]\nbind = :9000\nbackends = app1\n[backend app2]\nconnect = x\n", []string{`unknown backend "app1" (did you mean "app2"?)`}},
		{"undefined host", "[frontend f]\nbind = :9000\nhosts = a.com\n" + backend, []string{"[frontend f] hosts:", `no [host] section lists "a.com"`}},
		{"host without backends", "[frontend f]\nbind = :9000\nhosts = a.com\n[host a.com]\n", []string{"[host a.com] backends: missing"}},
		{"host unknown backend", "[frontend f]\nbind = :9000\nhosts = a.com\n[host a.com]\nbackends = x\n", []string{"[host a.com] backends:", `unknown backend "x"`}},
		{"unknown section", "[frontnd f]\nbind = :9000\n", []string{"[frontnd f]:", `unknown section type "frontnd"`, `did you mean "frontend"?`}},
		{"unknown key", "[frontend f]\nbind = :9000\nbakends = b\n" + backend, []string{"[frontend f] bakends: unknown key", `did you mean "backends"?`}},
		{"key of other section", "[frontend f]\nbind = :9000\nbackends = b\nconnect-timeout = 1s\n" + backend, []string{"[frontend f] connect-timeout: unknown key", "belongs in a [backend] section"}},
		{"key outside section", "bind = 1\n[frontend f]\nbind = :9000\nbackends = b\n" + backend, []string{"test.ini:1: bind: key outside any section"}},
		{"bad duration", backend + "connect-timeout = 5\n[frontend f]\nbind = :1\nbackends = b\n", []string{"[backend b] connect-timeout:", `"5" is not a duration`}},
		{"bad body-timeout", backend + "body-timeout = -5s\n[frontend f]\nbind = :1\nbackends = b\n", []string{"[backend b] body-timeout:", "negative"}},
		{"negative duration", "[global]\nidle-timeout = -1s\n[frontend f]\nbind = :1\nbackends = b\n" + backend, []string{"[global] idle-timeout:", "negative"}},
		{"negative tunnel-timeout", "[frontend f]\nbind = :1\nbackends = b\ntunnel-timeout = -1m\n" + backend, []string{"[frontend f] tunnel-timeout:", "negative"}},
		{"bad tunnel-timeout", "[global]\ntunnel-timeout = forever\n[frontend f]\nbind = :1\nbackends = b\n" + backend, []string{"[global] tunnel-timeout:", `"forever" is not a duration`}},
		{"bad bool", "[frontend f]\nbind = :1\nbackends = b\nhttps = maybe\n" + backend, []string{"[frontend f] https:", "not a boolean"}},
		{"duplicate bind", "[frontend f]\nbind = :9000\nbackends = b\n[frontend g]\nbind = 127.0.0.1:9000\nbackends = b\n" + backend, []string{"[frontend g] bind:", `"127.0.0.1:9000" conflicts with [frontend f]'s ":9000"`}},
		{"star and specific", "[frontend f]\nbind = *:9000\nbackends = b\n[frontend g]\nbind = [::1]:9000\nbackends = b\n" + backend, []string{"[frontend g] bind:", `conflicts with [frontend f]'s "*:9000"`}},
		{"bad stats", "[global]\nstats = 9100\n[frontend f]\nbind = :9000\nbackends = b\n" + backend, []string{"[global] stats:", `"9100"`, "not host:port"}},
		{"empty stats", "[global]\nstats =\n[frontend f]\nbind = :9000\nbackends = b\n" + backend, []string{"[global] stats: empty"}},
		{"stats on a frontend's bind", "[frontend f]\nbind = :9100\nbackends = b\n[global]\nstats = 127.0.0.1:9100\n" + backend, []string{"[frontend f] bind:", `conflicts with [global]'s stats = "127.0.0.1:9100"`}},
		{"bad bind host", "[frontend f]\nbind = *.example.com:9000\nbackends = b\n" + backend, []string{"[frontend f] bind:", "neither an IP address nor a host name"}},
		{"duplicate section", "[frontend f]\nbind = :9000\nbackends = b\n[frontend f]\nbind = :9001\nbackends = b\n" + backend, []string{"test.ini:4: [frontend f]: section defined twice (first at line 1)"}},
		{"duplicate backend", backend + backend + "[frontend f]\nbind = :9000\nbackends = b\n", []string{"test.ini:5: [backend b]: section defined twice (first at line 2)"}},
		{"duplicate key", "[frontend f]\nbind = :9000\nbind = :9001\nbackends = b\n" + backend, []string{"test.ini:3: [frontend f] bind: key set 2 times (lines 2 and 3); set it once"}},
		{"host listed twice", "[frontend f]\nbind = :9000\nhosts = a.com\n[host a.com]\nbackends = b\n[host b.com A.com]\nbackends = b\n" + backend, []string{"[host b.com A.com]:", `"a.com" is already listed`}},
		{"missing connect", "[frontend f]\nbind = :9000\nbackends = b\n[backend b]\n", []string{"[backend b] connect: missing"}},
		{"connect with scheme", "[frontend f]\nbind = :9000\nbackends = b\n[backend b]\nconnect = ftp://x\n", []string{"[backend b] connect:", "no other scheme"}},
		{"connect bad port", "[frontend f]\nbind = :9000\nbackends = b\n[backend b]\nconnect = x:99999\n", []string{"[backend b] connect:", "not a number"}},
		{"frontend without name", "[frontend]\nbind = :9000\n", []string{"[frontend]:", "exactly one name"}},
		{"frontend name not UTF-8", "[frontend f\xff]\nbind = :9000\nbackends = b\n" + backend, []string{"test.ini:1: byte 0xff is not UTF-8: save the file as UTF-8"}},
		{"backend name not UTF-8", "[frontend f]\nbind = :9000\nbackends = b\xc3\n[backend b\xc3]\nconnect = x\n", []string{"test.ini:3: byte 0xc3 is not UTF-8"}},
		{"host name not UTF-8", "[frontend f]\nbind = :9000\nhosts = a\xe9.com\n[host a\xe9.com]\nbackends = b\n" + backend, []string{"test.ini:3: byte 0xe9 is not UTF-8"}},
		{"backend two names", "[backend a b]\nconnect = x\n", []string{"[backend a b]:", "exactly one name"}},
		{"https without files", "[frontend f]\nbind = :9000\nbackends = b\nhttps = true\n" + backend, []string{"[frontend f] certfile: missing"}},
		{"https missing key", "[frontend f]\nbind = :9000\nbackends = b\nhttps = true\ncertfile = " + cert + "\n" + backend, []string{"[frontend f] keyfile: missing"}},
		{"https unreadable file", "[frontend f]\nbind = :9000\nbackends = b\nhttps = true\ncertfile = /nonexistent/c.pem\nkeyfile = " + key + "\n" + backend, []string{"[frontend f] certfile: cannot read /nonexistent/c.pem"}},
		{"https mismatched pair", "[frontend f]\nbind = :9000\nbackends = b\nhttps = true\ncertfile = " + other + "\nkeyfile = " + key + "\n" + backend, []string{"[frontend f] certfile: " + other}},
		{"cert without https", "[frontend f]\nbind = :9000\nbackends = b\ncertfile = " + cert + "\n" + backend, []string{"[frontend f] certfile: set but https is not true"}},
		{"bad global accesslog-format", "[global]\naccesslog-format = combind\n[frontend f]\nbind = :9000\nbackends = b\n" + backend,
			[]string{`[global] accesslog-format: "combind" is not hipster, combined or json (did you mean "combined"?)`}},
		{"bad accesslog-format", "[frontend f]\nbind = :9000\nbackends = b\naccesslog-format = xml\n" + backend,
			[]string{`[frontend f] accesslog-format: "xml" is not hipster, combined or json`}},
		{"bad balance", "[frontend f]\nbind = :9000\nbackends = b\nbalance = leastcon\n" + backend, []string{"[frontend f] balance:", `"leastcon" is not roundrobin, leastconn or source (did you mean "leastconn"?)`}},
		{"bad host balance", "[frontend f]\nbind = :9000\nhosts = a\n[host a]\nbackends = b\nbalance = random\n" + backend, []string{"[host a] balance:", "not roundrobin"}},
		{"bad weight", "[frontend f]\nbind = :9000\nbackends = b\n" + backend + "weight = 0\n", []string{"[backend b] weight:", "from 1 to 1000"}},
		{"bad health-check", "[frontend f]\nbind = :9000\nbackends = b\n" + backend + "health-check = health\n", []string{"[backend b] health-check:", "neither a path"}},
		{"bad health-rise", "[frontend f]\nbind = :9000\nbackends = b\n" + backend + "health-check = tcp\nhealth-rise = two\n", []string{"[backend b] health-rise:", "whole number"}},
		{"zero health-interval", "[frontend f]\nbind = :9000\nbackends = b\n" + backend + "health-check = tcp\nhealth-interval = 0s\n", []string{"[backend b] health-interval: must be more than 0"}},
		{"health host without path", "[frontend f]\nbind = :9000\nbackends = b\n" + backend + "health-check = tcp\nhealth-check-host = x\n", []string{"[backend b] health-check-host: set without"}},
		{"bad tls-min-version", "[frontend f]\nbind = :9000\nbackends = b\nhttps = true\ncertfile = " + cert + "\nkeyfile = " + key + "\ntls-min-version = 1.1\n" + backend, []string{"[frontend f] tls-min-version:", `"1.1" is not 1.2 or 1.3`}},
		{"http2 without https", "[frontend f]\nbind = :9000\nbackends = b\nhttp2 = false\n" + backend, []string{"[frontend f] http2: set but https is not true"}},
		{"redirect on https", "[frontend f]\nbind = :9000\nhttps = true\ncertfile = " + cert + "\nkeyfile = " + key + "\nredirect-https = true\n", []string{"[frontend f] redirect-https:", "redirect to itself"}},
		{"expired certificate", "[frontend f]\nbind = :9000\nbackends = b\nhttps = true\ncertfile = " + expired + "\nkeyfile = " + expiredKey + "\n" + backend, []string{"[frontend f] certfile: " + expired + " expired on"}},
		{"host cert without key", "[frontend f]\nbind = :9000\nhosts = a\n[host a]\nbackends = b\ncertfile = " + cert + "\n" + backend, []string{"[host a] keyfile: missing"}},
		{"ca-file without https", "[frontend f]\nbind = :9000\nbackends = b\n" + backend + "ca-file = " + cert + "\n", []string{"[backend b] ca-file: set but connect is not https://"}},
		{"unreadable ca-file", "[frontend f]\nbind = :9000\nbackends = b\n[backend b]\nconnect = https://x\nca-file = /nonexistent/ca.pem\n", []string{"[backend b] ca-file: cannot read /nonexistent/ca.pem"}},
		{"global with name", "[global x]\n[frontend f]\nbind = :9000\nbackends = b\n" + backend, []string{"[global x]: [global] takes no name"}},
		{"not ini", "[frontend f\n", []string{`test.ini:1: not a valid INI file: unclosed section header "[frontend f"`}},
		{"bad mode", "[frontend f]\nbind = :9000\nbackends = b\nmode = udp\n" + backend, []string{"[frontend f] mode:", `"udp" is not http or tcp`}},
		{"tcp with xff", "[frontend f]\nbind = :9000\nbackends = b\nmode = tcp\nadd-x-forwarded-for = true\n" + backend, []string{"[frontend f] add-x-forwarded-for: makes no sense on a tcp frontend"}},
		{"tcp with http2", "[frontend f]\nbind = :9000\nbackends = b\nmode = tcp\nhttp2 = false\nhttps = true\ncertfile = " + cert + "\nkeyfile = " + key + "\n" + backend, []string{"[frontend f] http2: makes no sense on a tcp frontend"}},
		{"tcp with redirect", "[frontend f]\nbind = :9000\nbackends = b\nmode = tcp\nredirect-https = true\n" + backend, []string{"[frontend f] redirect-https: makes no sense on a tcp frontend"}},
		{"tcp without backends", "[frontend f]\nbind = :9000\nhosts = a\nmode = tcp\n[host a]\nbackends = b\n" + backend, []string{"[frontend f] backends: missing: a tcp frontend needs backends"}},
		{"accept-proxy-from alone", "[frontend f]\nbind = :9000\nbackends = b\naccept-proxy-from = 10.0.0.0/8\n" + backend, []string{"[frontend f] accept-proxy-from: set but accept-proxy is not true"}},
		{"bad accept-proxy-from", "[frontend f]\nbind = :9000\nbackends = b\naccept-proxy = true\naccept-proxy-from = 10.0.0.0/8 10.0.0/8\n" + backend, []string{"[frontend f] accept-proxy-from:", `"10.0.0/8" is neither`}},
		{"bad send-proxy", "[frontend f]\nbind = :9000\nbackends = b\n" + backend + "send-proxy = v3\n", []string{"[backend b] send-proxy:", `"v3" is not v1 or v2`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, err := parse(t, tc.src)
			if err == nil {
				t.Fatalf("no error; config %+v", c)
			}
			line := firstMatching(err.Error(), tc.want[0])
			if line == "" {
				t.Fatalf("no error line contains %q:\n%v", tc.want[0], err)
			}
			rest := line
			for _, w := range tc.want {
				i := strings.Index(rest, w)
				if i < 0 {
					t.Fatalf("error line %q lacks %q", line, w)
				}
				rest = rest[i+len(w):]
			}
		})
	}
}

func firstMatching(text, sub string) string {
	for _, line := range strings.Split(text, "\n") {
		if strings.Contains(line, sub) {
			return line
		}
	}
	return ""
}

func TestErrorsAreCollected(t *testing.T) {
	t.Parallel()
	_, err := parse(t, `
[frontend a]
backends = nope
[frontend b]
bind = :1
hosts = x
[backend c]
connect-timeout = soon
`)
	if err == nil {
		t.Fatal("no error")
	}
	errs := List(err)
	if len(errs) != 5 {
		t.Fatalf("want 5 errors (a bind, a backends, b hosts, c connect, c connect-timeout), got %d:\n%v", len(errs), err)
	}
}

func TestBalancingAndHealth(t *testing.T) {
	t.Parallel()
	c, err := parse(t, `
[frontend f]
bind = :9000
backends = a b
hosts = x
balance = LeastConn
[host x]
backends = a
balance = source
[backend a]
connect = 127.0.0.1:1
weight = 3
health-check = /healthz
health-check-host = app.internal
health-timeout = 500ms
health-interval = 1s
health-rise = 1
health-fall = 5
[backend b]
connect = 127.0.0.1:2
health-check = tcp
`)
	if err != nil {
		t.Fatal(err)
	}
	if c.Frontends[0].Balance != LeastConn || c.Hosts[0].Balance != Source {
		t.Errorf("balance: %q %q", c.Frontends[0].Balance, c.Hosts[0].Balance)
	}
	a, b := c.Backend("a"), c.Backend("b")
	want := HealthCheck{Kind: HealthHTTP, Path: "/healthz", Host: "app.internal", Timeout: 500 * time.Millisecond, Interval: time.Second, Rise: 1, Fall: 5}
	if a.Weight != 3 || a.Health != want {
		t.Errorf("a = %+v", a)
	}
	if b.Weight != 1 || b.Health.Kind != HealthTCP || b.Health.Rise != 2 || b.Health.Fall != 3 {
		t.Errorf("b = %+v", b)
	}
}

func TestTLSSettings(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cert, key := testcert.Files(t, dir, "localhost")
	soon, soonKey := testcert.Make(t, filepath.Join(dir, "soon"), testcert.Options{Names: []string{"*.example.com"}, NotAfter: time.Now().Add(3 * 24 * time.Hour)})
	c, err := parse(t, `
[frontend s]
bind = :443
https = true
certfile = `+cert+`
keyfile = `+key+`
hosts = *.example.com
tls-min-version = 1.3
http2 = false
[host *.example.com]
backends = b
certfile = `+soon+`
keyfile = `+soonKey+`
[frontend r]
bind = :80
redirect-https = true
redirect-https-port = 8443
[backend b]
connect = https://app.internal
ca-file = `+cert+`
tls-server-name = app
[backend c]
connect = http://10.0.0.1:8080/
[backend d]
connect = https://[::1]:8443
tls-skip-verify = true
`)
	if err != nil {
		t.Fatal(err)
	}
	s, r := c.Frontends[0], c.Frontends[1]
	if s.TLSMinVersion != "1.3" || s.HTTP2 || r.RedirectHTTPS != true || r.RedirectHTTPSPort != 8443 {
		t.Errorf("frontends: %+v %+v", s, r)
	}
	if h := c.HostFor("*.example.com"); h == nil || h.CertFile != soon || h.KeyFile != soonKey {
		t.Errorf("host: %+v", h)
	}
	b, cc, d := c.Backend("b"), c.Backend("c"), c.Backend("d")
	if !b.TLS || b.Address != "app.internal:443" || b.CAFile != cert || b.TLSServerName != "app" {
		t.Errorf("b = %+v", b)
	}
	if cc.TLS || cc.Address != "10.0.0.1:8080" {
		t.Errorf("c = %+v", cc)
	}
	if !d.TLS || d.Address != "[::1]:8443" || !d.TLSSkipVerify {
		t.Errorf("d = %+v", d)
	}
	warnings := strings.Join(c.Warnings, "\n")
	for _, want := range []string{"[host *.example.com] certfile: " + soon + " expires on", "[backend d] tls-skip-verify: the backend's certificate is not verified"} {
		if !strings.Contains(warnings, want) {
			t.Errorf("warnings lack %q:\n%s", want, warnings)
		}
	}
}

func TestParseBind(t *testing.T) {
	t.Parallel()
	tests := []struct {
		bind      string
		dualStack bool
		want      Address
		network   string
		listen    string
	}{
		{"*:9200", true, Address{Port: 9200}, "tcp", ":9200"},
		{":9200", false, Address{Port: 9200}, "tcp", ":9200"},
		{"0.0.0.0:80", true, Address{Port: 80, Family: 4}, "tcp4", "0.0.0.0:80"},
		{"[::]:80", true, Address{Port: 80}, "tcp", ":80"},
		{"[::]:80", false, Address{Port: 80, Family: 6}, "tcp6", "[::]:80"},
		{"[::ffff:0.0.0.0]:80", false, Address{Port: 80, Family: 4}, "tcp4", "0.0.0.0:80"},
		{"127.0.0.1:9200", true, Address{Host: "127.0.0.1", Port: 9200, Family: 4}, "tcp4", "127.0.0.1:9200"},
		{"[::ffff:127.0.0.1]:9200", true, Address{Host: "127.0.0.1", Port: 9200, Family: 4}, "tcp4", "127.0.0.1:9200"},
		{"[0:0::1]:9200", true, Address{Host: "::1", Port: 9200, Family: 6}, "tcp6", "[::1]:9200"},
		{"LocalHost:0", true, Address{Host: "localhost"}, "tcp", "localhost:0"},
	}
	for _, tc := range tests {
		a, err := parseBind(tc.bind, tc.dualStack)
		if err != nil || a != tc.want || a.Network() != tc.network || a.String() != tc.listen {
			t.Errorf("parseBind(%q, dual-stack %v) = %+v (%s %s), %v; want %+v (%s %s)", tc.bind, tc.dualStack, a, a.Network(), a, err, tc.want, tc.network, tc.listen)
		}
	}
}

func TestBindConflicts(t *testing.T) {
	t.Parallel()
	tests := []struct {
		a, b      string
		dualStack bool
		conflict  bool
	}{
		{"127.0.0.1:9200", "127.0.0.2:9200", true, false},
		{"127.0.0.1:9200", "[::1]:9200", true, false},
		{"127.0.0.1:9200", "127.0.0.1:9201", true, false},
		{"127.0.0.1:9200", "127.0.0.1:9200", true, true},
		{"LOCALHOST:9200", "localhost:9200", true, true},
		{"0.0.0.0:9200", "127.0.0.1:9200", false, true},
		{"0.0.0.0:9200", "[::1]:9200", true, false},
		{"0.0.0.0:9200", "[::]:9200", true, true},
		{"0.0.0.0:9200", "[::]:9200", false, false},
		{"[::]:9200", "127.0.0.1:9200", true, true},
		{"[::]:9200", "127.0.0.1:9200", false, false},
		{"[::]:9200", "[::1]:9200", false, true},
		{"*:9200", "127.0.0.1:9200", false, true},
		{"*:9200", "[::1]:9200", false, true},
		{":9200", "0.0.0.0:9200", false, true},
		{"*:9200", ":9200", false, true},
		{"0.0.0.0:9200", "localhost:9200", false, true},
		{"0.0.0.0:0", "0.0.0.0:0", true, false},
	}
	for _, tc := range tests {
		a, errA := parseBind(tc.a, tc.dualStack)
		b, errB := parseBind(tc.b, tc.dualStack)
		if errA != nil || errB != nil {
			t.Fatalf("%q, %q: %v, %v", tc.a, tc.b, errA, errB)
		}
		if got := a.Conflicts(b); got != tc.conflict || b.Conflicts(a) != got {
			t.Errorf("%q and %q (dual-stack %v): conflict %v, want %v", tc.a, tc.b, tc.dualStack, got, tc.conflict)
		}
	}
	// What the issue reported: different addresses on one port pass.
	if _, err := parse(t, "[frontend a]\nbind = 127.0.0.1:9200\nbackends = b\n[frontend b]\nbind = 127.0.0.2:9200\nbackends = b\n[frontend c]\nbind = [::1]:9200\nbackends = b\n[backend b]\nconnect = x\n"); err != nil {
		t.Error(err)
	}
}

func TestBindCovers(t *testing.T) {
	t.Parallel()
	tests := []struct {
		a, b   string
		covers bool
	}{
		{"*:80", "127.0.0.1:80", true},
		{"*:80", "0.0.0.0:80", true},
		{"*:80", "localhost:80", true},
		{"0.0.0.0:80", "127.0.0.1:80", true},
		{"0.0.0.0:80", "[::1]:80", false},
		{"0.0.0.0:80", "localhost:80", false},
		{"0.0.0.0:80", "*:80", false},
		{"0.0.0.0:80", "127.0.0.1:81", false},
		{"127.0.0.1:80", "0.0.0.0:80", false},
		{"*:0", "127.0.0.1:0", false},
	}
	for _, tc := range tests {
		a, _ := parseBind(tc.a, true)
		b, _ := parseBind(tc.b, true)
		if got := a.Covers(b); got != tc.covers {
			t.Errorf("%q covers %q: %v, want %v", tc.a, tc.b, got, tc.covers)
		}
	}
}

func TestLoadChecksAccessLogs(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	notDir := filepath.Join(dir, "file")
	if err := os.WriteFile(notDir, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	const rest = "backends = b\n[backend b]\nconnect = x\n"
	tests := []struct {
		name, global, own string
		want              string // "" for no error
	}{
		{"new file", filepath.Join(dir, "new.log"), "", ""},
		{"existing file", notDir, "", ""},
		{"missing directory", filepath.Join(dir, "none", "a.log"), "", "[global] accesslog: cannot write " + filepath.Join(dir, "none", "a.log") + ": directory " + filepath.Join(dir, "none") + ": no such file or directory"},
		{"parent is a file", "", filepath.Join(notDir, "a.log"), "[frontend g] accesslog: cannot write " + filepath.Join(notDir, "a.log") + ": not a directory"},
		{"a directory", dir, "", "[global] accesslog: cannot write " + dir + ": it is a directory"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			src := "[frontend f]\nbind = :0\n" + rest
			if tc.own != "" {
				src += "[frontend g]\nbind = :0\naccesslog = " + tc.own + "\n" + rest[:len("backends = b\n")]
			}
			if tc.global != "" {
				src = "[global]\naccesslog = " + tc.global + "\n" + src
			}
			path := filepath.Join(t.TempDir(), "c.ini")
			if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := Load(path)
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
			if _, err := Parse(path, []byte(src)); err != nil {
				t.Errorf("Parse, which checks no file it writes, failed: %v", err)
			}
		})
	}
	if _, err := os.Stat(filepath.Join(dir, "new.log")); err == nil {
		t.Error("Load created the access log")
	}
}

func TestHTTPSValid(t *testing.T) {
	t.Parallel()
	cert, key := testcert.Files(t, t.TempDir(), "localhost")
	c, err := parse(t, "[frontend f]\nbind = :9443\nbackends = b\nhttps = true\ncertfile = "+cert+"\nkeyfile = "+key+"\n[backend b]\nconnect = x\n")
	if err != nil {
		t.Fatal(err)
	}
	if fe := c.Frontends[0]; !fe.HTTPS || fe.CertFile != cert || fe.KeyFile != key {
		t.Errorf("frontend = %+v", fe)
	}
}

func TestTCPAndProxyProtocol(t *testing.T) {
	t.Parallel()
	cert, key := testcert.Files(t, t.TempDir(), "localhost")
	c, err := parse(t, `
[frontend db]
bind = :5432
mode = TCP
backends = a b
hosts = db.example
https = true
certfile = `+cert+`
keyfile = `+key+`
accept-proxy = true
accept-proxy-from = 10.0.0.0/8 192.0.2.7 2001:db8::/32
[frontend web]
bind = :80
backends = a
[host db.example]
backends = a
[backend a]
connect = 10.0.0.1:5432
send-proxy = V2
[backend b]
connect = 10.0.0.2:5432
send-proxy = v1
`)
	if err != nil {
		t.Fatal(err)
	}
	db, web := c.Frontends[0], c.Frontends[1]
	if db.Mode != ModeTCP || !db.AcceptProxy || web.Mode != ModeHTTP || web.AcceptProxy {
		t.Errorf("db %+v\nweb %+v", db, web)
	}
	var from []string
	for _, p := range db.AcceptProxyFrom {
		from = append(from, p.String())
	}
	if want := []string{"10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"}; !reflect.DeepEqual(from, want) {
		t.Errorf("accept-proxy-from %v, want %v", from, want)
	}
	if c.Backends[0].SendProxy != 2 || c.Backends[1].SendProxy != 1 {
		t.Errorf("send-proxy %d %d", c.Backends[0].SendProxy, c.Backends[1].SendProxy)
	}
	if w := firstMatching(strings.Join(c.Warnings, "\n"), "hosts:"); !strings.Contains(w, "[frontend db] hosts: on a tcp frontend only the SNI certificates") {
		t.Errorf("warnings %q", c.Warnings)
	}
}

func TestLoadMissingFile(t *testing.T) {
	t.Parallel()
	_, err := Load(filepath.Join(t.TempDir(), "none.ini"))
	if err == nil || !strings.Contains(err.Error(), "none.ini") {
		t.Fatalf("err = %v", err)
	}
}

func TestLoadShippedExample(t *testing.T) {
	t.Parallel()
	if _, err := Load("../../configs/hipster.ini"); err != nil {
		t.Fatal(err)
	}
}

func FuzzParse(f *testing.F) {
	for _, seed := range []string{
		"[frontend f]\nbind = 0.0.0.0:9000\nbackends = b b\nhosts = localhost:9000\n[host localhost:9000 127.0.0.1:9000]\nbackends = b\n[backend b]\nconnect = 127.0.0.1:8000\n",
		"[global]\naccesslog = /tmp/x\nread-header-timeout = 1s\n[frontend f]\nbind = [::]:443\nhttps = true\nkeyfile = k\ncertfile = c\n",
		"[backend b]\nconnect = [::1]\nconnect-timeout = 5s\nresponse-timeout = 1m\nbody-timeout = 10s\n",
		"[frontnd f]\nbakends = x\n[frontend f]\n[frontend f]\n",
		"; c\n[frontend f] # c\nbackends = a \\\n b\nx = \"\"\"m\n\"\"\"\n`k` = 1\n\"q\": 2\n- = 3\n",
		"[frontend f]\nbind = :80\nredirect-https = true\nbalance = source\n[host *.a.b]\nbackends = b\nbalance = leastconn\n[backend b]\nconnect = https://x\nweight = 3\nhealth-check = /h\nhealth-rise = 1\ntls-skip-verify = yes\n",
	} {
		f.Add([]byte(seed))
	}
	if data, err := os.ReadFile("../../configs/hipster.ini"); err == nil {
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse("fuzz.ini", data)
		if (c == nil) == (err == nil) {
			t.Fatalf("config %v and error %v", c, err)
		}
		if err != nil && strings.ContainsFunc(err.Error(), func(r rune) bool { return unicode.IsControl(r) && r != '\n' && r != '\t' }) {
			t.Fatalf("a control character reaches the terminal: %q", err)
		}
		if binary, badLine, _ := textProblem(data); binary == "" && badLine == 0 {
			checkIndexAgrees(t, data)
		}
	})
}

func TestClientTimeout(t *testing.T) {
	t.Parallel()
	c, err := parse(t, `
[global]
client-timeout = 30s

[frontend a]
bind = :9000
backends = b
client-timeout = 0

[frontend b]
bind = :9001
backends = b

[backend b]
connect = a:1
`)
	if err != nil {
		t.Fatal(err)
	}
	if a, b := c.Frontends[0].ClientTimeout, c.Frontends[1].ClientTimeout; a != 0 || b != 30*time.Second {
		t.Errorf("client-timeout: a %v (0: none), b %v (from [global])", a, b)
	}
	c, err = parse(t, "[frontend a]\nbind = :9000\nbackends = b\n[backend b]\nconnect = a:1\n")
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Frontends[0].ClientTimeout; got != DefaultClientTimeout {
		t.Errorf("default client-timeout = %v, want %v", got, DefaultClientTimeout)
	}
}

func TestReadHeaderTimeoutZeroWarns(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, src, want string
	}{
		{"frontend", "[frontend a]\nbind = :9000\nbackends = b\nread-header-timeout = 0\n", "[frontend a] read-header-timeout: 0 leaves no limit"},
		{"global", "[global]\nread-header-timeout = 0\n[frontend a]\nbind = :9000\nbackends = b\n", "[global] read-header-timeout: 0 leaves [frontend a] no limit"},
		{"overridden", "[global]\nread-header-timeout = 0\n[frontend a]\nbind = :9000\nbackends = b\nread-header-timeout = 5s\n", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := parse(t, tc.src+"[backend b]\nconnect = a:1\n")
			if err != nil {
				t.Fatal(err)
			}
			got := strings.Join(c.Warnings, "\n")
			if tc.want == "" && got != "" || !strings.Contains(got, tc.want) {
				t.Errorf("warnings %q, want one containing %q", got, tc.want)
			}
		})
	}
}

func TestMaxConnections(t *testing.T) {
	t.Parallel()
	c, err := parse(t, `
[global]
max-connections = 5000

[frontend a]
bind = :9000
backends = b
max-connections = 100

[frontend b]
bind = :9001
backends = b

[backend b]
connect = a:1
`)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Global.MaxConnections; got != 5000 {
		t.Errorf("[global] max-connections = %d, want 5000", got)
	}
	// A frontend's limit is its own share, not the global total: it does
	// not default to [global]'s.
	if a, b := c.Frontends[0].MaxConnections, c.Frontends[1].MaxConnections; a != 100 || b != 0 {
		t.Errorf("[frontend] max-connections: a %d, b %d; want 100 and 0", a, b)
	}
	for _, tc := range []struct{ name, src, want string }{
		{"negative", "[global]\nmax-connections = -1\n", `[global] max-connections: "-1" is not a whole number`},
		{"fraction", "[frontend a]\nbind = :9000\nbackends = b\nmax-connections = 1.5\n[backend b]\nconnect = a:1\n", `[frontend a] max-connections: "1.5" is not a whole number`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parse(t, tc.src)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}
