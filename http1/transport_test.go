package http1

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// countingServer counts the connections it accepts.
func countingServer(t *testing.T, h http.HandlerFunc) (*httptest.Server, *atomic.Int64) {
	var conns atomic.Int64
	s := httptest.NewUnstartedServer(h)
	s.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			conns.Add(1)
		}
	}
	s.Start()
	t.Cleanup(s.Close)
	return s, &conns
}

// newTestTransport returns a Transport with a one-second dial timeout, eight
// idle connections per host and tc for TLS (nil: the default).
func newTestTransport(tc *tls.Config) *Transport {
	dialer := &net.Dialer{Timeout: time.Second, KeepAlive: 30 * time.Second}
	return &Transport{
		DialContext:         dialer.DialContext,
		TLSClientConfig:     tc,
		TLSHandshakeTimeout: 6 * time.Second,
		MaxIdleConnsPerHost: 8,
		Fallback:            &http.Transport{DialContext: dialer.DialContext, TLSClientConfig: tc, DisableCompression: true},
	}
}

func doH1(t *testing.T, tr http.RoundTripper, method, url string) (*http.Response, string, error) {
	req, err := http.NewRequest(method, url, nil)
	require.NoError(t, err)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return nil, "", err
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b), err
}

func TestTransportReusesConnections(t *testing.T) {
	srv, conns := countingServer(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/chunked":
			w.Write([]byte("part1 "))
			w.(http.Flusher).Flush()
			w.Write([]byte("part2"))
		case "/empty":
			w.WriteHeader(http.StatusNoContent)
		case "/notmod":
			w.WriteHeader(http.StatusNotModified)
		default:
			fmt.Fprintf(w, "hello %s", r.Method)
		}
	})
	tr := newTestTransport(nil)
	defer tr.CloseIdleConnections()
	cases := []struct{ method, path, body string }{
		{http.MethodGet, "/", "hello GET"},
		{http.MethodHead, "/", ""},
		{http.MethodOptions, "/", "hello OPTIONS"},
		{http.MethodGet, "/chunked", "part1 part2"},
		{http.MethodGet, "/empty", ""},
		{http.MethodGet, "/notmod", ""},
		{http.MethodGet, "/", "hello GET"},
	}
	for _, tc := range cases {
		resp, body, err := doH1(t, tr, tc.method, srv.URL+tc.path)
		require.NoError(t, err, tc.path)
		assert.Equal(t, tc.body, body, tc.path)
		assert.Less(t, resp.StatusCode, 400)
	}
	assert.Equal(t, int64(1), conns.Load(), "every request rode one kept-alive connection")
}

func TestTransportFallsBackForBodiesAndUpgrades(t *testing.T) {
	srv, _ := countingServer(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s", r.Method, b)
	})
	tr := newTestTransport(nil)
	defer tr.CloseIdleConnections()
	req, _ := http.NewRequest(http.MethodPost, srv.URL, strings.NewReader("payload"))
	resp, err := tr.RoundTrip(req)
	require.NoError(t, err)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	assert.Equal(t, "POST payload", string(b))
	for _, r := range []*http.Request{
		httptest.NewRequest(http.MethodPost, "http://x/", strings.NewReader("x")),
		httptest.NewRequest(http.MethodPut, "http://x/", nil),
		func() *http.Request {
			r, _ := http.NewRequest(http.MethodGet, "http://x/", nil)
			r.Header.Set("Upgrade", "websocket")
			return r
		}(),
	} {
		assert.False(t, pooled(r), "%s with upgrade=%q", r.Method, r.Header.Get("Upgrade"))
	}
	get, _ := http.NewRequest(http.MethodGet, "http://x/", nil)
	assert.True(t, pooled(get))
}

func TestTransportRetriesAStaleConnection(t *testing.T) {
	var n atomic.Int64
	srv, conns := countingServer(t, func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "answer %d", n.Add(1))
	})
	tr := newTestTransport(nil)
	defer tr.CloseIdleConnections()
	_, body, err := doH1(t, tr, http.MethodGet, srv.URL)
	require.NoError(t, err)
	assert.Equal(t, "answer 1", body)
	srv.CloseClientConnections() // the upstream drops the idle keep-alive
	require.Eventually(t, func() bool {
		_, body, err = doH1(t, tr, http.MethodGet, srv.URL)
		return err == nil
	}, 2*time.Second, 10*time.Millisecond)
	assert.Equal(t, "answer 2", body, "retried once on a fresh connection, not lost")
	assert.Equal(t, int64(2), conns.Load())
}

func TestTransportTimeoutsAndCancellation(t *testing.T) {
	release := make(chan struct{})
	srv, _ := countingServer(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	defer close(release)
	tr := newTestTransport(nil)
	tr.ResponseHeaderTimeout = 50 * time.Millisecond
	defer tr.CloseIdleConnections()
	start := time.Now()
	_, _, err := doH1(t, tr, http.MethodGet, srv.URL)
	require.Error(t, err)
	var ne net.Error
	require.ErrorAs(t, err, &ne)
	assert.True(t, ne.Timeout())
	assert.Contains(t, err.Error(), "timeout awaiting response headers")
	assert.Less(t, time.Since(start), time.Second)

	tr2 := newTestTransport(nil)
	defer tr2.CloseIdleConnections()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL, nil)
	go func() {
		time.Sleep(30 * time.Millisecond)
		cancel()
	}()
	_, err = tr2.RoundTrip(req)
	assert.True(t, errors.Is(err, context.Canceled), "got %v", err)
}

func TestTransportEarlyCloseDropsTheConnection(t *testing.T) {
	srv, conns := countingServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(strings.Repeat("x", 1<<20)))
	})
	tr := newTestTransport(nil)
	defer tr.CloseIdleConnections()
	req, _ := http.NewRequest(http.MethodGet, srv.URL, nil)
	resp, err := tr.RoundTrip(req)
	require.NoError(t, err)
	buf := make([]byte, 10)
	io.ReadFull(resp.Body, buf)
	resp.Body.Close() // most of the body unread: the connection cannot be reused
	_, body, err := doH1(t, tr, http.MethodGet, srv.URL)
	require.NoError(t, err)
	assert.Len(t, body, 1<<20)
	assert.Equal(t, int64(2), conns.Load())
}

func TestTransportTLS(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "tls %v", r.TLS != nil)
	}))
	defer srv.Close()
	tc := &tls.Config{RootCAs: srv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs}
	tr := newTestTransport(tc)
	defer tr.CloseIdleConnections()
	_, body, err := doH1(t, tr, http.MethodGet, srv.URL)
	require.NoError(t, err)
	assert.Equal(t, "tls true", body)
}

// TestTransportUnderChaos sends many concurrent requests over a small
// pool of kept-alive connections while some are cancelled mid-answer and
// some bodies are closed early. Every answer that arrives whole must be the
// one for its own request: a connection given back to the pool too soon
// would hand one request the tail of another's answer.
func TestTransportUnderChaos(t *testing.T) {
	srv, _ := countingServer(t, func(w http.ResponseWriter, r *http.Request) {
		id := r.URL.Query().Get("id")
		n := len(id) * 50
		if r.URL.Query().Get("slow") == "1" {
			select {
			case <-time.After(20 * time.Millisecond):
			case <-r.Context().Done():
				return
			}
		}
		if r.URL.Query().Get("chunked") == "1" {
			for i := 0; i < 4; i++ {
				io.WriteString(w, strings.Repeat(id, n/4))
				w.(http.Flusher).Flush()
			}
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(id)*(n/4)*4))
		io.WriteString(w, strings.Repeat(id, (n/4)*4))
	})
	tr := newTestTransport(nil)
	tr.MaxIdleConnsPerHost = 4
	defer tr.CloseIdleConnections()
	const workers, each = 8, 60
	var wg sync.WaitGroup
	var whole, cut atomic.Int64
	errs := make(chan error, workers*each)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < each; i++ {
				id := fmt.Sprintf("<%d.%d>", w, i)
				url := fmt.Sprintf("%s/?id=%s&slow=%d&chunked=%d", srv.URL, id, i%5/4, i%2)
				ctx, cancel := context.WithCancel(context.Background())
				method := http.MethodGet
				if i%5 == 2 {
					// A bodyless answer hands its connection back at once.
					method = http.MethodHead
				}
				req, _ := http.NewRequestWithContext(ctx, method, url, nil)
				if i%7 == 3 {
					go func() { time.Sleep(5 * time.Millisecond); cancel() }()
				}
				resp, err := tr.RoundTrip(req)
				if err != nil {
					cancel()
					cut.Add(1)
					continue
				}
				if i%11 == 5 {
					buf := make([]byte, 3)
					io.ReadFull(resp.Body, buf)
					resp.Body.Close()
					cancel()
					cut.Add(1)
					continue
				}
				b, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				cancel()
				if err != nil {
					cut.Add(1)
					continue
				}
				want := strings.Repeat(id, (len(id)*50/4)*4)
				if method == http.MethodHead {
					want = ""
				}
				if string(b) != want {
					errs <- fmt.Errorf("request %s got %d bytes starting %.40q", id, len(b), b)
				}
				whole.Add(1)
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	assert.Greater(t, whole.Load(), int64(workers*each/2), "most requests complete (cut short: %d)", cut.Load())
}

// TestTransportBoundsTheResponseHead: an upstream that sends headers
// without end gets an error, not the proxy's memory.
func TestTransportBoundsTheResponseHead(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		br := bufio.NewReader(c)
		for { // the request head
			line, err := br.ReadString('\n')
			if err != nil || line == "\r\n" {
				break
			}
		}
		c.Write([]byte("HTTP/1.1 200 OK\r\n"))
		line := []byte("X-Filler: " + strings.Repeat("a", 1000) + "\r\n")
		for i := 0; i < 2000; i++ { // about 2 MiB of headers, and no end
			if _, err := c.Write(line); err != nil {
				return
			}
		}
		io.Copy(io.Discard, br) // until the proxy hangs up
	}()
	tr := newTestTransport(nil)
	defer tr.CloseIdleConnections()
	_, _, err = doH1(t, tr, http.MethodGet, "http://"+ln.Addr().String()+"/")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "larger than 1 MiB")
	<-done
}

// BenchmarkIdleConnCheck measures what taking an idle upstream connection
// again costs for its check for unsolicited bytes (a MSG_PEEK|MSG_DONTWAIT
// recv on the socket).
func BenchmarkIdleConnCheck(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(b, err)
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			defer c.Close()
			io.Copy(io.Discard, c)
		}
	}()
	tr := newTestTransport(nil)
	c, err := tr.dial(context.Background(), connKey{"http", ln.Addr().String()})
	require.NoError(b, err)
	defer c.conn.Close()
	b.ReportAllocs()
	for b.Loop() {
		if c.unsolicited() {
			b.Fatal("a quiet connection counts as unsolicited")
		}
	}
}
