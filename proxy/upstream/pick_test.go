package upstream

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime/debug"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"sekisho/health"
	"sekisho/proxy/balance"
	"sekisho/router"
)

// raceEnabled reports whether the test binary was built with -race, whose
// sync.Pool drops a quarter of what is put back on purpose.
func raceEnabled() bool {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return false
	}
	for _, s := range bi.Settings {
		if s.Key == "-race" {
			return s.Value == "true"
		}
	}
	return false
}

func TestPickDoesNotAllocate(t *testing.T) {
	reg := health.NewRegistry(nil)
	build := func(policy string, tiered bool) *Pool {
		p := &Pool{name: policy}
		set := &members{tiered: tiered}
		for i := 0; i < 4; i++ {
			addr := fmt.Sprintf("127.0.0.1:%d", 9000+i)
			set.targets = append(set.targets, balance.Target{Addr: addr, Weight: 1, EP: reg.Endpoint(policy, addr)})
			set.all = append(set.all, member{addr: addr, priority: i / 2})
		}
		p.set.Store(set)
		var err error
		p.policy, err = balance.New(policy, router.Key{}, time.Second)
		require.NoError(t, err)
		p.again, _ = p.policy.(balance.Repicker)
		return p
	}
	req := httptest.NewRequest(http.MethodGet, "http://x/", nil)
	req.RemoteAddr = "192.0.2.1:1234"
	tried := &router.Tried{}
	tried.Add("127.0.0.1:9001")
	hedged := router.WithInfo(req, &router.Info{ClientIP: "192.0.2.1", Tried: tried})
	// Under -race sync.Pool drops a quarter of its puts, so a pick refills
	// the pool every fourth time on average: below one allocation a pick.
	limit := 0.0
	if raceEnabled() {
		limit = 1
	}
	for _, tc := range []struct {
		policy string
		tiered bool // two failover tiers of two endpoints
	}{{balance.RoundRobin, false}, {balance.LeastRequest, false}, {balance.Random, false}, {balance.IPHash, false},
		{balance.RoundRobin, true}, {balance.IPHash, true}} {
		policy, p := tc.policy, build(tc.policy, tc.tiered)
		for _, r := range []*http.Request{req, hedged} {
			info := router.InfoFrom(r)
			allocs := testing.AllocsPerRun(1000, func() {
				pk := p.picker()
				if pk.pick(r, info) < 0 {
					panic("no endpoint")
				}
				pk.exclude(0)
				pk.pick(r, info)
				pk.release()
			})
			assert.LessOrEqual(t, allocs, limit, "%s (tiered %v), shared tried set %v: %v allocations per request", policy, tc.tiered, info != nil, allocs)
		}
	}
}

// tieredPool is a pool over a primary (10.0.0.1, tier 0) and a backup
// (10.0.0.2, tier 1), for picks only.
func tieredPool(reg *health.Registry, policy balance.Policy) (*Pool, *members) {
	p := &Pool{name: "web", policy: policy}
	set := &members{tiered: true}
	for i, addr := range []string{"10.0.0.1:80", "10.0.0.2:80"} {
		set.targets = append(set.targets, balance.Target{Addr: addr, Weight: 1, EP: reg.Endpoint("web", addr)})
		set.all = append(set.all, member{addr: addr, priority: i})
	}
	p.set.Store(set)
	p.again, _ = policy.(balance.Repicker)
	return p, set
}

// A hedge (another attempt of the same logical request is under way on
// the primary) stays in the primary's tier: it shares the primary rather
// than send the backup traffic while the primary is available.
func TestPickHedgeStaysInItsTier(t *testing.T) {
	rr, err := balance.New(balance.RoundRobin, router.Key{}, 0)
	require.NoError(t, err)
	p, set := tieredPool(health.NewRegistry(nil), rr)
	tried := &router.Tried{}
	tried.Add("10.0.0.1:80")
	info := &router.Info{Tried: tried}
	pk := p.picker()
	defer pk.release()
	i := pk.pick(router.WithInfo(httptest.NewRequest(http.MethodGet, "http://x/", nil), info), info)
	require.GreaterOrEqual(t, i, 0)
	assert.Equal(t, "10.0.0.1:80", set.targets[i].Addr, "the hedge went to the backup tier")
}

// ejectOnPick stands for a concurrent failure that ejects ep between the
// picker's look for the preferred tier and the policy's own look.
type ejectOnPick struct {
	balance.Policy
	ep    *health.Endpoint
	armed bool
}

func (e *ejectOnPick) Pick(ts []balance.Target, r *http.Request, now time.Time, usable func(int) bool) int {
	if e.armed {
		e.armed = false
		e.ep.ObserveResult(false)
	}
	return e.Policy.Pick(ts, r, now, usable)
}

// The primary is ejected between the two looks: the pick finds the backup
// instead of answering "no endpoint".
func TestPickTierEmptiedUnderwayFallsToTheNext(t *testing.T) {
	reg := health.NewRegistry(nil)
	reg.Group("web").SetOutlier(health.Outlier{ConsecutiveFailures: 1, Eject: time.Minute, MaxEject: time.Minute, MaxEjectedPercent: 100})
	rr, err := balance.New(balance.RoundRobin, router.Key{}, 0)
	require.NoError(t, err)
	policy := &ejectOnPick{Policy: rr, armed: true}
	p, set := tieredPool(reg, policy)
	policy.ep = set.targets[0].EP
	pk := p.picker()
	defer pk.release()
	i := pk.pick(httptest.NewRequest(http.MethodGet, "http://x/", nil), nil)
	require.GreaterOrEqual(t, i, 0, "no endpoint, though the backup is available")
	assert.Equal(t, "10.0.0.2:80", set.targets[i].Addr)
	assert.False(t, set.targets[0].EP.Available(time.Now()), "the primary was ejected under the pick")
}

// Panic mode (no endpoint available) tries the primary tier first.
func TestPickPanicModeKeepsTiers(t *testing.T) {
	reg := health.NewRegistry(nil)
	reg.Group("web").SetOutlier(health.Outlier{ConsecutiveFailures: 1, Eject: time.Minute, MaxEject: time.Minute, MaxEjectedPercent: 100})
	rr, err := balance.New(balance.RoundRobin, router.Key{}, 0)
	require.NoError(t, err)
	p, set := tieredPool(reg, rr)
	p.panicMode = true
	for _, tg := range set.targets {
		tg.EP.ObserveResult(false)
	}
	for range 4 {
		pk := p.picker()
		i := pk.pick(httptest.NewRequest(http.MethodGet, "http://x/", nil), nil)
		require.GreaterOrEqual(t, i, 0)
		assert.Equal(t, "10.0.0.1:80", set.targets[i].Addr)
		pk.exclude(i)
		j := pk.pick(httptest.NewRequest(http.MethodGet, "http://x/", nil), nil)
		require.GreaterOrEqual(t, j, 0)
		assert.Equal(t, "10.0.0.2:80", set.targets[j].Addr, "the retry went to the next tier")
		pk.release()
	}
}

// BenchmarkPickTiered measures a pick in a set as a hostile SRV answer can
// make it: max_endpoints (1024) endpoints, each its own priority, so the
// picker scans the whole set for the preferred tier at every pick; beside
// it, the same set in one tier. (A set this large costs the balance policy
// one scratch allocation either way.)
func BenchmarkPickTiered(b *testing.B) {
	for _, tiered := range []bool{false, true} {
		b.Run(fmt.Sprintf("tiered=%v", tiered), func(b *testing.B) {
			reg := health.NewRegistry(nil)
			rr, err := balance.New(balance.RoundRobin, router.Key{}, 0)
			require.NoError(b, err)
			p := &Pool{name: "web", policy: rr}
			set := &members{tiered: tiered}
			for i := range 1024 {
				addr := fmt.Sprintf("10.0.%d.%d:80", i/256, i%256)
				set.targets = append(set.targets, balance.Target{Addr: addr, Weight: 1, EP: reg.Endpoint("web", addr)})
				set.all = append(set.all, member{addr: addr, priority: 1023 - i}) // the preferred is last
			}
			p.set.Store(set)
			req := httptest.NewRequest(http.MethodGet, "http://x/", nil)
			b.ReportAllocs()
			for b.Loop() {
				pk := p.picker()
				if i := pk.pick(req, nil); i < 0 || tiered && i != 1023 {
					b.Fatal("not the preferred tier")
				}
				pk.release()
			}
		})
	}
}
