package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// runBinary runs the built sekisho with args in dir and the environment
// env (SEKISHO_* from the test's own environment left out), and returns
// its exit code, stdout and stderr.
func runBinary(t *testing.T, dir string, env []string, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(binPath, args...)
	cmd.Dir = dir
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "SEKISHO_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else {
		require.NoError(t, err)
	}
	return code, stdout.String(), stderr.String()
}

// commandList is the start of the top-level usage, with every command.
const commandList = `usage: sekisho COMMAND [flags] [args]

commands:
  run       serve a config (the default command)
  validate  check a config: exit 0 with a summary, or 1 with every error
  reload    ask a running sekisho to reload its config (POST /reload)
  sidecar   serve TLS in front of one local service, configured by flags
  version   print the version
  help      list the commands, or show one command's flags
`

// TestCommandLine runs the built binary with each form of help and version,
// positional config files and usage errors, and checks exit code, stdout and
// stderr.
func TestCommandLine(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "ok.yaml")
	require.NoError(t, os.WriteFile(good, []byte(`
version: 1
listeners:
  - name: edge
    listen: 127.0.0.1:0
    routes: [{name: all, pipeline: [{respond: {body: hi}}]}]
`), 0o644))
	other := filepath.Join(dir, "other.yaml")
	require.NoError(t, os.WriteFile(other, []byte("version: 2\n"), 0o644))
	summary := good + ": ok: 1 listener(s), 1 route(s), 0 pool(s)\n"
	broken := filepath.Join(dir, "broken.yaml")
	require.NoError(t, os.WriteFile(broken, []byte("version: 2\nlisteners: []\n"), 0o644))

	type want struct {
		code           int
		stdout, stderr string // prefixes; "" means empty
	}
	runHelp := "usage: sekisho run [flags] [FILE]\n"
	cases := []struct {
		name string
		env  []string
		args []string
		want want
	}{
		{"version", nil, []string{"version"}, want{0, "sekisho dev\n", ""}},
		{"--version", nil, []string{"--version"}, want{0, "sekisho dev\n", ""}},
		{"-version", nil, []string{"-version"}, want{0, "sekisho dev\n", ""}},
		{"version with an argument", nil, []string{"version", "x"}, want{2, "", "sekisho version: unexpected argument \"x\"\n\nusage: sekisho version\n"}},

		{"-h", nil, []string{"-h"}, want{0, commandList, ""}},
		{"--help", nil, []string{"--help"}, want{0, commandList, ""}},
		{"-help", nil, []string{"-help"}, want{0, commandList, ""}},
		{"help", nil, []string{"help"}, want{0, commandList, ""}},
		{"no arguments", nil, nil, want{2, "", commandList}},
		{"help run", nil, []string{"help", "run"}, want{0, runHelp, ""}},
		{"run -h", nil, []string{"run", "-h"}, want{0, runHelp, ""}},
		{"run --help", nil, []string{"run", "--help"}, want{0, runHelp, ""}},
		{"help validate", nil, []string{"help", "validate"}, want{0, "usage: sekisho validate [flags] [FILE]\n", ""}},
		{"validate -h", nil, []string{"validate", "-h"}, want{0, "usage: sekisho validate [flags] [FILE]\n", ""}},
		{"help reload", nil, []string{"help", "reload"}, want{0, "usage: sekisho reload [flags]\n", ""}},
		{"reload --help", nil, []string{"reload", "--help"}, want{0, "usage: sekisho reload [flags]\n", ""}},
		{"help sidecar", nil, []string{"help", "sidecar"}, want{0, "usage: sekisho sidecar [flags]\n", ""}},
		{"sidecar -h", nil, []string{"sidecar", "-h"}, want{0, "usage: sekisho sidecar [flags]\n", ""}},
		{"sidecar --help", nil, []string{"sidecar", "--help"}, want{0, "usage: sekisho sidecar [flags]\n", ""}},
		{"help version", nil, []string{"help", "version"}, want{0, "usage: sekisho version\n", ""}},
		{"version -h", nil, []string{"version", "-h"}, want{0, "usage: sekisho version\n", ""}},
		{"help help", nil, []string{"help", "help"}, want{0, "usage: sekisho help [COMMAND]\n", ""}},
		{"help of an unknown command", nil, []string{"help", "frob"}, want{2, "", "sekisho help: unknown command \"frob\"\n\n" + commandList}},

		{"unknown command", nil, []string{"frob"}, want{2, "", "sekisho: unknown command \"frob\"\n\n" + commandList}},
		{"unknown flag", nil, []string{"--frob"}, want{2, "", "flag provided but not defined: -frob\n\n" + runHelp}},
		{"unknown flag of a command", nil, []string{"validate", "-frob", good}, want{2, "", "flag provided but not defined: -frob\n\nusage: sekisho validate"}},
		{"unknown flag of sidecar", nil, []string{"sidecar", "--frob"}, want{2, "", "flag provided but not defined: -frob\n\nusage: sekisho sidecar"}},

		{"validate FILE", nil, []string{"validate", good}, want{0, summary, ""}},
		{"validate -config FILE", nil, []string{"validate", "-config", good}, want{0, summary, ""}},
		{"validate --config=FILE", nil, []string{"validate", "--config=" + good}, want{0, summary, ""}},
		{"validate with SEKISHO_CONFIG", []string{"SEKISHO_CONFIG=" + good}, []string{"validate"}, want{0, summary, ""}},
		{"validate FILE wins over SEKISHO_CONFIG", []string{"SEKISHO_CONFIG=" + other}, []string{"validate", good}, want{0, summary, ""}},
		{"validate a broken FILE", nil, []string{"validate", broken}, want{1, "", broken + ":1:10: version: want 1, got 2\n"}},
		{"validate a missing FILE", nil, []string{"validate", filepath.Join(dir, "nowhere.yaml")}, want{1, "", "sekisho: "}},
		{"validate without a file", nil, []string{"validate"}, want{2, "", "sekisho validate: a config file is required: FILE, -config FILE or SEKISHO_CONFIG\n\nusage: sekisho validate"}},
		{"validate two files", nil, []string{"validate", good, other}, want{2, "", "sekisho validate: one config file, got 2: " + good + " " + other + "\n\nusage: sekisho validate"}},
		{"validate FILE and -config", nil, []string{"validate", "-config", other, good}, want{2, "", "sekisho validate: the config file is given twice: -config " + other + " and " + good + "\n\n"}},
		{"validate FILE then a flag", nil, []string{"validate", good, "-config", other}, want{2, "", "sekisho validate: unexpected argument \"-config\" (flags go before FILE)\n\n"}},

		{"run a broken FILE", nil, []string{"run", broken}, want{1, "", broken + ":1:10: version: want 1, got 2\n"}},
		{"a broken FILE by -config, run implied", nil, []string{"-config", broken}, want{1, "", broken + ":1:10: version: want 1, got 2\n"}},
		{"run two files", nil, []string{"run", good, other}, want{2, "", "sekisho run: one config file, got 2: "}},
		{"run FILE and -config", nil, []string{"run", "-config", other, good}, want{2, "", "sekisho run: the config file is given twice: "}},
		{"run without a file", nil, []string{"run"}, want{2, "", "sekisho run: a config file is required: FILE, -config FILE or SEKISHO_CONFIG\n"}},
		{"reload with an argument", nil, []string{"reload", "x"}, want{2, "", "sekisho reload: unexpected argument \"x\"\n\nusage: sekisho reload"}},
		{"sidecar with an argument", nil, []string{"sidecar", "x"}, want{2, "", "sekisho sidecar: unexpected argument \"x\"\n\nusage: sekisho sidecar"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := runBinary(t, dir, tc.env, tc.args...)
			assert.Equal(t, tc.want.code, code, "exit code; stderr:\n%s", stderr)
			for _, s := range []struct{ name, got, want string }{{"stdout", stdout, tc.want.stdout}, {"stderr", stderr, tc.want.stderr}} {
				if s.want == "" {
					assert.Empty(t, s.got, s.name)
				} else {
					assert.True(t, strings.HasPrefix(s.got, s.want), "%s starts with\n%s\ngot\n%s", s.name, s.want, s.got)
				}
			}
		})
	}
}

// TestCommandHelpListsFlags: a command's help names each of its flags.
func TestCommandHelpListsFlags(t *testing.T) {
	for cmd, flags := range map[string][]string{
		"run":      {"-config", "-watch"},
		"validate": {"-config"},
		"reload":   {"-admin"},
		"sidecar":  {"-listen", "-upstream", "-tls-cert", "-tls-key", "-client-ca", "-readiness-path", "-admin", "-print-config"},
	} {
		t.Run(cmd, func(t *testing.T) {
			code, stdout, _ := runBinary(t, t.TempDir(), nil, "help", cmd)
			require.Equal(t, 0, code)
			for _, f := range flags {
				assert.Regexp(t, `\n  `+f+`[ \n]`, stdout, "help %s lists %s", cmd, f)
			}
		})
	}
}

// TestRunPositionalFile: `sekisho run FILE` serves FILE.
func TestRunPositionalFile(t *testing.T) {
	b := startBinaryArgs(t, "positional", func(cfg string) []string { return []string{"run", "-watch=false", cfg} })
	assert.Equal(t, "positional", b.body())
}

// sekisho validate prints a config's warnings (a shadowed route) on
// stderr, each at its position, and still exits 0: a warning is not an
// error.
func TestValidatePrintsWarnings(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "shadow.yaml")
	require.NoError(t, os.WriteFile(path, []byte(`version: 1
listeners:
  - name: edge
    listen: 127.0.0.1:0
    routes:
      - {name: a, pipeline: [{respond: {body: a}}]}
      - {name: b, pipeline: [{respond: {body: b}}]}
`), 0o644))
	code, stdout, stderr := runBinary(t, dir, nil, "validate", path)
	assert.Equal(t, 0, code)
	assert.Contains(t, stdout, "ok")
	assert.Contains(t, stderr, path+`:7:16: warning: route "b" never gets a request`)
}
