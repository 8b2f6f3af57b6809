package router

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestHeadersRequestOps(t *testing.T) {
	tests := []struct {
		name string
		ops  HeaderOps
		in   http.Header
		want http.Header
	}{
		{
			name: "set replaces every value",
			ops:  HeaderOps{Set: map[string]string{"x-env": "prod"}},
			in:   http.Header{"X-Env": {"a", "b"}},
			want: http.Header{"X-Env": {"prod"}},
		},
		{
			name: "add appends",
			ops:  HeaderOps{Add: map[string]string{"via": "sekisho"}},
			in:   http.Header{"Via": {"1.1 lb"}},
			want: http.Header{"Via": {"1.1 lb", "sekisho"}},
		},
		{
			name: "remove",
			ops:  HeaderOps{Remove: []string{"x-internal", "Cookie"}},
			in:   http.Header{"X-Internal": {"1"}, "Cookie": {"a=b"}, "Accept": {"*/*"}},
			want: http.Header{"Accept": {"*/*"}},
		},
		{
			name: "remove then set then add",
			ops: HeaderOps{
				Remove: []string{"X-A"},
				Set:    map[string]string{"X-A": "set"},
				Add:    map[string]string{"x-a": "added"},
			},
			in:   http.Header{"X-A": {"client"}},
			want: http.Header{"X-A": {"set", "added"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got http.Header
			h, err := Headers{Request: tt.ops}.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				got = r.Header.Clone()
			}))
			require.NoError(t, err)
			r := httptest.NewRequest("GET", "/", nil)
			r.Header = tt.in
			h.ServeHTTP(httptest.NewRecorder(), r)
			assert.Equal(t, tt.want, got)
		})
	}
}

func TestHeadersSetValuesAreNotShared(t *testing.T) {
	var seen []string
	h, err := Headers{Request: HeaderOps{Set: map[string]string{"X-A": "v"}}}.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen = append(seen, r.Header.Get("X-A"))
		r.Header["X-A"][0] = "scribbled"
	}))
	require.NoError(t, err)
	for range 2 {
		h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/", nil))
	}
	assert.Equal(t, []string{"v", "v"}, seen, "a write into one request's value does not reach the next")
}

func TestHeadersResponseOps(t *testing.T) {
	ops := HeaderOps{
		Set:    map[string]string{"strict-transport-security": "max-age=63072000", "Server": "sekisho"},
		Add:    map[string]string{"Vary": "X-Arm"},
		Remove: []string{"x-powered-by"},
	}
	tests := []struct {
		name  string
		serve func(w http.ResponseWriter)
		code  int
	}{
		{name: "implicit status by Write", code: 200, serve: func(w http.ResponseWriter) {
			_, _ = w.Write([]byte("hi"))
		}},
		{name: "explicit WriteHeader", code: 404, serve: func(w http.ResponseWriter) {
			w.WriteHeader(http.StatusNotFound)
		}},
		{name: "flush before any write", code: 200, serve: func(w http.ResponseWriter) {
			require.NoError(t, http.NewResponseController(w).Flush())
			_, _ = w.Write([]byte("late"))
		}},
		{name: "early hints pass unedited", code: 201, serve: func(w http.ResponseWriter) {
			w.Header().Set("Link", "</app.css>; rel=preload")
			w.WriteHeader(http.StatusEarlyHints)
			w.WriteHeader(http.StatusCreated)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := Headers{Response: ops}.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("X-Powered-By", "php")
				w.Header().Set("Server", "upstream")
				w.Header().Set("Vary", "Accept")
				tt.serve(w)
			}))
			require.NoError(t, err)
			srv := httptest.NewServer(h)
			defer srv.Close()

			res, err := srv.Client().Get(srv.URL)
			require.NoError(t, err)
			_, _ = io.Copy(io.Discard, res.Body)
			require.NoError(t, res.Body.Close())

			assert.Equal(t, tt.code, res.StatusCode)
			assert.Equal(t, "max-age=63072000", res.Header.Get("Strict-Transport-Security"))
			assert.Equal(t, "sekisho", res.Header.Get("Server"), "set replaces the upstream's value")
			assert.Equal(t, []string{"Accept", "X-Arm"}, res.Header.Values("Vary"))
			assert.Empty(t, res.Header.Values("X-Powered-By"))
		})
	}
}

func TestHeadersWriterKeepsFlusher(t *testing.T) {
	release := make(chan struct{})
	h, err := Headers{Response: HeaderOps{Set: map[string]string{"X-Edge": "1"}}}.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte("first\n"))
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		_, _ = w.Write([]byte("second\n"))
	}))
	require.NoError(t, err)
	srv := httptest.NewServer(h)
	defer srv.Close()

	res, err := srv.Client().Get(srv.URL)
	require.NoError(t, err)
	defer res.Body.Close()
	assert.Equal(t, "1", res.Header.Get("X-Edge"))
	br := bufio.NewReader(res.Body)
	line, err := br.ReadString('\n')
	require.NoError(t, err, "the first chunk arrives while the handler still waits: it was flushed")
	assert.Equal(t, "first\n", line)
	close(release)
	line, err = br.ReadString('\n')
	require.NoError(t, err)
	assert.Equal(t, "second\n", line)
}

func TestHeadersWriterUnwrapReachesServer(t *testing.T) {
	var deadlineErr error
	h, err := Headers{Response: HeaderOps{Set: map[string]string{"X-Edge": "1"}}}.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		deadlineErr = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(time.Minute))
	}))
	require.NoError(t, err)
	srv := httptest.NewServer(h)
	defer srv.Close()
	res, err := srv.Client().Get(srv.URL)
	require.NoError(t, err)
	require.NoError(t, res.Body.Close())
	assert.NoError(t, deadlineErr, "SetWriteDeadline reaches the server's writer through Unwrap")
}

// TestHeadersWriterUpgrade proxies a protocol switch through the headers
// stage: httputil.ReverseProxy hijacks the client connection via
// http.ResponseController, which needs the wrapper's Hijack.
func TestHeadersWriterUpgrade(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "echo" {
			http.Error(w, "want upgrade", http.StatusBadRequest)
			return
		}
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
		_ = brw.Flush()
		line, err := brw.ReadString('\n')
		if err != nil {
			return
		}
		_, _ = brw.WriteString("echo: " + line)
		_ = brw.Flush()
	}))
	defer backend.Close()
	target, err := url.Parse(backend.URL)
	require.NoError(t, err)
	transport := &http.Transport{}
	defer transport.CloseIdleConnections()
	rp := &httputil.ReverseProxy{
		Rewrite:   func(pr *httputil.ProxyRequest) { pr.SetURL(target) },
		Transport: transport,
	}
	h, err := Headers{Response: HeaderOps{Set: map[string]string{"X-Edge": "1"}}}.Wrap(rp)
	require.NoError(t, err)
	front := httptest.NewServer(h)
	defer front.Close()

	conn, err := net.DialTimeout("tcp", front.Listener.Addr().String(), 5*time.Second)
	require.NoError(t, err)
	defer conn.Close()
	require.NoError(t, conn.SetDeadline(time.Now().Add(10*time.Second)))
	_, err = io.WriteString(conn, "GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
	require.NoError(t, err)
	br := bufio.NewReader(conn)
	res, err := http.ReadResponse(br, nil)
	require.NoError(t, err)
	require.Equal(t, http.StatusSwitchingProtocols, res.StatusCode)
	_, err = io.WriteString(conn, "ping\n")
	require.NoError(t, err)
	line, err := br.ReadString('\n')
	require.NoError(t, err)
	assert.Equal(t, "echo: ping\n", line)
}

func TestHeadersValidate(t *testing.T) {
	tests := []struct {
		name    string
		h       Headers
		wantErr []string
	}{
		{name: "zero", h: Headers{}},
		{name: "valid", h: Headers{Request: HeaderOps{Set: map[string]string{"X-A": "1"}}, Response: HeaderOps{Remove: []string{"Server"}}}},
		{name: "bad name", h: Headers{Request: HeaderOps{Add: map[string]string{"X A": "1"}}}, wantErr: []string{"request.add", "not a header name"}},
		{name: "host on request", h: Headers{Request: HeaderOps{Set: map[string]string{"host": "x"}}}, wantErr: []string{"request.set", "Host"}},
		{name: "host on response is a header", h: Headers{Response: HeaderOps{Set: map[string]string{"Host": "x"}}}},
		{name: "crlf", h: Headers{Response: HeaderOps{Set: map[string]string{"X-A": "a\r\nX-B: b"}}}, wantErr: []string{"response.set", "CR, LF"}},
		{name: "all at once", h: Headers{
			Request:  HeaderOps{Remove: []string{""}},
			Response: HeaderOps{Add: map[string]string{"X:": "v"}},
		}, wantErr: []string{"request.remove", "response.add"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.h.Validate()
			_, wrapErr := tt.h.Wrap(named("next"))
			if len(tt.wantErr) == 0 {
				assert.NoError(t, err)
				assert.NoError(t, wrapErr)
				return
			}
			for _, want := range tt.wantErr {
				assert.ErrorContains(t, err, want)
			}
			assert.Error(t, wrapErr)
		})
	}
	_, err := Headers{}.Wrap(nil)
	assert.ErrorContains(t, err, "needs a stage after it")
}

// BenchmarkHeaders measures a request passing a headers stage with one
// request and one response edit, against a handler that only writes.
func BenchmarkHeaders(b *testing.B) {
	h, err := Headers{
		Request:  HeaderOps{Set: map[string]string{"X-Env": "prod"}},
		Response: HeaderOps{Set: map[string]string{"Strict-Transport-Security": "max-age=63072000"}},
	}.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) }))
	require.NoError(b, err)
	r := httptest.NewRequest("GET", "/", nil)
	w := &discardWriter{header: make(http.Header)}
	b.ReportAllocs()
	for b.Loop() {
		h.ServeHTTP(w, r)
	}
}
