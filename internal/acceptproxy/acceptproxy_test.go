package acceptproxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"

	"github.com/hipsterd/hipsterd/internal/testutil"
)

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
			client, server := testutil.Pair(t)
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
		client, server := testutil.Pair(t)
		client.Write([]byte("GET / HTTP/1.1\r\n\r\n"))
		if _, _, _, err := (&Policy{Timeout: 5 * time.Second}).Read(server); err == nil {
			t.Error("no error")
		}
	})
	t.Run("silent", func(t *testing.T) {
		t.Parallel()
		_, server := testutil.Pair(t)
		start := time.Now()
		_, _, _, err := (&Policy{Timeout: 100 * time.Millisecond}).Read(server)
		if err == nil || time.Since(start) > 5*time.Second {
			t.Errorf("err %v after %v", err, time.Since(start))
		}
	})
	t.Run("peer not allowed", func(t *testing.T) {
		t.Parallel()
		_, server := testutil.Pair(t)
		p := &Policy{From: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}
		if _, _, _, err := p.Read(server); !errors.Is(err, ErrPeerNotAllowed) {
			t.Errorf("err %v", err)
		}
	})
}

func TestWrapIsLazy(t *testing.T) {
	t.Parallel()
	client, server := testutil.Pair(t)
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

	client2, server2 := testutil.Pair(t)
	c2 := (&Policy{Timeout: 5 * time.Second}).Wrap(server2)
	client2.Write([]byte("GET / HTTP/1.1\r\n\r\n"))
	if _, err := c2.Read(buf); err == nil {
		t.Error("a connection without a header can be read")
	}
	if _, err := c2.Write([]byte("HTTP/1.0 400 Bad Request\r\n\r\n")); err == nil {
		t.Error("a connection without a header can be written to")
	}
}

// v2 builds a v2 header of cmd and fam with body after its fixed part.
func v2(cmd, fam byte, body []byte) []byte {
	b := append([]byte("\r\n\r\n\x00\r\nQUIT\n"), cmd, fam, byte(len(body)>>8), byte(len(body)))
	return append(b, body...)
}

func TestHeaders(t *testing.T) {
	t.Parallel()
	inet := []byte{203, 0, 113, 7, 192, 0, 2, 1, 0x9c, 0x40, 0, 80}
	unix := make([]byte, 216)
	copy(unix, "x\nfrontend:evil 2026/01/01 00:00:00.000000 6.6.6.6:1 h \"GET / HTTP/1.1\" 200 0")
	tlv := func(typ byte, n int, value string) []byte {
		return append([]byte{typ, byte(n >> 8), byte(n)}, value...)
	}
	for _, tc := range []struct {
		name string
		raw  []byte
		src  string // "" for a LOCAL header; "error" when refused
	}{
		{"v1 TCP4", []byte("PROXY TCP4 203.0.113.7 192.0.2.1 40000 80\r\n"), "203.0.113.7:40000"},
		{"v1 TCP6", []byte("PROXY TCP6 2001:db8::7 2001:db8::1 5555 5432\r\n"), "[2001:db8::7]:5555"},
		{"v1 UNKNOWN", []byte("PROXY UNKNOWN whatever\r\n"), ""},
		{"v1 TCP4 with an IPv6 address", []byte("PROXY TCP4 2001:db8::7 192.0.2.1 1 2\r\n"), "error"},
		{"v1 two spaces", []byte("PROXY TCP4  203.0.113.7 192.0.2.1 1 2\r\n"), "error"},
		{"v1 signed port", []byte("PROXY TCP4 203.0.113.7 192.0.2.1 +1 2\r\n"), "error"},
		{"v1 port out of range", []byte("PROXY TCP4 203.0.113.7 192.0.2.1 65536 2\r\n"), "error"},
		{"v1 bare LF", []byte("PROXY TCP4 203.0.113.7 192.0.2.1 1 2\n"), "error"},
		{"v1 zone", []byte("PROXY TCP6 fe80::1%eth0 2001:db8::1 1 2\r\n"), "error"},
		{"v1 too long", append([]byte("PROXY UNKNOWN "), bytes.Repeat([]byte("a"), 120)...), "error"},
		{"v2 TCP4", v2(0x21, 0x11, inet), "203.0.113.7:40000"},
		{"v2 TCP4 with TLVs", v2(0x21, 0x11, append(append(inet, tlv(0x04, 0, "")...), tlv(0xe0, 3, "abc")...)), "203.0.113.7:40000"},
		{"v2 LOCAL", v2(0x20, 0x00, nil), ""},
		{"v2 LOCAL with an address block", v2(0x20, 0x11, inet), ""},
		{"v2 UNIX stream, taken as LOCAL", v2(0x21, 0x31, unix), ""},
		{"v2 UNIX datagram", v2(0x21, 0x32, unix), "error"},
		{"v2 UDP4", v2(0x21, 0x12, inet), "error"},
		{"v2 UDP6", v2(0x21, 0x22, make([]byte, 36)), "error"},
		{"v2 undefined family", v2(0x21, 0x41, inet), "error"},
		{"v2 undefined transport", v2(0x21, 0x13, inet), "error"},
		{"v2 unknown command", v2(0x22, 0x11, inet), "error"},
		{"v2 version 1", v2(0x11, 0x11, inet), "error"},
		{"v2 TLV past the header", v2(0x21, 0x11, append(inet, tlv(0xe0, 200, "abc")...)), "error"},
		{"v2 TLV header cut", v2(0x21, 0x11, append(inet, 0xe0, 0)), "error"},
		{"v2 short address block", v2(0x21, 0x21, inet), "error"},
		{"v2 too long", v2(0x21, 0x11, append(inet, make([]byte, 5000)...)), "error"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			client, server := testutil.Pair(t)
			go client.Write(append(tc.raw, "after"...))
			src, _, early, err := (&Policy{Timeout: 5 * time.Second}).Read(server)
			switch {
			case tc.src == "error":
				if err == nil {
					t.Errorf("accepted, client %v", src)
				}
			case err != nil:
				t.Errorf("refused: %v", err)
			case tc.src == "" && src.String() != server.RemoteAddr().String(), tc.src != "" && src.String() != tc.src:
				t.Errorf("client %v, want %q (the connection's own if empty)", src, tc.src)
			case string(early) != "after":
				t.Errorf("early %q", early)
			}
		})
	}
}

// A header sent in pieces, with pauses, is waited for; one that cannot be
// valid is refused at its first wrong byte, without waiting.
func TestHeaderInPieces(t *testing.T) {
	t.Parallel()
	for _, raw := range [][]byte{
		[]byte("PROXY TCP4 203.0.113.7 192.0.2.1 40000 80\r\n"),
		v2(0x21, 0x11, []byte{203, 0, 113, 7, 192, 0, 2, 1, 0x9c, 0x40, 0, 80}),
	} {
		client, server := testutil.Pair(t)
		go func() {
			for i := 0; i < len(raw); i += 7 {
				client.Write(raw[i:min(i+7, len(raw))])
				time.Sleep(20 * time.Millisecond) // the attack itself: a slow sender
			}
			client.Write([]byte("after"))
		}()
		src, _, early, err := (&Policy{Timeout: 5 * time.Second}).Read(server)
		if err != nil || src.String() != "203.0.113.7:40000" {
			t.Fatalf("%q in pieces: %v, %v", raw[:5], src, err)
		}
		rest := make([]byte, 5)
		n := copy(rest, early)
		if _, err := io.ReadFull(server, rest[n:]); err != nil || string(rest) != "after" {
			t.Errorf("after the header: %q, %v", rest, err)
		}
	}

	client, server := testutil.Pair(t)
	client.Write([]byte("PROXY TCP4 1.2.3.4")) // never finished
	start := time.Now()
	if _, _, _, err := (&Policy{Timeout: 200 * time.Millisecond}).Read(server); err == nil || time.Since(start) < 150*time.Millisecond {
		t.Errorf("unfinished header: %v after %v", err, time.Since(start))
	}
	client, server = testutil.Pair(t)
	client.Write([]byte("PROXZ"))
	start = time.Now()
	if _, _, _, err := (&Policy{Timeout: 5 * time.Second}).Read(server); err == nil || time.Since(start) > 2*time.Second {
		t.Errorf("a wrong signature: %v after %v", err, time.Since(start))
	}
}

// Read as a frontend reads: the TCP connection is offered to the tunnel
// reactor only once the bytes read with the header were read from Conn.
func TestConnTCP(t *testing.T) {
	t.Parallel()
	client, server := testutil.Pair(t)
	c := (&Policy{Timeout: 5 * time.Second}).Wrap(server)
	client.Write([]byte("PROXY TCP4 203.0.113.7 192.0.2.1 1 2\r\nhi"))
	if c.RemoteAddr().String() != "203.0.113.7:1" || c.LocalAddr().String() != "192.0.2.1:2" {
		t.Errorf("addresses %v %v", c.RemoteAddr(), c.LocalAddr())
	}
	if c.TCP() != nil {
		t.Error("TCP() while bytes read with the header wait")
	}
	buf := make([]byte, 2)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "hi" {
		t.Fatalf("read %q, %v", buf, err)
	}
	if c.TCP() != server {
		t.Error("TCP() is not the socket once they were read")
	}
}

// Whatever a client sends, the parser neither panics nor waits for a
// header that could not be valid, and what it accepts names a TCP client
// or none (LOCAL); a header that arrives a byte at a time is read as one
// that arrives whole.
func FuzzHeader(f *testing.F) {
	inet := []byte{203, 0, 113, 7, 192, 0, 2, 1, 0x9c, 0x40, 0, 80}
	for _, seed := range [][]byte{
		[]byte("PROXY TCP4 203.0.113.7 192.0.2.1 40000 80\r\nGET"),
		[]byte("PROXY TCP6 2001:db8::7 2001:db8::1 5555 5432\r\n"),
		[]byte("PROXY UNKNOWN\r\n"),
		v2(0x21, 0x11, inet),
		v2(0x21, 0x11, append(inet, 0xe0, 0, 1, 'x')),
		v2(0x20, 0x00, nil),
		v2(0x21, 0x31, make([]byte, 216)),
		v2(0x21, 0x12, inet),
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		size, err := need(b)
		if err != nil || size == 0 {
			return
		}
		for i := range size {
			if n, err := need(b[:i]); n != 0 || err != nil {
				t.Fatalf("%q: %d bytes of a %d-byte header give %d, %v", b, i, size, n, err)
			}
		}
		h, err := parse(b[:size])
		if err != nil {
			return
		}
		if (h.src == nil) != (h.dst == nil) {
			t.Fatalf("%q: %v -> %v", b, h.src, h.dst)
		}
		for _, a := range []net.Addr{h.src, h.dst} {
			if a == nil {
				continue
			}
			ta, ok := a.(*net.TCPAddr)
			if !ok || (ta.IP.To4() == nil && len(ta.IP) != net.IPv6len) || strings.ContainsAny(a.String(), " \r\n\"\\") {
				t.Fatalf("%q: address %#v", b, a)
			}
		}
	})
}
