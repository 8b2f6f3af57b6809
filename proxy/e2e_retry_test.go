package proxy

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The tests of this file prove issue 16's fair balancing under failure and
// retries with a budget end to end: a real daemon, real sockets on
// 127.0.0.1, and what the backends received and /metrics counted.

// blackHole is a listener that accepts connections and never answers; it
// closes them when the test ends.
func blackHole(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var mu sync.Mutex
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return ln.Addr().String()
}

// flakyBackend answers code to every other request (the first included)
// and 200 with X-Echo-Name name to the rest, after delay; bad and good
// count them, conns the connections it accepted.
func flakyBackend(t *testing.T, name string, code int, delay time.Duration) (addr string, bad, good, conns *atomic.Int64) {
	t.Helper()
	bad, good, conns = new(atomic.Int64), new(atomic.Int64), new(atomic.Int64)
	var n atomic.Int64
	s := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if delay > 0 {
			time.Sleep(delay)
		}
		if n.Add(1)%2 == 1 {
			bad.Add(1)
			http.Error(w, "flaky", code)
			return
		}
		good.Add(1)
		w.Header().Set("X-Echo-Name", name)
		fmt.Fprintf(w, `{"name":%q}`, name)
	}))
	s.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			conns.Add(1)
		}
	}
	s.Start()
	t.Cleanup(s.Close)
	return strings.TrimPrefix(s.URL, "http://"), bad, good, conns
}

// With default settings (no outlier section, retries: 1), a pool with a
// dead endpoint or a black-holed one sends its first attempts to the live
// one as soon as the bad one has failed once: passive ejection is on by
// default, and a retry never takes the live endpoint's round-robin turn.
func TestDeadAndBlackHoledEndpointsAreHeldOutByDefault(t *testing.T) {
	noLeaks(t)
	live := newBackend(t, "live")
	dead, hole := freeAddr(t), blackHole(t)
	// The response header timeout is the only setting changed, to keep a
	// wait on the black hole short; it is what each wait costs, not how
	// many there are. It bounds the live endpoint's answers too, so it is
	// no shorter than a loaded machine may take to give one (at 300ms, a
	// stressed run timed one out).
	const wait = time.Second
	td := startPoolDaemon(t, fmt.Sprintf(edgePreamble+`    routes:
      - {name: dead, match: {path_prefix: /dead}, pipeline: [{proxy: dead}]}
      - {name: hole, match: {path_prefix: /hole}, pipeline: [{proxy: hole}]}
      - {name: both, match: {path_prefix: /both}, pipeline: [{proxy: both}]}
pools:
  dead: {endpoints: [%[1]s, %[3]s]}
  hole: {endpoints: [%[2]s, %[3]s], timeouts: {response_header: %[4]s}}
  both:
    endpoints: [%[2]s, %[1]s, %[3]s]
    timeouts: {response_header: %[4]s}
    outlier: {max_ejected_percent: 100}   # two of three endpoints are bad: 50%% would hold out only one
`, dead, hole, live.addr(), wait))
	const n = 200
	for _, tc := range []struct{ pool, bad string }{{"dead", dead}, {"hole", hole}, {"both", ""}} {
		t.Run(tc.pool, func(t *testing.T) {
			before := live.hits.Load()
			ok := 0
			for i := 0; i < n; i++ {
				o := fetch(td, mustRequest(http.MethodGet, td.url("edge")+"/"+tc.pool, nil))
				if o.err == nil && o.status == http.StatusOK && o.name == "live" {
					ok++
				}
			}
			// Read at once: the bad endpoint was ejected at its first
			// failure, for the default 10s, which a slow run of the loop
			// could outlast if this waited for the other pools.
			if tc.bad != "" {
				st, found := endpointState(td, tc.pool, tc.bad)
				require.True(t, found)
				assert.True(t, st.Ejected, "the %s endpoint is held out", tc.pool)
				assert.LessOrEqual(t, td.metric("sekisho_upstream_requests_total", "pool", tc.pool, "endpoint", tc.bad, "code", "error"), 3.0)
			}
			liveAttempts := td.metric("sekisho_upstream_requests_total", "pool", tc.pool, "endpoint", live.addr(), "code", "200")
			retries := max(0, td.metric("sekisho_upstream_retries_total", "pool", tc.pool, "reason", "connect-failure"))
			// A wait on the black hole is an attempt there that failed (it
			// accepts, so every failure is the response header timeout),
			// counted by the daemon: unlike a request's wall-clock time,
			// a loaded machine's scheduling cannot pass for one.
			waits := max(0, td.metric("sekisho_upstream_requests_total", "pool", tc.pool, "endpoint", hole, "code", "error"))
			// A request answered by the live endpoint on its first attempt
			// is one the live endpoint answered that was no retry.
			firstTry := liveAttempts - retries
			t.Logf("%s: %d of %d answered by live, %.0f on the first attempt, %.0f waited a timeout", tc.pool, ok, n, firstTry, waits)
			assert.Equal(t, float64(live.hits.Load()-before), liveAttempts)
			assert.GreaterOrEqual(t, firstTry, 0.95*n, "first attempts to the live endpoint")
			assert.LessOrEqual(t, waits, 3.0, "requests that waited out the black hole")
			assert.GreaterOrEqual(t, ok, n-3)
		})
	}
}

// Round robin over three healthy endpoints stays even while a fourth one
// fails half its requests and they are retried: retries take turns of
// their own.
func TestRoundRobinStaysEvenWhileRetrying(t *testing.T) {
	noLeaks(t)
	a, b, c := newBackend(t, "a"), newBackend(t, "b"), newBackend(t, "c")
	flaky, bad, _, _ := flakyBackend(t, "flaky", http.StatusServiceUnavailable, 0)
	td := startPoolDaemon(t, fmt.Sprintf(edgePreamble+`    routes: [{name: all, pipeline: [{proxy: web}]}]
pools:
  web:
    endpoints: [%s, %s, %s, %s]
    retries: {attempts: 1, on: ["503"]}
`, a.addr(), b.addr(), c.addr(), flaky))
	const n = 800
	for i := 0; i < n; i++ {
		o := fetch(td, mustRequest(http.MethodGet, td.url("edge")+"/x", nil))
		require.NoError(t, o.err)
		require.Equal(t, http.StatusOK, o.status)
	}
	hits := []int64{a.hits.Load(), b.hits.Load(), c.hits.Load()}
	mean := float64(hits[0]+hits[1]+hits[2]) / 3
	t.Logf("healthy endpoints: %v (mean %.1f); flaky answered 503 %d times", hits, mean, bad.Load())
	require.Positive(t, bad.Load())
	assert.Equal(t, float64(bad.Load()), td.metric("sekisho_upstream_retries_total", "pool", "web", "reason", "503"))
	for i, h := range hits {
		assert.InDelta(t, mean, float64(h), 0.05*mean, "endpoint %d", i)
	}
}

// With on: [503], an endpoint that answers 503 to half its requests is
// never seen by the client while another endpoint is healthy; the 503
// answers are discarded and their connections kept or closed, never
// leaked.
func TestRetryOn503HidesAFlakyEndpoint(t *testing.T) {
	noLeaks(t)
	good := newBackend(t, "good")
	flaky, bad, flakyGood, conns := flakyBackend(t, "flaky", http.StatusServiceUnavailable, 0)
	td := startPoolDaemon(t, fmt.Sprintf(edgePreamble+`    routes: [{name: all, pipeline: [{proxy: web}]}]
pools:
  web:
    endpoints: [%s, %s]
    retries: {attempts: 1, on: [connect-failure, "503"], per_try_timeout: 2s}
`, flaky, good.addr()))
	const n = 200
	codes := map[int]int{}
	for i := 0; i < n; i++ {
		method := http.MethodGet
		if i%4 == 3 {
			method = http.MethodDelete // through ReverseProxy, not the direct path
		}
		o := fetch(td, mustRequest(method, td.url("edge")+"/x", nil))
		require.NoError(t, o.err)
		codes[o.status]++
	}
	t.Logf("client saw %v; flaky answered 503 %d times and 200 %d times over %d connections; good %d",
		codes, bad.Load(), flakyGood.Load(), conns.Load(), good.hits.Load())
	assert.Equal(t, map[int]int{http.StatusOK: n}, codes)
	require.Positive(t, bad.Load())
	assert.Equal(t, float64(bad.Load()), td.metric("sekisho_upstream_retries_total", "pool", "web", "reason", "503"))
	// A request is counted once its handler returns, which may be just
	// after the client has its answer.
	require.Eventually(t, func() bool {
		return metricNow(td, "sekisho_requests_total", "listener", "edge", "code", "200") >= float64(n)
	}, 5*time.Second, 5*time.Millisecond)
	assert.Equal(t, float64(n), td.metric("sekisho_requests_total", "listener", "edge", "code", "200"))
	// A discarded 503 whose body came with its head keeps its connection
	// on the direct path; ReverseProxy's (DELETE) closes it unread. Either
	// way the next attempt has a connection that is whole.
	assert.LessOrEqual(t, conns.Load(), int64(n/4)/2+5, "connections opened to the flaky endpoint")
}

// The retry budget: with every endpoint failing and 50 clients at once,
// retries are held to about a fifth of the requests in progress, so that
// upstream attempts stay within about 1.25 times the client requests,
// where attempts: 1 alone would double them.
func TestRetryBudgetCapsRetriesWhenEverythingFails(t *testing.T) {
	noLeaks(t)
	var addrs []string
	for i := 0; i < 2; i++ {
		s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			// Long against the proxy's own work, so that the requests in
			// progress in the pool are the clients', not fewer: the bound
			// below counts on 50 of them while work is left.
			time.Sleep(10 * time.Millisecond)
			http.Error(w, "down", http.StatusServiceUnavailable)
		}))
		t.Cleanup(s.Close)
		addrs = append(addrs, strings.TrimPrefix(s.URL, "http://"))
	}
	td := startPoolDaemon(t, fmt.Sprintf(edgePreamble+`    routes: [{name: all, pipeline: [{proxy: web}]}]
pools:
  web:
    endpoints: [%s, %s]
    retries: {attempts: 1, on: ["503"], budget: {percent: 20, min_concurrency: 3}}
`, addrs[0], addrs[1]))
	const clients, each = 50, 20
	out := fanOut(clients*each, clients, func(int) outcome { return fetch(td, mustRequest(http.MethodGet, td.url("edge")+"/x", nil)) })
	for _, o := range out {
		require.NoError(t, o.err)
		require.Equal(t, http.StatusServiceUnavailable, o.status)
	}
	// Counted once each handler returns, which may follow the answer.
	require.Eventually(t, func() bool {
		return metricNow(td, "sekisho_requests_total", "listener", "edge", "code", "503") >= float64(clients*each)
	}, 5*time.Second, 5*time.Millisecond)
	attempts := 0.0
	for _, a := range addrs {
		attempts += td.metric("sekisho_upstream_requests_total", "pool", "web", "endpoint", a, "code", "503")
	}
	requests := td.metric("sekisho_requests_total", "listener", "edge", "code", "503")
	retries := td.metric("sekisho_upstream_retries_total", "pool", "web", "reason", "503")
	exhausted := td.metric("sekisho_upstream_retry_budget_exhausted_total", "pool", "web")
	t.Logf("%.0f requests, %.0f attempts (%.2fx), %.0f retries, %.0f refused by the budget", requests, attempts, attempts/requests, retries, exhausted)
	require.Equal(t, float64(clients*each), requests)
	assert.Equal(t, requests+retries, attempts)
	// What the budget allows. While every client is busy, 50 requests are
	// in progress and at most 10 of them retrying; a retry lasts as long
	// as a first attempt (every attempt fails alike, with no backoff), so
	// retries are at most a fifth of all attempts: a quarter of the
	// requests. Once the work runs out, the clients' last requests (one
	// each) end with fewer than 15 in progress, where the floor of 3
	// retries in progress lets almost every one of them retry: count a
	// retry for each. (The start is no such tail: each first attempt takes
	// 10ms, by which time the 50 clients have sent theirs.)
	bound := 1.25*(requests-clients) + 2*clients
	assert.LessOrEqual(t, attempts, bound, "a quarter of the requests retried, and the last %d each", clients)
	assert.Positive(t, exhausted)
	assert.Equal(t, requests, retries+exhausted, "every request asked the budget once")
}

// A budget of 0 disables retries cleanly, and a per-try timeout bounds each
// attempt: 504 when the last one times out.
func TestZeroBudgetAndPerTryTimeout(t *testing.T) {
	noLeaks(t)
	// The per-try timeout is long enough for the fast endpoint to answer
	// on a loaded machine (one that did not would be retried, and counted);
	// the slow one would take ten times as long, and is cancelled when its
	// attempt times out, so its delay costs the test nothing.
	const perTry = time.Second
	dead := freeAddr(t)
	slow := newBackend(t, "slow")
	slow.delay.Store(int64(10 * perTry))
	fast := newBackend(t, "fast")
	td := startPoolDaemon(t, fmt.Sprintf(edgePreamble+`    routes:
      - {name: off, match: {path_prefix: /off}, pipeline: [{proxy: off}]}
      - {name: try, match: {path_prefix: /try}, pipeline: [{proxy: try}]}
      - {name: last, match: {path_prefix: /last}, pipeline: [{proxy: last}]}
pools:
  off: {endpoints: [%[1]s, %[2]s], outlier: {enabled: false}, retries: {attempts: 3, budget: {percent: 0}}}
  try: {endpoints: [%[3]s, %[2]s], outlier: {enabled: false}, retries: {attempts: 1, on: [timeout], per_try_timeout: %[4]s}}
  last: {endpoints: [%[3]s], retries: {attempts: 1, on: [timeout], per_try_timeout: %[4]s}}
`, dead, fast.addr(), slow.addr(), perTry))
	codes := map[int]int{}
	for i := 0; i < 10; i++ {
		o := fetch(td, mustRequest(http.MethodGet, td.url("edge")+"/off", nil))
		require.NoError(t, o.err)
		codes[o.status]++
	}
	assert.Equal(t, map[int]int{http.StatusOK: 5, http.StatusBadGateway: 5}, codes, "no retry with a budget of 0")
	assert.Zero(t, td.metric("sekisho_upstream_retries_total", "pool", "off", "reason", "connect-failure"))
	assert.Zero(t, td.metric("sekisho_upstream_retry_budget_exhausted_total", "pool", "off"))

	for i := 0; i < 4; i++ {
		start := time.Now()
		o := fetch(td, mustRequest(http.MethodGet, td.url("edge")+"/try", nil))
		require.NoError(t, o.err)
		assert.Equal(t, http.StatusOK, o.status)
		assert.Equal(t, "fast", o.name)
		assert.Less(t, time.Since(start), perTry+time.Second, "at most one attempt's timeout, never the slow endpoint's delay")
	}
	assert.Equal(t, 2.0, td.metric("sekisho_upstream_retries_total", "pool", "try", "reason", "timeout"))

	start := time.Now()
	o := fetch(td, mustRequest(http.MethodGet, td.url("edge")+"/last", nil))
	require.NoError(t, o.err)
	assert.Equal(t, http.StatusGatewayTimeout, o.status)
	assert.Less(t, time.Since(start), perTry+time.Second, "answered at the per-try timeout, not after the slow endpoint's delay")
}
