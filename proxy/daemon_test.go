package proxy

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zapcore"

	"sekisho/proxy/config"
)

// TestReloadChangesLogLevel: log.level takes effect on reload, without a
// restart, when the Daemon built its own logger.
func TestReloadChangesLogLevel(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.yaml")
	write := func(level string) {
		require.NoError(t, os.WriteFile(path, []byte(fmt.Sprintf(`
version: 1
admin: {listen: "off"}
log: {level: %s, access: off}
listeners:
  - name: edge
    listen: 127.0.0.1:0
    routes: [{name: r, pipeline: [{respond: {body: ok}}]}]
`, level)), 0o644))
	}
	write("error")
	cfg, err := config.Load(path)
	require.NoError(t, err)
	d, err := Start(cfg, Options{Path: path})
	require.NoError(t, err)
	defer d.Shutdown(context.Background())
	require.NotNil(t, d.level)
	assert.Equal(t, zapcore.ErrorLevel, d.level.Level())
	write("debug")
	res, err := d.Reload()
	require.NoError(t, err)
	assert.True(t, res.Changed)
	assert.Equal(t, zapcore.DebugLevel, d.level.Level())
}

// TestClientCannotForgeSekishoHeaders: a mirror marker or a client
// certificate subject sent by the client never reaches the upstream.
func TestClientCannotForgeSekishoHeaders(t *testing.T) {
	up := newBackend(t, "up")
	td := startDaemon(t, fmt.Sprintf(edgePreamble+`    routes: [{name: all, pipeline: [{proxy: up}]}]
pools:
  up: {endpoints: [%s]}
`, up.addr()))
	resp, _ := td.get(td.url("edge")+"/", "X-Sekisho-Mirror", "1", "X-Client-Cert-Subject", "CN=admin")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	seen := up.lastRequest()
	assert.Empty(t, seen.Header.Get("X-Sekisho-Mirror"))
	assert.Empty(t, seen.Header.Get("X-Client-Cert-Subject"))
}

// TestBootIsNotAReload: after start, and after the config watch's first
// read of the unchanged file, no reload is counted: both results are 0,
// config_last_reload_successful is 1 ("no reload has failed") and the
// timestamp is the start's. The first real reload counts one success.
func TestBootIsNotAReload(t *testing.T) {
	const debounce = 20 * time.Millisecond
	td := startDaemon(t, respondConfig("boot"))
	td.watchWith(debounce)
	reloads := func(result string) float64 { return td.metric("sekisho_config_reloads_total", "result", result) }
	assert.Never(t, func() bool { return reloads("success") != 0 || reloads("failure") != 0 }, 20*debounce, debounce,
		"neither the start nor the watch's first read of the same file is a reload")
	assert.Equal(t, float64(1), td.metric("sekisho_config_last_reload_successful"))
	assert.InDelta(t, float64(time.Now().Unix()), td.metric("sekisho_config_last_reload_success_timestamp_seconds"), 60)
	assert.Empty(t, td.logs.FilterMessage("config reloaded").All())

	require.NoError(t, os.WriteFile(td.path, []byte(respondConfig("reloaded")), 0o644))
	require.Eventually(t, func() bool { return reloads("success") == 1 }, 5*time.Second, 5*time.Millisecond)
	assert.Equal(t, float64(0), reloads("failure"))
	assert.Len(t, td.logs.FilterMessage("config reloaded").All(), 1)
}
