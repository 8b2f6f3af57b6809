package proxy

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"go.uber.org/zap"

	"sekisho/internal/rawupstream"
	"sekisho/proxy/config"
	"sekisho/proxy/upstream"
	"sekisho/router"
)

// benchDaemon compiles text into a running Server and returns the handler
// of its only listener, so a benchmark drives the whole request path (route
// match, stages, pool, ReverseProxy, a real loopback upstream) without a
// client-side socket.
func benchDaemon(b *testing.B, text string) http.Handler {
	b.Helper()
	d := benchStart(b, text)
	return &listenerHandler{s: d.Server(), addr: d.cfg.Load().Listeners[0].Listen}
}

// benchStart compiles text into a running Daemon that logs nothing.
func benchStart(b *testing.B, text string) *Daemon {
	b.Helper()
	return benchStartLog(b, text, zap.NewNop())
}

// benchStartLog is benchStart with the daemon logging to log.
func benchStartLog(b *testing.B, text string, log *zap.Logger) *Daemon {
	b.Helper()
	path := filepath.Join(b.TempDir(), "bench.yaml")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		b.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		b.Fatal(err)
	}
	d, err := Start(cfg, Options{Path: path, Log: log})
	if err != nil {
		b.Fatal(err)
	}
	// Not b.Context(): it is cancelled before the cleanups run, and the
	// shutdown would not drain.
	b.Cleanup(func() { d.Shutdown(context.Background()) })
	return d
}

// tinyUpstream answers every request with a fixed ~100-byte body.
func tinyUpstream(b *testing.B, name string) string {
	return rawUpstream(b, name, `{"name":"`+name+`","ok":true,"padding":"`+strings.Repeat("x", 60)+`"}`)
}

// rawUpstream is a raw HTTP/1.1 responder for bodyless requests that
// allocates nothing per request, so that a benchmark's allocs/op count
// sekisho's own work.
func rawUpstream(b *testing.B, name, body string) string {
	resp := []byte("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Echo-Name: " + name +
		"\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body)
	// Not rawupstream.Scripted, which keeps every request head: this one
	// reads without allocating, so that the profile is sekisho's.
	return rawupstream.New(b, func(c net.Conn, br *bufio.Reader) {
		for {
			for { // the head of a bodyless request ends with an empty line
				line, err := br.ReadSlice('\n')
				if err != nil {
					return
				}
				if len(line) <= 2 {
					break
				}
			}
			if _, err := c.Write(resp); err != nil {
				return
			}
		}
	}).Addr()
}

// discardWriter is a reusable ResponseWriter that keeps only the status.
type discardWriter struct {
	h    http.Header
	code int
}

func (w *discardWriter) Header() http.Header  { return w.h }
func (w *discardWriter) WriteHeader(code int) { w.code = code }
func (w *discardWriter) Write(p []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return len(p), nil
}

// benchServe drives h with one reused request and writer, so that allocs/op
// is what the request path itself allocates.
func benchServe(b *testing.B, h http.Handler, prepare func(*http.Request)) {
	req := httptest.NewRequest(http.MethodGet, "http://bench.local/items/42", nil)
	req.RemoteAddr = "192.0.2.10:40000"
	// As the server does once per connection (ConnContext).
	req = req.WithContext(router.ContextWithSlot(req.Context(), &router.InfoSlot{}))
	w := &discardWriter{h: http.Header{}}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		delete(req.Header, "X-Request-Id")
		if prepare != nil {
			prepare(req)
		}
		clear(w.h)
		w.code = 0
		h.ServeHTTP(w, req)
		if w.code != http.StatusOK {
			b.Fatalf("status %d", w.code)
		}
	}
}

// BenchmarkProxyRoundRobin is one proxied request through the full handler
// chain: listener handler, route table, proxy stage, pool (round robin over
// three endpoints), ReverseProxy and a loopback upstream.
func BenchmarkProxyRoundRobin(b *testing.B) {
	h := benchDaemon(b, roundRobinConfig(b))
	benchServe(b, h, nil)
}

// BenchmarkProxySticky is BenchmarkProxyRoundRobin with a sticky cookie,
// each request carrying the cookie of the endpoint it goes to among other
// cookies (a client kept on its endpoint: no Set-Cookie). Against
// BenchmarkProxyRoundRobin it measures the cost of the cookie lookup.
func BenchmarkProxySticky(b *testing.B) {
	key := strings.Repeat("k", 32)
	ups := []string{tinyUpstream(b, "a"), tinyUpstream(b, "b"), tinyUpstream(b, "c")}
	h := benchDaemon(b, fmt.Sprintf(benchPreamble+`    routes: [{name: all, pipeline: [{proxy: web}]}]
pools:
  web: {endpoints: [%s, %s, %s], sticky: {cookie: SRV, key: %s}}
`, ups[0], ups[1], ups[2], key))
	cookie := []string{"theme=dark; lang=ja; SRV=" + upstream.StickyValue([]byte(key), "web", ups[1]) + "; consent=1"}
	benchServe(b, h, func(r *http.Request) { r.Header["Cookie"] = cookie })
}

// benchPreamble starts every benchmark's config: no admin server, no
// access log, one listener on 127.0.0.1 port 0; its routes and the pools
// follow.
const benchPreamble = `version: 1
admin: {listen: "off"}
log: {access: off}
listeners:
  - name: edge
    listen: 127.0.0.1:0
`

// roundRobinConfig proxies everything to three tiny upstreams.
func roundRobinConfig(b *testing.B) string {
	return fmt.Sprintf(benchPreamble+`    routes: [{name: all, pipeline: [{proxy: web}]}]
pools:
  web: {endpoints: [%s, %s, %s]}
`, tinyUpstream(b, "a"), tinyUpstream(b, "b"), tinyUpstream(b, "c"))
}

// BenchmarkRespond is the request path without an upstream: route match and
// a respond stage, with metrics; the floor under every other figure.
func BenchmarkRespond(b *testing.B) {
	h := benchDaemon(b, benchPreamble+`    routes: [{name: all, pipeline: [{respond: {body: ok}}]}]
`)
	benchServe(b, h, nil)
}

// BenchmarkProxyIPHash is BenchmarkProxyRoundRobin with balance: ip_hash,
// client addresses varying over 256 values.
func BenchmarkProxyIPHash(b *testing.B) {
	h := benchDaemon(b, fmt.Sprintf(benchPreamble+`    routes: [{name: all, pipeline: [{proxy: web}]}]
pools:
  web: {endpoints: [%s, %s, %s], balance: ip_hash}
`, tinyUpstream(b, "a"), tinyUpstream(b, "b"), tinyUpstream(b, "c")))
	addrs := make([]string, 256)
	for i := range addrs {
		addrs[i] = fmt.Sprintf("192.0.2.%d:40000", i)
	}
	i := 0
	benchServe(b, h, func(r *http.Request) {
		i++
		r.RemoteAddr = addrs[i&255]
	})
}

// BenchmarkShard is the shard stage on a header key over three shards, in
// the full chain.
func BenchmarkShard(b *testing.B) {
	h := benchDaemon(b, fmt.Sprintf(benchPreamble+`    routes:
      - name: users
        pipeline: [{shard: {key: header:X-User-ID, shards: [s0, s1, s2], partitions: 4099, replication_factor: 50}}]
pools:
  s0: {endpoints: [%s]}
  s1: {endpoints: [%s]}
  s2: {endpoints: [%s]}
`, tinyUpstream(b, "a"), tinyUpstream(b, "b"), tinyUpstream(b, "c")))
	users := make([]string, 1000)
	for i := range users {
		users[i] = fmt.Sprintf("user-%d", i)
	}
	i := 0
	benchServe(b, h, func(r *http.Request) {
		i++
		r.Header["X-User-Id"] = users[i%len(users) : i%len(users)+1]
	})
}

// BenchmarkSplit is a 90/10 split keyed by a cookie, in the full chain.
func BenchmarkSplit(b *testing.B) {
	h := benchDaemon(b, fmt.Sprintf(benchPreamble+`    routes:
      - name: web
        pipeline:
          - split:
              name: exp
              key: cookie:uid
              arms:
                - {name: control, weight: 90, pipeline: [{proxy: v1}]}
                - {name: v2, weight: 10, pipeline: [{proxy: v2}]}
pools:
  v1: {endpoints: [%s, %s]}
  v2: {endpoints: [%s]}
`, tinyUpstream(b, "a"), tinyUpstream(b, "b"), tinyUpstream(b, "c")))
	cookies := make([]string, 1000)
	for i := range cookies {
		cookies[i] = "uid=user-" + strconv.Itoa(i)
	}
	i := 0
	benchServe(b, h, func(r *http.Request) {
		i++
		r.Header["Cookie"] = cookies[i%1000 : i%1000+1]
	})
}

// BenchmarkScatter fans out to three leaves and merges their arrays.
func BenchmarkScatter(b *testing.B) {
	leaf := func(name string) string {
		return rawUpstream(b, name, `{"results":[{"id":"`+name+`-1","score":0.9},{"id":"`+name+`-2","score":0.4}]}`)
	}
	h := benchDaemon(b, fmt.Sprintf(benchPreamble+`    routes:
      - name: search
        pipeline:
          - scatter:
              leaves: [l0, l1, l2]
              timeout: 1s
              merge: {array: results, sort_by: score, order: desc, limit: 5}
pools:
  l0: {endpoints: [%s]}
  l1: {endpoints: [%s]}
  l2: {endpoints: [%s]}
`, leaf("a"), leaf("b"), leaf("c")))
	benchServe(b, h, nil)
}

// BenchmarkLoopProxyRoundRobin is BenchmarkProxyRoundRobin through the
// listener's socket and the HTTP/1.1 loop: a raw client that allocates
// nothing sends requests on one kept-alive connection, so allocs/op are
// the server's own per request, the loop's included.
func BenchmarkLoopProxyRoundRobin(b *testing.B) {
	d := benchStart(b, roundRobinConfig(b))
	c, err := net.Dial("tcp", d.Server().Addr("edge").String())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	req := []byte("GET /items/42 HTTP/1.1\r\nHost: bench.local\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n")
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := c.Write(req); err != nil {
			b.Fatal(err)
		}
		length := -1
		for first := true; ; first = false {
			line, err := br.ReadSlice('\n')
			if err != nil {
				b.Fatal(err)
			}
			if first && !bytes.HasPrefix(line, []byte("HTTP/1.1 200 ")) {
				b.Fatalf("answer %q", line)
			}
			if len(line) <= 2 {
				break
			}
			if v, ok := bytes.CutPrefix(line, []byte("Content-Length: ")); ok {
				length = 0
				for _, c := range bytes.TrimSpace(v) {
					length = length*10 + int(c-'0')
				}
			}
		}
		if length < 0 {
			b.Fatal("no Content-Length")
		}
		if _, err := br.Discard(length); err != nil {
			b.Fatal(err)
		}
	}
}
