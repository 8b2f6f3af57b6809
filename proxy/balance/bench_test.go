package balance_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"sekisho/proxy/balance"
)

// BenchmarkPick measures one Pick of each policy over pools of 3 and 16
// endpoints of varied weights, with usable checking availability the way a
// pool does, and a one-minute slow start (dormant: the endpoints are older).
// The figure to compare against is an upstream round trip, tens of
// microseconds on loopback.
func BenchmarkPick(b *testing.B) {
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	r.RemoteAddr = "198.51.100.7:43210"
	r.Header.Set("X-User-ID", "user-1234")
	for _, name := range policyNames {
		for _, size := range []int{3, 16} {
			b.Run(fmt.Sprintf("%s/%d", name, size), func(b *testing.B) {
				p := newPolicy(b, name, time.Minute)
				ts := makeTargets(weightsOf(size, true)...)
				now := time.Now().Add(time.Hour)
				usable := func(i int) bool { return ts[i].EP.Available(now) }
				b.ReportAllocs()
				for b.Loop() {
					p.Pick(ts, r, now, usable)
				}
			})
		}
	}
}

// BenchmarkUsable compares two ways for a pool to hand Pick its per-request
// usable function. A closure that captures per-request state escapes
// through the Policy interface and costs one allocation per pick; a func
// value bound once to a pooled object costs none.
func BenchmarkUsable(b *testing.B) {
	p := newPolicy(b, balance.RoundRobin, 0)
	ts := makeTargets(weightsOf(3, false)...)
	b.Run("closure", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			now := time.Now()
			tried := -1
			p.Pick(ts, nil, now, func(i int) bool { return i != tried && ts[i].EP.Available(now) })
		}
	})
	b.Run("pooled", func(b *testing.B) {
		pool := sync.Pool{New: func() any {
			a := &attempt{}
			a.usable = a.check
			return a
		}}
		b.ReportAllocs()
		for b.Loop() {
			a := pool.Get().(*attempt)
			a.ts, a.now, a.tried = ts, time.Now(), -1
			p.Pick(ts, nil, a.now, a.usable)
			a.ts = nil
			pool.Put(a)
		}
	})
}

// attempt is what a pool could keep per pick to bind usable without
// allocating.
type attempt struct {
	ts     []balance.Target
	now    time.Time
	tried  int
	usable func(int) bool
}

func (a *attempt) check(i int) bool { return i != a.tried && a.ts[i].EP.Available(a.now) }
