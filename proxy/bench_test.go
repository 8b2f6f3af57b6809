package proxy

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap"
)

// benchDaemon compiles text into a running Server and returns the handler
// of its only listener, so a benchmark drives the whole request path (route
// match, stages, pool, ReverseProxy, a real loopback upstream) without a
// client-side socket.
func benchDaemon(b *testing.B, text string) http.Handler {
	b.Helper()
	path := filepath.Join(b.TempDir(), "bench.yaml")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		b.Fatal(err)
	}
	cfg, err := Load(path)
	if err != nil {
		b.Fatal(err)
	}
	d, err := Start(cfg, Options{Path: path, Log: zap.NewNop()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { d.Shutdown(b.Context()) })
	return &listenerHandler{s: d.Server(), addr: cfg.Listeners[0].Listen}
}

// tinyUpstream answers every request with a fixed ~100-byte body.
func tinyUpstream(b *testing.B, name string) string {
	body := []byte(`{"name":"` + name + `","ok":true,"padding":"` + strings.Repeat("x", 60) + `"}`)
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Echo-Name", name)
		w.Write(body)
	}))
	b.Cleanup(s.Close)
	return strings.TrimPrefix(s.URL, "http://")
}

func benchServe(b *testing.B, h http.Handler, prepare func(*http.Request)) {
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		req := httptest.NewRequest(http.MethodGet, "http://bench.local/items/42", nil)
		req.RemoteAddr = "192.0.2.10:40000"
		if prepare != nil {
			prepare(req)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code != http.StatusOK {
			b.Fatalf("status %d: %s", w.Code, w.Body.String())
		}
		io.Copy(io.Discard, w.Body)
	}
}

// BenchmarkProxyRoundRobin is one proxied request through the full handler
// chain: listener handler, route table, proxy stage, pool (round robin over
// three endpoints), ReverseProxy and a loopback upstream.
func BenchmarkProxyRoundRobin(b *testing.B) {
	h := benchDaemon(b, fmt.Sprintf(`
version: 1
admin: {listen: "off"}
log: {access: off}
listeners:
  - name: edge
    listen: 127.0.0.1:0
    routes: [{name: all, pipeline: [{proxy: web}]}]
pools:
  web: {endpoints: [%s, %s, %s]}
`, tinyUpstream(b, "a"), tinyUpstream(b, "b"), tinyUpstream(b, "c")))
	benchServe(b, h, nil)
}

// BenchmarkRespond is the request path without an upstream: route match and
// a respond stage, with metrics; the floor under every other figure.
func BenchmarkRespond(b *testing.B) {
	h := benchDaemon(b, `
version: 1
admin: {listen: "off"}
log: {access: off}
listeners:
  - name: edge
    listen: 127.0.0.1:0
    routes: [{name: all, pipeline: [{respond: {body: ok}}]}]
`)
	benchServe(b, h, nil)
}
