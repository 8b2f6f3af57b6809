package proxyproto

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// errorLog records OnError calls.
type errorLog struct {
	mu   sync.Mutex
	errs []error
}

func (e *errorLog) record(_ net.Addr, err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.errs = append(e.errs, err)
}

func (e *errorLog) all() []error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]error(nil), e.errs...)
}

// listen starts l on a loopback port and closes it at the end of the test.
func listen(t *testing.T, l *Listener) *Listener {
	t.Helper()
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	l.Listener = inner
	t.Cleanup(func() { _ = l.Close() })
	return l
}

func dial(t *testing.T, l net.Listener) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", l.Addr().String(), 5*time.Second)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func accept(t *testing.T, l net.Listener) net.Conn {
	t.Helper()
	c, err := l.Accept()
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// requireClosedByServer waits for the server side of c to go away.
func requireClosedByServer(t *testing.T, c net.Conn) {
	t.Helper()
	require.NoError(t, c.SetReadDeadline(time.Now().Add(5*time.Second)))
	_, err := io.Copy(io.Discard, c)
	if err != nil {
		var ne net.Error
		require.False(t, errors.As(err, &ne) && ne.Timeout(), "connection still open: %v", err)
	}
}

func TestListenerRules(t *testing.T) {
	const payload = "hello"
	loopback := []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	elsewhere := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("2001:db8::/32")}
	tests := []struct {
		name     string
		trusted  []netip.Prefix
		required bool
		send     []byte
		remote   string // "" means the peer's own address
		local    string // "" means the socket's own address
		err      error  // the error Read returns; nil means payload is read
	}{
		{name: "all trusted, v1 header", send: v1Header("TCP4", "203.0.113.7", "198.51.100.1", 4242, 443),
			remote: "203.0.113.7:4242", local: "198.51.100.1:443"},
		{name: "all trusted, v2 ipv6 header", send: v2Header(0x21, famTCP6, ap("[2001:db8::7]:4242"), ap("[2001:db8::1]:443"), tlv(1, []byte("h2"))),
			remote: "[2001:db8::7]:4242", local: "[2001:db8::1]:443"},
		{name: "trusted by prefix, v2 ipv4 header", trusted: loopback,
			send:   v2Header(0x21, famTCP4, ap("203.0.113.7:4242"), ap("198.51.100.1:443"), nil),
			remote: "203.0.113.7:4242", local: "198.51.100.1:443"},
		{name: "trusted, LOCAL command keeps the peer address", trusted: loopback,
			send: v2Header(0x20, famUnspec, ap("0.0.0.0:0"), ap("0.0.0.0:0"), nil)},
		{name: "trusted, v1 UNKNOWN keeps the peer address", send: []byte("PROXY UNKNOWN\r\n")},
		{name: "trusted, no header, optional", trusted: loopback},
		{name: "trusted, no header, required", trusted: loopback, required: true, err: ErrHeaderRequired},
		{name: "trusted, header, required", required: true,
			send:   v1Header("TCP4", "203.0.113.7", "198.51.100.1", 4242, 443),
			remote: "203.0.113.7:4242", local: "198.51.100.1:443"},
		{name: "trusted, malformed header", send: []byte("PROXY TCP4 203.0.113.7 198.51.100.1 4242 0443\r\n"), err: ErrInvalidHeader},
		{name: "untrusted, no header", trusted: elsewhere},
		{name: "untrusted, no header, required applies to trusted peers only", trusted: elsewhere, required: true},
		{name: "untrusted, v1 header", trusted: elsewhere, send: v1Header("TCP4", "203.0.113.7", "198.51.100.1", 4242, 443), err: ErrUntrustedHeader},
		{name: "untrusted, v2 header", trusted: elsewhere, send: v2Header(0x21, famTCP4, ap("203.0.113.7:4242"), ap("198.51.100.1:443"), nil), err: ErrUntrustedHeader},
		{name: "untrusted, malformed header", trusted: elsewhere, send: []byte("PROXY garbage\r\n"), err: ErrUntrustedHeader},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var log errorLog
			l := listen(t, &Listener{Trusted: tt.trusted, Required: tt.required, OnError: log.record})
			client := dial(t, l)
			_, err := client.Write(append(append([]byte{}, tt.send...), payload...))
			require.NoError(t, err)
			server := accept(t, l)

			got := make([]byte, len(payload))
			_, err = io.ReadFull(server, got)
			if tt.err != nil {
				require.ErrorIs(t, err, tt.err)
				requireClosedByServer(t, client)
				errs := log.all()
				require.Len(t, errs, 1, "OnError once")
				assert.ErrorIs(t, errs[0], tt.err)
				_, err = server.Read(got)
				assert.ErrorIs(t, err, tt.err, "every later Read fails the same way")
				assert.Equal(t, client.LocalAddr().String(), server.RemoteAddr().String())
				assert.NoError(t, server.Close(), "Close after the drop")
				return
			}
			require.NoError(t, err)
			assert.Equal(t, payload, string(got), "bytes after the header are served")
			assert.Empty(t, log.all())
			wantRemote, wantLocal := tt.remote, tt.local
			if wantRemote == "" {
				wantRemote, wantLocal = client.LocalAddr().String(), client.RemoteAddr().String()
			}
			assert.Equal(t, wantRemote, server.RemoteAddr().String())
			assert.Equal(t, wantLocal, server.LocalAddr().String())
			assert.Equal(t, client.LocalAddr().String(), server.(*Conn).NetConn().RemoteAddr().String())

			// The connection carries on both ways after the header.
			_, err = client.Write([]byte("more"))
			require.NoError(t, err)
			got = make([]byte, 4)
			_, err = io.ReadFull(server, got)
			require.NoError(t, err)
			assert.Equal(t, "more", string(got))
			_, err = server.Write([]byte("bye"))
			require.NoError(t, err)
			_, err = io.ReadFull(client, got[:3])
			require.NoError(t, err)
			assert.Equal(t, "bye", string(got[:3]))
		})
	}
}

func TestHeaderTimeout(t *testing.T) {
	const timeout = 100 * time.Millisecond
	tests := []struct {
		name     string
		required bool
		send     string
		err      error // nil: the connection survives the timeout
	}{
		{name: "partial v1 header", send: "PROXY TCP4 203.0.113.7", err: ErrInvalidHeader},
		{name: "partial signature", send: "PROX", err: ErrInvalidHeader},
		{name: "partial v2 header", send: string(sigV2) + "\x21", err: ErrInvalidHeader},
		{name: "partial header, required", required: true, send: "PROXY ", err: ErrInvalidHeader},
		{name: "silence, required", required: true, err: ErrHeaderRequired},
		{name: "silence, optional"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var log errorLog
			l := listen(t, &Listener{Required: tt.required, HeaderTimeout: timeout, OnError: log.record})
			client := dial(t, l)
			if tt.send != "" {
				_, err := client.Write([]byte(tt.send))
				require.NoError(t, err)
			}
			server := accept(t, l)

			type result struct {
				n   int
				err error
			}
			done := make(chan result, 1)
			start := time.Now()
			go func() {
				buf := make([]byte, 8)
				n, err := server.Read(buf)
				done <- result{n, err}
			}()
			if tt.err != nil {
				res := <-done
				require.ErrorIs(t, res.err, tt.err)
				assert.ErrorIs(t, res.err, os.ErrDeadlineExceeded)
				assert.Less(t, time.Since(start), 3*time.Second)
				assert.Len(t, log.all(), 1)
				requireClosedByServer(t, client)
				return
			}
			require.Never(t, func() bool { return len(done) > 0 }, 3*timeout, 10*time.Millisecond,
				"a silent peer with an optional header is not cut by the header timeout")
			_, err := client.Write([]byte("late"))
			require.NoError(t, err)
			res := <-done
			require.NoError(t, res.err)
			assert.Equal(t, 4, res.n)
			assert.Empty(t, log.all())
		})
	}
}

// TestCallerDeadline checks that a read deadline set by the caller applies
// during the header read and is the only one left afterwards.
func TestCallerDeadline(t *testing.T) {
	l := listen(t, &Listener{HeaderTimeout: 100 * time.Millisecond})
	client := dial(t, l)
	_, err := client.Write(v1Header("TCP4", "203.0.113.7", "198.51.100.1", 4242, 443))
	require.NoError(t, err)
	server := accept(t, l)

	require.NoError(t, server.SetReadDeadline(time.Now().Add(50*time.Millisecond)))
	_, err = server.Read(make([]byte, 1))
	require.ErrorIs(t, err, os.ErrDeadlineExceeded, "the caller's deadline holds after the header")
	assert.Equal(t, "203.0.113.7:4242", server.RemoteAddr().String(), "the header was read before the deadline")

	require.NoError(t, server.SetDeadline(time.Time{}))
	done := make(chan error, 1)
	go func() {
		_, err := server.Read(make([]byte, 1))
		done <- err
	}()
	require.Never(t, func() bool { return len(done) > 0 }, 300*time.Millisecond, 10*time.Millisecond,
		"the expired header deadline is gone")
	_, err = client.Write([]byte("x"))
	require.NoError(t, err)
	assert.NoError(t, <-done)
}

// TestCallerDeadlineBeforeHeader checks that a deadline set before the first
// Read cuts a silent peer sooner than the header timeout.
func TestCallerDeadlineBeforeHeader(t *testing.T) {
	l := listen(t, &Listener{HeaderTimeout: time.Minute, Required: true})
	dial(t, l)
	server := accept(t, l)
	require.NoError(t, server.SetReadDeadline(time.Now().Add(50*time.Millisecond)))
	start := time.Now()
	_, err := server.Read(make([]byte, 1))
	require.ErrorIs(t, err, ErrHeaderRequired)
	assert.ErrorIs(t, err, os.ErrDeadlineExceeded)
	assert.Less(t, time.Since(start), 10*time.Second)
}

// TestAcceptDoesNotBlock holds one connection open without a byte and shows
// that the next one is accepted and served while the first is still waiting
// for its header.
func TestAcceptDoesNotBlock(t *testing.T) {
	l := listen(t, &Listener{HeaderTimeout: time.Minute})
	dial(t, l) // sends nothing
	slow := accept(t, l)
	slowDone := make(chan net.Addr, 1)
	go func() { slowDone <- slow.RemoteAddr() }() // parks in the header read

	fast := dial(t, l)
	_, err := fast.Write(append(v1Header("TCP4", "203.0.113.7", "198.51.100.1", 4242, 443), "ping"...))
	require.NoError(t, err)
	served := accept(t, l)
	assert.Equal(t, "203.0.113.7:4242", served.RemoteAddr().String())
	got := make([]byte, 4)
	_, err = io.ReadFull(served, got)
	require.NoError(t, err)
	assert.Equal(t, "ping", string(got))
	assert.Empty(t, slowDone, "the slow peer is still waiting")

	require.NoError(t, slow.Close())
	assert.NotNil(t, <-slowDone)
}

// TestCloseDuringHeader checks that closing a connection whose header is
// still awaited ends the wait and is not reported as a bad header.
func TestCloseDuringHeader(t *testing.T) {
	var log errorLog
	l := listen(t, &Listener{HeaderTimeout: time.Minute, OnError: log.record})
	client := dial(t, l)
	_, err := client.Write([]byte("PROX"))
	require.NoError(t, err)
	server := accept(t, l)
	done := make(chan error, 1)
	go func() {
		_, err := server.Read(make([]byte, 1))
		done <- err
	}()
	require.NoError(t, server.Close())
	assert.Error(t, <-done)
	assert.Empty(t, log.all())
}

// TestConcurrentFirstCalls races the calls that trigger the parse: all must
// see the same header (run with -race).
func TestConcurrentFirstCalls(t *testing.T) {
	l := listen(t, &Listener{})
	client := dial(t, l)
	_, err := client.Write(append(v1Header("TCP4", "203.0.113.7", "198.51.100.1", 4242, 443), "data"...))
	require.NoError(t, err)
	server := accept(t, l)

	var wg sync.WaitGroup
	var remotes, locals atomic.Int32
	for range 4 {
		wg.Go(func() {
			if server.RemoteAddr().String() == "203.0.113.7:4242" {
				remotes.Add(1)
			}
		})
		wg.Go(func() {
			if server.LocalAddr().String() == "198.51.100.1:443" {
				locals.Add(1)
			}
		})
		wg.Go(func() { _ = server.SetReadDeadline(time.Now().Add(5 * time.Second)) })
	}
	got := make([]byte, 4)
	_, err = io.ReadFull(server, got)
	wg.Wait()
	require.NoError(t, err)
	assert.Equal(t, "data", string(got))
	assert.EqualValues(t, 4, remotes.Load())
	assert.EqualValues(t, 4, locals.Load())
}

// TestHTTPServer serves net/http on the Listener behind a silent connection:
// the handler sees the client address from the header, and the silent peer
// delays nobody.
func TestHTTPServer(t *testing.T) {
	l := listen(t, &Listener{Trusted: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}, HeaderTimeout: time.Minute})
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.WriteString(w, r.RemoteAddr)
		}),
		ReadHeaderTimeout: time.Minute,
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		_ = srv.Close()
		assert.ErrorIs(t, <-served, http.ErrServerClosed)
	})

	silent := dial(t, l) // accepted first, never speaks

	tests := []struct {
		name   string
		header []byte
		want   string
	}{
		{"v1", v1Header("TCP4", "203.0.113.7", "198.51.100.1", 4242, 80), "203.0.113.7:4242"},
		{"v2 ipv6", v2Header(0x21, famTCP6, ap("[2001:db8::7]:4242"), ap("[2001:db8::1]:80"), nil), "[2001:db8::7]:4242"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			transport := &http.Transport{
				DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
					var d net.Dialer
					c, err := d.DialContext(ctx, network, addr)
					if err != nil {
						return nil, err
					}
					if _, err := c.Write(tt.header); err != nil {
						_ = c.Close()
						return nil, err
					}
					return c, nil
				},
			}
			defer transport.CloseIdleConnections()
			client := &http.Client{Transport: transport, Timeout: 5 * time.Second}
			resp, err := client.Get("http://" + l.Addr().String() + "/")
			require.NoError(t, err)
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			require.NoError(t, err)
			assert.Equal(t, http.StatusOK, resp.StatusCode)
			assert.Equal(t, tt.want, string(body))
		})
	}
	require.NoError(t, silent.Close())
}
