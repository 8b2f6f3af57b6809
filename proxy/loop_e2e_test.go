package proxy

import (
	"net/http"
	"net/http/httptest"
	"sekisho/internal/rawclient"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// These helpers talk to a listener over raw sockets, so that what the
// daemon sends is seen byte for byte, as a client sees it. The loop's own
// tests are http1's.

// A client that goes away while its request waits on a slow upstream
// cancels that request: the upstream is let go and the request counts as
// 499.
func TestLoopClientGoneCountsAs499(t *testing.T) {
	entered := make(chan struct{}, 1)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		entered <- struct{}{}
		<-r.Context().Done()
	}))
	t.Cleanup(up.Close)
	td := startDaemon(t, edgePreamble+`    routes: [{name: api, pipeline: [{proxy: up}]}]
pools:
  up: {endpoints: [`+strings.TrimPrefix(up.URL, "http://")+`], retries: 0}
`)
	c := rawclient.Dial(t, strings.TrimPrefix(td.url("edge"), "http://"))
	c.Send("GET /api/slow HTTP/1.1\r\nHost: edge.test\r\n\r\n")
	<-entered
	c.Conn.Close()
	require.Eventually(t, func() bool {
		return td.metric("sekisho_requests_total", "listener", "edge", "route", "api", "code", "499") == 1
	}, 5*time.Second, 10*time.Millisecond, "the request ends as the client's leaving")
}
