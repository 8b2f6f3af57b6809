package proxy

import (
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"sekisho/internal/dnstest"
)

// priorities returns each endpoint's failover tier by address, as /pools
// shows it.
func priorities(t *testing.T, td *testDaemon, pool string) map[string]int {
	out := map[string]int{}
	for _, e := range poolsView(t, td)[pool].Endpoints {
		out[e.Address] = e.Priority
	}
	return out
}

// available reports whether /pools shows every one of addrs as available
// (want true) or none of them (want false).
func available(t *testing.T, td *testDaemon, pool string, want bool, addrs ...string) bool {
	byAddr := map[string]bool{}
	for _, e := range poolsView(t, td)[pool].Endpoints {
		byAddr[e.Address] = e.Available
	}
	for _, a := range addrs {
		if byAddr[a] != want {
			return false
		}
	}
	return true
}

// TestDiscoverySRVPriorityFailover: SRV priorities are failover tiers
// (RFC 2782: the lowest priority that can be reached). The backup record
// takes no traffic while a preferred endpoint is available; when readiness
// takes every preferred endpoint out, the backup takes all of it; when one
// comes back, the traffic goes back to it. No request fails throughout.
// The tiers are ranks of the name's priorities (10 and 20 here are 0 and
// 1), as /pools shows.
func TestDiscoverySRVPriorityFailover(t *testing.T) {
	noLeaks(t)
	p1, p2, backup := newBackend(t, "p1"), newBackend(t, "p2"), newBackend(t, "backup")
	srv := dnstest.Start(t)
	const name = "_http._tcp.web.shop.test."
	pref := func(target string, b *backend) dnstest.SRV {
		s := srvOf(t, target, b.addr())
		s.Priority = 10
		return s
	}
	last := srvOf(t, "backup.shop.test.", backup.addr())
	last.Priority = 20
	srv.SetSRV(name, 0, pref("p1.shop.test.", p1), pref("p2.shop.test.", p2), last)
	td := srvWebDaemon(t, srv, name, "    {{PROBES}}\n")
	base := td.url("edge") + "/"
	assert.Equal(t, map[string]int{p1.addr(): 0, p2.addr(): 0, backup.addr(): 1}, priorities(t, td, "web"))
	require.Eventually(t, func() bool { return available(t, td, "web", true, p1.addr(), p2.addr(), backup.addr()) },
		5*time.Second, 10*time.Millisecond)
	byName := burst(t, td, base, 40, 4)
	assert.Zero(t, byName["backup"], "the backup took traffic while preferred endpoints were available: %v", byName)
	assert.Positive(t, byName["p1"])
	assert.Positive(t, byName["p2"])

	stats, stop := steadyLoad(td, base, 2, nil, nil)
	defer stop()
	p1.ready.Store(false)
	p2.ready.Store(false)
	require.Eventually(t, func() bool { return available(t, td, "web", false, p1.addr(), p2.addr()) },
		5*time.Second, 10*time.Millisecond, "readiness took the preferred tier out")
	byName = burst(t, td, base, 20, 4)
	assert.Equal(t, map[string]int{"backup": 20}, byName, "the backup took all the traffic")

	p1.ready.Store(true)
	require.Eventually(t, func() bool { return available(t, td, "web", true, p1.addr()) },
		5*time.Second, 10*time.Millisecond)
	byName = burst(t, td, base, 20, 4)
	assert.Equal(t, map[string]int{"p1": 20}, byName, "the traffic went back to the preferred endpoint")
	requireNoFailures(t, stats, stop)
}

// TestDiscoverySRVPriorityRetry: without probes, a preferred endpoint that
// refuses connections stays "available" until passive ejection acts (off
// here). A request that meets it retries within its tier while the tier
// has an untried endpoint (the backup gets nothing), and on the next tier
// once it has none. A SRV name with one priority beside a static entry is
// not a backup of it: both are tier 0; nor is a static entry a backup
// because a name listed before it gives its address as one.
func TestDiscoverySRVPriorityRetry(t *testing.T) {
	noLeaks(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	dead := ln.Addr().String()
	ln.Close() // refuses connections from now on
	good, backup, static, peer := newBackend(t, "good"), newBackend(t, "backup"), newBackend(t, "static"), newBackend(t, "peer")
	srv := dnstest.Start(t)
	record := func(target, addr string, priority uint16) dnstest.SRV {
		s := srvOf(t, target, addr)
		s.Priority = priority
		return s
	}
	srv.SetSRV("_http._tcp.web.shop.test.", 0, record("dead.shop.test.", dead, 5),
		record("good.shop.test.", good.addr(), 5), record("backup.shop.test.", backup.addr(), 7))
	srv.SetSRV("_http._tcp.lone.shop.test.", 0, record("dead.shop.test.", dead, 5),
		record("backup.shop.test.", backup.addr(), 7))
	srv.SetSRV("_http._tcp.mixed.shop.test.", 0, record("peer.shop.test.", peer.addr(), 30))
	// A name that also gives a static entry's address, as a backup, and is
	// listed first.
	srv.SetSRV("_http._tcp.order.shop.test.", 0, record("peer.shop.test.", peer.addr(), 1),
		record("static.shop.test.", static.addr(), 2))
	td := startDaemon(t, edgePreamble+`    routes:
      - {name: web, match: {path_prefix: /web}, pipeline: [{proxy: web}]}
      - {name: lone, match: {path_prefix: /lone}, pipeline: [{proxy: lone}]}
      - {name: mixed, pipeline: [{proxy: mixed}]}
discovery: {resolvers: ["`+srv.Addr()+`"]}
pools:
  web:
    endpoints: ["dns+srv://_http._tcp.web.shop.test."]
    outlier: {enabled: false}
  lone:
    endpoints: ["dns+srv://_http._tcp.lone.shop.test."]
    outlier: {enabled: false}
  mixed:
    endpoints: ["`+static.addr()+`", "dns+srv://_http._tcp.mixed.shop.test."]
  order:
    endpoints: ["dns+srv://_http._tcp.order.shop.test.", "`+static.addr()+`"]
`)
	waitReady(t, td)
	byName := burst(t, td, td.url("edge")+"/web", 20, 2)
	assert.Equal(t, map[string]int{"good": 20}, byName, "retries stayed in the preferred tier")
	assert.Positive(t, td.metric("sekisho_upstream_retries_total", "pool", "web", "reason", "connect-failure"))

	byName = burst(t, td, td.url("edge")+"/lone", 20, 2)
	assert.Equal(t, map[string]int{"backup": 20}, byName, "with its tier spent, each request failed over to the backup")
	assert.Equal(t, 20.0, td.metric("sekisho_upstream_retries_total", "pool", "lone", "reason", "connect-failure"),
		"every request went to the preferred endpoint first: the backup took only retries")

	assert.Equal(t, map[string]int{static.addr(): 0, peer.addr(): 0}, priorities(t, td, "mixed"))
	byName = burst(t, td, td.url("edge")+"/", 20, 2)
	assert.Positive(t, byName["static"])
	assert.Positive(t, byName["peer"], "a SRV name with one priority shares the static entries' tier")
	assert.Equal(t, map[string]int{peer.addr(): 0, static.addr(): 0}, priorities(t, td, "order"),
		"the static entry keeps tier 0, though a name listed before it gives its address as a backup")
}
