// Package sharding is the shard stage: it sends every request for one key
// to the shard that owns the key on a consistent-hash ring of named shards,
// bounds each shard's share of in-flight requests, and keeps a summary of
// each shard's hottest keys.
//
// A shard is an http.Handler (in the proxy, a pool of the shard's replicas);
// this package never knows what a pool is.
package sharding

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"slices"
	"sync/atomic"

	"github.com/cespare/xxhash/v2"
	"github.com/prometheus/client_golang/prometheus"

	"sekisho/router"
)

// HeaderShard is the response header that names the shard that served the
// request, when Config.ExposeHeader is set.
const HeaderShard = "X-Sekisho-Shard"

// Values of Config.OnUnavailable and Config.MissingKey.
const (
	OnUnavailableFail = "fail"
	OnUnavailableNext = "next"
	MissingKeyReject  = "reject"
	MissingKeyRandom  = "random"
)

// DefaultHotKeys is the number of keys each shard's heavy-hitter summary
// tracks when Config.HotKeys is zero; MaxHotKeys bounds it.
const (
	DefaultHotKeys = 32
	MaxHotKeys     = 4096
)

// Shard is one shard of a stage: its name, which is its identity on the
// ring, and the handler that serves it. The handler may implement
// router.Available; one that does not is taken as always ready.
type Shard struct {
	Name    string
	Handler http.Handler
}

// Config describes a shard stage. Field comments give the YAML key; the zero
// value of each optional field takes the default it names.
type Config struct {
	// Route names the route, for the report. Optional.
	Route string
	// Key is the request key (key). Required.
	Key router.Key
	// Shards are the shards (shards), in any order: placement depends on
	// their names only. At least one; names unique.
	Shards []Shard
	// Ring, when set, is a ring built earlier for the same names and
	// settings and is used as is, so a reload that changes neither keeps
	// it. Nil builds one from the names and RingConfig.
	Ring *Ring
	// RingConfig holds the ring settings (partitions, replication_factor,
	// load); zero fields take the Default* values.
	RingConfig RingConfig
	// BalanceFactor (balance_factor) bounds each shard's in-flight
	// requests to BalanceFactor x the mean across shards, rounded up, the
	// mean counting the request being placed (HAProxy's
	// hash-balance-factor/100). A request whose owner is at the bound goes
	// to the next shard on the ring under it. Zero disables the bound.
	// Otherwise it must be at least 1: then some shard is always under the
	// bound, and 1 itself means no shard exceeds an even share.
	BalanceFactor float64
	// OnUnavailable (on_unavailable) is what happens when the owner has no
	// ready replica: "fail" (default) answers 503, "next" sends the request
	// to the next shard on the ring that has one.
	OnUnavailable string
	// MissingKey (missing_key) is what happens to a request without the
	// key: "reject" (default) answers 400 naming the key, "random" sends it
	// to a random shard, weighted by the shards' partitions.
	MissingKey string
	// ExposeHeader (expose_header) names the serving shard in the
	// X-Sekisho-Shard response header.
	ExposeHeader bool
	// HotKeys (hot_keys) is the number of keys each shard's heavy-hitter
	// summary tracks: zero means DefaultHotKeys, negative turns the
	// summaries off. At most MaxHotKeys.
	HotKeys int
	// Requests, when set, counts requests per shard; its variable labels
	// must be exactly shard and overflow ("true" | "false"), the route
	// being curried by the caller.
	Requests *prometheus.CounterVec
}

// Validate reports every problem of c at once, each a router.FieldError
// naming its YAML field.
// It builds nothing.
func (c *Config) Validate() error {
	var errs []error
	if c.Key.IsZero() {
		errs = append(errs, router.FieldErrorf("key", "key: required"))
	}
	names := make([]string, len(c.Shards))
	for i, s := range c.Shards {
		names[i] = s.Name
		if s.Handler == nil {
			errs = append(errs, router.FieldErrorf(fmt.Sprintf("shards[%d]", i), "shards[%d]: shard %q has no handler", i, s.Name))
		}
	}
	errs = append(errs, checkNames(names)...)
	switch {
	case math.IsNaN(c.BalanceFactor) || math.IsInf(c.BalanceFactor, 0):
		errs = append(errs, router.FieldErrorf("balance_factor", "balance_factor: must be 0 or at least 1, got %v", c.BalanceFactor))
	case c.BalanceFactor != 0 && c.BalanceFactor < 1:
		errs = append(errs, router.FieldErrorf("balance_factor", "balance_factor: must be 0 or at least 1, got %v (below 1 every shard could be over the bound)", c.BalanceFactor))
	}
	switch c.OnUnavailable {
	case "", OnUnavailableFail, OnUnavailableNext:
	default:
		errs = append(errs, router.FieldErrorf("on_unavailable", "on_unavailable: must be %q or %q, got %q", OnUnavailableFail, OnUnavailableNext, c.OnUnavailable))
	}
	switch c.MissingKey {
	case "", MissingKeyReject, MissingKeyRandom:
	default:
		errs = append(errs, router.FieldErrorf("missing_key", "missing_key: must be %q or %q, got %q", MissingKeyReject, MissingKeyRandom, c.MissingKey))
	}
	if c.HotKeys > MaxHotKeys {
		errs = append(errs, router.FieldErrorf("hot_keys", "hot_keys: at most %d, got %d", MaxHotKeys, c.HotKeys))
	}
	rc := c.RingConfig.withDefaults()
	if c.Ring == nil {
		errs = append(errs, rc.validate(len(c.Shards))...)
	} else if want := RingSignature(names, rc); c.Ring.Signature() != want {
		errs = append(errs, router.FieldErrorf("", "ring: built as %s, the stage needs %s", c.Ring.Signature(), want))
	}
	return errors.Join(errs...)
}

// Stage is the shard stage, a terminal stage, built by New. It is safe for
// concurrent use, must not be copied, and holds no goroutine, so it needs no
// closing. Its hot path takes no lock: in-flight counts are atomics, and
// hot-key recording skips a request rather than wait for another.
type Stage struct {
	key     router.Key
	ring    *Ring
	route   string
	shards  []*shardState // in ring order
	balance float64
	next    bool // on_unavailable: next
	random  bool // missing_key: random
	expose  bool
	reject  string // 400 body
	anyDown string // 503 body when no shard has a ready replica

	// inFlight, across shards, is kept only with a balance factor, for the
	// bound's mean. The padding keeps these counters, written by requests,
	// off the cache line of the fields above, which every request reads.
	_        [64]byte
	inFlight atomic.Int64
	missing  atomic.Uint64
}

// shardState is the per-shard bookkeeping. The padding keeps one shard's
// counters off the cache line of its neighbour's.
type shardState struct {
	name        string
	handler     http.Handler
	avail       router.Available // handler's readiness, nil when it has none
	header      []string         // HeaderShard value, shared by every response
	down        string           // 503 body
	served      [2]prometheus.Counter
	hot         *summary
	inFlight    atomic.Int64
	requests    atomic.Uint64
	overflowIn  atomic.Uint64
	unavailable atomic.Uint64
	_           [64]byte
}

var (
	_ router.Terminal = (*Stage)(nil)
	_ http.Handler    = (*Stage)(nil)
)

// New validates c and builds its stage: the ring (unless c.Ring is given),
// the per-shard state and the metric children.
func New(c Config) (*Stage, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	ring := c.Ring
	if ring == nil {
		names := make([]string, len(c.Shards))
		for i, s := range c.Shards {
			names[i] = s.Name
		}
		var err error
		if ring, err = NewRing(names, c.RingConfig); err != nil {
			return nil, err
		}
	}
	hot := c.HotKeys
	if hot == 0 {
		hot = DefaultHotKeys
	}
	s := &Stage{
		key:     c.Key,
		ring:    ring,
		route:   c.Route,
		shards:  make([]*shardState, ring.Len()),
		balance: c.BalanceFactor,
		next:    c.OnUnavailable == OnUnavailableNext,
		random:  c.MissingKey == MissingKeyRandom,
		expose:  c.ExposeHeader,
		reject:  fmt.Sprintf("missing request key: %s", c.Key),
		anyDown: "no shard has a ready replica",
	}
	for _, sh := range c.Shards {
		i, _ := slices.BinarySearch(ring.names, sh.Name)
		st := &shardState{
			name:    sh.Name,
			handler: sh.Handler,
			header:  []string{sh.Name},
			down:    fmt.Sprintf("shard %q has no ready replica", sh.Name),
		}
		// Asserted once here rather than per request: a failed interface
		// assertion is a lookup the hot path need not pay.
		st.avail, _ = sh.Handler.(router.Available)
		if hot > 0 {
			st.hot = newSummary(hot)
		}
		if c.Requests != nil {
			for j, overflow := range []string{"false", "true"} {
				m, err := c.Requests.GetMetricWith(prometheus.Labels{"shard": sh.Name, "overflow": overflow})
				if err != nil {
					return nil, fmt.Errorf("shard requests counter: %w", err)
				}
				st.served[j] = m
			}
		}
		s.shards[i] = st
	}
	return s, nil
}

// Wrap returns the stage itself: it answers every request, so next must be
// nil.
func (s *Stage) Wrap(next http.Handler) (http.Handler, error) {
	if next != nil {
		return nil, errors.New("shard is a terminal stage: nothing may follow it")
	}
	return s, nil
}

// Terminal marks the shard stage as terminal.
func (s *Stage) Terminal() {}

// Ring returns the stage's ring, for reuse by the next configuration.
func (s *Stage) Ring() *Ring { return s.ring }

// ServeHTTP sends r to the shard that owns its key, or past it per the
// balance factor and on_unavailable, and records the choice in r's
// router.Info.
func (s *Stage) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	pk, ok := s.pick(r)
	if !ok {
		http.Error(w, s.reject, http.StatusBadRequest)
		return
	}
	sh := s.shards[pk.shard]
	if info := router.InfoFrom(r); info != nil {
		info.Shard = sh.name
		info.Overflow = pk.overflow
	}
	if s.expose {
		// The shared one-element slice has no spare capacity, so a later
		// Add copies it instead of writing into another response's header.
		w.Header()[HeaderShard] = sh.header[:1:1]
	}
	if !pk.up {
		sh.unavailable.Add(1)
		body := sh.down
		if s.next {
			body = s.anyDown
		}
		http.Error(w, body, http.StatusServiceUnavailable)
		return
	}
	sh.requests.Add(1)
	o := 0
	if pk.overflow {
		o = 1
		sh.overflowIn.Add(1)
	}
	if c := sh.served[o]; c != nil {
		c.Inc()
	}
	if pk.hasKey && sh.hot != nil {
		sh.hot.record(pk.hash, pk.key)
	}
	sh.inFlight.Add(1)
	balanced := s.balance > 0
	if balanced {
		s.inFlight.Add(1)
	}
	// Deferred so that a handler aborting with a panic (ReverseProxy's
	// http.ErrAbortHandler) still leaves the counts right.
	defer func() {
		sh.inFlight.Add(-1)
		if balanced {
			s.inFlight.Add(-1)
		}
	}()
	sh.handler.ServeHTTP(w, r)
}

// choice is the outcome of pick for one request.
type choice struct {
	key      string
	hash     uint64
	hasKey   bool
	shard    int
	overflow bool
	up       bool
}

// pick extracts r's key and chooses its shard. It reports false for a
// request without the key under missing_key: reject.
func (s *Stage) pick(r *http.Request) (choice, bool) {
	var c choice
	var p int
	c.key, c.hasKey = s.key.Value(r)
	if c.hasKey {
		c.hash = xxhash.Sum64String(c.key)
		p = int(c.hash % s.ring.parts)
	} else {
		s.missing.Add(1)
		if !s.random {
			return c, false
		}
		// A random partition rather than a random shard keeps the shards'
		// shares as the ring sets them.
		p = rand.IntN(int(s.ring.parts))
	}
	c.shard, c.overflow, c.up = s.choose(p)
	return c, true
}

// choose picks the shard for partition p: its owner unless the owner is at
// the balance bound or, with on_unavailable: next, down; then the first
// shard after it on the ring that is up and under the bound. When every
// shard that is up is at the bound (only possible as counts move under
// it), the first of them in ring order takes the request. up is false when
// no permitted shard has a ready replica; i then names the owner.
func (s *Stage) choose(p int) (i int, overflow, up bool) {
	row := s.ring.row(p)
	owner := int(row[0])
	ownerUp := s.shards[owner].up()
	if !ownerUp && !s.next {
		return owner, false, false
	}
	bound := int64(math.MaxInt64)
	if s.balance > 0 {
		bound = int64(math.Ceil(s.balance * float64(s.inFlight.Load()+1) / float64(len(s.shards))))
	}
	if ownerUp && s.shards[owner].inFlight.Load() < bound {
		return owner, false, true
	}
	first := -1 // first shard that is up, for when all are at the bound
	if ownerUp {
		first = owner
	}
	for _, c := range row[1:] {
		if s.fits(int(c), bound, &first) {
			return int(c), true, true
		}
	}
	// The row holds only the nearest maxFallbacks shards; the rest follow
	// in name order.
	if n := len(s.shards); len(row) < n {
		for k := 1; k < n; k++ {
			c := (owner + k) % n
			if slices.Contains(row, uint16(c)) {
				continue
			}
			if s.fits(c, bound, &first) {
				return c, true, true
			}
		}
	}
	if first < 0 {
		return owner, false, false
	}
	return first, first != owner, true
}

// fits reports whether shard c is up and under bound, noting in first the
// first shard seen up.
func (s *Stage) fits(c int, bound int64, first *int) bool {
	st := s.shards[c]
	if !st.up() {
		return false
	}
	if *first < 0 {
		*first = c
	}
	return st.inFlight.Load() < bound
}

// up reports whether the shard has a ready replica, per router.Available.
func (st *shardState) up() bool {
	return st.avail == nil || st.avail.Available()
}

// HotKeys reports the stage's per-shard counts and heavy hitters. It is
// safe to call while the stage serves; each shard's figures are read at a
// slightly different instant.
func (s *Stage) HotKeys() Report {
	rep := Report{Route: s.route, MissingKey: s.missing.Load(), Shards: make([]ShardReport, len(s.shards))}
	for i, st := range s.shards {
		sr := ShardReport{
			Name:         st.name,
			Requests:     st.requests.Load(),
			InFlight:     st.inFlight.Load(),
			OverflowedIn: st.overflowIn.Load(),
			Unavailable:  st.unavailable.Load(),
			TopKeys:      []KeyCount{},
		}
		if st.hot != nil {
			sr.TopKeys, sr.Recorded = st.hot.top()
		}
		rep.Shards[i] = sr
	}
	return rep
}
