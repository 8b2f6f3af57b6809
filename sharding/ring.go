package sharding

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"
	"strconv"

	"github.com/buraksezer/consistent"
	"github.com/cespare/xxhash/v2"

	"sekisho/router"
)

// Ring defaults, chosen by measurement. Keys are "user-<i>" for i below
// 100 000. "moved" is the share of keys whose shard changes when one shard
// joins, over the ideal 1/(n+1); "max" is the largest shard's key count
// over the mean, the worse of the rings before and after. Each cell is
// "shards named shard-<i>" / "worst of 8 naming schemes" (shard-, users-,
// pool, db-shard-, cache_, s, orders-eu-, x). The issue bounds moved at
// 1.15 and max at 1.10.
//
//	partitions repl. load   10->11 moved   10->11 max     3->4 moved     3->4 max
//	       271   20  1.25   1.288/1.615    1.277/1.277    1.072/1.259    1.081/1.259
//	      7919   20  1.25   0.957/1.336    1.259/1.266    0.999/1.246    1.126/1.254
//	      7919  100  1.25   0.914/1.157    1.185/1.249    0.951/1.106    1.088/1.124
//	      7919  200  1.05   1.072/1.125    1.055/1.074    1.070/1.078    1.047/1.055
//	      7919  400  1.05   1.093/1.093    1.069/1.070    1.017/1.028    1.051/1.056
//	     15887  400  1.05   1.070/1.113    1.058/1.066    1.017/1.029    1.052/1.056
//	     32749  200  1.05   1.075/1.108    1.055/1.073    1.087/1.087    1.057/1.064
//	     32749  400  1.05   1.045/1.100    1.055/1.066    1.017/1.036    1.046/1.060  (defaults)
//	     32749  400  1.10   1.074/1.074    1.081/1.098    1.012/1.024    1.057/1.102
//	     32749  400  1.25   1.074/1.074    1.081/1.134    1.012/1.024    1.057/1.134
//
// The library's own defaults (271, 20, 1.25) miss both bounds. A load near 1
// is what caps the largest shard; the price is that partitions pushed past a
// full shard move again when a shard joins, which enough ring points (400
// per shard) keep rare, and more partitions keep the moves fine-grained at
// higher shard counts (20->21 moves 1.11x the ideal at 32749 partitions,
// 1.15x at 7919). TestRebalancing and TestRingDefaultsAcrossNames assert the
// bounds for the defaults.
const (
	DefaultPartitions        = 32749
	DefaultReplicationFactor = 400
	DefaultLoad              = 1.05
)

// Limits on ring settings; past them a setting is an error rather than a
// slow reload. consistent.New sorts all ring points once per member added,
// so building grows with replication_factor x shards^2: with the defaults,
// 3 shards took 25 ms of CPU, 11 shards 45 ms, 64 shards 0.23 s and 128
// shards 0.76 s (measured on a busy 2-core machine). MaxRingPoints bounds
// shards x replication_factor for that reason; the partition table stays
// within 32 MiB at MaxPartitions. A reload that keeps a stage's names and
// settings keeps its Ring and pays nothing.
const (
	MaxShards            = 256
	MaxPartitions        = 1 << 20
	MaxReplicationFactor = 1000
	MaxRingPoints        = 51200
)

// maxFallbacks is how many next shards on the ring are kept per partition.
// Past them the request path walks the remaining shards in name order, which
// only happens when that many shards are all full or down.
const maxFallbacks = 15

// RingConfig holds the settings of a Ring. A zero field takes its default:
// Partitions DefaultPartitions, ReplicationFactor DefaultReplicationFactor,
// Load DefaultLoad.
type RingConfig struct {
	// Partitions is the number of slots keys hash into (key hash modulo
	// Partitions); each slot is owned by one shard. A prime spreads keys
	// evenly. At least the number of shards, at most MaxPartitions.
	Partitions int
	// ReplicationFactor is the number of points each shard has on the ring.
	// More points even out the shards' shares. At most MaxReplicationFactor.
	ReplicationFactor int
	// Load caps the partitions of one shard at Load x the mean, rounded up
	// (bounded-load placement at build time). At least 1.
	Load float64
}

func (rc RingConfig) withDefaults() RingConfig {
	if rc.Partitions == 0 {
		rc.Partitions = DefaultPartitions
	}
	if rc.ReplicationFactor == 0 {
		rc.ReplicationFactor = DefaultReplicationFactor
	}
	if rc.Load == 0 {
		rc.Load = DefaultLoad
	}
	return rc
}

// validate reports every setting consistent.New would panic on or that
// would make a useless ring, for n shards. rc must have its defaults.
func (rc RingConfig) validate(n int) []error {
	var errs []error
	switch {
	case rc.Partitions < 1 || rc.Partitions > MaxPartitions:
		errs = append(errs, router.FieldErrorf("partitions", "partitions: must be between 1 and %d, got %d", MaxPartitions, rc.Partitions))
	case n > 0 && rc.Partitions < n:
		errs = append(errs, router.FieldErrorf("partitions", "partitions: must be at least the number of shards (%d), got %d", n, rc.Partitions))
	}
	switch {
	case rc.ReplicationFactor < 1 || rc.ReplicationFactor > MaxReplicationFactor:
		errs = append(errs, router.FieldErrorf("replication_factor", "replication_factor: must be between 1 and %d, got %d", MaxReplicationFactor, rc.ReplicationFactor))
	case n*rc.ReplicationFactor > MaxRingPoints:
		errs = append(errs, router.FieldErrorf("replication_factor", "replication_factor: %d x %d shards is %d ring points, at most %d (build time grows with their square); lower it",
			rc.ReplicationFactor, n, n*rc.ReplicationFactor, MaxRingPoints))
	}
	if math.IsNaN(rc.Load) || math.IsInf(rc.Load, 0) || rc.Load < 1 {
		errs = append(errs, router.FieldErrorf("load", "load: must be a number of at least 1, got %v", rc.Load))
	} else if n > 0 && rc.Partitions >= 1 && !roomFor(rc, n) {
		errs = append(errs, router.FieldErrorf("load", "load: %v leaves no room for %d partitions on %d shards", rc.Load, rc.Partitions, n))
	}
	return errs
}

// roomFor mirrors consistent's capacity rule: every member takes at most
// ceil(partitions/members x load) partitions, and placement panics when
// that cannot hold them all.
func roomFor(rc RingConfig, n int) bool {
	perShard := math.Ceil(float64(rc.Partitions) / float64(n) * rc.Load)
	return perShard*float64(n) >= float64(rc.Partitions)
}

// Ring is the placement of keys on a set of named shards: a consistent-hash
// ring (github.com/buraksezer/consistent v1.0.0, xxhash) whose partitions
// are assigned to shards with bounded load, plus for each partition the
// order of the next shards on the ring, used when the owner is full or down.
//
// Placement depends only on the set of names and the settings: names are
// sorted before the ring is built, so their order in the configuration does
// not matter, and two processes with the same names and settings place every
// key alike. A shard's identity is its name, never its endpoints.
//
// A Ring is immutable and safe for concurrent use; one can serve several
// consecutive stages (see Signature). Lookups do not allocate and make no
// call into the library.
type Ring struct {
	names  []string
	rc     RingConfig
	parts  uint64
	stride int
	// order holds, for each partition, its owner then up to maxFallbacks
	// next distinct shards on the ring, as indexes into names.
	order []uint16
	sig   string
}

type member string

func (m member) String() string { return string(m) }

type hasher struct{}

func (hasher) Sum64(b []byte) uint64 { return xxhash.Sum64(b) }

// NewRing builds the ring of names with the settings of rc (zero fields take
// their defaults). Fewer than one name, an empty or duplicate name, more than
// MaxShards names, or a setting out of range is an error, with every problem
// reported at once.
func NewRing(names []string, rc RingConfig) (*Ring, error) {
	rc = rc.withDefaults()
	errs := checkNames(names)
	errs = append(errs, rc.validate(len(names))...)
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	sorted := slices.Clone(names)
	slices.Sort(sorted)
	return build(sorted, rc)
}

func checkNames(names []string) []error {
	var errs []error
	if len(names) < 1 {
		errs = append(errs, router.FieldErrorf("shards", "shards: at least one shard is required"))
	}
	if len(names) > MaxShards {
		errs = append(errs, router.FieldErrorf("shards", "shards: at most %d shards, got %d", MaxShards, len(names)))
	}
	seen := make(map[string]int, len(names))
	for i, n := range names {
		if n == "" {
			errs = append(errs, router.FieldErrorf(fmt.Sprintf("shards[%d]", i), "shards[%d]: empty name", i))
			continue
		}
		if j, dup := seen[n]; dup {
			errs = append(errs, router.FieldErrorf(fmt.Sprintf("shards[%d]", i), "shards[%d]: duplicate name %q (also shards[%d])", i, n, j))
			continue
		}
		seen[n] = i
	}
	return errs
}

// build makes the ring of sorted, valid names. The library's own panics are
// turned into an error as a last guard: validate is meant to rule them out.
func build(names []string, rc RingConfig) (r *Ring, err error) {
	defer func() {
		if p := recover(); p != nil {
			r, err = nil, fmt.Errorf("building ring: %v", p)
		}
	}()
	members := make([]consistent.Member, len(names))
	index := make(map[string]int, len(names))
	for i, n := range names {
		members[i] = member(n)
		index[n] = i
	}
	c := consistent.New(members, consistent.Config{
		Hasher:            hasher{},
		PartitionCount:    rc.Partitions,
		ReplicationFactor: rc.ReplicationFactor,
		Load:              rc.Load,
	})

	n := len(names)
	depth := min(n-1, maxFallbacks)
	r = &Ring{
		names:  names,
		rc:     rc,
		parts:  uint64(rc.Partitions),
		stride: 1 + depth,
		order:  make([]uint16, rc.Partitions*(1+depth)),
	}
	points := ringPoints(names, rc.ReplicationFactor)
	seen := make([]int, n) // partition+1 that last collected each shard
	var buf [8]byte
	for p := range rc.Partitions {
		m := c.GetPartitionOwner(p)
		if m == nil {
			return nil, fmt.Errorf("building ring: partition %d has no owner", p)
		}
		owner := index[m.String()]
		row := r.order[p*r.stride : (p+1)*r.stride]
		row[0] = uint16(owner)
		seen[owner] = p + 1

		// Walk the ring from the point the library placed this partition
		// at, so a partition's overflow goes where the ring says next and
		// one full shard's overflow spreads over its neighbours.
		binary.LittleEndian.PutUint64(buf[:], uint64(p))
		h := xxhash.Sum64(buf[:])
		at := sort.Search(len(points), func(i int) bool { return points[i].hash >= h })
		got := 1
		for step := 0; step < len(points) && got < r.stride; step++ {
			s := points[(at+step)%len(points)].shard
			if seen[s] == p+1 {
				continue
			}
			seen[s] = p + 1
			row[got] = uint16(s)
			got++
		}
		if got < r.stride {
			return nil, fmt.Errorf("building ring: partition %d reaches only %d shards", p, got)
		}
	}
	r.sig = signature(names, rc)
	return r, nil
}

type point struct {
	hash  uint64
	shard int
}

// ringPoints rebuilds the library's virtual nodes: replica i of name sits at
// xxhash("<i>:<name>"). On a hash collision the library keeps the member
// added last, which with sorted names is the larger name; so does this.
func ringPoints(names []string, replicas int) []point {
	pts := make([]point, 0, len(names)*replicas)
	for s, n := range names {
		for i := range replicas {
			pts = append(pts, point{hash: xxhash.Sum64String(strconv.Itoa(i) + ":" + n), shard: s})
		}
	}
	slices.SortStableFunc(pts, func(a, b point) int {
		switch {
		case a.hash < b.hash:
			return -1
		case a.hash > b.hash:
			return 1
		}
		return 0
	})
	for i := len(pts) - 1; i > 0; i-- {
		if pts[i-1].hash == pts[i].hash {
			pts[i-1].shard = pts[i].shard
		}
	}
	return pts
}

func signature(names []string, rc RingConfig) string {
	return fmt.Sprintf("partitions=%d replication_factor=%d load=%s shards=%q",
		rc.Partitions, rc.ReplicationFactor, strconv.FormatFloat(rc.Load, 'g', -1, 64), names)
}

// partition returns the partition of key: its xxhash modulo the partition
// count, as consistent.FindPartitionID computes it, without converting key
// to []byte.
func (r *Ring) partition(key string) int {
	return int(xxhash.Sum64String(key) % r.parts)
}

// row returns partition p's owner followed by its next shards on the ring.
func (r *Ring) row(p int) []uint16 {
	return r.order[p*r.stride : (p+1)*r.stride : (p+1)*r.stride]
}

// Owner returns the index in Names of the shard that owns key. It does not
// allocate.
func (r *Ring) Owner(key string) int {
	return int(r.order[r.partition(key)*r.stride])
}

// Names returns the shard names in sorted order, the order Owner indexes.
// The slice is a copy.
func (r *Ring) Names() []string { return slices.Clone(r.names) }

// Len returns the number of shards.
func (r *Ring) Len() int { return len(r.names) }

// Config returns the ring's settings, defaults filled in.
func (r *Ring) Config() RingConfig { return r.rc }

// Signature identifies the placement: the sorted names and the settings.
// Two rings with the same Signature place every key alike, so a reload whose
// shard stage has an unchanged Signature can keep the old Ring.
func (r *Ring) Signature() string { return r.sig }

// RingSignature returns the Signature a Ring built from names and rc would
// have, without building it, so a reload can look up a Ring to reuse. It
// does not validate.
func RingSignature(names []string, rc RingConfig) string {
	sorted := slices.Clone(names)
	slices.Sort(sorted)
	return signature(sorted, rc.withDefaults())
}
