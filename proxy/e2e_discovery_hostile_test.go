package proxy

import (
	"bufio"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"net/http"
	"runtime"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"sekisho/internal/dnstest"
	"sekisho/internal/rawupstream"
)

// Tests of the DNS discovery wiring against hostile input: a DNS server
// whose records flap, whose answers are huge, broken or never come, config
// authors who reload, mix and remove, and a steady load through it all. A
// real miekg/dns server on loopback, real backends on 127.0.0.x, the real
// daemon.

// ips returns 127.0.0.i for each i.
func ips(is ...int) []string {
	out := make([]string, len(is))
	for k, i := range is {
		out[k] = fmt.Sprintf("127.0.0.%d", i)
	}
	return out
}

// poolAddrs returns the addresses /pools lists for pool, with their source.
func poolAddrs(t *testing.T, td *testDaemon, pool string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, e := range poolsView(t, td)[pool].Endpoints {
		out[e.Address] = e.Source
	}
	return out
}

// requireNoFailures stops a steady load and checks that every request
// succeeded, and that there were some.
func requireNoFailures(t *testing.T, stats *loadStats, stop func()) map[string]int {
	t.Helper()
	stop()
	ok, failures, byName := stats.snapshot()
	assert.Empty(t, failures, "failed requests (%d succeeded)", ok)
	assert.Positive(t, ok)
	return byName
}

// TestDiscoveryHostileFlappingRecords: the records alternate between two
// sets every 200ms (five times the "flap every second" of a bad DNS setup)
// under a steady load. No request fails; the goroutine count stays bounded
// (probes of removed endpoints end, none pile up); once the flapping stops,
// the backends that left get no probe any more, and /pools and /metrics
// list only the set in force.
func TestDiscoveryHostileFlappingRecords(t *testing.T) {
	noLeaks(t)
	srv := dnstest.Start(t)
	port, bs := backendsOnOnePort(t, 5)
	const name = "flap.shop.test."
	a, b := ips(1, 2, 3), ips(1, 4, 5)
	srv.SetA(name, 0, a...)
	td := startPoolDaemon(t, edgePreamble+`    routes:
      - {name: all, pipeline: [{proxy: web}]}
discovery: {resolvers: ["`+srv.Addr()+`"], timeout: 500ms, min_ttl: 100ms, max_ttl: 200ms}
pools:
  web:
    endpoints: ["dns://flap.shop.test:`+strconv.Itoa(port)+`"]
    {{PROBES}}
`)
	waitReady(t, td)
	stats, stop := steadyLoad(td, td.url("edge")+"/", 4, nil, nil)
	defer stop()
	// A first flap, so that both sets' connections and probes exist.
	srv.SetA(name, 0, b...)
	require.Eventually(t, func() bool { return bs[3].hits.Load() > 0 && bs[4].hits.Load() > 0 }, 5*time.Second, 5*time.Millisecond)
	base := runtime.NumGoroutine()
	peak := base
	changes := len(td.logs.FilterMessage("discovered endpoints changed").All())
	tick := time.NewTicker(200 * time.Millisecond)
	for i := range 16 {
		<-tick.C
		if i%2 == 0 {
			srv.SetA(name, 0, a...)
		} else {
			srv.SetA(name, 0, b...)
		}
		peak = max(peak, runtime.NumGoroutine())
	}
	tick.Stop()
	// The last write was b; end on a, and wait until it is in force.
	srv.SetA(name, 0, a...)
	require.Eventually(t, func() bool {
		got := poolAddrs(t, td, "web")
		_, has4 := got[bs[3].addr]
		_, has2 := got[bs[1].addr]
		return len(got) == 3 && has2 && !has4
	}, 5*time.Second, 10*time.Millisecond, "the final set is in force")
	flaps := len(td.logs.FilterMessage("discovered endpoints changed").All()) - changes
	t.Logf("%d set changes applied; goroutines %d at the start, %d at the peak", flaps, base, peak)
	assert.GreaterOrEqual(t, flaps, 8, "the flaps reached the pool")
	assert.Less(t, peak, base+60, "the goroutine count stays bounded while the set flaps")

	// The removed backends' probes stop: their probe count no longer grows
	// (a probe runs every 100ms while an endpoint is in the set).
	p4, p5 := bs[3].probes.Load(), bs[4].probes.Load()
	assert.Never(t, func() bool { return bs[3].probes.Load() > p4+1 || bs[4].probes.Load() > p5+1 },
		600*time.Millisecond, 20*time.Millisecond, "probes of removed endpoints go on")
	p1 := bs[0].probes.Load()
	require.Eventually(t, func() bool { return bs[0].probes.Load() > p1+2 }, 2*time.Second, 10*time.Millisecond,
		"the endpoints in force are still probed")
	requireNoFailures(t, stats, stop)
	assert.Equal(t, -1.0, td.metric("sekisho_upstream_requests_total", "pool", "web", "endpoint", bs[3].addr),
		"a removed endpoint's series leaves /metrics")
	assert.Equal(t, 3.0, td.metric("sekisho_discovery_endpoints", "pool", "web"))
	// The goroutines of the flapping are gone, not just bounded.
	require.Eventually(t, func() bool { return runtime.NumGoroutine() <= base+10 }, 5*time.Second, 20*time.Millisecond,
		"goroutines after the flapping: %d, before: %d", runtime.NumGoroutine(), base)
}

// manyA returns n A records of name, 127.1.x.y, in zone-file form.
func manyA(name string, n int) []dns.RR {
	out := make([]dns.RR, n)
	for i := range n {
		out[i] = &dns.A{Hdr: dns.RR_Header{Name: dnstest.Fqdn(name), Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 30},
			A: net.IPv4(127, 1, byte(i/250), byte(1+i%250))}
	}
	return out
}

// TestDiscoveryHostileHugeAnswers: an answer of 10,000 A records (more than
// a DNS message holds: the server sends what fits, over TCP) fills a pool
// up to max_endpoints (the default 1024, and a configured 50) and the rest
// is counted; the daemon stays responsive: /pools, /healthz and another
// route answer at once.
func TestDiscoveryHostileHugeAnswers(t *testing.T) {
	noLeaks(t)
	srv := dnstest.Start(t)
	other := newBackend(t, "other")
	srv.SetRR("huge.shop.test.", manyA("huge.shop.test.", 10000))
	// 200 records fit whole in a TCP answer (not in a UDP one): the count
	// left out is exact.
	srv.SetRR("big.shop.test.", manyA("big.shop.test.", 200))
	td := startDaemon(t, edgePreamble+`    routes:
      - {name: huge, match: {path_prefix: /huge}, pipeline: [{proxy: huge}]}
      - {name: big, match: {path_prefix: /big}, pipeline: [{proxy: big}]}
      - {name: other, pipeline: [{proxy: other}]}
discovery: {resolvers: ["`+srv.Addr()+`"]}
pools:
  huge:
    endpoints: ["dns://huge.shop.test:9"]
  big:
    endpoints: ["dns://big.shop.test:9"]
    discovery: {max_endpoints: 50}
  other:
    endpoints: [`+other.addr()+`]
`)
	waitReady(t, td)
	_, tcp := srv.Queries()
	assert.Positive(t, tcp, "the answers too big for UDP were asked again over TCP")

	pools := poolsView(t, td)
	huge, big := pools["huge"], pools["big"]
	require.Len(t, huge.Discovery, 1)
	require.Len(t, big.Discovery, 1)
	assert.Len(t, huge.Endpoints, 1024, "the default max_endpoints")
	assert.Equal(t, 1024, huge.Discovery[0].Endpoints)
	assert.Positive(t, huge.Discovery[0].IgnoredOverLimit)
	assert.Less(t, huge.Discovery[0].IgnoredOverLimit, 10000-1024, "a DNS message holds fewer than 10,000 records")
	assert.Len(t, big.Endpoints, 50, "max_endpoints: 50")
	assert.Equal(t, 150, big.Discovery[0].IgnoredOverLimit)
	// The records left out are counted after the set is applied, so
	// possibly after /readyz turned 200.
	for _, pool := range []string{"big", "huge"} {
		require.Eventually(t, func() bool {
			return metricNow(td, "sekisho_discovery_ignored_records_total", "pool", pool, "reason", "over_max_endpoints") > 0
		}, 5*time.Second, 5*time.Millisecond, "%s: the records left out are counted", pool)
	}
	assert.Equal(t, 150.0, td.metric("sekisho_discovery_ignored_records_total", "pool", "big", "reason", "over_max_endpoints"),
		"one resolution (TTL 30s): the 150 left out, counted once")
	assert.Equal(t, float64(huge.Discovery[0].IgnoredOverLimit),
		td.metric("sekisho_discovery_ignored_records_total", "pool", "huge", "reason", "over_max_endpoints"))
	assert.Equal(t, 1024.0, td.metric("sekisho_discovery_endpoints", "pool", "huge"))
	// The ones kept are the first by address (as text), whatever the
	// answer's order.
	var all []string
	for _, rr := range manyA("big.shop.test.", 200) {
		all = append(all, rr.(*dns.A).A.String()+":9")
	}
	slices.Sort(all)
	assert.ElementsMatch(t, all[:50], slices.Collect(maps.Keys(poolAddrs(t, td, "big"))))

	// Responsive: the admin and the other pools answer at once.
	start := time.Now()
	resp, _ := td.get(td.admin() + "/healthz")
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	resp, body := td.get(td.url("edge") + "/")
	assert.Equal(t, http.StatusOK, resp.StatusCode, body)
	assert.Less(t, time.Since(start), time.Second)
}

// TestDiscoveryHostileSRVPortZero: SRV records with port 0 are left out and
// counted; an answer whose records all have port 0 is a failure that keeps
// the last good set serving.
func TestDiscoveryHostileSRVPortZero(t *testing.T) {
	noLeaks(t)
	srv := dnstest.Start(t)
	port, bs := backendsOnOnePort(t, 3)
	const name = "_http._tcp.users.shop.test."
	p := uint16(port)
	srv.SetSRV(name, 30,
		dnstest.SRV{Target: "u1.shop.test.", IP: "127.0.0.1", Port: p, Weight: 1},
		dnstest.SRV{Target: "u2.shop.test.", IP: "127.0.0.2", Port: 0, Weight: 1},
		dnstest.SRV{Target: "u3.shop.test.", IP: "127.0.0.3", Port: p, Weight: 1})
	td := startDaemon(t, edgePreamble+`    routes:
      - {name: all, pipeline: [{proxy: users}]}
pools:
  users:
    endpoints: ["dns+srv://`+name+`"]
    discovery: {resolvers: ["`+srv.Addr()+`"], min_ttl: 50ms, max_ttl: 100ms}
`)
	waitReady(t, td)
	assert.Equal(t, map[string]string{bs[0].addr: "dns+srv://" + name, bs[2].addr: "dns+srv://" + name},
		poolAddrs(t, td, "users"), "the port-0 record is not an endpoint")
	assert.Equal(t, 1, poolsView(t, td)["users"].Discovery[0].IgnoredPortZero)
	// Counted after the set is applied, so possibly after /readyz turned
	// 200.
	require.Eventually(t, func() bool {
		return metricNow(td, "sekisho_discovery_ignored_records_total", "pool", "users", "reason", "srv_port_zero") >= 1
	}, 5*time.Second, 5*time.Millisecond, "the port-0 record is counted")
	assert.Equal(t, map[string]int{"b1": 10, "b3": 10}, burst(t, td, td.url("edge")+"/", 20, 4))

	// Every record with port 0: no usable record, the last set serves.
	srv.SetSRV(name, 0,
		dnstest.SRV{Target: "u1.shop.test.", IP: "127.0.0.1", Port: 0},
		dnstest.SRV{Target: "u2.shop.test.", IP: "127.0.0.2", Port: 0})
	require.Eventually(t, func() bool {
		return metricNow(td, "sekisho_discovery_resolutions_total", "pool", "users", "result", "no_records") >= 2
	}, 5*time.Second, 10*time.Millisecond)
	users := poolsView(t, td)["users"]
	assert.Contains(t, users.Discovery[0].LastError, "no usable records")
	assert.Len(t, users.Endpoints, 2, "the last good set is kept")
	assert.Equal(t, map[string]int{"b1": 10, "b3": 10}, burst(t, td, td.url("edge")+"/", 20, 4))
	resp, _ := td.get(td.admin() + "/readyz")
	assert.Equal(t, http.StatusOK, resp.StatusCode, "a pool that resolved once stays ready")
}

// TestDiscoveryHostileFailuresKeepTheLastSet: SERVFAIL, then NXDOMAIN, then
// an empty answer, after a good set: the set stays in force and serving
// throughout, /pools shows each error, and each change of state is logged
// once (not once per retry); then the name resolves again, is logged once,
// and a changed answer is applied.
func TestDiscoveryHostileFailuresKeepTheLastSet(t *testing.T) {
	noLeaks(t)
	srv := dnstest.Start(t)
	port, bs := backendsOnOnePort(t, 3)
	const name = "web.shop.test."
	srv.SetA(name, 0, ips(1, 2)...)
	td := webDaemon(t, srv, "dns://web.shop.test:"+strconv.Itoa(port), "min_ttl: 20ms, max_ttl: 80ms", "")
	waitReady(t, td)
	stats, stop := steadyLoad(td, td.url("edge")+"/", 2, nil, nil)
	defer stop()
	steps := []struct {
		result, lastError string
		do                func()
	}{
		{"error", "SERVFAIL", func() { srv.SetRcode(dns.RcodeServerFailure) }},
		{"nxdomain", "NXDOMAIN", func() { srv.SetRcode(0); srv.Remove(name) }},
		{"no_records", "no usable records", func() { srv.Set(t, name) }},
	}
	for _, st := range steps {
		before := max(td.metric("sekisho_discovery_resolutions_total", "pool", "web", "result", st.result), 0)
		st.do()
		// Several retries of the same failure.
		require.Eventually(t, func() bool {
			return metricNow(td, "sekisho_discovery_resolutions_total", "pool", "web", "result", st.result) >= before+3
		}, 5*time.Second, 10*time.Millisecond, st.result)
		web := poolsView(t, td)["web"]
		require.Len(t, web.Discovery, 1)
		assert.Contains(t, web.Discovery[0].LastError, st.lastError)
		assert.True(t, web.Discovery[0].Resolved)
		assert.GreaterOrEqual(t, web.Discovery[0].Failures, 3)
		assert.Len(t, web.Endpoints, 2, "%s: the last good set stays", st.result)
	}
	failed := td.logs.FilterMessage("discovery failed; keeping the last good set").All()
	require.Len(t, failed, 3, "one line per change of state")
	assert.Equal(t, 0, td.logs.FilterMessage("discovery resolves again").Len())

	// Recovery, with a new answer.
	srv.SetA(name, 0, ips(2, 3)...)
	require.Eventually(t, func() bool { return bs[2].hits.Load() > 0 }, 5*time.Second, 10*time.Millisecond)
	web := poolsView(t, td)["web"]
	assert.Empty(t, web.Discovery[0].LastError)
	assert.Zero(t, web.Discovery[0].Failures)
	// Logged once the new set is in force, so possibly after b3's request.
	require.Eventually(t, func() bool { return td.logs.FilterMessage("discovery resolves again").Len() >= 1 },
		5*time.Second, 5*time.Millisecond)
	assert.Equal(t, 1, td.logs.FilterMessage("discovery resolves again").Len())
	// A request picked for b1 before the change may reach its handler
	// after it: count b1's requests once the load has moved on to the
	// new set, then watch a second stretch of it.
	stats.waitServed(t, 20, []string{"b2", "b3"})
	h1 := bs[0].hits.Load()
	stats.waitServed(t, 20, []string{"b2", "b3"})
	assert.Equal(t, h1, bs[0].hits.Load(), "the record that left takes no new request")
	byName := requireNoFailures(t, stats, stop)
	assert.Positive(t, byName["b1"])
	assert.Len(t, td.logs.FilterMessage("discovery failed; keeping the last good set").All(), 3)
}

// TestDiscoveryHostileSilentResolverAtStartup: a resolver that never
// answers. /readyz is 503 and says why; a request to the pool is answered
// 503 at once, without waiting on DNS; other routes are unaffected. "At
// once" is a fifth of the query timeout: far below what waiting on the
// resolution would cost, far above a loaded machine's slowest answer.
func TestDiscoveryHostileSilentResolverAtStartup(t *testing.T) {
	noLeaks(t)
	srv := dnstest.Start(t)
	srv.SetA("web.shop.test.", 1, "127.0.0.1")
	srv.SetSilent(true)
	other := newBackend(t, "other")
	const timeout = 3 * time.Second
	td := startDaemon(t, edgePreamble+`    routes:
      - {name: web, match: {path_prefix: /web}, pipeline: [{proxy: web}]}
      - {name: other, pipeline: [{proxy: other}]}
pools:
  web:
    endpoints: ["dns://web.shop.test:80"]
    discovery: {resolvers: ["`+srv.Addr()+`"], timeout: `+timeout.String()+`}
  other:
    endpoints: [`+other.addr()+`]
`)
	// At once, before any query has timed out: the pool has no endpoint,
	// and its requests do not wait for the resolution in progress.
	for range 5 {
		start := time.Now()
		resp, _ := td.get(td.url("edge") + "/web")
		took := time.Since(start)
		assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
		assert.Less(t, took, timeout/5, "a request to a pool that never resolved waited on DNS")
		start = time.Now()
		resp, _ = td.get(td.url("edge") + "/")
		assert.Equal(t, http.StatusOK, resp.StatusCode, "another pool is unaffected")
		assert.Less(t, time.Since(start), timeout/5)
	}
	why := waitNotReady(t, td, "did not answer in time")
	assert.Contains(t, why, `pool "web"`)
	assert.Contains(t, why, "dns://web.shop.test:80")
	web := poolsView(t, td)["web"]
	require.Len(t, web.Discovery, 1)
	assert.False(t, web.Discovery[0].Resolved)
	assert.Contains(t, web.Discovery[0].LastError, "did not answer in time")
	start := time.Now()
	resp, _ := td.get(td.url("edge") + "/web")
	assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	assert.Less(t, time.Since(start), timeout/5)
	// The log line follows the state /readyz showed (it is written once
	// the resolution's state is in place).
	require.Eventually(t, func() bool {
		return td.logs.FilterMessage("discovery failed; the target has no endpoints yet").Len() >= 1
	}, 5*time.Second, 5*time.Millisecond)
	assert.Equal(t, 1, td.logs.FilterMessage("discovery failed; the target has no endpoints yet").Len())
}

// hubSources returns the Sources the daemon holds, by key.
func hubSources(td *testDaemon) map[sourceKey]*watchedSource {
	h := td.d.shared.discovery
	h.mu.Lock()
	defer h.mu.Unlock()
	return maps.Clone(h.sources)
}

func queries(s *dnstest.Server) int64 {
	udp, tcp := s.Queries()
	return udp + tcp
}

// TestDiscoveryHostileReloads runs a steady load across reloads that keep
// a pool's target (its Source is kept: no query, no 503 window), change it
// (the reload waits for the new name's first answer), remove a pool (its
// Source closes: the DNS server hears no more from it) and change the
// resolvers (a new Source). No request fails.
func TestDiscoveryHostileReloads(t *testing.T) {
	noLeaks(t)
	srv, srv2, srv3 := dnstest.Start(t), dnstest.Start(t), dnstest.Start(t)
	port, bs := backendsOnOnePort(t, 4)
	for _, s := range []*dnstest.Server{srv, srv2} {
		s.SetA("a.shop.test.", 30, ips(1, 2)...)
		s.SetA("b.shop.test.", 30, ips(3, 4)...)
	}
	srv3.SetA("gone.shop.test.", 0, ips(1)...)
	config := func(target, resolver string, gone bool, retries int) string {
		text := edgePreamble + `    routes:
`
		if gone {
			text += `      - {name: gone, match: {path_prefix: /gone}, pipeline: [{proxy: gone}]}
`
		}
		text += fmt.Sprintf(`      - {name: all, pipeline: [{proxy: web}]}
pools:
  web:
    endpoints: ["dns://%s:%d"]
    discovery: {resolvers: ["%s"]}
    retries: %d
`, target, port, resolver, retries)
		if gone {
			text += fmt.Sprintf(`  gone:
    endpoints: ["dns://gone.shop.test:%d"]
    discovery: {resolvers: ["%s"], min_ttl: 20ms, max_ttl: 50ms}
`, port, srv3.Addr())
		}
		return text
	}
	td := startDaemon(t, config("a.shop.test", srv.Addr(), true, 0))
	waitReady(t, td)
	stats, stop := steadyLoad(td, td.url("edge")+"/", 3, nil, nil)
	defer stop()
	webSource := func() *watchedSource {
		for k, w := range hubSources(td) {
			if k.pool == "web" {
				return w
			}
		}
		return nil
	}
	// checkServedBy sends requests right after a reload: each is served,
	// by one of names.
	checkServedBy := func(step string, names ...string) {
		for i := range 20 {
			o := fetch(td, mustRequest(http.MethodGet, td.url("edge")+"/", nil))
			require.NoError(t, o.err, "%s: request %d", step, i)
			require.Equal(t, http.StatusOK, o.status, "%s: request %d", step, i)
			require.Contains(t, names, o.name, "%s: request %d", step, i)
		}
	}

	t.Run("same target keeps its Source", func(t *testing.T) {
		w, q := webSource(), queries(srv)
		require.NotNil(t, w)
		td.rewrite(config("a.shop.test", srv.Addr(), true, 1))
		checkServedBy("same target", "b1", "b2")
		assert.Same(t, w, webSource(), "the reload shares the Source")
		assert.Equal(t, q, queries(srv), "no query to serve the new Runtime")
	})
	t.Run("changed target swaps over", func(t *testing.T) {
		q := queries(srv)
		td.rewrite(config("b.shop.test", srv.Addr(), true, 1))
		checkServedBy("changed target", "b3", "b4")
		assert.Equal(t, q+2, queries(srv), "one A and one AAAA query of the new name")
		require.Eventually(t, func() bool { return len(hubSources(td)) == 2 }, 5*time.Second, 10*time.Millisecond,
			"the old name's Source closes with the old Runtime")
	})
	t.Run("removed pool closes its Source", func(t *testing.T) {
		require.Positive(t, queries(srv3))
		td.rewrite(config("b.shop.test", srv.Addr(), false, 1))
		require.Eventually(t, func() bool {
			for k := range hubSources(td) {
				if k.pool == "gone" {
					return false
				}
			}
			return true
		}, 5*time.Second, 10*time.Millisecond)
		// The Source leaves the hub before it is closed, and a query sent
		// just before is counted by the DNS server when it gets to it: wait
		// for the count to stop (still for four of the old re-resolution
		// intervals), then for it to stay put.
		q, still := queries(srv3), time.Now()
		require.Eventually(t, func() bool {
			if n := queries(srv3); n != q {
				q, still = n, time.Now()
				return false
			}
			return time.Since(still) >= 200*time.Millisecond
		}, 5*time.Second, 10*time.Millisecond, "the removed pool's name is still resolved")
		assert.Never(t, func() bool { return queries(srv3) != q }, 500*time.Millisecond, 10*time.Millisecond,
			"the removed pool's name is still resolved")
		resp, _ := td.get(td.url("edge") + "/gone")
		assert.Contains(t, []string{"b3", "b4"}, resp.Header.Get("X-Echo-Name"), "the route went with its pool: web serves /gone")
	})
	t.Run("changed resolvers make a new Source", func(t *testing.T) {
		w, q2 := webSource(), queries(srv2)
		td.rewrite(config("b.shop.test", srv2.Addr(), false, 1))
		checkServedBy("changed resolvers", "b3", "b4")
		assert.NotSame(t, w, webSource())
		assert.Equal(t, q2+2, queries(srv2), "the new resolver answered the new Source")
		require.Eventually(t, func() bool { return len(hubSources(td)) == 1 }, 5*time.Second, 10*time.Millisecond)
	})
	byName := requireNoFailures(t, stats, stop)
	for _, b := range bs {
		assert.Positive(t, byName[b.name], b.name)
	}
}

// TestDiscoveryHostileOldRuntimeDoesNotForgetTheNewOnesEndpoints: a reload
// moves pool web from one name to another that lists the same addresses,
// or to the same address listed statically, while a slow request keeps the
// old Runtime alive; the old name then drops an address. The old Runtime's
// pool lets it go, but the pool in force still has it: it must stay in the
// registry (/pools, sekisho_endpoint_ready) and in /metrics.
func TestDiscoveryHostileOldRuntimeDoesNotForgetTheNewOnesEndpoints(t *testing.T) {
	for _, tc := range []struct {
		name string
		next func(port int) string // the new config's endpoints of web
	}{
		{"another name", func(port int) string { return fmt.Sprintf(`["dns://b.shop.test:%d"]`, port) }},
		{"static", func(port int) string {
			return fmt.Sprintf(`["127.0.0.1:%d", "127.0.0.2:%d", "127.0.0.3:%d"]`, port, port, port)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			noLeaks(t)
			srv := dnstest.Start(t)
			port, bs := backendsOnOnePort(t, 3)
			srv.SetA("a.shop.test.", 0, ips(1, 2, 3)...)
			srv.SetA("b.shop.test.", 0, ips(1, 2, 3)...)
			config := func(endpoints string) string {
				return edgePreamble + `    routes:
      - {name: all, pipeline: [{proxy: web}]}
discovery: {resolvers: ["` + srv.Addr() + `"], min_ttl: 20ms, max_ttl: 50ms}
pools:
  web:
    endpoints: ` + endpoints + `
    ` + probes + `
`
			}
			td := startDaemon(t, config(fmt.Sprintf(`["dns://a.shop.test:%d"]`, port)))
			waitReady(t, td)
			// A slow request holds the old Runtime.
			slow := make(chan outcome, 1)
			go func() { slow <- fetch(td, mustRequest(http.MethodGet, td.url("edge")+"/slow", nil)) }()
			require.Eventually(t, func() bool {
				return bs[0].held.Load()+bs[1].held.Load()+bs[2].held.Load() == 1
			}, 5*time.Second, time.Millisecond)
			td.rewrite(config(tc.next(port)))
			waitReady(t, td)
			srv.SetA("a.shop.test.", 0, ips(1, 3)...)
			// The old pool applies the change (its Source runs while its
			// Runtime drains); only it resolves a.shop.test now.
			require.Eventually(t, func() bool { return changeLogged(td, "web", "removed", bs[1].addr) }, 5*time.Second, 5*time.Millisecond,
				"the old pool applies the change")
			for _, o := range burst(t, td, td.url("edge")+"/", 30, 3) {
				assert.Equal(t, 10, o)
			}
			got := poolAddrs(t, td, "web")
			assert.Len(t, got, 3, "the pool in force still has 127.0.0.2: %v", got)
			assert.Contains(t, got, bs[1].addr)
			assert.Equal(t, 1.0, td.metric("sekisho_endpoint_ready", "pool", "web", "endpoint", bs[1].addr))
			assert.Positive(t, td.metric("sekisho_upstream_requests_total", "pool", "web", "endpoint", bs[1].addr, "code", "200"))
			// The old name gains an address the pool in force never had:
			// once the old Runtime is gone, nothing of it is left.
			srv.SetA("a.shop.test.", 0, ips(1, 3, 4)...)
			require.Eventually(t, func() bool {
				return changeLogged(td, "web", "added", "127.0.0.4:"+strconv.Itoa(port))
			}, 5*time.Second, 5*time.Millisecond, "the old pool applies the change")
			for _, b := range bs {
				close(b.release)
			}
			o := <-slow
			assert.NoError(t, o.err)
			assert.Equal(t, http.StatusOK, o.status)
			// The old Runtime closes once its last request has ended: a
			// moment after the client saw the answer.
			require.Eventually(t, func() bool {
				got = poolAddrs(t, td, "web")
				_, left := got["127.0.0.4:"+strconv.Itoa(port)]
				return len(got) == 3 && !left
			}, 5*time.Second, 10*time.Millisecond, "only the pool in force's endpoints once the old Runtime closed: %v", got)
			assert.Contains(t, got, bs[1].addr)
		})
	}
}

// changeLogged reports whether pool's "discovered endpoints changed" log
// names addr among those added or removed (key).
func changeLogged(td *testDaemon, pool, key, addr string) bool {
	for _, e := range td.logs.FilterMessage("discovered endpoints changed").All() {
		m := e.ContextMap()
		if list, _ := m[key].([]any); m["pool"] == pool && slices.Contains(list, any(addr)) {
			return true
		}
	}
	return false
}

// TestDiscoveryHostileMixedStaticAndDiscovered: a pool lists a static
// endpoint and a name whose records include the same address. The address
// is one endpoint, its source static, whatever the name does; the name's
// other addresses come and go.
func TestDiscoveryHostileMixedStaticAndDiscovered(t *testing.T) {
	noLeaks(t)
	srv := dnstest.Start(t)
	port, bs := backendsOnOnePort(t, 3)
	const name = "mixed.shop.test."
	target := "dns://mixed.shop.test:" + strconv.Itoa(port)
	srv.SetA(name, 0, ips(1, 2)...)
	td := startDaemon(t, edgePreamble+`    routes:
      - {name: all, pipeline: [{proxy: web}]}
pools:
  web:
    endpoints: ["`+bs[0].addr+`", "`+target+`"]
    discovery: {resolvers: ["`+srv.Addr()+`"], min_ttl: 20ms, max_ttl: 50ms}
`)
	waitReady(t, td)
	assert.Equal(t, map[string]string{bs[0].addr: "static", bs[1].addr: target}, poolAddrs(t, td, "web"),
		"the address in both is listed once, as static")
	assert.Equal(t, map[string]int{"b1": 10, "b2": 10}, burst(t, td, td.url("edge")+"/", 20, 4),
		"the address in both takes one share, not two")
	assert.Equal(t, 1.0, td.metric("sekisho_discovery_endpoints", "pool", "web"))

	stats, stop := steadyLoad(td, td.url("edge")+"/", 2, nil, nil)
	defer stop()
	// The name drops the static address and adds another: the static one
	// stays.
	srv.SetA(name, 0, ips(2, 3)...)
	require.Eventually(t, func() bool { return bs[2].hits.Load() > 0 }, 5*time.Second, 5*time.Millisecond)
	assert.Equal(t, map[string]string{bs[0].addr: "static", bs[1].addr: target, bs[2].addr: target}, poolAddrs(t, td, "web"))
	// The name then lists only the static address: the discovered ones go.
	srv.SetA(name, 0, ips(1)...)
	// The gauge is set after /pools shows the change.
	require.Eventually(t, func() bool {
		return metricNow(td, "sekisho_discovery_endpoints", "pool", "web") == 0
	}, 5*time.Second, 5*time.Millisecond)
	assert.Equal(t, map[string]string{bs[0].addr: "static"}, poolAddrs(t, td, "web"))
	// And the name failing changes nothing.
	srv.Remove(name)
	require.Eventually(t, func() bool {
		return metricNow(td, "sekisho_discovery_resolutions_total", "pool", "web", "result", "nxdomain") >= 2
	}, 5*time.Second, 5*time.Millisecond)
	assert.Equal(t, map[string]string{bs[0].addr: "static"}, poolAddrs(t, td, "web"))
	h := bs[0].hits.Load()
	require.Eventually(t, func() bool { return bs[0].hits.Load() > h+20 }, 5*time.Second, 5*time.Millisecond)
	requireNoFailures(t, stats, stop)
}

// TestDiscoveryHostileStickyAndHashPools: cookie affinity and hashing over
// discovered endpoints. A sticky client stays on its endpoint while an
// unrelated record comes and goes, and moves, with a new cookie, when its
// own endpoint's record goes; a hash pool moves keys only to an added
// endpoint, and only the moved keys back when it leaves.
func TestDiscoveryHostileStickyAndHashPools(t *testing.T) {
	noLeaks(t)
	srv := dnstest.Start(t)
	port, bs := backendsOnOnePort(t, 4)
	srv.SetA("sticky.shop.test.", 0, ips(1, 2, 3)...)
	srv.SetA("hash.shop.test.", 0, ips(1, 2, 3)...)
	td := startPoolDaemon(t, edgePreamble+`    routes:
      - {name: hash, match: {path_prefix: /hash}, pipeline: [{proxy: hashed}]}
      - {name: sticky, pipeline: [{proxy: sticky}]}
discovery: {resolvers: ["`+srv.Addr()+`"], min_ttl: 20ms, max_ttl: 50ms}
pools:
  sticky:
    endpoints: ["dns://sticky.shop.test:`+strconv.Itoa(port)+`"]
    sticky: {cookie: SRV, key: "`+stickyKey+`"}
    {{PROBES}}
  hashed:
    endpoints: ["dns://hash.shop.test:`+strconv.Itoa(port)+`"]
    balance: hash
    hash_key: header:X-User
    {{PROBES}}
`)
	waitReady(t, td)
	url := td.url("edge") + "/cart"

	t.Run("sticky", func(t *testing.T) {
		c := &stickyClient{td: td}
		first := c.do(url, false)
		require.NoError(t, first.err)
		require.Equal(t, http.StatusOK, first.status)
		require.NotEmpty(t, first.set)
		mine := first.name
		var others []string
		for _, ip := range ips(1, 2, 3, 4) {
			if b := bs[ip[len(ip)-1]-'1']; b.name != mine {
				others = append(others, ip)
			}
		}
		// An unrelated record comes (127.0.0.4) and goes, twice.
		for _, set := range [][]string{append(ips(1, 2, 3), "127.0.0.4"), ips(1, 2, 3), append(ips(1, 2, 3), "127.0.0.4")} {
			srv.SetA("sticky.shop.test.", 0, set...)
			want := len(set)
			require.Eventually(t, func() bool { return len(poolAddrs(t, td, "sticky")) == want }, 5*time.Second, 5*time.Millisecond)
			for range 5 {
				a := c.do(url, false)
				require.NoError(t, a.err)
				assert.Equal(t, mine, a.name, "the sticky client stays on its endpoint")
				assert.Empty(t, a.set, "and gets no new cookie")
			}
		}
		// Its own endpoint's record goes: it moves, with a new cookie, and
		// stays on the new one.
		srv.SetA("sticky.shop.test.", 0, others...)
		require.Eventually(t, func() bool { return len(poolAddrs(t, td, "sticky")) == 3 }, 5*time.Second, 5*time.Millisecond)
		moved := c.do(url, false)
		require.NoError(t, moved.err)
		require.Equal(t, http.StatusOK, moved.status)
		assert.NotEqual(t, mine, moved.name)
		assert.NotEmpty(t, moved.set)
		assert.NotEqual(t, first.set, moved.set)
		for range 5 {
			a := c.do(url, false)
			assert.Equal(t, moved.name, a.name)
			assert.Empty(t, a.set)
		}
	})
	t.Run("hash", func(t *testing.T) {
		place := func() map[string]string {
			out := map[string]string{}
			for i := range 60 {
				user := "user-" + strconv.Itoa(i)
				req := mustRequest(http.MethodGet, td.url("edge")+"/hash", nil)
				req.Header.Set("X-User", user)
				o := fetch(td, req)
				require.NoError(t, o.err)
				require.Equal(t, http.StatusOK, o.status)
				out[user] = o.name
			}
			return out
		}
		before := place()
		assert.Equal(t, before, place(), "hashing is stable")
		srv.SetA("hash.shop.test.", 0, ips(1, 2, 3, 4)...)
		// The new endpoint takes traffic once its probes pass.
		var after map[string]string
		require.Eventually(t, func() bool {
			after = place()
			for _, n := range after {
				if n == "b4" {
					return true
				}
			}
			return false
		}, 5*time.Second, 20*time.Millisecond, "keys reach the added endpoint")
		moved := 0
		for user, n := range after {
			if n != before[user] {
				moved++
				assert.Equal(t, "b4", n, "%s moved to an old endpoint", user)
			}
		}
		assert.Less(t, moved, 35, "about a quarter of the keys move")
		srv.SetA("hash.shop.test.", 0, ips(1, 2, 3)...)
		require.Eventually(t, func() bool { return len(poolAddrs(t, td, "hashed")) == 3 }, 5*time.Second, 5*time.Millisecond)
		assert.Equal(t, before, place(), "the keys go back where they were")
	})
}

// TestDiscoveryHostileScatterLeaves: a scatter stage whose leaf pools are
// discovered (a headless Service per shard): a replica added to a leaf
// takes that leaf's requests at once, without a reload; no request fails.
func TestDiscoveryHostileScatterLeaves(t *testing.T) {
	noLeaks(t)
	srv := dnstest.Start(t)
	port, bs := backendsOnOnePort(t, 3)
	srv.SetSRV("_http._tcp.leaf-0.shop.test.", 0, dnstest.SRV{Target: "l0-0.shop.test.", IP: "127.0.0.1", Port: uint16(port)})
	srv.SetSRV("_http._tcp.leaf-1.shop.test.", 0, dnstest.SRV{Target: "l1-0.shop.test.", IP: "127.0.0.2", Port: uint16(port)})
	td := startDaemon(t, edgePreamble+`    routes:
      - name: search
        pipeline:
          - scatter:
              leaves: [leaf-0, leaf-1]
              timeout: 2s
              min_success: 2
              merge: {array: results}
discovery: {resolvers: ["`+srv.Addr()+`"], min_ttl: 20ms, max_ttl: 50ms}
pools:
  leaf-0: {endpoints: ["dns+srv://_http._tcp.leaf-0.shop.test"]}
  leaf-1: {endpoints: ["dns+srv://_http._tcp.leaf-1.shop.test"]}
`)
	waitReady(t, td)
	search := func() []string {
		resp, body := td.get(td.url("edge") + "/search")
		require.Equal(t, http.StatusOK, resp.StatusCode, body)
		assert.Equal(t, "2/2", resp.Header.Get("X-Sekisho-Leaves"))
		var ans struct {
			Results []struct{ ID string } `json:"results"`
		}
		require.NoError(t, json.Unmarshal([]byte(body), &ans))
		var ids []string
		for _, r := range ans.Results {
			ids = append(ids, r.ID)
		}
		return ids
	}
	assert.Equal(t, []string{"b1", "b2"}, search())
	srv.SetSRV("_http._tcp.leaf-1.shop.test.", 0,
		dnstest.SRV{Target: "l1-0.shop.test.", IP: "127.0.0.2", Port: uint16(port)},
		dnstest.SRV{Target: "l1-1.shop.test.", IP: "127.0.0.3", Port: uint16(port)})
	// Not /pools, which lists an added endpoint a moment before the pool
	// picks it: the gauge is set once the new set is in force, and the
	// split below is exact.
	require.Eventually(t, func() bool {
		return metricNow(td, "sekisho_discovery_endpoints", "pool", "leaf-1") == 2
	}, 5*time.Second, 5*time.Millisecond)
	seen := map[string]int{}
	for range 20 {
		ids := search()
		require.Len(t, ids, 2)
		assert.Equal(t, "b1", ids[0], "leaf-0 keeps its one replica")
		seen[ids[1]]++
	}
	assert.Equal(t, map[string]int{"b2": 10, "b3": 10}, seen, "leaf-1's new replica takes half its requests")
	assert.Positive(t, bs[2].hits.Load())
}

// srvOf is the SRV record of a raw upstream on 127.0.0.1.
func srvOf(t *testing.T, target, addr string) dnstest.SRV {
	_, port, err := net.SplitHostPort(addr)
	require.NoError(t, err)
	p, err := strconv.Atoi(port)
	require.NoError(t, err)
	return dnstest.SRV{Target: target, IP: "127.0.0.1", Port: uint16(p), Weight: 1}
}

// srvWebDaemon is webDaemon over the SRV records of name, re-resolved
// every 20-50ms, once ready.
func srvWebDaemon(t *testing.T, srv *dnstest.Server, name, extra string) *testDaemon {
	t.Helper()
	td := webDaemon(t, srv, "dns+srv://"+name, "min_ttl: 20ms, max_ttl: 50ms", extra)
	waitReady(t, td)
	return td
}

// TestDiscoveryHostileUpstreamPoisonAcrossRemoval: a discovered upstream
// sends an extra, unsolicited answer after its first one, leaving it on the
// idle connection; then it leaves the SRV answer and comes back. Whether
// its idle connection is closed at the removal or met again after the
// return (the transport is the pool's, not the set's), the next client it
// serves must never get the extra answer.
func TestDiscoveryHostileUpstreamPoisonAcrossRemoval(t *testing.T) {
	noLeaks(t)
	var served atomic.Int64
	const poison = "HTTP/1.1 200 OK\r\nSet-Cookie: victim=1\r\nContent-Length: 0\r\n\r\n"
	bad := rawupstream.NewScripted(t, func(string) string {
		answer := "HTTP/1.1 200 OK\r\nX-Echo-Name: bad\r\nContent-Length: 2\r\n\r\nok"
		if served.Add(1) == 1 {
			return answer + poison
		}
		return answer
	})
	good := newBackend(t, "good")
	srv := dnstest.Start(t)
	const name = "_http._tcp.web.shop.test."
	both := []dnstest.SRV{srvOf(t, "bad.shop.test.", bad.Addr()), srvOf(t, "good.shop.test.", good.addr())}
	srv.SetSRV(name, 0, both...)
	td := srvWebDaemon(t, srv, name, "")
	get := func() *http.Response {
		resp, _ := td.get(td.url("edge") + "/")
		require.Equal(t, http.StatusOK, resp.StatusCode)
		return resp
	}
	require.Eventually(t, func() bool { get(); return served.Load() > 0 }, 5*time.Second, time.Millisecond,
		"the bad upstream answered once")
	srv.SetSRV(name, 0, both[1])
	require.Eventually(t, func() bool { return len(poolAddrs(t, td, "web")) == 1 }, 5*time.Second, 5*time.Millisecond)
	srv.SetSRV(name, 0, both...)
	require.Eventually(t, func() bool { return len(poolAddrs(t, td, "web")) == 2 }, 5*time.Second, 5*time.Millisecond)
	before := served.Load()
	for range 40 {
		assert.Empty(t, get().Header.Values("Set-Cookie"), "a client got the answer the upstream sent to nobody")
	}
	assert.Greater(t, served.Load(), before, "the bad upstream served again after it came back")
	assert.Greater(t, bad.Conns(), int64(1), "the poisoned connection was retired, not reused")
}

// TestDiscoveryHostileResettingUpstreamWhileTheSetFlips: one discovered
// upstream resets every connection before it answers, while the SRV answer
// swaps its healthy peers every few resolutions. Each reset is retried on
// another endpoint of the set the request started with, which stays alive
// through the swap: no GET fails. Half the attempts meet the reset, so the
// retry budget's floor is raised above the load's concurrency: the budget
// refusing a retry (its own test's subject) is not what this one watches.
func TestDiscoveryHostileResettingUpstreamWhileTheSetFlips(t *testing.T) {
	noLeaks(t)
	reset := rawupstream.New(t, func(c net.Conn, br *bufio.Reader) {
		br.ReadString('\n') // the request line arrives; nothing answers it
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetLinger(0) // a reset, not an orderly close
		}
	})
	b, c := newBackend(t, "b"), newBackend(t, "c")
	srv := dnstest.Start(t)
	const name = "_http._tcp.web.shop.test."
	rs := srvOf(t, "r.shop.test.", reset.Addr())
	sets := [][]dnstest.SRV{{rs, srvOf(t, "b.shop.test.", b.addr())}, {rs, srvOf(t, "c.shop.test.", c.addr())}}
	srv.SetSRV(name, 0, sets[0]...)
	td := srvWebDaemon(t, srv, name, `    outlier: {enabled: false}
    retries: {budget: {min_concurrency: 8}}
`)
	stats, stop := steadyLoad(td, td.url("edge")+"/", 4, nil, nil)
	defer stop()
	for i := 1; i <= 10; i++ {
		changes := metricNow(td, "sekisho_discovery_resolutions_total", "pool", "web", "result", "success")
		srv.SetSRV(name, 0, sets[i%2]...)
		require.Eventually(t, func() bool {
			return metricNow(td, "sekisho_discovery_resolutions_total", "pool", "web", "result", "success") > changes+1
		}, 5*time.Second, 5*time.Millisecond)
	}
	byName := requireNoFailures(t, stats, stop)
	assert.Positive(t, byName["b"])
	assert.Positive(t, byName["c"])
	assert.Positive(t, reset.Conns(), "the resetting upstream was tried")
	assert.Zero(t, td.metric("sekisho_upstream_retry_budget_exhausted_total", "pool", "web"))
	assert.Positive(t, td.metric("sekisho_upstream_retries_total", "pool", "web", "reason", "reset")+
		td.metric("sekisho_upstream_retries_total", "pool", "web", "reason", "connect-failure"), "resets were retried")
}

// TestDiscoveryRemovalClosesIdleConnections: an endpoint that leaves the
// SRV answer has its idle keep-alive connections closed at once, as Envoy
// drains a removed host's, not at the pool's idle timeout (90s here): a
// pod scaled away is not held open by the proxy, and a churning set leaves
// no connections behind. The endpoint that stays keeps its connection.
func TestDiscoveryRemovalClosesIdleConnections(t *testing.T) {
	noLeaks(t)
	gone, stays := newCountingUpstream(t), newCountingUpstream(t)
	srv := dnstest.Start(t)
	const name = "_http._tcp.web.shop.test."
	both := []dnstest.SRV{srvOf(t, "gone.shop.test.", gone.addr()), srvOf(t, "stays.shop.test.", stays.addr())}
	srv.SetSRV(name, 0, both...)
	td := srvWebDaemon(t, srv, name, "    timeouts: {idle: 90s}\n")
	for range 10 {
		resp, _ := td.get(td.url("edge") + "/")
		require.Equal(t, http.StatusOK, resp.StatusCode)
	}
	require.Positive(t, gone.opened.Load()-gone.closed.Load(), "the endpoint has an idle connection from the proxy")
	keptOpen := stays.opened.Load()
	require.Positive(t, keptOpen-stays.closed.Load())

	srv.SetSRV(name, 0, both[1])
	require.Eventually(t, func() bool { return len(poolAddrs(t, td, "web")) == 1 }, 5*time.Second, 5*time.Millisecond)
	require.Eventually(t, func() bool { return gone.opened.Load() == gone.closed.Load() }, 5*time.Second, 5*time.Millisecond,
		"the removed endpoint's idle connections were closed at its removal")
	goneOpened := gone.opened.Load()
	for range 5 {
		resp, _ := td.get(td.url("edge") + "/")
		require.Equal(t, http.StatusOK, resp.StatusCode)
	}
	assert.Equal(t, goneOpened, gone.opened.Load(), "no request went to the removed endpoint")
	assert.Zero(t, stays.closed.Load(), "the endpoint that stayed kept its connections")
	assert.Equal(t, keptOpen, stays.opened.Load(), "and reused them")
}
