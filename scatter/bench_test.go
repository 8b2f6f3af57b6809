package scatter_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"sekisho/router"
	"sekisho/scatter"
)

// leafBodies returns n leaf answers of per results each, the shape of a
// search shard: ids overlap between neighbouring leaves, scores spread.
func leafBodies(n, per int) [][]byte {
	bodies := make([][]byte, n)
	for l := range n {
		var b strings.Builder
		b.WriteString(`{"took":3,"results":[`)
		for i := range per {
			if i > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, `{"id":"doc-%d","score":%d.%03d,"title":"result %d of leaf %d","tags":["a","b"]}`,
				l*per/2+i, (l*7919+i*104729)%1000, i%1000, i, l)
		}
		b.WriteString(`]}`)
		bodies[l] = []byte(b.String())
	}
	return bodies
}

// BenchmarkMerge measures the merger alone on 10 leaves x 100 results:
// parsing every answer and writing the merged one, as the stage does per
// request (the stage parses on the leaves' goroutines, in parallel).
func BenchmarkMerge(b *testing.B) {
	bodies := leafBodies(10, 100)
	objects := make([][]byte, 10)
	for l := range objects {
		var sb strings.Builder
		sb.WriteString(`{"shard":{`)
		for i := range 100 {
			if i > 0 {
				sb.WriteByte(',')
			}
			fmt.Fprintf(&sb, `"k%d-%d":{"n":%d,"v":"x"}`, l, i, i)
		}
		sb.WriteString(`},"leaf":` + fmt.Sprint(l) + `}`)
		objects[l] = []byte(sb.String())
	}
	for _, bc := range []struct {
		name   string
		merge  scatter.Merge
		bodies [][]byte
	}{
		{"array/concat", scatter.Merge{Array: "results"}, bodies},
		{"array/sort+dedupe+limit", scatter.Merge{Array: "results", SortBy: "score", Order: "desc", DedupeBy: "id", Limit: 10}, bodies},
		{"array/sort+dedupe", scatter.Merge{Array: "results", SortBy: "score", Order: "desc", DedupeBy: "id"}, bodies},
		{"object/deep", scatter.Merge{Object: "deep"}, objects},
		{"concat/ndjson", scatter.Merge{Concat: "ndjson"}, bodies},
	} {
		b.Run(bc.name, func(b *testing.B) {
			size := 0
			for _, body := range bc.bodies {
				size += len(body)
			}
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := bc.merge.Merge(bc.bodies); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// memPool is an in-process pool of replicas that honours router.Tried like
// the proxy's pools, without sockets, so the benchmark measures the stage
// and the replicas' latency rather than loopback TCP.
type memPool struct {
	names    []string
	replicas []http.Handler
}

func (p *memPool) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	i := 0
	if info := router.InfoFrom(r); info != nil && info.Tried != nil {
		for j, n := range p.names {
			if !info.Tried.Has(n) {
				i = j
				break
			}
		}
		info.Tried.Add(p.names[i])
	}
	p.replicas[i].ServeHTTP(w, r)
}

// replicaAfter answers after d, or gives up when cancelled.
func replicaAfter(body []byte, d func() time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t := time.NewTimer(d())
		defer t.Stop()
		select {
		case <-t.C:
			_, _ = w.Write(body)
		case <-r.Context().Done():
		}
	})
}

// BenchmarkScatterStraggler measures the latency of a scatter route over
// three leaves whose replicas answer in 1 ms, except that one leaf's
// replicas take 30 ms on every tenth request they get. Without hedging that
// straggler sets the p99; with hedge_after 5ms the second replica answers
// it. Reported: p50-ms and p99-ms of the route, side by side.
func BenchmarkScatterStraggler(b *testing.B) {
	body := leafBodies(1, 10)[0]
	fast := func() time.Duration { return time.Millisecond }
	for _, bc := range []struct {
		name       string
		hedgeAfter time.Duration
	}{
		{"hedging=off", 0},
		{"hedging=5ms", 5 * time.Millisecond},
	} {
		b.Run(bc.name, func(b *testing.B) {
			var calls atomic.Int64
			straggle := func() time.Duration {
				if calls.Add(1)%10 == 0 {
					return 30 * time.Millisecond
				}
				return time.Millisecond
			}
			leaf := func(d func() time.Duration) http.Handler {
				return &memPool{names: []string{"r0", "r1"}, replicas: []http.Handler{replicaAfter(body, d), replicaAfter(body, d)}}
			}
			st, err := scatter.New(scatter.Config{
				Leaves: []scatter.Leaf{
					{Name: "s-0", Handler: leaf(fast)},
					{Name: "s-1", Handler: leaf(fast)},
					{Name: "s-2", Handler: leaf(straggle)},
				},
				Timeout:    100 * time.Millisecond,
				HedgeAfter: bc.hedgeAfter,
				// The straggler is slow on 10 % of its requests; a budget
				// of 20 % lets every one of them be hedged.
				HedgeBudgetPercent: 20,
				Merge:              scatter.Merge{Array: "results", SortBy: "score", Order: "desc", Limit: 10},
			})
			if err != nil {
				b.Fatal(err)
			}
			req := httptest.NewRequest(http.MethodGet, "/search?q=x", nil)
			var took []time.Duration
			b.ReportAllocs()
			for b.Loop() {
				rec := httptest.NewRecorder()
				start := time.Now()
				st.ServeHTTP(rec, req)
				took = append(took, time.Since(start))
				if rec.Code != http.StatusOK {
					b.Fatalf("status %d: %s", rec.Code, rec.Body)
				}
			}
			slices.Sort(took)
			ms := func(q int) float64 {
				return float64(took[min(len(took)-1, len(took)*q/100)]) / float64(time.Millisecond)
			}
			b.ReportMetric(ms(50), "p50-ms")
			b.ReportMetric(ms(99), "p99-ms")
		})
	}
}

// BenchmarkScatterOverhead measures the stage's own cost: three in-process
// leaves that answer at once with 10 results each, merged with sort and
// limit.
func BenchmarkScatterOverhead(b *testing.B) {
	body := leafBodies(1, 10)[0]
	answer := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write(body) })
	for _, bc := range []struct {
		name       string
		hedgeAfter time.Duration
	}{
		{"hedging=off", 0},
		{"hedging=50ms", 50 * time.Millisecond},
	} {
		b.Run(bc.name, func(b *testing.B) {
			st, err := scatter.New(scatter.Config{
				Leaves:     []scatter.Leaf{{Name: "s-0", Handler: answer}, {Name: "s-1", Handler: answer}, {Name: "s-2", Handler: answer}},
				HedgeAfter: bc.hedgeAfter,
				Merge:      scatter.Merge{Array: "results", SortBy: "score", Order: "desc", Limit: 10},
			})
			if err != nil {
				b.Fatal(err)
			}
			req := httptest.NewRequest(http.MethodGet, "/search?q=x", nil)
			req = router.WithInfo(req, &router.Info{Route: "search"})
			b.ReportAllocs()
			for b.Loop() {
				rec := httptest.NewRecorder()
				st.ServeHTTP(rec, req)
				if rec.Code != http.StatusOK {
					b.Fatalf("status %d", rec.Code)
				}
			}
		})
	}
}
