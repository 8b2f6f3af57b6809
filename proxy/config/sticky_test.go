package config

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestStickyConfig(t *testing.T) {
	env := map[string]string{"STICKY_KEY": strings.Repeat("k", 32)}
	parse := func(sticky string) (*Config, error) {
		text := "version: 1\nlisteners: [{name: a, listen: ':0', routes: [{name: r, pipeline: [{proxy: web}]}]}]\n" +
			"pools:\n  web:\n    endpoints: [127.0.0.1:1]\n    sticky: " + sticky + "\n"
		return Parse("t.yaml", []byte(text), func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	}
	tests := []struct {
		name, sticky string
		want         Sticky // when err is ""
		err          string
	}{
		{"defaults", "{cookie: srv}", Sticky{Cookie: "srv", SameSite: "lax"}, ""},
		{"all", "{cookie: srv, ttl: 1h, secure: true, http_only: false, same_site: none, key: '${STICKY_KEY}'}",
			Sticky{Cookie: "srv", TTL: Duration(3600e9), Secure: true, SameSite: "none", Key: env["STICKY_KEY"]}, ""},
		{"no cookie", "{ttl: 1h}", Sticky{}, "6:13: sticky: cookie (the cookie's name) is required"},
		{"not a token", `{cookie: "my srv"}`, Sticky{}, `6:22: cookie: "my srv" is not a cookie name`},
		{"separator", `{cookie: "srv=1"}`, Sticky{}, `is not a cookie name`},
		{"negative ttl", "{cookie: srv, ttl: -1s}", Sticky{}, "6:32: ttl: must not be negative"},
		{"same_site", "{cookie: srv, same_site: loose}", Sticky{}, `6:38: same_site: want lax, strict or none, got "loose"`},
		{"none without secure", "{cookie: srv, same_site: none}", Sticky{}, "same_site: none needs secure: true"},
		{"short key", "{cookie: srv, key: short}", Sticky{}, "6:32: key: 5 bytes, want at least 32"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := parse(tc.sticky)
			if tc.err != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.err)
				return
			}
			require.NoError(t, err)
			got := *cfg.Pools["web"].Sticky
			require.NotNil(t, got.HTTPOnly)
			assert.Equal(t, tc.sticky != "{cookie: srv, ttl: 1h, secure: true, http_only: false, same_site: none, key: '${STICKY_KEY}'}", *got.HTTPOnly)
			got.HTTPOnly = nil
			assert.Equal(t, tc.want, got)
		})
	}
}
