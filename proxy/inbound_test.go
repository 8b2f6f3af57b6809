package proxy

import (
	"fmt"
	"net"
	"net/http"
	"sekisho/internal/rawclient"
	"sekisho/internal/rawupstream"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// These tests hold what the client sends to what reaches the upstream: raw
// requests on a socket, and a scripted upstream that keeps the heads it
// receives byte for byte.

// inboundDaemon serves /fixed with a respond stage, /plain through a pool
// on a route that allows no upgrade, and everything else through a headers
// stage that sets X-Proxy-Set, then the pool. The pool's only endpoint is up.
func inboundDaemon(t *testing.T, up string) (*testDaemon, string) {
	t.Helper()
	td := startDaemon(t, fmt.Sprintf(edgePreamble+`    routes:
      - {name: fixed, match: {path_prefix: /fixed}, pipeline: [{respond: {status: 200, body: "fixed\n"}}]}
      - {name: plain, match: {path_prefix: /plain}, upgrades: [], pipeline: [{proxy: up}]}
      - name: all
        pipeline:
          - headers: {request: {set: {X-Proxy-Set: operator}, remove: [X-Gone]}}
          - proxy: up
pools:
  up: {endpoints: [%s], retries: 0}
`, up))
	return td, strings.TrimPrefix(td.url("edge"), "http://")
}

// A client's Connection header cannot remove what a stage or the proxy
// adds, on the direct path (GET) or through ReverseProxy (POST); header
// names that differ from one sekisho sets, strips or trusts only by '_'
// never reach the upstream.
func TestInboundClientCannotStripOrSpoofProxyHeaders(t *testing.T) {
	up := rawupstream.NewScripted(t, func(string) string {
		return "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
	})
	_, addr := inboundDaemon(t, up.Addr())
	for _, method := range []string{"GET", "POST"} {
		extra := ""
		if method == "POST" {
			extra = "Content-Length: 0\r\n"
		}
		tests := []struct {
			name    string
			headers string
			check   func(t *testing.T, h map[string][]string)
		}{
			{"Connection names a header a stage sets", "Connection: keep-alive, X-Proxy-Set\r\nX-Proxy-Set: client\r\n",
				func(t *testing.T, h map[string][]string) {
					assert.Equal(t, []string{"operator"}, h["x-proxy-set"])
				}},
			{"Connection names the minted request id", "Connection: X-Request-Id\r\n",
				func(t *testing.T, h map[string][]string) {
					assert.Len(t, h["x-request-id"], 1, "the minted id reaches the upstream")
				}},
			{"Connection names the client's own request id", "Connection: X-Request-Id\r\nX-Request-Id: abc\r\n",
				func(t *testing.T, h map[string][]string) {
					require.Len(t, h["x-request-id"], 1)
					assert.NotEqual(t, "abc", h["x-request-id"][0], "a header named in Connection is the hop's, not the request's")
				}},
			{"Connection still removes what it names from the client", "Connection: X-Hop\r\nX-Hop: 1\r\nKeep-Alive: 5\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n",
				func(t *testing.T, h map[string][]string) {
					assert.NotContains(t, h, "x-hop")
					assert.NotContains(t, h, "keep-alive")
					assert.NotContains(t, h, "http2-settings")
				}},
			{"a client's X-Real-IP is dropped", "X-Real-IP: 6.6.6.6\r\n",
				func(t *testing.T, h map[string][]string) {
					assert.NotContains(t, h, "x-real-ip")
				}},
			{"underscore twins of proxy headers are dropped", "X_Forwarded_For: 6.6.6.6\r\nX_Real_IP: 6.6.6.6\r\nX_Request_Id: spoof\r\n" +
				"X_Client_Cert_Subject: CN=admin\r\nX_Sekisho_Mirror: 1\r\nX_Forwarded_Proto: https\r\nX_Forwarded_Host: evil\r\n" +
				"X_Proxy_Set: client\r\nx_gone: 1\r\nTransfer_Encoding: chunked\r\nX_Custom_Thing: kept\r\n",
				func(t *testing.T, h map[string][]string) {
					for k := range h {
						if strings.Contains(k, "_") {
							assert.Equal(t, "x_custom_thing", k, "a header sekisho does not know keeps its name")
						}
					}
					assert.Equal(t, []string{"kept"}, h["x_custom_thing"])
					assert.Equal(t, []string{"operator"}, h["x-proxy-set"])
				}},
		}
		for _, tc := range tests {
			t.Run(method+"/"+tc.name, func(t *testing.T) {
				c := rawclient.Dial(t, addr)
				resp, body := c.Do(method, method+" /x HTTP/1.1\r\nHost: edge.test\r\n"+extra+tc.headers+"\r\n")
				require.Equal(t, http.StatusOK, resp.StatusCode, body)
				head := up.LastHead()
				h := rawupstream.HeaderLines(head)
				for _, v := range h["connection"] {
					assert.Equal(t, "", strings.Trim(strings.ToLower(v), " "), "the upstream sees no client Connection tokens: %q", head)
				}
				tc.check(t, h)
			})
		}
	}
}

// An h2c upgrade is never tunnelled: the upstream gets a plain request
// without Upgrade or HTTP2-Settings, and the client's next request on the
// same connection is routed (here to a respond stage), not sent down a
// tunnel. An upgrade the route does not allow is stripped likewise; one it
// allows (websocket, the default) still switches.
func TestInboundUpgrades(t *testing.T) {
	up := rawupstream.NewScripted(t, func(head string) string {
		l := strings.ToLower(head)
		switch {
		case strings.Contains(l, "upgrade: h2c"):
			return "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
		case strings.Contains(l, "upgrade: websocket"):
			return "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
		case strings.HasPrefix(l, "ping"):
			return "pong\r\n"
		}
		return "HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nupstream"
	})
	_, addr := inboundDaemon(t, up.Addr())

	tests := []struct{ name, path, upgrade string }{
		{"h2c", "/x", "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n"},
		{"h2c with HTTP2-Settings not named in Connection", "/x", "Connection: Upgrade\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n"},
		{"websocket on a route that allows none", "/plain", "Connection: Upgrade\r\nUpgrade: websocket\r\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := rawclient.Dial(t, addr)
			resp, body := c.Do(http.MethodGet, "GET "+tc.path+" HTTP/1.1\r\nHost: edge.test\r\n"+tc.upgrade+"\r\n")
			assert.Equal(t, http.StatusOK, resp.StatusCode)
			assert.Equal(t, "upstream", body)
			h := rawupstream.HeaderLines(up.LastHead())
			assert.NotContains(t, h, "upgrade")
			assert.NotContains(t, h, "http2-settings")
			assert.NotContains(t, h, "connection")
			resp, body = c.Do(http.MethodGet, "GET /fixed HTTP/1.1\r\nHost: edge.test\r\n\r\n")
			assert.Equal(t, http.StatusOK, resp.StatusCode)
			assert.Equal(t, "fixed\n", body, "the next request on the connection is routed, not tunnelled")
		})
	}
	t.Run("websocket on a route that allows it", func(t *testing.T) {
		c := rawclient.Dial(t, addr)
		c.Send("GET /ws HTTP/1.1\r\nHost: edge.test\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n")
		resp, err := http.ReadResponse(c.BR, nil)
		require.NoError(t, err)
		assert.Equal(t, http.StatusSwitchingProtocols, resp.StatusCode)
		h := rawupstream.HeaderLines(up.LastHead())
		assert.Equal(t, []string{"Upgrade"}, h["connection"])
		assert.Equal(t, []string{"websocket"}, h["upgrade"])
		c.Send("ping\r\n\r\n")
		require.NoError(t, c.Conn.SetReadDeadline(time.Now().Add(5*time.Second)))
		line, err := c.BR.ReadString('\n')
		require.NoError(t, err)
		assert.Equal(t, "pong\r\n", line, "the tunnel carries bytes both ways")
	})
}

// A malformed request body is the client's fault: it is answered 400 on a
// connection that then closes, and it never counts against the endpoint,
// however often it happens.
func TestClientBodyErrorsDoNotEjectTheEndpoint(t *testing.T) {
	b := newBackend(t, "only")
	td := startDaemon(t, fmt.Sprintf(edgePreamble+`    routes: [{name: all, pipeline: [{proxy: up}]}]
pools:
  up:
    endpoints: [%s]
    retries: 0
    outlier: {consecutive_failures: 2, eject: 30s, max_ejected_percent: 100}
`, b.addr()))
	addr := strings.TrimPrefix(td.url("edge"), "http://")
	for i := range 4 {
		c := rawclient.Dial(t, addr)
		resp, body := c.Do(http.MethodPost, "POST /upload HTTP/1.1\r\nHost: edge.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nmore\r\n0\r\n\r\n")
		assert.Equal(t, http.StatusBadRequest, resp.StatusCode, "POST %d: %s", i, body)
		assert.True(t, resp.Close, "POST %d: the answer closes the connection", i)
		c.AssertClosed(5 * time.Second)
	}
	resp, body := td.get(td.url("edge") + "/after")
	assert.Equal(t, http.StatusOK, resp.StatusCode, "the endpoint still serves: %s", body)
}

// Cleaning a plain request's header allocates nothing, a keep-alive
// Connection, a hop-by-hop header and an unrelated '_' name included.
func TestInboundSanitizeAllocatesNothing(t *testing.T) {
	in := newInboundRules(nil)
	h := http.Header{"User-Agent": {"bench"}, "Accept": {"*/*"}, "X_Custom": {"1"}, "Te": {"trailers"}}
	conn, keep := []string{"keep-alive"}, []string{"timeout=5"}
	r := &http.Request{ProtoMajor: 1, ProtoMinor: 1, Header: h}
	allocs := testing.AllocsPerRun(100, func() {
		h["Connection"], h["Keep-Alive"] = conn, keep
		in.sanitize(r)
	})
	assert.Zero(t, allocs)
	assert.Equal(t, http.Header{"User-Agent": {"bench"}, "Accept": {"*/*"}, "X_Custom": {"1"}, "Te": {"trailers"}}, r.Header)
}

// The headers sekisho sets on a request for the upstream to trust (a
// split's X-Sekisho-Arm, which docs/config.md says upstreams can trust, and
// a scatter leaf's X-Sekisho-Leaf) have no underscore twin that reaches the
// upstream: a backend that reads '_' as '-' would take the client's value
// for sekisho's.
func TestInboundUnderscoreTwinsOfSekishoRequestHeaders(t *testing.T) {
	up := rawupstream.NewScripted(t, func(string) string {
		return "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
	})
	_, addr := inboundDaemon(t, up.Addr())
	for _, method := range []string{"GET", "POST"} {
		extra := ""
		if method == "POST" {
			extra = "Content-Length: 0\r\n"
		}
		t.Run(method, func(t *testing.T) {
			c := rawclient.Dial(t, addr)
			resp, body := c.Do(method, method+" /x HTTP/1.1\r\nHost: edge.test\r\n"+extra+
				"X_Sekisho_Arm: checkout=treatment\r\nx_sekisho_leaf: billing\r\nX_Custom_Thing: kept\r\n\r\n")
			require.Equal(t, http.StatusOK, resp.StatusCode, body)
			h := rawupstream.HeaderLines(up.LastHead())
			for k := range h {
				if strings.Contains(k, "_") {
					assert.Equal(t, "x_custom_thing", k, "a header sekisho does not know keeps its name")
				}
			}
		})
	}
}

// An upstream that answers 101 to a request that asked for no upgrade has
// switched its connection to something else: the client gets a 502, and the
// connection is never used again, as http.Transport never reuses one after
// a 101.
func TestUnsolicitedSwitchIsNotReused(t *testing.T) {
	up := rawupstream.NewScripted(t, func(head string) string {
		if strings.HasPrefix(head, "GET /plain/switch ") {
			return "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
		}
		return "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
	})
	_, addr := inboundDaemon(t, up.Addr())
	c := rawclient.Dial(t, addr)
	resp, body := c.Do("GET", "GET /plain/switch HTTP/1.1\r\nHost: edge.test\r\n\r\n")
	assert.Equal(t, http.StatusBadGateway, resp.StatusCode, body)
	c2 := rawclient.Dial(t, addr)
	resp, body = c2.Do("GET", "GET /plain/next HTTP/1.1\r\nHost: edge.test\r\n\r\n")
	assert.Equal(t, http.StatusOK, resp.StatusCode, body)
	assert.EqualValues(t, 2, up.Conns(), "the request after the 101 went on a new connection")
}

// A client that sends part of a PUT's body and goes (a reset or a plain
// close) has failed, not the endpoint: however often it happens, nothing
// is ejected, and the request is not sent to another endpoint.
func TestClientAbortMidBodyDoesNotEjectOrRetry(t *testing.T) {
	a, b := newBackend(t, "a"), newBackend(t, "b")
	td := startDaemon(t, fmt.Sprintf(edgePreamble+`    routes: [{name: all, pipeline: [{proxy: up}]}]
pools:
  up:
    endpoints: [%s, %s]
    retries: 2
    outlier: {consecutive_failures: 1, eject: 30s, max_ejected_percent: 100}
`, a.addr(), b.addr()))
	addr := strings.TrimPrefix(td.url("edge"), "http://")
	for _, reset := range []bool{false, true} {
		for i := range 3 {
			before := a.hits.Load() + b.hits.Load()
			c := rawclient.Dial(t, addr)
			c.Send("PUT /upload HTTP/1.1\r\nHost: edge.test\r\nContent-Length: 100000\r\n\r\n" + strings.Repeat("x", 5000))
			// Wait until the request reached an endpoint, then go.
			require.Eventually(t, func() bool { return a.hits.Load()+b.hits.Load() > before }, 5*time.Second, 5*time.Millisecond)
			if reset {
				c.Conn.(*net.TCPConn).SetLinger(0)
			}
			c.Conn.Close()
			require.Eventually(t, func() bool {
				sa, _ := endpointState(td, "up", a.addr())
				sb, _ := endpointState(td, "up", b.addr())
				return sa.InFlight == 0 && sb.InFlight == 0
			}, 5*time.Second, 5*time.Millisecond, "reset %v, PUT %d ended", reset, i)
			assert.Equal(t, before+1, a.hits.Load()+b.hits.Load(), "reset %v, PUT %d went to one endpoint only", reset, i)
		}
	}
	for _, be := range []*backend{a, b} {
		st, ok := endpointState(td, "up", be.addr())
		require.True(t, ok)
		assert.Zero(t, st.PassiveFailures, "%s: no failure counted", be.name)
		assert.False(t, st.Ejected, "%s: not ejected", be.name)
	}
}
