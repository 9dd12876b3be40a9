// Package config turns a hipsterd INI file into plain, validated structs.
//
// It is pure: it reads the file (and the TLS files it names, to check them) and
// returns data. Load also checks, without writing, that the access logs could
// be opened; and binds follow how the system binds [::], read once from
// /proc/sys/net/ipv6/bindv6only. Runtime objects are built from the result elsewhere, so a
// reload can parse a new Config, build new objects and swap them in.
//
// Every problem is collected, not only the first, and each names the file, the
// line, the section and the key, so an operator sees the whole list at once.
package config

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Defaults. They live here, next to the keys they belong to; the key tables
// of docs/configuration.md and docs/hipsterd.ini.5 repeat them.
const (
	DefaultConnectTimeout    = 5 * time.Second
	DefaultResponseTimeout   = 60 * time.Second
	DefaultBodyTimeout       = 60 * time.Second
	DefaultReadHeaderTimeout = 10 * time.Second
	DefaultIdleTimeout       = 120 * time.Second
	DefaultShutdownTimeout   = 30 * time.Second
	DefaultTunnelTimeout     = time.Hour
	DefaultClientTimeout     = 60 * time.Second
	DefaultHealthTimeout     = 2 * time.Second
	DefaultHealthInterval    = 2 * time.Second
	DefaultHealthRise        = 2
	DefaultHealthFall        = 3
	DefaultWeight            = 1
	DefaultQueueTimeout      = 5 * time.Second
	// DefaultQueueSize bounds a backend's queue: each queued request holds
	// about 23 KiB, so 1000 hold about 23 MiB per backend, and a queue that
	// long rarely drains within queue-timeout anyway.
	DefaultQueueSize         = 1000
	DefaultBalance           = RoundRobin
	DefaultTLSMinVersion     = "1.2"
	DefaultRedirectHTTPSPort = 443
	DefaultAccessLogFormat   = LogHipster
	DefaultMode              = ModeHTTP
	// MaxMaxConnections bounds max-connections: more than any process's
	// file descriptors (Linux's fs.nr_open is at most 2^30).
	MaxMaxConnections = 1 << 30
	// CertExpiryWarning is how close to its end a certificate is warned about.
	CertExpiryWarning = 14 * 24 * time.Hour
	// DefaultACMECA is Let's Encrypt's production directory.
	DefaultACMECA = "https://acme-v02.api.letsencrypt.org/directory"
	// DefaultACMEStorage is acme-storage outside systemd (no
	// $STATE_DIRECTORY): the unit's StateDirectory=hipsterd, plus /acme.
	DefaultACMEStorage = "/var/lib/hipsterd/acme"
)

// Balance names how a pool picks a backend.
type Balance string

// The balancing algorithms.
const (
	RoundRobin Balance = "roundrobin" // strict rotation (drunken-hipster's)
	LeastConn  Balance = "leastconn"  // fewest requests and tunnels in flight
	Source     Balance = "source"     // consistent hashing of the client IP
)

// LogFormat names the layout of access log lines.
type LogFormat string

// The access log formats.
const (
	LogHipster  LogFormat = "hipster"  // drunken-hipster's line
	LogCombined LogFormat = "combined" // NCSA combined, as nginx and Apache write it
	LogJSON     LogFormat = "json"     // one JSON object per line
)

// Mode is what a frontend speaks to its clients.
type Mode string

// The frontend modes.
const (
	ModeHTTP Mode = "http" // an HTTP reverse proxy (drunken-hipster's)
	ModeTCP  Mode = "tcp"  // bytes copied both ways to a backend, as HAProxy's mode tcp
)

// Config is one parsed and validated configuration file.
type Config struct {
	File string
	// Warnings are problems that do not stop hipsterd (a certificate that
	// expires soon, backend certificates not verified): log them.
	Warnings []string
	// Files holds the certificate, key and CA files the configuration
	// names, by path, as read when it was checked. hipsterd builds its TLS
	// from these bytes rather than reading the files again: what was
	// checked is what serves, and each file is read once per load.
	Files     map[string][]byte
	Global    Global
	Frontends []Frontend // in file order
	Hosts     []Host     // in file order
	Backends  []Backend  // in file order
	Routes    []Route    // in file order
	lines     *lineIndex
}

// KeyPair is the certificate of certFile with the key of keyFile, from
// the bytes read when the configuration was checked.
func (c *Config) KeyPair(certFile, keyFile string) (tls.Certificate, error) {
	cert, ok := c.Files[certFile]
	key, ok2 := c.Files[keyFile]
	if !ok || !ok2 {
		return tls.Certificate{}, fmt.Errorf("certfile %s, keyfile %s: not read with the configuration", certFile, keyFile)
	}
	return tls.X509KeyPair(cert, key)
}

// Global holds the [global] section.
type Global struct {
	AccessLog         string // "" means no access log
	AccessLogFormat   LogFormat
	ReadHeaderTimeout time.Duration
	IdleTimeout       time.Duration
	ShutdownTimeout   time.Duration
	TunnelTimeout     time.Duration
	ClientTimeout     time.Duration
	// MaxConnections is the most client connections open at once, over
	// every frontend; zero means what the file-descriptor limit allows
	// (the server works it out).
	MaxConnections int
	// Stats is the address of the stats listener (metrics, status page,
	// health), as written; "" serves none. StatsListen is it resolved.
	Stats       string
	StatsListen Address
	// ACME is where certificates of [host] sections with acme = true come
	// from.
	ACME ACME
}

// ACME is the ACME CA and the local state of automatic certificates.
type ACME struct {
	CA     string // the directory URL
	CARoot string // PEM file of the roots of the CA's HTTPS certificate; "" for the system's
	Email  string // the account's contact; "" for none
	// Storage is the directory of the account, keys and certificates,
	// which instances that share it coordinate through.
	Storage string
}

// Frontend is one [frontend NAME] section.
type Frontend struct {
	Name   string
	Bind   string  // as written
	Listen Address // Bind resolved
	Mode   Mode
	// Backends are the backend names; a name listed twice gets twice the
	// share. A tcp frontend has no other.
	Backends []string
	// Hosts are the host names (lower case) whose [host] sections apply; on
	// a tcp frontend only for their SNI certificates.
	Hosts            []string
	AddXForwardedFor bool
	HTTPS            bool
	CertFile         string
	KeyFile          string
	// Zero means no limit.
	ReadHeaderTimeout time.Duration
	IdleTimeout       time.Duration
	// TunnelTimeout closes a WebSocket tunnel, or a tcp frontend's
	// connection, in which no byte moved either way, or whose write made no
	// progress, for that long.
	TunnelTimeout time.Duration
	// ClientTimeout is the longest the client may go without sending a
	// byte of its request body, or without taking a byte of the response.
	ClientTimeout   time.Duration
	AccessLog       string    // resolved: the frontend's own, else [global]'s, else ""
	AccessLogFormat LogFormat // resolved like AccessLog; never ""
	Balance         Balance
	TLSMinVersion   string // "1.2" or "1.3"
	HTTP2           bool   // offer h2 by ALPN (https frontends)
	// RedirectHTTPS answers every request with a 308 to the same URL on
	// https, on port RedirectHTTPSPort.
	RedirectHTTPS     bool
	RedirectHTTPSPort int
	// AcceptProxy requires every connection to open with a PROXY protocol
	// header (v1 or v2), whose source address is then the client's.
	AcceptProxy bool
	// AcceptProxyFrom, when not empty, are the only peers that may send one.
	AcceptProxyFrom []netip.Prefix
	// MaxConnections is the most client connections of this frontend open
	// at once; zero means only the global limit applies.
	MaxConnections int
	// Routes are the names of the [route] sections the frontend uses, in
	// the order given (the first listed wins a tie).
	Routes  []string
	Headers HeaderRules
}

// Address is a frontend's bind resolved: the addresses it listens on.
type Address struct {
	// Host is "" for a wildcard, else an IP address (in canonical form) or
	// a host name (lower case).
	Host string
	Port int // 0: a port the kernel picks, different every time
	// Family is 4 or 6 for a wildcard or an IP address of that family only,
	// and 0 for both: the wildcard *, or [::] where the system binds IPv6
	// wildcards dual-stack, or a host name.
	Family int
}

// Network is the network to pass to net.Listen.
func (a Address) Network() string {
	switch a.Family {
	case 4:
		return "tcp4"
	case 6:
		return "tcp6"
	}
	return "tcp"
}

// String is the address to pass to net.Listen with Network.
func (a Address) String() string {
	host := a.Host
	if host == "" {
		switch a.Family {
		case 4:
			host = "0.0.0.0"
		case 6:
			host = "::"
		}
	}
	return net.JoinHostPort(host, strconv.Itoa(a.Port))
}

// Conflicts reports whether a and b cannot both be bound: the same port and
// address, or a wildcard and an address it covers. Port 0 conflicts with
// nothing. A host name conflicts with wildcards of either family.
func (a Address) Conflicts(b Address) bool {
	if a.Port != b.Port || a.Port == 0 {
		return false
	}
	if a.Host != "" && b.Host != "" {
		return a.Host == b.Host
	}
	return a.Family == 0 || b.Family == 0 || a.Family == b.Family
}

// Covers reports whether every connection b accepts would reach a: a is a
// wildcard of b's port for b's family (a host name's family is unknown, so
// only a wildcard of both families covers it).
func (a Address) Covers(b Address) bool {
	return a.Host == "" && a.Port == b.Port && a.Port != 0 && (a.Family == 0 || a.Family == b.Family)
}

// Host is one [host NAME NAME…] section.
type Host struct {
	Names    []string // lower case; "*.example.com" matches one label in SNI
	Backends []string
	Balance  Balance
	// The certificate served, on https frontends listing this host, to
	// clients whose SNI is one of Names; "" for the frontend's own.
	CertFile string
	KeyFile  string
	Headers  HeaderRules
	// ACME gets certificates for Names from the ACME CA ([global] ACME).
	ACME bool
}

// Route is one [route NAME] section: requests whose path starts with Path,
// for one of Hosts, go to Backends or get a redirect.
type Route struct {
	Name string
	// Hosts are lower case, as a [host] section's names; none means any.
	Hosts []string
	// Path is a path prefix in normal form, matched at segment
	// boundaries.
	Path        string
	Backends    []string // empty for a redirect
	Balance     Balance
	StripPrefix bool
	// Redirect is the URL (or absolute path) the answer's Location starts
	// with, its trailing / trimmed (Location); "" for a route to Backends.
	Redirect     string
	RedirectCode int
	Headers      HeaderRules
}

// HeaderOp is what a header rule does.
type HeaderOp uint8

// The header rule operations.
const (
	HeaderSet HeaderOp = iota // replace every value with Value
	HeaderAdd                 // append Value
	HeaderDel                 // remove every value
)

// HeaderRule is one set-, add- or del-…-header line.
type HeaderRule struct {
	Op    HeaderOp
	Name  string // canonical form (textproto.CanonicalMIMEHeaderKey)
	Value string // "" for HeaderDel
}

// String writes the rule as it would stand in the file, for explanations.
func (r HeaderRule) String() string {
	switch r.Op {
	case HeaderAdd:
		return "add " + r.Name + ": " + r.Value
	case HeaderDel:
		return "del " + r.Name
	}
	return "set " + r.Name + ": " + r.Value
}

// HeaderRules are a section's header rules, each list in file order.
type HeaderRules struct {
	Request  []HeaderRule
	Response []HeaderRule
}

// Empty reports whether there is no rule.
func (h HeaderRules) Empty() bool { return len(h.Request) == 0 && len(h.Response) == 0 }

// Backend is one [backend NAME] section.
type Backend struct {
	Name    string
	Address string // host:port, port filled in
	// TLS speaks TLS to the backend (connect = https://…).
	TLS           bool
	CAFile        string // "" means the system's roots
	TLSServerName string // "" means the host of Address
	TLSSkipVerify bool
	// Zero means no limit.
	ConnectTimeout  time.Duration
	ResponseTimeout time.Duration
	// BodyTimeout is the longest the backend may go without sending a
	// byte of a response body.
	BodyTimeout time.Duration
	// Weight counts as listing the backend that many times.
	Weight int
	// MaxConnections bounds the requests and tunnels in flight to the
	// backend; more wait in its queue for up to QueueTimeout. Zero means
	// no limit.
	MaxConnections int
	QueueTimeout   time.Duration
	// QueueSize bounds the queue: a request that finds it full goes to
	// another backend of its pool, or gets 503. Zero means no limit.
	QueueSize int
	// SendProxy is the PROXY protocol version (1 or 2) whose header opens
	// every connection to the backend; 0 for none.
	SendProxy int
	Health    HealthCheck
}

// HealthCheck is a backend's active check. With Kind HealthNone only
// failures to connect (passive checks) mark the backend down.
type HealthCheck struct {
	Kind     HealthKind
	Path     string // for HealthHTTP: the path to GET
	Host     string // for HealthHTTP: the Host header; "" means the backend's address
	Timeout  time.Duration
	Interval time.Duration
	Rise     int // consecutive passes that bring a down backend up
	Fall     int // consecutive failures that take an up backend down
}

// HealthKind is the kind of active check.
type HealthKind int

// The kinds of active check.
const (
	HealthNone HealthKind = iota
	HealthHTTP            // GET Path; 2xx or 3xx passes
	HealthTCP             // a TCP connect passes
)

// Line returns the line of the file that sets key in the section called
// section, else the section's header; 0 when neither is in the file. It
// places problems found after loading, as Error.Line.
func (c *Config) Line(section, key string) int {
	if c.lines == nil {
		return 0
	}
	return lineIn(c.lines.sections[sectionKey(section)], 0, key)
}

// Backend returns the backend called name, or nil.
func (c *Config) Backend(name string) *Backend {
	for i := range c.Backends {
		if c.Backends[i].Name == name {
			return &c.Backends[i]
		}
	}
	return nil
}

// Route returns the route called name, or nil.
func (c *Config) Route(name string) *Route {
	for i := range c.Routes {
		if c.Routes[i].Name == name {
			return &c.Routes[i]
		}
	}
	return nil
}

// HostFor returns the [host] section that lists name (lower case), or nil.
func (c *Config) HostFor(name string) *Host {
	for i := range c.Hosts {
		for _, n := range c.Hosts[i].Names {
			if n == name {
				return &c.Hosts[i]
			}
		}
	}
	return nil
}

// ACMENames returns the names (lower case, without a port, each once) of
// the [host] sections with acme = true, in file order.
func (c *Config) ACMENames() []string {
	var out []string
	seen := map[string]bool{}
	for _, h := range c.Hosts {
		if !h.ACME {
			continue
		}
		for _, n := range h.Names {
			n = HostName(n)
			if !seen[n] {
				seen[n] = true
				out = append(out, n)
			}
		}
	}
	return out
}

// HostName is a [host] name without its port, as SNI and a certificate
// name it.
func HostName(name string) string {
	if h, _, err := net.SplitHostPort(name); err == nil {
		return h
	}
	return name
}

// Error is one problem in a configuration file. Section and Key are empty when
// the problem is with the file as a whole; Line is 0 when no line is at
// fault.
type Error struct {
	File    string
	Line    int
	Section string
	Key     string
	Msg     string
}

// Error reads "file:line: [section] key: msg", as haproxy -c and nginx -t
// name the place.
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		b.WriteString(":" + strconv.Itoa(e.Line))
	}
	if e.Section != "" {
		b.WriteString(": [" + e.Section + "]")
	}
	if e.Key != "" {
		if e.Section == "" {
			b.WriteString(":")
		}
		b.WriteString(" " + e.Key)
	}
	b.WriteString(": " + e.Msg)
	return b.String()
}

// Errors is every problem found in one file, in file order.
type Errors []*Error

func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// List returns the individual problems of err: each *Error of an Errors, or
// err itself.
func List(err error) []error {
	var es Errors
	if errors.As(err, &es) {
		out := make([]error, len(es))
		for i, e := range es {
			out[i] = e
		}
		return out
	}
	return []error{err}
}
