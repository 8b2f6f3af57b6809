package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"sync"
	"sync/atomic"
	"syscall"
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

// Pool is a set of replicas of one service, as an http.Handler: it picks an
// available endpoint with its balance policy and forwards the request there,
// retrying on another endpoint a request that never reached the first one.
// httputil.ReverseProxy forwards, but for the bodyless requests with plain
// answers that the direct path (forward.go) relays itself. A Pool is immutable once compiled and safe
// for concurrent use; endpoint state lives in the health.Registry.
type Pool struct {
	name      string
	targets   []balance.Target
	schemes   []string
	policy    balance.Policy
	group     *health.Group
	retries   int
	panicMode bool
	transport http.RoundTripper
	direct    *http1.Transport // the transport, when the direct path can use it
	proxy     *httputil.ReverseProxy
	log       *zap.Logger
	attempts  []*metrics.CodeCounters // per target
	duration  prometheus.Observer
	// bodyIdle (timeouts.body_idle) ends an upstream body that stalls;
	// bodyTimeouts counts those.
	bodyIdle     time.Duration
	bodyTimeouts prometheus.Counter
	// bodyEnds, per target, is told when a body the direct transport read
	// ends.
	bodyEnds []bodyEnd
	checker  *health.Checker // nil without readiness probes
	// gatesReadyz holds /readyz at 503 while no endpoint is available.
	gatesReadyz bool
	gate        *inFlightGate // max_in_flight; nil without
}

var (
	_ http.Handler      = (*Pool)(nil)
	_ http.RoundTripper = (*Pool)(nil)
	_ router.Available  = (*Pool)(nil)
)

// Name returns the pool's name.
func (p *Pool) Name() string { return p.name }

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
	if p.panicMode && len(p.targets) > 0 {
		return true
	}
	now := time.Now()
	for i := range p.targets {
		if p.targets[i].EP.Available(now) {
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
	setForwarded(in, out)
	// Clone gave out a copy of the announced trailer keys, but the server
	// fills in their values on in's own map once the body is read to its
	// end; sharing the map lets the Transport send them after the body.
	out.Trailer = in.Trailer
	if out.Body != nil && out.Body != http.NoBody {
		out.Body = &replayGuard{body: out.Body}
	}
}

// setForwarded writes X-Forwarded-For, -Host and -Proto.
func setForwarded(in, out *http.Request) {
	fwd := forwardedFor(in, router.InfoFrom(in))
	// One allocation holds the three values; each header gets a slice of
	// it with no spare capacity, so an Add elsewhere copies instead of
	// writing over a neighbour.
	vals := []string{fwd.For, fwd.Host, fwd.Proto}
	out.Header["X-Forwarded-For"] = vals[0:1:1]
	out.Header["X-Forwarded-Host"] = vals[1:2:2]
	out.Header["X-Forwarded-Proto"] = vals[2:3:3]
}

// RoundTrip sends out to an endpoint chosen by the balance policy, with
// the retries of try.
func (p *Pool) RoundTrip(out *http.Request) (*http.Response, error) {
	if resp, ok := p.takePrepared(out); ok {
		return resp, nil
	}
	guard, _ := out.Body.(*replayGuard)
	var resp *http.Response
	i, err := p.try(out, router.InfoFrom(out), guard, func(i int) (int, error) {
		out.URL.Scheme, out.URL.Host = p.schemes[i], p.targets[i].Addr
		var err error
		if resp, err = p.transport.RoundTrip(out); err != nil {
			return 0, err
		}
		return resp.StatusCode, nil
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
	resp.Body = p.wrapBody(resp.Body, i)
	return resp, nil
}

// try is the one retry loop of both ways of forwarding: it picks an
// endpoint, sends r there with send (which returns the answer's status)
// and records the attempt. An attempt that failed before the endpoint saw
// the request (a refused dial), or that was reset before any response byte
// on an idempotent request whose body was not read, is retried on another
// endpoint, up to retries times. It returns the target that answered, whose
// in-flight count the caller ends with the answer, or the error to answer
// with. send, which does not escape, costs the plain path no allocation.
func (p *Pool) try(r *http.Request, info *router.Info, guard *replayGuard, send func(i int) (status int, err error)) (int, error) {
	pk := p.picker()
	defer pk.release()
	var lastErr error
	for attempt := 0; attempt <= p.retries; attempt++ {
		if err := r.Context().Err(); err != nil {
			return -1, err // the client has gone: no attempt, no dial
		}
		i := pk.pick(r, info)
		if i < 0 {
			if lastErr != nil {
				return -1, lastErr
			}
			return -1, ErrNoReadyEndpoint
		}
		start := p.begin(i, info)
		status, err := send(i)
		if err == nil {
			p.answered(i, start, status)
			return i, nil
		}
		if guard != nil {
			if ce := guard.err.Load(); ce != nil {
				// The client's body failed the attempt, whatever the
				// Transport made of it.
				err = ce
			}
		}
		lastErr = err
		if !p.failed(i, start, r, err, guard) {
			return -1, err
		}
		pk.exclude(i)
	}
	return -1, lastErr
}

// begin starts an attempt on target i: the Info names it, it joins the
// request's tried endpoints and counts one more request in flight.
func (p *Pool) begin(i int, info *router.Info) time.Time {
	t := &p.targets[i]
	if info != nil {
		info.Pool, info.Upstream = p.name, t.Addr
		if info.Tried != nil {
			info.Tried.Add(t.Addr)
		}
	}
	t.EP.Begin()
	return time.Now()
}

// answered records an attempt on target i that got an answer with status;
// the endpoint stays in flight until the answer's body ends.
func (p *Pool) answered(i int, start time.Time, status int) {
	p.duration.Observe(time.Since(start).Seconds())
	p.attempts[i].Inc(status)
	p.targets[i].EP.ObserveResult(status < 500 || !p.group.Counts5xx())
}

// failed records an attempt on target i that got no answer, and reports
// whether the request may go to another endpoint.
func (p *Pool) failed(i int, start time.Time, r *http.Request, err error, guard *replayGuard) bool {
	p.duration.Observe(time.Since(start).Seconds())
	t := &p.targets[i]
	t.EP.End()
	p.attempts[i].Inc(0)
	if r.Context().Err() != nil || clientFault(err) {
		return false // the client left, its deadline passed or its body failed: not the endpoint's fault
	}
	t.EP.ObserveResult(false)
	if !retryable(r, err, guard) {
		return false
	}
	p.log.Debug("retrying on another endpoint", zap.String("pool", p.name), zap.String("endpoint", t.Addr), zap.Error(err))
	return true
}

// picker is one request's state across its attempts, as the balance
// policy's usable filter reads it: the endpoints tried so far and the rule
// of the pick under way. A closure over that state would escape into the
// Policy interface and cost allocations on every pick, so pickers are
// pooled with their filter bound once, as a method value. A picker belongs
// to one request at a time.
type picker struct {
	p      *Pool
	now    time.Time
	tried  []int  // target indexes this request's attempts used
	local  [4]int // tried's backing array until a request retries more
	shared *router.Tried
	rule   pickRule
	usable func(int) bool // check, bound once
}

// pickRule is what a target must be, besides untried, to be usable.
type pickRule uint8

const (
	// availableUnshared: available, and not used by another attempt of the
	// same logical request (scatter's hedges).
	availableUnshared pickRule = iota
	availableOnly
	// anyUntried is panic mode: an unavailable endpoint beats none.
	anyUntried
)

var pickers = sync.Pool{New: func() any {
	pk := &picker{}
	pk.tried = pk.local[:0]
	pk.usable = pk.check
	return pk
}}

// picker returns a picker for one request to p; release gives it back.
func (p *Pool) picker() *picker {
	pk := pickers.Get().(*picker)
	pk.p = p
	return pk
}

func (pk *picker) release() {
	pk.p, pk.shared = nil, nil
	pk.tried = pk.tried[:0]
	pickers.Put(pk)
}

// exclude keeps target i out of this request's later picks.
func (pk *picker) exclude(i int) { pk.tried = append(pk.tried, i) }

// pick chooses an endpoint that is available and not yet tried by this
// request; endpoints another attempt of the same logical request used
// (scatter's hedges) are avoided while others remain. In panic mode an
// unavailable endpoint is better than none.
func (pk *picker) pick(r *http.Request, info *router.Info) int {
	p := pk.p
	pk.now = time.Now()
	if info != nil && info.Tried != nil && info.Tried.Len() > 0 {
		pk.shared, pk.rule = info.Tried, availableUnshared
		if i := p.policy.Pick(p.targets, r, pk.now, pk.usable); i >= 0 {
			return i
		}
	}
	pk.rule = availableOnly
	if i := p.policy.Pick(p.targets, r, pk.now, pk.usable); i >= 0 || !p.panicMode {
		return i
	}
	pk.rule = anyUntried
	return p.policy.Pick(p.targets, r, pk.now, pk.usable)
}

// check is the usable filter of the pick under way.
func (pk *picker) check(i int) bool {
	for _, j := range pk.tried {
		if i == j {
			return false
		}
	}
	t := &pk.p.targets[i]
	switch pk.rule {
	case anyUntried:
		return true
	case availableUnshared:
		if pk.shared.Has(t.Addr) {
			return false
		}
	}
	return t.EP.Available(pk.now)
}

// retryable reports whether a failed attempt may be sent again elsewhere.
func retryable(r *http.Request, err error, guard *replayGuard) bool {
	if guard != nil && guard.used() {
		return false // part of the body is gone; it cannot be sent twice
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return true
	}
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodPut, http.MethodDelete:
	default:
		return false
	}
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, syscall.EPIPE)
}

// replayGuard stands between the client's body and the Transport: it
// remembers whether any byte was read (then the request cannot be retried)
// and ignores the Transport's Close after a failed attempt so that a retry
// can still send the untouched body. The server closes the real body.
//
// It also records the body's own failure (malformed framing, a client that
// stops sending): that is the client's doing, never the endpoint's, and
// the Transport reports it in terms of the upstream connection.
type replayGuard struct {
	body io.ReadCloser
	read atomic.Bool                     // the Transport's writer reads; RoundTrip asks
	err  atomic.Pointer[clientBodyError] // the first read error but EOF
}

func (g *replayGuard) Read(b []byte) (int, error) {
	n, err := g.body.Read(b)
	if n > 0 {
		g.read.Store(true)
	}
	if err != nil && err != io.EOF {
		ce := &clientBodyError{err: err}
		g.err.CompareAndSwap(nil, ce)
		return n, ce
	}
	return n, err
}

func (g *replayGuard) Close() error { return nil }

func (g *replayGuard) used() bool { return g.read.Load() }

// endBody ends an endpoint's in-flight count when the response body is
// closed, so that least_request and shard load see streaming responses.
// With idle set, a read that waits longer than idle for the upstream ends
// the body: a timer closes it under the read, which then fails with a
// *http1.BodyIdleError, counted by idleTimeouts.
type endBody struct {
	io.ReadCloser
	ep   *health.Endpoint
	once sync.Once

	idle         time.Duration
	idleTimeouts prometheus.Counter
	timer        *time.Timer // made on the first read
	expired      atomic.Bool
}

func (b *endBody) Read(p []byte) (int, error) {
	if b.idle <= 0 {
		return b.ReadCloser.Read(p)
	}
	if b.timer == nil {
		b.timer = time.AfterFunc(b.idle, b.expire)
	} else {
		b.timer.Reset(b.idle)
	}
	n, err := b.ReadCloser.Read(p)
	b.timer.Stop()
	if err != nil && err != io.EOF && b.expired.Load() {
		b.idleTimeouts.Inc()
		err = &http1.BodyIdleError{Idle: b.idle}
	}
	return n, err
}

// expire runs on the timer's goroutine: the read under way waited too long.
func (b *endBody) expire() {
	b.expired.Store(true)
	b.ReadCloser.Close()
}

func (b *endBody) Close() error {
	if b.timer != nil {
		b.timer.Stop()
	}
	err := b.ReadCloser.Close()
	b.once.Do(b.ep.End)
	return err
}

// endRWC is endBody for a 101 Switching Protocols response, whose body is
// the upgraded connection and must stay writable; a tunnel may be idle, so
// no idle timeout applies.
type endRWC struct {
	*endBody
	io.Writer
}

// wrapBody makes body, from target i, end the endpoint's in-flight count
// when it is closed and end itself when the upstream stalls for the pool's
// body_idle.
func (p *Pool) wrapBody(body io.ReadCloser, i int) io.ReadCloser {
	ep := p.targets[i].EP
	if nb, ok := body.(http1.NotifyingBody); ok {
		// The direct transport's body bounds its reads itself and says
		// when it ends: no wrapper.
		nb.NotifyEnd(&p.bodyEnds[i])
		return nb
	}
	if rwc, ok := body.(io.ReadWriteCloser); ok {
		return endRWC{endBody: &endBody{ReadCloser: rwc, ep: ep}, Writer: rwc}
	}
	if body == http.NoBody {
		return &endBody{ReadCloser: body, ep: ep}
	}
	return &endBody{ReadCloser: body, ep: ep, idle: p.bodyIdle, idleTimeouts: p.bodyTimeouts}
}

// bodyEnd is told when a body of the direct transport from one target
// ends: it ends the endpoint's in-flight count and counts a stalled body.
type bodyEnd struct {
	ep           *health.Endpoint
	idleTimeouts prometheus.Counter
}

var _ http1.BodyEnder = (*bodyEnd)(nil)

func (e *bodyEnd) EndBody(err error) {
	var idle *http1.BodyIdleError
	if err != nil && errors.As(err, &idle) {
		e.idleTimeouts.Inc()
	}
	e.ep.End()
}

// errorHandler answers a request that could not be forwarded: 503 when no
// endpoint is ready, 504 when the endpoint was too slow, 502 for every other
// upstream failure, and nothing at all when the client has gone.
func (p *Pool) errorHandler(w http.ResponseWriter, r *http.Request, err error) {
	status, msg := classify(r, err)
	info := router.InfoFrom(r)
	if info != nil && info.Pool == "" {
		info.Pool = p.name
	}
	if status == statusClientClosed {
		if cg, ok := w.(clientGoneRecorder); ok {
			cg.RecordClientGone()
		}
		p.log.Debug("client went away", zap.String("pool", p.name), zap.Error(err))
		return
	}
	fields := []zap.Field{zap.String("pool", p.name), zap.Int("status", status), zap.Error(err)}
	if info != nil {
		fields = append(fields, zap.String("upstream", info.Upstream), zap.String("request_id", info.RequestID))
	}
	p.log.Warn("upstream request failed", fields...)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	io.WriteString(w, msg)
}

// clientGoneRecorder is the listener's ResponseWriter as the pool sees it:
// it records an answer never sent because the client left.
type clientGoneRecorder interface{ RecordClientGone() }

// clientBodyError is a failure to read the client's request body: the
// request ends there, answered 400 (408 for a read timeout), and it never
// counts against the endpoint.
type clientBodyError struct{ err error }

func (e *clientBodyError) Error() string { return "reading the request body: " + e.err.Error() }

func (e *clientBodyError) Unwrap() error { return e.err }

// clientFault reports whether err is the client's failure, not the
// upstream's.
func clientFault(err error) bool {
	var ce *clientBodyError
	return errors.As(err, &ce)
}

// statusClientClosed is recorded for a request whose client left before an
// answer (nginx's 499); it is never sent.
const statusClientClosed = 499

func classify(r *http.Request, err error) (int, string) {
	switch {
	case errors.Is(err, ErrNoReadyEndpoint):
		return http.StatusServiceUnavailable, "no ready endpoint\n"
	case r.Context().Err() == context.Canceled || errors.Is(err, context.Canceled):
		return statusClientClosed, ""
	case clientFault(err):
		var fe *http1.FramingError
		switch {
		case errors.As(err, &fe):
			return http.StatusBadRequest, "malformed request body\n"
		case isTimeout(err):
			return http.StatusRequestTimeout, "request body timed out\n"
		}
		return http.StatusBadRequest, "request body could not be read\n"
	case errors.Is(err, context.DeadlineExceeded) || isTimeout(err):
		return http.StatusGatewayTimeout, "upstream timed out\n"
	default:
		return http.StatusBadGateway, "upstream unavailable\n"
	}
}

// isTimeout reports whether err is a timeout by its type: net/http's
// "timeout awaiting response headers" (HTTP/1 and HTTP/2 alike), a dial or
// read deadline and http1's own timeouts are net.Errors whose Timeout is
// true.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// bufferPool lends ReverseProxy its 32 KiB copy buffers from a bounded
// free list. A channel of slices rather than a sync.Pool: putting a slice
// into a sync.Pool boxes its header, an allocation per request.
type bufferPool struct{ free chan []byte }

func newBufferPool() *bufferPool { return &bufferPool{free: make(chan []byte, 1024)} }

func (b *bufferPool) Get() []byte {
	select {
	case buf := <-b.free:
		return buf
	default:
		return make([]byte, 32<<10)
	}
}

func (b *bufferPool) Put(buf []byte) {
	if cap(buf) < 32<<10 {
		return
	}
	select {
	case b.free <- buf[:32<<10]:
	default: // full: let the GC have it
	}
}
