package sharding

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"testing"

	"github.com/buraksezer/consistent"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// shardNames returns prefix0 .. prefix<n-1>.
func shardNames(prefix string, n int) []string {
	names := make([]string, n)
	for i := range names {
		names[i] = prefix + strconv.Itoa(i)
	}
	return names
}

// testKeys returns n distinct keys shaped like user IDs.
func testKeys(n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = "user-" + strconv.Itoa(i)
	}
	return keys
}

// small keeps ring builds in unit tests cheap where the default balance is
// not what is tested.
var small = RingConfig{Partitions: 1031, ReplicationFactor: 50, Load: 1.25}

func TestNewRingErrors(t *testing.T) {
	tests := []struct {
		name  string
		names []string
		rc    RingConfig
		want  []string
	}{
		{"no shards", nil, small, []string{"shards: at least one shard is required"}},
		{"duplicate", []string{"a", "b", "a"}, small, []string{`shards[2]: duplicate name "a" (also shards[0])`}},
		{"empty name", []string{"a", ""}, small, []string{"shards[1]: empty name"}},
		{"too many shards", shardNames("s", MaxShards+1), RingConfig{Partitions: 4096, ReplicationFactor: 1, Load: 1.25}, []string{"shards: at most 256 shards, got 257"}},
		{"negative partitions", []string{"a"}, RingConfig{Partitions: -1}, []string{"partitions: must be between 1 and"}},
		{"partitions over max", []string{"a"}, RingConfig{Partitions: MaxPartitions + 1}, []string{"partitions: must be between 1 and"}},
		{"fewer partitions than shards", []string{"a", "b", "c"}, RingConfig{Partitions: 2}, []string{"partitions: must be at least the number of shards (3), got 2"}},
		{"negative replication", []string{"a"}, RingConfig{ReplicationFactor: -5}, []string{"replication_factor: must be between 1 and 1000, got -5"}},
		{"too many ring points", shardNames("s", 200), RingConfig{}, []string{"replication_factor: 400 x 200 shards is 80000 ring points, at most 51200"}},
		{"load below 1", []string{"a", "b"}, RingConfig{Load: 0.5}, []string{"load: must be a number of at least 1, got 0.5"}},
		{"load negative", []string{"a", "b"}, RingConfig{Load: -1}, []string{"load: must be a number of at least 1"}},
		{"every problem at once", []string{"a", "a"}, RingConfig{Partitions: -3, ReplicationFactor: -1, Load: 0.9}, []string{
			"shards[1]: duplicate name", "partitions:", "replication_factor:", "load:",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := NewRing(tt.names, tt.rc)
			require.Error(t, err)
			assert.Nil(t, r)
			for _, w := range tt.want {
				assert.Contains(t, err.Error(), w)
			}
		})
	}
}

// The library panics when the load leaves no room for every partition;
// NewRing must turn each such setting into an error first.
func TestNewRingNeverPanics(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	for i := range 200 {
		n := 1 + rng.IntN(8)
		rc := RingConfig{
			Partitions:        rng.IntN(40) - 5,
			ReplicationFactor: rng.IntN(6) - 1,
			Load:              rng.Float64() * 2,
		}
		t.Run(fmt.Sprintf("%d/%d-shards/%+v", i, n, rc), func(t *testing.T) {
			var r *Ring
			var err error
			require.NotPanics(t, func() { r, err = NewRing(shardNames("s", n), rc) })
			if err == nil {
				assert.Equal(t, n, r.Len())
				assert.NotEmpty(t, r.Signature())
			}
		})
	}
}

func TestRingDefaults(t *testing.T) {
	r, err := NewRing([]string{"a", "b"}, RingConfig{})
	require.NoError(t, err)
	assert.Equal(t, RingConfig{Partitions: DefaultPartitions, ReplicationFactor: DefaultReplicationFactor, Load: DefaultLoad}, r.Config())
	assert.Equal(t, "partitions=32749 replication_factor=400 load=1.05 shards=[\"a\" \"b\"]", r.Signature())
}

// The hot path computes partitions and owners without the library; the
// library must still be the one that decides.
func TestRingAgreesWithLibrary(t *testing.T) {
	names := []string{"users-2", "users-0", "users-1", "users-3"}
	rc := RingConfig{Partitions: 7919, ReplicationFactor: 100, Load: 1.05}
	r, err := NewRing(names, rc)
	require.NoError(t, err)

	sorted := slices.Sorted(slices.Values(names))
	members := make([]consistent.Member, len(sorted))
	for i, n := range sorted {
		members[i] = member(n)
	}
	lib := consistent.New(members, consistent.Config{Hasher: hasher{}, PartitionCount: rc.Partitions, ReplicationFactor: rc.ReplicationFactor, Load: rc.Load})
	got := r.Names()
	for _, k := range testKeys(20000) {
		require.Equal(t, lib.LocateKey([]byte(k)).String(), got[r.Owner(k)], "key %s", k)
		require.Equal(t, lib.FindPartitionID([]byte(k)), r.partition(k))
	}
}

// With a load too high to bind, the library gives each partition to the
// first shard clockwise; the fallback walk starts at the same point, so its
// first shard is the owner itself and the rebuilt ring matches the
// library's.
func TestRingWalkMatchesLibraryRing(t *testing.T) {
	names := shardNames("db-", 7)
	r, err := NewRing(names, RingConfig{Partitions: 4001, ReplicationFactor: 30, Load: 100})
	require.NoError(t, err)
	points := ringPoints(r.names, 30)
	for p := range 4001 {
		var buf [8]byte
		for i := range buf {
			buf[i] = byte(uint64(p) >> (8 * i))
		}
		h := hasher{}.Sum64(buf[:])
		at, _ := slices.BinarySearchFunc(points, h, func(pt point, h uint64) int {
			switch {
			case pt.hash < h:
				return -1
			case pt.hash > h:
				return 1
			}
			return 0
		})
		require.Equal(t, points[at%len(points)].shard, int(r.row(p)[0]), "partition %d", p)
	}
}

func TestRingRows(t *testing.T) {
	for _, n := range []int{1, 2, 3, 16, 17, 40} {
		t.Run(strconv.Itoa(n), func(t *testing.T) {
			r, err := NewRing(shardNames("s", n), small)
			require.NoError(t, err)
			firstNext := make(map[int]map[int]bool)
			for p := range small.Partitions {
				row := r.row(p)
				require.Len(t, row, min(n, 1+maxFallbacks))
				seen := make(map[uint16]bool)
				for _, s := range row {
					require.Less(t, int(s), n)
					require.False(t, seen[s], "partition %d repeats shard %d", p, s)
					seen[s] = true
				}
				if n > 1 {
					if firstNext[int(row[0])] == nil {
						firstNext[int(row[0])] = make(map[int]bool)
					}
					firstNext[int(row[0])][int(row[1])] = true
				}
			}
			// One full shard's overflow spreads over several neighbours
			// rather than landing on a single one.
			if n >= 16 {
				for owner, next := range firstNext {
					assert.Greater(t, len(next), 3, "shard %d overflows to %d shards only", owner, len(next))
				}
			}
		})
	}
}

func TestRingOrderIndependent(t *testing.T) {
	names := shardNames("users-", 10)
	keys := testKeys(20000)
	base, err := NewRing(names, RingConfig{})
	require.NoError(t, err)
	want := base.Names()
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 3 {
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			shuffled := slices.Clone(names)
			rng.Shuffle(len(shuffled), func(a, b int) { shuffled[a], shuffled[b] = shuffled[b], shuffled[a] })
			r, err := NewRing(shuffled, RingConfig{})
			require.NoError(t, err)
			assert.Equal(t, base.Signature(), r.Signature())
			assert.Equal(t, RingSignature(shuffled, RingConfig{}), r.Signature())
			assert.Equal(t, base.order, r.order, "partition table differs")
			got := r.Names()
			for _, k := range keys {
				require.Equal(t, want[base.Owner(k)], got[r.Owner(k)], "key %s", k)
			}
		})
	}
}

// rebalance reports the share of keys that change shard from a ring of from
// to one of to, and the largest shard's key count over the mean on either.
func rebalance(t *testing.T, from, to []string, keys []string) (moved, maxOverMean float64) {
	t.Helper()
	a, err := NewRing(from, RingConfig{})
	require.NoError(t, err)
	b, err := NewRing(to, RingConfig{})
	require.NoError(t, err)
	an, bn := a.Names(), b.Names()
	ca, cb := make([]int, len(an)), make([]int, len(bn))
	n := 0
	for _, k := range keys {
		x, y := a.Owner(k), b.Owner(k)
		ca[x]++
		cb[y]++
		if an[x] != bn[y] {
			n++
		}
	}
	ratio := func(c []int) float64 {
		return float64(slices.Max(c)) * float64(len(c)) / float64(len(keys))
	}
	return float64(n) / float64(len(keys)), max(ratio(ca), ratio(cb))
}

func TestRebalancing(t *testing.T) {
	keys := testKeys(100000)
	for _, tt := range []struct{ from, to int }{{10, 11}, {3, 4}} {
		t.Run(fmt.Sprintf("%d->%d", tt.from, tt.to), func(t *testing.T) {
			moved, maxMean := rebalance(t, shardNames("shard-", tt.from), shardNames("shard-", tt.to), keys)
			ideal := 1 / float64(tt.to)
			t.Logf("%d->%d shards over %d keys: moved %.2f%% (ideal %.2f%%, %.3fx), largest shard %.3fx the mean",
				tt.from, tt.to, len(keys), 100*moved, 100*ideal, moved/ideal, maxMean)
			assert.LessOrEqual(t, moved, 1.15*ideal)
			assert.GreaterOrEqual(t, moved, ideal*0.9, "fewer keys moved than the new shard must take")
			assert.LessOrEqual(t, maxMean, 1.10)
		})
	}
}

// The defaults must meet the bounds whatever the shards are called, not
// only for the names of TestRebalancing.
func TestRingDefaultsAcrossNames(t *testing.T) {
	keys := testKeys(100000)
	for _, prefix := range []string{"users-", "db-shard-", "cache_", "orders-eu-"} {
		t.Run(prefix, func(t *testing.T) {
			for _, tt := range []struct{ from, to int }{{10, 11}, {3, 4}} {
				moved, maxMean := rebalance(t, shardNames(prefix, tt.from), shardNames(prefix, tt.to), keys)
				ideal := 1 / float64(tt.to)
				t.Logf("%d->%d: moved %.3fx ideal, max/mean %.3f", tt.from, tt.to, moved/ideal, maxMean)
				assert.LessOrEqual(t, moved, 1.15*ideal, "%d->%d", tt.from, tt.to)
				assert.LessOrEqual(t, maxMean, 1.10, "%d->%d", tt.from, tt.to)
			}
		})
	}
}
