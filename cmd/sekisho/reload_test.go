package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// liveBinary is a sekisho process serving a config that answers one body.
type liveBinary struct {
	t      *testing.T
	cfg    string // the config file
	listen string
	admin  string
	cmd    *exec.Cmd
	http   *http.Client
}

// startBinary writes a config answering body and runs `sekisho run` on it
// with the extra flags; it is stopped with SIGTERM when the test ends.
func startBinary(t *testing.T, body string, flags ...string) *liveBinary {
	t.Helper()
	return startBinaryArgs(t, body, func(cfg string) []string { return append([]string{"run", "-config", cfg}, flags...) })
}

// startBinaryArgs is startBinary with the command line argsFor(config file).
func startBinaryArgs(t *testing.T, body string, argsFor func(cfg string) []string) *liveBinary {
	t.Helper()
	dir := t.TempDir()
	b := &liveBinary{t: t, cfg: filepath.Join(dir, "sekisho.yaml"), listen: freePort(t), admin: freePort(t),
		http: &http.Client{Timeout: 5 * time.Second}}
	b.write(body)
	logs, err := os.Create(filepath.Join(dir, "stderr.log"))
	require.NoError(t, err)
	b.cmd = exec.Command(binPath, argsFor(b.cfg)...)
	b.cmd.Stderr = logs
	require.NoError(t, b.cmd.Start())
	t.Cleanup(func() {
		b.http.CloseIdleConnections()
		b.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- b.cmd.Wait() }()
		select {
		case err := <-done:
			assert.NoError(t, err, "sekisho exits 0")
		case <-time.After(10 * time.Second):
			b.cmd.Process.Kill()
			<-done
			t.Error("sekisho did not exit after SIGTERM")
		}
		logs.Close()
		if t.Failed() {
			out, _ := os.ReadFile(logs.Name())
			t.Logf("sekisho's log:\n%s", out)
		}
	})
	require.Eventually(t, func() bool { return b.body() == body }, 20*time.Second, 20*time.Millisecond, "sekisho serves")
	return b
}

func (b *liveBinary) text(body string) string {
	return fmt.Sprintf(`version: 1
admin: {listen: %q}
log: {access: off}
listeners:
  - name: edge
    listen: %q
    routes:
      - name: all
        pipeline:
          - respond: {status: 200, body: %q}
`, b.admin, b.listen, body)
}

func (b *liveBinary) write(body string) {
	b.t.Helper()
	require.NoError(b.t, os.WriteFile(b.cfg, []byte(b.text(body)), 0o644))
}

// writeBroken writes the config cut before its routes, as a half-written
// file would be: valid YAML, invalid config.
func (b *liveBinary) writeBroken() {
	b.t.Helper()
	text := b.text("broken")
	require.NoError(b.t, os.WriteFile(b.cfg, []byte(text[:strings.Index(text, "      - name: all")]), 0o644))
}

// body is what the listener answers now, "" when it does not answer.
func (b *liveBinary) body() string {
	resp, err := b.http.Get("http://" + b.listen + "/")
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return string(out)
}

// metric reads one unlabelled sample from /metrics, -1 when absent.
func (b *liveBinary) metric(name string) float64 {
	resp, err := b.http.Get("http://" + b.admin + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			var f float64
			fmt.Sscanf(v, "%g", &f)
			return f
		}
	}
	return -1
}

// runReload runs `sekisho reload` with args and env.
func runReload(t *testing.T, env []string, args ...string) (int, string, string) {
	t.Helper()
	return runBinary(t, "", env, append([]string{"reload"}, args...)...)
}

// TestWatchFalseIgnoresWritesAndSIGHUPReloads: with -watch=false a new
// config file is not picked up by itself; SIGHUP puts it in force; a
// broken file on SIGHUP keeps the old config and reports the failure.
func TestWatchFalseIgnoresWritesAndSIGHUPReloads(t *testing.T) {
	b := startBinary(t, "gen-1", "-watch=false")
	b.write("gen-2")
	assert.Never(t, func() bool { return b.body() != "gen-1" }, 1500*time.Millisecond, 50*time.Millisecond,
		"no watch: the write is not picked up (a watch would within ~150ms)")
	require.NoError(t, b.cmd.Process.Signal(syscall.SIGHUP))
	require.Eventually(t, func() bool { return b.body() == "gen-2" }, 10*time.Second, 20*time.Millisecond)
	assert.Equal(t, float64(1), b.metric("sekisho_config_last_reload_successful"))

	b.writeBroken()
	require.NoError(t, b.cmd.Process.Signal(syscall.SIGHUP))
	require.Eventually(t, func() bool { return b.metric("sekisho_config_last_reload_successful") == 0 },
		10*time.Second, 20*time.Millisecond)
	assert.Equal(t, "gen-2", b.body(), "the old config keeps serving")
}

// TestRunWatchesByDefault: without -watch, a write is picked up by itself.
func TestRunWatchesByDefault(t *testing.T) {
	b := startBinary(t, "gen-1")
	b.write("gen-2")
	require.Eventually(t, func() bool { return b.body() == "gen-2" }, 10*time.Second, 20*time.Millisecond)
}

// TestReloadCommand: `sekisho reload --admin ADDR` (or SEKISHO_ADMIN) puts
// the new config in force before it returns and prints the summary; on a
// broken config it exits 1 and prints each error with its position, and
// the old config keeps serving.
func TestReloadCommand(t *testing.T) {
	b := startBinary(t, "gen-1", "-watch=false")
	cases := []struct {
		name       string
		write      func()
		env, args  []string
		code       int
		out        string
		err        string // a pattern of stderr
		body       string
		successful float64
	}{
		{name: "new config by flag", write: func() { b.write("gen-2") }, args: []string{"--admin", b.admin},
			out: b.cfg + ": ok: 1 listener(s), 1 route(s), 0 pool(s)\n", body: "gen-2", successful: 1},
		{name: "same config again", write: func() {}, args: []string{"-admin", "http://" + b.admin},
			out: "config unchanged\n", body: "gen-2", successful: 1},
		{name: "broken config", write: b.writeBroken, args: []string{"--admin", b.admin},
			code: 1, err: `^` + regexp.QuoteMeta(b.cfg) + `:\d+:\d+: listener "edge" has no routes\n$`, body: "gen-2", successful: 0},
		{name: "new config by SEKISHO_ADMIN", write: func() { b.write("gen-3") }, env: []string{"SEKISHO_ADMIN=" + b.admin},
			out: b.cfg + ": ok: 1 listener(s), 1 route(s), 0 pool(s)\n", body: "gen-3", successful: 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.write()
			code, stdout, stderr := runReload(t, tc.env, tc.args...)
			assert.Equal(t, tc.code, code, stderr)
			assert.Equal(t, tc.out, stdout)
			assert.Regexp(t, tc.err, stderr)
			assert.Equal(t, tc.body, b.body(), "in force when the command returns")
			assert.Equal(t, tc.successful, b.metric("sekisho_config_last_reload_successful"))
		})
	}
	t.Run("no sekisho at the address", func(t *testing.T) {
		code, _, stderr := runReload(t, nil, "--admin", freePort(t))
		assert.Equal(t, 1, code)
		assert.Contains(t, stderr, "sekisho reload:")
	})
}
