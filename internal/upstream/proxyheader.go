package upstream

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"

	"github.com/pires/go-proxyproto"
)

// clientAddrsKey is the context key of the addresses a PROXY header names.
type clientAddrsKey struct{}

type clientAddrs struct{ src, dst net.Addr }

// WithClient returns ctx carrying the address of the client a connection to
// a backend is made for, and the address that client connected to: what the
// PROXY header to a send-proxy backend names.
func WithClient(ctx context.Context, src, dst net.Addr) context.Context {
	return context.WithValue(ctx, clientAddrsKey{}, clientAddrs{src, dst})
}

// withRemote adds to ctx, unless it has them, the client addresses of an
// HTTP request: remoteAddr and the local address net/http put in ctx.
func withRemote(ctx context.Context, remoteAddr string) context.Context {
	if _, ok := ctx.Value(clientAddrsKey{}).(clientAddrs); ok {
		return ctx
	}
	dst, _ := ctx.Value(http.LocalAddrContextKey).(net.Addr)
	ap, err := netip.ParseAddrPort(remoteAddr)
	if dst == nil || err != nil {
		return ctx
	}
	return WithClient(ctx, net.TCPAddrFromAddrPort(ap), dst)
}

// dialTCP connects to addr and, for a send-proxy backend, sends the PROXY
// header first, before any TLS. The header names the client in ctx (see
// WithClient) or, without one, this connection's own ends: for a health
// check, the checker itself, as HAProxy's check-send-proxy does.
func (b *Backend) dialTCP(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := b.dialer.DialContext(ctx, network, addr)
	if err != nil || b.cfg.SendProxy == 0 {
		return c, err
	}
	ca, ok := ctx.Value(clientAddrsKey{}).(clientAddrs)
	if !ok {
		ca = clientAddrs{c.LocalAddr(), c.RemoteAddr()}
	}
	hdr := proxyproto.HeaderProxyFromAddrs(byte(b.cfg.SendProxy), ca.src, ca.dst)
	if _, err := hdr.WriteTo(c); err != nil {
		c.Close()
		return nil, fmt.Errorf("sending the PROXY header to %s: %w", addr, err)
	}
	return c, nil
}
