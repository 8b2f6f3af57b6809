package http1

import (
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// closeCountingServer counts the connections it accepts and those that
// closed.
func closeCountingServer(t *testing.T, h http.HandlerFunc) (srv *httptest.Server, opened, closed *atomic.Int64) {
	opened, closed = new(atomic.Int64), new(atomic.Int64)
	srv = httptest.NewUnstartedServer(h)
	srv.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		switch st {
		case http.StateNew:
			opened.Add(1)
		case http.StateClosed, http.StateHijacked:
			closed.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	return srv, opened, closed
}

func ok(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok")) }

// idleKeys counts the addresses the idle pool holds an entry for.
func (t *Transport) idleKeys() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.idle)
}

// A connection idle for IdleConnTimeout is closed by the Transport even if
// no request asks for its address again (an endpoint gone from the pool),
// and its address leaves the idle pool: neither the socket nor the entry
// lives on. The lazy check at take-out alone would keep both forever.
func TestTransportClosesIdleConnectionsOnTime(t *testing.T) {
	srv, opened, closed := closeCountingServer(t, ok)
	tr := newTestTransport(nil)
	tr.IdleConnTimeout = time.Second
	defer tr.CloseIdleConnections()
	_, body, err := doH1(t, tr, http.MethodGet, srv.URL+"/")
	require.NoError(t, err)
	assert.Equal(t, "ok", body)
	assert.Equal(t, 1, tr.idleKeys(), "the connection waits in the idle pool")
	require.Eventually(t, func() bool { return closed.Load() == 1 }, 5*time.Second, 5*time.Millisecond,
		"the idle connection was closed after IdleConnTimeout with no request for its address")
	assert.Equal(t, int64(1), opened.Load())
	assert.Zero(t, tr.idleKeys(), "the address left the idle pool")
}

// The idle timer runs only while a connection is idle: one connection
// serving requests back to back, and one request longer than the timeout,
// for several timeouts in all, is never closed under a request or between
// two of them.
func TestTransportIdleTimerSparesBusyConnections(t *testing.T) {
	const timeout = 300 * time.Millisecond
	srv, opened, closed := closeCountingServer(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			time.Sleep(2 * timeout) // the upstream's own pace: longer than the idle timeout
		}
		w.Write([]byte("ok"))
	})
	tr := newTestTransport(nil)
	tr.IdleConnTimeout = timeout
	defer tr.CloseIdleConnections()
	start := time.Now()
	for i := 0; time.Since(start) < 3*timeout; i++ {
		path := "/"
		if i == 3 {
			path = "/slow"
		}
		_, body, err := doH1(t, tr, http.MethodGet, srv.URL+path)
		require.NoError(t, err, "request %d", i)
		require.Equal(t, "ok", body)
	}
	assert.Equal(t, int64(1), opened.Load(), "one connection served every request")
	assert.Zero(t, closed.Load(), "no connection was closed under a request or between two")
	require.Eventually(t, func() bool { return closed.Load() == 1 }, 5*time.Second, 5*time.Millisecond,
		"once idle, it is closed after the timeout")
}

// CloseIdleConnectionsTo closes the idle connections to one address only:
// the other address's connection is reused by the next request.
func TestTransportCloseIdleConnectionsTo(t *testing.T) {
	a, openedA, closedA := closeCountingServer(t, ok)
	b, openedB, closedB := closeCountingServer(t, ok)
	tr := newTestTransport(nil)
	defer tr.CloseIdleConnections()
	for _, u := range []string{a.URL, b.URL} {
		_, _, err := doH1(t, tr, http.MethodGet, u+"/")
		require.NoError(t, err)
	}
	require.Equal(t, 2, tr.idleKeys())
	tr.CloseIdleConnectionsTo(a.Listener.Addr().String())
	require.Eventually(t, func() bool { return closedA.Load() == 1 }, 5*time.Second, 5*time.Millisecond)
	assert.Equal(t, 1, tr.idleKeys())
	_, _, err := doH1(t, tr, http.MethodGet, b.URL+"/")
	require.NoError(t, err)
	assert.Equal(t, int64(1), openedB.Load(), "b's idle connection was kept and reused")
	assert.Zero(t, closedB.Load())
	_, _, err = doH1(t, tr, http.MethodGet, a.URL+"/")
	require.NoError(t, err)
	assert.Equal(t, int64(2), openedA.Load(), "a's next request dialled anew")
}

// A connection taken from the idle pool and then closed instead of put
// back (the upstream said Connection: close) leaves no idle-pool entry for
// its address behind: with no request for it again, nothing else would.
func TestTransportForgetsAnAddressWhoseLastConnectionClosed(t *testing.T) {
	var n atomic.Int64
	srv, _, closed := closeCountingServer(t, func(w http.ResponseWriter, _ *http.Request) {
		if n.Add(1) == 2 {
			w.Header().Set("Connection", "close")
		}
		w.Write([]byte("ok"))
	})
	tr := newTestTransport(nil)
	tr.IdleConnTimeout = time.Minute // the timer plays no part
	defer tr.CloseIdleConnections()
	for range 2 {
		_, body, err := doH1(t, tr, http.MethodGet, srv.URL+"/")
		require.NoError(t, err)
		require.Equal(t, "ok", body)
	}
	require.Eventually(t, func() bool { return closed.Load() == 1 }, 5*time.Second, 5*time.Millisecond)
	assert.Zero(t, tr.idleKeys(), "the address's emptied entry was dropped")
}

// An upstream whose own idle timeout equals the Transport's, so that the
// two sides close an idle connection at about the same moment, and which
// resets (RST, not FIN) every fifth connection once it has answered:
// requests paced at the timeout meet connections closing under them, and
// every one of them still succeeds (a GET whose kept-alive connection died
// before a byte of the answer goes again on a fresh one). None is answered
// from a connection the timer had closed.
func TestTransportIdleTimeoutRacesTheUpstreamsClose(t *testing.T) {
	const timeout = 30 * time.Millisecond
	var conns atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("ok"))
	}))
	srv.Config.IdleTimeout = timeout
	srv.Config.ConnState = func(c net.Conn, st http.ConnState) {
		if st == http.StateNew && conns.Add(1)%5 == 0 {
			c.(*net.TCPConn).SetLinger(0) // its close, whenever it comes, is a reset
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	tr := newTestTransport(nil)
	tr.IdleConnTimeout = timeout
	defer tr.CloseIdleConnections()
	tick := time.NewTicker(timeout)
	defer tick.Stop()
	for i := range 40 {
		<-tick.C
		_, body, err := doH1(t, tr, http.MethodGet, srv.URL+"/")
		require.NoError(t, err, "request %d", i)
		require.Equal(t, "ok", body, "request %d", i)
	}
	assert.Greater(t, conns.Load(), int64(1), "connections closed between requests")
}
