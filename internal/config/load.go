package config

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/mail"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"gopkg.in/ini.v1"
)

// The section types and the keys each accepts. A key not listed is an error.
var knownKeys = map[string][]string{
	"global": {
		"accesslog",
		"accesslog-format",
		"stats",
		"read-header-timeout",
		"idle-timeout",
		"shutdown-timeout",
		"tunnel-timeout",
		"client-timeout",
		"max-connections",
		"acme-ca",
		"acme-ca-root",
		"acme-email",
		"acme-storage",
	},
	"frontend": {
		"bind",
		"backends",
		"hosts",
		"add-x-forwarded-for",
		"https",
		"keyfile",
		"certfile",
		"read-header-timeout",
		"idle-timeout",
		"accesslog",
		"accesslog-format",
		"balance",
		"tunnel-timeout",
		"client-timeout",
		"tls-min-version",
		"http2",
		"redirect-https",
		"redirect-https-port",
		"mode",
		"accept-proxy",
		"accept-proxy-from",
		"max-connections",
		"routes",
		"set-request-header",
		"add-request-header",
		"del-request-header",
		"set-response-header",
		"add-response-header",
		"del-response-header",
	},
	"host": {
		"backends",
		"balance",
		"certfile",
		"keyfile",
		"set-request-header",
		"add-request-header",
		"del-request-header",
		"set-response-header",
		"add-response-header",
		"del-response-header",
		"acme",
	},
	"route": {
		"hosts",
		"path",
		"backends",
		"balance",
		"strip-prefix",
		"redirect",
		"redirect-code",
		"set-request-header",
		"add-request-header",
		"del-request-header",
		"set-response-header",
		"add-response-header",
		"del-response-header",
	},
	"backend": {
		"connect",
		"connect-timeout",
		"response-timeout",
		"body-timeout",
		"weight",
		"ca-file",
		"tls-server-name",
		"tls-skip-verify",
		"health-check",
		"health-check-host",
		"health-timeout",
		"health-interval",
		"health-rise",
		"health-fall",
		"send-proxy",
		"max-connections",
		"queue-timeout",
		"queue-size",
	},
}

// iniOptions are how the file is read; indexLines follows them.
var iniOptions = ini.LoadOptions{
	// Same-named sections and keys are reported, not merged.
	AllowNonUniqueSections: true,
	AllowShadows:           true,
	// A header rule may be given twice alike (two Set-Cookie lines).
	AllowDuplicateShadowValues: true,
	// drunken-hipster's parser did not care about the case of keys.
	InsensitiveKeys: true,
	// Values may hold '#' (a path), as they could in drunken-hipster.
	SpaceBeforeInlineComment: true,
}

var sectionTypes = []string{"global", "frontend", "host", "backend", "route"}

// headerRuleKeys are the header rule keys, which may be repeated: one
// header a line.
var headerRuleKeys = []string{
	"set-request-header",
	"add-request-header",
	"del-request-header",
	"set-response-header",
	"add-response-header",
	"del-response-header",
}

// Load reads and validates the file at path. Beyond what Parse checks, it
// checks that every access log file could be opened for writing now,
// without creating or changing one, and that the machine has the address
// of every bind.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, Errors{{File: path, Msg: err.Error()}}
	}
	return parseFile(path, data, true)
}

// Parse validates data as the contents of the file called name. The error, if
// any, is an Errors listing every problem.
func Parse(name string, data []byte) (*Config, error) {
	return parseFile(name, data, false)
}

func parseFile(name string, data []byte, checkSystem bool) (*Config, error) {
	binary, badLine, badByte := textProblem(data)
	if binary != "" {
		return nil, Errors{{File: name, Msg: "not a text file (" + binary + ")"}}
	}
	if badLine > 0 {
		return nil, Errors{{File: name, Line: badLine, Msg: fmt.Sprintf("byte %#x is not UTF-8: save the file as UTF-8", badByte)}}
	}
	lines, bad := indexLines(data)
	if bad != nil {
		return nil, Errors{{File: name, Line: bad.line, Msg: "not a valid INI file: " + bad.msg}}
	}
	f, err := ini.LoadSources(iniOptions, data)
	if err != nil {
		return nil, Errors{{File: name, Msg: "not a valid INI file: " + strings.TrimSpace(err.Error())}}
	}
	p := &parser{file: name, cfg: &Config{File: name, lines: lines}, dualStack: dualStack(), lines: lines, occ: map[string]int{}}
	p.cfg.Global = Global{
		ReadHeaderTimeout: DefaultReadHeaderTimeout,
		IdleTimeout:       DefaultIdleTimeout,
		ShutdownTimeout:   DefaultShutdownTimeout,
		TunnelTimeout:     DefaultTunnelTimeout,
		AccessLogFormat:   DefaultAccessLogFormat,
		ClientTimeout:     DefaultClientTimeout,
		ACME:              ACME{CA: DefaultACMECA, Storage: defaultACMEStorage()},
	}
	p.sections(f)
	p.resolve()
	p.unused()
	if checkSystem {
		p.checkLogs()
		p.checkACMEStorage()
		p.checkBinds()
	}
	if len(p.errs) > 0 {
		return nil, p.errs
	}
	return p.cfg, nil
}

type parser struct {
	file      string
	cfg       *Config
	errs      Errors
	dualStack bool // how the system binds [::]
	// The sections as the file gives them, for the checks that need them all.
	frontendSecs []*ini.Section
	hostSecs     []*ini.Section
	routeSecs    []*ini.Section
	logs         []setting // the accesslog keys set
	// acmeStorageSet is whether acme-storage is set (else its default).
	acmeStorageSet bool
	// lines tells where sections and keys are; occ, by sectionKey, which
	// occurrence of a section name errors are about (duplicates are
	// reported, and the first one is used).
	lines *lineIndex
	occ   map[string]int
}

// setting is where a key was set, and its value.
type setting struct{ section, value string }

// warnf and errorf report a problem with key (or with the section, when
// key is ""), on the line that sets the key, else the section's header.
func (p *parser) warnf(section, key, format string, args ...any) {
	p.cfg.Warnings = append(p.cfg.Warnings, (&Error{File: p.file, Line: p.line(section, key), Section: section, Key: key, Msg: fmt.Sprintf(format, args...)}).Error())
}

func (p *parser) errorf(section, key, format string, args ...any) {
	p.errorAt(p.line(section, key), section, key, format, args...)
}

func (p *parser) errorAt(line int, section, key, format string, args ...any) {
	p.errs = append(p.errs, &Error{File: p.file, Line: line, Section: section, Key: key, Msg: fmt.Sprintf(format, args...)})
}

// sections walks the file once, checking section headers and keys and
// filling in each section's own values.
func (p *parser) sections(f *ini.File) {
	seen := map[string]int{} // the occurrence of each section used
	count := map[string]int{}
	frontends := 0
	for _, sec := range f.Sections() {
		key := sectionKey(sec.Name())
		p.occ[key] = count[key]
		count[key]++
		if sec.Name() == ini.DefaultSection {
			for _, k := range sec.Keys() {
				p.errorf("", k.Name(), "key outside any section")
			}
			continue
		}
		fields := strings.Fields(sec.Name())
		if len(fields) == 0 {
			p.errorf(sec.Name(), "", "empty section name")
			continue
		}
		typ := strings.ToLower(fields[0])
		if _, ok := knownKeys[typ]; !ok {
			p.errorf(sec.Name(), "", "unknown section type %q%s (sections are global, frontend NAME, host NAME…, backend NAME, route NAME)", fields[0], didYouMean(fields[0], sectionTypes))
			continue
		}
		if typ == "frontend" {
			frontends++
		}
		if first, ok := seen[key]; ok {
			p.errorf(sec.Name(), "", "section defined twice (first at line %d)", p.lines.sections[key][first].header)
			p.occ[key] = first
			continue
		}
		seen[key] = p.occ[key]
		p.keys(sec, typ)
		switch typ {
		case "global":
			if len(fields) != 1 {
				p.errorf(sec.Name(), "", "[global] takes no name")
			}
			p.global(sec)
		case "frontend":
			if len(fields) != 2 {
				p.errorf(sec.Name(), "", "a frontend needs exactly one name, as in [frontend web]")
				continue
			}
			p.frontendSecs = append(p.frontendSecs, sec)
		case "host":
			if len(fields) < 2 {
				p.errorf(sec.Name(), "", "a host section needs at least one host name, as in [host example.com www.example.com]")
				continue
			}
			p.hostSecs = append(p.hostSecs, sec)
		case "backend":
			if len(fields) != 2 {
				p.errorf(sec.Name(), "", "a backend needs exactly one name, as in [backend app1]")
				continue
			}
			p.backend(sec, fields[1])
		case "route":
			if len(fields) != 2 {
				p.errorf(sec.Name(), "", "a route needs exactly one name, as in [route api]")
				continue
			}
			p.routeSecs = append(p.routeSecs, sec)
		}
	}
	if frontends == 0 {
		p.errorAt(0, "", "", "no [frontend] section: hipsterd would listen nowhere")
	}
	// Frontends, hosts and routes come after [global] and every backend is
	// known, so that their defaults and references resolve whatever the
	// section order; frontends last, as they name hosts and routes.
	for _, sec := range p.hostSecs {
		p.host(sec)
	}
	for _, sec := range p.routeSecs {
		p.route(sec)
	}
	for _, sec := range p.frontendSecs {
		p.frontend(sec)
	}
	p.unusedRoutes()
}

// keys reports unknown and repeated keys.
func (p *parser) keys(sec *ini.Section, typ string) {
	for _, k := range sec.Keys() {
		name := k.Name()
		if !slices.Contains(knownKeys[typ], name) {
			// A key of another section is misplaced rather than misspelt,
			// however close it is to one of this section's.
			hint := ""
			for _, other := range sectionTypes {
				if other != typ && slices.Contains(knownKeys[other], name) {
					hint = fmt.Sprintf(" (%s belongs in a [%s] section)", name, other)
					break
				}
			}
			if hint == "" {
				hint = didYouMean(name, knownKeys[typ])
			}
			p.errorf(sec.Name(), name, "unknown key%s", hint)
			continue
		}
		// A key set twice to one value was let pass before header rules
		// kept duplicates, and still is. The lines are counted from the file.
		if n := distinct(k.ValueWithShadows()); n > 1 && !slices.Contains(headerRuleKeys, name) {
			lines := p.keyLines(sec.Name(), name)
			p.errorAt(lines[1], sec.Name(), name, "key set %d times (lines %s); set it once", len(lines), lineList(lines))
		}
	}
}

func (p *parser) global(sec *ini.Section) {
	g := &p.cfg.Global
	g.AccessLog = value(sec, "accesslog")
	if g.AccessLog != "" {
		p.logs = append(p.logs, setting{sec.Name(), g.AccessLog})
	}
	if f := p.logFormat(sec); f != "" {
		g.AccessLogFormat = f
	}
	p.duration(sec, "read-header-timeout", &g.ReadHeaderTimeout)
	p.duration(sec, "idle-timeout", &g.IdleTimeout)
	p.duration(sec, "shutdown-timeout", &g.ShutdownTimeout)
	p.duration(sec, "tunnel-timeout", &g.TunnelTimeout)
	p.duration(sec, "client-timeout", &g.ClientTimeout)
	p.integer(sec, "max-connections", 0, MaxMaxConnections, &g.MaxConnections)
	p.acme(sec)
	if sec.HasKey("stats") {
		g.Stats = value(sec, "stats")
		a, err := parseBind(g.Stats, p.dualStack)
		switch {
		case g.Stats == "":
			p.errorf(sec.Name(), "stats", "empty: leave the key out to serve no stats, or give an address, as in stats = 127.0.0.1:8404")
		case err != nil:
			p.errorf(sec.Name(), "stats", "%q: %v", g.Stats, err)
		default:
			g.StatsListen = a
		}
	}
}

// acme reads [global]'s acme-* keys.
func (p *parser) acme(sec *ini.Section) {
	a := &p.cfg.Global.ACME
	if sec.HasKey("acme-ca") {
		a.CA = value(sec, "acme-ca")
		if u, err := url.Parse(a.CA); err != nil || u.Scheme != "https" || u.Host == "" {
			p.errorf(sec.Name(), "acme-ca", "%q is not an https:// URL (the CA's ACME directory, as in %s)", a.CA, DefaultACMECA)
		}
	}
	if sec.HasKey("acme-ca-root") {
		a.CARoot = value(sec, "acme-ca-root")
		if data, err := p.readFile(a.CARoot); err != nil {
			p.errorf(sec.Name(), "acme-ca-root", "cannot read %s: %v", a.CARoot, unwrapPathError(err))
		} else if !x509.NewCertPool().AppendCertsFromPEM(data) {
			p.errorf(sec.Name(), "acme-ca-root", "%s holds no PEM certificate", a.CARoot)
		}
	}
	if sec.HasKey("acme-email") {
		a.Email = value(sec, "acme-email")
		if _, err := mail.ParseAddress(a.Email); err != nil || strings.ContainsAny(a.Email, "<> ") {
			p.errorf(sec.Name(), "acme-email", "%q is not an e-mail address (write it bare, as in admin@example.com)", a.Email)
		}
	}
	if sec.HasKey("acme-storage") {
		p.acmeStorageSet = true
		a.Storage = value(sec, "acme-storage")
		if !filepath.IsAbs(a.Storage) {
			p.errorf(sec.Name(), "acme-storage", "%q is not an absolute path", a.Storage)
		}
	}
}

// defaultACMEStorage is acme-storage's default: under systemd, the unit's
// StateDirectory (the first, if it lists several).
func defaultACMEStorage() string {
	if dir, _, _ := strings.Cut(os.Getenv("STATE_DIRECTORY"), ":"); dir != "" {
		return filepath.Join(dir, "acme")
	}
	return DefaultACMEStorage
}

// checkACMEStorage reports an acme-storage that could not be created or
// written now, when a host needs it; it creates nothing.
func (p *parser) checkACMEStorage() {
	dir := p.cfg.Global.ACME.Storage
	if len(p.cfg.ACMENames()) == 0 || dir == "" {
		return
	}
	// The directory, else the nearest parent that exists, must let this
	// process create files (certmagic makes the rest of the tree).
	for d := dir; ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if errors.Is(err, fs.ErrNotExist) && d != filepath.Dir(d) {
			continue
		}
		switch {
		case err != nil:
			err = unwrapPathError(err)
		case !fi.IsDir():
			err = fmt.Errorf("%s is not a directory", d)
		default:
			if werr := unix.Faccessat(unix.AT_FDCWD, d, unix.W_OK|unix.X_OK, unix.AT_EACCESS); werr != nil {
				err = fmt.Errorf("cannot write in %s: %v", d, werr)
			}
		}
		if err != nil {
			key := "acme-storage"
			if !p.acmeStorageSet {
				key += " (default)"
			}
			p.errorf("global", key, "%s: %v", dir, err)
		}
		return
	}
}

func (p *parser) frontend(sec *ini.Section) {
	fe := Frontend{
		Name:     strings.Fields(sec.Name())[1],
		Bind:     value(sec, "bind"),
		Backends: fields(value(sec, "backends")),
		Hosts:    fields(strings.ToLower(value(sec, "hosts"))),
		CertFile: value(sec, "certfile"),
		KeyFile:  value(sec, "keyfile"),
		Routes:   fields(value(sec, "routes")),
		Headers:  p.headerRules(sec),
	}
	// Frontend timeouts default to [global]'s, which may come later in the
	// file; resolve() fills in those not set here.
	fe.ReadHeaderTimeout, fe.IdleTimeout, fe.TunnelTimeout, fe.ClientTimeout = -1, -1, -1, -1
	p.duration(sec, "read-header-timeout", &fe.ReadHeaderTimeout)
	p.duration(sec, "idle-timeout", &fe.IdleTimeout)
	p.duration(sec, "tunnel-timeout", &fe.TunnelTimeout)
	p.duration(sec, "client-timeout", &fe.ClientTimeout)
	p.integer(sec, "max-connections", 0, MaxMaxConnections, &fe.MaxConnections)
	fe.AccessLog = value(sec, "accesslog")
	if fe.AccessLog != "" {
		p.logs = append(p.logs, setting{sec.Name(), fe.AccessLog})
	}
	fe.AccessLogFormat = p.logFormat(sec) // "" until resolve()
	p.boolean(sec, "add-x-forwarded-for", &fe.AddXForwardedFor)
	p.boolean(sec, "https", &fe.HTTPS)
	fe.Balance = p.balance(sec)
	fe.TLSMinVersion, fe.HTTP2, fe.RedirectHTTPSPort = DefaultTLSMinVersion, true, DefaultRedirectHTTPSPort
	if sec.HasKey("tls-min-version") {
		fe.TLSMinVersion = value(sec, "tls-min-version")
		if fe.TLSMinVersion != "1.2" && fe.TLSMinVersion != "1.3" {
			p.errorf(sec.Name(), "tls-min-version", "%q is not 1.2 or 1.3", fe.TLSMinVersion)
		}
	}
	p.boolean(sec, "http2", &fe.HTTP2)
	p.boolean(sec, "redirect-https", &fe.RedirectHTTPS)
	p.integer(sec, "redirect-https-port", 1, 65535, &fe.RedirectHTTPSPort)
	if fe.RedirectHTTPS && fe.HTTPS {
		p.errorf(sec.Name(), "redirect-https", "set on an https frontend: it would redirect to itself")
	}
	if !fe.HTTPS {
		for _, k := range []string{"tls-min-version", "http2"} {
			if sec.HasKey(k) {
				p.errorf(sec.Name(), k, "set but https is not true")
			}
		}
	}

	if fe.Bind == "" {
		p.errorf(sec.Name(), "bind", "missing: every frontend needs an address to listen on, as in bind = 0.0.0.0:9000")
	} else if a, err := parseBind(fe.Bind, p.dualStack); err != nil {
		p.errorf(sec.Name(), "bind", "%q: %v", fe.Bind, err)
	} else {
		fe.Listen = a
	}
	p.mode(sec, &fe)
	p.acceptProxy(sec, &fe)
	if fe.Mode == ModeTCP {
		if len(fe.Backends) == 0 {
			p.errorf(sec.Name(), "backends", "missing: a tcp frontend needs backends (the backends of its hosts are not used)")
		}
	} else if len(fe.Backends) == 0 && len(fe.Hosts) == 0 && len(fe.Routes) == 0 && !fe.RedirectHTTPS {
		p.errorf(sec.Name(), "backends", "the frontend has neither backends nor hosts nor routes, so it could serve nothing")
	}
	p.routeRefs(sec, fe)
	p.backendRefs(sec, fe.Backends)
	for _, h := range fe.Hosts {
		if p.cfg.HostFor(h) == nil {
			p.errorf(sec.Name(), "hosts", "no [host] section lists %q", h)
		}
	}
	switch {
	case fe.HTTPS && fe.CertFile == "" && fe.KeyFile == "" && p.listsACMEHost(fe.Hosts):
		// Its hosts' certificates come from the CA; other names get none.
	case fe.HTTPS:
		p.tlsFiles(sec, fe.CertFile, fe.KeyFile)
	case sec.HasKey("redirect-https-port") && !fe.RedirectHTTPS:
		p.errorf(sec.Name(), "redirect-https-port", "set but redirect-https is not true")
	}
	if !fe.HTTPS {
		for _, k := range []string{"certfile", "keyfile"} {
			if sec.HasKey(k) {
				p.errorf(sec.Name(), k, "set but https is not true")
			}
		}
	}
	p.cfg.Frontends = append(p.cfg.Frontends, fe)
}

// mode reads mode and rejects, on a tcp frontend, the keys only HTTP has.
func (p *parser) mode(sec *ini.Section, fe *Frontend) {
	fe.Mode = DefaultMode
	if !sec.HasKey("mode") {
		return
	}
	switch m := Mode(strings.ToLower(value(sec, "mode"))); m {
	case ModeHTTP, ModeTCP:
		fe.Mode = m
	default:
		p.errorf(sec.Name(), "mode", "%q is not http or tcp", value(sec, "mode"))
		return
	}
	if fe.Mode != ModeTCP {
		return
	}
	for _, k := range append([]string{"add-x-forwarded-for", "http2", "redirect-https", "redirect-https-port", "idle-timeout", "routes"}, headerRuleKeys...) {
		if sec.HasKey(k) {
			p.errorf(sec.Name(), k, "makes no sense on a tcp frontend, which sees no HTTP")
		}
	}
	switch {
	case len(fe.Hosts) > 0 && fe.HTTPS:
		p.warnf(sec.Name(), "hosts", "on a tcp frontend only the SNI certificates of these [host] sections are used, not their backends")
	case len(fe.Hosts) > 0:
		p.warnf(sec.Name(), "hosts", "not used: a tcp frontend without https serves no certificate and routes by no name")
	}
}

// acceptProxy reads accept-proxy and accept-proxy-from.
func (p *parser) acceptProxy(sec *ini.Section, fe *Frontend) {
	p.boolean(sec, "accept-proxy", &fe.AcceptProxy)
	if !sec.HasKey("accept-proxy-from") {
		return
	}
	if !fe.AcceptProxy {
		p.errorf(sec.Name(), "accept-proxy-from", "set but accept-proxy is not true")
	}
	list := fields(value(sec, "accept-proxy-from"))
	if len(list) == 0 {
		p.errorf(sec.Name(), "accept-proxy-from", "empty: list addresses or networks, as in 10.0.0.0/8 192.0.2.7")
	}
	for _, s := range list {
		pfx, err := parsePrefix(s)
		if err != nil {
			p.errorf(sec.Name(), "accept-proxy-from", "%q is neither an IP address nor a network in CIDR notation (10.0.0.0/8)", s)
			continue
		}
		fe.AcceptProxyFrom = append(fe.AcceptProxyFrom, pfx)
	}
}

// parsePrefix reads a network (10.0.0.0/8) or one address (a /32 or /128).
func parsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		pfx, err := netip.ParsePrefix(s)
		return pfx.Masked(), err
	}
	ip, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	ip = ip.Unmap()
	return netip.PrefixFrom(ip, ip.BitLen()), nil
}

// trailingDot refuses a host name written with the root's dot: a request's
// Host is matched without it (as nginx does), so the name would match nothing.
func (p *parser) trailingDot(sec *ini.Section, key, name string) {
	if h := HostName(name); strings.HasSuffix(h, ".") {
		p.errorf(sec.Name(), key, "host name %q ends with a dot: a request's Host is matched without its trailing dot; write %q", name, strings.Replace(name, h, strings.TrimSuffix(h, "."), 1))
	}
}

func (p *parser) host(sec *ini.Section) {
	names := strings.Fields(strings.ToLower(sec.Name()))[1:]
	for _, n := range names {
		if p.cfg.HostFor(n) != nil {
			p.errorf(sec.Name(), "", "host name %q is already listed by another [host] section", n)
		}
		p.trailingDot(sec, "", n)
	}
	h := Host{Names: names, Backends: fields(value(sec, "backends")), Balance: p.balance(sec),
		CertFile: value(sec, "certfile"), KeyFile: value(sec, "keyfile"), Headers: p.headerRules(sec)}
	p.boolean(sec, "acme", &h.ACME)
	switch {
	case h.ACME && (sec.HasKey("certfile") || sec.HasKey("keyfile")):
		p.errorf(sec.Name(), "acme", "set with certfile/keyfile: the certificate comes either from the ACME CA or from files; remove one")
	case sec.HasKey("certfile") || sec.HasKey("keyfile"):
		p.tlsFiles(sec, h.CertFile, h.KeyFile)
	}
	if h.ACME {
		for _, n := range names {
			switch host := HostName(n); {
			case strings.HasPrefix(host, "*."):
				p.errorf(sec.Name(), "acme", "%q is a wildcard: a wildcard certificate needs the ACME DNS-01 challenge, which hipsterd does not answer (yet); list the names, or give certfile and keyfile", n)
			case strings.Contains(host, "*") || !strings.Contains(host, "."):
				p.errorf(sec.Name(), "acme", "%q is not a name an ACME CA issues certificates for", n)
			}
		}
	}
	if len(h.Backends) == 0 {
		p.errorf(sec.Name(), "backends", "missing: a host section needs at least one backend")
	}
	p.backendRefs(sec, h.Backends)
	p.cfg.Hosts = append(p.cfg.Hosts, h)
}

func (p *parser) backend(sec *ini.Section, name string) {
	b := Backend{
		Name:            name,
		ConnectTimeout:  DefaultConnectTimeout,
		ResponseTimeout: DefaultResponseTimeout,
		BodyTimeout:     DefaultBodyTimeout,
		Weight:          DefaultWeight,
		QueueTimeout:    DefaultQueueTimeout,
		QueueSize:       DefaultQueueSize,
		Health: HealthCheck{
			Timeout:  DefaultHealthTimeout,
			Interval: DefaultHealthInterval,
			Rise:     DefaultHealthRise,
			Fall:     DefaultHealthFall,
		},
	}
	connect := value(sec, "connect")
	defaultPort := "80"
	if rest, ok := strings.CutPrefix(connect, "https://"); ok {
		connect, b.TLS, defaultPort = strings.TrimSuffix(rest, "/"), true, "443"
	} else if rest, ok := strings.CutPrefix(connect, "http://"); ok {
		connect = strings.TrimSuffix(rest, "/")
	}
	if connect == "" {
		p.errorf(sec.Name(), "connect", "missing: every backend needs an address, as in connect = 127.0.0.1:8000")
	} else if addr, err := backendAddress(connect, defaultPort); err != nil {
		p.errorf(sec.Name(), "connect", "%q: %v", connect, err)
	} else {
		b.Address = addr
	}
	p.duration(sec, "connect-timeout", &b.ConnectTimeout)
	p.duration(sec, "response-timeout", &b.ResponseTimeout)
	p.duration(sec, "body-timeout", &b.BodyTimeout)
	p.integer(sec, "weight", 1, 1000, &b.Weight)
	p.integer(sec, "max-connections", 0, 1_000_000, &b.MaxConnections)
	p.duration(sec, "queue-timeout", &b.QueueTimeout)
	p.integer(sec, "queue-size", 0, 1_000_000, &b.QueueSize)
	for _, k := range []string{"queue-timeout", "queue-size"} {
		if sec.HasKey(k) && b.MaxConnections == 0 {
			p.errorf(sec.Name(), k, "set but max-connections is not: without a limit nothing queues")
		}
	}
	if sec.HasKey("send-proxy") {
		switch v := strings.ToLower(value(sec, "send-proxy")); v {
		case "v1", "v2":
			b.SendProxy = int(v[1] - '0')
		default:
			p.errorf(sec.Name(), "send-proxy", "%q is not v1 or v2", value(sec, "send-proxy"))
		}
	}
	b.CAFile = value(sec, "ca-file")
	b.TLSServerName = value(sec, "tls-server-name")
	p.boolean(sec, "tls-skip-verify", &b.TLSSkipVerify)
	for _, k := range []string{"ca-file", "tls-server-name", "tls-skip-verify"} {
		if sec.HasKey(k) && !b.TLS {
			p.errorf(sec.Name(), k, "set but connect is not https://")
		}
	}
	if b.CAFile != "" {
		if data, err := p.readFile(b.CAFile); err != nil {
			p.errorf(sec.Name(), "ca-file", "cannot read %s: %v", b.CAFile, unwrapPathError(err))
		} else if !x509.NewCertPool().AppendCertsFromPEM(data) {
			p.errorf(sec.Name(), "ca-file", "%s holds no PEM certificate", b.CAFile)
		}
	}
	if b.TLSSkipVerify {
		p.warnf(sec.Name(), "tls-skip-verify", "the backend's certificate is not verified")
	}

	hc := &b.Health
	switch check := value(sec, "health-check"); {
	case check == "":
		if sec.HasKey("health-check") {
			p.errorf(sec.Name(), "health-check", "empty: write a path such as /health, or tcp")
		}
	case check == "tcp":
		hc.Kind = HealthTCP
	case strings.HasPrefix(check, "/"):
		hc.Kind, hc.Path = HealthHTTP, check
	default:
		p.errorf(sec.Name(), "health-check", "%q is neither a path (/health) nor tcp", check)
	}
	hc.Host = value(sec, "health-check-host")
	if hc.Host != "" && hc.Kind != HealthHTTP {
		p.errorf(sec.Name(), "health-check-host", "set without an HTTP health-check path")
	}
	p.duration(sec, "health-timeout", &hc.Timeout)
	p.duration(sec, "health-interval", &hc.Interval)
	if hc.Interval == 0 && sec.HasKey("health-interval") {
		p.errorf(sec.Name(), "health-interval", "must be more than 0")
	}
	p.integer(sec, "health-rise", 1, 1000, &hc.Rise)
	p.integer(sec, "health-fall", 1, 1000, &hc.Fall)
	p.cfg.Backends = append(p.cfg.Backends, b)
}

func (p *parser) balance(sec *ini.Section) Balance {
	if !sec.HasKey("balance") {
		return DefaultBalance
	}
	v := Balance(strings.ToLower(value(sec, "balance")))
	switch v {
	case RoundRobin, LeastConn, Source:
		return v
	}
	p.errorf(sec.Name(), "balance", "%q is not roundrobin, leastconn or source%s", value(sec, "balance"),
		didYouMean(string(v), []string{string(RoundRobin), string(LeastConn), string(Source)}))
	return DefaultBalance
}

// logFormat returns the section's accesslog-format, or "" when it is unset
// or invalid.
func (p *parser) logFormat(sec *ini.Section) LogFormat {
	if !sec.HasKey("accesslog-format") {
		return ""
	}
	v := LogFormat(strings.ToLower(value(sec, "accesslog-format")))
	switch v {
	case LogHipster, LogCombined, LogJSON:
		return v
	}
	p.errorf(sec.Name(), "accesslog-format", "%q is not hipster, combined or json%s", value(sec, "accesslog-format"),
		didYouMean(string(v), []string{string(LogHipster), string(LogCombined), string(LogJSON)}))
	return ""
}

func (p *parser) integer(sec *ini.Section, key string, lo, hi int, dst *int) {
	if !sec.HasKey(key) {
		return
	}
	s := value(sec, key)
	n, err := strconv.Atoi(s)
	if err != nil || n < lo || n > hi {
		p.errorf(sec.Name(), key, "%q is not a whole number from %d to %d", s, lo, hi)
		return
	}
	*dst = n
}

// resolve runs the checks that span sections, once every section is read.
func (p *parser) resolve() {
	p.checkChallenges()
	g := p.cfg.Global
	for i := range p.cfg.Frontends {
		fe := &p.cfg.Frontends[i]
		switch {
		case fe.ReadHeaderTimeout < 0:
			fe.ReadHeaderTimeout = g.ReadHeaderTimeout
			if fe.ReadHeaderTimeout == 0 {
				p.warnf("global", "read-header-timeout", "0 leaves [frontend %s] no limit on how long a client may take to send its request header (slowloris)", fe.Name)
			}
		case fe.ReadHeaderTimeout == 0:
			p.warnf("frontend "+fe.Name, "read-header-timeout", "0 leaves no limit on how long a client may take to send its request header (slowloris)")
		}
		if fe.ClientTimeout < 0 {
			fe.ClientTimeout = g.ClientTimeout
		}
		if fe.IdleTimeout < 0 {
			fe.IdleTimeout = g.IdleTimeout
		}
		if fe.TunnelTimeout < 0 {
			fe.TunnelTimeout = g.TunnelTimeout
		}
		if fe.AccessLog == "" {
			fe.AccessLog = g.AccessLog
		}
		if fe.AccessLogFormat == "" {
			fe.AccessLogFormat = g.AccessLogFormat
		}
		if g.Stats != "" && fe.Listen.Conflicts(g.StatsListen) {
			p.errorf("frontend "+fe.Name, "bind", "%q conflicts with [global]'s stats = %q", fe.Bind, g.Stats)
		}
		for _, other := range p.cfg.Frontends[:i] {
			if fe.Listen.Conflicts(other.Listen) {
				p.errorf("frontend "+fe.Name, "bind", "%q conflicts with [frontend %s]'s %q%s", fe.Bind, other.Name, other.Bind, p.conflictHint(*fe, other))
				break
			}
		}
	}
}

// listsACMEHost reports whether one of the hosts has acme = true.
func (p *parser) listsACMEHost(hosts []string) bool {
	for _, n := range hosts {
		if h := p.cfg.HostFor(n); h != nil && h.ACME {
			return true
		}
	}
	return false
}

// checkChallenges reports [host] sections with acme = true that no
// frontend could prove to the CA: HTTP-01 needs a plain-HTTP frontend,
// TLS-ALPN-01 an https frontend listing the host.
// A host no https frontend lists would get a certificate served nowhere.
func (p *parser) checkChallenges() {
	plain := false
	for _, fe := range p.cfg.Frontends {
		plain = plain || (!fe.HTTPS && fe.Mode == ModeHTTP)
	}
	for i := range p.cfg.Hosts {
		h := &p.cfg.Hosts[i]
		if !h.ACME {
			continue
		}
		listed := false
		for _, fe := range p.cfg.Frontends {
			for _, n := range fe.Hosts {
				listed = listed || (fe.HTTPS && p.cfg.HostFor(n) == h)
			}
		}
		switch section := "host " + strings.Join(h.Names, " "); {
		case !listed && !plain:
			p.errorf(section, "acme", "no frontend can answer the CA's challenge: add a plain-HTTP frontend (port 80) or list the host on an https frontend (port 443)")
		case !listed:
			p.warnf(section, "acme", "no https frontend lists the host: its certificate would be served nowhere")
		}
	}
}

// conflictHint explains a conflict that is not a plain duplicate.
func (p *parser) conflictHint(a, b Frontend) string {
	if a.Listen.Host != "" && b.Listen.Host != "" {
		return ""
	}
	for _, fe := range []Frontend{a, b} {
		if host, _, _ := net.SplitHostPort(fe.Bind); host == "::" && p.dualStack {
			return " ([::] takes IPv4 too on this system: net.ipv6.bindv6only is 0)"
		}
	}
	return " (a wildcard takes its port on every address of its family)"
}

// unused warns about [host] sections no frontend lists and backends no
// frontend sends traffic to: left over, or a name mistyped where they were
// meant to be listed. unusedRoutes warns about [route] sections.
func (p *parser) unused() {
	listed := make([]bool, len(p.cfg.Hosts))
	used := map[string]bool{}
	for _, fe := range p.cfg.Frontends {
		for _, b := range fe.Backends {
			used[b] = true
		}
		for _, name := range fe.Routes {
			if r := p.cfg.Route(name); r != nil {
				for _, b := range r.Backends {
					used[b] = true
				}
			}
		}
		for _, name := range fe.Hosts {
			for i := range p.cfg.Hosts {
				if !slices.Contains(p.cfg.Hosts[i].Names, name) {
					continue
				}
				listed[i] = true
				// A tcp frontend uses a host's certificate only.
				if fe.Mode != ModeTCP {
					for _, b := range p.cfg.Hosts[i].Backends {
						used[b] = true
					}
				}
			}
		}
	}
	for i, sec := range p.hostSecs {
		if !listed[i] {
			p.warnf(sec.Name(), "", "not used: no frontend lists these names in its hosts")
		}
	}
	for _, b := range p.cfg.Backends {
		if !used[b.Name] {
			p.warnf("backend "+b.Name, "", "not used: no frontend names it in backends, nor any [host] section an http frontend lists, nor any [route] a frontend lists")
		}
	}
}

// checkBinds reports a bind on an address this machine does not have, as
// start or reload would find.
func (p *parser) checkBinds() {
	g := p.cfg.Global
	if g.Stats != "" {
		if err := bindable(g.StatsListen); err != nil {
			p.errorf("global", "stats", "%q: %v", g.Stats, err)
		}
	}
	for _, fe := range p.cfg.Frontends {
		if err := bindable(fe.Listen); err != nil {
			p.errorf("frontend "+fe.Name, "bind", "%q: %v", fe.Bind, err)
		}
	}
}

// bindable reports why a cannot be bound on this machine, port aside. It
// binds port 0 on a's address and closes it at once, taking no port
// anyone wants: the kernel then answers as it will for the real bind
// (all of 127.0.0.0/8 is local, net.ipv4.ip_nonlocal_bind lets an address
// not yet up pass), which a look through the interfaces' addresses would
// not. A wildcard always passes.
func bindable(a Address) error {
	if a.Host == "" {
		return nil
	}
	ln, err := net.Listen(a.Network(), net.JoinHostPort(a.Host, "0"))
	if errors.Is(err, unix.EADDRNOTAVAIL) {
		return fmt.Errorf("this machine has no address %s", a.Host)
	}
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) {
			return op.Err
		}
		return err
	}
	return ln.Close()
}

// checkLogs reports, once per file, an access log that could not be opened
// for appending, as start or reload would find.
func (p *parser) checkLogs() {
	seen := map[string]bool{}
	for _, l := range p.logs {
		if seen[l.value] {
			continue
		}
		seen[l.value] = true
		if err := writable(l.value); err != nil {
			p.errorf(l.section, "accesslog", "cannot write %s: %v", l.value, err)
		}
	}
}

// writable reports why the file at path could not be opened for appending,
// and created if need be, by this process; it creates and changes nothing.
func writable(path string) error {
	fi, err := os.Stat(path)
	switch {
	case err == nil:
		if fi.IsDir() {
			return fmt.Errorf("it is a directory")
		}
		if err := unix.Faccessat(unix.AT_FDCWD, path, unix.W_OK, unix.AT_EACCESS); err != nil {
			return err
		}
		return nil
	case !errors.Is(err, fs.ErrNotExist):
		return unwrapPathError(err)
	}
	dir := filepath.Dir(path)
	di, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("directory %s: %v", dir, unwrapPathError(err))
	}
	if !di.IsDir() {
		return fmt.Errorf("%s is not a directory", dir)
	}
	if err := unix.Faccessat(unix.AT_FDCWD, dir, unix.W_OK|unix.X_OK, unix.AT_EACCESS); err != nil {
		return fmt.Errorf("cannot create a file in %s: %v", dir, err)
	}
	return nil
}

func (p *parser) backendRefs(sec *ini.Section, names []string) {
	for _, n := range names {
		if p.cfg.Backend(n) == nil {
			known := make([]string, len(p.cfg.Backends))
			for i, b := range p.cfg.Backends {
				known[i] = b.Name
			}
			p.errorf(sec.Name(), "backends", "unknown backend %q%s", n, didYouMean(n, known))
		}
	}
}

func (p *parser) duration(sec *ini.Section, key string, dst *time.Duration) {
	if !sec.HasKey(key) {
		return
	}
	s := value(sec, key)
	d, err := time.ParseDuration(s)
	if err != nil {
		p.errorf(sec.Name(), key, "%q is not a duration (write it as 500ms, 5s, 2m or 1h30m)", s)
		return
	}
	if d < 0 {
		p.errorf(sec.Name(), key, "%q is negative (0 means no limit)", s)
		return
	}
	*dst = d
}

func (p *parser) boolean(sec *ini.Section, key string, dst *bool) {
	if !sec.HasKey(key) {
		return
	}
	b, err := sec.Key(key).Bool()
	if err != nil {
		p.errorf(sec.Name(), key, "%q is not a boolean (write true or false)", value(sec, key))
		return
	}
	*dst = b
}

// tlsFiles checks that the certificate and key can be read and belong together.
func (p *parser) tlsFiles(sec *ini.Section, certFile, keyFile string) {
	var certPEM, keyPEM []byte
	for _, f := range []struct {
		key, path string
		dst       *[]byte
	}{{"certfile", certFile, &certPEM}, {"keyfile", keyFile, &keyPEM}} {
		if f.path == "" {
			p.errorf(sec.Name(), f.key, "missing: https = true needs certfile and keyfile (PEM files)")
			continue
		}
		data, err := p.readFile(f.path)
		if err != nil {
			p.errorf(sec.Name(), f.key, "cannot read %s: %v", f.path, unwrapPathError(err))
			continue
		}
		*f.dst = data
	}
	if certPEM == nil || keyPEM == nil {
		return
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		p.errorf(sec.Name(), "certfile", "%s with keyfile %s: %v", certFile, keyFile, err)
		return
	}
	left := time.Until(pair.Leaf.NotAfter)
	switch {
	case left <= 0:
		p.errorf(sec.Name(), "certfile", "%s expired on %s", certFile, pair.Leaf.NotAfter.UTC().Format(time.DateOnly))
	case left < CertExpiryWarning:
		p.warnf(sec.Name(), "certfile", "%s expires on %s, in %d days", certFile, pair.Leaf.NotAfter.UTC().Format(time.DateOnly), int(left.Hours()/24))
	}
}

// readFile reads a certificate, key or CA file once, keeping its bytes in
// the configuration (Config.Files) for the server to build its TLS from.
func (p *parser) readFile(path string) ([]byte, error) {
	if data, ok := p.cfg.Files[path]; ok {
		return data, nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if p.cfg.Files == nil {
		p.cfg.Files = map[string][]byte{}
	}
	p.cfg.Files[path] = data
	return data, nil
}

func unwrapPathError(err error) error {
	if pe, ok := err.(*os.PathError); ok {
		return pe.Err
	}
	return err
}

// value is the key's value with surrounding space removed; "" when unset.
func value(sec *ini.Section, key string) string {
	if !sec.HasKey(key) {
		return ""
	}
	return strings.TrimSpace(sec.Key(key).String())
}

// ParseBind resolves a bind value as a frontend's bind is, for this system.
func ParseBind(bind string) (Address, error) { return parseBind(bind, dualStack()) }

// parseBind resolves a bind value. The wildcard is "*" or empty ("*:80",
// ":80": every address of both families), 0.0.0.0 (IPv4 only) or [::]
// (IPv6 only, or both where dualStack, as the system binds it).
func parseBind(bind string, dualStack bool) (Address, error) {
	host, port, err := net.SplitHostPort(bind)
	if err != nil {
		return Address{}, fmt.Errorf("not host:port (%v)", err)
	}
	n, err := parsePort(port)
	if err != nil {
		return Address{}, err
	}
	a := Address{Port: n}
	switch host {
	case "", "*":
		return a, nil
	case "0.0.0.0":
		a.Family = 4
		return a, nil
	case "::":
		if !dualStack {
			a.Family = 6
		}
		return a, nil
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		ip = ip.Unmap()
		if ip.IsUnspecified() {
			return parseBind(net.JoinHostPort(ip.String(), port), dualStack)
		}
		a.Host, a.Family = ip.String(), 6
		if ip.Is4() {
			a.Family = 4
		}
		return a, nil
	}
	if strings.ContainsAny(host, " /*[]") {
		return Address{}, fmt.Errorf("%q is neither an IP address nor a host name", host)
	}
	a.Host = strings.ToLower(host)
	return a, nil
}

// dualStack reports whether the system binds an IPv6 wildcard socket to
// IPv4 as well (net.ipv6.bindv6only = 0, Linux's default). Read once: the
// setting applies to sockets as they are made, and hipsterd binds [::]
// accordingly. Where it cannot be read (no IPv6, not Linux), Go binds [::]
// dual-stack itself.
var dualStack = sync.OnceValue(func() bool {
	data, err := os.ReadFile("/proc/sys/net/ipv6/bindv6only")
	return err != nil || strings.TrimSpace(string(data)) != "1"
})

// backendAddress completes connect's value to host:port; a host alone means
// defaultPort (80, as in drunken-hipster, which handed it to net/http; 443
// for https).
func backendAddress(s, defaultPort string) (string, error) {
	if strings.Contains(s, "://") {
		return "", fmt.Errorf("write host:port, or https://host:port; no other scheme")
	}
	if ip := strings.Trim(s, "[]"); strings.Count(s, ":") > 1 && !strings.Contains(s, "]:") {
		if net.ParseIP(ip) == nil {
			return "", fmt.Errorf("not host:port")
		}
		return net.JoinHostPort(ip, defaultPort), nil
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		if strings.Contains(s, ":") {
			return "", fmt.Errorf("not host:port (%v)", err)
		}
		host, port = s, defaultPort
	}
	if host == "" {
		return "", fmt.Errorf("no host")
	}
	if strings.ContainsAny(host, " /") {
		return "", fmt.Errorf("not a host name")
	}
	n, err := parsePort(port)
	if err != nil {
		return "", err
	}
	if n == 0 {
		return "", fmt.Errorf("port 0")
	}
	return net.JoinHostPort(host, port), nil
}

func parsePort(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || n > 65535 {
		return 0, fmt.Errorf("port %q is not a number from 0 to 65535", s)
	}
	return n, nil
}

// fields splits a list on runs of white space; nil when it is empty.
func fields(s string) []string {
	if f := strings.Fields(s); len(f) > 0 {
		return f
	}
	return nil
}

// distinct counts the different values of list.
func distinct(list []string) int {
	seen := map[string]bool{}
	for _, s := range list {
		seen[s] = true
	}
	return len(seen)
}

// didYouMean returns ` (did you mean "x"?)` for the candidate nearest to s,
// or "" when none is near enough to be a likely typo.
func didYouMean(s string, candidates []string) string {
	best, bestDist := "", 0
	for _, c := range candidates {
		d := editDistance(strings.ToLower(s), c)
		if best == "" || d < bestDist {
			best, bestDist = c, d
		}
	}
	if best == "" || bestDist > max(2, len(best)/3) {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
