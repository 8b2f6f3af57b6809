package proxy

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// publicPreamble is edgePreamble with admin.public_listen on as well.
var publicPreamble = strings.Replace(edgePreamble, `admin: {listen: "127.0.0.1:0"}`,
	`admin: {listen: "127.0.0.1:0", public_listen: "127.0.0.1:0", pprof: true}`, 1)

// The public admin listener serves the probes and the metrics, read-only,
// and nothing of the loopback admin server's state or control: POST /reload
// there reloads nothing.
func TestPublicAdminServesOnlyProbesAndMetrics(t *testing.T) {
	up := newBackend(t, "up")
	td := startDaemon(t, fmt.Sprintf(publicPreamble+`    routes: [{name: all, pipeline: [{proxy: up}]}]
pools:
  up: {endpoints: [%s]}
`, up.addr()))
	addr := td.d.PublicAdminAddr()
	require.NotNil(t, addr)
	require.NotEqual(t, td.d.AdminAddr().String(), addr.String())
	public := "http://" + addr.String()
	_, _ = td.get(td.url("edge") + "/") // a request, so that sekisho_ counters have samples
	// The request is counted once its handler returns, which may be after
	// the client has read the answer.
	require.Eventually(t, func() bool {
		resp, err := td.client.Get(public + "/metrics")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return strings.Contains(string(b), "sekisho_requests_total")
	}, 5*time.Second, 5*time.Millisecond)

	send := func(method, path string) (*http.Response, string) {
		req, err := http.NewRequest(method, public+path, nil)
		require.NoError(t, err)
		return td.do(req)
	}
	for _, tc := range []struct {
		method, path string
		status       int
		body         string // a substring of the answer
	}{
		{"GET", "/healthz", http.StatusOK, "ok"},
		{"HEAD", "/healthz", http.StatusOK, ""},
		{"GET", "/readyz", http.StatusOK, "ready"},
		{"HEAD", "/readyz", http.StatusOK, ""},
		{"GET", "/metrics", http.StatusOK, "sekisho_requests_total"},
		{"HEAD", "/metrics", http.StatusOK, ""},
		{"POST", "/reload", http.StatusNotFound, ""},
		{"GET", "/reload", http.StatusNotFound, ""},
		{"GET", "/config", http.StatusNotFound, ""},
		{"GET", "/pools", http.StatusNotFound, ""},
		{"GET", "/shards", http.StatusNotFound, ""},
		{"GET", "/debug/pprof/", http.StatusNotFound, ""},
		{"GET", "/debug/pprof/cmdline", http.StatusNotFound, ""},
		{"GET", "/", http.StatusNotFound, ""},
		{"POST", "/healthz", http.StatusMethodNotAllowed, ""},
		{"PUT", "/readyz", http.StatusMethodNotAllowed, ""},
		{"DELETE", "/metrics", http.StatusMethodNotAllowed, ""},
	} {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			resp, body := send(tc.method, tc.path)
			assert.Equal(t, tc.status, resp.StatusCode, body)
			assert.Contains(t, body, tc.body)
			assert.Equal(t, "no-store", resp.Header.Get("Cache-Control"))
			assert.Equal(t, "nosniff", resp.Header.Get("X-Content-Type-Options"))
		})
	}
	_, body := send("GET", "/metrics")
	assert.Contains(t, body, "# TYPE sekisho_config_last_reload_successful gauge")
	assert.Contains(t, body, "go_goroutines")

	// The loopback server still serves all of it, pprof included.
	resp, _ := td.get(td.admin() + "/debug/pprof/")
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	resp, _ = td.get(td.admin() + "/config")
	assert.Equal(t, http.StatusOK, resp.StatusCode)

	// A changed config file, and a POST /reload on the public listener:
	// nothing reloads, and nothing counts as a reload.
	before := td.d.Config()
	reloads := td.metric("sekisho_config_reloads_total", "result", "success")
	text, err := os.ReadFile(td.path)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(td.path, []byte(strings.Replace(string(text), "log: {access: off}", "log: {access: off, level: debug}", 1)), 0o644))
	resp, _ = send("POST", "/reload")
	assert.Equal(t, http.StatusNotFound, resp.StatusCode)
	assert.Same(t, before, td.d.Config())
	assert.Equal(t, reloads, td.metric("sekisho_config_reloads_total", "result", "success"))
}

// The public /readyz is the one the kubelet asks: it turns 503 as soon as a
// shutdown starts draining, while an in-flight request still runs.
func TestPublicReadyzTurns503WhileDraining(t *testing.T) {
	release := make(chan struct{})
	entered := make(chan struct{}, 1)
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		entered <- struct{}{}
		<-release
		w.Write([]byte("late"))
	}))
	t.Cleanup(slow.Close)
	td := startDaemon(t, fmt.Sprintf(publicPreamble+`    routes: [{name: all, pipeline: [{proxy: slow}]}]
pools:
  slow: {endpoints: [%s]}
`, strings.TrimPrefix(slow.URL, "http://")))
	public := "http://" + td.d.PublicAdminAddr().String()
	resp, body := td.get(public + "/readyz")
	require.Equal(t, http.StatusOK, resp.StatusCode, body)

	inflight := make(chan int, 1)
	go func() {
		resp, err := http.Get(td.url("edge") + "/")
		if err != nil {
			inflight <- 0
			return
		}
		resp.Body.Close()
		inflight <- resp.StatusCode
	}()
	<-entered
	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		shut <- td.d.Shutdown(ctx)
	}()
	require.Eventually(t, func() bool {
		resp, err := http.Get(public + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusServiceUnavailable
	}, 5*time.Second, 10*time.Millisecond)
	resp, body = td.get(public + "/readyz")
	assert.Contains(t, body, "draining")
	close(release)
	assert.Equal(t, http.StatusOK, <-inflight)
	require.NoError(t, <-shut)
}

// admin.public_listen changes on restart: a reload that turns it off says
// so, and the public listener keeps serving.
func TestReloadLeavesThePublicAdminListener(t *testing.T) {
	td := startDaemon(t, publicPreamble+`    routes: [{name: all, pipeline: [{respond: {status: 204}}]}]
`)
	public := "http://" + td.d.PublicAdminAddr().String()
	text, err := os.ReadFile(td.path)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(td.path, []byte(strings.Replace(string(text), `public_listen: "127.0.0.1:0"`, `public_listen: "off"`, 1)), 0o644))
	res, err := td.d.Reload()
	require.NoError(t, err)
	require.True(t, res.Changed)
	warned := td.logs.FilterMessage("admin settings changed; they take effect on restart").All()
	require.Len(t, warned, 1)
	assert.Equal(t, "off", warned[0].ContextMap()["admin.public_listen"])
	resp, body := td.get(public + "/healthz")
	assert.Equal(t, http.StatusOK, resp.StatusCode, body)
}
