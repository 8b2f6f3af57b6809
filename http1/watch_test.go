package http1

import (
	"net/http"
	"sekisho/internal/rawclient"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A client that goes away while its request runs long cancels that
// request's context: the handler is let go.
func TestServerClientGoneCancelsTheRequest(t *testing.T) {
	entered, cancelled := make(chan struct{}), make(chan struct{})
	srv := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		<-r.Context().Done()
		close(cancelled)
	})}
	addr := serve(t, srv)
	c := rawclient.Dial(t, addr)
	c.Send("GET /slow HTTP/1.1\r\nHost: edge.test\r\n\r\n")
	<-entered
	require.Eventually(t, func() bool { return srv.watches.Load() >= 1 }, 5*time.Second, 5*time.Millisecond,
		"a request that runs long is watched")
	c.Conn.Close()
	select {
	case <-cancelled:
	case <-time.After(5 * time.Second):
		assert.Fail(t, "the request's context was not cancelled when its client left")
	}
}

// The watch of a long request may read the first byte of the next one
// (a client that sends its next request before the answer): that byte
// still starts the next request.
func TestServerWatchKeepsTheNextRequestsFirstByte(t *testing.T) {
	u, srv, addr := h1sSetup(t, nil)
	c := rawclient.Dial(t, addr)
	c.Send("GET /api/slow HTTP/1.1\r\nHost: edge.test\r\n\r\n")
	<-u.entered
	require.Eventually(t, func() bool { return srv.watches.Load() >= 1 }, 5*time.Second, 5*time.Millisecond)
	c.Send("GET /fixed HTTP/1.1\r\nHost: edge.test\r\n\r\n")
	u.let()
	resp, body := c.Read(http.MethodGet)
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, "slow answer\n", body)
	resp, body = c.Read(http.MethodGet)
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, "fixed\n", body)
	assertOpen(t, c)
}

// A head larger than the connection's read buffer but within
// MaxHeaderBytes is served, and so is one with bare LF line ends.
func TestServerLargeAndBareLFHeads(t *testing.T) {
	u, _, addr := h1sSetup(t, nil)
	c := rawclient.Dial(t, addr)
	big := strings.Repeat("b", 20<<10)
	resp, body := c.Do(http.MethodGet, "GET /api/x HTTP/1.1\r\nHost: edge.test\r\nX-Big: "+big+"\r\n\r\n")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, "up\n", body)
	assert.Equal(t, big, u.lastHeader().Get("X-Big"))
	resp, body = c.Do(http.MethodGet, "GET /fixed HTTP/1.1\nHost: edge.test\n\n")
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, "fixed\n", body)
	assertOpen(t, c)
}
