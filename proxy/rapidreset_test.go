package proxy

import (
	"bufio"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"sekisho/proxy/certs/certstest"
)

// TestHTTP2RapidResetIsClosed: a client that opens and resets streams in
// bulk on one HTTP/2 connection (CVE-2023-44487) gets a GOAWAY
// (ENHANCE_YOUR_CALM) and the connection closes, the closing is counted,
// and the streams it reset cost the upstream few connections: at most one
// for each reset the guard lets through (10,000 pairs cost thousands before
// the guard, a cancelled request never dials, and one whose dial was under
// way leaves its connection to the idle pool). Over h2c with prior
// knowledge and over TLS with ALPN h2, with the upstream pool cold and warm.
func TestHTTP2RapidResetIsClosed(t *testing.T) {
	dir := t.TempDir()
	ca := certstest.NewCA(t)
	cert := ca.Issue(t, dir, "edge.test")
	up := newCountingUpstream(t)
	td := startDaemon(t, fmt.Sprintf(`
version: 1
admin: {listen: "127.0.0.1:0"}
log: {access: off}
listeners:
  - name: plain
    listen: 127.0.0.1:0
    routes: [{name: all, pipeline: [{proxy: up}]}]
  - name: secure
    listen: %q
    tls:
      certificates: [{cert_file: %q, key_file: %q}]
    routes: [{name: all, pipeline: [{proxy: up}]}]
pools:
  up:
    endpoints: [%s]
`, freeAddr(t), cert.CertFile, cert.KeyFile, up.addr()))

	secure := &tls.Config{RootCAs: ca.Pool(), ServerName: "edge.test"}
	cases := []struct {
		name, listener, scheme string
		tls                    *tls.Config
	}{
		{name: "h2c, no idle upstream connection", listener: "plain", scheme: "http"},
		{name: "h2c, idle upstream connections", listener: "plain", scheme: "http"},
		{name: "TLS, idle upstream connections", listener: "secure", scheme: "https", tls: secure},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			conns, closed := up.opened.Load(), up.closed.Load()
			c := h2RawConn(t, tlsAddr(td, tc.listener), tc.tls)
			seen := h2ReadAll(c, 10*time.Second)
			block := h2GetBlock(tc.scheme, "/")
			var cancel [4]byte
			binary.BigEndian.PutUint32(cancel[:], 0x8) // CANCEL
			bw := bufio.NewWriterSize(c, 64<<10)
			for i := 0; i < 10000; i++ {
				stream := uint32(2*i + 1)
				bw.Write(h2Frame(h2FrameHeaders, h2FlagEndHeaders|h2FlagEndStream, stream, block))
				bw.Write(h2Frame(h2FrameRSTStream, 0, stream, cancel[:]))
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
			require.Eventually(t, func() bool {
				n := 0.0
				for _, l := range []string{"plain", "secure"} {
					n += max(0, td.metric("sekisho_http2_connections_closed_total", "listener", l, "reason", "rapid_reset"))
				}
				return n == float64(i+1)
			}, 5*time.Second, 20*time.Millisecond, "the closing is counted")
			// A stream the guard let through may have been dialling, or
			// waiting for its answer on a connection that must then close
			// (as http.Transport's do), when it was reset: never more.
			t.Logf("%d upstream connections opened, %d closed", up.opened.Load()-conns, up.closed.Load()-closed)
			assert.LessOrEqual(t, up.opened.Load()-conns, int64(h2ResetBurst), "upstream connections opened")
			assert.LessOrEqual(t, up.closed.Load()-closed, int64(h2ResetBurst), "upstream connections closed")

			// A well-behaved client is served as ever.
			var rt http.RoundTripper
			if tc.tls != nil {
				rt = tlsTransport(t, tc.tls, true)
			} else {
				var p http.Protocols
				p.SetUnencryptedHTTP2(true)
				tr := &http.Transport{Protocols: &p}
				t.Cleanup(tr.CloseIdleConnections)
				rt = tr
			}
			resp, body, err := tlsGet(t, rt, tc.scheme+"://"+tlsAddr(td, tc.listener)+"/")
			require.NoError(t, err)
			assert.Equal(t, http.StatusOK, resp.StatusCode)
			assert.Equal(t, "ok", body)
		})
	}
}

// countingUpstream answers "ok" and counts the connections it opens and
// closes, for tests that bound what a client costs the upstream.
type countingUpstream struct {
	srv            *httptest.Server
	opened, closed atomic.Int64
}

func newCountingUpstream(t *testing.T) *countingUpstream {
	u := &countingUpstream{}
	u.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok")
	}))
	u.srv.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		switch st {
		case http.StateNew:
			u.opened.Add(1)
		case http.StateClosed:
			u.closed.Add(1)
		}
	}
	u.srv.Start()
	t.Cleanup(u.srv.Close)
	return u
}

func (u *countingUpstream) addr() string { return u.srv.Listener.Addr().String() }
