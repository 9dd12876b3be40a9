// Package acceptproxy reads the PROXY protocol header (v1 or v2) that a
// load balancer in front of hipsterd sends at the start of each connection,
// and checks that the peer may send one.
//
// Besides the parsing, it has what a frontend needs around it: the list of
// trusted peers, the deadline, and the bytes that arrived with the header.
package acceptproxy

import (
	"errors"
	"net"
	"net/netip"
	"sync"
	"time"
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
// LOCAL command, which a balancer's own health checks send, and for one
// taken as LOCAL), and the bytes that came after the header in the same
// reads, which belong to the stream.
func (p *Policy) Read(c net.Conn) (src, dst net.Addr, early []byte, err error) {
	if !p.Allowed(c.RemoteAddr()) {
		return nil, nil, nil, ErrPeerNotAllowed
	}
	if p.Timeout > 0 {
		c.SetReadDeadline(time.Now().Add(p.Timeout))
		defer c.SetReadDeadline(time.Time{})
	}
	h, early, err := readHeader(c)
	if err != nil {
		return nil, nil, nil, err
	}
	if h.src == nil {
		return c.RemoteAddr(), c.LocalAddr(), early, nil
	}
	return h.src, h.dst, early, nil
}

// Wrap returns c reading its header lazily, on the first Read, Write,
// RemoteAddr or LocalAddr: it is for an accept loop that must not wait for
// any one client (net/http's). Those then return the header's addresses;
// without a valid header every Read and Write fails, so the server closes
// the connection. The caller checks Allowed first.
func (p *Policy) Wrap(c net.Conn) *Conn {
	return &Conn{Conn: c, p: p}
}

// Conn is a connection whose PROXY header is read on first use.
type Conn struct {
	net.Conn
	p        *Policy
	once     sync.Once
	src, dst net.Addr
	err      error
	// early are the bytes read with the header, which Read returns first.
	// Only Read touches it once the header is read, as only one goroutine
	// reads at a time.
	early []byte
}

func (c *Conn) header() error {
	c.once.Do(func() {
		c.src, c.dst, c.early, c.err = c.p.Read(c.Conn)
		if c.err != nil {
			c.src, c.dst = c.Conn.RemoteAddr(), c.Conn.LocalAddr()
		}
	})
	return c.err
}

func (c *Conn) Read(b []byte) (int, error) {
	if err := c.header(); err != nil {
		return 0, err
	}
	if len(c.early) > 0 {
		n := copy(b, c.early)
		if c.early = c.early[n:]; len(c.early) == 0 {
			c.early = nil // the header's buffer is not held for the connection's life
		}
		return n, nil
	}
	return c.Conn.Read(b)
}

func (c *Conn) Write(b []byte) (int, error) {
	if err := c.header(); err != nil {
		return 0, err
	}
	return c.Conn.Write(b)
}

// RemoteAddr is the client's address, as the header names it.
func (c *Conn) RemoteAddr() net.Addr {
	c.header()
	return c.src
}

// LocalAddr is the address the client connected to, as the header names it.
func (c *Conn) LocalAddr() net.Addr {
	c.header()
	return c.dst
}

// Raw returns the connection under the header.
func (c *Conn) Raw() net.Conn { return c.Conn }

// TCP returns the TCP connection under c, for the tunnel reactor, which
// works on the socket: nil while bytes read with the header are still to
// be read from c, which only c's Read returns.
func (c *Conn) TCP() *net.TCPConn {
	if c.header() != nil || len(c.early) > 0 {
		return nil
	}
	switch x := c.Conn.(type) {
	case *net.TCPConn:
		return x
	case interface{ TCP() *net.TCPConn }:
		return x.TCP()
	}
	return nil
}
