// Package acceptproxy reads the PROXY protocol header (v1 or v2) that a
// load balancer in front of hipsterd sends at the start of each connection,
// and checks that the peer may send one.
//
// The parsing is github.com/pires/go-proxyproto's; this package adds what
// a frontend needs around it: the list of trusted peers, the deadline, and
// the bytes that arrived with the header.
package acceptproxy

import (
	"bufio"
	"errors"
	"net"
	"net/netip"
	"time"

	"github.com/pires/go-proxyproto"
)

// Policy is a frontend's accept-proxy setting. Its zero value requires a
// header from every peer and waits for it without limit.
type Policy struct {
	// From, when not empty, are the only peers that may connect.
	From []netip.Prefix
	// Timeout bounds the wait for the header, so that a silent connection
	// cannot hold a slot; zero means no limit.
	Timeout time.Duration
}

// ErrPeerNotAllowed is the error of a peer outside Policy.From.
var ErrPeerNotAllowed = errors.New("peer not allowed to send a PROXY header (accept-proxy-from)")

// Allowed reports whether the peer at addr may send a header.
func (p *Policy) Allowed(addr net.Addr) bool {
	if len(p.From) == 0 {
		return true
	}
	ta, ok := addr.(*net.TCPAddr)
	if !ok {
		return false
	}
	ip, ok := netip.AddrFromSlice(ta.IP)
	if !ok {
		return false
	}
	ip = ip.Unmap()
	for _, pfx := range p.From {
		if pfx.Contains(ip) {
			return true
		}
	}
	return false
}

// Read reads the header at the start of c. It returns the client's address
// and the address the client connected to (c's own ends for a header of the
// LOCAL command, which a balancer's own health checks send), and the bytes
// that came after the header in the same read, which belong to the stream.
func (p *Policy) Read(c net.Conn) (src, dst net.Addr, early []byte, err error) {
	if !p.Allowed(c.RemoteAddr()) {
		return nil, nil, nil, ErrPeerNotAllowed
	}
	if p.Timeout > 0 {
		c.SetReadDeadline(time.Now().Add(p.Timeout))
		defer c.SetReadDeadline(time.Time{})
	}
	// A v1 header is at most 107 bytes, a v2 one without TLVs 52; 256
	// bytes take the usual ones, and a v2 header with more TLVs is read on.
	br := bufio.NewReaderSize(c, 256)
	hdr, err := proxyproto.Read(br)
	if err != nil {
		return nil, nil, nil, err
	}
	if n := br.Buffered(); n > 0 {
		early, _ = br.Peek(n)
	}
	src, dst = addrs(hdr, c)
	return src, dst, early, nil
}

func addrs(hdr *proxyproto.Header, c net.Conn) (src, dst net.Addr) {
	if hdr.Command.IsProxy() && hdr.SourceAddr != nil && hdr.DestinationAddr != nil {
		return hdr.SourceAddr, hdr.DestinationAddr
	}
	return c.RemoteAddr(), c.LocalAddr()
}

// Wrap returns c reading its header lazily, on the first Read, RemoteAddr or
// LocalAddr: it is for an accept loop that must not wait for any one client
// (net/http's). Those then return the header's addresses; without a valid
// header every Read and Write fails, so the server closes the connection.
// The caller checks Allowed first.
func (p *Policy) Wrap(c net.Conn) net.Conn {
	return proxyproto.NewConn(c, proxyproto.WithPolicy(proxyproto.REQUIRE), proxyproto.SetReadHeaderTimeout(p.Timeout))
}
