package proxyproto

import (
	"encoding/binary"
	"net/netip"
)

// Encoders for the tests: the package only reads headers.

func v1Header(proto, src, dst string, sport, dport int) []byte {
	return []byte("PROXY " + proto + " " + src + " " + dst + " " + itoa(sport) + " " + itoa(dport) + "\r\n")
}

func itoa(n int) string {
	if n == 0 {
		return "0"
	}
	var b [8]byte
	i := len(b)
	for ; n > 0; n /= 10 {
		i--
		b[i] = byte('0' + n%10)
	}
	return string(b[i:])
}

// v2Header builds a binary header; verCmd is 0x20 (LOCAL) or 0x21 (PROXY).
func v2Header(verCmd, fam byte, src, dst netip.AddrPort, tlvs []byte) []byte {
	var addrs []byte
	switch fam >> 4 {
	case 1:
		s, d := src.Addr().As4(), dst.Addr().As4()
		addrs = append(append(addrs, s[:]...), d[:]...)
	case 2:
		s, d := src.Addr().As16(), dst.Addr().As16()
		addrs = append(append(addrs, s[:]...), d[:]...)
	case 3:
		addrs = make([]byte, 216)
	}
	if fam>>4 == 1 || fam>>4 == 2 {
		addrs = binary.BigEndian.AppendUint16(addrs, src.Port())
		addrs = binary.BigEndian.AppendUint16(addrs, dst.Port())
	}
	h := append([]byte{}, sigV2...)
	h = append(h, verCmd, fam)
	h = binary.BigEndian.AppendUint16(h, uint16(len(addrs)+len(tlvs)))
	h = append(h, addrs...)
	return append(h, tlvs...)
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// tlv encodes one type-length-value record.
func tlv(typ byte, value []byte) []byte {
	b := []byte{typ}
	b = binary.BigEndian.AppendUint16(b, uint16(len(value)))
	return append(b, value...)
}
