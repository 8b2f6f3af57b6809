package proxy

import (
	"crypto/tls"
	"encoding/binary"
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
	up := newCountingUpstream(t)
	td, secure := startPlainAndTLS(t, "edge.test", "", fmt.Sprintf("    endpoints: [%s]\n", up.addr()))
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
			var cancel [4]byte
			binary.BigEndian.PutUint32(cancel[:], 0x8) // CANCEL
			h2ResetFlood(t, c, tc.scheme, func(stream uint32) []byte {
				return h2Frame(h2FrameRSTStream, 0, stream, cancel[:])
			})
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
