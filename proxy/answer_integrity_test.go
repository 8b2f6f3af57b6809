package proxy

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sekisho/internal/rawupstream"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// readHead reads one request head and, when it announces a Content-Length,
// its body; it returns the request line.
func readHead(br *bufio.Reader) (string, error) {
	first := ""
	length := 0
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return "", err
		}
		if first == "" {
			first = strings.TrimSpace(line)
		}
		if k, v, ok := strings.Cut(line, ":"); ok && strings.EqualFold(k, "Content-Length") {
			fmt.Sscanf(strings.TrimSpace(v), "%d", &length)
		}
		if line == "\r\n" {
			break
		}
	}
	_, err := io.CopyN(io.Discard, br, int64(length))
	return first, err
}

// pathOf returns the path of a request line.
func pathOf(line string) string {
	f := strings.Fields(line)
	if len(f) < 2 {
		return ""
	}
	return f[1]
}

// rawRequest sends req on a new connection to addr and reads one answer
// to method, its body in the X-Body header.
func rawRequest(addr, req, method string) (*http.Response, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		return nil, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: method})
	if err != nil {
		return nil, err
	}
	b, err := io.ReadAll(resp.Body)
	resp.Header.Set("X-Body", string(b))
	return resp, err
}

// rawExchange sends req on a new connection to addr and reads until the
// connection closes or wait passes; closed reports a close (EOF or reset).
func rawExchange(t *testing.T, addr, req string, wait time.Duration) (got string, closed bool) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer c.Close()
	_, err = io.WriteString(c, req)
	require.NoError(t, err)
	c.SetReadDeadline(time.Now().Add(wait))
	var buf strings.Builder
	b := make([]byte, 4096)
	for {
		n, err := c.Read(b)
		buf.Write(b[:n])
		if err != nil {
			var ne net.Error
			return buf.String(), !(errors.As(err, &ne) && ne.Timeout())
		}
	}
}

func integrityDaemon(t *testing.T, up, extraPool string) *testDaemon {
	return startDaemon(t, fmt.Sprintf(`version: 1
admin: {listen: "127.0.0.1:0"}
log: {access: "{{ACCESS}}"}
listeners:
  - name: edge
    listen: 127.0.0.1:0
    routes: [{name: all, pipeline: [{proxy: up}]}]
pools:
  up: {endpoints: [%s], retries: 0, max_idle_per_endpoint: 1%s}
`, up, extraPool))
}

// An upstream connection whose answer was followed by anything (a late
// extra response after a HEAD, a body after a 204 or 304, bytes past a
// Content-Length body) is never reused: the next request, on another
// client connection, gets its own answer on a fresh upstream connection.
func TestUnsolicitedBytesRetireTheUpstreamConnection(t *testing.T) {
	const extraResponse = "HTTP/1.1 200 OK\r\nContent-Length: 6\r\nSet-Cookie: victim=1\r\n\r\nPOISON"
	cases := []struct {
		name   string
		method string
		answer string // to the first request
		late   string // written after it, once the answer is out
		delay  time.Duration
	}{
		{"HEAD then a late response", "HEAD", "HTTP/1.1 200 OK\r\nContent-Length: 44\r\n\r\n", extraResponse, 50 * time.Millisecond},
		{"204 then a late body", "GET", "HTTP/1.1 204 No Content\r\n\r\n", extraResponse, 50 * time.Millisecond},
		{"304 then a late body", "GET", "HTTP/1.1 304 Not Modified\r\nContent-Length: 6\r\n\r\n", extraResponse, 50 * time.Millisecond},
		{"bytes past a Content-Length body", "GET", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", extraResponse, 50 * time.Millisecond},
		{"bytes just before reuse", "GET", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", extraResponse, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			lateSent := make(chan struct{})
			var answered atomic.Bool
			up := rawupstream.New(t, func(c net.Conn, br *bufio.Reader) {
				for {
					line, err := readHead(br)
					if err != nil {
						return
					}
					if answered.CompareAndSwap(false, true) {
						io.WriteString(c, tc.answer)
						time.Sleep(tc.delay) // the misbehaviour under test: bytes after the answer
						io.WriteString(c, tc.late)
						close(lateSent)
						continue
					}
					p := pathOf(line)
					fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(p), p)
				}
			})
			td := integrityDaemon(t, up.Addr(), "")
			edge := td.d.Server().Addr("edge").String()
			resp, err := rawRequest(edge, tc.method+" /a HTTP/1.1\r\nHost: x\r\n\r\n", tc.method)
			require.NoError(t, err)
			require.Less(t, resp.StatusCode, 400)
			select {
			case <-lateSent:
			case <-time.After(5 * time.Second):
				t.Fatal("the upstream did not send its late bytes")
			}
			// The late bytes are on the proxy's socket: a loopback write
			// lands in the peer's receive buffer before it returns.
			resp, err = rawRequest(edge, "GET /b HTTP/1.1\r\nHost: x\r\n\r\n", "GET")
			require.NoError(t, err)
			assert.Equal(t, "/b", resp.Header.Get("X-Body"), "the second client gets its own answer")
			assert.Empty(t, resp.Header.Get("Set-Cookie"))
			assert.EqualValues(t, 2, up.Conns(), "the poisoned connection was not reused")
		})
	}
}

// An answer that fails after its head was sent is aborted on the client's
// connection: no final chunk, or fewer bytes than the Content-Length, and
// the connection closed. Both paths: a bodyless GET (direct path) and a
// POST with a body (ReverseProxy).
func TestBrokenAnswersAreAborted(t *testing.T) {
	answers := map[string]string{
		"/chunk-cut": "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
		"/chunk-zz":  "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nworld\r\n0\r\n\r\n",
		"/short":     "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten..",
	}
	up := rawupstream.New(t, func(c net.Conn, br *bufio.Reader) {
		line, err := readHead(br)
		if err != nil {
			return
		}
		io.WriteString(c, answers[pathOf(line)])
		// Then the upstream closes: the answer is cut.
	})
	td := integrityDaemon(t, up.Addr(), "")
	edge := td.d.Server().Addr("edge").String()
	for path := range answers {
		for _, method := range []string{"GET", "POST"} {
			t.Run(method+path, func(t *testing.T) {
				req := method + " " + path + " HTTP/1.1\r\nHost: x\r\n\r\n"
				if method == "POST" {
					req = method + " " + path + " HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
				}
				got, closed := rawExchange(t, edge, req, 3*time.Second)
				assert.True(t, closed, "the client connection is closed, got %q", got)
				require.True(t, strings.HasPrefix(got, "HTTP/1.1 200 OK\r\n"), "the head was sent: %q", got)
				assert.NotContains(t, got, "\r\n0\r\n\r\n", "no final chunk")
				if path == "/short" {
					_, body, _ := strings.Cut(got, "\r\n\r\n")
					assert.Less(t, len(body), 100, "short of its Content-Length")
				}
			})
		}
	}
}

// Each piece of an upstream body reaches the client as it arrives, on both
// paths and both framings.
func TestSlowBodiesStream(t *testing.T) {
	up := rawupstream.New(t, func(c net.Conn, br *bufio.Reader) {
		line, err := readHead(br)
		if err != nil {
			return
		}
		body := "abcde"
		if strings.Contains(line, "chunked") {
			io.WriteString(c, "HTTP/1.1 200 OK\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n")
			for i := range body {
				fmt.Fprintf(c, "1\r\n%c\r\n", body[i])
				time.Sleep(300 * time.Millisecond) // the slow upstream under test
			}
			io.WriteString(c, "0\r\n\r\n")
			return
		}
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n", len(body))
		for i := range body {
			c.Write([]byte{body[i]})
			time.Sleep(300 * time.Millisecond)
		}
	})
	td := integrityDaemon(t, up.Addr(), "")
	edge := td.d.Server().Addr("edge").String()
	for _, method := range []string{"GET", "POST"} {
		for _, framing := range []string{"length", "chunked"} {
			t.Run(method+"/"+framing, func(t *testing.T) {
				c, err := net.Dial("tcp", edge)
				require.NoError(t, err)
				defer c.Close()
				start := time.Now()
				fmt.Fprintf(c, "%s /%s HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", method, framing)
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				br := bufio.NewReader(c)
				resp, err := http.ReadResponse(br, nil)
				require.NoError(t, err)
				defer resp.Body.Close()
				b := make([]byte, 1)
				_, err = io.ReadFull(resp.Body, b)
				require.NoError(t, err)
				first := time.Since(start)
				assert.Equal(t, "a", string(b))
				assert.Less(t, first, 800*time.Millisecond, "the first byte came as it arrived, not with the last (1.5 s)")
				rest, err := io.ReadAll(resp.Body)
				require.NoError(t, err)
				assert.Equal(t, "bcde", string(rest))
			})
		}
	}
}

// An upstream body that stalls for timeouts.body_idle is ended: the
// client's connection closes after the bytes that came, the access log
// records those bytes and the cut, and the timeout is counted.
func TestStalledBodyIsEndedByBodyIdle(t *testing.T) {
	up := rawupstream.New(t, func(c net.Conn, br *bufio.Reader) {
		if _, err := readHead(br); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")
		io.Copy(io.Discard, br) // and then nothing: the stall under test
	})
	td := integrityDaemon(t, up.Addr(), ", timeouts: {body_idle: 300ms}")
	edge := td.d.Server().Addr("edge").String()
	for i, req := range []string{
		"GET /get HTTP/1.1\r\nHost: x\r\n\r\n",
		"POST /post HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
	} {
		t.Run(strings.Fields(req)[0], func(t *testing.T) {
			start := time.Now()
			got, closed := rawExchange(t, edge, req, 4*time.Second)
			assert.True(t, closed, "the client connection is closed")
			assert.Less(t, time.Since(start), 3*time.Second)
			assert.True(t, strings.HasSuffix(got, "\r\n\r\nhello"), "the client got the head and the bytes that came: %q", got)
			lines := td.accessLines(i + 1)
			line := lines[i]
			assert.EqualValues(t, 200, line["status"])
			assert.EqualValues(t, 5, line["bytes"], "the bytes the client really got")
			assert.Equal(t, true, line["cut"])
		})
	}
	assert.EqualValues(t, 2, td.metric("sekisho_upstream_body_timeouts_total", "pool", "up"))
}

// A client that stops reading while the upstream keeps sending is cut by
// the listener's timeouts.write: the handler ends, the upstream connection
// closes, and the log does not claim the whole body went out.
func TestStalledClientIsCutByWriteTimeout(t *testing.T) {
	const size = 64 << 20
	upstreamDone := make(chan error, 1)
	up := rawupstream.New(t, func(c net.Conn, br *bufio.Reader) {
		if _, err := readHead(br); err != nil {
			return
		}
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", size)
		chunk := make([]byte, 64<<10)
		var err error
		for n := 0; n < size && err == nil; n += len(chunk) {
			_, err = c.Write(chunk)
		}
		upstreamDone <- err
	})
	td := startDaemon(t, fmt.Sprintf(`version: 1
admin: {listen: "127.0.0.1:0"}
log: {access: "{{ACCESS}}"}
listeners:
  - name: edge
    listen: 127.0.0.1:0
    timeouts: {write: 500ms}
    routes: [{name: all, pipeline: [{proxy: up}]}]
pools:
  up: {endpoints: [%s], retries: 0}
`, up.Addr()))
	c, err := net.Dial("tcp", td.d.Server().Addr("edge").String())
	require.NoError(t, err)
	defer c.Close()
	c.(*net.TCPConn).SetReadBuffer(4 << 10)
	io.WriteString(c, "GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
	// The client reads nothing.
	select {
	case err := <-upstreamDone:
		assert.Error(t, err, "the proxy gave up the upstream connection")
	case <-time.After(10 * time.Second):
		t.Fatal("the handler did not end")
	}
	line := td.accessLines(1)[0]
	assert.Less(t, line["bytes"], float64(size))
	assert.Equal(t, true, line["cut"])
	require.Eventually(t, func() bool {
		return td.metric("sekisho_client_write_timeouts_total", "listener", "edge") == 1
	}, 5*time.Second, 50*time.Millisecond)
}

// An answer that misses the listener's write deadline altogether reaches
// the client as nothing; it is not logged as a whole 200.
func TestAnswerPastTheWriteDeadlineIsNotLoggedWhole(t *testing.T) {
	up := rawupstream.New(t, func(c net.Conn, br *bufio.Reader) {
		if _, err := readHead(br); err != nil {
			return
		}
		time.Sleep(700 * time.Millisecond) // slower than the listener's write timeout
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
	})
	td := startDaemon(t, fmt.Sprintf(`version: 1
admin: {listen: "127.0.0.1:0"}
log: {access: "{{ACCESS}}"}
listeners:
  - name: edge
    listen: 127.0.0.1:0
    timeouts: {write: 300ms}
    routes: [{name: all, pipeline: [{proxy: up}]}]
pools:
  up: {endpoints: [%s], retries: 0}
`, up.Addr()))
	got, closed := rawExchange(t, td.d.Server().Addr("edge").String(), "GET / HTTP/1.1\r\nHost: x\r\n\r\n", 4*time.Second)
	assert.True(t, closed)
	assert.Empty(t, got)
	line := td.accessLines(1)[0]
	assert.NotEqualValues(t, 200, line["status"])
	assert.EqualValues(t, 0, line["bytes"])
	assert.Equal(t, true, line["cut"])
}
