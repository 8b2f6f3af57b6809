package sharding

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/buraksezer/consistent"
	"github.com/cespare/xxhash/v2"

	"sekisho/router"
)

// nopWriter is a ResponseWriter that keeps nothing, so ServeHTTP benchmarks
// measure the stage and not a recorder.
type nopWriter struct{ h http.Header }

func (w *nopWriter) Header() http.Header         { return w.h }
func (w *nopWriter) Write(b []byte) (int, error) { return len(b), nil }
func (w *nopWriter) WriteHeader(int)             {}

var nop = http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})

// benchRequests returns 1024 requests with distinct X-User-ID keys, so the
// partition table is read at many places as under real traffic.
func benchRequests() []*http.Request {
	reqs := make([]*http.Request, 1024)
	for i, k := range testKeys(len(reqs)) {
		r := httptest.NewRequest(http.MethodGet, "/users/1", nil)
		r.Header.Set("X-User-ID", k)
		reqs[i] = r
	}
	return reqs
}

func benchStage(b *testing.B, c Config) *Stage {
	b.Helper()
	names := shardNames("users-", 11)
	for _, n := range names {
		c.Shards = append(c.Shards, Shard{Name: n, Handler: nop})
	}
	c.Key = router.MustParseKey("header:X-User-ID")
	s, err := New(c)
	if err != nil {
		b.Fatal(err)
	}
	return s
}

// BenchmarkPick measures the shard choice for one request, key extraction
// from the header included, on 11 shards with the default ring; the
// library's LocateKey is the baseline.
func BenchmarkPick(b *testing.B) {
	reqs := benchRequests()
	for _, bc := range []struct {
		name string
		c    Config
	}{
		{"plain", Config{}},
		{"balance_factor", Config{BalanceFactor: 1.25}},
		{"on_unavailable_next", Config{BalanceFactor: 1.25, OnUnavailable: OnUnavailableNext}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			s := benchStage(b, bc.c)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if _, ok := s.pick(reqs[i&1023]); !ok {
					b.Fatal("no key")
				}
				i++
			}
		})
	}
	b.Run("library_LocateKey", func(b *testing.B) {
		names := shardNames("users-", 11)
		members := make([]consistent.Member, len(names))
		for i, n := range names {
			members[i] = member(n)
		}
		c := consistent.New(members, consistent.Config{Hasher: hasher{}, PartitionCount: DefaultPartitions, ReplicationFactor: DefaultReplicationFactor, Load: DefaultLoad})
		key := router.MustParseKey("header:X-User-ID")
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			k, _ := key.Value(reqs[i&1023])
			if c.LocateKey([]byte(k)) == nil {
				b.Fatal("no owner")
			}
			i++
		}
	})
}

// BenchmarkServeHTTP measures the whole stage around a handler that does
// nothing: choice, counters, hot-key recording and the in-flight bracket.
func BenchmarkServeHTTP(b *testing.B) {
	for _, bc := range []struct {
		name string
		c    Config
	}{
		{"hot_keys_off", Config{HotKeys: -1}},
		{"hot_keys_32", Config{}},
		{"balance_factor_expose", Config{BalanceFactor: 1.25, ExposeHeader: true}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			s := benchStage(b, bc.c)
			reqs := benchRequests()
			w := &nopWriter{h: make(http.Header)}
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				s.ServeHTTP(w, reqs[i&1023])
				i++
			}
		})
		b.Run(bc.name+"_parallel", func(b *testing.B) {
			s := benchStage(b, bc.c)
			reqs := benchRequests()
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				w := &nopWriter{h: make(http.Header)}
				i := 0
				for pb.Next() {
					s.ServeHTTP(w, reqs[i&1023])
					i++
				}
			})
		})
	}
}

// BenchmarkSummaryRecord measures one hot-key record on a full summary fed
// a Zipf stream (mostly hits, some evictions).
func BenchmarkSummaryRecord(b *testing.B) {
	keys, _ := zipfKeys(1<<16, 1)
	hashes := make([]uint64, len(keys))
	for i, k := range keys {
		hashes[i] = xxhash.Sum64String(k)
	}
	s := newSummary(DefaultHotKeys)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		j := i & (1<<16 - 1)
		s.record(hashes[j], keys[j])
		i++
	}
}
