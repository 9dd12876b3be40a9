package acceptproxy

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net"
	"net/netip"
	"strconv"
)

// The PROXY protocol, as HAProxy's proxy-protocol.txt describes it. Only
// TCP over IPv4 or IPv6 carries a client address hipsterd uses; a header
// for any other family (AF_UNIX, UNSPEC, a v1 UNKNOWN line) is taken as a
// LOCAL one, as HAProxy takes it: the connection's own addresses stand.
// What cannot describe a stream (UDP), undefined bytes, a TLV running
// past the header and a CRC32c TLV that does not match are refused.

const (
	// v1Max is the longest v1 line, CRLF included: "PROXY UNKNOWN" and two
	// full IPv6 addresses and ports.
	v1Max = 107
	// v2Fixed is the part of a v2 header before its addresses.
	v2Fixed = 16
	// v2MaxLen bounds the length of a v2 header's addresses and TLVs:
	// enough for a client certificate in a TLV, small enough that a client
	// cannot make hipsterd hold much for it.
	v2MaxLen = 4096
)

var (
	sigV1 = []byte("PROXY ")
	sigV2 = []byte("\r\n\r\n\x00\r\nQUIT\n")
)

// errNoHeader is the error of a connection that does not open with a
// PROXY header.
var errNoHeader = errors.New("no PROXY header")

// header is what a PROXY header tells: the client's address and the
// address it connected to, or neither for a LOCAL header (and every header
// taken as one).
type header struct {
	src, dst net.Addr
}

// need reports how many bytes of the stream the header at the start of b
// takes: 0 while b does not hold it all yet, or an error once b cannot be
// the start of a valid header. It looks at what has arrived so far only,
// so that a header sent in pieces is waited for and one that cannot be
// valid is refused without waiting.
func need(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	switch b[0] {
	case sigV1[0]:
		n := min(len(b), len(sigV1))
		if !bytes.Equal(b[:n], sigV1[:n]) {
			return 0, errNoHeader
		}
		if i := bytes.IndexByte(b[:min(len(b), v1Max)], '\n'); i >= 0 {
			return i + 1, nil
		}
		if len(b) >= v1Max {
			return 0, errors.New("PROXY v1 header longer than 107 bytes")
		}
		return 0, nil
	case sigV2[0]:
		n := min(len(b), len(sigV2))
		if !bytes.Equal(b[:n], sigV2[:n]) {
			return 0, errNoHeader
		}
		if len(b) < v2Fixed {
			return 0, nil
		}
		l := int(binary.BigEndian.Uint16(b[14:16]))
		if l > v2MaxLen {
			return 0, fmt.Errorf("PROXY v2 header of %d bytes, above the limit of %d", l, v2MaxLen)
		}
		if len(b) < v2Fixed+l {
			return 0, nil
		}
		return v2Fixed + l, nil
	}
	return 0, errNoHeader
}

// parse parses a whole header, as need delimited it.
func parse(b []byte) (header, error) {
	if b[0] == sigV1[0] {
		return parseV1(b)
	}
	return parseV2(b)
}

// parseV1 parses "PROXY TCP4 SRC DST SPORT DPORT\r\n", strictly: single
// spaces, addresses of the family named, decimal ports without sign.
func parseV1(b []byte) (header, error) {
	line, ok := bytes.CutSuffix(b, []byte("\r\n"))
	if !ok || bytes.ContainsAny(line, "\r\n") {
		return header{}, errors.New("PROXY v1 header not ended by CRLF")
	}
	f := bytes.Split(line, []byte(" "))
	if len(f) >= 2 && string(f[1]) == "UNKNOWN" {
		// Whatever follows is to be ignored.
		return header{}, nil
	}
	if len(f) != 6 || string(f[1]) != "TCP4" && string(f[1]) != "TCP6" {
		return header{}, errors.New("PROXY v1 header is not TCP4, TCP6 or UNKNOWN with two addresses and two ports")
	}
	v4 := string(f[1]) == "TCP4"
	src, err1 := v1AddrPort(f[2], f[4], v4)
	dst, err2 := v1AddrPort(f[3], f[5], v4)
	if err := errors.Join(err1, err2); err != nil {
		return header{}, fmt.Errorf("PROXY v1 header: %w", err)
	}
	return header{src: net.TCPAddrFromAddrPort(src), dst: net.TCPAddrFromAddrPort(dst)}, nil
}

func v1AddrPort(addr, port []byte, v4 bool) (netip.AddrPort, error) {
	ip, err := netip.ParseAddr(string(addr))
	if err != nil || ip.Zone() != "" || ip.Is4() != v4 {
		return netip.AddrPort{}, fmt.Errorf("bad address %q", addr)
	}
	p, err := strconv.ParseUint(string(port), 10, 16)
	if err != nil || port[0] < '0' || port[0] > '9' || len(port) > 1 && port[0] == '0' {
		return netip.AddrPort{}, fmt.Errorf("bad port %q", port)
	}
	return netip.AddrPortFrom(ip, uint16(p)), nil
}

// v2 commands, and families and transports (high and low nibble).
const (
	cmdLocal = 0x20
	cmdProxy = 0x21

	famUnspec = 0x0
	famInet   = 0x1
	famInet6  = 0x2
	famUnix   = 0x3

	protoUnspec = 0x0
	protoStream = 0x1
	protoDgram  = 0x2
)

// addrLen is the length of the address block of each family.
var addrLen = [...]int{famUnspec: 0, famInet: 12, famInet6: 36, famUnix: 216}

func parseV2(b []byte) (header, error) {
	cmd, fam, proto := b[12], b[13]>>4, b[13]&0xf
	body := b[v2Fixed:]
	if cmd != cmdLocal && cmd != cmdProxy {
		return header{}, fmt.Errorf("PROXY v2 header: unknown version or command 0x%02x", cmd)
	}
	if fam > famUnix || proto > protoDgram || (fam == famUnspec) != (proto == protoUnspec) {
		return header{}, fmt.Errorf("PROXY v2 header: undefined family and protocol 0x%02x", b[13])
	}
	if cmd == cmdLocal {
		// The proxy's own connection (a health check): the block is
		// skipped, whatever it holds.
		return header{}, nil
	}
	if proto == protoDgram {
		return header{}, errors.New("PROXY v2 header for a datagram (UDP) flow on a stream")
	}
	n := addrLen[fam]
	if len(body) < n {
		return header{}, fmt.Errorf("PROXY v2 header: %d bytes for an address block of %d", len(body), n)
	}
	if err := checkTLVs(b, v2Fixed+n); err != nil {
		return header{}, err
	}
	switch fam {
	case famInet:
		return header{
			src: tcpAddr(netip.AddrFrom4([4]byte(body[0:4])), body[8:10]),
			dst: tcpAddr(netip.AddrFrom4([4]byte(body[4:8])), body[10:12]),
		}, nil
	case famInet6:
		return header{
			src: tcpAddr(netip.AddrFrom16([16]byte(body[0:16])), body[32:34]),
			dst: tcpAddr(netip.AddrFrom16([16]byte(body[16:32])), body[34:36]),
		}, nil
	}
	// AF_UNSPEC or AF_UNIX: no client address hipsterd could use, nor
	// trust in a log line; the connection's own addresses stand.
	return header{}, nil
}

func tcpAddr(ip netip.Addr, port []byte) *net.TCPAddr {
	return net.TCPAddrFromAddrPort(netip.AddrPortFrom(ip, binary.BigEndian.Uint16(port)))
}

// tlvCRC32C is the type of the TLV holding a CRC32c of the whole header.
const tlvCRC32C = 0x03

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// checkTLVs checks that the v2 header b from offset off is a sequence of
// whole TLVs (a type byte, a two-byte length and that many bytes) ending
// where b ends, and that a CRC32c TLV matches the header, as HAProxy
// checks it: a header damaged on the way must not name the client.
func checkTLVs(b []byte, off int) error {
	for rest := b[off:]; len(rest) > 0; {
		if len(rest) < 3 {
			return fmt.Errorf("PROXY v2 header: %d bytes left over after its TLVs", len(rest))
		}
		l := int(binary.BigEndian.Uint16(rest[1:3]))
		if 3+l > len(rest) {
			return fmt.Errorf("PROXY v2 header: TLV 0x%02x of %d bytes runs past the header", rest[0], l)
		}
		if rest[0] == tlvCRC32C {
			if l != 4 {
				return fmt.Errorf("PROXY v2 header: CRC32c TLV of %d bytes", l)
			}
			// The checksum is of the header with the TLV's value zeroed.
			at := len(b) - len(rest) + 3
			zeroed := bytes.Clone(b)
			clear(zeroed[at : at+4])
			if crc32.Checksum(zeroed, castagnoli) != binary.BigEndian.Uint32(rest[3:7]) {
				return errors.New("PROXY v2 header: its CRC32c does not match")
			}
		}
		rest = rest[3+l:]
	}
	return nil
}

// readHeader reads from r until it holds a whole header, and returns it
// with the bytes that came after it in the same reads. A header may arrive
// in pieces (the specification asks receivers to wait for all of it); the
// caller bounds the wait with a deadline.
func readHeader(r io.Reader) (header, []byte, error) {
	// A v1 header and a v2 one of TCP addresses fit, and so does what a
	// client sends with them, in most cases.
	buf := make([]byte, 0, 256)
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, make([]byte, v2Fixed+v2MaxLen-len(buf))...)[:len(buf)]
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		size, perr := need(buf)
		if perr != nil {
			return header{}, nil, perr
		}
		if size > 0 {
			h, err := parse(buf[:size])
			return h, buf[size:], err
		}
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return header{}, nil, fmt.Errorf("reading the PROXY header: %w", err)
		}
	}
}
