package scatter

import (
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

func TestLatencyEstimate(t *testing.T) {
	for _, tc := range []struct {
		name    string
		samples []time.Duration
		want    time.Duration
		ok      bool
	}{
		{name: "no samples", ok: false},
		{name: "too few samples", samples: repeat(latencyMinSamples-1, 5*time.Millisecond), ok: false},
		{name: "p95 of the first samples", samples: ramp(latencyMinSamples), want: 19 * time.Millisecond, ok: true},
		{name: "p95 of a full window", samples: ramp(latencyWindow), want: 122 * time.Millisecond, ok: true},
		{name: "old samples drop out", samples: append(repeat(latencyWindow, time.Second), repeat(latencyWindow, 2*time.Millisecond)...),
			want: 2 * time.Millisecond, ok: true},
		{name: "a slowdown shows within the window", samples: append(repeat(latencyWindow, 2*time.Millisecond), repeat(latencyWindow/8, time.Second)...),
			want: time.Second, ok: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var l latency
			for _, d := range tc.samples {
				l.observe(d)
			}
			got, ok := l.estimate()
			assert.Equal(t, tc.ok, ok)
			if tc.ok {
				assert.Equal(t, tc.want, got)
			}
		})
	}
}

// ramp is 1ms, 2ms, ... n ms.
func ramp(n int) []time.Duration {
	s := make([]time.Duration, n)
	for i := range s {
		s[i] = time.Duration(i+1) * time.Millisecond
	}
	return s
}

func repeat(n int, d time.Duration) []time.Duration {
	s := make([]time.Duration, n)
	for i := range s {
		s[i] = d
	}
	return s
}

func TestLatencyConcurrentUse(t *testing.T) {
	var l latency
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 1000 {
				l.observe(3 * time.Millisecond)
				_, _ = l.estimate()
			}
		})
	}
	wg.Wait()
	got, ok := l.estimate()
	assert.True(t, ok)
	assert.Equal(t, 3*time.Millisecond, got)
}

func TestBudget(t *testing.T) {
	for _, tc := range []struct {
		name     string
		percent  float64
		requests int
		want     int // hedges granted when every request asks for one
	}{
		{name: "starts empty", percent: 10, requests: 9, want: 0},
		{name: "ten percent", percent: 10, requests: 1000, want: 100},
		{name: "fractional percent", percent: 2.5, requests: 1000, want: 25},
		{name: "every request", percent: 100, requests: 50, want: 50},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newBudget(tc.percent)
			granted := 0
			for range tc.requests {
				b.request()
				if b.take() {
					granted++
				}
			}
			assert.Equal(t, tc.want, granted)
		})
	}
}

// Unused budget is saved up to budgetBurst hedges only, so a calm spell
// does not pay for an unbounded burst later.
func TestBudgetBurstIsCapped(t *testing.T) {
	b := newBudget(10)
	for range 10_000 {
		b.request()
	}
	granted := 0
	for range 100 {
		if b.take() {
			granted++
		}
	}
	assert.Equal(t, budgetBurst, granted)
}

func TestBudgetConcurrentUse(t *testing.T) {
	b := newBudget(10)
	var wg sync.WaitGroup
	var mu sync.Mutex
	granted := 0
	for range 4 {
		wg.Go(func() {
			for range 2500 {
				b.request()
				if b.take() {
					mu.Lock()
					granted++
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	assert.LessOrEqual(t, granted, 1000)
	assert.GreaterOrEqual(t, granted, 900, "contention loses little")
}

func TestScanHelpers(t *testing.T) {
	for _, tc := range []struct {
		name  string
		obj   string
		path  []string
		want  string
		found bool
		bad   kind
	}{
		{name: "member", obj: `{"a":1,"b":[2]}`, path: []string{"b"}, want: `[2]`, found: true},
		{name: "nested with space", obj: ` { "a" : { "b" : "x,}]" } } `, path: []string{"a", "b"}, want: `"x,}]"`, found: true},
		{name: "absent", obj: `{"a":1}`, path: []string{"b"}},
		{name: "null", obj: `{"a":null}`, path: []string{"a"}},
		{name: "null on the way", obj: `{"a":null}`, path: []string{"a", "b"}},
		{name: "scalar on the way", obj: `{"a":"s"}`, path: []string{"a", "b"}, bad: kindString},
		{name: "escaped name", obj: `{"\u0061\"":true}`, path: []string{`a"`}, want: `true`, found: true},
		{name: "key inside a string is not a member", obj: `{"x":"\"a\":1","a":2}`, path: []string{"a"}, want: `2`, found: true},
		{name: "last duplicate wins", obj: `{"a":1,"a":{"b":2}}`, path: []string{"a", "b"}, want: `2`, found: true},
		{name: "truncated input stays in bounds", obj: `{"a":[1,{"b":"`, path: []string{"a"}, want: `[1,{"b":"`, found: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, found, bad, _ := walk([]byte(tc.obj), tc.path)
			assert.Equal(t, tc.found, found)
			assert.Equal(t, tc.bad, bad)
			assert.Equal(t, tc.want, string(v))
		})
	}
}

func TestCompareIntFloat(t *testing.T) {
	for _, tc := range []struct {
		i    int64
		f    float64
		want int
	}{
		{1, 1.0, 0},
		{1, 1.5, -1},
		{2, 1.5, 1},
		{-2, -1.5, -1},
		{-1, -1.5, 1},
		{9007199254740993, 9007199254740992.0, 1},
		{9223372036854775807, 9223372036854775808.0, -1},
		{-9223372036854775808, -9223372036854775808.0, 0},
		{-9223372036854775808, -1e19, 1},
	} {
		assert.Equal(t, tc.want, compareIntFloat(tc.i, tc.f), "%d vs %v", tc.i, tc.f)
	}
}
