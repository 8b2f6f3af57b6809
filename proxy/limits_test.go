package proxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"sekisho/internal/rawupstream"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// bodyUpstream is a raw upstream that reads each request with its body and
// keeps, per request, the body bytes that arrived before the body ended or
// the connection went. answer writes the reply (nil: a 2-byte 200).
type bodyUpstream struct {
	*rawupstream.Server
	mu     sync.Mutex
	bodies []string // one per request read, complete or cut
	cut    []bool   // the body ended short (the connection went)
}

func newBodyUpstream(t *testing.T, answer func(c net.Conn, r *http.Request)) *bodyUpstream {
	t.Helper()
	u := &bodyUpstream{}
	u.Server = rawupstream.New(t, func(c net.Conn, br *bufio.Reader) {
		for {
			r, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			b, err := io.ReadAll(r.Body)
			u.mu.Lock()
			u.bodies = append(u.bodies, string(b))
			u.cut = append(u.cut, err != nil)
			u.mu.Unlock()
			if err != nil {
				return
			}
			if answer != nil {
				answer(c, r)
				continue
			}
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
	})
	return u
}

// seen returns the bodies read so far and whether each was cut.
func (u *bodyUpstream) seen() ([]string, []bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.bodies...), append([]bool(nil), u.cut...)
}

// rawAnswer writes raw on a new connection to addr, reads one answer and
// reports whether the connection was closed after it (an answer that keeps
// it open says so with its missing Connection: close; it is not waited on).
func rawAnswer(t *testing.T, addr, raw string) (*http.Response, string, bool) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer c.Close()
	_, err = io.WriteString(c, raw)
	require.NoError(t, err)
	require.NoError(t, c.SetReadDeadline(time.Now().Add(5*time.Second)))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	resp.Body.Close()
	if !resp.Close {
		return resp, string(body), false
	}
	_, err = br.ReadByte()
	require.ErrorIs(t, err, io.EOF, "the connection closes after an answer with Connection: close")
	return resp, string(body), true
}

func h2cClient(t *testing.T) *http.Client {
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: &protos}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// limitsConfig serves /small (the listener's 16-byte limit), /big (a route
// limit of 64 bytes) and /free (no limit) from up.
func limitsConfig(up string) string {
	return fmt.Sprintf(edgePreamble+`    max_body_bytes: 16
    routes:
      - {name: big, match: {path_prefix: /big}, max_body_bytes: 64, pipeline: [{proxy: up}]}
      - {name: free, match: {path_prefix: /free}, max_body_bytes: 0, pipeline: [{proxy: up}]}
      - {name: small, pipeline: [{proxy: up}]}
pools:
  up: {endpoints: [%s], retries: 0}
`, up)
}

// chunked encodes parts as a chunked body.
func chunked(parts ...string) string {
	var b strings.Builder
	for _, p := range parts {
		fmt.Fprintf(&b, "%x\r\n%s\r\n", len(p), p)
	}
	b.WriteString("0\r\n\r\n")
	return b.String()
}

// A body over the route's limit is answered 413: announced by its
// Content-Length, before the upstream sees anything; growing past it in
// chunks, with the upstream getting no more than the limit. The
// connection closes after the 413.
func TestMaxBodyBytesHTTP1(t *testing.T) {
	up := newBodyUpstream(t, nil)
	td := startDaemon(t, limitsConfig(up.Addr()))
	addr := td.d.Server().Addr("edge").String()
	cases := []struct {
		name      string
		raw       string
		status    int
		upstream  string // body the upstream got; "-" for no request at all
		maxCut    int    // with a cut body: at most this many bytes arrived
		closeConn bool
	}{
		{name: "length at the listener limit", raw: "POST /small HTTP/1.1\r\nHost: a\r\nContent-Length: 16\r\n\r\n0123456789abcdef",
			status: 200, upstream: "0123456789abcdef"},
		{name: "length over the listener limit", raw: "POST /small HTTP/1.1\r\nHost: a\r\nContent-Length: 17\r\n\r\n0123456789abcdefg",
			status: 413, upstream: "-", closeConn: true},
		{name: "length over the limit with expect", raw: "POST /small HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1000\r\n\r\n",
			status: 413, upstream: "-", closeConn: true},
		{name: "route limit above the listener's", raw: "POST /big HTTP/1.1\r\nHost: a\r\nContent-Length: 40\r\n\r\n" + strings.Repeat("x", 40),
			status: 200, upstream: strings.Repeat("x", 40)},
		{name: "route without a limit", raw: "POST /free HTTP/1.1\r\nHost: a\r\nContent-Length: 4000\r\n\r\n" + strings.Repeat("y", 4000),
			status: 200, upstream: strings.Repeat("y", 4000)},
		{name: "chunked within the limit", raw: "POST /small HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked("01234567", "89abcdef"),
			status: 200, upstream: "0123456789abcdef"},
		{name: "chunked growing past the limit", raw: "POST /small HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" +
			chunked("01234567", "89abcdef", "GHIJKLMN", strings.Repeat("z", 100000)),
			status: 413, maxCut: 16, closeConn: true},
		// The client stalls after sending past the limit: the 413 comes at
		// once, not after a wait for the rest of the body.
		{name: "chunked past the limit, then stalled", raw: "POST /small HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" +
			strings.TrimSuffix(chunked("01234567", "89abcdef", "GHIJKLMN"), "0\r\n\r\n"),
			status: 413, maxCut: 16, closeConn: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			conns := up.Conns()
			before, _ := up.seen()
			resp, _, closed := rawAnswer(t, addr, tc.raw)
			assert.Equal(t, tc.status, resp.StatusCode)
			assert.Equal(t, tc.closeConn, closed, "connection closed after the answer")
			switch {
			case tc.upstream == "-":
				assert.Equal(t, conns, up.Conns(), "the upstream saw no connection")
				after, _ := up.seen()
				assert.Len(t, after, len(before), "the upstream saw no request")
			case tc.maxCut > 0:
				var bodies []string
				var cut []bool
				require.Eventually(t, func() bool {
					bodies, cut = up.seen()
					return len(bodies) > len(before)
				}, 5*time.Second, 10*time.Millisecond, "the upstream's connection ends")
				assert.True(t, cut[len(before)], "the upstream's body was cut")
				assert.LessOrEqual(t, len(bodies[len(before)]), tc.maxCut)
			default:
				bodies, _ := up.seen()
				require.Len(t, bodies, len(before)+1)
				assert.Equal(t, tc.upstream, bodies[len(before)])
			}
		})
	}
	// The refused bodies cost the endpoint nothing.
	st, ok := endpointState(td, "up", up.Addr())
	require.True(t, ok)
	assert.Zero(t, st.PassiveFailures)
	resp, body := td.get(td.url("edge") + "/small")
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, "ok", body)
}

// The same limits hold on HTTP/2 (h2c), where a 413 ends the stream and the
// connection carries on.
func TestMaxBodyBytesHTTP2(t *testing.T) {
	up := newBodyUpstream(t, nil)
	td := startDaemon(t, limitsConfig(up.Addr()))
	client := h2cClient(t)
	cases := []struct {
		name     string
		path     string
		body     string
		chunked  bool
		status   int
		upstream string // "-": the upstream saw no request; "cut": its body was cut at the limit
	}{
		{name: "length at the limit", path: "/small", body: "0123456789abcdef", status: 200, upstream: "0123456789abcdef"},
		{name: "length over the limit", path: "/small", body: "0123456789abcdefg", status: 413, upstream: "-"},
		{name: "route limit", path: "/big", body: strings.Repeat("x", 64), status: 200, upstream: strings.Repeat("x", 64)},
		{name: "streamed within the limit", path: "/small", body: "0123456789", chunked: true, status: 200, upstream: "0123456789"},
		{name: "streamed past the limit", path: "/small", body: strings.Repeat("z", 100000), chunked: true, status: 413, upstream: "cut"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			conns := up.Conns()
			before, _ := up.seen()
			var body io.Reader = strings.NewReader(tc.body)
			if tc.chunked {
				body = io.MultiReader(body) // no length known: sent as it comes
			}
			req, err := http.NewRequest(http.MethodPost, td.url("edge")+tc.path, body)
			require.NoError(t, err)
			resp, err := client.Do(req)
			require.NoError(t, err)
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			assert.Equal(t, 2, resp.ProtoMajor)
			assert.Equal(t, tc.status, resp.StatusCode)
			switch tc.upstream {
			case "-":
				assert.Equal(t, conns, up.Conns(), "the upstream saw no connection")
			case "cut":
				var bodies []string
				var cut []bool
				require.Eventually(t, func() bool {
					bodies, cut = up.seen()
					return len(bodies) > len(before)
				}, 5*time.Second, 10*time.Millisecond)
				assert.True(t, cut[len(before)])
				assert.LessOrEqual(t, len(bodies[len(before)]), 16)
			default:
				bodies, _ := up.seen()
				require.Len(t, bodies, len(before)+1)
				assert.Equal(t, tc.upstream, bodies[len(before)])
			}
		})
	}
}

// With max_connections open, the listener stops accepting: the next
// connection waits (the kernel queues it) and is served once one closes.
// HTTP/2 connections count until they close. Shutdown does not hang on a
// listener that waits for room.
func TestMaxConnections(t *testing.T) {
	up := newBodyUpstream(t, nil)
	td := startDaemon(t, fmt.Sprintf(edgePreamble+`    max_connections: 2
    routes: [{name: all, pipeline: [{proxy: up}]}]
pools:
  up: {endpoints: [%s]}
`, up.Addr()))
	addr := td.d.Server().Addr("edge").String()
	ask := "GET / HTTP/1.1\r\nHost: a\r\n\r\n"

	// One HTTP/1 connection and one HTTP/2 connection fill the listener.
	first, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer first.Close()
	firstBr := bufio.NewReader(first)
	exchange := func(c net.Conn, br *bufio.Reader, wait time.Duration) error {
		if _, err := io.WriteString(c, ask); err != nil {
			return err
		}
		c.SetReadDeadline(time.Now().Add(wait))
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return err
		}
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return err
	}
	require.NoError(t, exchange(first, firstBr, 5*time.Second))
	h2 := h2cClient(t)
	resp, err := h2.Get(td.url("edge") + "/")
	require.NoError(t, err)
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	require.Equal(t, 2, resp.ProtoMajor)
	assert.Equal(t, 2.0, td.metric("sekisho_listener_connections", "listener", "edge"))

	// A third connection is not served while both stay open.
	third, err := net.Dial("tcp", addr)
	require.NoError(t, err, "the kernel queues the connection")
	defer third.Close()
	thirdBr := bufio.NewReader(third)
	err = exchange(third, thirdBr, 300*time.Millisecond)
	var ne net.Error
	require.ErrorAs(t, err, &ne)
	assert.True(t, ne.Timeout(), "no answer while the listener is full")
	assert.Equal(t, 1.0, td.metric("sekisho_listener_connections_limited_total", "listener", "edge"))

	// Closing the HTTP/2 connection makes room; the waiting request is served.
	h2.CloseIdleConnections()
	third.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err = http.ReadResponse(thirdBr, nil)
	require.NoError(t, err)
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	resp.Body.Close()

	// Full again (first and third): Shutdown with a fourth waiting in the
	// backlog ends in time.
	fourth, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer fourth.Close()
	require.Eventually(t, func() bool {
		return td.metric("sekisho_listener_connections_limited_total", "listener", "edge") == 2
	}, 5*time.Second, 10*time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	require.NoError(t, td.d.Shutdown(ctx))
	assert.Less(t, time.Since(start), 4*time.Second)
}

// A reload changes max_connections on the open socket: raising it lets a
// waiting connection in at once.
func TestMaxConnectionsReload(t *testing.T) {
	up := newBodyUpstream(t, nil)
	text := func(n int) string {
		return fmt.Sprintf(edgePreamble+`    max_connections: %d
    routes: [{name: all, pipeline: [{proxy: up}]}]
pools:
  up: {endpoints: [%s]}
`, n, up.Addr())
	}
	td := startDaemon(t, text(1))
	addr := td.d.Server().Addr("edge").String()
	first, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer first.Close()
	_, err = io.WriteString(first, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	require.NoError(t, err)
	first.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(first), nil)
	require.NoError(t, err)
	resp.Body.Close()

	second, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer second.Close()
	require.Eventually(t, func() bool {
		return td.metric("sekisho_listener_connections_limited_total", "listener", "edge") == 1
	}, 5*time.Second, 10*time.Millisecond)
	td.rewrite(text(2))
	_, err = io.WriteString(second, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	require.NoError(t, err)
	second.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err = http.ReadResponse(bufio.NewReader(second), nil)
	require.NoError(t, err)
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	resp.Body.Close()
}

// A pool with max_in_flight requests in flight answers the next one 503
// with Retry-After at once, without touching an endpoint, and counts it;
// once a request ends the pool takes requests again.
func TestPoolMaxInFlight(t *testing.T) {
	release := make(chan struct{})
	entered := make(chan struct{}, 4)
	up := newBodyUpstream(t, func(c net.Conn, r *http.Request) {
		if r.URL.Path == "/hold" {
			entered <- struct{}{}
			<-release
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	})
	td := startDaemon(t, fmt.Sprintf(edgePreamble+`    routes: [{name: all, pipeline: [{proxy: up}]}]
pools:
  up: {endpoints: [%s], max_in_flight: 2, overflow_retry_after: 1500ms}
`, up.Addr()))
	var wg sync.WaitGroup
	defer wg.Wait()
	var once sync.Once
	defer once.Do(func() { close(release) })
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := td.client.Get(td.url("edge") + "/hold")
			if assert.NoError(t, err) {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				assert.Equal(t, http.StatusOK, resp.StatusCode)
			}
		}()
	}
	for range 2 {
		select {
		case <-entered:
		case <-time.After(5 * time.Second):
			require.FailNow(t, "the held requests did not reach the upstream")
		}
	}
	conns := up.Conns()
	before, _ := up.seen()
	start := time.Now()
	resp, body := td.get(td.url("edge") + "/next")
	assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	assert.Equal(t, "2", resp.Header.Get("Retry-After"), "1500ms rounds up to whole seconds")
	assert.Equal(t, "pool at capacity\n", body)
	assert.Less(t, time.Since(start), time.Second, "refused at once")
	assert.Equal(t, conns, up.Conns())
	after, _ := up.seen()
	assert.Len(t, after, len(before), "the upstream saw no request")
	assert.Equal(t, 1.0, td.metric("sekisho_pool_overflow_total", "pool", "up"))

	once.Do(func() { close(release) })
	wg.Wait()
	resp, body = td.get(td.url("edge") + "/next")
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, "ok", body)
}

// A route's timeout bounds the whole request, retries included: before the
// answer head it is a 504, after it the answer is cut (the connection
// closes short of the announced length). Both paths: the direct one
// (bodyless GET) and ReverseProxy (a POST with a body).
func TestRouteTimeout(t *testing.T) {
	stall := make(chan struct{})
	slowHead := func(c net.Conn, r *http.Request) { <-stall }
	slowBody := func(c net.Conn, r *http.Request) {
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
		<-stall
	}
	heads := [2]*bodyUpstream{newBodyUpstream(t, slowHead), newBodyUpstream(t, slowHead)}
	body := newBodyUpstream(t, slowBody)
	t.Cleanup(func() { close(stall) }) // before the upstreams' cleanups, which wait for their handlers
	td := startDaemon(t, fmt.Sprintf(edgePreamble+`    routes:
      - {name: head, match: {path_prefix: /slow-head}, timeout: 300ms, pipeline: [{proxy: heads}]}
      - {name: body, match: {path_prefix: /slow-body}, timeout: 300ms, pipeline: [{proxy: body}]}
pools:
  heads: {endpoints: [%s, %s], retries: 1, timeouts: {response_header: 5s}}
  body: {endpoints: [%s], timeouts: {response_header: 5s}}
`, heads[0].Addr(), heads[1].Addr(), body.Addr()))
	addr := td.d.Server().Addr("edge").String()
	request := func(method, path string) string {
		if method == http.MethodPost {
			return method + " " + path + " HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi"
		}
		return method + " " + path + " HTTP/1.1\r\nHost: a\r\n\r\n"
	}
	for _, method := range []string{http.MethodGet, http.MethodPost} {
		t.Run("before the head "+method, func(t *testing.T) {
			start := time.Now()
			resp, _, _ := rawAnswer(t, addr, request(method, "/slow-head"))
			elapsed := time.Since(start)
			assert.Equal(t, http.StatusGatewayTimeout, resp.StatusCode)
			assert.GreaterOrEqual(t, elapsed, 300*time.Millisecond)
			assert.Less(t, elapsed, 2*time.Second, "one deadline for every attempt, far below the header timeout")
		})
		t.Run("after the head "+method, func(t *testing.T) {
			c, err := net.Dial("tcp", addr)
			require.NoError(t, err)
			defer c.Close()
			_, err = io.WriteString(c, request(method, "/slow-body"))
			require.NoError(t, err)
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			// The head may have been held back with the start of the body
			// (the loop buffers a short answer), so the cut can come
			// before it; either way the client never gets a whole answer,
			// and the connection closes at once.
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err == nil {
				assert.Equal(t, http.StatusOK, resp.StatusCode)
				b, err := io.ReadAll(resp.Body)
				assert.ErrorIs(t, err, io.ErrUnexpectedEOF, "the answer is cut short of its length")
				assert.Equal(t, "half", string(b))
			} else {
				assert.ErrorIs(t, err, io.ErrUnexpectedEOF, "the connection closes, not the read deadline")
			}
		})
	}
	// Neither endpoint was blamed for the route's deadline.
	for _, u := range heads {
		st, ok := endpointState(td, "heads", u.Addr())
		require.True(t, ok)
		assert.Zero(t, st.PassiveFailures)
	}
}

// BenchmarkProxyLimits is BenchmarkProxyRoundRobin with every limit set:
// the listener's body limit (the request has no body), the route's
// timeout and the pool's max_in_flight. Against BenchmarkProxyRoundRobin,
// it is what the limits cost a plain request.
func BenchmarkProxyLimits(b *testing.B) {
	h := benchDaemon(b, fmt.Sprintf(benchPreamble+`    max_body_bytes: 1048576
    max_connections: 1000
    routes: [{name: all, timeout: 10s, pipeline: [{proxy: web}]}]
pools:
  web: {endpoints: [%s, %s, %s], max_in_flight: 1000}
`, tinyUpstream(b, "a"), tinyUpstream(b, "b"), tinyUpstream(b, "c")))
	benchServe(b, h, nil)
}
