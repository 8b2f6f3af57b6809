package http1

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// gatedListener counts the connections it accepts and holds each one's
// first read until open is closed: a TLS upstream whose handshake waits.
type gatedListener struct {
	net.Listener
	accepts atomic.Int64
	open    chan struct{}
}

func (l *gatedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.accepts.Add(1)
		c = &gatedConn{Conn: c, open: l.open}
	}
	return c, err
}

type gatedConn struct {
	net.Conn
	open chan struct{}
	once sync.Once
}

func (c *gatedConn) Read(p []byte) (int, error) {
	c.once.Do(func() { <-c.open })
	return c.Conn.Read(p)
}

// TestTransportCancelledRequestDialsNot: a request whose client has gone
// before it is sent neither dials nor spends a kept-alive connection.
func TestTransportCancelledRequestDialsNot(t *testing.T) {
	cases := []struct {
		name    string
		warm    bool  // a kept-alive connection waits when the cancelled request comes
		wantAll int64 // connections accepted in the end
	}{
		{name: "no idle connection", wantAll: 1},
		{name: "an idle connection", warm: true, wantAll: 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv, conns := countingServer(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
			tr := newTestTransport(nil)
			defer tr.CloseIdleConnections()
			if tc.warm {
				_, body, err := doH1(t, tr, http.MethodGet, srv.URL)
				require.NoError(t, err)
				require.Equal(t, "ok", body)
			}
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL, nil)
			require.NoError(t, err)
			_, err = tr.RoundTrip(req)
			require.ErrorIs(t, err, context.Canceled)
			// Connections are accepted in the order they were made: had
			// the cancelled request dialled, its connection would be
			// counted by the time the next one is served.
			_, body, err := doH1(t, tr, http.MethodGet, srv.URL)
			require.NoError(t, err)
			assert.Equal(t, "ok", body)
			assert.Equal(t, tc.wantAll, conns.Load())
		})
	}
}

// TestTransportDialOutlivesCancelledRequest: a connection whose dial was
// under way when its request was cancelled is not thrown away; it waits in
// the idle pool and the next request takes it.
func TestTransportDialOutlivesCancelledRequest(t *testing.T) {
	gate := make(chan struct{})
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	gl := &gatedListener{Listener: srv.Listener, open: gate}
	srv.Listener = gl
	srv.StartTLS()
	t.Cleanup(srv.Close)
	t.Cleanup(func() {
		select {
		case <-gate:
		default:
			close(gate)
		}
	})
	tc := srv.Client().Transport.(*http.Transport).TLSClientConfig
	tr := newTestTransport(tc)
	defer tr.CloseIdleConnections()

	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL, nil)
	require.NoError(t, err)
	errc := make(chan error, 1)
	go func() {
		_, err := tr.RoundTrip(req)
		errc <- err
	}()
	require.Eventually(t, func() bool { return gl.accepts.Load() == 1 }, 5*time.Second, time.Millisecond, "the dial is under way")
	cancel()
	select {
	case err := <-errc:
		require.ErrorIs(t, err, context.Canceled)
	case <-time.After(5 * time.Second):
		t.Fatal("the cancelled request waited for its dial")
	}
	close(gate) // the upstream's handshake goes on
	key := connKey{"https", srv.Listener.Addr().String()}
	require.Eventually(t, func() bool {
		tr.mu.Lock()
		defer tr.mu.Unlock()
		return len(tr.idle[key]) == 1
	}, 5*time.Second, 5*time.Millisecond, "the connection made for the cancelled request waits in the idle pool")
	_, body, err := doH1(t, tr, http.MethodGet, srv.URL)
	require.NoError(t, err)
	assert.Equal(t, "ok", body)
	assert.Equal(t, int64(1), gl.accepts.Load(), "the next request rode that connection")
}
