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
