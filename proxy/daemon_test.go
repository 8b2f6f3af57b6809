package proxy

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"testing"

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
