package proxyproto

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
)

// FuzzParse checks that Parse never panics, fails only with its own errors,
// never reads past the longest legal header, and on success returns a
// consistent pair of addresses.
func FuzzParse(f *testing.F) {
	seeds := [][]byte{
		v1Header("TCP4", "203.0.113.7", "198.51.100.1", 56324, 443),
		v1Header("TCP6", "2001:db8::7", "::ffff:1.2.3.4", 1, 65535),
		[]byte("PROXY UNKNOWN\r\n"),
		[]byte("PROXY UNKNOWN 1 2 3\r\n"),
		[]byte("PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n"),
		[]byte("PROXY TCP4 1.2.3.4"),
		[]byte("GET / HTTP/1.1\r\n"),
		v2Header(0x21, famTCP4, ap("203.0.113.7:56324"), ap("198.51.100.1:443"), tlv(1, []byte("h2"))),
		v2Header(0x21, famTCP6, ap("[2001:db8::7]:1"), ap("[2001:db8::1]:2"), nil),
		v2Header(0x21, famUDP4, ap("203.0.113.7:53"), ap("198.51.100.1:53"), nil),
		v2Header(0x20, famUnspec, ap("0.0.0.0:0"), ap("0.0.0.0:0"), nil),
		v2Header(0x21, famUnixSock, ap("0.0.0.0:0"), ap("0.0.0.0:0"), nil),
		withLength(v2Header(0x21, famTCP6, ap("[::1]:1"), ap("[::1]:2"), nil), 12),
		sigV2,
	}
	for _, s := range seeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		counter := &countingReader{r: bytes.NewReader(in)}
		r := bufio.NewReaderSize(counter, readerSize)
		src, dst, err := Parse(r)
		if err != nil {
			if !errors.Is(err, ErrNoHeader) && !errors.Is(err, ErrInvalidHeader) {
				t.Fatalf("error %v wraps neither ErrNoHeader nor ErrInvalidHeader", err)
			}
			if src != nil || dst != nil {
				t.Fatalf("addresses %v, %v returned with error %v", src, dst, err)
			}
			return
		}
		consumed := counter.n - r.Buffered()
		if bytes.HasPrefix(in, sigV1) && consumed > v1MaxLen {
			t.Fatalf("v1 header of %d bytes accepted", consumed)
		}
		if consumed > v2HeaderLen+65535 {
			t.Fatalf("header of %d bytes accepted", consumed)
		}
		if (src == nil) != (dst == nil) {
			t.Fatalf("one nil address: %v, %v", src, dst)
		}
		if src == nil {
			return
		}
		checkAddr(t, src)
		checkAddr(t, dst)
		if src.Network() != dst.Network() {
			t.Fatalf("networks differ: %s, %s", src.Network(), dst.Network())
		}
	})
}

func checkAddr(t *testing.T, a net.Addr) {
	t.Helper()
	ip := ipOf(a)
	if len(ip) != net.IPv4len && len(ip) != net.IPv6len {
		t.Fatalf("address %v has an IP of %d bytes", a, len(ip))
	}
	if _, _, err := net.SplitHostPort(a.String()); err != nil {
		t.Fatalf("address %q does not print as host:port: %v", a.String(), err)
	}
}

func ipOf(a net.Addr) net.IP {
	switch a := a.(type) {
	case *net.TCPAddr:
		if a.Zone != "" || a.Port < 0 || a.Port > 65535 {
			return nil
		}
		return a.IP
	case *net.UDPAddr:
		if a.Zone != "" || a.Port < 0 || a.Port > 65535 {
			return nil
		}
		return a.IP
	}
	return nil
}

type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}
