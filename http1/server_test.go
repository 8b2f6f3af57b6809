package http1

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"sekisho/internal/rawclient"
)

// These tests hold the Server to what clients rely on: they talk to a real
// listener over raw sockets, so that framing, keep-alive and error answers
// are seen byte for byte, as a client sees them.

// h1sStreamPieces pieces of h1sPieceSize bytes make the streamed answer of
// /api/stream: 256 KiB, well past any buffering before chunking.
const (
	h1sStreamPieces = 16
	h1sPieceSize    = 16 << 10
)

// h1sStreamBody is what /api/stream sends: piece i is one letter repeated.
func h1sStreamBody() string {
	var b strings.Builder
	for i := range h1sStreamPieces {
		b.WriteString(strings.Repeat(string(rune('a'+i)), h1sPieceSize))
	}
	return b.String()
}

// h1sUpstream is the upstream of these tests. What it answers depends on
// the path; it counts the requests that reach it and keeps the header of
// the last one.
type h1sUpstream struct {
	*httptest.Server
	hits    atomic.Int64
	mu      sync.Mutex
	header  http.Header
	entered chan struct{} // /api/slow: a request arrived
	release chan struct{} // /api/slow: closed by let, to send the answers
	once    sync.Once
}

func newH1sUpstream(t *testing.T) *h1sUpstream {
	t.Helper()
	u := &h1sUpstream{entered: make(chan struct{}, 1), release: make(chan struct{})}
	u.Server = httptest.NewServer(http.HandlerFunc(u.serve))
	t.Cleanup(u.Close)
	t.Cleanup(u.let) // runs first: a held request must not block Close
	return u
}

// let releases the requests held on /api/slow.
func (u *h1sUpstream) let() { u.once.Do(func() { close(u.release) }) }

func (u *h1sUpstream) lastHeader() http.Header {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.header
}

func (u *h1sUpstream) serve(w http.ResponseWriter, r *http.Request) {
	u.hits.Add(1)
	u.mu.Lock()
	u.header = r.Header.Clone()
	u.mu.Unlock()
	switch r.URL.Path {
	case "/api/echo":
		// The trailer is only known once the body has been read to its end.
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("X-Got-Length", strconv.Itoa(len(body)))
		w.Header().Set("X-Got-Trailer", r.Trailer.Get("X-Sum"))
		w.Write(body)
	case "/api/chunked":
		// Flushing the head before the body leaves the length unknown.
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		io.WriteString(w, "chunked answer\n")
	case "/api/close":
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		brw.WriteString("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nclose-delimited answer\n")
		brw.Flush()
	case "/api/stream":
		body := h1sStreamBody()
		for i := range h1sStreamPieces {
			io.WriteString(w, body[i*h1sPieceSize:(i+1)*h1sPieceSize])
			w.(http.Flusher).Flush()
		}
	case "/api/status":
		code, _ := strconv.Atoi(r.URL.Query().Get("code"))
		w.Header().Set("ETag", `"v1"`)
		w.WriteHeader(code)
	case "/api/ws":
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
		if brw.Flush() != nil {
			return
		}
		io.Copy(c, brw.Reader)
	case "/api/slow":
		u.entered <- struct{}{}
		select {
		case <-u.release:
		case <-r.Context().Done():
			return
		}
		io.WriteString(w, "slow answer\n")
	default:
		io.WriteString(w, "up\n")
	}
}

// h1sSetup starts an upstream and a Server in front of it: /api goes to the
// upstream through httputil.ReverseProxy over a Transport, /fixed is
// answered "fixed\n". configure, when not nil, sets the Server's fields.
// It returns the Server's host:port.
func h1sSetup(t *testing.T, configure func(*Server)) (*h1sUpstream, *Server, string) {
	t.Helper()
	u := newH1sUpstream(t)
	target, err := url.Parse(u.URL)
	require.NoError(t, err)
	tr := &Transport{Fallback: &http.Transport{}}
	t.Cleanup(tr.CloseIdleConnections)
	mux := http.NewServeMux()
	mux.Handle("/api/", &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Host = pr.In.Host
			pr.SetXForwarded()
			// The server fills in the announced trailers on In's map once
			// the body is read: shared, they go upstream after the body.
			pr.Out.Trailer = pr.In.Trailer
		},
		Transport:     tr,
		FlushInterval: -1,
		// A request body the client framed wrongly is the client's fault.
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			status := http.StatusBadGateway
			if fe := (*FramingError)(nil); errors.As(err, &fe) {
				status = http.StatusBadRequest
			}
			w.WriteHeader(status)
		},
	})
	mux.HandleFunc("/fixed", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "fixed\n") })
	srv := &Server{Handler: mux, MaxHeaderBytes: 64 << 10, IdleTimeout: 120 * time.Second}
	if configure != nil {
		configure(srv)
	}
	return u, srv, serve(t, srv)
}

// serve serves srv on a 127.0.0.1 listener until the test ends, and
// returns its host:port.
func serve(t *testing.T, srv *Server) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
	return ln.Addr().String()
}

// assertOpen checks that the connection still serves: a request sent on it
// now is answered, and nothing was left over from the previous answer.
func assertOpen(t *testing.T, c *rawclient.Conn) {
	t.Helper()
	resp, body := c.Do(http.MethodGet, "GET /fixed HTTP/1.1\r\nHost: edge.test\r\n\r\n")
	assert.Equal(t, http.StatusOK, resp.StatusCode, "the connection still serves")
	assert.Equal(t, "fixed\n", body)
}

func TestServerKeepAlive(t *testing.T) {
	_, _, addr := h1sSetup(t, nil)
	t.Run("three requests on one HTTP/1.1 connection", func(t *testing.T) {
		c := rawclient.Dial(t, addr)
		for i, path := range []string{"/fixed", "/api/echo", "/fixed"} {
			resp, body := c.Do(http.MethodGet, "GET "+path+" HTTP/1.1\r\nHost: edge.test\r\n\r\n")
			require.Equal(t, http.StatusOK, resp.StatusCode, "request %d", i)
			assert.False(t, resp.Close, "request %d: no Connection: close", i)
			if path == "/fixed" {
				assert.Equal(t, "fixed\n", body, "request %d", i)
			} else {
				assert.Equal(t, "0", resp.Header.Get("X-Got-Length"), "request %d reached the upstream", i)
			}
		}
		assertOpen(t, c)
	})
	t.Run("HTTP/1.0 without keep-alive is closed after its answer", func(t *testing.T) {
		c := rawclient.Dial(t, addr)
		resp, body := c.Do(http.MethodGet, "GET /fixed HTTP/1.0\r\n\r\n")
		assert.Equal(t, http.StatusOK, resp.StatusCode)
		assert.Equal(t, "fixed\n", body)
		assert.True(t, resp.Close)
		c.AssertClosed(5 * time.Second)
	})
	t.Run("HTTP/1.0 with Connection: keep-alive stays open", func(t *testing.T) {
		c := rawclient.Dial(t, addr)
		for _, path := range []string{"/fixed", "/api/hello"} {
			resp, body := c.Do(http.MethodGet, "GET "+path+" HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
			assert.Equal(t, http.StatusOK, resp.StatusCode, path)
			assert.Equal(t, "keep-alive", resp.Header.Get("Connection"), path)
			assert.False(t, resp.Close, path)
			assert.Equal(t, strconv.Itoa(len(body)), resp.Header.Get("Content-Length"), "%s: a kept-alive HTTP/1.0 answer needs its length", path)
		}
		assertOpen(t, c)
	})
	t.Run("HTTP/1.1 Connection: close is closed after its answer", func(t *testing.T) {
		c := rawclient.Dial(t, addr)
		resp, body := c.Do(http.MethodGet, "GET /api/hello HTTP/1.1\r\nHost: edge.test\r\nConnection: close\r\n\r\n")
		assert.Equal(t, http.StatusOK, resp.StatusCode)
		assert.Equal(t, "up\n", body)
		assert.True(t, resp.Close, "the answer says Connection: close")
		c.AssertClosed(5 * time.Second)
	})
}

func TestServerPipelining(t *testing.T) {
	_, _, addr := h1sSetup(t, nil)
	c := rawclient.Dial(t, addr)
	c.Send("GET /fixed HTTP/1.1\r\nHost: edge.test\r\n\r\n" +
		"POST /api/echo HTTP/1.1\r\nHost: edge.test\r\nContent-Length: 6\r\n\r\nsecond" +
		"GET /api/hello HTTP/1.1\r\nHost: edge.test\r\n\r\n")
	for i, want := range []string{"fixed\n", "second", "up\n"} {
		resp, body := c.Read(http.MethodGet)
		assert.Equal(t, http.StatusOK, resp.StatusCode, "answer %d", i)
		assert.Equal(t, want, body, "answer %d comes in the order of the requests", i)
	}
	assertOpen(t, c)
}

func TestServerRequestBodies(t *testing.T) {
	_, _, addr := h1sSetup(t, nil)
	t.Run("Content-Length", func(t *testing.T) {
		big := strings.Repeat("0123456789abcdef", (1<<20)/16)
		for _, body := range []string{"hello, upstream", big} {
			c := rawclient.Dial(t, addr)
			resp, got := c.Do(http.MethodPost, fmt.Sprintf("POST /api/echo HTTP/1.1\r\nHost: edge.test\r\nContent-Length: %d\r\n\r\n%s", len(body), body))
			require.Equal(t, http.StatusOK, resp.StatusCode)
			assert.Equal(t, strconv.Itoa(len(body)), resp.Header.Get("X-Got-Length"))
			assert.Len(t, got, len(body))
			assert.True(t, got == body, "the body of %d bytes came back intact", len(body))
			assertOpen(t, c)
		}
	})
	t.Run("chunked with a trailer", func(t *testing.T) {
		c := rawclient.Dial(t, addr)
		resp, got := c.Do(http.MethodPost, "POST /api/echo HTTP/1.1\r\nHost: edge.test\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n"+
			"5\r\nhello\r\n7\r\n, chunk\r\n0\r\nX-Sum: 42\r\n\r\n")
		require.Equal(t, http.StatusOK, resp.StatusCode)
		assert.Equal(t, "hello, chunk", got)
		assert.Equal(t, "12", resp.Header.Get("X-Got-Length"))
		assert.Equal(t, "42", resp.Header.Get("X-Got-Trailer"), "the request trailer reached the upstream")
		assertOpen(t, c)
	})
	t.Run("Expect: 100-continue", func(t *testing.T) {
		c := rawclient.Dial(t, addr)
		cont, _ := c.Do(http.MethodPost, "POST /api/echo HTTP/1.1\r\nHost: edge.test\r\nContent-Length: 9\r\nExpect: 100-continue\r\n\r\n")
		require.Equal(t, http.StatusContinue, cont.StatusCode, "the server asks for the body before it is sent")
		resp, got := c.Do(http.MethodPost, "continued")
		require.Equal(t, http.StatusOK, resp.StatusCode)
		assert.Equal(t, "continued", got)
		assert.Equal(t, "9", resp.Header.Get("X-Got-Length"))
		assertOpen(t, c)
	})
}

func TestServerUnreadBodyIsDiscarded(t *testing.T) {
	u, _, addr := h1sSetup(t, nil)
	// Were the body taken for requests, they would reach the upstream.
	smuggled := strings.Repeat("GET /api/smuggled HTTP/1.1\r\nHost: edge.test\r\n\r\n", 100)
	cases := []struct {
		name, raw string
	}{
		{"Content-Length", fmt.Sprintf("POST /fixed HTTP/1.1\r\nHost: edge.test\r\nContent-Length: %d\r\n\r\n%s", len(smuggled), smuggled)},
		{"chunked", fmt.Sprintf("POST /fixed HTTP/1.1\r\nHost: edge.test\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n", len(smuggled), smuggled)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := rawclient.Dial(t, addr)
			resp, body := c.Do(http.MethodPost, tc.raw)
			assert.Equal(t, http.StatusOK, resp.StatusCode)
			assert.Equal(t, "fixed\n", body)
			assertOpen(t, c)
		})
	}
	assert.Zero(t, u.hits.Load(), "no part of a body was served as a request")
}

func TestServerResponseFraming(t *testing.T) {
	_, _, addr := h1sSetup(t, nil)
	t.Run("small answer of unknown length", func(t *testing.T) {
		for path, want := range map[string]string{"/api/chunked": "chunked answer\n", "/api/close": "close-delimited answer\n"} {
			c := rawclient.Dial(t, addr)
			resp, body := c.Do(http.MethodGet, "GET "+path+" HTTP/1.1\r\nHost: edge.test\r\n\r\n")
			require.Equal(t, http.StatusOK, resp.StatusCode, path)
			assert.Equal(t, want, body, path)
			framed := resp.ContentLength == int64(len(want)) || assert.ObjectsAreEqual([]string{"chunked"}, resp.TransferEncoding)
			assert.True(t, framed, "%s: framed by Content-Length or chunked, got length %d, encoding %v", path, resp.ContentLength, resp.TransferEncoding)
			assertOpen(t, c)
		}
	})
	t.Run("large stream over HTTP/1.1 is chunked", func(t *testing.T) {
		c := rawclient.Dial(t, addr)
		resp, body := c.Do(http.MethodGet, "GET /api/stream HTTP/1.1\r\nHost: edge.test\r\n\r\n")
		require.Equal(t, http.StatusOK, resp.StatusCode)
		assert.Equal(t, []string{"chunked"}, resp.TransferEncoding)
		assert.Len(t, body, h1sStreamPieces*h1sPieceSize)
		assert.True(t, body == h1sStreamBody(), "the streamed body arrived intact")
		assertOpen(t, c)
	})
	t.Run("large stream over HTTP/1.0 ends with the connection", func(t *testing.T) {
		c := rawclient.Dial(t, addr)
		resp, body := c.Do(http.MethodGet, "GET /api/stream HTTP/1.0\r\n\r\n")
		require.Equal(t, http.StatusOK, resp.StatusCode)
		assert.Equal(t, int64(-1), resp.ContentLength)
		assert.Empty(t, resp.TransferEncoding, "no chunking for an HTTP/1.0 client")
		assert.True(t, resp.Close)
		assert.Len(t, body, h1sStreamPieces*h1sPieceSize)
		assert.True(t, body == h1sStreamBody(), "the streamed body arrived intact")
		c.AssertClosed(5 * time.Second)
	})
	t.Run("HEAD answers carry no body", func(t *testing.T) {
		c := rawclient.Dial(t, addr)
		for path, length := range map[string]string{"/fixed": "6", "/api/hello": "3"} {
			resp, body := c.Do(http.MethodHead, "HEAD "+path+" HTTP/1.1\r\nHost: edge.test\r\n\r\n")
			assert.Equal(t, http.StatusOK, resp.StatusCode, path)
			assert.Equal(t, length, resp.Header.Get("Content-Length"), "%s: the length of the body a GET would get", path)
			assert.Empty(t, body, path)
		}
		assertOpen(t, c)
	})
	t.Run("204 and 304 carry no body", func(t *testing.T) {
		c := rawclient.Dial(t, addr)
		for _, code := range []int{http.StatusNoContent, http.StatusNotModified} {
			resp, body := c.Do(http.MethodGet, fmt.Sprintf("GET /api/status?code=%d HTTP/1.1\r\nHost: edge.test\r\n\r\n", code))
			assert.Equal(t, code, resp.StatusCode)
			assert.Equal(t, `"v1"`, resp.Header.Get("ETag"))
			assert.Empty(t, resp.TransferEncoding, "%d", code)
			assert.Empty(t, body, "%d", code)
		}
		assertOpen(t, c)
	})
	t.Run("respond stage has its Content-Length", func(t *testing.T) {
		c := rawclient.Dial(t, addr)
		resp, body := c.Do(http.MethodGet, "GET /fixed HTTP/1.1\r\nHost: edge.test\r\n\r\n")
		assert.Equal(t, http.StatusOK, resp.StatusCode)
		assert.Equal(t, "6", resp.Header.Get("Content-Length"))
		assert.Equal(t, int64(6), resp.ContentLength)
		assert.Empty(t, resp.TransferEncoding)
		assert.Equal(t, "fixed\n", body)
	})
}

func TestServerMalformedRequests(t *testing.T) {
	u, _, addr := h1sSetup(t, func(s *Server) { s.MaxHeaderBytes = 4096 })
	cases := []struct {
		name, raw string
		status    int
	}{
		{"garbage request line", "THIS IS NOT HTTP AT ALL\r\n\r\n", http.StatusBadRequest},
		{"header line without a colon", "GET /api/x HTTP/1.1\r\nHost: edge.test\r\nNoColonHere\r\n\r\n", http.StatusBadRequest},
		{"space in a header name", "GET /api/x HTTP/1.1\r\nHost: edge.test\r\nBad Name: v\r\n\r\n", http.StatusBadRequest},
		{"HTTP/1.1 without Host", "GET /api/x HTTP/1.1\r\n\r\n", http.StatusBadRequest},
		{"two Host headers", "GET /api/x HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n", http.StatusBadRequest},
		{"head over max_header_bytes", "GET /api/x HTTP/1.1\r\nHost: edge.test\r\nX-Big: " + strings.Repeat("a", 64<<10) + "\r\n\r\n", http.StatusRequestHeaderFieldsTooLarge},
		{"HTTP/2.0 in a request line", "GET /api/x HTTP/2.0\r\nHost: edge.test\r\n\r\n", http.StatusHTTPVersionNotSupported},
		{"HTTP/9.9", "GET /api/x HTTP/9.9\r\nHost: edge.test\r\n\r\n", http.StatusHTTPVersionNotSupported},
		{"Transfer-Encoding: gzip", "POST /api/x HTTP/1.1\r\nHost: edge.test\r\nTransfer-Encoding: gzip\r\n\r\n", http.StatusNotImplemented},
		{"conflicting Content-Lengths", "POST /api/x HTTP/1.1\r\nHost: edge.test\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", http.StatusBadRequest},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := rawclient.Dial(t, addr)
			resp, _ := c.Do(http.MethodGet, tc.raw)
			assert.Equal(t, tc.status, resp.StatusCode)
			assert.True(t, resp.Close, "the answer says Connection: close")
			c.AssertClosed(5 * time.Second)
		})
	}
	assert.Zero(t, u.hits.Load(), "no malformed request reached the upstream")
}

func TestServerTimeouts(t *testing.T) {
	_, _, addr := h1sSetup(t, func(s *Server) { s.ReadHeaderTimeout, s.IdleTimeout = time.Second, time.Second })
	t.Run("a half-sent head is cut after read_header", func(t *testing.T) {
		c := rawclient.Dial(t, addr)
		c.Send("GET /fixed HTTP/1.1\r\nHost: edge.test\r\n")
		took := c.AssertClosed(5 * time.Second)
		assert.Greater(t, took, 500*time.Millisecond, "the client had its read_header time")
	})
	t.Run("an idle kept-alive connection is closed after idle", func(t *testing.T) {
		c := rawclient.Dial(t, addr)
		assertOpen(t, c)
		took := c.AssertClosed(5 * time.Second)
		assert.Greater(t, took, 500*time.Millisecond, "the client had its idle time")
	})
}

func TestServerUpgrade(t *testing.T) {
	_, _, addr := h1sSetup(t, nil)
	c := rawclient.Dial(t, addr)
	resp, _ := c.Do(http.MethodGet, "GET /api/ws HTTP/1.1\r\nHost: edge.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
	require.Equal(t, http.StatusSwitchingProtocols, resp.StatusCode)
	assert.Equal(t, "websocket", resp.Header.Get("Upgrade"))
	assert.Equal(t, "Upgrade", resp.Header.Get("Connection"))
	for _, msg := range []string{"ping\n", "GET /fixed HTTP/1.1\r\n"} {
		c.Send(msg)
		require.NoError(t, c.Conn.SetReadDeadline(time.Now().Add(5*time.Second)))
		got := make([]byte, len(msg))
		_, err := io.ReadFull(c.BR, got)
		require.NoError(t, err)
		assert.Equal(t, msg, string(got), "bytes after the 101 go both ways untouched")
	}
}

func TestServerH2CPriorKnowledge(t *testing.T) {
	_, _, addr := h1sSetup(t, func(s *Server) { s.ServeHTTP2 = h2cHandOver(t, s.Handler) })
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: &protos}
	t.Cleanup(tr.CloseIdleConnections)
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	resp, err := client.Post("http://"+addr+"/api/echo", "text/plain", strings.NewReader("over h2c"))
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	assert.Equal(t, 2, resp.ProtoMajor)
	assert.Equal(t, "over h2c", string(body))
	resp, err = client.Get("http://" + addr + "/fixed")
	require.NoError(t, err)
	body, err = io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	assert.Equal(t, 2, resp.ProtoMajor)
	assert.Equal(t, "fixed\n", string(body))
}

func TestServerGracefulShutdown(t *testing.T) {
	u, srv, addr := h1sSetup(t, nil)
	busy := rawclient.Dial(t, addr)
	busy.Send("GET /api/slow HTTP/1.1\r\nHost: edge.test\r\n\r\n")
	select {
	case <-u.entered:
	case <-time.After(5 * time.Second):
		require.FailNow(t, "the slow request did not reach the upstream")
	}
	idle := rawclient.Dial(t, addr)
	assertOpen(t, idle)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stopped := make(chan error, 1)
	go func() { stopped <- srv.Shutdown(ctx) }()
	require.Eventually(t, srv.shutting.Load, 5*time.Second, 5*time.Millisecond)
	idle.AssertClosed(5 * time.Second)

	u.let()
	resp, body := busy.Read(http.MethodGet)
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, "slow answer\n", body, "the request in flight got its whole answer")
	assert.True(t, resp.Close, "the answer tells the client not to reuse the connection")
	busy.AssertClosed(5 * time.Second)
	select {
	case err := <-stopped:
		assert.NoError(t, err, "nothing was cut")
	case <-time.After(5 * time.Second):
		assert.Fail(t, "Shutdown did not return once the last request ended")
	}
}

func TestServerForwardsClientAddress(t *testing.T) {
	u, _, addr := h1sSetup(t, nil)
	c := rawclient.Dial(t, addr)
	resp, _ := c.Do(http.MethodGet, "GET /api/hello HTTP/1.1\r\nHost: shop.test\r\n\r\n")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	seen := u.lastHeader()
	require.NotNil(t, seen)
	assert.Equal(t, "127.0.0.1", seen.Get("X-Forwarded-For"))
	assert.Equal(t, "shop.test", seen.Get("X-Forwarded-Host"))
	assert.Equal(t, "http", seen.Get("X-Forwarded-Proto"))
}

// h2cHandOver is a ServeHTTP2 that serves the connections handed over with
// net/http's own HTTP/2 with prior knowledge.
func h2cHandOver(t *testing.T, h http.Handler) func(net.Conn, *tls.ConnectionState) {
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	hs := &http.Server{Handler: h, Protocols: &protos}
	t.Cleanup(func() { hs.Close() })
	return func(c net.Conn, _ *tls.ConnectionState) {
		hs.Serve(&oneConnListener{c: c, done: make(chan struct{})})
	}
}

// oneConnListener yields its one connection, then waits to be closed.
type oneConnListener struct {
	c    net.Conn
	once sync.Once
	done chan struct{}
	shut sync.Once
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	var c net.Conn
	l.once.Do(func() { c = l.c })
	if c != nil {
		return c, nil
	}
	<-l.done
	return nil, net.ErrClosed
}

func (l *oneConnListener) Close() error {
	l.shut.Do(func() { close(l.done) })
	return nil
}

func (l *oneConnListener) Addr() net.Addr { return l.c.LocalAddr() }
