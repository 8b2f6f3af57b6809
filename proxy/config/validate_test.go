package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The limit keys are checked with their positions.
func TestLimitKeysValidation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "limits.yaml")
	require.NoError(t, os.WriteFile(path, []byte(`version: 1
listeners:
  - name: edge
    listen: 127.0.0.1:0
    max_body_bytes: -1
    max_connections: -2
    routes:
      - name: all
        max_body_bytes: -3
        timeout: -1s
        pipeline: [{proxy: up}]
pools:
  up:
    endpoints: [127.0.0.1:1]
    max_in_flight: -1
    overflow_retry_after: -1s
  other:
    endpoints: [127.0.0.1:2]
    overflow_retry_after: 2s
`), 0o644))
	_, err := Load(path)
	var ce Errors
	require.ErrorAs(t, err, &ce)
	got := make([]string, len(ce))
	for i, e := range ce {
		got[i] = strings.TrimPrefix(e.Error(), path+":")
	}
	assert.Equal(t, []string{
		`5:21: max_body_bytes: must not be negative (0: no limit)`,
		`6:22: max_connections: must not be negative (0: no limit)`,
		`9:25: max_body_bytes: must not be negative (0: no limit)`,
		`10:18: timeout: must not be negative (0: none)`,
		`15:20: max_in_flight: must not be negative (0: no limit)`,
		`16:27: overflow_retry_after: must not be negative`,
		`19:27: overflow_retry_after is only used with max_in_flight`,
	}, got)
}

// A route's upgrades are protocol names, and h2c is never one of them; an
// absent list is [websocket], an empty one stays empty.
func TestRouteUpgradesConfig(t *testing.T) {
	parse := func(upgrades string) (*Config, error) {
		text := "version: 1\nlisteners: [{name: a, listen: ':0', routes: [{name: r" + upgrades + ", pipeline: [{respond: {}}]}]}]\n"
		return Parse("t.yaml", []byte(text), func(string) (string, bool) { return "", false })
	}
	tests := []struct {
		name, upgrades string
		want           []string
		err            string
	}{
		{"default", "", []string{"websocket"}, ""},
		{"none", ", upgrades: []", []string{}, ""},
		{"custom", ", upgrades: [websocket, echo]", []string{"websocket", "echo"}, ""},
		{"h2c refused", ", upgrades: [H2C]", nil, "h2c is never tunnelled"},
		{"not a token", `, upgrades: ["web socket"]`, nil, `"web socket" is not a protocol name`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := parse(tc.upgrades)
			if tc.err != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, cfg.Listeners[0].Routes[0].Upgrades)
		})
	}
}

// forwarded takes rfc7239 or nothing; set_real_ip is a bool.
func TestPoolForwardingKeys(t *testing.T) {
	parse := func(pool string) (*Config, error) {
		text := "version: 1\nlisteners: [{name: a, listen: ':0', routes: [{name: r, pipeline: [{proxy: up}]}]}]\n" +
			"pools:\n  up: {endpoints: [127.0.0.1:1]" + pool + "}\n"
		return Parse("t.yaml", []byte(text), func(string) (string, bool) { return "", false })
	}
	c, err := parse(", forwarded: rfc7239, set_real_ip: true")
	require.NoError(t, err)
	assert.Equal(t, "rfc7239", c.Pools["up"].Forwarded)
	assert.True(t, c.Pools["up"].SetRealIP)
	c, err = parse("")
	require.NoError(t, err)
	assert.Empty(t, c.Pools["up"].Forwarded)
	assert.False(t, c.Pools["up"].SetRealIP)
	_, err = parse(", forwarded: x-forwarded")
	require.ErrorContains(t, err, `forwarded: want rfc7239 or nothing, got "x-forwarded"`)
}
