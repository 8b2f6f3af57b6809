package balance_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"sekisho/health"
	"sekisho/proxy/balance"
	"sekisho/router"
)

// makeTargets returns one target per weight, each with the health state of
// a ready endpoint in a pool without probes.
func makeTargets(weights ...int) []balance.Target {
	reg := health.NewRegistry(nil)
	ts := make([]balance.Target, len(weights))
	for i, w := range weights {
		addr := fmt.Sprintf("10.0.0.%d:8080", i+1)
		ts[i] = balance.Target{Addr: addr, Weight: w, EP: reg.Endpoint("pool", addr)}
	}
	return ts
}

func newPolicy(t testing.TB, name string, slow time.Duration) balance.Policy {
	t.Helper()
	var key router.Key
	if name == balance.Hash {
		key = router.MustParseKey("header:X-User-ID")
	}
	p, err := balance.New(name, key, slow)
	require.NoError(t, err)
	return p
}

// picks counts where n picks of p land.
func picks(t *testing.T, p balance.Policy, ts []balance.Target, n int, r *http.Request, now time.Time, usable func(int) bool) []int {
	t.Helper()
	counts := make([]int, len(ts))
	for range n {
		i := p.Pick(ts, r, now, usable)
		if i < 0 || i >= len(ts) {
			require.FailNow(t, "pick out of range", "got %d of %d targets", i, len(ts))
		}
		counts[i]++
	}
	return counts
}

func TestNew(t *testing.T) {
	tests := []struct {
		name    string
		policy  string
		key     router.Key
		slow    time.Duration
		wantErr string
	}{
		{name: "default is round robin", policy: ""},
		{name: "round_robin", policy: balance.RoundRobin, slow: time.Minute},
		{name: "least_request", policy: balance.LeastRequest},
		{name: "random", policy: balance.Random},
		{name: "ip_hash", policy: balance.IPHash},
		{name: "hash", policy: balance.Hash, key: router.MustParseKey("cookie:uid")},
		{name: "hash without key", policy: balance.Hash, wantErr: "needs a key"},
		{name: "unknown", policy: "fastest", wantErr: `unknown balance "fastest"`},
		{name: "negative slow start", policy: balance.Random, slow: -time.Second, wantErr: "must not be negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := balance.New(tt.policy, tt.key, tt.slow)
			if tt.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.wantErr)
				assert.Nil(t, p)
				return
			}
			require.NoError(t, err)
			assert.NotNil(t, p)
		})
	}
}

func TestPickWithoutUsableTarget(t *testing.T) {
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	r.Header.Set("X-User-ID", "42")
	none := func(int) bool { return false }
	for _, name := range policyNames {
		t.Run(name, func(t *testing.T) {
			p := newPolicy(t, name, time.Minute)
			now := time.Now()
			assert.Equal(t, -1, p.Pick(nil, r, now, nil), "no targets")
			assert.Equal(t, -1, p.Pick(makeTargets(1, 1, 1), r, now, none), "none usable")
			only := func(i int) bool { return i == 2 }
			assert.Equal(t, 2, p.Pick(makeTargets(1, 1, 1), r, now, only), "the only usable one")
			i := p.Pick(makeTargets(1, 1, 1), r, now, nil)
			assert.True(t, i >= 0 && i < 3, "nil usable means all")
		})
	}
}

func TestRoundRobinEven(t *testing.T) {
	p := newPolicy(t, balance.RoundRobin, 0)
	ts := makeTargets(1, 1, 1)
	now := time.Now()
	var seq []int
	for range 3000 {
		seq = append(seq, p.Pick(ts, nil, now, nil))
	}
	counts := make([]int, 3)
	for _, i := range seq {
		counts[i]++
	}
	for i, c := range counts {
		assert.InDelta(t, 1000, c, 50, "target %d", i)
	}
	for k := 0; k+3 <= len(seq); k += 3 {
		assert.ElementsMatch(t, []int{0, 1, 2}, seq[k:k+3], "every turn visits each once")
	}
}

func TestRoundRobinSkipsUnusable(t *testing.T) {
	p := newPolicy(t, balance.RoundRobin, 0)
	ts := makeTargets(1, 1, 1)
	counts := picks(t, p, ts, 3000, nil, time.Now(), func(i int) bool { return i != 1 })
	assert.Equal(t, []int{1500, 0, 1500}, counts, "the unusable target's share is spread, not given to its neighbour")
}

func TestRoundRobinWeighted(t *testing.T) {
	tests := []struct {
		weights []int
	}{
		{[]int{1, 2, 3}},
		{[]int{5, 1, 1}},
		{[]int{10, 1}},
		{[]int{0, 1}}, // a weight below 1 counts as 1
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.weights), func(t *testing.T) {
			p := newPolicy(t, balance.RoundRobin, 0)
			ts := makeTargets(tt.weights...)
			total := 0
			for _, w := range tt.weights {
				total += max(w, 1)
			}
			n := 1000 * total
			counts := picks(t, p, ts, n, nil, time.Now(), nil)
			for i, w := range tt.weights {
				want := float64(n) * float64(max(w, 1)) / float64(total)
				assert.InDelta(t, want, counts[i], want*0.01+2, "target %d", i)
			}
		})
	}
}

func TestRoundRobinWeightedIsSmooth(t *testing.T) {
	p := newPolicy(t, balance.RoundRobin, 0)
	ts := makeTargets(5, 1, 1)
	now := time.Now()
	var seq []int
	for range 700 {
		seq = append(seq, p.Pick(ts, nil, now, nil))
	}
	for k := 0; k+7 <= len(seq); k++ {
		heavy, run, longest := 0, 0, 0
		for _, i := range seq[k : k+7] {
			if i == 0 {
				heavy++
				run++
				longest = max(longest, run)
			} else {
				run = 0
			}
		}
		require.GreaterOrEqual(t, heavy, 4, "window at %d: %v", k, seq[k:k+7])
		require.LessOrEqual(t, heavy, 6, "window at %d: %v", k, seq[k:k+7])
		require.LessOrEqual(t, longest, 4, "window at %d: %v", k, seq[k:k+7])
	}
}

func TestRoundRobinConcurrent(t *testing.T) {
	p := newPolicy(t, balance.RoundRobin, 0)
	ts := makeTargets(1, 1, 1, 1)
	now := time.Now()
	var mu sync.Mutex
	counts := make([]int, len(ts))
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			local := make([]int, len(ts))
			for range 1000 {
				local[p.Pick(ts, nil, now, nil)]++
			}
			mu.Lock()
			for i, c := range local {
				counts[i] += c
			}
			mu.Unlock()
		})
	}
	wg.Wait()
	assert.Equal(t, []int{2000, 2000, 2000, 2000}, counts, "one shared counter: every turn is taken once")
}

func TestLeastRequest(t *testing.T) {
	tests := []struct {
		name     string
		weights  []int
		inFlight []int
		want     []float64 // shares
		delta    float64
	}{
		{name: "avoids the busy endpoint", weights: []int{1, 1, 1}, inFlight: []int{0, 100, 0}, want: []float64{0.5, 0, 0.5}, delta: 0.04},
		{name: "idle pool splits by weight", weights: []int{1, 3}, inFlight: []int{0, 0}, want: []float64{0.25, 0.75}, delta: 0.03},
		{name: "load per unit of weight", weights: []int{1, 4}, inFlight: []int{2, 4}, want: []float64{0, 1}, delta: 0},
		{name: "equal load per weight keeps the weights", weights: []int{1, 2}, inFlight: []int{3, 6}, want: []float64{1.0 / 3, 2.0 / 3}, delta: 0.03},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newPolicy(t, balance.LeastRequest, 0)
			ts := makeTargets(tt.weights...)
			for i, n := range tt.inFlight {
				for range n {
					ts[i].EP.Begin()
				}
			}
			const n = 10000
			counts := picks(t, p, ts, n, nil, time.Now(), nil)
			for i, want := range tt.want {
				assert.InDelta(t, want, float64(counts[i])/n, tt.delta, "target %d: %v", i, counts)
			}
		})
	}
}

func TestRandomWeighted(t *testing.T) {
	p := newPolicy(t, balance.Random, 0)
	ts := makeTargets(1, 3)
	const n = 20000
	counts := picks(t, p, ts, n, nil, time.Now(), nil)
	assert.InDelta(t, 0.25, float64(counts[0])/n, 0.02)
	assert.InDelta(t, 0.75, float64(counts[1])/n, 0.02)
}

func TestSlowStart(t *testing.T) {
	const window = 10 * time.Second
	tests := []struct {
		name    string
		elapsed time.Duration
		want    float64 // the new endpoint's share against a warm one of equal weight
	}{
		{"before it was ready counts as the floor", -time.Second, 0.1 / 1.1},
		{"at once it gets the floor", 0, 0.1 / 1.1},
		{"a tenth in", window / 10, 0.1 / 1.1},
		{"halfway", window / 2, 0.5 / 1.5},
		{"three quarters", 3 * window / 4, 0.75 / 1.75},
		{"done", window, 0.5},
		{"long after", time.Hour, 0.5},
	}
	for _, name := range []string{balance.RoundRobin, balance.LeastRequest, balance.Random} {
		for _, tt := range tests {
			t.Run(name+"/"+tt.name, func(t *testing.T) {
				p := newPolicy(t, name, window)
				ts := makeTargets(1, 1)
				ts[0].EP = nil // warm: no ramp
				now := ts[1].EP.ReadySince().Add(tt.elapsed)
				const n = 10000
				counts := picks(t, p, ts, n, nil, now, nil)
				assert.InDelta(t, tt.want, float64(counts[1])/n, 0.025, "%v", counts)
			})
		}
	}
}

func TestPickDoesNotAllocate(t *testing.T) {
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	r.Header.Set("X-User-ID", "user-1234")
	for _, name := range policyNames {
		for _, size := range []int{3, 16, 64} {
			t.Run(fmt.Sprintf("%s/%d", name, size), func(t *testing.T) {
				p := newPolicy(t, name, time.Minute)
				ts := makeTargets(weightsOf(size, true)...)
				now := time.Now()
				usable := func(i int) bool { return ts[i].EP.Available(now) }
				allocs := testing.AllocsPerRun(200, func() { p.Pick(ts, r, now, usable) })
				assert.Zero(t, allocs)
			})
		}
	}
}

// weightsOf returns n weights, all 1 or varied from 1 to 4.
func weightsOf(n int, varied bool) []int {
	ws := make([]int, n)
	for i := range ws {
		ws[i] = 1
		if varied {
			ws[i] = 1 + i%4
		}
	}
	return ws
}

// policyNames are the names balance.New accepts.
var policyNames = []string{balance.RoundRobin, balance.LeastRequest, balance.Random, balance.IPHash, balance.Hash}

// TestRoundRobinRetriesKeepTheRotation holds round robin to the issue 16
// bug: in a pool of two whose first endpoint always fails, each request's
// retry must not take a first-attempt turn, so first attempts keep
// alternating; and weighted picks stay smooth whatever the retries do.
func TestRoundRobinRetriesKeepTheRotation(t *testing.T) {
	t.Run("equal weights", func(t *testing.T) {
		p := newPolicy(t, balance.RoundRobin, 0)
		again := p.(balance.Repicker)
		ts := makeTargets(1, 1)
		now := time.Now()
		first := make([]int, 2)
		for range 100 {
			i := p.Pick(ts, nil, now, nil)
			first[i]++
			if i == 0 { // fails: the retry goes elsewhere
				require.Equal(t, 1, again.PickAgain(ts, nil, now, func(j int) bool { return j != i }))
			}
		}
		assert.Equal(t, []int{50, 50}, first)
	})
	t.Run("weighted stays smooth", func(t *testing.T) {
		p := newPolicy(t, balance.RoundRobin, 0)
		again := p.(balance.Repicker)
		ts := makeTargets(5, 1, 1)
		now := time.Now()
		run, longest := 0, 0
		counts := make([]int, 3)
		for n := range 700 {
			i := p.Pick(ts, nil, now, nil)
			counts[i]++
			if i == 0 {
				run++
				longest = max(longest, run)
			} else {
				run = 0
			}
			if n%3 == 0 {
				again.PickAgain(ts, nil, now, func(j int) bool { return j != i })
			}
		}
		assert.InDelta(t, 500, counts[0], 3)
		assert.InDelta(t, 100, counts[1], 3)
		assert.InDelta(t, 100, counts[2], 3)
		assert.LessOrEqual(t, longest, 4, "a burst to the heavy target")
	})
}
