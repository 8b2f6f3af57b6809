// Package health keeps the readiness of upstream endpoints: active probes
// (Checker), passive ejection (Endpoint.ObserveResult) and the Registry that
// holds both, keyed by pool and endpoint address, so that the state of an
// unchanged endpoint outlives a configuration reload.
//
// health imports nothing else of sekisho. The proxy compiles a pool's
// endpoints into Registry entries, starts one Checker per probed pool with
// its Runtime, and asks Endpoint.Available on every pick.
package health

import (
	"cmp"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// Event reports one change of an endpoint's state. Ready and Ejected are the
// endpoint's whole state after the change, so a consumer that mirrors it (the
// sekisho_endpoint_ready gauge) sets Ready && !Ejected and needs no history.
type Event struct {
	Pool, Endpoint string
	// Ready is the probe readiness after the change.
	Ready bool
	// Ejected is whether passive ejection is in force after the change.
	Ejected bool
	// Removed is set once, when Retain dropped the endpoint; a consumer
	// deletes what it keeps for it. No event follows for that endpoint.
	Removed bool
	// Reason says what happened, for the log: "added", "probe: ...",
	// "ejected for 30s after 5 consecutive failures", "ejection ended", ...
	Reason string
}

// Registry holds the health state of every endpoint of every pool, outside
// any compiled configuration: consecutive Runtimes share one Registry, so an
// endpoint that stays in the configuration keeps its readiness, counters and
// ejection across a reload.
//
// A Registry is safe for concurrent use. Build it with NewRegistry.
type Registry struct {
	log    *zap.Logger
	now    func() time.Time // the clock of passive outcomes; tests replace it
	notify atomic.Pointer[func(Event)]

	mu    sync.Mutex
	pools map[string]*Group
	holds map[holdKey]int // see Hold
}

// NewRegistry returns an empty Registry. log may be nil (nothing is logged).
func NewRegistry(log *zap.Logger) *Registry {
	if log == nil {
		log = zap.NewNop()
	}
	return &Registry{log: log, now: time.Now, pools: map[string]*Group{}, holds: map[holdKey]int{}}
}

// SetNotify sets the function called on every state change: an endpoint
// added, ready, unready, ejected, returned from ejection, removed. nil stops
// the calls. Set it before the first endpoint is created: changes made while
// no function is set are not replayed.
//
// fn runs on the goroutine that made the change (a probe, a request, a
// reload) and outside every lock of the Registry, so it may read any state,
// including Snapshot. The events of one endpoint reach fn one at a time and
// in the order they happened; events of different endpoints may arrive
// concurrently. A panic in fn is logged and swallowed.
func (r *Registry) SetNotify(fn func(Event)) {
	if fn == nil {
		r.notify.Store(nil)
		return
	}
	r.notify.Store(&fn)
}

// Group returns the state of pool, creating it (not probed, no passive
// ejection) on first use.
func (r *Registry) Group(pool string) *Group {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.groupLocked(pool)
}

func (r *Registry) groupLocked(pool string) *Group {
	g := r.pools[pool]
	if g == nil {
		g = &Group{reg: r, name: pool, eps: map[string]*Endpoint{}}
		r.pools[pool] = g
	}
	return g
}

// Endpoint returns the state of addr in pool, creating it on first use. A
// created endpoint starts unready when its pool is probed (Group.SetProbed:
// call it before creating the pool's endpoints), ready otherwise, and emits
// an Event with Reason "added".
func (r *Registry) Endpoint(pool, addr string) *Endpoint {
	return r.endpoint(pool, addr, nil)
}

// EndpointFor is Endpoint for a configuration that is not in force yet: a
// created endpoint starts unready when probed is true, whatever the pool's
// current setting, so that compiling a config changes no shared setting
// before it is known to be good.
func (r *Registry) EndpointFor(pool, addr string, probed bool) *Endpoint {
	return r.endpoint(pool, addr, &probed)
}

func (r *Registry) endpoint(pool, addr string, probed *bool) *Endpoint {
	r.mu.Lock()
	g := r.groupLocked(pool)
	g.mu.Lock()
	e := g.eps[addr]
	created := e == nil
	if created {
		p := g.probed.Load()
		if probed != nil {
			p = *probed
		}
		e = newEndpoint(g, addr, !p, r.now())
		g.eps[addr] = e
	}
	g.mu.Unlock()
	r.mu.Unlock()
	if created {
		e.flush()
	}
	return e
}

// Retain drops the state of every (pool, address) pair not listed in pools,
// and every pool not listed at all; call it after a new configuration is in
// service. A dropped endpoint emits an Event with Removed set and no event
// after it, though a Runtime that still holds it may keep using it until it
// closes. Adding it again later creates it anew.
func (r *Registry) Retain(pools map[string][]string) {
	var removed []*Endpoint
	r.mu.Lock()
	for name, g := range r.pools {
		addrs, keep := pools[name]
		g.mu.Lock()
		for addr, e := range g.eps {
			if keep && slices.Contains(addrs, addr) {
				continue
			}
			delete(g.eps, addr)
			removed = append(removed, e)
		}
		g.mu.Unlock()
		if !keep {
			delete(r.pools, name)
		}
	}
	r.mu.Unlock()
	slices.SortFunc(removed, func(a, b *Endpoint) int {
		return cmp.Or(cmp.Compare(a.group.name, b.group.name), cmp.Compare(a.addr, b.addr))
	})
	for _, e := range removed {
		e.remove("removed from configuration")
	}
}

// Hold is EndpointFor for a holder that may let the endpoint go without a
// reload (a pool whose endpoints DNS discovery changes): it counts one more
// hold on (pool, addr), which Release gives back.
func (r *Registry) Hold(pool, addr string, probed bool) *Endpoint {
	e := r.endpoint(pool, addr, &probed)
	r.mu.Lock()
	r.holds[holdKey{pool, addr}]++
	r.mu.Unlock()
	return e
}

// Release gives back one hold on each of pool's addrs and drops the state
// of those no holder has any more, as Retain drops what a new configuration
// no longer lists: several pools of one name may live at once (the one in
// force and those of Runtimes still draining, each following DNS on its
// own), and only the last to let an address go removes it. Each endpoint
// dropped emits its Removed event, with reason; Release returns their
// addresses.
func (r *Registry) Release(pool string, addrs []string, reason string) []string {
	var removed []*Endpoint
	var gone []string
	r.mu.Lock()
	g := r.pools[pool]
	for _, addr := range addrs {
		k := holdKey{pool, addr}
		if r.holds[k]--; r.holds[k] > 0 {
			continue
		}
		delete(r.holds, k)
		gone = append(gone, addr)
		if g == nil {
			continue
		}
		// Under r.mu, so that a Hold cannot find the endpoint between
		// the count reaching zero and its removal.
		g.mu.Lock()
		if e, ok := g.eps[addr]; ok {
			delete(g.eps, addr)
			removed = append(removed, e)
		}
		g.mu.Unlock()
	}
	r.mu.Unlock()
	slices.SortFunc(removed, func(a, b *Endpoint) int { return cmp.Compare(a.addr, b.addr) })
	for _, e := range removed {
		e.remove(reason)
	}
	return gone
}

// holdKey is an address of a pool by name: a pool removed by one reload
// and added back by the next gets a new Group, and its holders look it up
// by name.
type holdKey struct{ pool, addr string }

// PoolStatus is the state of one pool, for GET /pools.
type PoolStatus struct {
	Pool      string           `json:"pool"`
	Probed    bool             `json:"probed"`
	Endpoints []EndpointStatus `json:"endpoints"`
}

// EndpointStatus is the state of one endpoint, for GET /pools. Times are
// omitted when they never happened.
type EndpointStatus struct {
	Address string `json:"address"`
	// Available is Ready && !Ejected: whether the endpoint takes requests.
	Available  bool      `json:"available"`
	Ready      bool      `json:"ready"`
	ReadySince time.Time `json:"ready_since,omitzero"`
	Ejected    bool      `json:"ejected"`
	// EjectedUntil is when the ejection in force ends.
	EjectedUntil time.Time `json:"ejected_until,omitzero"`
	// Ejections counts every ejection since the endpoint was created.
	Ejections int64 `json:"ejections"`
	InFlight  int64 `json:"in_flight"`
	// ConsecutiveSuccesses and ConsecutiveFailures are the probe streaks
	// that rise and fall are compared with.
	ConsecutiveSuccesses int `json:"consecutive_successes"`
	ConsecutiveFailures  int `json:"consecutive_failures"`
	// PassiveFailures is the current streak of failed requests.
	PassiveFailures int64        `json:"passive_failures"`
	LastProbe       *ProbeResult `json:"last_probe,omitempty"`
}

// ProbeResult is the outcome of one active probe.
type ProbeResult struct {
	At         time.Time `json:"at"`
	OK         bool      `json:"ok"`
	Status     int       `json:"status,omitempty"` // 0 when no response came
	Error      string    `json:"error,omitempty"`
	DurationMS float64   `json:"duration_ms"`
}

// Snapshot returns the state of every pool and endpoint, sorted by name and
// address. It changes nothing (an expired ejection shows as not ejected even
// before anyone noticed it ended).
func (r *Registry) Snapshot() []PoolStatus {
	now := r.now()
	r.mu.Lock()
	groups := make([]*Group, 0, len(r.pools))
	for _, g := range r.pools {
		groups = append(groups, g)
	}
	r.mu.Unlock()
	slices.SortFunc(groups, func(a, b *Group) int { return cmp.Compare(a.name, b.name) })

	out := make([]PoolStatus, 0, len(groups))
	for _, g := range groups {
		eps := g.endpoints()
		ps := PoolStatus{Pool: g.name, Probed: g.probed.Load(), Endpoints: make([]EndpointStatus, 0, len(eps))}
		for _, e := range eps {
			ps.Endpoints = append(ps.Endpoints, e.status(now))
		}
		out = append(out, ps)
	}
	return out
}

// Group is the state a pool shares between its endpoints: whether it is
// probed, its passive ejection settings, and the endpoint set that
// max_ejected_percent is counted over. Settings belong to the latest
// compiled configuration and apply at once to every Runtime using the pool.
//
// A Group is safe for concurrent use. Get it from Registry.Group.
type Group struct {
	reg     *Registry
	name    string
	outlier atomic.Pointer[Outlier] // nil: no passive ejection
	probed  atomic.Bool

	mu  sync.Mutex
	eps map[string]*Endpoint
}

// Name returns the pool's name.
func (g *Group) Name() string { return g.name }

// SetProbed records whether the pool has an active readiness probe. Endpoints
// created afterwards start unready when it does. Turning probes off marks
// every endpoint of the pool ready, since nothing would ever make them so;
// turning them on leaves current readiness to the first probes.
func (g *Group) SetProbed(probed bool) {
	if g.probed.Swap(probed) == probed || probed {
		return
	}
	now := g.reg.now()
	for _, e := range g.endpoints() {
		e.setReady(true, now, "pool has no readiness probe")
	}
}

// Probed reports what SetProbed last recorded.
func (g *Group) Probed() bool { return g.probed.Load() }

// endpoints returns the pool's endpoints sorted by address.
func (g *Group) endpoints() []*Endpoint {
	g.mu.Lock()
	eps := make([]*Endpoint, 0, len(g.eps))
	for _, e := range g.eps {
		eps = append(eps, e)
	}
	g.mu.Unlock()
	slices.SortFunc(eps, func(a, b *Endpoint) int { return cmp.Compare(a.addr, b.addr) })
	return eps
}
