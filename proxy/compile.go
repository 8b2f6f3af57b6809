package proxy

import (
	"context"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"sekisho/health"
	"sekisho/proxy/balance"
	"sekisho/proxy/config"
	"sekisho/proxy/metrics"
	"sekisho/proxy/upstream"
	"sekisho/router"
)

// Shared is what consecutive Runtimes share: endpoint health, metrics, logs
// and the caches that let a reload keep what did not change. One Shared lives
// as long as the process. It is safe for concurrent use.
type Shared struct {
	Registry *health.Registry
	Metrics  *metrics.Metrics
	Log      *zap.Logger

	transports transportCache
	rings      ringCache
	buffers    *upstream.BufferPool
	discovery  *discoveryHub
}

// NewShared returns a Shared with a fresh registry and metrics; log may be nil.
func NewShared(log *zap.Logger) *Shared {
	if log == nil {
		log = zap.NewNop()
	}
	shared := &Shared{Registry: health.NewRegistry(log), Metrics: metrics.New(), Log: log, buffers: upstream.NewBufferPool()}
	shared.discovery = newDiscoveryHub(shared)
	shared.Registry.SetNotify(shared.endpointEvent)
	return shared
}

// endpointEvent keeps sekisho_endpoint_ready in step with the registry and
// logs every change of an endpoint's state.
func (shared *Shared) endpointEvent(ev health.Event) {
	if ev.Removed {
		shared.Metrics.EndpointReady.DeleteLabelValues(ev.Pool, ev.Endpoint)
		return
	}
	v := 0.0
	if ev.Ready && !ev.Ejected {
		v = 1
	}
	shared.Metrics.EndpointReady.WithLabelValues(ev.Pool, ev.Endpoint).Set(v)
	if ev.Reason == "added" {
		return
	}
	shared.Log.Info("endpoint state changed", zap.String("pool", ev.Pool), zap.String("endpoint", ev.Endpoint),
		zap.Bool("ready", ev.Ready), zap.Bool("ejected", ev.Ejected), zap.String("reason", ev.Reason))
}

// Runtime is one compiled config: route tables per listener address, pools
// and stages. It is immutable once compiled; Start starts its probes and
// Close stops them and whatever else it owns (mirror copies) and waits.
type Runtime struct {
	cfg       *config.Config
	listeners map[string]*listenerRuntime // by listen address
	pools     map[string]*upstream.Pool
	// discovered are the pools with dns:// or dns+srv:// endpoints, by
	// name.
	discovered map[string]*discoveredPool
	closers    []io.Closer
	shards     []hotKeyReporter
	loadedAt   time.Time
	access     *accessLog // nil when off; set by Server.Apply
	commits    []func()   // changes to shared state, made when put in force

	refs      atomic.Int64 // the Server's own reference plus one per request
	startOnce sync.Once
	closeOnce sync.Once
	cancel    context.CancelFunc
}

// hotKeyReporter is a shard stage, as seen by GET /shards.
type hotKeyReporter interface {
	HotKeysReport() any
}

// listenerRuntime is what a listener needs per request.
type listenerRuntime struct {
	name     string
	table    *router.Table
	clientIP *router.ClientIPResolver
	notFound *routeEntry
	cfg      *config.Listener
	inbound  inboundRules
}

// routeEntry is a route's compiled pipeline with its metric children.
type routeEntry struct {
	name     string
	handler  http.Handler
	upgrades routeUpgrades // the protocols a client may switch to
	requests *metrics.CodeCounters
	duration prometheus.Observer
	limits   *routeLimits // nil when the route sets no body limit or timeout
}

func (e *routeEntry) ServeHTTP(w http.ResponseWriter, r *http.Request) { e.handler.ServeHTTP(w, r) }

// unmatchedRoute is the route label of requests no route matched.
const unmatchedRoute = "_unmatched"

// Config returns the config the Runtime was compiled from.
func (rt *Runtime) Config() *config.Config { return rt.cfg }

// Compile builds pools, stages and routes from cfg. It starts nothing: no
// probe runs and no socket opens until Start. Endpoint health is looked up
// in shared.Registry, so an endpoint that a previous Runtime knew keeps its
// state.
func Compile(cfg *config.Config, shared *Shared) (rt *Runtime, err error) {
	c := &compiler{cfg: cfg, shared: shared, rt: &Runtime{cfg: cfg, listeners: map[string]*listenerRuntime{}, pools: map[string]*upstream.Pool{}, loadedAt: time.Now()}}
	defer func() {
		if err != nil {
			c.rt.Close()
		}
	}()
	for _, name := range slices.Sorted(maps.Keys(cfg.Pools)) {
		p, err := c.pool(name, cfg.Pools[name])
		if err != nil {
			return nil, fmt.Errorf("pool %q: %w", name, err)
		}
		c.rt.pools[name] = p
	}
	for i := range cfg.Listeners {
		lc := &cfg.Listeners[i]
		lr, err := c.listener(lc)
		if err != nil {
			return nil, fmt.Errorf("listener %q: %w", lc.Name, err)
		}
		c.rt.listeners[lc.Listen] = lr
	}
	c.rt.refs.Store(1)
	return c.rt, nil
}

type compiler struct {
	cfg    *config.Config
	shared *Shared
	rt     *Runtime
}

func (c *compiler) listener(lc *config.Listener) (*listenerRuntime, error) {
	m := c.shared.Metrics
	lr := &listenerRuntime{name: lc.Name, cfg: lc, clientIP: &router.ClientIPResolver{Trusted: trustedPrefixes(lc.ClientIP.TrustedProxies)},
		inbound: newInboundRules(lc.Routes)}
	routes := make([]router.Route, 0, len(lc.Routes))
	for i := range lc.Routes {
		rc := &lc.Routes[i]
		h, err := c.pipeline(rc.Pipeline, rc.Name)
		if err != nil {
			return nil, fmt.Errorf("route %q: %w", rc.Name, err)
		}
		entry := &routeEntry{
			name:     rc.Name,
			handler:  h,
			upgrades: newRouteUpgrades(rc.Upgrades),
			requests: metrics.NewCodeCounters(m.Requests.MustCurryWith(prometheus.Labels{"listener": lc.Name, "route": rc.Name})),
			duration: m.RequestDuration.WithLabelValues(lc.Name, rc.Name),
			limits:   newRouteLimits(lc, rc),
		}
		routes = append(routes, router.Route{Name: rc.Name, Handler: entry, Match: router.Match{
			Host: rc.Match.Host, PathPrefix: rc.Match.PathPrefix, Methods: rc.Match.Methods, Headers: rc.Match.Headers,
		}})
	}
	lr.table = router.NewTable(routes)
	lr.notFound = &routeEntry{
		name:     unmatchedRoute,
		handler:  http.HandlerFunc(notFound),
		requests: metrics.NewCodeCounters(m.Requests.MustCurryWith(prometheus.Labels{"listener": lc.Name, "route": unmatchedRoute})),
		duration: m.RequestDuration.WithLabelValues(lc.Name, unmatchedRoute),
	}
	return lr, nil
}

func notFound(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusNotFound)
	io.WriteString(w, "no route matches this request\n")
}

// pipeline compiles a stage list into its handler chain.
func (c *compiler) pipeline(stages []config.Stage, route string) (http.Handler, error) {
	built := make([]router.Stage, 0, len(stages))
	for i := range stages {
		s, err := c.stage(&stages[i], route)
		if err != nil {
			return nil, fmt.Errorf("%s stage: %w", stages[i].Kind(), err)
		}
		built = append(built, s)
	}
	return router.Compose(built)
}

// proxyStage is the terminal stage that hands the request to a pool.
type proxyStage struct{ pool *upstream.Pool }

func (s proxyStage) Wrap(next http.Handler) (http.Handler, error) {
	if next != nil {
		return nil, fmt.Errorf("proxy is terminal")
	}
	return s.pool, nil
}

func (proxyStage) Terminal() {}

// stickyOptions is a pool's sticky section in upstream's terms; nil for
// none.
func stickyOptions(s *config.Sticky) *upstream.Sticky {
	if s == nil {
		return nil
	}
	sameSite := map[string]http.SameSite{"lax": http.SameSiteLaxMode, "strict": http.SameSiteStrictMode,
		"none": http.SameSiteNoneMode}[s.SameSite]
	return &upstream.Sticky{Cookie: s.Cookie, TTL: s.TTL.D(), Secure: s.Secure, HTTPOnly: s.HTTPOnly == nil || *s.HTTPOnly,
		SameSite: sameSite, Key: []byte(s.Key)}
}

// pool builds pool name of the config through upstream.New: the config's
// terms become upstream's, and the pool's Transport comes from the cache
// that keeps it across reloads.
func (c *compiler) pool(name string, pc *config.Pool) (*upstream.Pool, error) {
	shared := c.shared
	outlier := health.Outlier{}
	if o := pc.Outlier; o != nil && (o.Enabled == nil || *o.Enabled) {
		pct := *o.MaxEjectedPercent
		if pct == 0 {
			pct = -1 // health reads 0 as "the default"; the config means "never eject"
		}
		outlier = health.Outlier{ConsecutiveFailures: o.ConsecutiveFailures, Eject: o.Eject.D(), MaxEject: o.MaxEject.D(),
			MaxEjectedPercent: pct, Count5xx: o.Count5xx}
	}
	key := router.Key{}
	if len(pc.HashKey) > 0 {
		k, err := router.ParseKey(pc.HashKey...)
		if err != nil {
			return nil, err
		}
		key = k
	}
	policy, err := balance.New(pc.Balance, key, pc.SlowStart.D())
	if err != nil {
		return nil, err
	}
	rc := pc.Retries
	retryOn, err := upstream.ParseRetryOn(rc.On)
	if err != nil {
		return nil, err
	}
	o := upstream.Options{Name: name, Policy: policy, Retries: *rc.Attempts, RetryOn: retryOn,
		PerTryTimeout: rc.PerTryTimeout.D(), RetryBudget: &upstream.RetryBudget{Percent: *rc.Budget.Percent, MinConcurrency: *rc.Budget.MinConcurrency},
		PanicMode: pc.PanicMode,
		BodyIdle:  pc.Timeouts.BodyIdle.D(), Outlier: outlier, MaxInFlight: pc.MaxInFlight,
		OverflowRetryAfter: pc.OverflowRetryAfter.D(),
		Registry:           shared.Registry, Metrics: shared.Metrics, Log: shared.Log, Buffers: shared.buffers,
		Sticky: stickyOptions(pc.Sticky)}
	o.Forwarded, o.SetRealIP = pc.Forwarded == "rfc7239", pc.SetRealIP
	dp, err := c.discoveredParts(name, pc)
	if err != nil {
		return nil, err
	}
	if dp != nil {
		c.rt.closers = append(c.rt.closers, closerFunc(func() { shared.discovery.release(dp) }))
		// What the Sources already know (a reload that keeps a target
		// shares its Source): the pool starts with it rather than empty.
		o.Endpoints, _, _ = dp.endpoints()
	} else {
		for _, e := range pc.Endpoints {
			u, err := config.ParseEndpoint(e.Address)
			if err != nil {
				return nil, err
			}
			o.Endpoints = append(o.Endpoints, upstream.Endpoint{Scheme: u.Scheme, Addr: u.Host, Weight: e.Weight})
		}
	}
	t, commit, err := shared.transports.get(name, pc)
	if err != nil {
		return nil, err
	}
	o.Transport = t
	if r := pc.Readiness; r != nil {
		expect, err := health.ParseStatusRanges(r.ExpectStatus)
		if err != nil {
			return nil, err
		}
		o.Readiness = &health.Probe{Path: r.Path, Interval: r.Interval.D(), Timeout: r.Timeout.D(),
			Rise: r.Rise, Fall: r.Fall, Expect: expect, Host: r.Host}
		if dp != nil {
			// The first endpoint may not be known yet: the pool's first
			// entry says which scheme its endpoints speak.
			o.Readiness.Scheme = dp.firstScheme()
		}
		o.GatesReadyz = r.GatesReadyz
	}
	if b := rc.Backoff; b != nil {
		o.Backoff = upstream.Backoff{Base: b.Base.D(), Max: b.Max.D()}
	}
	p, err := upstream.New(o)
	if err != nil {
		return nil, err
	}
	if dp != nil {
		dp.pool = p
		shared.discovery.attach(dp)
		if c.rt.discovered == nil {
			c.rt.discovered = map[string]*discoveredPool{}
		}
		c.rt.discovered[name] = dp
	}
	// The pool's health settings are shared with the Runtime in force:
	// they change only when this one is put in force (Runtime.commit).
	c.rt.commits = append(c.rt.commits, p.Commit, commit)
	return p, nil
}

// commit makes the changes to state shared with other Runtimes (pool
// settings in the registry, cached transports) that this Runtime needs; the
// Server calls it once the Runtime is sure to be put in force.
func (rt *Runtime) commit() {
	for _, f := range rt.commits {
		f()
	}
	rt.commits = nil
}

// Start starts the Runtime's probes. Stopping them is Close's job.
func (rt *Runtime) Start(ctx context.Context) {
	rt.startOnce.Do(func() {
		ctx, rt.cancel = context.WithCancel(ctx)
		for _, p := range rt.pools {
			p.Start(ctx)
		}
		for _, dp := range rt.discovered {
			dp.hub.start(dp)
		}
	})
}

// Ready reports whether every pool with discovered endpoints has resolved
// them, and every pool with probes has finished its first round (over the
// discovered endpoints too).
func (rt *Runtime) Ready() bool { return rt.notReady() == "" }

// notReady says why the Runtime is not Ready, or returns "".
func (rt *Runtime) notReady() string {
	for _, name := range slices.Sorted(maps.Keys(rt.discovered)) {
		if dp := rt.discovered[name]; !dp.ready() {
			return dp.waiting()
		}
	}
	for _, name := range slices.Sorted(maps.Keys(rt.pools)) {
		if !rt.pools[name].FirstRoundDone() {
			return fmt.Sprintf("waiting for the first readiness probe round of pool %q", name)
		}
	}
	return ""
}

// warm waits, for up to limit, until every discovered pool has resolved:
// a reload that adds a target puts the new Runtime in force with its
// endpoints rather than none.
func (rt *Runtime) warm(limit time.Duration) {
	timer := time.NewTimer(limit)
	defer timer.Stop()
	for _, dp := range rt.discovered {
		select {
		case <-dp.applied:
		case <-timer.C:
			return
		}
	}
}

// closedGate names a pool whose readiness gates /readyz and that has no
// available endpoint now, or returns "".
func (rt *Runtime) closedGate() string {
	for name, p := range rt.pools {
		if p.GatesReadyz() && !p.Available() {
			return name
		}
	}
	return ""
}

// Close stops the Runtime's probes and closes the stages that own
// goroutines, waiting for all of them. It is idempotent.
func (rt *Runtime) Close() {
	rt.closeOnce.Do(func() {
		if rt.cancel != nil {
			rt.cancel()
		}
		for _, p := range rt.pools {
			p.Close()
		}
		for _, c := range rt.closers {
			c.Close()
		}
	})
}

// acquire takes a reference for one request; it fails once the Runtime has
// been released by the Server and its last request has ended.
func (rt *Runtime) acquire() bool {
	for {
		n := rt.refs.Load()
		if n <= 0 {
			return false
		}
		if rt.refs.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// release drops a reference and reports whether it was the last.
func (rt *Runtime) release() bool { return rt.refs.Add(-1) == 0 }

// trustedPrefixes parses trusted_proxies, which validation has checked.
func trustedPrefixes(ss []string) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(ss))
	for _, s := range ss {
		if p, err := config.ParsePrefix(s); err == nil {
			out = append(out, p)
		}
	}
	return out
}
