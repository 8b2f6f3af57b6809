package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"sekisho/proxy/certs/certstest"
)

// TestBrokenConfigs loads each broken fixture and checks every error it
// reports, with its exact position.
func TestBrokenConfigs(t *testing.T) {
	dir := filepath.Join("..", "..", "testdata", "broken")
	cases := []struct {
		file string
		want []string
	}{
		{"unknown-key.yaml", []string{`5:5: unknown key "routs" in listeners[0] (known: client_ip, listen, max_body_bytes, max_connections, max_header_bytes, name, proxy_protocol, routes, timeouts, tls)`}},
		{"wrong-type.yaml", []string{`11:14: retries: want an integer or a mapping, got "many"`}},
		{"duplicate-route.yaml", []string{`8:15: route name "all" is used twice in listener "edge" (first at 6:15)`}},
		{"undefined-pool.yaml", []string{`8:20: pool "nowhere" is not defined under pools`}},
		{"empty-endpoints.yaml", []string{`10:5: pool "web" has no endpoints`}},
		{"bad-duration.yaml", []string{`11:25: connect: bad duration "2 seconds" (want a Go duration such as 150ms or 2s)`}},
		{"no-terminal.yaml", []string{`8:22: pipeline ends in headers, which is not a terminal stage: end it with proxy, shard, scatter, split, respond or redirect`}},
		{"unset-env.yaml", []string{`4:13: environment variable SEKISHO_TEST_SURELY_UNSET is not set and has no default (write ${SEKISHO_TEST_SURELY_UNSET:-default})`}},
		{"not-yaml.yaml", []string{`4:13: not valid YAML: did not find expected ',' or ']'`}},
		{"two-stages-in-one.yaml", []string{"8:13: a stage is a one-key map such as `proxy: POOL`; got 2 keys (proxy, respond)"}},
		{"bad-endpoint.yaml", []string{
			`10:17: endpoint: "127.0.0.1" needs a host and a port`,
			`10:28: endpoint: "ftp://127.0.0.1:21": scheme must be http or https`,
		}},
		{"many-errors.yaml", []string{
			`1:10: version: want 1, got 2`,
			`2:14: log.level: want debug, info, warn or error, got "loud"`,
			`5:13: listen: "nowhere" is not host:port`,
			`8:30: path_prefix: "api" must start with /`,
			`13:14: balance: want round_robin, least_request, random, ip_hash or hash, got "fastest"`,
		}},
	}
	for _, tc := range cases {
		t.Run(tc.file, func(t *testing.T) {
			assert.Equal(t, tc.want, loadErrors(t, filepath.Join(dir, tc.file)))
		})
	}
}

func TestExampleConfigIsValid(t *testing.T) {
	p := certstest.NewCA(t).Issue(t, t.TempDir(), "localhost", "127.0.0.1")
	t.Setenv("SEKISHO_TLS_CERT", p.CertFile)
	t.Setenv("SEKISHO_TLS_KEY", p.KeyFile)
	cfg, err := Load(filepath.Join("..", "..", "config.example.yaml"))
	require.NoError(t, err)
	assert.Len(t, cfg.Listeners, 2)
	assert.Contains(t, cfg.Summary(), "2 listener(s), 6 route(s), 9 pool(s)")
	assert.Empty(t, cfg.Warnings())
	out, err := cfg.Marshal()
	require.NoError(t, err)
	again, err := Parse("again", out, func(string) (string, bool) { return "", false })
	require.NoError(t, err, string(out))
	outAgain, err := again.Marshal()
	require.NoError(t, err)
	assert.Equal(t, string(out), string(outAgain), "the effective config must read back as itself")
}

func TestEmptyAndMultiDocument(t *testing.T) {
	for name, text := range map[string]string{
		"empty":    "",
		"comments": "# nothing\n",
		"two-docs": "version: 1\n---\nversion: 1\n",
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Parse("f.yaml", []byte(text), os.LookupEnv)
			require.Error(t, err)
			var ce Errors
			assert.ErrorAs(t, err, &ce)
		})
	}
}

func FuzzParseConfig(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join("..", "..", "testdata", "*", "*.yaml"))
	for _, file := range files {
		if b, err := os.ReadFile(file); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte("version: 1\nlisteners: [{name: a, listen: ':0', routes: [{name: r, pipeline: [{respond: {}}]}]}]"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse("fuzz.yaml", data, func(string) (string, bool) { return "x", true })
		if err == nil && cfg == nil {
			t.Fatal("nil config without error")
		}
	})
}

// loadErrors loads the config file at path, which must fail, and returns
// its errors as LINE:COL: message, each checked to name path.
func loadErrors(t *testing.T, path string) []string {
	t.Helper()
	_, err := Load(path)
	require.Error(t, err)
	var ce Errors
	require.ErrorAs(t, err, &ce)
	got := make([]string, len(ce))
	for i, e := range ce {
		assert.Equal(t, path, e.File)
		got[i] = strings.TrimPrefix(e.Error(), path+":")
	}
	return got
}
