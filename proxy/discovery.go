package proxy

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"sekisho/discovery"
	"sekisho/health"
	"sekisho/proxy/config"
	"sekisho/proxy/upstream"
)

// discoveryHub keeps the DNS Sources of the pools' dns:// and dns+srv://
// endpoints. A Source belongs to one (pool, target, resolver settings):
// consecutive Runtimes whose pool keeps the target share it, so a reload
// neither resolves again nor loses the set in force, and it closes when the
// last Runtime using it closes. A Source resolves on its own goroutine; the
// request path only ever reads the set a pool already has.
type discoveryHub struct {
	shared *Shared

	// mu guards sources and subscribers, and serialises every change of a
	// discovered pool's endpoint set with Server.retain, so that the
	// registry never drops an endpoint a pool has just taken in.
	mu      sync.Mutex
	sources map[sourceKey]*watchedSource
}

type sourceKey struct {
	pool, target, resolver string
}

// watchedSource is one shared Source with the pools that use it.
type watchedSource struct {
	hub  *discoveryHub
	key  sourceKey
	src  *discovery.Source
	refs int // Runtimes holding it; guarded by hub.mu
	subs map[*discoveredPool]struct{}
	// started is set by the first Runtime.Start; guarded by hub.mu.
	started bool
	// failing is the result label of the failure in force, "" while the
	// last resolution succeeded: a failure is logged when it begins or
	// changes kind, not at every retry. Only the Source's goroutine (the
	// OnResult hook) touches it.
	failing string
}

// discoveredPool is one Runtime's pool that has discovered endpoints: it
// merges the static endpoints and the Sources' sets, in config order, into
// the pool's endpoint set whenever one of them changes.
type discoveredPool struct {
	hub    *discoveryHub
	name   string
	pool   *upstream.Pool
	parts  []poolPart
	origin atomic.Pointer[map[string]endpointOrigin] // by endpoint address
	// applied is closed once every Source of the pool has resolved and its
	// set is in the pool; until then the pool is not ready.
	applied     chan struct{}
	appliedOnce sync.Once
}

// poolPart is one entry of a pool's endpoints list.
type poolPart struct {
	static upstream.Endpoint // when w is nil
	w      *watchedSource
	scheme string // of every endpoint w discovers
	weight int    // the config's weight of a dns:// entry: each address's
}

// originStatic is the source /pools names for an endpoint of the config.
const originStatic = "static"

// endpointOrigin is where an endpoint in force came from, as /pools shows
// it: "static" or the target that discovered it, and its failover tier.
type endpointOrigin struct {
	source   string
	priority int
}

func newDiscoveryHub(shared *Shared) *discoveryHub {
	return &discoveryHub{shared: shared, sources: map[sourceKey]*watchedSource{}}
}

// resolverOf is the Resolver of one Source under the settings d.
func resolverOf(d config.Discovery) *discovery.Resolver {
	return &discovery.Resolver{Servers: d.Resolvers, Timeout: d.Timeout.D(), MinTTL: d.MinTTL.D(), MaxTTL: d.MaxTTL.D(),
		MaxEndpoints: d.MaxEndpoints}
}

// acquire returns the Source of target for pool under settings d, creating
// it (not started) when no Runtime holds it, and takes a reference on it.
func (h *discoveryHub) acquire(pool string, target discovery.Target, d config.Discovery) *watchedSource {
	key := sourceKey{pool: pool, target: target.String(),
		resolver: fmt.Sprint(d.Resolvers, d.MinTTL, d.MaxTTL, d.Timeout, d.MaxEndpoints)}
	h.mu.Lock()
	defer h.mu.Unlock()
	if w := h.sources[key]; w != nil {
		w.refs++
		return w
	}
	w := &watchedSource{hub: h, key: key, refs: 1, subs: map[*discoveredPool]struct{}{}}
	r := resolverOf(d)
	r.OnResult = func(string, bool) { w.result() }
	w.src = discovery.NewSource(r, target, func(discovery.Set) { w.changed() })
	h.sources[key] = w
	return w
}

// attach makes dp, whose pool is built, follow its Sources' changes, and
// applies what they know now (what changed since the pool was built).
func (h *discoveryHub) attach(dp *discoveredPool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, part := range dp.parts {
		if part.w != nil {
			part.w.subs[dp] = struct{}{}
		}
	}
	dp.refreshLocked()
}

// start starts dp's Sources that are not running yet.
func (h *discoveryHub) start(dp *discoveredPool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, part := range dp.parts {
		if w := part.w; w != nil && !w.started {
			w.started = true
			// A Source outlives the Runtime that started it: it stops when
			// its last Runtime releases it.
			w.src.Start(context.Background())
		}
	}
}

// release drops dp's subscriptions and references, closing each Source no
// Runtime holds any more.
func (h *discoveryHub) release(dp *discoveredPool) {
	var closing []*discovery.Source
	h.mu.Lock()
	for _, part := range dp.parts {
		w := part.w
		if w == nil {
			continue
		}
		delete(w.subs, dp)
		if w.refs--; w.refs == 0 {
			delete(h.sources, w.key)
			closing = append(closing, w.src)
		}
	}
	if !h.discoversLocked(dp.name) {
		h.shared.Metrics.DiscoveryEndpoints.DeleteLabelValues(dp.name)
	}
	h.mu.Unlock()
	// Outside the lock: Close waits for the Source's goroutine, which may
	// be waiting for the lock to apply a change.
	for _, src := range closing {
		src.Close()
	}
}

// discoversLocked reports whether a Runtime still discovers endpoints for
// pool; hub.mu is held.
func (h *discoveryHub) discoversLocked(pool string) bool {
	for k := range h.sources {
		if k.pool == pool {
			return true
		}
	}
	return false
}

// changed applies a new set of w to every pool that uses it.
func (w *watchedSource) changed() {
	h := w.hub
	h.mu.Lock()
	defer h.mu.Unlock()
	for dp := range w.subs {
		dp.refreshLocked()
	}
}

// result counts and logs one resolution of w, which its Source has recorded.
func (w *watchedSource) result() {
	h, pool := w.hub, w.key.pool
	m := h.shared.Metrics
	st := w.src.State()
	label := resultLabel(st.LastError)
	m.DiscoveryResolutions.WithLabelValues(pool, label).Inc()
	log := h.shared.Log.With(zap.String("pool", pool), zap.String("target", w.key.target))
	if st.LastError == nil {
		cur := w.src.Current()
		if cur.PortZero > 0 {
			m.DiscoveryIgnored.WithLabelValues(pool, "srv_port_zero").Add(float64(cur.PortZero))
		}
		if cur.OverLimit > 0 {
			m.DiscoveryIgnored.WithLabelValues(pool, "over_max_endpoints").Add(float64(cur.OverLimit))
		}
		if w.failing != "" {
			log.Info("discovery resolves again", zap.Int("endpoints", len(cur.Endpoints)))
		}
		w.failing = ""
		return
	}
	if w.failing == label {
		return
	}
	w.failing = label
	if !st.Resolved {
		log.Warn("discovery failed; the target has no endpoints yet", zap.Error(st.LastError),
			zap.Time("next", st.Next))
		return
	}
	log.Warn("discovery failed; keeping the last good set", zap.Error(st.LastError),
		zap.Int("endpoints", len(w.src.Current().Endpoints)), zap.Time("next", st.Next))
}

// resultLabel is the result label of a resolution that ended with err.
func resultLabel(err error) string {
	switch {
	case err == nil:
		return "success"
	case errors.Is(err, discovery.ErrNXDomain):
		return "nxdomain"
	case errors.Is(err, discovery.ErrNoRecords):
		return "no_records"
	case errors.Is(err, discovery.ErrTimeout):
		return "timeout"
	}
	return "error"
}

// endpoints merges the pool's parts, in config order, into its endpoint
// set, with the origin of each address; an address met twice keeps its
// first place and the better of its tiers. It reports whether every Source
// has resolved.
//
// A SRV target's priorities become failover tiers by rank: its most
// preferred priority is tier 0, beside the static and A/AAAA endpoints,
// its next one tier 1, and so on. The numbers themselves mean nothing
// across names (one zone's 10 is another's 0), and ranks keep a SRV name
// with one priority, as Kubernetes gives, from becoming a backup of the
// static entries.
func (dp *discoveredPool) endpoints() ([]upstream.Endpoint, map[string]endpointOrigin, bool) {
	var eps []upstream.Endpoint
	origin := map[string]endpointOrigin{}
	index := map[string]int{} // into eps
	resolved := true
	add := func(e upstream.Endpoint, from string) {
		if i, dup := index[e.Addr]; dup {
			// The first place and source stand; the preferred tier does
			// too, so that config order cannot make a static endpoint a
			// backup.
			if e.Priority < eps[i].Priority {
				eps[i].Priority = e.Priority
				origin[e.Addr] = endpointOrigin{source: origin[e.Addr].source, priority: e.Priority}
			}
			return
		}
		index[e.Addr] = len(eps)
		origin[e.Addr] = endpointOrigin{source: from, priority: e.Priority}
		eps = append(eps, e)
	}
	var ranks []uint16
	for _, part := range dp.parts {
		if part.w == nil {
			add(part.static, originStatic)
			continue
		}
		if !part.w.src.State().Resolved {
			resolved = false
		}
		found := part.w.src.Current().Endpoints
		ranks = ranks[:0]
		for _, e := range found {
			ranks = append(ranks, e.Priority)
		}
		slices.Sort(ranks)
		ranks = slices.Compact(ranks)
		for _, e := range found {
			weight := e.Weight
			if part.weight > 0 {
				weight *= part.weight
			}
			tier, _ := slices.BinarySearch(ranks, e.Priority)
			add(upstream.Endpoint{Scheme: part.scheme, Addr: e.Addr, Weight: weight, Priority: tier}, part.w.key.target)
		}
	}
	return eps, origin, resolved
}

// refreshLocked puts the merged set in force in the pool; hub.mu is held.
func (dp *discoveredPool) refreshLocked() {
	eps, origin, resolved := dp.endpoints()
	added, removed := dp.pool.SetEndpoints(eps)
	dp.origin.Store(&origin)
	discovered := 0
	for _, from := range origin {
		if from.source != originStatic {
			discovered++
		}
	}
	dp.hub.shared.Metrics.DiscoveryEndpoints.WithLabelValues(dp.name).Set(float64(discovered))
	if len(added) > 0 || len(removed) > 0 {
		dp.hub.shared.Log.Info("discovered endpoints changed", zap.String("pool", dp.name),
			zap.Strings("added", added), zap.Strings("removed", removed), zap.Int("endpoints", len(eps)))
	}
	if resolved {
		dp.appliedOnce.Do(func() { close(dp.applied) })
	}
}

// firstScheme is the scheme of the pool's first entry, static or
// discovered.
func (dp *discoveredPool) firstScheme() string {
	if part := dp.parts[0]; part.w != nil {
		return part.scheme
	}
	return cmp.Or(dp.parts[0].static.Scheme, "http")
}

// ready reports whether every Source of the pool has resolved and its set
// is in force.
func (dp *discoveredPool) ready() bool {
	select {
	case <-dp.applied:
		return true
	default:
		return false
	}
}

// waiting says which target the pool still waits for, and why.
func (dp *discoveredPool) waiting() string {
	for _, part := range dp.parts {
		if part.w == nil {
			continue
		}
		st := part.w.src.State()
		if st.Resolved {
			continue
		}
		if st.LastError != nil {
			return fmt.Sprintf("pool %q: %s has not resolved yet: %v", dp.name, part.w.key.target, st.LastError)
		}
		return fmt.Sprintf("pool %q: waiting for the first resolution of %s", dp.name, part.w.key.target)
	}
	return fmt.Sprintf("pool %q: waiting for its discovered endpoints", dp.name)
}

// sourceStatus is a Source's state for GET /pools.
type sourceStatus struct {
	Target      string    `json:"target"`
	Resolved    bool      `json:"resolved"`
	Endpoints   int       `json:"endpoints"`
	LastAttempt time.Time `json:"last_resolution,omitzero"`
	LastSuccess time.Time `json:"last_success,omitzero"`
	LastError   string    `json:"last_error,omitempty"`
	Failures    int       `json:"consecutive_failures"`
	Next        time.Time `json:"next_resolution,omitzero"`
	// Ignored counts the records of the last answer left out: SRV records
	// with port 0, and endpoints past max_endpoints.
	IgnoredPortZero  int `json:"ignored_srv_port_zero,omitempty"`
	IgnoredOverLimit int `json:"ignored_over_max_endpoints,omitempty"`
}

// status returns the state of the pool's Sources, in config order.
func (dp *discoveredPool) status() []sourceStatus {
	var out []sourceStatus
	for _, part := range dp.parts {
		if part.w == nil {
			continue
		}
		st, cur := part.w.src.State(), part.w.src.Current()
		s := sourceStatus{Target: part.w.key.target, Resolved: st.Resolved, Endpoints: len(cur.Endpoints),
			LastAttempt: st.LastAttempt, LastSuccess: st.LastSuccess, Failures: st.Failures, Next: st.Next,
			IgnoredPortZero: cur.PortZero, IgnoredOverLimit: cur.OverLimit}
		if st.LastError != nil {
			s.LastError = st.LastError.Error()
		}
		out = append(out, s)
	}
	return out
}

// origins returns where each endpoint in force came from.
func (dp *discoveredPool) origins() map[string]endpointOrigin {
	if m := dp.origin.Load(); m != nil {
		return *m
	}
	return nil
}

// discoveredParts builds the parts of pool name's endpoints list, taking a
// reference on the Source of each discovered entry; the caller releases
// them (dp.release) whatever happens next.
func (c *compiler) discoveredParts(name string, pc *config.Pool) (*discoveredPool, error) {
	if !slices.ContainsFunc(pc.Endpoints, config.Endpoint.Discovered) {
		return nil, nil
	}
	hub := c.shared.discovery
	dp := &discoveredPool{hub: hub, name: name, applied: make(chan struct{})}
	settings := c.cfg.DiscoveryFor(name)
	scheme := pc.DiscoveredScheme()
	for _, e := range pc.Endpoints {
		if !e.Discovered() {
			u, err := config.ParseEndpoint(e.Address)
			if err != nil {
				hub.release(dp)
				return nil, err
			}
			dp.parts = append(dp.parts, poolPart{static: upstream.Endpoint{Scheme: u.Scheme, Addr: u.Host, Weight: e.Weight}})
			continue
		}
		target, err := discovery.ParseTarget(e.Address)
		if err != nil {
			hub.release(dp)
			return nil, err
		}
		dp.parts = append(dp.parts, poolPart{w: hub.acquire(name, target, settings), scheme: scheme, weight: e.Weight})
	}
	return dp, nil
}

// poolView is a pool's state for GET /pools: the registry's, with each
// endpoint's origin and, for a pool with discovered endpoints, the state of
// its Sources.
type poolView struct {
	health.PoolStatus
	Endpoints []endpointView `json:"endpoints"`
	Discovery []sourceStatus `json:"discovery,omitempty"`
}

type endpointView struct {
	health.EndpointStatus
	// Source is "static" for an endpoint the config lists, or the
	// dns:// or dns+srv:// target that discovered it.
	Source string `json:"source"`
	// Priority is its failover tier, 0 the preferred (see
	// discoveredPool.endpoints); shown when not 0.
	Priority int `json:"priority,omitempty"`
}

// pools returns the state of every pool, as GET /pools shows it.
func (d *Daemon) pools() []poolView {
	var discovered map[string]*discoveredPool
	if rt := d.server.Runtime(); rt != nil {
		discovered = rt.discovered
	}
	snap := d.shared.Registry.Snapshot()
	out := make([]poolView, 0, len(snap))
	for _, ps := range snap {
		v := poolView{PoolStatus: ps, Endpoints: make([]endpointView, 0, len(ps.Endpoints))}
		var origin map[string]endpointOrigin
		if dp := discovered[ps.Pool]; dp != nil {
			origin = dp.origins()
			v.Discovery = dp.status()
		}
		for _, es := range ps.Endpoints {
			from := endpointOrigin{source: originStatic}
			if o, ok := origin[es.Address]; ok {
				from = o
			}
			v.Endpoints = append(v.Endpoints, endpointView{EndpointStatus: es, Source: from.source, Priority: from.priority})
		}
		out = append(out, v)
	}
	return out
}
