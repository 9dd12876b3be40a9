package acceptproxy

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"
)

// pair returns the two ends of a loopback TCP connection: the client's and
// the server's.
func pair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

func TestAllowed(t *testing.T) {
	t.Parallel()
	p := &Policy{From: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("2001:db8::/32")}}
	for addr, want := range map[string]bool{
		"10.1.2.3:5":          true,
		"[::ffff:10.1.2.3]:5": true,
		"[2001:db8::1]:5":     true,
		"11.0.0.1:5":          false,
		"[2001:db9::1]:5":     false,
	} {
		ta, _ := net.ResolveTCPAddr("tcp", addr)
		if got := p.Allowed(ta); got != want {
			t.Errorf("%s: allowed %v, want %v", addr, got, want)
		}
	}
	if !(&Policy{}).Allowed(&net.TCPAddr{IP: net.IPv4(192, 0, 2, 1)}) {
		t.Error("an empty From refuses a peer")
	}
}

func TestRead(t *testing.T) {
	t.Parallel()
	src := &net.TCPAddr{IP: net.ParseIP("203.0.113.7"), Port: 40000}
	dst := &net.TCPAddr{IP: net.ParseIP("192.0.2.1"), Port: 443}
	for _, tc := range []struct {
		name     string
		hdr      *proxyproto.Header
		local    bool // the header's addresses are not the client's
		trailing string
	}{
		{"v1", proxyproto.HeaderProxyFromAddrs(1, src, dst), false, ""},
		{"v2 with bytes after it", proxyproto.HeaderProxyFromAddrs(2, src, dst), false, "early bytes"},
		{"v2 LOCAL", &proxyproto.Header{Version: 2, Command: proxyproto.LOCAL, TransportProtocol: proxyproto.UNSPEC}, true, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			client, server := pair(t)
			raw, err := tc.hdr.Format()
			if err != nil {
				t.Fatal(err)
			}
			client.Write(append(raw, tc.trailing...))
			gotSrc, gotDst, early, err := (&Policy{Timeout: 5 * time.Second}).Read(server)
			if err != nil {
				t.Fatal(err)
			}
			wantSrc, wantDst := src.String(), dst.String()
			if tc.local {
				wantSrc, wantDst = server.RemoteAddr().String(), server.LocalAddr().String()
			}
			if gotSrc.String() != wantSrc || gotDst.String() != wantDst || string(early) != tc.trailing {
				t.Errorf("got %v -> %v, early %q; want %s -> %s, %q", gotSrc, gotDst, early, wantSrc, wantDst, tc.trailing)
			}
		})
	}
}

func TestReadRefuses(t *testing.T) {
	t.Parallel()
	t.Run("no header", func(t *testing.T) {
		t.Parallel()
		client, server := pair(t)
		client.Write([]byte("GET / HTTP/1.1\r\n\r\n"))
		if _, _, _, err := (&Policy{Timeout: 5 * time.Second}).Read(server); err == nil {
			t.Error("no error")
		}
	})
	t.Run("silent", func(t *testing.T) {
		t.Parallel()
		_, server := pair(t)
		start := time.Now()
		_, _, _, err := (&Policy{Timeout: 100 * time.Millisecond}).Read(server)
		if err == nil || time.Since(start) > 5*time.Second {
			t.Errorf("err %v after %v", err, time.Since(start))
		}
	})
	t.Run("peer not allowed", func(t *testing.T) {
		t.Parallel()
		_, server := pair(t)
		p := &Policy{From: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}
		if _, _, _, err := p.Read(server); !errors.Is(err, ErrPeerNotAllowed) {
			t.Errorf("err %v", err)
		}
	})
}

func TestWrapIsLazy(t *testing.T) {
	t.Parallel()
	client, server := pair(t)
	// Wrap returns at once though nothing was sent.
	c := (&Policy{Timeout: 5 * time.Second}).Wrap(server)
	hdr := proxyproto.HeaderProxyFromAddrs(2, &net.TCPAddr{IP: net.ParseIP("203.0.113.7"), Port: 1}, &net.TCPAddr{IP: net.ParseIP("192.0.2.1"), Port: 2})
	raw, _ := hdr.Format()
	client.Write(append(raw, "hello"...))
	if got := c.RemoteAddr().String(); got != "203.0.113.7:1" {
		t.Errorf("RemoteAddr %s", got)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "hello" {
		t.Errorf("read %q, %v", buf, err)
	}

	client2, server2 := pair(t)
	c2 := (&Policy{Timeout: 5 * time.Second}).Wrap(server2)
	client2.Write([]byte("GET / HTTP/1.1\r\n\r\n"))
	if _, err := c2.Read(buf); err == nil {
		t.Error("a connection without a header can be read")
	}
	if _, err := c2.Write([]byte("HTTP/1.0 400 Bad Request\r\n\r\n")); err == nil {
		t.Error("a connection without a header can be written to")
	}
}
