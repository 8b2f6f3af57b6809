package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

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
	assert.Equal(t, []string{
		`5:21: max_body_bytes: must not be negative (0: no limit)`,
		`6:22: max_connections: must not be negative (0: no limit)`,
		`9:25: max_body_bytes: must not be negative (0: no limit)`,
		`10:18: timeout: must not be negative (0: none)`,
		`15:20: max_in_flight: must not be negative (0: no limit)`,
		`16:27: overflow_retry_after: must not be negative`,
		`19:27: overflow_retry_after is only used with max_in_flight`,
	}, loadErrors(t, path))
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

// Retries take the short form or Envoy's long one, and both get the
// documented defaults; passive ejection is on unless turned off; every
// bad retry value is reported at its place.
func TestRetriesAndOutlierConfig(t *testing.T) {
	load := func(t *testing.T, body string) (*Config, []string) {
		path := filepath.Join(t.TempDir(), "c.yaml")
		require.NoError(t, os.WriteFile(path, []byte(`version: 1
listeners:
  - name: edge
    listen: 127.0.0.1:0
    routes: [{name: all, pipeline: [{proxy: a}]}]
pools:
`+body), 0o644))
		c, err := Load(path)
		var ce Errors
		if err != nil {
			require.ErrorAs(t, err, &ce)
		}
		var got []string
		for _, e := range ce {
			got = append(got, strings.TrimPrefix(e.Error(), path+":"))
		}
		return c, got
	}
	t.Run("defaults", func(t *testing.T) {
		c, errs := load(t, `  a: {endpoints: [127.0.0.1:1]}
  b: {endpoints: [127.0.0.1:2], retries: 3, outlier: {enabled: false}}
  c:
    endpoints: [127.0.0.1:3]
    retries: {on: ["503"], backoff: {base: 10ms}, budget: {percent: 0}}
`)
		require.Empty(t, errs)
		a, b, cc := c.Pools["a"], c.Pools["b"], c.Pools["c"]
		assert.Equal(t, 1, *a.Retries.Attempts)
		assert.Equal(t, []string{"connect-failure", "reset"}, a.Retries.On)
		assert.Equal(t, 20, *a.Retries.Budget.Percent)
		assert.Equal(t, 3, *a.Retries.Budget.MinConcurrency)
		assert.Nil(t, a.Retries.Backoff)
		assert.True(t, *a.Outlier.Enabled)
		assert.Equal(t, 1, a.Outlier.ConsecutiveFailures)
		assert.Equal(t, 10*time.Second, a.Outlier.Eject.D())
		assert.Equal(t, 50, *a.Outlier.MaxEjectedPercent)
		assert.Equal(t, 3, *b.Retries.Attempts)
		assert.False(t, *b.Outlier.Enabled)
		assert.Equal(t, 1, *cc.Retries.Attempts)
		assert.Equal(t, []string{"503"}, cc.Retries.On)
		assert.Equal(t, 100*time.Millisecond, cc.Retries.Backoff.Max.D())
		assert.Equal(t, 0, *cc.Retries.Budget.Percent)
	})
	t.Run("errors", func(t *testing.T) {
		_, errs := load(t, `  a:
    endpoints: [127.0.0.1:1]
    retries:
      attempts: -1
      on: [connect-failure, 500]
      per_try_timeout: -1s
      backoff: {base: 50ms, max: 10ms}
      budget: {percent: 101, min_concurrency: -1}
`)
		assert.Equal(t, []string{
			`10:17: attempts: must not be negative`,
			`11:29: on: want connect-failure, reset, refused-stream, 502, 503, 504, timeout, got "500"`,
			`12:24: per_try_timeout: must not be negative`,
			`13:34: max: must be at least base (50ms)`,
			`14:25: percent: want 0..100, got 101`,
			`14:47: min_concurrency: must not be negative`,
		}, errs)
	})
}
