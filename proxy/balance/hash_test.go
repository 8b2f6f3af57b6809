package balance_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"sekisho/proxy/balance"
	"sekisho/router"
)

// fromIP returns a request from ip, as the listener would have resolved it
// (through router.Info) or as the bare peer address.
func fromIP(ip string, viaInfo bool) *http.Request {
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	if viaInfo {
		r.RemoteAddr = "10.255.0.1:4000" // a trusted proxy in front
		return router.WithInfo(r, &router.Info{ClientIP: ip})
	}
	r.RemoteAddr = ip + ":51000"
	return r
}

func clientIPs(n int) []string {
	ips := make([]string, n)
	for i := range ips {
		ips[i] = fmt.Sprintf("198.51.%d.%d", i/250, i%250+1)
	}
	return ips
}

// place returns, for each request, the address of the target it goes to.
func place(t *testing.T, p balance.Policy, ts []balance.Target, reqs []*http.Request, usable func(int) bool) []string {
	t.Helper()
	now := time.Now()
	out := make([]string, len(reqs))
	for k, r := range reqs {
		i := p.Pick(ts, r, now, usable)
		require.GreaterOrEqual(t, i, 0)
		out[k] = ts[i].Addr
	}
	return out
}

func TestIPHashSticks(t *testing.T) {
	for _, viaInfo := range []bool{false, true} {
		t.Run(fmt.Sprintf("resolved by listener %v", viaInfo), func(t *testing.T) {
			p := newPolicy(t, balance.IPHash, time.Minute)
			ts := makeTargets(1, 1, 1, 1)
			for _, ip := range []string{"192.0.2.1", "192.0.2.2", "2001:db8::1"} {
				first := p.Pick(ts, fromIP(ip, viaInfo), time.Now(), nil)
				for range 20 {
					assert.Equal(t, first, p.Pick(ts, fromIP(ip, viaInfo), time.Now(), nil), ip)
				}
			}
		})
	}
	t.Run("follows the address, not the list order", func(t *testing.T) {
		p := newPolicy(t, balance.IPHash, 0)
		ts := makeTargets(1, 1, 1, 1)
		reversed := slices.Clone(ts)
		slices.Reverse(reversed)
		var reqs []*http.Request
		for _, ip := range clientIPs(200) {
			reqs = append(reqs, fromIP(ip, false))
		}
		assert.Equal(t, place(t, p, ts, reqs, nil), place(t, p, reversed, reqs, nil))
	})
}

func TestIPHashSpread(t *testing.T) {
	p := newPolicy(t, balance.IPHash, 0)
	ts := makeTargets(1, 1, 1, 1)
	counts := map[string]int{}
	ips := clientIPs(1000)
	for _, ip := range ips {
		i := p.Pick(ts, fromIP(ip, false), time.Now(), nil)
		counts[ts[i].Addr]++
	}
	require.Len(t, counts, 4)
	mean := float64(len(ips)) / 4
	for addr, c := range counts {
		assert.LessOrEqual(t, float64(c), 1.2*mean, "%s has %d of %d", addr, c, len(ips))
	}
}

func TestIPHashMovesOnlyTheLostEndpointsClients(t *testing.T) {
	p := newPolicy(t, balance.IPHash, 0)
	ts := makeTargets(1, 1, 1, 1)
	var reqs []*http.Request
	for _, ip := range clientIPs(1000) {
		reqs = append(reqs, fromIP(ip, false))
	}
	before := place(t, p, ts, reqs, nil)

	down := ts[2].Addr
	during := place(t, p, ts, reqs, func(i int) bool { return ts[i].Addr != down })
	moved := 0
	for k := range reqs {
		if before[k] == down {
			assert.NotEqual(t, down, during[k])
			moved++
			continue
		}
		assert.Equal(t, before[k], during[k], "client %d was not on the lost endpoint and must stay", k)
	}
	assert.Greater(t, moved, 150, "the lost endpoint had its share of clients")

	after := place(t, p, ts, reqs, nil)
	assert.Equal(t, before, after, "every client returns once the endpoint is back")
}

func TestHashByHeader(t *testing.T) {
	p := newPolicy(t, balance.Hash, 0)
	ts := makeTargets(1, 1, 1)
	user := func(id string) *http.Request {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.RemoteAddr = "192.0.2.9:1000" // one client IP for every user
		if id != "" {
			r.Header.Set("X-User-ID", id)
		}
		return r
	}

	counts := make([]int, len(ts))
	for k := range 900 {
		id := fmt.Sprintf("user-%d", k)
		first := p.Pick(ts, user(id), time.Now(), nil)
		require.Equal(t, first, p.Pick(ts, user(id), time.Now(), nil), "same key, same endpoint")
		counts[first]++
	}
	for i, c := range counts {
		assert.InDelta(t, 300, c, 60, "target %d: %v", i, counts)
	}

	t.Run("a request without the key is spread at random", func(t *testing.T) {
		seen := map[int]bool{}
		for range 200 {
			seen[p.Pick(ts, user(""), time.Now(), nil)] = true
		}
		assert.Len(t, seen, 3)
	})
}

func TestHashWeighted(t *testing.T) {
	p := newPolicy(t, balance.Hash, 0)
	ts := makeTargets(1, 1, 2)
	counts := make([]int, len(ts))
	const n = 8000
	for k := range n {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.Header.Set("X-User-ID", fmt.Sprint(k))
		counts[p.Pick(ts, r, time.Now(), nil)]++
	}
	assert.InDelta(t, 0.25, float64(counts[0])/n, 0.03, "%v", counts)
	assert.InDelta(t, 0.25, float64(counts[1])/n, 0.03, "%v", counts)
	assert.InDelta(t, 0.50, float64(counts[2])/n, 0.03, "%v", counts)
}

func TestHashIgnoresSlowStart(t *testing.T) {
	withRamp := newPolicy(t, balance.IPHash, time.Hour)
	without := newPolicy(t, balance.IPHash, 0)
	ts := makeTargets(1, 1, 1)
	var reqs []*http.Request
	for _, ip := range clientIPs(300) {
		reqs = append(reqs, fromIP(ip, false))
	}
	assert.Equal(t, place(t, without, ts, reqs, nil), place(t, withRamp, ts, reqs, nil),
		"endpoints a minute into an hour-long ramp keep their keys")
}
