package proxy

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"sekisho/internal/dnstest"
	"sekisho/proxy/certs/certstest"
)

// Tests of pools whose endpoints come from DNS: a real miekg/dns server on
// loopback whose records the test changes, real backends, the real daemon.

// dnsBackend is a backend for discovery tests: it answers with its name
// (in X-Echo-Name, and as a scatter leaf would: a JSON object with a
// results array), counts its probes apart from its traffic, and holds GET
// /slow until release is closed.
type dnsBackend struct {
	name    string
	addr    string
	hits    atomic.Int64
	probes  atomic.Int64
	held    atomic.Int64
	release chan struct{}
}

func (b *dnsBackend) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/ready":
		b.probes.Add(1)
		io.WriteString(w, "ready")
		return
	case "/slow":
		b.held.Add(1)
		select {
		case <-b.release:
		case <-r.Context().Done():
			return
		}
	}
	b.hits.Add(1)
	w.Header().Set("X-Echo-Name", b.name)
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, `{"results":[{"id":%q}]}`, b.name)
}

// serveDNSBackend serves a dnsBackend named name on ln until the test ends.
func serveDNSBackend(t *testing.T, name string, ln net.Listener) *dnsBackend {
	b := &dnsBackend{name: name, addr: ln.Addr().String(), release: make(chan struct{})}
	serveHeld(t, ln, b, b.release)
	return b
}

// serveHeld serves h on ln until the test ends, when it first closes
// release (unless the test did) so that held requests end.
func serveHeld(t *testing.T, ln net.Listener, h http.Handler, release chan struct{}) {
	srv := &http.Server{Handler: h}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(ln)
	}()
	t.Cleanup(func() {
		select {
		case <-release:
		default:
			close(release)
		}
		srv.Close()
		<-done
	})
}

// loopbackListeners listens on 127.0.0.1 .. 127.0.0.n, all on one port, as
// the pods behind a headless Service are: an A record names each.
func loopbackListeners(t *testing.T, n int) (port int, lns []net.Listener) {
	t.Helper()
	for range 50 {
		first, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		port = first.Addr().(*net.TCPAddr).Port
		lns = []net.Listener{first}
		for i := 2; i <= n; i++ {
			ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.%d:%d", i, port))
			if err != nil {
				break
			}
			lns = append(lns, ln)
		}
		if len(lns) == n {
			return port, lns
		}
		for _, ln := range lns {
			ln.Close()
		}
	}
	t.Fatal("no port free on every loopback address")
	return 0, nil
}

// backendsOnOnePort starts n dnsBackends b1..bn on loopbackListeners.
func backendsOnOnePort(t *testing.T, n int) (port int, bs []*dnsBackend) {
	t.Helper()
	port, lns := loopbackListeners(t, n)
	for i, ln := range lns {
		bs = append(bs, serveDNSBackend(t, fmt.Sprintf("b%d", i+1), ln))
	}
	return port, bs
}

// loadStats is what a steady load saw.
type loadStats struct {
	mu       sync.Mutex
	ok       int
	failures []string
	byName   map[string]int
}

// webDaemon starts a daemon whose one route proxies to pool web, whose one
// entry is endpoint (dns:// or dns+srv://), resolved by srv with the
// discovery settings disc besides the resolver ("" for none); extra adds
// lines to the pool, each indented by four spaces ({{PROBES}} for the
// tests' probes).
func webDaemon(t *testing.T, srv *dnstest.Server, endpoint, disc, extra string) *testDaemon {
	t.Helper()
	if disc != "" {
		disc = ", " + disc
	}
	return startPoolDaemon(t, edgePreamble+`    routes:
      - {name: all, pipeline: [{proxy: web}]}
pools:
  web:
    endpoints: ["`+endpoint+`"]
    discovery: {resolvers: ["`+srv.Addr()+`"]`+disc+`}
`+extra)
}

// waitServed waits until each of names has served more than n requests of
// the load from now on.
func (s *loadStats) waitServed(t *testing.T, n int, names []string, msgAndArgs ...any) {
	t.Helper()
	_, _, before := s.snapshot()
	require.Eventually(t, func() bool {
		_, _, now := s.snapshot()
		for _, name := range names {
			if now[name] <= before[name]+n {
				return false
			}
		}
		return true
	}, 5*time.Second, 5*time.Millisecond, msgAndArgs...)
}

func (s *loadStats) snapshot() (ok int, failures []string, byName map[string]int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	byName = map[string]int{}
	for k, v := range s.byName {
		byName[k] = v
	}
	return s.ok, append([]string(nil), s.failures...), byName
}

// steadyLoad sends GETs of url from workers goroutines until the returned
// stop is called; each request's headers come from headers(n), n counting
// the requests of all workers. stop waits for the workers.
func steadyLoad(td *testDaemon, url string, workers int, headers func(n int64) http.Header, seen func(h http.Header, name string)) (*loadStats, func()) {
	stats := &loadStats{byName: map[string]int{}}
	var n atomic.Int64
	done := make(chan struct{})
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-done:
					return
				default:
				}
				req := mustRequest(http.MethodGet, url, nil)
				if headers != nil {
					req.Header = headers(n.Add(1))
				}
				o := fetch(td, req)
				stats.mu.Lock()
				switch {
				case o.err != nil:
					stats.failures = append(stats.failures, o.err.Error())
				case o.status != http.StatusOK:
					stats.failures = append(stats.failures, fmt.Sprintf("status %d", o.status))
				default:
					stats.ok++
					stats.byName[o.name]++
				}
				stats.mu.Unlock()
				if seen != nil && o.err == nil && o.status == http.StatusOK {
					seen(req.Header, o.name)
				}
			}
		}()
	}
	var once sync.Once
	return stats, func() { once.Do(func() { close(done); wg.Wait() }) }
}

// poolsView fetches GET /pools.
func poolsView(t *testing.T, td *testDaemon) map[string]poolView {
	t.Helper()
	resp, err := td.client.Get(td.admin() + "/pools")
	require.NoError(t, err)
	defer resp.Body.Close()
	var pools []poolView
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&pools))
	out := map[string]poolView{}
	for _, p := range pools {
		out[p.Pool] = p
	}
	return out
}

// waitNotReady waits until /readyz answers 503 with a reason that contains
// want, and returns the reason.
func waitNotReady(t *testing.T, td *testDaemon, want string) string {
	t.Helper()
	var why string
	require.Eventually(t, func() bool {
		resp, err := td.client.Get(td.admin() + "/readyz")
		if err != nil {
			return false
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		why = string(body)
		return resp.StatusCode == http.StatusServiceUnavailable && strings.Contains(why, want)
	}, 5*time.Second, 10*time.Millisecond, "readyz: %s", why)
	return why
}

func waitReady(t *testing.T, td *testDaemon) {
	t.Helper()
	require.Eventually(t, func() bool {
		resp, err := td.client.Get(td.admin() + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, 10*time.Second, 10*time.Millisecond, "/readyz never turned 200")
}

// TestDiscoveryFollowsARecords is the life of a dns:// pool: three A
// records spread traffic over three backends; a fourth record brings
// traffic to its backend within TTL + 1s; a removed record drains (its
// in-flight slow request completes, and it takes no new one); a DNS server
// gone silent leaves the last set serving. A steady load runs through it
// all and no request fails. The query timeout (1s) is far above a loopback
// answer even on a loaded machine: a spurious timeout before the silent
// phase would delay the changes past TTL + 1s (its retry waits min_ttl)
// and log a second failure.
func TestDiscoveryFollowsARecords(t *testing.T) {
	noLeaks(t)
	dns := dnstest.Start(t)
	port, bs := backendsOnOnePort(t, 4)
	const name = "web.shop.test."
	const ttl = 1
	dns.SetA(name, ttl, "127.0.0.1", "127.0.0.2", "127.0.0.3")
	td := startPoolDaemon(t, edgePreamble+`    routes:
      - {name: all, pipeline: [{proxy: web}]}
discovery: {resolvers: ["`+dns.Addr()+`"], timeout: 1s}
pools:
  web:
    endpoints: ["dns://web.shop.test:`+strconv.Itoa(port)+`"]
    {{PROBES}}
`)
	waitReady(t, td)
	base := td.url("edge")
	byName := burst(t, td, base+"/", 60, 6)
	assert.Equal(t, map[string]int{"b1": 20, "b2": 20, "b3": 20}, byName, "round robin over the three A records")
	web := poolsView(t, td)["web"]
	require.Len(t, web.Discovery, 1)
	assert.Equal(t, "dns://web.shop.test:"+strconv.Itoa(port), web.Discovery[0].Target)
	assert.True(t, web.Discovery[0].Resolved)
	for _, e := range web.Endpoints {
		assert.Equal(t, web.Discovery[0].Target, e.Source, "endpoint %s", e.Address)
	}
	assert.Equal(t, 3.0, td.metric("sekisho_discovery_endpoints", "pool", "web"))

	stats, stop := steadyLoad(td, base+"/", 4, nil, nil)
	defer stop()

	// A fourth record: its backend has traffic within TTL + 1s.
	added := time.Now()
	dns.SetA(name, ttl, "127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4")
	require.Eventually(t, func() bool { return bs[3].hits.Load() > 0 }, (ttl+1)*time.Second, 5*time.Millisecond,
		"the fourth backend had no traffic within TTL + 1s")
	t.Logf("DNS change to traffic: %s", time.Since(added).Round(time.Millisecond))

	// A slow request on each backend (round robin under the steady load
	// places them where it will: send until each has one); then b2's
	// record goes.
	slow := make(chan outcome, 64)
	sent := 0
	heldOnEach := func() bool {
		for _, b := range bs {
			if b.held.Load() == 0 {
				return false
			}
		}
		return true
	}
	for !heldOnEach() {
		require.Less(t, sent, 64, "slow requests never reached every backend")
		go func() { slow <- fetch(td, mustRequest(http.MethodGet, base+"/slow", nil)) }()
		sent++
		require.Eventually(t, func() bool {
			var held int64
			for _, b := range bs {
				held += b.held.Load()
			}
			return held == int64(sent)
		}, 5*time.Second, time.Millisecond)
	}
	dns.SetA(name, ttl, "127.0.0.1", "127.0.0.3", "127.0.0.4")
	require.Eventually(t, func() bool {
		return metricNow(td, "sekisho_discovery_endpoints", "pool", "web") == 3
	}, (ttl+1)*time.Second, 5*time.Millisecond, "the removed record leaves the pool")
	// A request picked for b2 before the change may reach its handler
	// after it: count b2's requests once the load has moved on to the
	// new set, then watch a second stretch of it.
	stats.waitServed(t, 30, []string{"b1", "b4"})
	removedHits := bs[1].hits.Load()
	stats.waitServed(t, 30, []string{"b1", "b4"})
	assert.Equal(t, removedHits, bs[1].hits.Load(), "a removed endpoint takes no new request")
	_, gone := endpointState(td, "web", bs[1].addr)
	assert.False(t, gone, "/pools no longer lists the removed endpoint")
	for _, b := range bs {
		close(b.release)
	}
	for range sent {
		o := <-slow
		assert.NoError(t, o.err)
		assert.Equal(t, http.StatusOK, o.status, "every slow request completes, the removed endpoint's included")
	}

	// The DNS server goes silent: the last set keeps serving.
	dns.SetSilent(true)
	failedBefore := td.metric("sekisho_discovery_resolutions_total", "pool", "web", "result", "timeout")
	require.Eventually(t, func() bool {
		return metricNow(td, "sekisho_discovery_resolutions_total", "pool", "web", "result", "timeout") > failedBefore
	}, 5*time.Second, 10*time.Millisecond, "a resolution times out")
	stats.waitServed(t, 20, []string{"b1", "b3", "b4"}, "the last set serves on")
	web = poolsView(t, td)["web"]
	require.Len(t, web.Discovery, 1)
	assert.Contains(t, web.Discovery[0].LastError, "did not answer in time")
	assert.Len(t, web.Endpoints, 3)
	ok, failures, _ := stats.snapshot()
	stop()
	assert.Empty(t, failures, "no request failed during the changes (%d succeeded)", ok)
	assert.Len(t, td.logs.FilterMessage("discovery failed; keeping the last good set").All(), 1,
		"a failure is logged once, not at every retry")
}

// TestDiscoveryNeverResolvedIsNotReady starts with a name that does not
// exist: /readyz is 503 and says why, the pool answers 503, and the name
// appearing makes both ready.
func TestDiscoveryNeverResolvedIsNotReady(t *testing.T) {
	noLeaks(t)
	dns := dnstest.Start(t)
	b := newBackend(t, "b")
	host, port, _ := net.SplitHostPort(b.addr())
	td := webDaemon(t, dns, "dns://web.shop.test:"+port, "min_ttl: 100ms, max_ttl: 200ms", "")
	why := waitNotReady(t, td, "NXDOMAIN")
	assert.Contains(t, why, `pool "web"`)
	resp, _ := td.get(td.url("edge") + "/")
	assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	web := poolsView(t, td)["web"]
	require.Len(t, web.Discovery, 1)
	assert.False(t, web.Discovery[0].Resolved)
	assert.Empty(t, web.Endpoints)

	dns.SetA("web.shop.test.", 1, host)
	waitReady(t, td)
	resp, body := td.get(td.url("edge") + "/")
	assert.Equal(t, http.StatusOK, resp.StatusCode, body)
	// A resolution is counted after its set is applied, so possibly after
	// /readyz turned 200; the NXDOMAINs before it were counted already.
	require.Eventually(t, func() bool {
		return metricNow(td, "sekisho_discovery_resolutions_total", "pool", "web", "result", "success") > 0
	}, 5*time.Second, 5*time.Millisecond, "the successful resolution is counted")
	assert.Positive(t, td.metric("sekisho_discovery_resolutions_total", "pool", "web", "result", "nxdomain"))
}

// TestDiscoveryHTTPSEndpoints: a pool with a tls section speaks https to
// the endpoints it discovers, its readiness probes included.
func TestDiscoveryHTTPSEndpoints(t *testing.T) {
	noLeaks(t)
	dir := t.TempDir()
	ca := certstest.NewCA(t)
	caFile := ca.WriteCAFile(t, dir)
	client := ca.IssueClient(t, dir, "sekisho-proxy")
	up := tlsUpstream(t, ca, dir)
	host, port, _ := net.SplitHostPort(strings.TrimPrefix(up.URL, "https://"))
	dns := dnstest.Start(t)
	dns.SetA("secure.shop.test.", 1, host)
	td := startDaemon(t, fmt.Sprintf(edgePreamble+`    routes:
      - {name: all, pipeline: [{proxy: secure}]}
pools:
  secure:
    endpoints: ["dns://secure.shop.test:%s"]
    discovery: {resolvers: [%q]}
    tls: {ca_file: %q, server_name: upstream.internal, cert_file: %q, key_file: %q}
    readiness: {path: /, interval: 100ms, rise: 1}
`, port, dns.Addr(), caFile, client.CertFile, client.KeyFile))
	waitReady(t, td)
	resp, body := td.get(td.url("edge") + "/")
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, "client=sekisho-proxy proto=1", body)
	e, ok := endpointState(td, "secure", net.JoinHostPort(host, port))
	require.True(t, ok)
	require.NotNil(t, e.LastProbe)
	assert.True(t, e.LastProbe.OK, "the probe spoke https: %+v", e.LastProbe)
}

// TestDiscoveryNewEndpointSlowStarts: an endpoint discovered into a pool
// with slow_start enters with a fraction of its share.
func TestDiscoveryNewEndpointSlowStarts(t *testing.T) {
	noLeaks(t)
	const ramp = 4 * time.Second
	dns := dnstest.Start(t)
	port, bs := backendsOnOnePort(t, 4)
	dns.SetA("web.shop.test.", 1, "127.0.0.1", "127.0.0.2", "127.0.0.3")
	td := webDaemon(t, dns, "dns://web.shop.test:"+strconv.Itoa(port), "", "    slow_start: "+ramp.String()+"\n")
	waitReady(t, td)
	base := td.url("edge")
	// The first three were new at startup too: wait until their ramp is
	// over, then compare the newcomer with them over the same window.
	for _, b := range bs[:3] {
		require.Eventually(t, func() bool {
			e, ok := endpointState(td, "web", b.addr)
			return ok && !e.ReadySince.IsZero() && time.Since(e.ReadySince) > ramp
		}, 2*ramp+2*time.Second, 50*time.Millisecond)
	}
	// The load runs from before the newcomer appears; each answer is
	// stamped with when its request was sent and when it came back. Only
	// those sent after the newcomer was ready and answered within the
	// first quarter of its ramp count: picked there, the newcomer weighs
	// at most a quarter of an old endpoint, so it gets less than a third
	// of an old one's requests however a slow machine spaces them. (A
	// count of requests would run into the later ramp, where the newcomer
	// rightly takes more.)
	type answer struct {
		sent, back time.Time
		name       string
	}
	var mu sync.Mutex
	var answers []answer
	stats, stop := steadyLoad(td, base+"/", 4, func(int64) http.Header {
		return http.Header{"X-Sent": {time.Now().Format(time.RFC3339Nano)}}
	}, func(h http.Header, name string) {
		sent, err := time.Parse(time.RFC3339Nano, h.Get("X-Sent"))
		if err != nil {
			return
		}
		mu.Lock()
		answers = append(answers, answer{sent: sent, back: time.Now(), name: name})
		mu.Unlock()
	})
	defer stop()
	dns.SetA("web.shop.test.", 1, "127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4")
	var since time.Time
	require.Eventually(t, func() bool {
		e, ok := endpointState(td, "web", bs[3].addr)
		since = e.ReadySince
		return ok && !since.IsZero()
	}, 5*time.Second, 10*time.Millisecond)
	end := since.Add(ramp / 4)
	require.Eventually(t, func() bool { return time.Now().After(end) }, ramp, 10*time.Millisecond)
	stop()
	early := map[string]int{}
	for _, a := range answers {
		if !a.sent.Before(since) && a.back.Before(end) {
			early[a.name]++
		}
	}
	ok, failures, _ := stats.snapshot()
	assert.Empty(t, failures, "%d succeeded", ok)
	n := 0
	for _, c := range early {
		n += c
	}
	newcomer, old := early["b4"], early["b1"]
	t.Logf("first quarter of the ramp: %v", early)
	require.GreaterOrEqual(t, n, 40, "too few requests in the first quarter of the ramp to judge: %v", early)
	assert.Positive(t, newcomer, "the new endpoint takes some traffic at once")
	assert.Less(t, newcomer*3, old, "the new endpoint ramps up: %d requests against %d for an old one", newcomer, old)
}
