package sharding

import (
	"cmp"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/cespare/xxhash/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// zipfKeys draws n keys from a Zipf distribution over 100 000 items with a
// fixed seed, and returns them with their exact counts.
func zipfKeys(n int, seed uint64) ([]string, map[string]uint64) {
	z := rand.NewZipf(rand.New(rand.NewPCG(seed, seed)), 1.1, 1, 99999)
	keys := make([]string, n)
	exact := make(map[string]uint64)
	for i := range keys {
		keys[i] = "item-" + strconv.FormatUint(z.Uint64(), 10)
		exact[keys[i]]++
	}
	return keys, exact
}

// topExact returns the k most frequent keys of exact.
func topExact(exact map[string]uint64, k int) []string {
	keys := make([]string, 0, len(exact))
	for key := range exact {
		keys = append(keys, key)
	}
	slices.SortFunc(keys, func(a, b string) int {
		if c := cmp.Compare(exact[b], exact[a]); c != 0 {
			return c
		}
		return strings.Compare(a, b)
	})
	return keys[:k]
}

func TestSummaryFindsZipfHeavyHitters(t *testing.T) {
	for _, capacity := range []int{32, 128} {
		t.Run(strconv.Itoa(capacity), func(t *testing.T) {
			const n = 100000
			keys, exact := zipfKeys(n, 42)
			s := newSummary(capacity)
			for _, k := range keys {
				s.record(xxhash.Sum64String(k), k)
			}
			top, recorded := s.top()
			assert.EqualValues(t, n, recorded)
			require.Len(t, top, capacity, "memory is bounded by the capacity, not by %d distinct keys", len(exact))
			assert.Len(t, s.heap, capacity)

			for _, kc := range top {
				truth := exact[kc.Key]
				assert.LessOrEqual(t, kc.Count-kc.Error, truth, "%s undercounted bound", kc.Key)
				assert.GreaterOrEqual(t, kc.Count, truth, "%s overcounted bound", kc.Key)
			}
			// Space-saving guarantees every key seen more than
			// n/capacity times; those are the heavy hitters, and they
			// rank first, in their true order.
			var heavy []string
			for key, c := range exact {
				if c > n/uint64(capacity) {
					heavy = append(heavy, key)
				}
			}
			require.NotEmpty(t, heavy)
			want := topExact(exact, len(heavy))
			assert.ElementsMatch(t, want, heavy)
			for i, key := range want {
				assert.Equal(t, key, top[i].Key, "rank %d", i)
			}
			t.Logf("capacity %d: %d heavy hitters above %d, summary top %v", capacity, len(heavy), n/capacity, top[:len(heavy)])
		})
	}
}

func TestSummaryTruncatesLongKeys(t *testing.T) {
	s := newSummary(4)
	long := strings.Repeat("k", 1000)
	other := strings.Repeat("k", 999) + "x"
	s.record(xxhash.Sum64String(long), long)
	s.record(xxhash.Sum64String(other), other)
	s.record(xxhash.Sum64String(long), long)
	top, _ := s.top()
	require.Len(t, top, 2, "keys with one prefix are still told apart")
	for _, kc := range top {
		assert.Len(t, kc.Key, maxKeyBytes)
	}
	assert.EqualValues(t, 2, top[0].Count)
}

func TestSummaryRecordDoesNotAllocateWhenFull(t *testing.T) {
	keys, _ := zipfKeys(20000, 3)
	hashes := make([]uint64, len(keys))
	for i, k := range keys {
		hashes[i] = xxhash.Sum64String(k)
	}
	s := newSummary(32)
	for i, k := range keys {
		s.record(hashes[i], k)
	}
	i := 0
	allocs := testing.AllocsPerRun(10000, func() {
		s.record(hashes[i%len(keys)], keys[i%len(keys)])
		i++
	})
	assert.Zero(t, allocs)
}

// Recording from many goroutines never blocks and never loses the
// summary's invariants; contended calls are skipped and not counted.
func TestSummaryConcurrent(t *testing.T) {
	keys, _ := zipfKeys(40000, 9)
	s := newSummary(32)
	var wg sync.WaitGroup
	var counted [4]int
	for g := range 4 {
		wg.Go(func() {
			for i := g; i < len(keys); i += 4 {
				if s.record(xxhash.Sum64String(keys[i]), keys[i]) {
					counted[g]++
				}
			}
		})
	}
	wg.Wait()
	top, recorded := s.top()
	assert.EqualValues(t, counted[0]+counted[1]+counted[2]+counted[3], recorded)
	assert.LessOrEqual(t, len(top), 32)
	var sum uint64
	for _, kc := range top {
		sum += kc.Count
	}
	assert.Equal(t, recorded, sum, "space-saving keeps the counters' total equal to the stream length")
}

// Through the stage, each shard's summary holds only keys it owns, and the
// hottest keys of the stream top their owners' lists.
func TestStageHotKeys(t *testing.T) {
	s := newStage(t, Config{Shards: namedShards("s-0", "s-1", "s-2", "s-3"), HotKeys: 16})
	keys, exact := zipfKeys(30000, 5)
	for _, k := range keys {
		w, _ := serve(s, k)
		require.Equal(t, 200, w.Code)
	}
	rep := s.HotKeys()
	names := s.Ring().Names()
	var recorded uint64
	for i, sh := range rep.Shards {
		assert.Equal(t, names[i], sh.Name)
		assert.Equal(t, sh.Requests, sh.Recorded, "one goroutine never skips")
		recorded += sh.Recorded
		assert.LessOrEqual(t, len(sh.TopKeys), 16)
		for _, kc := range sh.TopKeys {
			assert.Equal(t, sh.Name, names[s.Ring().Owner(kc.Key)], "%s listed under %s", kc.Key, sh.Name)
		}
	}
	assert.EqualValues(t, len(keys), recorded)
	for _, hot := range topExact(exact, 3) {
		sh := rep.Shards[s.Ring().Owner(hot)]
		require.NotEmpty(t, sh.TopKeys)
		i := slices.IndexFunc(sh.TopKeys, func(kc KeyCount) bool { return kc.Key == hot })
		require.GreaterOrEqual(t, i, 0, "%s missing from %s", hot, sh.Name)
		assert.Less(t, i, 3, "%s ranks %d on %s", hot, i, sh.Name)
		assert.Equal(t, exact[hot], sh.TopKeys[i].Count-sh.TopKeys[i].Error)
	}
}

func TestStageHotKeysOff(t *testing.T) {
	s := newStage(t, Config{Shards: namedShards("a", "b"), HotKeys: -1})
	for _, k := range testKeys(50) {
		serve(s, k)
	}
	var requests uint64
	for _, sh := range s.HotKeys().Shards {
		assert.Empty(t, sh.TopKeys)
		assert.NotNil(t, sh.TopKeys, "an empty list, not null, in JSON")
		assert.Zero(t, sh.Recorded)
		requests += sh.Requests
	}
	assert.EqualValues(t, 50, requests)
}

// The index is checked against a map under random puts and deletes, with
// hashes drawn from a small range so that probe runs collide and wrap.
func TestHashIndexMatchesMap(t *testing.T) {
	for _, capacity := range []int{1, 4, 32} {
		t.Run(strconv.Itoa(capacity), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(uint64(capacity), 11))
			x := newHashIndex(capacity)
			want := make(map[uint64]int32)
			for step := range 4000 {
				h := rng.Uint64N(uint64(4 * len(x.slots)))
				if _, ok := want[h]; ok {
					x.del(h)
					delete(want, h)
				} else if len(want) < capacity {
					x.put(h, int32(step))
					want[h] = int32(step)
				}
				for probe := range uint64(4 * len(x.slots)) {
					v, ok := want[probe]
					if !ok {
						v = -1
					}
					if got := x.get(probe); got != v {
						require.Equal(t, v, got, "step %d hash %d", step, probe)
					}
				}
			}
		})
	}
}
