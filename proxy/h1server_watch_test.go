package proxy

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// frontFor returns the loop serving the listener at addr.
func frontFor(t *testing.T, td *testDaemon, addr string) *frontServer {
	t.Helper()
	s := td.d.Server()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, bl := range s.listeners {
		if bl.sock.ln.Addr().String() == addr {
			return bl.srv
		}
	}
	t.Fatalf("no listener at %s", addr)
	return nil
}

// A client that goes away while its request waits on a slow upstream
// cancels that request: the upstream is let go and the request counts as
// 499.
func TestH1ServerClientGoneCancelsTheRequest(t *testing.T) {
	u, td, addr := h1sSetup(t, "")
	c := h1sDial(t, addr)
	c.send("GET /api/slow HTTP/1.1\r\nHost: edge.test\r\n\r\n")
	<-u.entered
	fs := frontFor(t, td, addr)
	require.Eventually(t, func() bool { return fs.watches.Load() >= 1 }, 5*time.Second, 5*time.Millisecond,
		"a request that runs long is watched")
	c.c.Close()
	require.Eventually(t, func() bool {
		return td.metric("sekisho_requests_total", "listener", "edge", "route", "api", "code", "499") == 1
	}, 5*time.Second, 10*time.Millisecond, "the request ends as the client's leaving")
}

// The watch of a long request may read the first byte of the next one
// (a client that sends its next request before the answer): that byte
// still starts the next request.
func TestH1ServerWatchKeepsTheNextRequestsFirstByte(t *testing.T) {
	u, td, addr := h1sSetup(t, "")
	c := h1sDial(t, addr)
	c.send("GET /api/slow HTTP/1.1\r\nHost: edge.test\r\n\r\n")
	<-u.entered
	fs := frontFor(t, td, addr)
	require.Eventually(t, func() bool { return fs.watches.Load() >= 1 }, 5*time.Second, 5*time.Millisecond)
	c.send("GET /fixed HTTP/1.1\r\nHost: edge.test\r\n\r\n")
	u.let()
	resp, body := c.read(http.MethodGet)
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, "slow answer\n", body)
	resp, body = c.read(http.MethodGet)
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, "fixed\n", body)
	c.assertOpen()
}

// A head larger than the connection's read buffer but within
// max_header_bytes is served, and so is one with bare LF line ends.
func TestH1ServerLargeAndBareLFHeads(t *testing.T) {
	u, _, addr := h1sSetup(t, "")
	c := h1sDial(t, addr)
	big := strings.Repeat("b", 20<<10)
	resp, body := c.do(http.MethodGet, "GET /api/x HTTP/1.1\r\nHost: edge.test\r\nX-Big: "+big+"\r\n\r\n")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, "up\n", body)
	assert.Equal(t, big, u.lastHeader().Get("X-Big"))
	resp, body = c.do(http.MethodGet, "GET /fixed HTTP/1.1\nHost: edge.test\n\n")
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, "fixed\n", body)
	c.assertOpen()
}
