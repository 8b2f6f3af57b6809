// Package rawclient is a test client that speaks raw bytes to a listener,
// so that what a server sends is seen byte for byte, as a client sees it:
// framing, a missing final chunk, a connection closed early. Tests of the
// HTTP/1 codec and of the daemon share it. It knows nothing of sekisho.
package rawclient

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Conn is one raw client connection; it is closed when the test ends.
// Conn and BR are the connection and the reader its answers are read
// from, for what the helpers do not cover.
type Conn struct {
	t    *testing.T
	Conn net.Conn
	BR   *bufio.Reader
}

// Dial connects to addr.
func Dial(t *testing.T, addr string) *Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return &Conn{t: t, Conn: c, BR: bufio.NewReader(c)}
}

// Send writes raw bytes as they are.
func (c *Conn) Send(raw string) {
	c.t.Helper()
	require.NoError(c.t, c.Conn.SetWriteDeadline(time.Now().Add(5*time.Second)))
	_, err := io.WriteString(c.Conn, raw)
	require.NoError(c.t, err)
}

// Read reads the next answer, to a request of method, with all its body.
func (c *Conn) Read(method string) (*http.Response, string) {
	c.t.Helper()
	require.NoError(c.t, c.Conn.SetReadDeadline(time.Now().Add(5*time.Second)))
	resp, err := http.ReadResponse(c.BR, &http.Request{Method: method})
	require.NoError(c.t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(c.t, err)
	return resp, string(body)
}

// Do sends raw, a request of method, and reads its answer.
func (c *Conn) Do(method, raw string) (*http.Response, string) {
	c.t.Helper()
	c.Send(raw)
	return c.Read(method)
}

// AssertClosed checks that the server closes the connection within d, with
// no byte before the end, and returns how long that took.
func (c *Conn) AssertClosed(d time.Duration) time.Duration {
	c.t.Helper()
	start := time.Now()
	require.NoError(c.t, c.Conn.SetReadDeadline(start.Add(d)))
	rest, err := io.ReadAll(c.BR)
	assert.NoError(c.t, err, "the server closes the connection")
	assert.Empty(c.t, string(rest), "nothing comes before the close")
	return time.Since(start)
}
