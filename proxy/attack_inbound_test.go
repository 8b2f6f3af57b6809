package proxy

import (
	"net/http"
	"strings"
	"testing"

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
