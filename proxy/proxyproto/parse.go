// Package proxyproto accepts the PROXY protocol (versions 1 and 2) that an L4
// load balancer prepends to a TCP connection to tell the server who the
// client really is.
//
// It imports nothing of sekisho: which peers are trusted is its caller's
// to say.
//
// Specification: https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt
package proxyproto

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
)

// Errors reported by Parse and by the connections of a Listener. Each error
// returned wraps exactly one of them, to be checked with errors.Is.
var (
	// ErrNoHeader means the stream does not start with a PROXY signature.
	ErrNoHeader = errors.New("proxyproto: no PROXY header")
	// ErrInvalidHeader means a PROXY signature was followed by a header
	// that is malformed, truncated, too long or of an unknown version.
	ErrInvalidHeader = errors.New("proxyproto: invalid PROXY header")
	// ErrUntrustedHeader means a peer outside Listener.Trusted sent a PROXY
	// header: an attempt to spoof the client address.
	ErrUntrustedHeader = errors.New("proxyproto: PROXY header from an untrusted peer")
	// ErrHeaderRequired means a trusted peer sent data, or nothing at all
	// within the header timeout, without a PROXY header while
	// Listener.Required is set.
	ErrHeaderRequired = errors.New("proxyproto: PROXY header required")
)

const (
	// v1MaxLen is the longest v1 line, CRLF included, that the
	// specification allows.
	v1MaxLen = 107
	// v2HeaderLen is the fixed part of a v2 header: signature, version and
	// command, family, length.
	v2HeaderLen = 16
)

var (
	sigV1 = []byte("PROXY ")
	sigV2 = []byte("\r\n\r\n\x00\r\nQUIT\n")
)

// Parse reads one PROXY protocol header, version 1 or 2, from r and returns
// the source (client) and destination addresses it carries: *net.TCPAddr for
// TCP families, *net.UDPAddr for UDP ones. An IPv4-mapped IPv6 address (what
// a dual-stack balancer reports for an IPv4 client) is returned as IPv4. For
// the v2 LOCAL command (a health check from the balancer itself), the
// UNKNOWN (v1) or UNSPEC (v2) family and the v2 UNIX families, it consumes
// the header and returns nil addresses and no error: the caller then uses
// the connection's own endpoints.
//
// When the stream does not start with a signature, Parse consumes nothing and
// returns ErrNoHeader. Any other failure wraps ErrInvalidHeader and leaves r
// at an unspecified position. A v1 line is at most 107 bytes; a v2 header at
// most 16+65535, the most its 16-bit length field can say, and its TLVs are
// skipped without being buffered. r must have a buffer of at least 64 bytes
// (the default bufio size is fine). Parse is safe for concurrent use on
// distinct readers.
func Parse(r *bufio.Reader) (src, dst net.Addr, err error) {
	version, _, err := detect(r)
	switch {
	case errors.Is(err, ErrNoHeader):
		return nil, nil, err
	case err != nil:
		return nil, nil, truncated(err)
	}
	return parseVersion(r, version)
}

func parseVersion(r *bufio.Reader, version int) (src, dst net.Addr, err error) {
	if version == 1 {
		return parseV1(r)
	}
	return parseV2(r)
}

// detect peeks, without consuming, at just enough bytes to tell whether the
// stream starts with a v1 or v2 signature. It never waits for more bytes once
// those available already rule both signatures out, so a client that speaks
// first with a short message is not stalled. It returns the version (1 or 2),
// or ErrNoHeader, or the read error met with seen bytes of a signature
// prefix already read.
func detect(r *bufio.Reader) (version, seen int, err error) {
	for want := 1; want <= len(sigV2); {
		b, err := r.Peek(want)
		if err != nil {
			return 0, len(b), err
		}
		if n := min(r.Buffered(), len(sigV2)); n > len(b) {
			b, _ = r.Peek(n)
		}
		v1 := isPrefixOf(b, sigV1)
		v2 := isPrefixOf(b, sigV2)
		switch {
		case v1 && len(b) >= len(sigV1):
			return 1, len(b), nil
		case v2 && len(b) >= len(sigV2):
			return 2, len(b), nil
		case !v1 && !v2:
			return 0, 0, ErrNoHeader
		}
		want = len(b) + 1
	}
	return 0, 0, ErrNoHeader
}

// isPrefixOf reports whether b and sig agree on their common length.
func isPrefixOf(b, sig []byte) bool {
	n := min(len(b), len(sig))
	return bytes.Equal(b[:n], sig[:n])
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidHeader, fmt.Sprintf(format, args...))
}

func truncated(err error) error {
	if errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("%w: truncated: %w", ErrInvalidHeader, err)
}

// parseV1 reads a text header:
//
//	PROXY TCP4 192.0.2.1 198.51.100.1 56324 443\r\n
//
// Fields are separated by exactly one space, the line ends with CRLF and is
// at most 107 bytes long; anything else is rejected rather than guessed at.
func parseV1(r *bufio.Reader) (src, dst net.Addr, err error) {
	var buf [v1MaxLen]byte
	n := 0
	for {
		if n == len(buf) {
			return nil, nil, invalid("v1 header longer than %d bytes", v1MaxLen)
		}
		c, err := r.ReadByte()
		if err != nil {
			return nil, nil, truncated(err)
		}
		buf[n] = c
		n++
		if c == '\n' {
			break
		}
	}
	if n < len(sigV1)+2 || buf[n-2] != '\r' {
		return nil, nil, invalid("v1 header not terminated by CRLF")
	}
	line := buf[len(sigV1) : n-2]
	if bytes.IndexByte(line, '\r') >= 0 {
		return nil, nil, invalid("stray CR in v1 header")
	}

	proto, rest, _ := bytes.Cut(line, []byte{' '})
	switch string(proto) {
	case "UNKNOWN":
		return nil, nil, nil
	case "TCP4", "TCP6":
	default:
		return nil, nil, invalid("v1 protocol %q", string(proto))
	}
	var fields [4][]byte
	for i := range fields {
		var ok bool
		fields[i], rest, ok = bytes.Cut(rest, []byte{' '})
		if ok != (i < len(fields)-1) {
			return nil, nil, invalid("v1 header needs 6 space-separated fields")
		}
	}
	want4 := string(proto) == "TCP4"
	srcIP, err := parseV1Addr(fields[0], want4)
	if err != nil {
		return nil, nil, err
	}
	dstIP, err := parseV1Addr(fields[1], want4)
	if err != nil {
		return nil, nil, err
	}
	srcPort, err := parsePort(fields[2])
	if err != nil {
		return nil, nil, err
	}
	dstPort, err := parsePort(fields[3])
	if err != nil {
		return nil, nil, err
	}
	src, dst = tcpPair(netip.AddrPortFrom(srcIP.Unmap(), srcPort), netip.AddrPortFrom(dstIP.Unmap(), dstPort))
	return src, dst, nil
}

func parseV1Addr(b []byte, want4 bool) (netip.Addr, error) {
	a, err := netip.ParseAddr(string(b))
	switch {
	case err != nil:
		return netip.Addr{}, invalid("v1 address %q", string(b))
	case want4 && !a.Is4():
		return netip.Addr{}, invalid("v1 TCP4 address %q is not IPv4", string(b))
	case !want4 && !a.Is6():
		return netip.Addr{}, invalid("v1 TCP6 address %q is not IPv6", string(b))
	case a.Zone() != "":
		return netip.Addr{}, invalid("v1 address %q has a zone", string(b))
	}
	return a, nil
}

// parsePort accepts 0..65535 in decimal without sign or leading zero, as the
// specification writes it.
func parsePort(b []byte) (uint16, error) {
	if len(b) == 0 || len(b) > 5 || (b[0] == '0' && len(b) > 1) {
		return 0, invalid("v1 port %q", string(b))
	}
	var n uint32
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, invalid("v1 port %q", string(b))
		}
		n = n*10 + uint32(c-'0')
	}
	if n > 0xffff {
		return 0, invalid("v1 port %q out of range", string(b))
	}
	return uint16(n), nil
}

// v2 families: the high nibble is the address family, the low nibble the
// transport.
const (
	famUnspec    = 0x00
	famTCP4      = 0x11
	famUDP4      = 0x12
	famTCP6      = 0x21
	famUDP6      = 0x22
	famUnixSock  = 0x31
	famUnixDgram = 0x32
)

// parseV2 reads a binary header: 12-byte signature, version and command,
// family, a big-endian length, then the addresses and TLVs in that length.
func parseV2(r *bufio.Reader) (src, dst net.Addr, err error) {
	hdr, err := r.Peek(v2HeaderLen)
	if err != nil {
		return nil, nil, truncated(err)
	}
	verCmd, fam := hdr[12], hdr[13]
	length := int(binary.BigEndian.Uint16(hdr[14:]))
	_, _ = r.Discard(v2HeaderLen)
	if verCmd>>4 != 2 {
		return nil, nil, invalid("v2 version %d", verCmd>>4)
	}
	switch verCmd & 0x0f {
	case 0x0: // LOCAL: the balancer speaking for itself; addresses are ignored.
		return nil, nil, skip(r, length)
	case 0x1: // PROXY
	default:
		return nil, nil, invalid("v2 command %#x", verCmd&0x0f)
	}

	var need int
	switch fam {
	case famUnspec:
		need = 0
	case famTCP4, famUDP4:
		need = 12
	case famTCP6, famUDP6:
		need = 36
	case famUnixSock, famUnixDgram:
		need = 216
	default:
		return nil, nil, invalid("v2 family %#x", fam)
	}
	if length < need {
		return nil, nil, invalid("v2 length %d too short for family %#x", length, fam)
	}
	if need == 0 || need == 216 {
		// Nothing a TCP server can use: the caller keeps the real endpoints.
		return nil, nil, skip(r, length)
	}

	a, err := r.Peek(need)
	if err != nil {
		return nil, nil, truncated(err)
	}
	var srcIP, dstIP netip.Addr
	if need == 12 {
		srcIP = netip.AddrFrom4([4]byte(a[0:4]))
		dstIP = netip.AddrFrom4([4]byte(a[4:8]))
	} else {
		srcIP = netip.AddrFrom16([16]byte(a[0:16]))
		dstIP = netip.AddrFrom16([16]byte(a[16:32]))
	}
	ports := a[need-4:]
	srcAP := netip.AddrPortFrom(srcIP.Unmap(), binary.BigEndian.Uint16(ports[0:]))
	dstAP := netip.AddrPortFrom(dstIP.Unmap(), binary.BigEndian.Uint16(ports[2:]))
	if err := skip(r, length); err != nil {
		return nil, nil, err
	}
	if fam&0x0f == 0x2 {
		src, dst = udpPair(srcAP, dstAP)
		return src, dst, nil
	}
	src, dst = tcpPair(srcAP, dstAP)
	return src, dst, nil
}

// skip discards n bytes (TLVs, or a block the caller does not use) without
// buffering them.
func skip(r *bufio.Reader, n int) error {
	if _, err := r.Discard(n); err != nil {
		return truncated(err)
	}
	return nil
}

// tcpPair and udpPair build both addresses of a header in one allocation:
// the header is read once per connection, but connections can be many.
func tcpPair(src, dst netip.AddrPort) (net.Addr, net.Addr) {
	p := new(struct {
		src, dst net.TCPAddr
		ips      [2 * net.IPv6len]byte
	})
	p.src = net.TCPAddr{IP: putIP(p.ips[:net.IPv6len], src.Addr()), Port: int(src.Port())}
	p.dst = net.TCPAddr{IP: putIP(p.ips[net.IPv6len:], dst.Addr()), Port: int(dst.Port())}
	return &p.src, &p.dst
}

func udpPair(src, dst netip.AddrPort) (net.Addr, net.Addr) {
	p := new(struct {
		src, dst net.UDPAddr
		ips      [2 * net.IPv6len]byte
	})
	p.src = net.UDPAddr{IP: putIP(p.ips[:net.IPv6len], src.Addr()), Port: int(src.Port())}
	p.dst = net.UDPAddr{IP: putIP(p.ips[net.IPv6len:], dst.Addr()), Port: int(dst.Port())}
	return &p.src, &p.dst
}

// putIP writes a into buf (16 bytes) and returns it as a net.IP of the
// address's own length, capped so that no append can reach past it.
func putIP(buf []byte, a netip.Addr) net.IP {
	if a.Is4() {
		b := a.As4()
		return net.IP(buf[:copy(buf[:net.IPv4len:net.IPv4len], b[:]):net.IPv4len])
	}
	b := a.As16()
	return net.IP(buf[:copy(buf[:net.IPv6len:net.IPv6len], b[:]):net.IPv6len])
}
