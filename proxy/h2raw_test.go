package proxy

import (
	"bufio"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A few HTTP/2 frames written by hand, enough for a client that misbehaves
// on purpose: net/http's own client cannot be made to.

// h2Frame is one frame on the wire.
func h2Frame(typ, flags byte, stream uint32, payload []byte) []byte {
	f := make([]byte, h2FrameHeaderLen, h2FrameHeaderLen+len(payload))
	f[0], f[1], f[2] = byte(len(payload)>>16), byte(len(payload)>>8), byte(len(payload))
	f[3], f[4] = typ, flags
	binary.BigEndian.PutUint32(f[5:], stream)
	return append(f, payload...)
}

// hpackInt appends v as an HPACK integer with an n-bit prefix whose other
// bits are first's (RFC 7541 §5.1).
func hpackInt(b []byte, first byte, n uint, v int) []byte {
	max := 1<<n - 1
	if v < max {
		return append(b, first|byte(v))
	}
	b = append(b, first|byte(max))
	for v -= max; v >= 128; v >>= 7 {
		b = append(b, byte(v&0x7f)|0x80)
	}
	return append(b, byte(v))
}

// hpackBlock encodes fields (name, value pairs) as literals without
// indexing and without Huffman coding: no decoder state to keep in step.
func hpackBlock(fields ...string) []byte {
	var b []byte
	for i := 0; i+1 < len(fields); i += 2 {
		b = append(b, 0)
		b = hpackInt(b, 0, 7, len(fields[i]))
		b = append(b, fields[i]...)
		b = hpackInt(b, 0, 7, len(fields[i+1]))
		b = append(b, fields[i+1]...)
	}
	return b
}

// h2GetBlock is the header block of a GET of path.
func h2GetBlock(scheme, path string) []byte {
	return hpackBlock(":method", "GET", ":scheme", scheme, ":path", path, ":authority", "edge.test")
}

// h2RawConn opens an HTTP/2 connection to addr (over TLS with ALPN h2 when
// tc is not nil), sends the preface and an empty SETTINGS, and reads up to
// the server's SETTINGS, which it acknowledges: nothing the client sends
// later comes between the frames of a header block.
func h2RawConn(t *testing.T, addr string, tc *tls.Config) net.Conn {
	t.Helper()
	var c net.Conn
	var err error
	if tc != nil {
		tc = tc.Clone()
		tc.NextProtos = []string{"h2"}
		c, err = tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, tc)
		require.NoError(t, err)
		require.Equal(t, "h2", c.(*tls.Conn).ConnectionState().NegotiatedProtocol)
	} else {
		c, err = net.DialTimeout("tcp", addr, 5*time.Second)
		require.NoError(t, err)
	}
	t.Cleanup(func() { c.Close() })
	_, err = c.Write(append([]byte(h2ClientPreface), h2Frame(0x4, 0, 0, nil)...))
	require.NoError(t, err)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	hdr := make([]byte, h2FrameHeaderLen)
	for {
		_, err := io.ReadFull(c, hdr)
		require.NoError(t, err)
		_, err = io.ReadFull(c, make([]byte, int(hdr[0])<<16|int(hdr[1])<<8|int(hdr[2])))
		require.NoError(t, err)
		if hdr[3] == 0x4 && hdr[4]&0x1 == 0 { // SETTINGS, not an ACK
			break
		}
	}
	_, err = c.Write(h2Frame(0x4, 0x1, 0, nil))
	require.NoError(t, err)
	return c
}

// h2Seen is what a raw client read from the server until the connection
// ended.
type h2Seen struct {
	goAway   bool
	code     uint32 // the GOAWAY's error code
	closedAt time.Time
	err      error // what ended the reading: EOF, a reset, or the deadline
}

// h2ReadAll reads frames from c until the connection ends or the deadline passes, on a goroutine of its
// own; the channel gets the result.
func h2ReadAll(c net.Conn, deadline time.Duration) <-chan h2Seen {
	ch := make(chan h2Seen, 1)
	c.SetReadDeadline(time.Now().Add(deadline))
	go func() {
		var seen h2Seen
		br := bufio.NewReader(c)
		hdr := make([]byte, h2FrameHeaderLen)
		for {
			if _, err := io.ReadFull(br, hdr); err != nil {
				seen.err, seen.closedAt = err, time.Now()
				ch <- seen
				return
			}
			payload := make([]byte, int(hdr[0])<<16|int(hdr[1])<<8|int(hdr[2]))
			if _, err := io.ReadFull(br, payload); err != nil {
				seen.err, seen.closedAt = err, time.Now()
				ch <- seen
				return
			}
			if hdr[3] == h2FrameGoAway {
				seen.goAway = true
				if len(payload) >= 8 {
					seen.code = binary.BigEndian.Uint32(payload[4:8])
				}
			}
		}
	}()
	return ch
}

// h2ResetFlood opens 10,000 streams on c, each followed by provoke(stream)
// (a RST_STREAM, or a frame that makes the server reset it), and checks
// that the server ends the connection with GOAWAY(ENHANCE_YOUR_CALM) and
// closes it rather than leaving it open.
func h2ResetFlood(t *testing.T, c net.Conn, scheme string, provoke func(stream uint32) []byte) {
	t.Helper()
	seen := h2ReadAll(c, 10*time.Second)
	block := h2GetBlock(scheme, "/")
	bw := bufio.NewWriterSize(c, 64<<10)
	for i := 0; i < 10000; i++ {
		stream := uint32(2*i + 1)
		bw.Write(h2Frame(h2FrameHeaders, h2FlagEndHeaders|h2FlagEndStream, stream, block))
		bw.Write(provoke(stream))
		if i%50 == 49 && bw.Flush() != nil {
			break // closed on us
		}
	}
	bw.Flush()
	got := <-seen
	assert.True(t, got.goAway, "a GOAWAY arrived (read ended with %v)", got.err)
	assert.Equal(t, uint32(h2ErrEnhanceYourCalm), got.code, "ENHANCE_YOUR_CALM")
	var ne net.Error
	assert.False(t, errors.As(got.err, &ne) && ne.Timeout(), "the connection was closed, not left open: %v", got.err)
}
