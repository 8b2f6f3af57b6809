package proxyproto

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParse(t *testing.T) {
	const rest = "GET / HTTP/1.1\r\n"
	bigTLV := tlv(0x04, make([]byte, 65535-12-3)) // fills the v2 length field to its maximum
	tests := []struct {
		name     string
		in       []byte
		src, dst string // "" means a nil address
		udp      bool
		err      error
		rest     string // what must be left unread after a good header
	}{
		{name: "v1 tcp4", in: v1Header("TCP4", "203.0.113.7", "198.51.100.1", 56324, 443),
			src: "203.0.113.7:56324", dst: "198.51.100.1:443"},
		{name: "v1 tcp6", in: v1Header("TCP6", "2001:db8::7", "2001:db8::1", 65535, 0),
			src: "[2001:db8::7]:65535", dst: "[2001:db8::1]:0"},
		{name: "v1 tcp6 with mapped ipv4", in: v1Header("TCP6", "::ffff:203.0.113.7", "2001:db8::1", 1, 2),
			src: "203.0.113.7:1", dst: "[2001:db8::1]:2"},
		{name: "v1 unknown bare", in: []byte("PROXY UNKNOWN\r\n")},
		{name: "v1 unknown with addresses", in: []byte("PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n")},
		{name: "v1 longest line", in: []byte("PROXY UNKNOWN " + strings.Repeat("x", 107-16) + "\r\n")},
		{name: "v1 line of 108 bytes", in: []byte("PROXY UNKNOWN " + strings.Repeat("x", 108-16) + "\r\n"), err: ErrInvalidHeader},
		{name: "v1 no CRLF", in: []byte("PROXY TCP4 1.2.3.4 5.6.7.8 1 2" + strings.Repeat(" ", 100)), err: ErrInvalidHeader},
		{name: "v1 LF alone", in: []byte("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"), err: ErrInvalidHeader},
		{name: "v1 stray CR", in: []byte("PROXY UNKNOWN a\rb\r\n"), err: ErrInvalidHeader},
		{name: "v1 double space", in: []byte("PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n"), err: ErrInvalidHeader},
		{name: "v1 trailing space", in: []byte("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n"), err: ErrInvalidHeader},
		{name: "v1 missing port", in: []byte("PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n"), err: ErrInvalidHeader},
		{name: "v1 protocol only", in: []byte("PROXY TCP4\r\n"), err: ErrInvalidHeader},
		{name: "v1 lowercase protocol", in: v1Header("tcp4", "1.2.3.4", "5.6.7.8", 1, 2), err: ErrInvalidHeader},
		{name: "v1 unknown protocol", in: v1Header("UDP4", "1.2.3.4", "5.6.7.8", 1, 2), err: ErrInvalidHeader},
		{name: "v1 tcp4 with ipv6", in: v1Header("TCP4", "::1", "5.6.7.8", 1, 2), err: ErrInvalidHeader},
		{name: "v1 tcp4 with mapped ipv4", in: v1Header("TCP4", "::ffff:1.2.3.4", "5.6.7.8", 1, 2), err: ErrInvalidHeader},
		{name: "v1 tcp6 with ipv4", in: v1Header("TCP6", "1.2.3.4", "::1", 1, 2), err: ErrInvalidHeader},
		{name: "v1 address with zone", in: v1Header("TCP6", "fe80::1%eth0", "::1", 1, 2), err: ErrInvalidHeader},
		{name: "v1 address with leading zero", in: v1Header("TCP4", "01.2.3.4", "5.6.7.8", 1, 2), err: ErrInvalidHeader},
		{name: "v1 hostname", in: v1Header("TCP4", "localhost", "5.6.7.8", 1, 2), err: ErrInvalidHeader},
		{name: "v1 port leading zero", in: []byte("PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n"), err: ErrInvalidHeader},
		{name: "v1 port out of range", in: []byte("PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n"), err: ErrInvalidHeader},
		{name: "v1 port signed", in: []byte("PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n"), err: ErrInvalidHeader},
		{name: "v1 port negative", in: []byte("PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n"), err: ErrInvalidHeader},
		{name: "v1 port too long", in: []byte("PROXY TCP4 1.2.3.4 5.6.7.8 100000 2\r\n"), err: ErrInvalidHeader},
		{name: "v1 truncated", in: []byte("PROXY TCP4 1.2.3.4 5.6"), err: ErrInvalidHeader},
		{name: "v1 signature truncated", in: []byte("PROX"), err: ErrInvalidHeader},
		{name: "empty input", in: nil, err: ErrInvalidHeader},
		{name: "not a header", in: []byte("GET / HTTP/1.1\r\n"), err: ErrNoHeader},
		{name: "not a header though it starts with P", in: []byte("POST / HTTP/1.1\r\n"), err: ErrNoHeader},
		{name: "TLS client hello", in: []byte{0x16, 0x03, 0x01, 0x00}, err: ErrNoHeader},

		{name: "v2 tcp4", in: v2Header(0x21, famTCP4, ap("203.0.113.7:56324"), ap("198.51.100.1:443"), nil),
			src: "203.0.113.7:56324", dst: "198.51.100.1:443"},
		{name: "v2 tcp6", in: v2Header(0x21, famTCP6, ap("[2001:db8::7]:1"), ap("[2001:db8::1]:443"), nil),
			src: "[2001:db8::7]:1", dst: "[2001:db8::1]:443"},
		{name: "v2 udp4", in: v2Header(0x21, famUDP4, ap("203.0.113.7:53"), ap("198.51.100.1:53"), nil),
			src: "203.0.113.7:53", dst: "198.51.100.1:53", udp: true},
		{name: "v2 udp6", in: v2Header(0x21, famUDP6, ap("[2001:db8::7]:53"), ap("[2001:db8::1]:53"), nil),
			src: "[2001:db8::7]:53", dst: "[2001:db8::1]:53", udp: true},
		{name: "v2 TLVs skipped", in: v2Header(0x21, famTCP4, ap("203.0.113.7:1"), ap("198.51.100.1:2"),
			append(tlv(0x01, []byte("h2")), tlv(0x05, []byte("unique-id"))...)),
			src: "203.0.113.7:1", dst: "198.51.100.1:2"},
		{name: "v2 length at its maximum", in: v2Header(0x21, famTCP4, ap("203.0.113.7:1"), ap("198.51.100.1:2"), bigTLV),
			src: "203.0.113.7:1", dst: "198.51.100.1:2"},
		{name: "v2 local", in: v2Header(0x20, famTCP4, ap("203.0.113.7:1"), ap("198.51.100.1:2"), nil)},
		{name: "v2 local with any family", in: v2Header(0x20, 0x77, ap("203.0.113.7:1"), ap("198.51.100.1:2"), nil)},
		{name: "v2 unspec", in: v2Header(0x21, famUnspec, ap("203.0.113.7:1"), ap("198.51.100.1:2"), tlv(1, []byte("x")))},
		{name: "v2 unix", in: v2Header(0x21, famUnixSock, ap("203.0.113.7:1"), ap("198.51.100.1:2"), nil)},
		{name: "v2 version 1", in: v2Header(0x11, famTCP4, ap("203.0.113.7:1"), ap("198.51.100.1:2"), nil), err: ErrInvalidHeader},
		{name: "v2 unknown command", in: v2Header(0x22, famTCP4, ap("203.0.113.7:1"), ap("198.51.100.1:2"), nil), err: ErrInvalidHeader},
		{name: "v2 unknown family", in: v2Header(0x21, 0x13, ap("203.0.113.7:1"), ap("198.51.100.1:2"), nil), err: ErrInvalidHeader},
		{name: "v2 transport unspec", in: v2Header(0x21, 0x10, ap("203.0.113.7:1"), ap("198.51.100.1:2"), nil), err: ErrInvalidHeader},
		{name: "v2 length short for family", in: withLength(v2Header(0x21, famTCP6, ap("[::1]:1"), ap("[::1]:2"), nil), 12),
			err: ErrInvalidHeader},
		{name: "v2 truncated fixed part", in: v2Header(0x21, famTCP4, ap("203.0.113.7:1"), ap("198.51.100.1:2"), nil)[:14],
			err: ErrInvalidHeader},
		{name: "v2 truncated addresses", in: v2Header(0x21, famTCP6, ap("[::1]:1"), ap("[::1]:2"), nil)[:30],
			err: ErrInvalidHeader},
		{name: "v2 truncated TLVs", in: v2Header(0x21, famTCP4, ap("203.0.113.7:1"), ap("198.51.100.1:2"), tlv(1, []byte("abcdef")))[:32],
			err: ErrInvalidHeader},
		{name: "v2 length past the end", in: withLength(v2Header(0x21, famTCP4, ap("203.0.113.7:1"), ap("198.51.100.1:2"), nil), 65535),
			err: ErrInvalidHeader},
		{name: "v2 signature truncated", in: sigV2[:11], err: ErrInvalidHeader},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := tt.in
			if tt.err == nil {
				in = append(append([]byte{}, in...), rest...)
			}
			r := bufio.NewReader(bytes.NewReader(in))
			src, dst, err := Parse(r)
			if tt.err != nil {
				require.ErrorIs(t, err, tt.err)
				assert.Nil(t, src)
				assert.Nil(t, dst)
				if tt.err == ErrNoHeader {
					left, _ := io.ReadAll(r)
					assert.Equal(t, tt.in, left, "nothing consumed without a header")
				}
				return
			}
			require.NoError(t, err)
			left, _ := io.ReadAll(r)
			assert.Equal(t, rest, string(left), "exactly the header consumed")
			if tt.src == "" {
				assert.Nil(t, src)
				assert.Nil(t, dst)
				return
			}
			require.NotNil(t, src)
			require.NotNil(t, dst)
			assert.Equal(t, tt.src, src.String())
			assert.Equal(t, tt.dst, dst.String())
			network := "tcp"
			if tt.udp {
				network = "udp"
			}
			assert.Equal(t, network, src.Network())
			assert.Equal(t, network, dst.Network())
		})
	}
}

func withLength(h []byte, n uint16) []byte {
	h[14], h[15] = byte(n>>8), byte(n)
	return h
}

// TestParseStopsAtDivergence proves detection does not wait for a whole
// signature's worth of bytes once they cannot be one: a client that sends a
// short first message must not stall.
func TestParseStopsAtDivergence(t *testing.T) {
	for _, first := range []string{"G", "PO", "\r\n\r\n\x00X", "\x16"} {
		t.Run(first, func(t *testing.T) {
			server, client := net.Pipe()
			defer server.Close()
			defer client.Close()
			go func() { _, _ = client.Write([]byte(first)) }()
			_, _, err := Parse(bufio.NewReader(server))
			assert.ErrorIs(t, err, ErrNoHeader)
		})
	}
}

func BenchmarkParse(b *testing.B) {
	for _, bc := range []struct {
		name string
		in   []byte
	}{
		{"v1-tcp4", v1Header("TCP4", "203.0.113.7", "198.51.100.1", 56324, 443)},
		{"v1-tcp6", v1Header("TCP6", "2001:db8::7", "2001:db8::1", 56324, 443)},
		{"v2-tcp4", v2Header(0x21, famTCP4, ap("203.0.113.7:56324"), ap("198.51.100.1:443"), tlv(1, []byte("h2")))},
		{"v2-tcp6", v2Header(0x21, famTCP6, ap("[2001:db8::7]:56324"), ap("[2001:db8::1]:443"), nil)},
	} {
		b.Run(bc.name, func(b *testing.B) {
			src := bytes.NewReader(bc.in)
			r := bufio.NewReaderSize(src, readerSize)
			b.ReportAllocs()
			for b.Loop() {
				src.Reset(bc.in)
				r.Reset(src)
				if _, _, err := Parse(r); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
