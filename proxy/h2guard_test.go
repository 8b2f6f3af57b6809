package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptrace"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestHTTP2HeaderBlockOverMaxHeaderBytes: on HTTP/2 a stream whose field
// section is over max_header_bytes is answered 431 and the connection goes
// on serving; one under it reaches the upstream, with X-Forwarded-Proto
// telling TLS from h2c (Request.TLS is right behind the guard).
func TestHTTP2HeaderBlockOverMaxHeaderBytes(t *testing.T) {
	b := newBackend(t, "up")
	td, secure := startPlainAndTLS(t, "edge.test", "    max_header_bytes: 4096\n", fmt.Sprintf("    endpoints: [%s]\n", b.addr()))

	var h2c http.Protocols
	h2c.SetUnencryptedHTTP2(true)
	plain := &http.Transport{Protocols: &h2c}
	t.Cleanup(plain.CloseIdleConnections)
	clients := []struct {
		listener, scheme string
		rt               http.RoundTripper
	}{
		{listener: "plain", scheme: "http", rt: plain},
		{listener: "secure", scheme: "https", rt: tlsTransport(t, secure, true)},
	}
	many := make([]string, 0, 120)
	for i := range 60 {
		many = append(many, fmt.Sprintf("X-Field-%02d", i), strings.Repeat("f", 60))
	}
	requests := []struct {
		name    string
		headers []string
		want    int
	}{
		{name: "under the limit", headers: []string{"X-Big", strings.Repeat("a", 3000)}, want: http.StatusOK},
		{name: "one field over the limit", headers: []string{"X-Big", strings.Repeat("a", 8000)}, want: http.StatusRequestHeaderFieldsTooLarge},
		{name: "many fields over the limit", headers: many, want: http.StatusRequestHeaderFieldsTooLarge},
		{name: "the connection serves on", want: http.StatusOK},
	}
	for _, c := range clients {
		t.Run(c.listener, func(t *testing.T) {
			conns := 0
			for i, r := range requests {
				req, err := http.NewRequest(http.MethodGet, c.scheme+"://"+tlsAddr(td, c.listener)+"/x", nil)
				require.NoError(t, err)
				req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
					GotConn: func(info httptrace.GotConnInfo) {
						if !info.Reused {
							conns++
						}
					},
				}))
				for j := 0; j+1 < len(r.headers); j += 2 {
					req.Header.Set(r.headers[j], r.headers[j+1])
				}
				hitsBefore := b.hits.Load()
				resp, _, err := tlsDo(c.rt, req)
				require.NoError(t, err, r.name)
				assert.Equal(t, 2, resp.ProtoMajor, r.name)
				assert.Equal(t, r.want, resp.StatusCode, r.name)
				if r.want == http.StatusOK {
					require.Equal(t, hitsBefore+1, b.hits.Load(), r.name)
					assert.Equal(t, c.scheme, b.lastRequest().Header.Get("X-Forwarded-Proto"), r.name)
				} else {
					assert.Equal(t, hitsBefore, b.hits.Load(), "%s: the upstream saw nothing", r.name)
				}
				assert.Equal(t, 1, conns, "%s (request %d): one connection for all", r.name, i)
			}
		})
	}
}

// TestHTTP2HeaderBlockBoundedByReadHeader: a header block left incomplete
// (a HEADERS frame without END_HEADERS and no CONTINUATION, or a HEADERS
// frame cut short) ends its connection with a GOAWAY after read_header,
// not after the idle timeout; a request that simply takes longer than
// read_header to answer does not.
func TestHTTP2HeaderBlockBoundedByReadHeader(t *testing.T) {
	b := newBackend(t, "up")
	td := startDaemon(t, fmt.Sprintf(edgePreamble+`    timeouts: {read_header: 300ms, idle: 120s}
    routes: [{name: all, pipeline: [{proxy: up}]}]
pools:
  up:
    endpoints: [%s]
`, b.addr()))
	addr := strings.TrimPrefix(td.url("edge"), "http://")
	block := h2GetBlock("http", "/")
	cases := []struct {
		name  string
		bytes []byte
	}{
		{name: "HEADERS without END_HEADERS", bytes: h2Frame(h2FrameHeaders, h2FlagEndStream, 1, block[:10])},
		{name: "CONTINUATION without END_HEADERS", bytes: append(h2Frame(h2FrameHeaders, h2FlagEndStream, 1, block[:10]),
			h2Frame(h2FrameContinuation, 0, 1, block[10:20])...)},
		{name: "HEADERS cut short", bytes: h2Frame(h2FrameHeaders, h2FlagEndStream|h2FlagEndHeaders, 1, block)[:h2FrameHeaderLen+10]},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := h2RawConn(t, addr, nil)
			seen := h2ReadAll(c, 5*time.Second)
			start := time.Now()
			_, err := c.Write(tc.bytes)
			require.NoError(t, err)
			got := <-seen
			var ne net.Error
			require.False(t, errors.As(got.err, &ne) && ne.Timeout(), "the connection was left open")
			assert.True(t, got.goAway, "a GOAWAY came first (%v)", got.err)
			assert.Less(t, got.closedAt.Sub(start), 2*time.Second)
			require.Eventually(t, func() bool {
				return td.metric("sekisho_http2_connections_closed_total", "listener", "edge", "reason", "header_timeout") == float64(i+1)
			}, 5*time.Second, 20*time.Millisecond, "the closing is counted")
		})
	}

	t.Run("a slow answer is not a slow header block", func(t *testing.T) {
		var h2c http.Protocols
		h2c.SetUnencryptedHTTP2(true)
		rt := &http.Transport{Protocols: &h2c}
		t.Cleanup(rt.CloseIdleConnections)
		conns := 0
		for _, delay := range []time.Duration{0, 500 * time.Millisecond, 0} {
			b.delay.Store(int64(delay))
			req, err := http.NewRequest(http.MethodGet, td.url("edge")+"/", nil)
			require.NoError(t, err)
			req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
				GotConn: func(info httptrace.GotConnInfo) {
					if !info.Reused {
						conns++
					}
				},
			}))
			resp, _, err := tlsDo(rt, req)
			require.NoError(t, err)
			assert.Equal(t, http.StatusOK, resp.StatusCode)
		}
		assert.Equal(t, 1, conns, "one connection served all")
	})
}

// TestFrameScanner follows frames through a stream cut at every size.
func TestFrameScanner(t *testing.T) {
	frames := [][]byte{
		h2Frame(h2FrameHeaders, h2FlagEndHeaders, 1, []byte("abc")),
		h2Frame(h2FrameRSTStream, 0, 1, []byte{0, 0, 0, 8}),
		h2Frame(0x4, 0x1, 0, nil), // an empty frame
		h2Frame(h2FrameData, h2FlagEndStream, 3, bytes.Repeat([]byte("d"), 300)),
	}
	stream := bytes.Join(frames, nil)
	var ends []int // offsets where frames end
	off := 0
	for _, f := range frames {
		off += len(f)
		ends = append(ends, off)
	}
	for _, chunk := range []int{1, 2, 5, 9, 10, 64, len(stream)} {
		t.Run(fmt.Sprint(chunk), func(t *testing.T) {
			var s frameScanner
			var types []byte
			var gotEnds []int
			pos := 0
			for pos < len(stream) {
				b := stream[pos:min(pos+chunk, len(stream))]
				if !s.atBoundary() {
					// toBoundary names the next end in b, when it is in b.
					next := 0
					for _, e := range ends {
						if e > pos {
							next = e
							break
						}
					}
					assert.Equal(t, min(next-pos, len(b)), s.toBoundary(b), "at %d", pos)
				} else {
					assert.Equal(t, 0, s.toBoundary(b))
				}
				for len(b) > 0 {
					n, ev := s.step(b)
					b = b[n:]
					pos += n
					if ev&evHeader != 0 {
						typ, _, _ := s.header()
						types = append(types, typ)
					}
					if ev&evEnd != 0 {
						gotEnds = append(gotEnds, pos)
						assert.True(t, s.atBoundary())
					}
				}
			}
			assert.Equal(t, []byte{h2FrameHeaders, h2FrameRSTStream, 0x4, h2FrameData}, types)
			assert.Equal(t, ends, gotEnds)
		})
	}
}

// TestHTTP2ConnectionsEndOnShutdown: the HTTP/2 connections the front
// server serves itself are told to go (GOAWAY) and waited for by Shutdown,
// which returns without cutting anything once they have gone.
func TestHTTP2ConnectionsEndOnShutdown(t *testing.T) {
	b := newBackend(t, "up")
	td := startDaemon(t, fmt.Sprintf(edgePreamble+`    routes: [{name: all, pipeline: [{proxy: up}]}]
pools:
  up:
    endpoints: [%s]
`, b.addr()))
	c := h2RawConn(t, strings.TrimPrefix(td.url("edge"), "http://"), nil)
	seen := h2ReadAll(c, 5*time.Second)
	_, err := c.Write(h2Frame(h2FrameHeaders, h2FlagEndHeaders|h2FlagEndStream, 1, h2GetBlock("http", "/")))
	require.NoError(t, err)
	require.Eventually(t, func() bool { return b.hits.Load() == 1 }, 5*time.Second, 5*time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	require.NoError(t, td.d.Shutdown(ctx))
	assert.Less(t, time.Since(start), 4*time.Second)
	got := <-seen
	assert.True(t, got.goAway, "told to go (%v)", got.err)
	var ne net.Error
	assert.False(t, errors.As(got.err, &ne) && ne.Timeout(), "the connection was closed")
}
