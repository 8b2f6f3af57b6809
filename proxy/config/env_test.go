package config

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// envConfig is a valid config in which each of the pieces given replaces
// its name: ADMIN (the admin mapping's value), LISTEN, RESPOND (the value
// of the respond stage), POOL (the pool's mapping body, block style at
// four spaces), EXTRA (lines at the end of the route, six spaces).
func envConfig(pieces map[string]string) string {
	text := `version: 1
admin: ADMIN
listeners:
  - name: edge
    listen: LISTEN
    routes:
      - name: r
        pipeline: [{respond: RESPOND}]
EXTRA
pools:
  web:
POOL
`
	defaults := map[string]string{"ADMIN": "{}", "LISTEN": "':0'", "RESPOND": "{}", "POOL": "    endpoints: [127.0.0.1:1]", "EXTRA": ""}
	for k, v := range defaults {
		if p, ok := pieces[k]; ok {
			v = p
		}
		text = strings.Replace(text, k, v, 1)
	}
	return text
}

func parseEnv(t *testing.T, text string, env map[string]string) (*Config, []string) {
	t.Helper()
	cfg, err := Parse("f.yaml", []byte(text), func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	if err == nil {
		return cfg, nil
	}
	var ce Errors
	require.ErrorAs(t, err, &ce)
	out := make([]string, len(ce))
	for i, e := range ce {
		out[i] = strings.TrimPrefix(e.Error(), "f.yaml:")
	}
	return nil, out
}

func body(c *Config) string   { return c.Listeners[0].Routes[0].Pipeline[0].Respond.Body }
func listen(c *Config) string { return c.Listeners[0].Listen }
func endpoints(c *Config) []string {
	var out []string
	for _, e := range c.Pools["web"].Endpoints {
		out = append(out, e.Address)
	}
	return out
}

// hostile are values that would be YAML structure if they were pasted
// into the file; expanded, each is one scalar's text.
var hostile = []string{
	"a: b", "# x", "x # y", "[1,2]", "{x: y}", "'", `"`, "it's", `say "hi"`, "line1\nline2", "line1\n  - x: y",
	"${OTHER}", "$${OTHER}", "- z", "&a", "*a", "!!int 5", "---", "...", "|", "> x", "%YAML 1.2", " lead and trail ", "\t", "",
	"@x", "`x`", "\\", "\\n", "a,b", "}", "]",
}

// TestEnvHostileValues: a value from the environment is the text of the
// scalar it stands in, whatever YAML it holds, in every position: block
// and flow, plain and quoted; and a ${OTHER} in it is not expanded again.
func TestEnvHostileValues(t *testing.T) {
	positions := []struct {
		name, respond string
	}{
		{"flow plain", "{body: ${V}}"},
		{"flow plain in text", "{body: <${V}>}"},
		{"flow double-quoted", `{body: "${V}"}`},
		{"flow single-quoted", `{body: '${V}'}`},
		{"block plain", "\n              body: ${V}\n"},
		{"block double-quoted", "\n              body: \"${V}\"\n"},
		{"block single-quoted", "\n              body: '${V}'\n"},
	}
	for _, pos := range positions {
		for _, v := range hostile {
			t.Run(pos.name+"/"+v, func(t *testing.T) {
				respond := pos.respond
				if strings.HasPrefix(respond, "\n") {
					// A block mapping as the stage's value: the flow
					// sequence of stages becomes a block one.
					respond = ""
				}
				text := envConfig(map[string]string{"RESPOND": respond})
				if respond == "" {
					text = strings.Replace(text, "pipeline: [{respond: }]", "pipeline:\n          - respond:"+strings.TrimSuffix(pos.respond, "\n"), 1)
				}
				cfg, errs := parseEnv(t, text, map[string]string{"V": v, "OTHER": "expanded"})
				require.Empty(t, errs, text)
				want := v
				if strings.Contains(pos.respond, "<") {
					want = "<" + v + ">"
				}
				if v == "" && !strings.Contains(pos.respond, "<") && !strings.ContainsAny(pos.respond, `"'`) {
					want = "" // null: the key left out
				}
				assert.Equal(t, want, body(cfg))
			})
		}
	}
}

// TestEnvPositions: a reference may stand wherever a value may; set,
// defaulted, empty and unset, with the exact position and message of
// each error.
func TestEnvPositions(t *testing.T) {
	env := map[string]string{
		"BACKEND": "127.0.0.1:7001", "PORT": "8081", "N": "7", "EMPTY": "", "ADMIN": "127.0.0.1:9999",
		"LIST": "127.0.0.1:1, 127.0.0.1:2", "MAP": "{body: x}", "TRUE": "true", "NULL": "~",
	}
	tests := []struct {
		name   string
		pieces map[string]string
		check  func(t *testing.T, c *Config)
		errs   []string
	}{
		{name: "flow sequence", pieces: map[string]string{"POOL": "    endpoints: [${BACKEND}, '${UNSET:-127.0.0.1:7002}']"},
			check: func(t *testing.T, c *Config) {
				assert.Equal(t, []string{"127.0.0.1:7001", "127.0.0.1:7002"}, endpoints(c))
			}},
		{name: "block sequence", pieces: map[string]string{"POOL": "    endpoints:\n      - ${BACKEND}\n      - \"127.0.0.1:${PORT}\""},
			check: func(t *testing.T, c *Config) {
				assert.Equal(t, []string{"127.0.0.1:7001", "127.0.0.1:8081"}, endpoints(c))
			}},
		{name: "flow mapping, default", pieces: map[string]string{"ADMIN": "{listen: ${UNSET:-127.0.0.1:9901}}"},
			check: func(t *testing.T, c *Config) { assert.Equal(t, "127.0.0.1:9901", c.Admin.Listen) }},
		{name: "flow mapping, set", pieces: map[string]string{"ADMIN": "{listen: ${ADMIN:-127.0.0.1:9901}}"},
			check: func(t *testing.T, c *Config) { assert.Equal(t, "127.0.0.1:9999", c.Admin.Listen) }},
		{name: "part of a plain scalar", pieces: map[string]string{"LISTEN": "127.0.0.1:${PORT}"},
			check: func(t *testing.T, c *Config) { assert.Equal(t, "127.0.0.1:8081", listen(c)) }},
		{name: "two in one scalar", pieces: map[string]string{"LISTEN": "${UNSET:-127.0.0.1}:${PORT}"},
			check: func(t *testing.T, c *Config) { assert.Equal(t, "127.0.0.1:8081", listen(c)) }},
		{name: "an int", pieces: map[string]string{"EXTRA": "    max_connections: ${N}"},
			check: func(t *testing.T, c *Config) { assert.Equal(t, 7, c.Listeners[0].MaxConnections) }},
		{name: "a quoted int", pieces: map[string]string{"EXTRA": "    max_connections: \"${N}\""},
			check: func(t *testing.T, c *Config) { assert.Equal(t, 7, c.Listeners[0].MaxConnections) }},
		{name: "a bool", pieces: map[string]string{"ADMIN": "{pprof: ${TRUE}}"},
			check: func(t *testing.T, c *Config) { assert.True(t, c.Admin.Pprof) }},
		{name: "empty plain is null", pieces: map[string]string{"POOL": "    endpoints: [127.0.0.1:1]\n    readiness: ${EMPTY}"},
			check: func(t *testing.T, c *Config) { assert.Nil(t, c.Pools["web"].Readiness) }},
		{name: "~ plain is null", pieces: map[string]string{"POOL": "    endpoints: [127.0.0.1:1]\n    readiness: ${NULL}"},
			check: func(t *testing.T, c *Config) { assert.Nil(t, c.Pools["web"].Readiness) }},
		{name: "empty default", pieces: map[string]string{"RESPOND": "{body: '${UNSET:-}'}"},
			check: func(t *testing.T, c *Config) { assert.Equal(t, "", body(c)) }},
		{name: "set but empty", pieces: map[string]string{"RESPOND": "{body: 'a${EMPTY}b'}"},
			check: func(t *testing.T, c *Config) { assert.Equal(t, "ab", body(c)) }},
		{name: "set but empty takes the default", pieces: map[string]string{"RESPOND": "{body: '${EMPTY:-d}'}"},
			check: func(t *testing.T, c *Config) { assert.Equal(t, "d", body(c)) }},
		{name: "default is not expanded", pieces: map[string]string{"RESPOND": "{body: '${UNSET:-$PORT}'}"},
			check: func(t *testing.T, c *Config) { assert.Equal(t, "$PORT", body(c)) }},
		{name: "block literal", pieces: map[string]string{"RESPOND": "{}", "EXTRA": "      - name: s\n        match: {path_prefix: /s}\n        pipeline:\n          - respond:\n              body: |\n                port ${PORT}\n                next"},
			check: func(t *testing.T, c *Config) {
				assert.Equal(t, "port 8081\nnext\n", c.Listeners[0].Routes[1].Pipeline[0].Respond.Body)
			}},
		{name: "escapes", pieces: map[string]string{"RESPOND": "{body: 'cost $$5, $${PORT}, $$$${PORT}, $HOME, $'}"},
			check: func(t *testing.T, c *Config) { assert.Equal(t, "cost $5, ${PORT}, $${PORT}, $HOME, $", body(c)) }},
		{name: "escape then a reference", pieces: map[string]string{"RESPOND": "{body: '$$${PORT}'}"},
			check: func(t *testing.T, c *Config) { assert.Equal(t, "$8081", body(c)) }},
		{name: "in a comment, never looked up", pieces: map[string]string{"LISTEN": "':0' # ${UNSET} and ${1bad"},
			check: func(t *testing.T, c *Config) { assert.Equal(t, ":0", listen(c)) }},
		{name: "a list from one variable is one value", pieces: map[string]string{"POOL": "    endpoints: [${LIST}]"},
			errs: []string{`12:17: endpoint: "127.0.0.1:1, 127.0.0.1:2" is not host:port or http(s)://host:port`}},
		{name: "a mapping from one variable is one string", pieces: map[string]string{"RESPOND": "${MAP}"},
			errs: []string{`8:30: respond: want a mapping, got "{body: x}"`}},
		{name: "unset in a flow sequence", pieces: map[string]string{"POOL": "    endpoints: [127.0.0.1:1, ${NOPE}]"},
			errs: []string{`12:30: environment variable NOPE is not set and has no default (write ${NOPE:-default})`}},
		{name: "unset in a flow mapping", pieces: map[string]string{"ADMIN": "{listen: ${NOPE}}"},
			errs: []string{`2:17: environment variable NOPE is not set and has no default (write ${NOPE:-default})`}},
		{name: "unset inside quotes", pieces: map[string]string{"LISTEN": `"127.0.0.1:${NOPE}"`},
			errs: []string{`5:24: environment variable NOPE is not set and has no default (write ${NOPE:-default})`}},
		{name: "unset after non-ASCII", pieces: map[string]string{"RESPOND": "{body: 'é ${NOPE}'}"},
			errs: []string{`8:40: environment variable NOPE is not set and has no default (write ${NOPE:-default})`}},
		{name: "each unset reference once", pieces: map[string]string{"LISTEN": "${NOPE}:${NOPE2}", "RESPOND": "{body: ${NOPE}}"},
			errs: []string{
				`5:13: environment variable NOPE is not set and has no default (write ${NOPE:-default})`,
				`5:21: environment variable NOPE2 is not set and has no default (write ${NOPE2:-default})`,
				`8:37: environment variable NOPE is not set and has no default (write ${NOPE:-default})`,
			}},
		{name: "a reference in a key", pieces: map[string]string{"RESPOND": "{headers: {${H}: v}}"},
			errs: []string{`8:41: ${H} in a mapping key: keys are not expanded (a value may come from the environment, a key may not)`}},
		{name: "a reference in a block key", pieces: map[string]string{"POOL": "    endpoints: [127.0.0.1:1]\n  ${POOL}:\n    endpoints: [127.0.0.1:2]"},
			errs: []string{`13:3: ${POOL} in a mapping key: keys are not expanded (a value may come from the environment, a key may not)`}},
		{name: "a reference in a stage key", pieces: map[string]string{"RESPOND": "{}}, {${KIND}: web"},
			errs: []string{`8:36: ${KIND} in a mapping key: keys are not expanded (a value may come from the environment, a key may not)`}},
		{name: "a bad name", pieces: map[string]string{"RESPOND": "{body: 'x ${1BAD}'}"},
			errs: []string{`8:40: ${ starts no reference: want ${NAME} or ${NAME:-default} on one line, NAME of letters, digits and _ (write $${ for a literal ${)`}},
		{name: "unclosed", pieces: map[string]string{"LISTEN": "':0' # ${", "RESPOND": "{body: 'x ${PORT'}"},
			errs: []string{`8:40: ${ starts no reference: want ${NAME} or ${NAME:-default} on one line, NAME of letters, digits and _ (write $${ for a literal ${)`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			text := envConfig(tc.pieces)
			cfg, errs := parseEnv(t, text, env)
			if tc.errs != nil {
				assert.Equal(t, tc.errs, errs, text)
				return
			}
			require.Empty(t, errs, text)
			tc.check(t, cfg)
		})
	}
}

// A reference may be the shortest placeholder there is, and there may be
// many.
func TestEnvManyShortReferences(t *testing.T) {
	var b strings.Builder
	for range 500 {
		b.WriteString("${A}")
	}
	cfg, errs := parseEnv(t, envConfig(map[string]string{"RESPOND": "{body: " + b.String() + "}"}), map[string]string{"A": "x"})
	require.Empty(t, errs)
	assert.Equal(t, strings.Repeat("x", 500), body(cfg))
}

// Marshal(HideEnv) writes each value from the environment as the file wrote
// it, which reads back as the same config; admin.show_env shows them.
func TestMarshalHidesEnv(t *testing.T) {
	env := map[string]string{"TOKEN": "s3cr3t-token", "PORT": "8081", "BACKEND": "10.9.8.7:80", "POOL": "web", "KEY": "header:X-Secret-User", "R": "3", "AFTER": "25ms"}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	text := `version: 1
admin: {listen: "127.0.0.2:${PORT}"SHOW}
listeners:
  - name: edge
    listen: 127.0.0.1:${PORT}
    routes:
      - name: r
        pipeline:
          - headers: {request: {set: {Authorization: "Bearer ${TOKEN}", X-Lit: "$${TOKEN} $$5"}}}
          - split:
              name: x
              key: ${KEY}
              arms:
                - {name: a, weight: 1, pipeline: [{proxy: ${POOL}}]}
                - {name: b, weight: 1, pipeline: [{scatter: {leaves: [web], hedge_after: ${AFTER}, merge: {concat: ndjson}}}]}
pools:
  web: {endpoints: [127.0.0.1:1, "${BACKEND}"], retries: ${R}}
`
	hidden := strings.Replace(text, "SHOW", "", 1)
	cfg, err := Parse("f.yaml", []byte(hidden), lookup)
	require.NoError(t, err)
	assert.Equal(t, []string{"TOKEN"}, cfg.FromEnv("listeners[0].routes[0].pipeline[0].headers.request.set.Authorization"))
	assert.Equal(t, []string{"BACKEND"}, cfg.FromEnv("pools.web.endpoints[1].address"))
	assert.Nil(t, cfg.FromEnv("listeners[0].routes[0].pipeline[0].headers.request.set.X-Lit"), "an escape is no reference")
	assert.Equal(t, "${TOKEN} $5", cfg.Listeners[0].Routes[0].Pipeline[0].Headers.Request.Set["X-Lit"])
	assert.Equal(t, []string{"POOL"}, cfg.FromEnv("listeners[0].routes[0].pipeline[1].split.arms[0].pipeline[0].proxy.pool"))

	full, err := cfg.Marshal()
	require.NoError(t, err)
	assert.Contains(t, string(full), "s3cr3t-token")

	shown, err := cfg.Marshal(HideEnv)
	require.NoError(t, err)
	for _, v := range env {
		if v != "web" && v != "3" {
			assert.NotContains(t, string(shown), v)
		}
	}
	for _, ref := range []string{"Bearer ${TOKEN}", "127.0.0.1:${PORT}", "${KEY}", "${POOL}", "${AFTER}", "${R}", "${BACKEND}", "$${TOKEN} $$5"} {
		assert.Contains(t, string(shown), ref)
	}
	again, err := Parse("again", shown, lookup)
	require.NoError(t, err, string(shown))
	fullAgain, err := again.Marshal()
	require.NoError(t, err)
	assert.Equal(t, string(full), string(fullAgain), "what /config shows reads back as the same config")

	cfg, err = Parse("f.yaml", []byte(strings.Replace(text, "SHOW", ", show_env: true", 1)), lookup)
	require.NoError(t, err)
	shown, err = cfg.Marshal(HideEnv)
	require.NoError(t, err)
	assert.Contains(t, string(shown), "s3cr3t-token")
}
