package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
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

func newTestH1(pc *PoolConfig, tc *tls.Config) *h1Transport {
	if pc == nil {
		pc = &PoolConfig{}
	}
	if pc.Timeouts.Connect == 0 {
		pc.Timeouts.Connect = Duration(time.Second)
	}
	if pc.MaxIdlePerEndpoint == 0 {
		pc.MaxIdlePerEndpoint = 8
	}
	return newH1Transport(newTransport(pc, tc), tc, pc)
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

func TestH1TransportReusesConnections(t *testing.T) {
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
	tr := newTestH1(nil, nil)
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

func TestH1TransportFallsBackForBodiesAndUpgrades(t *testing.T) {
	srv, _ := countingServer(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s", r.Method, b)
	})
	tr := newTestH1(nil, nil)
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
		assert.False(t, lean(r), "%s with upgrade=%q", r.Method, r.Header.Get("Upgrade"))
	}
	get, _ := http.NewRequest(http.MethodGet, "http://x/", nil)
	assert.True(t, lean(get))
}

func TestH1TransportRetriesAStaleConnection(t *testing.T) {
	var n atomic.Int64
	srv, conns := countingServer(t, func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "answer %d", n.Add(1))
	})
	tr := newTestH1(nil, nil)
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

func TestH1TransportTimeoutsAndCancellation(t *testing.T) {
	release := make(chan struct{})
	srv, _ := countingServer(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	defer close(release)
	tr := newTestH1(&PoolConfig{Timeouts: PoolTimeouts{ResponseHeader: Duration(50 * time.Millisecond)}}, nil)
	defer tr.CloseIdleConnections()
	start := time.Now()
	_, _, err := doH1(t, tr, http.MethodGet, srv.URL)
	require.Error(t, err)
	var ne net.Error
	require.ErrorAs(t, err, &ne)
	assert.True(t, ne.Timeout())
	assert.Contains(t, err.Error(), "timeout awaiting response headers")
	assert.Less(t, time.Since(start), time.Second)

	tr2 := newTestH1(nil, nil)
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

func TestH1TransportEarlyCloseDropsTheConnection(t *testing.T) {
	srv, conns := countingServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(strings.Repeat("x", 1<<20)))
	})
	tr := newTestH1(nil, nil)
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

func TestH1TransportTLS(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "tls %v", r.TLS != nil)
	}))
	defer srv.Close()
	tc := &tls.Config{RootCAs: srv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs}
	tr := newTestH1(nil, tc)
	defer tr.CloseIdleConnections()
	_, body, err := doH1(t, tr, http.MethodGet, srv.URL)
	require.NoError(t, err)
	assert.Equal(t, "tls true", body)
}
