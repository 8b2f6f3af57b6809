package config

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"sekisho/discovery"
)

// parseDiscovery parses a config of one listener that proxies to pool a,
// with the given top-level text and pools, and returns it with its errors
// and warnings as "LINE:COL: message". The pools text starts on line 6.
func parseDiscovery(t *testing.T, top, pools string) (*Config, []string, []string) {
	t.Helper()
	text := "version: 1\nlisteners: [{name: edge, listen: ':0', routes: [{name: r, pipeline: [{proxy: a}]}]}]\n" +
		"# line 3\n" + top + "\npools:\n" + pools
	c, err := Parse("d.yaml", []byte(text), func(string) (string, bool) { return "", false })
	strip := func(es Errors) []string {
		var out []string
		for _, e := range es {
			out = append(out, strings.TrimPrefix(e.Error(), "d.yaml:"))
		}
		return out
	}
	var ce Errors
	if err != nil {
		require.True(t, errors.As(err, &ce), "%v", err)
		return nil, strip(ce), nil
	}
	return c, nil, strip(c.Warnings())
}

// Every rule about dns:// and dns+srv:// endpoints and the discovery
// sections, each at its place.
func TestDiscoveryValidation(t *testing.T) {
	tests := []struct {
		name       string
		top, pools string
		errs       []string
		warns      []string
	}{
		{
			name: "static and discovered mixed",
			pools: `  a:
    endpoints:
      - 127.0.0.1:1
      - dns://web.shop.svc.cluster.local:8080
      - {address: "dns://web2.shop.svc.cluster.local.:8080", weight: 3}
      - dns+srv://_http._tcp.users-0.users.shop.svc.cluster.local
    discovery: {resolvers: [10.96.0.10, "10.96.0.10:53", "[fd00::a]:53", "fd00::a"], min_ttl: 2s, max_ttl: 1m, timeout: 500ms, max_endpoints: 65536}
`,
		},
		{
			name: "a bad target is reported with ParseTarget's message",
			pools: `  a:
    endpoints:
      - dns://web
      - dns+srv://_http._tcp.web:80
      - dns://web:0
`,
			errs: []string{
				`8:9: endpoint: discovery: bad target "dns://web": want dns://NAME:PORT: address web: missing port in address`,
				`9:9: endpoint: discovery: bad target "dns+srv://_http._tcp.web:80": a SRV target takes no port or path (the records carry the ports)`,
				`10:9: endpoint: discovery: bad target "dns://web:0": port "0" is not in 1..65535`,
			},
		},
		{
			name: "the same target twice, however spelled",
			pools: `  a:
    endpoints:
      - dns://web.shop:80
      - dns://WEB.shop.:80
      - dns://web.shop:81
      - dns+srv://_http._tcp.web.shop
      - dns+srv://_http._tcp.web.shop.
`,
			errs: []string{
				`9:9: endpoint "dns://WEB.shop.:80" is listed twice in pool "a"`,
				`12:9: endpoint "dns+srv://_http._tcp.web.shop." is listed twice in pool "a"`,
			},
		},
		{
			name: "weight: on dns:// each address's, never on dns+srv://",
			pools: `  a:
    endpoints:
      - {address: "dns://web:80", weight: 2}
      - {address: "dns://web2:80", weight: -1}
      - {address: "dns+srv://_http._tcp.web", weight: 2}
      - {address: "dns+srv://_http._tcp.web2", weight: 0}
`,
			errs: []string{
				`9:44: weight: must not be negative`,
				`10:55: weight: a dns+srv endpoint takes its weights from the SRV records`,
				`11:56: weight: a dns+srv endpoint takes its weights from the SRV records`,
			},
		},
		{
			name: "a pool discovery section without a discovered endpoint",
			pools: `  a:
    endpoints: [127.0.0.1:1]
    discovery: {timeout: 1s}
`,
			errs: []string{`8:16: discovery is only used with dns:// or dns+srv:// endpoints`},
		},
		{
			name:  "a top-level discovery section no pool uses is a warning",
			top:   "discovery: {timeout: 1s}",
			pools: "  a: {endpoints: [127.0.0.1:1]}\n",
			warns: []string{`4:12: discovery: no pool has a dns:// or dns+srv:// endpoint, so these settings are not used`},
		},
		{
			name:  "a top-level discovery section one pool uses",
			top:   "discovery: {resolvers: [10.96.0.10], timeout: 1s}",
			pools: "  a: {endpoints: [127.0.0.1:1]}\n  b: {endpoints: ['dns://web:80']}\n",
		},
		{
			name: "resolvers are IP addresses with an optional port",
			top:  `discovery: {resolvers: [kube-dns.kube-system, "10.0.0.1:0", "10.0.0.1:65536", "[fd00::a]", "10.0.0.1:"]}`,
			pools: `  a:
    endpoints: ['dns://web:80']
    discovery: {resolvers: [ns.example, 10.0.0.300, "10.0.0.1:x"]}
`,
			errs: []string{
				`4:25: resolvers: "kube-dns.kube-system" is not an IP address or IP:port (a resolver cannot be found by DNS)`,
				`4:47: resolvers: "10.0.0.1:0": bad port "0" (want 1..65535)`,
				`4:61: resolvers: "10.0.0.1:65536": bad port "65536" (want 1..65535)`,
				`4:92: resolvers: "10.0.0.1:": bad port "" (want 1..65535)`,
				`8:29: resolvers: "ns.example" is not an IP address or IP:port (a resolver cannot be found by DNS)`,
				`8:41: resolvers: "10.0.0.300" is not an IP address or IP:port (a resolver cannot be found by DNS)`,
				`8:53: resolvers: "10.0.0.1:x": bad port "x" (want 1..65535)`,
			},
		},
		{
			name: "durations and max_endpoints",
			top:  "discovery: {min_ttl: -1s, timeout: 30s, max_endpoints: 65537}",
			pools: `  a:
    endpoints: ['dns://web:80']
    discovery: {max_ttl: -1s, timeout: -1ms, max_endpoints: -1}
  b:
    endpoints: ['dns://web:80']
    discovery: {timeout: 29s, max_endpoints: 65536}
`,
			errs: []string{
				`4:22: min_ttl: must not be negative (0: the default)`,
				`4:36: timeout: must be below 30s, got 30s`,
				`4:56: max_endpoints: want 0..65536 (0: the default, 1024), got 65537`,
				`8:26: max_ttl: must not be negative (0: the default)`,
				`8:40: timeout: must not be negative (0: the default)`,
				`8:61: max_endpoints: want 0..65536 (0: the default, 1024), got -1`,
			},
		},
		{
			name: "min_ttl above max_ttl, after merging and defaults",
			top:  "discovery: {min_ttl: 10s}",
			pools: `  a:
    endpoints: ['dns://web:80']
    discovery: {max_ttl: 5s}
  b:
    endpoints: ['dns://web:80']
    discovery: {min_ttl: 31s}
  c:
    endpoints: ['dns://web:80']
    discovery: {min_ttl: 1s, max_ttl: 10s}
  d:
    endpoints: ['dns://web:80']
`,
			errs: []string{
				`8:26: max_ttl: must be at least min_ttl (10s)`,
				`11:26: min_ttl: must be at most max_ttl (30s)`,
			},
		},
		{
			name:  "min_ttl above max_ttl, both from the top level, is reported there once",
			top:   "discovery: {min_ttl: 40s}",
			pools: "  a: {endpoints: ['dns://web:80']}\n  b: {endpoints: ['dns://web:80']}\n",
			errs:  []string{`4:22: min_ttl: must be at most max_ttl (30s)`},
		},
		{
			name: "discovered endpoints are https with a tls section, so not h2c",
			pools: `  a:
    endpoints: ['dns://web:80', 'dns+srv://_h._tcp.web']
    protocol: h2c
    tls: {server_name: web}
  b:
    endpoints: ['dns://web:80']
    protocol: h2c
  c:
    endpoints: ['dns://web:80']
    protocol: h2
    tls: {}
`,
			errs: []string{
				`7:17: endpoint "dns://web:80" is https (its pool has a tls section) but the pool's protocol is h2c (cleartext)`,
				`7:33: endpoint "dns+srv://_h._tcp.web" is https (its pool has a tls section) but the pool's protocol is h2c (cleartext)`,
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, errs, warns := parseDiscovery(t, tc.top, tc.pools)
			assert.Equal(t, tc.errs, errs)
			assert.Equal(t, tc.warns, warns)
		})
	}
}

// DiscoveryFor merges a pool's section over the top level's field by
// field, then fills the defaults; Resolvers stays nil (resolv.conf) when
// neither names any.
func TestDiscoveryFor(t *testing.T) {
	c, errs, _ := parseDiscovery(t, "discovery: {resolvers: [10.0.0.1], min_ttl: 2s, timeout: 1s}", `  a:
    endpoints: ['dns://web:80']
    discovery: {max_ttl: 10s, max_endpoints: 8}
  b:
    endpoints: ['dns://web:80']
    discovery: {resolvers: ["10.0.0.2:5353"], min_ttl: 3s}
  c:
    endpoints: ['dns://web:80']
`)
	require.Empty(t, errs)
	tests := []struct {
		pool string
		want Discovery
	}{
		{"a", Discovery{Resolvers: []string{"10.0.0.1"}, MinTTL: Duration(2 * time.Second), MaxTTL: Duration(10 * time.Second),
			Timeout: Duration(time.Second), MaxEndpoints: 8}},
		{"b", Discovery{Resolvers: []string{"10.0.0.2:5353"}, MinTTL: Duration(3 * time.Second), MaxTTL: Duration(discovery.DefaultMaxTTL),
			Timeout: Duration(time.Second), MaxEndpoints: discovery.DefaultMaxEndpoints}},
		{"c", Discovery{Resolvers: []string{"10.0.0.1"}, MinTTL: Duration(2 * time.Second), MaxTTL: Duration(discovery.DefaultMaxTTL),
			Timeout: Duration(time.Second), MaxEndpoints: discovery.DefaultMaxEndpoints}},
		{"no such pool", Discovery{Resolvers: []string{"10.0.0.1"}, MinTTL: Duration(2 * time.Second), MaxTTL: Duration(discovery.DefaultMaxTTL),
			Timeout: Duration(time.Second), MaxEndpoints: discovery.DefaultMaxEndpoints}},
	}
	for _, tc := range tests {
		t.Run(tc.pool, func(t *testing.T) {
			assert.Equal(t, tc.want, c.DiscoveryFor(tc.pool))
		})
	}
	t.Run("a copy", func(t *testing.T) {
		c.DiscoveryFor("a").Resolvers[0] = "changed"
		assert.Equal(t, []string{"10.0.0.1"}, c.Discovery.Resolvers)
	})
	t.Run("no section anywhere", func(t *testing.T) {
		c, errs, _ := parseDiscovery(t, "", "  a: {endpoints: ['dns://web:80']}\n")
		require.Empty(t, errs)
		assert.Equal(t, Discovery{MinTTL: Duration(discovery.DefaultMinTTL), MaxTTL: Duration(discovery.DefaultMaxTTL),
			Timeout: Duration(discovery.DefaultTimeout), MaxEndpoints: discovery.DefaultMaxEndpoints}, c.DiscoveryFor("a"))
	})
}

// Discovered tells a dns:// or dns+srv:// endpoint from a static one, which
// ParseEndpoint keeps refusing; DiscoveredScheme follows the tls section.
func TestDiscoveredEndpoint(t *testing.T) {
	for _, tc := range []struct {
		addr       string
		discovered bool
	}{
		{"127.0.0.1:80", false},
		{"https://web:443", false},
		{"dns://web:80", true},
		{"dns+srv://_http._tcp.web", true},
	} {
		t.Run(tc.addr, func(t *testing.T) {
			assert.Equal(t, tc.discovered, Endpoint{Address: tc.addr}.Discovered())
			_, err := ParseEndpoint(tc.addr)
			assert.Equal(t, tc.discovered, err != nil, "ParseEndpoint: %v", err)
		})
	}
	assert.Equal(t, "http", (&Pool{}).DiscoveredScheme())
	assert.Equal(t, "https", (&Pool{TLS: &UpstreamTLS{}}).DiscoveredScheme())
}

// A dns+srv endpoint gets no default weight, so that the effective config
// (GET /config) reads back as valid; a dns:// one gets 1 as a static one.
func TestDiscoveryMarshalReadsBack(t *testing.T) {
	c, errs, _ := parseDiscovery(t, "discovery: {timeout: 1s}", `  a:
    endpoints: ['dns://web:80', 'dns+srv://_http._tcp.web']
    discovery: {resolvers: ["10.0.0.1:53"], max_ttl: 10s}
`)
	require.Empty(t, errs)
	assert.Equal(t, 1, c.Pools["a"].Endpoints[0].Weight)
	assert.Equal(t, 0, c.Pools["a"].Endpoints[1].Weight)
	out, err := c.Marshal()
	require.NoError(t, err)
	back, err := Parse("back.yaml", out, func(string) (string, bool) { return "", false })
	require.NoError(t, err, "%s", out)
	assert.Equal(t, c.Pools["a"].Endpoints, back.Pools["a"].Endpoints)
	assert.Equal(t, c.DiscoveryFor("a"), back.DiscoveryFor("a"))
}
