package proxy

import (
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The headers sekisho sets on a request for the upstream to trust (a
// split's X-Sekisho-Arm, which docs/config.md says upstreams can trust, and
// a scatter leaf's X-Sekisho-Leaf) have no underscore twin that reaches the
// upstream: a backend that reads '_' as '-' would take the client's value
// for sekisho's.
func TestInboundUnderscoreTwinsOfSekishoRequestHeaders(t *testing.T) {
	up := newScriptedUpstream(t, func(string) string {
		return "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
	})
	_, addr := inboundDaemon(t, up.addr())
	for _, method := range []string{"GET", "POST"} {
		extra := ""
		if method == "POST" {
			extra = "Content-Length: 0\r\n"
		}
		t.Run(method, func(t *testing.T) {
			c := h1sDial(t, addr)
			resp, body := c.do(method, method+" /x HTTP/1.1\r\nHost: edge.test\r\n"+extra+
				"X_Sekisho_Arm: checkout=treatment\r\nx_sekisho_leaf: billing\r\nX_Custom_Thing: kept\r\n\r\n")
			require.Equal(t, http.StatusOK, resp.StatusCode, body)
			h := headerLines(up.lastHead())
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
	up := newScriptedUpstream(t, func(head string) string {
		if strings.HasPrefix(head, "GET /plain/switch ") {
			return "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
		}
		return "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
	})
	_, addr := inboundDaemon(t, up.addr())
	c := h1sDial(t, addr)
	resp, body := c.do("GET", "GET /plain/switch HTTP/1.1\r\nHost: edge.test\r\n\r\n")
	assert.Equal(t, http.StatusBadGateway, resp.StatusCode, body)
	c2 := h1sDial(t, addr)
	resp, body = c2.do("GET", "GET /plain/next HTTP/1.1\r\nHost: edge.test\r\n\r\n")
	assert.Equal(t, http.StatusOK, resp.StatusCode, body)
	up.mu.Lock()
	defer up.mu.Unlock()
	assert.Equal(t, 2, up.conns, "the request after the 101 went on a new connection")
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
			c := h1sDial(t, addr)
			c.send("PUT /upload HTTP/1.1\r\nHost: edge.test\r\nContent-Length: 100000\r\n\r\n" + strings.Repeat("x", 5000))
			// Wait until the request reached an endpoint, then go.
			require.Eventually(t, func() bool { return a.hits.Load()+b.hits.Load() > before }, 5*time.Second, 5*time.Millisecond)
			if reset {
				c.c.(*net.TCPConn).SetLinger(0)
			}
			c.c.Close()
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
