package proxy

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// These helpers talk to a listener over raw sockets, so that what the
// daemon sends is seen byte for byte, as a client sees it. The loop's own
// tests are http1's.

// h1sConn is a raw client connection to a listener.
type h1sConn struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

func h1sDial(t *testing.T, addr string) *h1sConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return &h1sConn{t: t, c: c, br: bufio.NewReader(c)}
}

// send writes raw bytes as they are.
func (c *h1sConn) send(raw string) {
	c.t.Helper()
	require.NoError(c.t, c.c.SetWriteDeadline(time.Now().Add(5*time.Second)))
	_, err := io.WriteString(c.c, raw)
	require.NoError(c.t, err)
}

// read reads the next answer, to a request of method, with all its body.
func (c *h1sConn) read(method string) (*http.Response, string) {
	c.t.Helper()
	require.NoError(c.t, c.c.SetReadDeadline(time.Now().Add(5*time.Second)))
	resp, err := http.ReadResponse(c.br, &http.Request{Method: method})
	require.NoError(c.t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(c.t, err)
	return resp, string(body)
}

// do sends raw, a request of method, and reads its answer.
func (c *h1sConn) do(method, raw string) (*http.Response, string) {
	c.t.Helper()
	c.send(raw)
	return c.read(method)
}

// assertClosed checks that the server closes the connection within d, with
// no byte before the end, and returns how long that took.
func (c *h1sConn) assertClosed(d time.Duration) time.Duration {
	c.t.Helper()
	start := time.Now()
	require.NoError(c.t, c.c.SetReadDeadline(start.Add(d)))
	rest, err := io.ReadAll(c.br)
	assert.NoError(c.t, err, "the server closes the connection")
	assert.Empty(c.t, string(rest), "nothing comes before the close")
	return time.Since(start)
}

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
	c := h1sDial(t, strings.TrimPrefix(td.url("edge"), "http://"))
	c.send("GET /api/slow HTTP/1.1\r\nHost: edge.test\r\n\r\n")
	<-entered
	c.c.Close()
	require.Eventually(t, func() bool {
		return td.metric("sekisho_requests_total", "listener", "edge", "route", "api", "code", "499") == 1
	}, 5*time.Second, 10*time.Millisecond, "the request ends as the client's leaving")
}
