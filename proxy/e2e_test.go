package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestRoutePrecedence(t *testing.T) {
	names := []string{"exact", "wild", "any-long", "any-short", "first", "second", "method", "header"}
	bs := map[string]*backend{}
	pools := ""
	for _, n := range names {
		bs[n] = newBackend(t, n)
		pools += fmt.Sprintf("  %s: {endpoints: [%s]}\n", n, bs[n].addr())
	}
	td := startDaemon(t, edgePreamble+`    routes:
      - {name: any-short, match: {path_prefix: /api}, pipeline: [{proxy: any-short}]}
      - {name: first, match: {path_prefix: /dup}, pipeline: [{proxy: first}]}
      - {name: second, match: {path_prefix: /dup}, pipeline: [{proxy: second}]}
      - {name: wild, match: {host: "*.example.com", path_prefix: /api}, pipeline: [{proxy: wild}]}
      - {name: any-long, match: {path_prefix: /api/v2}, pipeline: [{proxy: any-long}]}
      - {name: exact, match: {host: api.example.com, path_prefix: /api}, pipeline: [{proxy: exact}]}
      - {name: method, match: {path_prefix: /m, methods: [POST]}, pipeline: [{proxy: method}]}
      - {name: header, match: {path_prefix: /h, headers: {X-Canary: "1"}}, pipeline: [{proxy: header}]}
pools:
`+pools)
	base := td.url("edge")
	cases := []struct {
		name, host, path, want string
		headers                []string
	}{
		{"exact host beats wildcard and none", "api.example.com", "/api/v2/x", "exact", nil},
		{"exact host, port ignored", "API.example.com:8080", "/api", "exact", nil},
		{"wildcard beats no host", "www.example.com", "/api/v2/x", "wild", nil},
		{"wildcard matches deeper names", "a.b.example.com", "/api", "wild", nil},
		{"wildcard does not match the bare domain", "example.com", "/api", "any-short", nil},
		{"longest prefix among hostless", "other.test", "/api/v2/users", "any-long", nil},
		{"shorter prefix", "other.test", "/api/v1", "any-short", nil},
		{"config order breaks ties", "other.test", "/dup", "first", nil},
		{"header filter", "other.test", "/h", "header", nil},
	}
	cases[len(cases)-1].headers = []string{"X-Canary", "1"}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp, _ := td.get(base+tc.path, append([]string{"Host", tc.host}, tc.headers...)...)
			require.Equal(t, http.StatusOK, resp.StatusCode)
			assert.Equal(t, tc.want, resp.Header.Get("X-Echo-Name"))
		})
	}
	t.Run("no route is 404 with a plain body", func(t *testing.T) {
		resp, body := td.get(base + "/nothing-here")
		assert.Equal(t, http.StatusNotFound, resp.StatusCode)
		assert.Equal(t, "no route matches this request\n", body)
		resp, _ = td.get(base + "/h") // header filter not met
		assert.Equal(t, http.StatusNotFound, resp.StatusCode)
		resp, _ = td.get(base + "/m") // method filter not met
		assert.Equal(t, http.StatusNotFound, resp.StatusCode)
	})
}

func TestRoundRobinSpreadsEvenly(t *testing.T) {
	a, b, c := newBackend(t, "a"), newBackend(t, "b"), newBackend(t, "c")
	td := startDaemon(t, fmt.Sprintf(edgePreamble+`    routes: [{name: all, pipeline: [{proxy: web}]}]
pools:
  web: {endpoints: [%s, %s, %s], balance: round_robin}
`, a.addr(), b.addr(), c.addr()))
	base := td.url("edge")
	const n = 3000
	var wg sync.WaitGroup
	work := make(chan struct{}, n)
	for i := 0; i < n; i++ {
		work <- struct{}{}
	}
	close(work)
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range work {
				resp, err := td.client.Get(base + "/")
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			}
		}()
	}
	wg.Wait()
	for _, be := range []*backend{a, b, c} {
		got := float64(be.hits.Load())
		assert.InDelta(t, n/3.0, got, n/3.0*0.05, "backend %s got %v of %d", be.name, got, n)
	}
}

func TestHeadersRespondRedirect(t *testing.T) {
	up := newBackend(t, "up")
	td := startDaemon(t, fmt.Sprintf(edgePreamble+`    routes:
      - name: hello
        match: {path_prefix: /hello}
        pipeline: [{respond: {status: 418, body: "short and stout\n", headers: {X-Teapot: "yes"}}}]
      - name: moved
        match: {path_prefix: /old}
        pipeline: [{redirect: {scheme: https, host: new.example.com, path: /new, status: 301}}]
      - name: tls
        match: {path_prefix: /secure}
        pipeline: [{redirect: {scheme: https}}]
      - name: web
        pipeline:
          - headers:
              request: {set: {X-Env: test}, add: {X-Added: one}, remove: [X-Secret]}
              response: {set: {Strict-Transport-Security: max-age=63072000}, remove: [X-Echo-Name]}
          - proxy: up
pools:
  up: {endpoints: [%s]}
`, up.addr()))
	base := td.url("edge")
	t.Run("respond", func(t *testing.T) {
		resp, body := td.get(base + "/hello")
		assert.Equal(t, 418, resp.StatusCode)
		assert.Equal(t, "short and stout\n", body)
		assert.Equal(t, "yes", resp.Header.Get("X-Teapot"))
		assert.Equal(t, "text/plain; charset=utf-8", resp.Header.Get("Content-Type"))
	})
	t.Run("redirect", func(t *testing.T) {
		resp, _ := td.get(base + "/old/page?q=1")
		assert.Equal(t, 301, resp.StatusCode)
		assert.Equal(t, "https://new.example.com/new?q=1", resp.Header.Get("Location"))
		resp, _ = td.get(base+"/secure/x?y=2", "Host", "shop.example.com:8080")
		assert.Equal(t, http.StatusFound, resp.StatusCode)
		assert.Equal(t, "https://shop.example.com/secure/x?y=2", resp.Header.Get("Location"))
	})
	t.Run("headers", func(t *testing.T) {
		resp, _ := td.get(base+"/page", "X-Secret", "s3cr3t", "X-Added", "zero")
		require.Equal(t, http.StatusOK, resp.StatusCode)
		assert.Equal(t, "max-age=63072000", resp.Header.Get("Strict-Transport-Security"))
		assert.Empty(t, resp.Header.Get("X-Echo-Name"))
		seen := up.lastRequest()
		require.NotNil(t, seen)
		assert.Equal(t, "test", seen.Header.Get("X-Env"))
		assert.Empty(t, seen.Header.Get("X-Secret"))
		assert.Equal(t, []string{"zero", "one"}, seen.Header.Values("X-Added"))
	})
}

func TestErrorMapping(t *testing.T) {
	slow := newBackend(t, "slow")
	slow.delay.Store(int64(2 * time.Second))
	unready := newBackend(t, "unready")
	unready.ready.Store(false)
	td := startDaemon(t, fmt.Sprintf(edgePreamble+`    routes:
      - {name: refused, match: {path_prefix: /refused}, pipeline: [{proxy: dead}]}
      - {name: none, match: {path_prefix: /none}, pipeline: [{proxy: unready}]}
      - {name: timeout, match: {path_prefix: /timeout}, pipeline: [{proxy: slow}]}
pools:
  dead: {endpoints: [%s], retries: 0}
  unready:
    endpoints: [%s]
    readiness: {path: /ready, interval: 50ms, timeout: 50ms, rise: 1, fall: 1}
  slow:
    endpoints: [%s]
    timeouts: {response_header: 100ms}
`, freeAddr(t), unready.addr(), slow.addr()))
	base := td.url("edge")
	require.Eventually(t, func() bool { ok, _ := td.d.Ready(); return ok }, 5*time.Second, 10*time.Millisecond)
	cases := []struct {
		path   string
		status int
		body   string
	}{
		{"/refused", http.StatusBadGateway, "upstream unavailable\n"},
		{"/none", http.StatusServiceUnavailable, "no ready endpoint\n"},
		{"/timeout", http.StatusGatewayTimeout, "upstream timed out\n"},
	}
	for _, tc := range cases {
		t.Run(tc.path, func(t *testing.T) {
			start := time.Now()
			resp, body := td.get(base + tc.path)
			assert.Equal(t, tc.status, resp.StatusCode)
			assert.Equal(t, tc.body, body)
			assert.Less(t, time.Since(start), time.Second)
		})
	}
	assert.Equal(t, 0.0, float64(unready.hits.Load()), "an unready endpoint gets no request")
	assert.Equal(t, 1.0, td.metric("sekisho_upstream_requests_total", "pool", "dead", "code", "error"))
}

func TestDialFailureRetriesOnLiveEndpoint(t *testing.T) {
	live := newBackend(t, "live")
	td := startDaemon(t, fmt.Sprintf(edgePreamble+`    routes: [{name: all, pipeline: [{proxy: web}]}]
pools:
  web: {endpoints: [%s, %s], retries: 1}
`, freeAddr(t), live.addr()))
	base := td.url("edge")
	for i := 0; i < 40; i++ {
		resp, _ := td.get(base + "/")
		require.Equal(t, http.StatusOK, resp.StatusCode, "request %d", i)
		assert.Equal(t, "live", resp.Header.Get("X-Echo-Name"))
	}
	// POST with a body is retried too: the dial failed, so no byte of it was sent.
	req, _ := http.NewRequest(http.MethodPost, base+"/", strings.NewReader("payload"))
	for i := 0; i < 4; i++ {
		req.Body = io.NopCloser(strings.NewReader("payload"))
		resp, _ := td.do(req)
		assert.Equal(t, http.StatusOK, resp.StatusCode)
	}
	assert.Equal(t, int64(44), live.hits.Load())
}

func TestForwardedHeadersAndRequestID(t *testing.T) {
	up := newBackend(t, "up")
	td := startDaemon(t, fmt.Sprintf(edgePreamble+`    routes: [{name: all, pipeline: [{proxy: up}]}]
  - name: behind-lb
    listen: 127.0.0.2:0
    client_ip: {trusted_proxies: [127.0.0.0/8]}
    routes: [{name: all, pipeline: [{proxy: up}]}]
pools:
  up: {endpoints: [%s]}
`, up.addr()))
	t.Run("untrusted peer: its X-Forwarded-For is dropped", func(t *testing.T) {
		resp, _ := td.get(td.url("edge")+"/x", "Host", "shop.example.com", "X-Forwarded-For", "6.6.6.6", "X-Forwarded-Proto", "https")
		require.Equal(t, http.StatusOK, resp.StatusCode)
		seen := up.lastRequest()
		assert.Equal(t, "127.0.0.1", seen.Header.Get("X-Forwarded-For"))
		assert.Equal(t, "shop.example.com", seen.Header.Get("X-Forwarded-Host"))
		assert.Equal(t, "http", seen.Header.Get("X-Forwarded-Proto"))
		assert.Equal(t, "shop.example.com", seen.Host, "the client's Host goes upstream")
		id := seen.Header.Get("X-Request-Id")
		assert.NotEmpty(t, id, "a request id is minted")
	})
	t.Run("trusted peer: the chain is kept and extended", func(t *testing.T) {
		resp, _ := td.get(td.url("behind-lb")+"/x", "X-Forwarded-For", "203.0.113.9", "X-Forwarded-Proto", "https", "X-Request-Id", "abc-123")
		require.Equal(t, http.StatusOK, resp.StatusCode)
		seen := up.lastRequest()
		assert.Equal(t, "203.0.113.9, 127.0.0.1", seen.Header.Get("X-Forwarded-For"))
		assert.Equal(t, "https", seen.Header.Get("X-Forwarded-Proto"))
		assert.Equal(t, "abc-123", seen.Header.Get("X-Request-Id"), "a client's request id is kept")
	})
}

// TestAccessLogLine: each request is one line with the fields that have a
// value; a field without one (no upstream or pool for a respond route or
// an unmatched request) is absent, never an empty string.
func TestAccessLogLine(t *testing.T) {
	up := newBackend(t, "up")
	td := startDaemon(t, fmt.Sprintf(`
version: 1
admin: {listen: "127.0.0.1:0"}
log: {access: "{{ACCESS}}"}
listeners:
  - name: edge
    listen: 127.0.0.1:0
    client_ip: {trusted_proxies: [127.0.0.1/32]}
    routes:
      - {name: all, match: {path_prefix: /some}, pipeline: [{proxy: up}]}
      - {name: canned, match: {path_prefix: /canned}, pipeline: [{respond: {body: hi}}]}
pools:
  up: {endpoints: [%s]}
`, up.addr()))
	always := []string{"ts", "listener", "method", "path", "status", "bytes", "duration_ms", "client_ip", "request_id", "host"}
	cases := []struct {
		name   string
		path   string
		status int
		want   map[string]any // besides the fields always there
		absent []string
	}{
		{name: "proxied", path: "/some/path?secret=1", status: 200,
			want: map[string]any{"route": "all", "path": "/some/path", "upstream": up.addr(), "pool": "up"}},
		{name: "answered by respond", path: "/canned", status: 200,
			want: map[string]any{"route": "canned", "path": "/canned"}, absent: []string{"upstream", "pool"}},
		{name: "no route matched", path: "/nowhere", status: 404,
			want: map[string]any{"route": "_unmatched", "path": "/nowhere"}, absent: []string{"upstream", "pool"}},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := td.get(td.url("edge")+tc.path, "Host", "shop.example.com", "X-Request-Id", "req-1", "X-Forwarded-For", "198.51.100.7")
			require.Equal(t, tc.status, resp.StatusCode)
			line := td.accessLines(i + 1)[i]
			for _, k := range always {
				assert.Contains(t, line, k)
			}
			for k, v := range tc.want {
				assert.Equal(t, v, line[k], k)
			}
			for _, k := range tc.absent {
				assert.NotContains(t, line, k)
			}
			for k, v := range line {
				assert.NotEqual(t, "", v, "%s is absent rather than empty", k)
			}
			assert.Equal(t, "edge", line["listener"])
			assert.Equal(t, "GET", line["method"])
			assert.Equal(t, "shop.example.com", line["host"])
			assert.Equal(t, float64(tc.status), line["status"])
			assert.Equal(t, float64(len(body)), line["bytes"])
			assert.Equal(t, "198.51.100.7", line["client_ip"])
			assert.Equal(t, "req-1", line["request_id"])
		})
	}
}

func TestMetricsAfterKnownRequests(t *testing.T) {
	up := newBackend(t, "up")
	td := startDaemon(t, fmt.Sprintf(edgePreamble+`    routes:
      - {name: web, match: {path_prefix: /web}, pipeline: [{proxy: up}]}
      - {name: gone, match: {path_prefix: /gone}, pipeline: [{respond: {status: 410}}]}
pools:
  up: {endpoints: [%s]}
`, up.addr()))
	base := td.url("edge")
	for i := 0; i < 7; i++ {
		td.get(base + "/web")
	}
	for i := 0; i < 3; i++ {
		td.get(base + "/gone")
	}
	td.get(base + "/nowhere")
	// A request is counted once its handler has returned, which may be
	// just after the client has its answer: scrape until the last one is
	// in, then check every count exactly (no more requests are coming, so
	// a count can only be reached, never passed, by waiting).
	want := []struct {
		v      float64
		name   string
		labels []string
	}{
		{7, "sekisho_requests_total", []string{"listener", "edge", "route", "web", "code", "200"}},
		{3, "sekisho_requests_total", []string{"route", "gone", "code", "410"}},
		{1, "sekisho_requests_total", []string{"route", "_unmatched", "code", "404"}},
		{7, "sekisho_request_duration_seconds_count", []string{"route", "web"}},
		{7, "sekisho_upstream_requests_total", []string{"pool", "up", "endpoint", up.addr(), "code", "200"}},
		{7, "sekisho_upstream_duration_seconds_count", []string{"pool", "up"}},
	}
	var body string
	require.Eventually(t, func() bool {
		_, body = td.get(td.admin() + "/metrics")
		for _, w := range want {
			if sampleValue(body, w.name, w.labels...) < w.v {
				return false
			}
		}
		return true
	}, 10*time.Second, 10*time.Millisecond)
	for _, w := range want {
		assert.Equal(t, w.v, sampleValue(body, w.name, w.labels...), "%s %v", w.name, w.labels)
	}
	for _, name := range []string{"go_goroutines", "process_cpu_seconds_total", "sekisho_config_last_reload_successful"} {
		assert.GreaterOrEqual(t, sampleValue(body, name), 0.0, name)
	}
}

func TestAdminEndpoints(t *testing.T) {
	up := newBackend(t, "up")
	td := startDaemon(t, fmt.Sprintf(edgePreamble+`    routes: [{name: all, pipeline: [{proxy: up}]}]
pools:
  up:
    endpoints: [%s]
    readiness: {path: /ready, interval: 50ms, rise: 1}
`, up.addr()))
	resp, body := td.get(td.admin() + "/healthz")
	assert.Equal(t, http.StatusOK, resp.StatusCode, body)
	require.Eventually(t, func() bool {
		resp, _ := td.get(td.admin() + "/readyz")
		return resp.StatusCode == http.StatusOK
	}, 5*time.Second, 20*time.Millisecond)
	resp, body = td.get(td.admin() + "/config")
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Contains(t, body, "balance: round_robin", "defaults are shown")
	assert.Contains(t, body, up.addr())
	resp, body = td.get(td.admin() + "/pools")
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Contains(t, body, up.addr())
	assert.Contains(t, body, `"ready": true`)
}

func TestBadRequestsGetClearStatuses(t *testing.T) {
	up := newBackend(t, "up")
	td := startDaemon(t, fmt.Sprintf(edgePreamble+`    max_header_bytes: 4096
    routes: [{name: all, pipeline: [{proxy: up}]}]
pools:
  up: {endpoints: [%s]}
`, up.addr()))
	addr := strings.TrimPrefix(td.url("edge"), "http://")
	raw := func(req string) string {
		c, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		_, err = io.WriteString(c, req)
		require.NoError(t, err)
		line, _ := bufio.NewReader(c).ReadString('\n')
		return line
	}
	assert.Contains(t, raw("THIS IS NOT HTTP AT ALL\r\n\r\n"), "400")
	assert.Contains(t, raw("GET / HTTP/1.1\r\nHost: x\r\nX-Big: "+strings.Repeat("a", 64<<10)+"\r\n\r\n"), "431")
	assert.Zero(t, up.hits.Load())
}

func TestUpstreamDyingMidResponse(t *testing.T) {
	dying := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/die" {
			io.WriteString(w, "alive")
			return
		}
		w.Header().Set("Content-Length", "1000000")
		w.WriteHeader(http.StatusOK)
		w.Write([]byte(strings.Repeat("x", 1000)))
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler)
	}))
	t.Cleanup(dying.Close)
	td := startDaemon(t, fmt.Sprintf(`
version: 1
admin: {listen: "127.0.0.1:0"}
log: {access: "{{ACCESS}}"}
listeners:
  - name: edge
    listen: 127.0.0.1:0
    routes: [{name: all, pipeline: [{proxy: dying}]}]
pools:
  dying: {endpoints: [%s]}
`, strings.TrimPrefix(dying.URL, "http://")))
	// Depending on how much was buffered when the upstream died, the client
	// sees the cut either before the headers or in the body: never a
	// complete answer.
	resp, err := td.client.Get(td.url("edge") + "/die")
	if err == nil {
		_, err = io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	assert.Error(t, err, "the client sees the response cut short")
	line := td.accessLines(1)[0]
	assert.Equal(t, "upstream aborted the response", line["error"])
	assert.Equal(t, 0, td.logs.FilterMessageSnippet("panic").Len(), "no panic in the log")
	// The proxy still serves.
	resp2, _ := td.get(td.url("edge") + "/")
	assert.Equal(t, http.StatusOK, resp2.StatusCode)
}

func TestHandlerPanicIsRecovered(t *testing.T) {
	td := startDaemon(t, edgePreamble+`    routes: [{name: boom, pipeline: [{respond: {body: never}}]}]
`)
	rt := td.d.Server().Runtime()
	for _, lr := range rt.listeners {
		route := lr.table.Match(httptest.NewRequest(http.MethodGet, "/", nil))
		require.NotNil(t, route)
		route.Handler.(*routeEntry).handler = http.HandlerFunc(func(http.ResponseWriter, *http.Request) { panic("boom") })
	}
	resp, body := td.get(td.url("edge") + "/")
	assert.Equal(t, http.StatusInternalServerError, resp.StatusCode)
	assert.Equal(t, "internal error\n", body)
	assert.Equal(t, 1.0, td.metric("sekisho_handler_panics_total"))
	assert.Equal(t, 1, td.logs.FilterMessage("panic serving request").Len())
	resp, _ = td.get(td.url("edge") + "/")
	assert.Equal(t, http.StatusInternalServerError, resp.StatusCode, "the process lives on")
}

// GET /config does not show a value that came from the environment (a
// token passed to a headers stage) unless admin.show_env says so: it
// shows the reference as the file wrote it.
func TestConfigHidesEnvironmentValues(t *testing.T) {
	t.Setenv("SEKISHO_TEST_TOKEN", "s3cret-token")
	text := func(showEnv bool) string {
		return fmt.Sprintf(`version: 1
admin: {listen: "127.0.0.1:0", show_env: %v}
log: {access: off}
listeners:
  - name: edge
    listen: 127.0.0.1:0
    routes:
      - name: all
        pipeline:
          - headers: {request: {set: {Authorization: "Bearer ${SEKISHO_TEST_TOKEN}"}}}
          - respond: {body: ok}
`, showEnv)
	}
	td := startDaemon(t, text(false))
	resp, body := td.get(td.admin() + "/config")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.NotContains(t, body, "s3cret-token")
	assert.Contains(t, body, "Bearer ${SEKISHO_TEST_TOKEN}")

	require.NoError(t, os.WriteFile(td.path, []byte(text(true)), 0o644))
	resp, _ = td.do(mustRequest(http.MethodPost, td.admin()+"/reload", nil))
	require.Equal(t, http.StatusOK, resp.StatusCode)
	_, body = td.get(td.admin() + "/config")
	assert.Contains(t, body, "Bearer s3cret-token", "show_env: true shows the expanded value")
}
