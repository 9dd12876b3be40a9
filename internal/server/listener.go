package server

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hipsterd/hipsterd/internal/acceptproxy"
	"github.com/hipsterd/hipsterd/internal/accesslog"
	"github.com/hipsterd/hipsterd/internal/acme"
	"github.com/hipsterd/hipsterd/internal/config"
	"github.com/hipsterd/hipsterd/internal/stats"
	"github.com/hipsterd/hipsterd/internal/tcpfront"
	"github.com/hipsterd/hipsterd/internal/upstream"
)

// A listener is one bound socket and the http.Server serving it, or for a
// tcp frontend, its accept loop (then srv is nil). The socket
// outlives reloads that keep its bind address; the handler and the TLS
// configuration are swapped under a running server, so open keep-alive
// connections carry on with the new configuration. Only a change of https
// or of the server's timeouts needs a new http.Server, which takes over the
// same socket. After a reload that moved a bind to the wildcard of its port,
// the socket of the old address may serve the frontend whose bind covers it
// (its key is then not that frontend's bindKey).
type listener struct {
	key  string
	addr config.Address // as bound: an IP address or a wildcard
	sock *net.TCPListener
	log  *slog.Logger

	// limit is the socket's max-connections, its frontend's; global is the
	// server's, over every socket. Connections count until they close,
	// across reloads.
	limit     connLimit
	global    *connLimit
	httpConns httpConns // its HTTP connections, for reclaiming at a limit

	route   atomic.Pointer[route]
	tlsConf atomic.Pointer[tls.Config]

	// Guarded by Server.mu.
	cfg    config.Frontend
	srv    *http.Server
	conns  *atomic.Int64 // srv's open connections, hijacked ones excluded
	view   *acceptView
	served chan struct{} // closed when srv.Serve has returned
}

// route is what a listener serves now: a frontend's handler and the
// generation it belongs to.
type route struct {
	gen     *generation
	handler http.Handler      // an http frontend's
	tcp     *tcpfront.Handler // a tcp frontend's
	stats   *stats.Frontend   // nil without [global] stats
	log     *accesslog.Logger // an http frontend's, nil without accesslog
}

// bindKey names the socket a frontend needs: binds that need the same
// socket share a key (":80", "*:80", and "[::]:80" where it is dual-stack).
// Port 0 is a new socket per frontend name.
func bindKey(fc config.Frontend) string {
	if fc.Listen.Port == 0 {
		return "name " + fc.Name + " " + fc.Bind
	}
	return fc.Listen.Network() + " " + fc.Listen.String()
}

// bind makes the socket of fc. overlap are hipsterd's own listening sockets
// whose addresses overlap fc's (a wildcard and an address on one port): they
// stay open while the new one starts serving, so that no connection is
// refused, which Linux allows only when both sockets have SO_REUSEPORT.
// Sockets get it only then: with it, another process of the same user could
// bind the same address and silently share its connections, so before such
// a bind any listener of another process on an overlapping address is an
// error.
func bind(fc config.Frontend, overlap []*net.TCPListener) (*net.TCPListener, error) {
	fail := func(err error) error {
		return fmt.Errorf("frontend %s: cannot listen on %s: %w", fc.Name, fc.Bind, err)
	}
	// No TCP keep-alive on accepted connections: it costs four system calls
	// per connection, and idle HTTP connections end at idle-timeout. The
	// connections of WebSocket tunnels, which may idle for hours, get it
	// when they are taken over.
	lc := net.ListenConfig{KeepAlive: -1}
	if len(overlap) > 0 {
		if err := foreignListener(fc.Listen, overlap); err != nil {
			return nil, fail(err)
		}
		for _, ln := range overlap {
			if err := setReusePort(ln); err != nil {
				return nil, fail(err)
			}
		}
		lc.Control = func(_, _ string, c syscall.RawConn) error {
			var err error
			if cerr := c.Control(func(fd uintptr) {
				err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
			}); cerr != nil {
				return cerr
			}
			return err
		}
	}
	ln, err := lc.Listen(context.Background(), fc.Listen.Network(), fc.Listen.String())
	if err != nil {
		return nil, fail(err)
	}
	return ln.(*net.TCPListener), nil
}

func setReusePort(ln *net.TCPListener) error {
	rc, err := ln.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	}); err != nil {
		return err
	}
	return serr
}

// foreignListener returns an error if a listening TCP socket other than
// ours (by inode) overlaps a, as /proc/net/tcp and tcp6 list them. Where
// they cannot be read (not Linux), nothing is checked.
func foreignListener(a config.Address, ours []*net.TCPListener) error {
	inodes := map[string]bool{}
	for _, ln := range ours {
		rc, err := ln.SyscallConn()
		if err != nil {
			return err
		}
		var st unix.Stat_t
		rc.Control(func(fd uintptr) { err = unix.Fstat(int(fd), &st) })
		if err != nil {
			return err
		}
		inodes[strconv.FormatUint(st.Ino, 10)] = true
	}
	for _, table := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		data, err := os.ReadFile(table)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(data), "\n")[1:] {
			f := strings.Fields(line)
			const listening = "0A"
			if len(f) < 10 || f[3] != listening || inodes[f[9]] {
				continue
			}
			if other, ok := procAddress(f[1]); ok && other.Conflicts(a) {
				return fmt.Errorf("another process listens on %s", other)
			}
		}
	}
	return nil
}

// procAddress decodes a local address of /proc/net/tcp{,6}: hex IP address
// in 32-bit words of host byte order, colon, hex port.
func procAddress(s string) (config.Address, bool) {
	hexIP, hexPort, ok := strings.Cut(s, ":")
	raw, err := hex.DecodeString(hexIP)
	port, perr := strconv.ParseUint(hexPort, 16, 16)
	if !ok || err != nil || perr != nil || (len(raw) != 4 && len(raw) != 16) {
		return config.Address{}, false
	}
	for i := 0; i < len(raw); i += 4 {
		binary.BigEndian.PutUint32(raw[i:], binary.NativeEndian.Uint32(raw[i:]))
	}
	ip, _ := netip.AddrFromSlice(raw)
	a, err := config.ParseBind(netip.AddrPortFrom(ip, uint16(port)).String())
	return a, err == nil
}

// ServeHTTP hands r to the current generation's handler, which makes it an
// exchange: the exchange leaves the generation as it ends (for a WebSocket,
// when its tunnel has closed).
func (l *listener) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	markServed(r)
	if r.ProtoMajor == 2 {
		serveOnWorker(l.enter().handler, w, r)
		return
	}
	if c := backgroundReadQuiet(r); c != nil {
		defer c.handled()
	}
	l.enter().handler.ServeHTTP(w, r)
}

// enter returns the current route with its generation entered; the caller
// leaves it when done.
func (l *listener) enter() *route {
	// Enter the route's generation, then make sure it is still current: a
	// generation retired in between may already be released.
	for {
		rt := l.route.Load()
		rt.gen.enter()
		if l.route.Load() == rt {
			return rt
		}
		rt.gen.leave()
	}
}

// sameServer reports whether a and b can share one http.Server, or one
// accept loop of a tcp frontend (whose handler holds all the rest).
func sameServer(a, b config.Frontend) bool {
	if a.Mode != b.Mode {
		return false
	}
	if a.Mode == config.ModeTCP {
		return true
	}
	return a.HTTPS == b.HTTPS && a.HTTP2 == b.HTTP2 && a.ReadHeaderTimeout == b.ReadHeaderTimeout && a.IdleTimeout == b.IdleTimeout &&
		(!a.HTTPS || !a.HTTP2 || a.ClientTimeout == b.ClientTimeout) &&
		a.AcceptProxy == b.AcceptProxy && slices.Equal(a.AcceptProxyFrom, b.AcceptProxyFrom)
}

// The HTTP/2 limits of https frontends, set here so that they are
// deliberate (they are Go's defaults) and listed in docs/configuration.md.
const (
	// h2MaxStreams is the most concurrent streams a client may open on a
	// connection; a HEADERS frame past it gets RST_STREAM, and the
	// connection carries on. Streams the client resets count until their
	// handlers return, and more than 4×h2MaxStreams waiting for a handler
	// close the connection (ENHANCE_YOUR_CALM): the rapid-reset guard.
	h2MaxStreams = 250
	// h2MaxReadFrame is the largest frame a client may send.
	h2MaxReadFrame = 1 << 20
	// h2ConnWindow and h2StreamWindow bound the request body bytes a
	// client may send ahead of hipsterd reading them, per connection and
	// per stream.
	h2ConnWindow   = 1 << 20
	h2StreamWindow = 1 << 20
)

// maxHeaderBytes bounds a request's header: for HTTP/1, past it the client
// gets 431; for HTTP/2 it is the advertised SETTINGS_MAX_HEADER_LIST_SIZE
// (plus 320 bytes), and a header block much larger, CONTINUATION frames
// included, closes the connection. Go's default.
const maxHeaderBytes = http.DefaultMaxHeaderBytes

// startServer starts a new http.Server for cfg on the listener's socket, or
// the accept loop of a tcp frontend.
func (l *listener) startServer(cfg config.Frontend, errs chan<- error) {
	if cfg.Mode == config.ModeTCP {
		l.startTCP(cfg, errs)
		return
	}
	l.cfg = cfg
	conns := new(atomic.Int64)
	l.conns = conns
	l.srv = &http.Server{
		Handler:           l,
		ReadHeaderTimeout: cfg.ReadHeaderTimeout,
		IdleTimeout:       cfg.IdleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		// OPTIONS * asks the backend what it supports: forwarded and
		// logged like any request, as nginx and HAProxy do, rather than
		// answered by net/http itself.
		DisableGeneralOptionsHandler: true,
		HTTP2: &http.HTTP2Config{
			MaxConcurrentStreams:          h2MaxStreams,
			MaxReadFrameSize:              h2MaxReadFrame,
			MaxReceiveBufferPerConnection: h2ConnWindow,
			MaxReceiveBufferPerStream:     h2StreamWindow,
			// A connection on which nothing could be written for that
			// long is closed: a client that stops reading altogether
			// holds no stream (each stream has client-timeout too).
			WriteByteTimeout: cfg.ClientTimeout,
		},
		ErrorLog: log.New(serverLog{l.log}, "", 0),
		// Each client connection carries the backend connections of
		// send-proxy backends kept for it, closed with it.
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			// Every connection comes from an acceptView: counted.
			if counted := countedOf(c); counted != nil {
				ctx = context.WithValue(ctx, servedKey{}, counted)
				ctx = upstream.WithClientConn(ctx, &counted.client)
			}
			return ctx
		},
		ConnState: func(c net.Conn, st http.ConnState) {
			setConnState(c, st)
			switch st {
			case http.StateNew:
				conns.Add(1)
				l.route.Load().countConn()
			case http.StateClosed, http.StateHijacked:
				conns.Add(-1)
				if counted := countedOf(c); counted != nil {
					counted.client.Close()
				}
			}
		},
	}
	if !cfg.HTTPS || !cfg.HTTP2 {
		// A non-nil map keeps net/http from setting up HTTP/2.
		l.srv.TLSNextProto = map[string]func(*http.Server, *tls.Conn, http.Handler){}
	}
	l.view = l.newView(cfg)
	l.view.proxy = proxyPolicy(cfg)
	l.view.httpConns = &l.httpConns
	l.view.refused = l.refused
	l.served = make(chan struct{})
	var ln net.Listener = l.view
	if cfg.HTTPS {
		ln = tls.NewListener(ln, &tls.Config{
			GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
				tc := l.tlsConf.Load()
				if c, err := tc.GetConfigForClient(hello); c != nil || err != nil {
					return c, err // the CA's TLS-ALPN-01 challenge
				}
				return tc, nil
			},
		})
	}
	srv, served, name := l.srv, l.served, cfg.Name
	go func() {
		defer close(served)
		l.stopped(name, srv.Serve(ln), errs)
	}()
}

// stopped reports the error that ended a frontend's serving, unless it was
// asked to stop.
func (l *listener) stopped(name string, err error, errs chan<- error) {
	if err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
		l.log.Error("frontend stopped serving", "frontend", name, "err", err)
		select {
		case errs <- fmt.Errorf("frontend %s: %w", name, err):
		default:
		}
	}
}

// startTCP starts the accept loop of a tcp frontend on the listener's
// socket.
func (l *listener) startTCP(cfg config.Frontend, errs chan<- error) {
	l.cfg, l.srv, l.conns = cfg, nil, nil
	l.view = l.newView(cfg)
	l.served = make(chan struct{})
	view, served, name := l.view, l.served, cfg.Name
	go func() {
		defer close(served)
		l.stopped(name, l.serveTCP(view), errs)
	}()
}

// serveTCP accepts connections until view is closed, and serves each on a
// goroutine of its own with the route current when it was accepted. Like
// net/http, it waits a little after a failed accept (out of file
// descriptors, say) and tries again.
func (l *listener) serveTCP(view *acceptView) error {
	var delay time.Duration
	for {
		c, err := view.Accept()
		if err != nil {
			var te interface{ Temporary() bool }
			if !errors.As(err, &te) || !te.Temporary() {
				return err
			}
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			l.log.Error("tcp: accept failed; retrying", "err", err, "in", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		rt := l.enter()
		rt.countConn()
		go serveTCPConn(rt, c.(*countedConn))
	}
}

// serveTCPConn serves one connection of a tcp frontend; the generation of
// rt, and the connection's slots, are held until the connection is closed.
func serveTCPConn(rt *route, c *countedConn) {
	rt.tcp.Serve(c.TCPConn, func() {
		c.release()
		rt.gen.leave()
	})
}

// stopAccepting makes the server stop accepting, without closing the
// socket, and returns once it has: the socket's backlog waits for the next
// server. The server's open connections are left to the caller to drain.
func (l *listener) stopAccepting() {
	l.view.Close()
	<-l.served
	l.sock.SetDeadline(time.Time{})
}

// acceptView is one http.Server's view of a shared socket: closing it ends
// that server's Accept loop but leaves the socket open and its backlog of
// connections waiting for the next server.
//
// It accepts only while its frontend's max-connections and the global one
// allow (see connlimit.go), and returns connections that give their slots
// back when they are closed.
//
// With accept-proxy, it refuses peers outside accept-proxy-from and returns
// connections that read their PROXY header lazily, in the server's own
// goroutine for the connection: reading it here would let one silent client
// hold up every other.
type acceptView struct {
	sock       *net.TCPListener
	fe, global *connLimit
	httpConns  *httpConns // nil for a tcp frontend, whose connections are never reclaimed
	// refused logs and counts requests net/http refuses; nil for a tcp
	// frontend.
	refused  func(top net.Conn, status int, body int64)
	closed   atomic.Bool
	stop     chan struct{} // closed when Accept must no longer wait for a slot
	stopOnce sync.Once
	proxy    *acceptproxy.Policy // nil without accept-proxy
	log      *slog.Logger
}

func (l *listener) newView(cfg config.Frontend) *acceptView {
	return &acceptView{sock: l.sock, fe: &l.limit, global: l.global, stop: make(chan struct{}), log: l.log.With("frontend", cfg.Name)}
}

func (v *acceptView) Accept() (net.Conn, error) {
	for {
		if !v.waitSlot() {
			return nil, net.ErrClosed
		}
		c, err := v.sock.AcceptTCP()
		if err != nil {
			v.fe.release()
			if v.closed.Load() {
				return nil, net.ErrClosed
			}
			if isLocalAcceptError(err) {
				// Not a reason to stop serving, nor to try again at
				// once: wait for a connection to close.
				v.global.hit(v.log, "cannot accept: out of file descriptors or memory; waiting for a connection to close", "err", err)
				v.pause()
				continue
			}
			return nil, err
		}
		v.takeGlobal()
		// A connection accepted as the view closes is still served, by
		// this server, which then closes it after its request.
		cc := &countedConn{TCPConn: c, fe: v.fe, global: v.global, reclaim: v.httpConns, refused: v.refused}
		if v.httpConns != nil {
			v.httpConns.add(cc)
		}
		if v.proxy == nil {
			return cc, nil
		}
		if !v.proxy.Allowed(c.RemoteAddr()) {
			v.log.Debug("connection refused", "client", c.RemoteAddr().String(), "err", acceptproxy.ErrPeerNotAllowed)
			cc.Close()
			continue
		}
		return v.proxy.Wrap(cc), nil
	}
}

// waitSlot takes a slot of the frontend's limit, first waiting while it or
// the global limit is full, and reports whether it got one before the view
// was closed. The global slot is taken after accepting (takeGlobal): a
// slot reserved by each socket's Accept, waiting in accept(2) for a
// connection that may never come, would keep the others from the last
// slots.
func (v *acceptView) waitSlot() bool {
	for {
		var freed <-chan struct{}
		switch {
		case v.global.full():
			freed = v.global.waitFreed()
			if !v.global.full() {
				continue
			}
			v.global.hit(v.log, "[global] max-connections reached: new connections wait until one closes", "max-connections", v.global.max.Load())
		case v.fe.take():
			return true
		default:
			freed = v.fe.waitFreed()
			if !v.fe.full() {
				continue
			}
			v.fe.hit(v.log, "[frontend] max-connections reached: new connections wait until one closes", "max-connections", v.fe.max.Load())
		}
		if !v.waitFreed(freed) {
			return false
		}
	}
}

// waitFreed waits until freed is closed, and reports false if the view
// closed first. While it waits, an HTTP frontend looks every reclaimEvery
// for a client waiting in the socket's backlog, and closes an idle
// connection of its own to make room for it.
func (v *acceptView) waitFreed(freed <-chan struct{}) bool {
	var tick <-chan time.Time
	if v.httpConns != nil {
		t := time.NewTicker(reclaimEvery)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-freed:
			return true
		case <-v.stop:
			return false
		case <-tick:
			if n := backlog(v.sock); n > 0 && v.httpConns.reclaim(min(n, reclaimBatch)) > 0 {
				return true
			}
		}
	}
}

// takeGlobal takes a slot of the global limit for a connection just
// accepted, waiting for one if another socket took the last meanwhile; a
// view that closes meanwhile takes it over the limit, since the
// connection is already there.
func (v *acceptView) takeGlobal() {
	for !v.global.take() {
		freed := v.global.waitFreed()
		if v.global.take() {
			return
		}
		v.global.hit(v.log, "[global] max-connections reached: new connections wait until one closes", "max-connections", v.global.max.Load())
		select {
		case <-freed:
		case <-v.stop:
			v.global.open.Add(1)
			return
		}
	}
}

// pause waits for a connection to close, for up to localRetry.
func (v *acceptView) pause() {
	t := time.NewTimer(localRetry)
	defer t.Stop()
	select {
	case <-v.global.waitFreed():
	case <-t.C:
	case <-v.stop:
	}
}

// finish makes the server accept for d more, then stop: for a socket that
// closes next, whose connections are still being set up (one round trip)
// or are waiting in its queue.
func (v *acceptView) finish(d time.Duration) {
	v.closed.Store(true)
	v.sock.SetDeadline(time.Now().Add(d))
	time.AfterFunc(d, v.stopWaiting)
}

// Close wakes the blocked Accept with a deadline in the past, or from its
// wait for a slot.
func (v *acceptView) Close() error {
	v.closed.Store(true)
	v.stopWaiting()
	return v.sock.SetDeadline(time.Unix(1, 0))
}

func (v *acceptView) stopWaiting() { v.stopOnce.Do(func() { close(v.stop) }) }

func (v *acceptView) Addr() net.Addr { return v.sock.Addr() }

// loadTLS reads the certificates of an https frontend: its own, the
// default, and those of the [host] sections it lists, served by SNI.
func loadTLS(cfg *config.Config, fc config.Frontend, m *acme.Manager) (*tls.Config, error) {
	load := func(section, certFile, keyFile string) (*tls.Certificate, error) {
		cert, err := cfg.KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("%s: certfile %s, keyfile %s: %w", section, certFile, keyFile, err)
		}
		return &cert, nil
	}
	var def *tls.Certificate // none when every host's comes from ACME
	if fc.CertFile != "" || fc.KeyFile != "" {
		var err error
		if def, err = load("frontend "+fc.Name, fc.CertFile, fc.KeyFile); err != nil {
			return nil, err
		}
	}
	byName := map[string]*tls.Certificate{}
	for _, name := range fc.Hosts {
		hc := cfg.HostFor(name)
		if hc.CertFile == "" {
			continue // none, or from ACME
		}
		cert, err := load("host "+strings.Join(hc.Names, " "), hc.CertFile, hc.KeyFile)
		if err != nil {
			return nil, err
		}
		// SNI carries no port: "example.com:8443" serves example.com.
		if h, _, err := net.SplitHostPort(name); err == nil {
			name = h
		}
		byName[name] = cert
	}
	minVersion := uint16(tls.VersionTLS12)
	if fc.TLSMinVersion == "1.3" {
		minVersion = tls.VersionTLS13
	}
	var protos []string // a tcp frontend's clients speak what they like
	switch {
	case fc.Mode == config.ModeTCP:
	case fc.HTTP2:
		protos = []string{"h2", "http/1.1"}
	default:
		protos = []string{"http/1.1"}
	}
	var managed map[string]bool
	if m != nil {
		managed = acmeNames(cfg, fc)
	}
	return &tls.Config{
		GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			if managed[normalSNI(hello.ServerName)] {
				if c, err := m.GetCertificate(hello); err == nil {
					return c, nil
				}
				// None yet: served as a name without a certificate is.
			}
			return pickCertificate(byName, def, hello.ServerName), nil
		},
		GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			return challengeConfig(m, managed, hello), nil
		},
		MinVersion: minVersion,
		NextProtos: protos,
	}, nil
}

// normalSNI is an SNI name as certificates are looked up by.
func normalSNI(sni string) string { return strings.ToLower(strings.TrimSuffix(sni, ".")) }

// pickCertificate returns the certificate for an SNI name: an exact match,
// else a wildcard for its first label ("*.example.com" for a.example.com),
// else the frontend's own.
func pickCertificate(byName map[string]*tls.Certificate, def *tls.Certificate, sni string) *tls.Certificate {
	if len(byName) == 0 || sni == "" {
		return def
	}
	sni = normalSNI(sni)
	if c := byName[sni]; c != nil {
		return c
	}
	if _, rest, ok := strings.Cut(sni, "."); ok {
		if c := byName["*."+rest]; c != nil {
			return c
		}
	}
	return def
}

// serverLog sorts net/http's server messages: failing to accept (out of file
// descriptors, say) is an error; per-connection noise (TLS handshakes of
// scanners, malformed requests) is for debugging only.
type serverLog struct{ log *slog.Logger }

func (s serverLog) Write(p []byte) (int, error) {
	msg := strings.TrimSpace(string(p))
	if strings.HasPrefix(msg, "http: Accept error") {
		s.log.Error(msg)
	} else {
		s.log.Debug(msg)
	}
	return len(p), nil
}
