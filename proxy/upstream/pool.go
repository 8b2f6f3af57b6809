package upstream

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net/http"
	"net/http/httputil"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"sekisho/health"
	"sekisho/http1"
	"sekisho/proxy/balance"
	"sekisho/proxy/metrics"
	"sekisho/router"
)

// ErrNoReadyEndpoint is returned when a pool has no endpoint that may take a
// request; it is answered 503.
var ErrNoReadyEndpoint = errors.New("no ready endpoint")

// Options configures a Pool. The zero value of each field is its default,
// named in its comment; Name, Transport, Registry and Metrics are required.
type Options struct {
	// Name names the pool in the health registry, metrics and logs.
	Name string
	// Endpoints are the pool's replicas. Default none: every request is
	// answered 503.
	Endpoints []Endpoint
	// Policy picks among the available endpoints. Default (nil): round
	// robin.
	Policy balance.Policy
	// Retries is how many more endpoints a request may try after a failed
	// attempt, when the failure is one of RetryOn. Default 0.
	Retries int
	// RetryOn is what a request is retried on. Default (0):
	// DefaultRetryOn, what cannot have reached the endpoint: a failed
	// connect (any method), or a reset before any answer byte (idempotent
	// methods). Only a request whose body was not read is ever retried.
	RetryOn RetryOn
	// PerTryTimeout bounds each attempt up to its answer's head; past it
	// the attempt fails as a timeout (504 when it was the last). Default
	// 0: only the transport's response header timeout.
	PerTryTimeout time.Duration
	// Backoff spaces a request's retries. Default zero: none.
	Backoff Backoff
	// RetryBudget caps the retries in progress. Default (nil):
	// DefaultRetryBudget. A Percent of 0 disables retries.
	RetryBudget *RetryBudget
	// PanicMode sends requests to unavailable endpoints when no endpoint is
	// available, rather than answer 503. Default false.
	PanicMode bool
	// BodyIdle ends an upstream body that sends nothing for this long,
	// cutting the client's answer. Default 0: no limit.
	BodyIdle time.Duration
	// Forwarded sends an RFC 7239 Forwarded header upstream besides
	// X-Forwarded-*. Default false.
	Forwarded bool
	// SetRealIP sends X-Real-IP with the resolved client address. Default
	// false: a client's X-Real-IP is dropped at entry and none is sent.
	SetRealIP bool
	// Readiness is the active readiness probe; its Scheme, when empty, is
	// set to the first endpoint's. Default nil: no probe, and an endpoint is ready
	// until ejected.
	Readiness *health.Probe
	// GatesReadyz holds the admin /readyz at 503 while no endpoint is
	// available (see Pool.GatesReadyz). Default false.
	GatesReadyz bool
	// Outlier is passive ejection; it is put in force in the registry by
	// Pool.Commit. The zero value is health's defaults.
	Outlier health.Outlier
	// MaxInFlight is the pool's circuit breaker: with that many requests
	// in flight, another one is answered 503 at once. Default 0: no limit.
	MaxInFlight int
	// OverflowRetryAfter is the Retry-After of that 503, rounded up to whole
	// seconds. Default (0): DefaultOverflowRetryAfter.
	OverflowRetryAfter time.Duration
	// Transport carries the pool's requests; an *http1.Transport (from
	// NewTransport with protocol http1) also serves the direct path.
	Transport Transport
	// Registry holds endpoint health, shared with the pools of other
	// Runtimes.
	Registry *health.Registry
	// Metrics receives the sekisho_upstream_* and sekisho_pool_* series.
	Metrics *metrics.Metrics
	// Log receives failed requests (warn) and retries (debug). Default
	// (nil): no log.
	Log *zap.Logger
	// Buffers lends ReverseProxy its copy buffers. Default (nil): a
	// BufferPool of the pool's own.
	Buffers *BufferPool
	// Sticky is cookie affinity, the first choice before the policy's.
	// Default nil: none.
	Sticky *Sticky
}

// Endpoint is one replica of a pool.
type Endpoint struct {
	// Scheme is "http" or "https". Default "": http.
	Scheme string
	// Addr is the endpoint's host:port.
	Addr string
	// Weight is its share of the traffic for the policies that weigh.
	// Default 0: balance's default (1).
	Weight int
	// Priority is its failover tier, lower preferred (an SRV record's
	// priority, RFC 2782): the pool picks among the available endpoints of
	// the most preferred tier that has one, and a request's retry moves to
	// the next tier once its own has no untried available endpoint left.
	// Default 0.
	Priority int
}

// Pool is a set of replicas of one service, as an http.Handler: it picks an
// available endpoint with its balance policy and forwards the request there,
// retrying on another endpoint a request that never reached the first one.
// httputil.ReverseProxy forwards, but for the bodyless requests with plain
// answers that the direct path (forward.go) relays itself. A Pool is safe
// for concurrent use; its settings are fixed when it is built, its endpoint
// set may change in place (SetEndpoints), and endpoint state lives in the
// health.Registry.
type Pool struct {
	name  string
	set   atomic.Pointer[members] // the endpoint set in force
	setMu sync.Mutex              // serialises SetEndpoints
	// closed is set by Close, which released the endpoints' holds: the
	// set no longer changes. Guarded by setMu.
	closed  bool
	policy  balance.Policy
	again   balance.Repicker // policy, when it has a separate turn for later attempts
	group   *health.Group
	retries int
	retryOn RetryOn
	perTry  time.Duration
	backoff Backoff
	budget  RetryBudget
	// active counts requests in try, retrying those that have retried:
	// the retry budget's two sides.
	active      atomic.Int64
	retrying    atomic.Int64
	retryCounts retryCounters
	panicMode   bool
	transport   Transport
	direct      *http1.Transport // the transport, when the direct path can use it
	proxy       *httputil.ReverseProxy
	log         *zap.Logger
	duration    prometheus.Observer
	// bodyIdle ends an upstream body that stalls; bodyTimeouts counts
	// those.
	bodyIdle     time.Duration
	bodyTimeouts prometheus.Counter
	checker      *health.Checker // nil without readiness probes
	// forwarded and setRealIP add Forwarded and X-Real-IP upstream.
	forwarded, setRealIP bool
	// gatesReadyz holds /readyz at 503 while no endpoint is available.
	gatesReadyz bool
	gate        *inFlightGate // max_in_flight; nil without
	// probed and outlier are the group settings Commit puts in force.
	probed  bool
	outlier health.Outlier
	// stickyOpts is cookie affinity, built into every member set; nil
	// without.
	stickyOpts *Sticky
	// registry and metrics build the members of a new endpoint set.
	registry *health.Registry
	metrics  *metrics.Metrics
}

// members is one endpoint set of a pool. It is never modified once built: a
// request reads the set in force once and keeps it for all its attempts, so
// the indexes its balance policy returns stay valid while SetEndpoints puts
// another set in force, and a request under way to an endpoint the new set
// dropped finishes there.
type members struct {
	targets []balance.Target // what the balance policy sees
	all     []member         // in the order of targets
	sticky  *sticky          // cookie affinity over this set; nil without
	tiered  bool             // its endpoints have more than one priority
}

// member is one endpoint of a member set, with what a request to it uses.
type member struct {
	set      *members
	index    int
	scheme   string
	addr     string
	priority int // Endpoint.Priority
	ep       *health.Endpoint
	attempts *metrics.CodeCounters
	// bodyEnd is told when a body the direct transport read ends.
	bodyEnd bodyEnd
}

var (
	_ http.Handler      = (*Pool)(nil)
	_ http.RoundTripper = (*Pool)(nil)
	_ router.Available  = (*Pool)(nil)
)

// New builds the pool o describes. It starts nothing (Start starts the
// probes) and changes no shared state but registering the endpoints in
// o.Registry (Commit puts the pool's health settings in force), so a pool
// whose Runtime is never put in force costs the one in force nothing.
func New(o Options) (*Pool, error) {
	if o.Transport == nil || o.Registry == nil || o.Metrics == nil {
		return nil, fmt.Errorf("upstream: pool %q needs a Transport, a Registry and Metrics", o.Name)
	}
	name, m := o.Name, o.Metrics
	logger := o.Log
	if logger == nil {
		logger = zap.NewNop()
	}
	policy := o.Policy
	if policy == nil {
		var err error
		if policy, err = balance.New(balance.RoundRobin, router.Key{}, 0); err != nil {
			return nil, err
		}
	}
	buffers := o.Buffers
	if buffers == nil {
		buffers = NewBufferPool()
	}
	probed := o.Readiness != nil
	p := &Pool{name: name, policy: policy, group: o.Registry.Group(name), retries: o.Retries, panicMode: o.PanicMode,
		log: logger, duration: m.UpstreamDuration.WithLabelValues(name),
		bodyIdle: o.BodyIdle, bodyTimeouts: m.UpstreamBodyTimeouts.WithLabelValues(name),
		gatesReadyz: o.GatesReadyz, gate: newInFlightGate(name, o.MaxInFlight, o.OverflowRetryAfter, m),
		probed: probed, outlier: o.Outlier}
	p.again, _ = policy.(balance.Repicker)
	p.retryOn, p.perTry, p.backoff, p.budget = o.RetryOn, o.PerTryTimeout, o.Backoff, DefaultRetryBudget
	if p.retryOn == 0 {
		p.retryOn = DefaultRetryOn
	}
	if o.RetryBudget != nil {
		p.budget = *o.RetryBudget
	}
	if p.budget.Percent <= 0 {
		p.retries = 0
	}
	for i, reason := range retryNames {
		p.retryCounts.byReason[i] = m.UpstreamRetries.WithLabelValues(name, reason)
	}
	p.retryCounts.exhausted = m.UpstreamRetryBudgetExhausted.WithLabelValues(name)
	if o.Sticky != nil && o.Sticky.Cookie == "" {
		return nil, fmt.Errorf("upstream: pool %q: sticky needs a cookie name", name)
	}
	p.stickyOpts, p.registry, p.metrics = o.Sticky, o.Registry, m
	set := p.build(o.Endpoints, nil)
	p.set.Store(set)
	p.forwarded, p.setRealIP = o.Forwarded, o.SetRealIP
	p.transport = o.Transport
	p.direct, _ = o.Transport.(*http1.Transport)
	p.proxy = &httputil.ReverseProxy{
		Rewrite:      p.rewrite,
		Transport:    p,
		BufferPool:   buffers,
		ErrorHandler: p.errorHandler,
		ErrorLog:     log.New(zapWriter{logger}, "", 0),
		// Each piece of the body goes to the client as it comes: a body
		// with a length is otherwise held in the client connection's
		// buffer while the upstream is slow. ReverseProxy already flushes
		// this way when the length is unknown.
		FlushInterval: -1,
	}
	if r := o.Readiness; r != nil {
		probe := *r
		if probe.Scheme == "" {
			probe.Scheme = "http"
			if len(set.all) > 0 {
				probe.Scheme = set.all[0].scheme
			}
		}
		p.checker = health.NewChecker(p.group, set.endpoints(), probe, o.Transport, logger)
	}
	return p, nil
}

// build makes the member set of eps, reusing what old (the set in force,
// or nil) holds for the endpoints they share.
func (p *Pool) build(eps []Endpoint, old *members) *members {
	prev := map[string]*member{}
	if old != nil {
		for i := range old.all {
			prev[old.all[i].addr] = &old.all[i]
		}
	}
	set := &members{targets: make([]balance.Target, 0, len(eps)), all: make([]member, len(eps))}
	for i, e := range eps {
		scheme := e.Scheme
		if scheme == "" {
			scheme = "http"
		}
		mb := &set.all[i]
		*mb = member{set: set, index: i, scheme: scheme, addr: e.Addr, priority: e.Priority}
		set.tiered = set.tiered || e.Priority != eps[0].Priority
		if was := prev[e.Addr]; was != nil {
			mb.ep, mb.attempts = was.ep, was.attempts
		} else {
			// Held, not just looked up: several pools of this name may
			// live at once (see health.Registry.Release).
			mb.ep = p.registry.Hold(p.name, e.Addr, p.probed)
			mb.attempts = metrics.NewCodeCounters(p.metrics.Upstream.MustCurryWith(prometheus.Labels{"pool": p.name, "endpoint": e.Addr}))
		}
		mb.bodyEnd = bodyEnd{ep: mb.ep, idleTimeouts: p.bodyTimeouts}
		set.targets = append(set.targets, balance.Target{Addr: e.Addr, Weight: e.Weight, EP: mb.ep})
	}
	if p.stickyOpts != nil {
		set.sticky = newSticky(p.stickyOpts, p.name, set.targets)
	}
	return set
}

// endpoints returns the health state of the set's endpoints.
func (m *members) endpoints() []*health.Endpoint {
	out := make([]*health.Endpoint, len(m.all))
	for i := range m.all {
		out[i] = m.all[i].ep
	}
	return out
}

// SetEndpoints puts eps in force as the pool's endpoint set, in place: an
// endpoint in both the old and the new set keeps its health state (its
// readiness, ejection and in-flight count) and its connections; a new one
// is probed at once when the pool has probes (and is not picked before it
// is ready), and enters under slow start when the policy has it; one no
// longer listed takes no new request, while those under way on it finish
// there. Its health state is dropped from the registry and its per-endpoint
// series from the metrics. It returns the addresses added and removed.
//
// The hash policies place keys by address, so only the keys of the
// endpoints that left move, and only to endpoints that joined do keys move
// from others (as many as their share).
func (p *Pool) SetEndpoints(eps []Endpoint) (added, removed []string) {
	p.setMu.Lock()
	defer p.setMu.Unlock()
	if p.closed {
		return nil, nil
	}
	old := p.set.Load()
	set := p.build(eps, old)
	have := make(map[string]bool, len(set.all))
	for i := range set.all {
		have[set.all[i].addr] = true
	}
	had := make(map[string]bool, len(old.all))
	for i := range old.all {
		had[old.all[i].addr] = true
		if !have[old.all[i].addr] {
			removed = append(removed, old.all[i].addr)
		}
	}
	for i := range set.all {
		if !had[set.all[i].addr] {
			added = append(added, set.all[i].addr)
		}
	}
	if len(added) == 0 && len(removed) == 0 && sameWeights(old, set) {
		return nil, nil
	}
	p.set.Store(set)
	if p.checker != nil {
		p.checker.SetEndpoints(set.endpoints())
	}
	if len(removed) > 0 {
		for _, addr := range p.registry.Release(p.name, removed, "no longer discovered") {
			p.metrics.Upstream.DeletePartialMatch(prometheus.Labels{"pool": p.name, "endpoint": addr})
		}
		// A removed endpoint's idle connections go now, as Envoy drains a
		// removed host's: requests under way on it finish, and their
		// connections close at the idle timeout (h2's, which the Go
		// Transport cannot close by address, too).
		if c, ok := p.transport.(interface{ CloseIdleConnectionsTo(addr string) }); ok {
			for _, addr := range removed {
				c.CloseIdleConnectionsTo(addr)
			}
		}
	}
	return added, removed
}

// sameWeights reports whether a and b, which hold the same addresses, give
// each one the same weight and place.
func sameWeights(a, b *members) bool {
	if len(a.targets) != len(b.targets) {
		return false
	}
	for i := range a.targets {
		if a.targets[i].Addr != b.targets[i].Addr || a.targets[i].Weight != b.targets[i].Weight ||
			a.all[i].scheme != b.all[i].scheme || a.all[i].priority != b.all[i].priority {
			return false
		}
	}
	return true
}

// zapWriter carries ReverseProxy's own log lines (rare: a failed body copy)
// into the process log at debug level.
type zapWriter struct{ l *zap.Logger }

func (w zapWriter) Write(b []byte) (int, error) {
	w.l.Debug(string(b))
	return len(b), nil
}

// Name returns the pool's name.
func (p *Pool) Name() string { return p.name }

// Targets returns the pool's endpoints in force, in the order of
// Options.Endpoints or of the last SetEndpoints. The slice is the pool's
// own and must not be modified.
func (p *Pool) Targets() []balance.Target { return p.set.Load().targets }

// Transport returns the Transport the pool forwards over.
func (p *Pool) Transport() Transport { return p.transport }

// Commit puts the pool's endpoint health settings (whether it is probed,
// its outlier ejection) in force in the registry, where the pool of the
// same name in every Runtime shares them. Call it once the pool's Runtime
// is sure to serve.
func (p *Pool) Commit() {
	p.group.SetProbed(p.probed)
	p.group.SetOutlier(p.outlier)
}

// Start starts the pool's readiness probes, which run until ctx ends or
// Close. It does nothing without probes.
func (p *Pool) Start(ctx context.Context) {
	if p.checker != nil {
		p.checker.Start(ctx)
	}
}

// Close stops the pool's probes and waits for them, and lets go of its
// endpoints: those no other live pool of its name holds (one a draining
// Runtime's pool alone had discovered) leave the registry. It is
// idempotent.
func (p *Pool) Close() {
	if p.checker != nil {
		p.checker.Close()
	}
	p.setMu.Lock()
	defer p.setMu.Unlock()
	if p.closed {
		return
	}
	p.closed = true
	set := p.set.Load()
	addrs := make([]string, len(set.all))
	for i := range set.all {
		addrs[i] = set.all[i].addr
	}
	p.registry.Release(p.name, addrs, "pool closed")
}

// FirstRoundDone reports whether the probes have finished their first
// round; true without probes.
func (p *Pool) FirstRoundDone() bool { return p.checker == nil || p.checker.FirstRoundDone() }

// GatesReadyz reports whether the pool's readiness gates the admin
// /readyz: then /readyz answers 503 while the pool is not Available.
func (p *Pool) GatesReadyz() bool { return p.gatesReadyz }

// ServeHTTP forwards r to one of the pool's endpoints.
func (p *Pool) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if g := p.gate; g != nil {
		if !g.enter() {
			g.refuse(w, r, p.name)
			return
		}
		defer g.leave()
	}
	p.serve(w, r)
}

// serve is the one place that chooses how r goes upstream: on the direct
// path over http1.Transport when the pool speaks HTTP/1.1 and r is a plain
// bodyless request that came through a listener (its Info set), through
// httputil.ReverseProxy otherwise.
func (p *Pool) serve(w http.ResponseWriter, r *http.Request) {
	if p.perTry > 0 {
		// Each attempt's context is a child of this one, which ends with
		// the request's answer: one whose timer was stopped, its answer's
		// body streaming under it, is released here.
		ctx, cancel := context.WithCancel(r.Context())
		defer cancel()
		r = r.WithContext(ctx)
	}
	if p.direct != nil && http1.Forwardable(r) {
		if info := router.InfoFrom(r); info != nil {
			p.forward(w, r, info)
			return
		}
	}
	p.proxy.ServeHTTP(w, r)
}

// Available reports whether some endpoint may take a request now (any
// endpoint, in panic mode).
func (p *Pool) Available() bool {
	targets := p.set.Load().targets
	if p.panicMode && len(targets) > 0 {
		return true
	}
	now := time.Now()
	for i := range targets {
		if targets[i].EP.Available(now) {
			return true
		}
	}
	return false
}

// rewrite prepares the outbound request; the endpoint itself is chosen in
// RoundTrip, where a failed attempt can be retried.
func (p *Pool) rewrite(pr *httputil.ProxyRequest) {
	in, out := pr.In, pr.Out
	out.URL.Scheme = "http"
	out.URL.Host = p.name // replaced by RoundTrip with the chosen endpoint
	p.setForwarded(in, out)
	// Clone gave out a copy of the announced trailer keys, but the server
	// fills in their values on in's own map once the body is read to its
	// end; sharing the map lets the Transport send them after the body.
	out.Trailer = in.Trailer
	if out.Body != nil && out.Body != http.NoBody {
		out.Body = &replayGuard{body: out.Body}
	}
}

// RoundTrip sends out to an endpoint chosen by the balance policy,
// retrying as Options.Retries says. It is the pool's ReverseProxy's
// Transport; an answer the direct path received but leaves to ReverseProxy
// is handed over here rather than asked for again.
func (p *Pool) RoundTrip(out *http.Request) (*http.Response, error) {
	if resp, ok := p.takePrepared(out); ok {
		return resp, nil
	}
	guard, _ := out.Body.(*replayGuard)
	var resp *http.Response
	t, err := p.try(out, router.InfoFrom(out), guard, func(t *member, ctx context.Context) (int, error) {
		out.URL.Scheme, out.URL.Host = t.scheme, t.addr
		req := out
		if ctx != out.Context() {
			req = out.WithContext(ctx)
		}
		var err error
		if resp, err = p.transport.RoundTrip(req); err != nil {
			return 0, err
		}
		return resp.StatusCode, nil
	}, func(t *member) {
		discard(resp.Body)
		t.ep.End()
	})
	if err != nil {
		return nil, err
	}
	if len(resp.Trailer) > 0 && resp.ContentLength >= 0 {
		// An HTTP/2 upstream may state a length along with trailers;
		// passed on to an HTTP/1.1 client, it would rule out the chunked
		// encoding that trailers travel in.
		resp.Header.Del("Content-Length")
		resp.ContentLength = -1
	}
	resp.Body = p.wrapBody(resp.Body, t)
	t.stick(resp.Header, out.Header)
	return resp, nil
}
