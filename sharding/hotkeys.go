package sharding

import (
	"cmp"
	"slices"
	"strings"
	"sync"
)

// maxKeyBytes is how much of a key a summary keeps for display; the key's
// full hash still tells keys apart, so two long keys with one prefix show as
// two entries with the same text.
const maxKeyBytes = 256

// summary is a space-saving heavy-hitter summary (Metwally, Agrawal, El
// Abbadi, 2005) of the keys one shard served, in fixed memory: capacity
// counters, each with a key buffer of at most maxKeyBytes. A key seen more
// than recorded/capacity times is always in it; a counter overestimates its
// key's count by at most its err.
//
// Counters stay put in slots; a min-heap of slot numbers finds the one to
// evict, and an open-addressing table maps a key's hash to its slot. Both are
// sized once, so a full summary records without allocating, and a heap move
// writes a slot's position instead of rehashing a key.
//
// Recording never waits: when another request holds the lock the key is
// dropped, which samples a busy shard instead of queueing its requests
// behind one mutex.
type summary struct {
	mu       sync.Mutex
	recorded uint64
	slots    []counter
	heap     []heapEntry // least count first
	index    hashIndex
}

type counter struct {
	hash uint64
	err  uint64
	at   int32 // position in heap, which holds the count
	key  []byte
}

// heapEntry keeps the count next to the slot number so that sifting reads
// one array only.
type heapEntry struct {
	count uint64
	slot  int32
}

func newSummary(capacity int) *summary {
	return &summary{
		slots: make([]counter, 0, capacity),
		heap:  make([]heapEntry, 0, capacity),
		index: newHashIndex(capacity),
	}
}

// record counts key, whose xxhash is h, unless another goroutine is
// recording into s. It reports whether key was counted.
func (s *summary) record(h uint64, key string) bool {
	if !s.mu.TryLock() {
		return false
	}
	s.recorded++
	if i := s.index.get(h); i >= 0 {
		at := int(s.slots[i].at)
		s.heap[at].count++
		s.down(at)
		s.mu.Unlock()
		return true
	}
	key = key[:min(len(key), maxKeyBytes)]
	if len(s.slots) < cap(s.slots) {
		i := int32(len(s.slots))
		s.slots = append(s.slots, counter{hash: h, at: int32(len(s.heap)), key: []byte(key)})
		s.heap = append(s.heap, heapEntry{count: 1, slot: i})
		s.index.put(h, i)
		s.up(len(s.heap) - 1)
		s.mu.Unlock()
		return true
	}
	// Space-saving: the new key takes the smallest counter over, and that
	// counter's count becomes the new key's possible overestimate.
	i := s.heap[0].slot
	c := &s.slots[i]
	s.index.del(c.hash)
	c.hash = h
	c.err = s.heap[0].count
	s.heap[0].count++
	c.key = append(c.key[:0], key...)
	s.index.put(h, i)
	s.down(0)
	s.mu.Unlock()
	return true
}

func (s *summary) less(a, b int) bool {
	return s.heap[a].count < s.heap[b].count
}

func (s *summary) swap(a, b int) {
	s.heap[a], s.heap[b] = s.heap[b], s.heap[a]
	s.slots[s.heap[a].slot].at = int32(a)
	s.slots[s.heap[b].slot].at = int32(b)
}

func (s *summary) up(i int) {
	for i > 0 {
		p := (i - 1) / 2
		if !s.less(i, p) {
			return
		}
		s.swap(i, p)
		i = p
	}
}

func (s *summary) down(i int) {
	n := len(s.heap)
	for {
		l := 2*i + 1
		if l >= n {
			return
		}
		m := l
		if r := l + 1; r < n && s.less(r, l) {
			m = r
		}
		if !s.less(m, i) {
			return
		}
		s.swap(i, m)
		i = m
	}
}

// hashIndex maps key hashes to slot numbers: linear probing over a power of
// two at most half full, with backward-shift deletion so that it never
// fills with tombstones. Hashes are xxhash output, already well mixed.
type hashIndex struct {
	hashes []uint64
	slots  []int32 // -1 marks an empty cell
	mask   uint64
}

func newHashIndex(capacity int) hashIndex {
	size := 8
	for size < 2*capacity {
		size *= 2
	}
	x := hashIndex{hashes: make([]uint64, size), slots: make([]int32, size), mask: uint64(size - 1)}
	for i := range x.slots {
		x.slots[i] = -1
	}
	return x
}

// get returns the slot of h, or -1.
func (x *hashIndex) get(h uint64) int32 {
	for i := h & x.mask; ; i = (i + 1) & x.mask {
		if x.slots[i] < 0 || x.hashes[i] == h {
			return x.slots[i]
		}
	}
}

// put maps h, which must be absent, to slot.
func (x *hashIndex) put(h uint64, slot int32) {
	i := h & x.mask
	for x.slots[i] >= 0 {
		i = (i + 1) & x.mask
	}
	x.hashes[i], x.slots[i] = h, slot
}

// del removes h, which must be present, and moves later cells of its probe
// run back so that every remaining hash stays reachable from its home cell.
func (x *hashIndex) del(h uint64) {
	i := h & x.mask
	for x.hashes[i] != h || x.slots[i] < 0 {
		i = (i + 1) & x.mask
	}
	x.slots[i] = -1
	for j := (i + 1) & x.mask; x.slots[j] >= 0; j = (j + 1) & x.mask {
		home := x.hashes[j] & x.mask
		// The entry at j may move to the hole at i unless its home lies
		// cyclically within (i, j].
		if (j-home)&x.mask < (j-i)&x.mask {
			continue
		}
		x.hashes[i], x.slots[i] = x.hashes[j], x.slots[j]
		x.slots[j] = -1
		i = j
	}
}

// top returns the counters by count, largest first (ties by key), and how
// many keys were recorded.
func (s *summary) top() ([]KeyCount, uint64) {
	s.mu.Lock()
	out := make([]KeyCount, len(s.slots))
	for i, c := range s.slots {
		out[i] = KeyCount{Key: string(c.key), Count: s.heap[c.at].count, Error: c.err}
	}
	recorded := s.recorded
	s.mu.Unlock()
	slices.SortFunc(out, func(a, b KeyCount) int {
		if c := cmp.Compare(b.Count, a.Count); c != 0 {
			return c
		}
		return strings.Compare(a.Key, b.Key)
	})
	return out, recorded
}

// KeyCount is one entry of a shard's heavy-hitter summary. The key was seen
// between Count-Error and Count times among the recorded requests.
type KeyCount struct {
	Key   string `json:"key"`
	Count uint64 `json:"count"`
	Error uint64 `json:"error"`
}

// ShardReport is what a shard stage knows about one shard.
type ShardReport struct {
	Name string `json:"name"`
	// Requests counts requests sent to the shard, overflow included.
	Requests uint64 `json:"requests"`
	InFlight int64  `json:"in_flight"`
	// OverflowedIn counts requests the shard took for another shard's key
	// (bounded load or on_unavailable: next).
	OverflowedIn uint64 `json:"overflowed_in"`
	// Unavailable counts requests for the shard's keys that found no ready
	// replica in it.
	Unavailable uint64 `json:"unavailable"`
	// Recorded counts requests whose key went into TopKeys; it trails
	// Requests when concurrent requests to the shard skipped recording, and
	// requests without a key are never recorded.
	Recorded uint64     `json:"recorded"`
	TopKeys  []KeyCount `json:"top_keys"`
}

// Report is a shard stage's state for the admin endpoint (GET /shards):
// per shard counts and hot keys. Shards are in ring (name) order.
type Report struct {
	Route string `json:"route"`
	// MissingKey counts requests without the key (rejected or sent to a
	// random shard, per missing_key).
	MissingKey uint64        `json:"missing_key"`
	Shards     []ShardReport `json:"shards"`
}
