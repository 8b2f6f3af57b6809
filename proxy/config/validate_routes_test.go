package config

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func routesConfig(routes string) string {
	return "version: 1\nlisteners:\n  - name: edge\n    listen: ':0'\n    routes:\n" + routes + "pools:\n  p: {endpoints: ['127.0.0.1:1']}\n"
}

func lines(t *testing.T, es Errors) []string {
	t.Helper()
	out := []string{}
	for _, e := range es {
		out = append(out, strings.TrimPrefix(e.Error(), "f.yaml:"))
	}
	return out
}

// A redirect that sends a client back to a URL the same route redirects
// the same way is an error; one that may reach anything else is not.
func TestRedirectLoops(t *testing.T) {
	tests := []struct {
		name, routes string
		errs         []string
	}{
		{"drop_query alone", "      - {name: r, pipeline: [{redirect: {drop_query: true}}]}\n",
			[]string{`6:41: redirect: drop_query alone sends /a?x to /a and /a to itself, a loop; set scheme, host, port or path too`}},
		{"drop_query alone in a split arm", "      - {name: r, pipeline: [{split: {name: x, key: path, arms: [{name: a, weight: 1, pipeline: [{redirect: {drop_query: true, status: 301}}]}]}}]}\n",
			[]string{`6:109: redirect: drop_query alone sends /a?x to /a and /a to itself, a loop; set scheme, host, port or path too`}},
		{"path the route matches", "      - {name: r, pipeline: [{redirect: {path: /home}}]}\n",
			[]string{`6:48: redirect: path "/home" is matched by this route (path_prefix "/"), which redirects it to itself, a loop`}},
		{"path under the route's prefix", "      - {name: r, match: {path_prefix: /old}, pipeline: [{redirect: {path: /old/new, drop_query: true}}]}\n",
			[]string{`6:76: redirect: path "/old/new" is matched by this route (path_prefix "/old"), which redirects it to itself, a loop`}},
		{"path another route takes", "      - {name: r, pipeline: [{redirect: {path: /home}}]}\n      - {name: h, match: {path_prefix: /home}, pipeline: [{proxy: p}]}\n", nil},
		{"path outside the prefix", "      - {name: r, match: {path_prefix: /old}, pipeline: [{redirect: {path: /new}}]}\n      - {name: n, match: {path_prefix: /new}, pipeline: [{proxy: p}]}\n", nil},
		{"path with methods", "      - {name: r, match: {methods: [POST]}, pipeline: [{redirect: {path: /home}}]}\n", nil},
		{"scheme", "      - {name: r, pipeline: [{redirect: {scheme: https}}]}\n", nil},
		{"host", "      - {name: r, pipeline: [{redirect: {host: example.com, drop_query: true}}]}\n", nil},
		{"port", "      - {name: r, pipeline: [{redirect: {port: '8443'}}]}\n", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("f.yaml", []byte(routesConfig(tc.routes)), nil)
			if tc.errs == nil {
				require.NoError(t, err)
				return
			}
			var ce Errors
			require.ErrorAs(t, err, &ce)
			assert.Equal(t, tc.errs, lines(t, ce))
		})
	}
}

// A route an earlier one takes every request of is a warning, not an
// error; a route that ranks higher or matches more is not shadowed.
func TestShadowedRoutesWarn(t *testing.T) {
	tests := []struct {
		name, routes string
		warnings     []string
	}{
		{"the same match twice", "      - {name: a, pipeline: [{proxy: p}]}\n      - {name: b, pipeline: [{proxy: p}]}\n",
			[]string{`7:16: route "b" never gets a request: route "a" (at 6:16) matches every request it does and is tried first (the same host and path_prefix, earlier in the file)`}},
		{"narrower methods and headers later", "      - {name: a, match: {host: A.example., path_prefix: /x, methods: [GET, POST], headers: {X-A: '*'}}, pipeline: [{proxy: p}]}\n      - {name: b, match: {host: a.example, path_prefix: /x, methods: [GET], headers: {x-a: '1', X-B: '2'}}, pipeline: [{proxy: p}]}\n",
			[]string{`7:16: route "b" never gets a request: route "a" (at 6:16) matches every request it does and is tried first (the same host and path_prefix, earlier in the file)`}},
		{"a longer prefix later ranks first", "      - {name: a, pipeline: [{proxy: p}]}\n      - {name: b, match: {path_prefix: /api}, pipeline: [{proxy: p}]}\n", nil},
		{"a host later ranks first", "      - {name: a, pipeline: [{proxy: p}]}\n      - {name: b, match: {host: a.example}, pipeline: [{proxy: p}]}\n", nil},
		{"the earlier asks for a method", "      - {name: a, match: {methods: [GET]}, pipeline: [{proxy: p}]}\n      - {name: b, pipeline: [{proxy: p}]}\n", nil},
		{"the earlier asks for a header value", "      - {name: a, match: {headers: {X-A: '1'}}, pipeline: [{proxy: p}]}\n      - {name: b, match: {headers: {X-A: '*'}}, pipeline: [{proxy: p}]}\n", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Parse("f.yaml", []byte(routesConfig(tc.routes)), nil)
			require.NoError(t, err)
			if tc.warnings == nil {
				assert.Empty(t, cfg.Warnings())
				return
			}
			assert.Equal(t, tc.warnings, lines(t, cfg.Warnings()))
		})
	}
}
