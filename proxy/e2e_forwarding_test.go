package proxy

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The headers an upstream receives about the client, through the real
// proxy, for the two cases docs/config.md ("Headers sekisho reads and
// writes") works through: a request relayed by a trusted proxy, and a
// client that is no proxy claiming to be one. Each under the four
// combinations of forwarded: rfc7239 and set_real_ip, on the direct path
// (GET) and through ReverseProxy (POST).
func TestForwardingHeadersUpstream(t *testing.T) {
	up := newBackend(t, "up")
	routes := `    routes:
      - {name: plain, match: {path_prefix: /plain}, pipeline: [{proxy: plain}]}
      - {name: rfc, match: {path_prefix: /rfc}, pipeline: [{proxy: rfc}]}
      - {name: real, match: {path_prefix: /real}, pipeline: [{proxy: real}]}
      - {name: both, match: {path_prefix: /both}, pipeline: [{proxy: both}]}
`
	td := startDaemon(t, fmt.Sprintf(edgePreamble+routes+`  - name: behind-lb
    listen: 127.0.0.2:0
    client_ip: {trusted_proxies: [127.0.0.0/8]}
`+routes+`pools:
  plain: {endpoints: [%[1]s]}
  rfc: {endpoints: [%[1]s], forwarded: rfc7239}
  real: {endpoints: [%[1]s], set_real_ip: true}
  both: {endpoints: [%[1]s], forwarded: rfc7239, set_real_ip: true}
`, up.addr()))

	cases := []struct {
		name     string
		listener string
		send     []string
		// What the upstream gets: X-Forwarded-For, -Proto, the Forwarded
		// of forwarded: rfc7239 and the X-Real-IP of set_real_ip.
		xff, proto, forwarded, realIP string
	}{
		{
			name:     "through a trusted proxy with X-Forwarded-For and Forwarded",
			listener: "behind-lb",
			send: []string{"X-Forwarded-For", "6.6.6.6, 203.0.113.9, 127.0.0.5", "Forwarded", "for=203.0.113.9;proto=https, for=127.0.0.5",
				"X-Forwarded-Proto", "https", "X-Real-IP", "6.6.6.6"},
			xff: "203.0.113.9, 127.0.0.5, 127.0.0.1", proto: "https", realIP: "203.0.113.9",
			forwarded: `for=203.0.113.9;host=shop.example.com;proto=https, for=127.0.0.5, for=127.0.0.1`,
		},
		{
			name:     "through a trusted proxy with Forwarded only",
			listener: "behind-lb",
			send:     []string{"Forwarded", `for="[2001:db8::17]:4711";proto=https, for=127.0.0.5`},
			xff:      "2001:db8::17, 127.0.0.5, 127.0.0.1", proto: "http", realIP: "2001:db8::17",
			forwarded: `for="[2001:db8::17]";host=shop.example.com;proto=http, for=127.0.0.5, for=127.0.0.1`,
		},
		{
			name:     "an untrusted client sending X-Real-IP, X-Forwarded-For and Forwarded",
			listener: "edge",
			send: []string{"X-Real-IP", "6.6.6.6", "X-Forwarded-For", "6.6.6.6", "Forwarded", "for=6.6.6.6;proto=https",
				"X-Forwarded-Proto", "https", "X-Forwarded-Host", "evil.example"},
			xff: "127.0.0.1", proto: "http", realIP: "127.0.0.1",
			forwarded: "for=127.0.0.1;host=shop.example.com;proto=http",
		},
	}
	for _, tc := range cases {
		for _, pool := range []string{"plain", "rfc", "real", "both"} {
			for _, method := range []string{http.MethodGet, http.MethodPost} {
				t.Run(tc.name+"/"+pool+"/"+method, func(t *testing.T) {
					var body *strings.Reader
					if method == http.MethodPost {
						body = strings.NewReader("z")
					} else {
						body = strings.NewReader("")
					}
					req, err := http.NewRequest(method, td.url(tc.listener)+"/"+pool, body)
					require.NoError(t, err)
					if method == http.MethodGet {
						req.Body, req.ContentLength = http.NoBody, 0
					}
					req.Host = "shop.example.com"
					for i := 0; i+1 < len(tc.send); i += 2 {
						req.Header.Set(tc.send[i], tc.send[i+1])
					}
					resp, _ := td.do(req)
					require.Equal(t, http.StatusOK, resp.StatusCode)
					seen := up.lastRequest().Header
					assert.Equal(t, []string{tc.xff}, seen["X-Forwarded-For"])
					assert.Equal(t, []string{"shop.example.com"}, seen["X-Forwarded-Host"])
					assert.Equal(t, []string{tc.proto}, seen["X-Forwarded-Proto"])
					if pool == "rfc" || pool == "both" {
						assert.Equal(t, []string{tc.forwarded}, seen["Forwarded"])
					} else {
						assert.NotContains(t, seen, "Forwarded", "no Forwarded without forwarded: rfc7239")
					}
					if pool == "real" || pool == "both" {
						assert.Equal(t, []string{tc.realIP}, seen["X-Real-Ip"])
					} else {
						assert.NotContains(t, seen, "X-Real-Ip", "a client's X-Real-IP never passes")
					}
				})
			}
		}
	}
}
