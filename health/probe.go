package health

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// UserAgent is sent by every probe, so that backends can tell probes from
// traffic in their logs.
const UserAgent = "sekisho-probe"

// maxProbeBody is how much of a probe's answer is read: enough to let a
// small body finish on a kept-alive connection, never a whole download.
const maxProbeBody = 4 << 10

// Probe is an active readiness check: GET Scheme://address/Path every
// Interval, answered within Timeout with a status in Expect. Rise
// consecutive passes make an endpoint ready, Fall consecutive failures
// unready.
//
// Zero fields take defaults: Path "/ready" (a path without a leading slash
// gets one); Interval 2s; Timeout 1s, and never more than Interval; Rise 2;
// Fall 3; Expect 200-299; Host the endpoint address; Scheme "http".
type Probe struct {
	Path     string
	Interval time.Duration
	Timeout  time.Duration
	Rise     int
	Fall     int
	Expect   []StatusRange
	Host     string // the Host header, when the backend routes by name
	Scheme   string // http or https
}

func (p Probe) withDefaults() Probe {
	if p.Path == "" {
		p.Path = "/ready"
	}
	if !strings.HasPrefix(p.Path, "/") {
		p.Path = "/" + p.Path
	}
	if p.Interval <= 0 {
		p.Interval = 2 * time.Second
	}
	if p.Timeout <= 0 {
		p.Timeout = time.Second
	}
	p.Timeout = min(p.Timeout, p.Interval)
	if p.Rise <= 0 {
		p.Rise = 2
	}
	if p.Fall <= 0 {
		p.Fall = 3
	}
	if len(p.Expect) == 0 {
		p.Expect = []StatusRange{{200, 299}}
	}
	if p.Scheme == "" {
		p.Scheme = "http"
	}
	return p
}

// StatusRange is an inclusive range of HTTP status codes.
type StatusRange struct{ Lo, Hi int }

// Contains reports whether code is in the range.
func (s StatusRange) Contains(code int) bool { return s.Lo <= code && code <= s.Hi }

// String returns "200" or "200-299".
func (s StatusRange) String() string {
	if s.Lo == s.Hi {
		return strconv.Itoa(s.Lo)
	}
	return strconv.Itoa(s.Lo) + "-" + strconv.Itoa(s.Hi)
}

// ParseStatusRanges parses status codes ("204") and inclusive ranges
// ("200-299") between 100 and 599. An empty list yields nil (Probe's
// default applies); every bad spec is reported, joined in one error.
func ParseStatusRanges(specs []string) ([]StatusRange, error) {
	var out []StatusRange
	var errs []error
	for _, spec := range specs {
		r, err := parseStatusRange(spec)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, r)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
}

func parseStatusRange(spec string) (StatusRange, error) {
	lo, hi, isRange := strings.Cut(strings.TrimSpace(spec), "-")
	a, err := parseStatus(lo)
	if err != nil {
		return StatusRange{}, fmt.Errorf("status %q: %w", spec, err)
	}
	if !isRange {
		return StatusRange{a, a}, nil
	}
	b, err := parseStatus(hi)
	if err != nil {
		return StatusRange{}, fmt.Errorf("status range %q: %w", spec, err)
	}
	if a > b {
		return StatusRange{}, fmt.Errorf("status range %q: %d is above %d", spec, a, b)
	}
	return StatusRange{a, b}, nil
}

func parseStatus(s string) (int, error) {
	s = strings.TrimSpace(s)
	n, err := strconv.Atoi(s)
	if err != nil || len(s) != 3 {
		return 0, fmt.Errorf("%q is not a status code", s)
	}
	if n < 100 || n > 599 {
		return 0, fmt.Errorf("%d is not between 100 and 599", n)
	}
	return n, nil
}

func expected(ranges []StatusRange, code int) bool {
	for _, r := range ranges {
		if r.Contains(code) {
			return true
		}
	}
	return false
}

// Checker runs the active probes of one pool: one goroutine per endpoint,
// each probing at once when started and then every Interval less up to a
// tenth of it at random, so that replicas of the proxy started together
// drift apart instead of probing a backend in lockstep, while Interval stays
// the bound on how long a failure goes unseen. A probe that is cut by Close
// counts for nothing.
//
// The endpoint set may change while the Checker runs (SetEndpoints, as DNS
// discovery adds and removes replicas): an added endpoint is probed at once,
// a removed one's probes stop.
//
// Results go to the Endpoints, which live in the Registry: a Checker holds
// no state that a reload would lose, and two Checkers of the same pool (the
// old and the new Runtime during a reload) may run at once. A Checker is
// safe for concurrent use.
type Checker struct {
	group *Group
	probe Probe
	rt    http.RoundTripper
	own   *http.Transport // rt, when the Checker made it; closed by Close
	log   *zap.Logger

	started atomic.Bool
	pending atomic.Int64 // endpoints in the set not yet probed

	mu     sync.Mutex
	ctx    context.Context // the probes' parent, once started
	cancel context.CancelFunc
	closed bool
	runs   map[*Endpoint]*probeRun
	wg     sync.WaitGroup
}

// probeRun is the probing of one endpoint.
type probeRun struct {
	url    string
	cancel context.CancelFunc // nil until started
	// first is set from the run's start until its first probe ends (or
	// the endpoint is removed before that): pending counts these.
	first atomic.Bool
}

// NewChecker prepares the probes of endpoints, which must belong to g and
// whose Addr is a host:port, and starts nothing; a pool whose endpoints
// differ in scheme takes one Checker per scheme. rt sends the probes, each
// bounded by Timeout through its request context. nil means a private
// Transport that keeps one idle connection per endpoint, uses no proxy from
// the environment and, for https, verifies with the system roots and Host
// as the server name. log may be nil.
func NewChecker(g *Group, endpoints []*Endpoint, p Probe, rt http.RoundTripper, log *zap.Logger) *Checker {
	if log == nil {
		log = zap.NewNop()
	}
	p = p.withDefaults()
	c := &Checker{group: g, probe: p, rt: rt, log: log, runs: make(map[*Endpoint]*probeRun, len(endpoints))}
	for _, e := range endpoints {
		c.runs[e] = &probeRun{url: p.Scheme + "://" + e.addr + p.Path}
	}
	if rt == nil {
		c.own = newProbeTransport(p)
		c.rt = c.own
	}
	return c
}

func newProbeTransport(p Probe) *http.Transport {
	// Each probe's context deadline bounds every phase (dial, TLS,
	// headers, body) at once, so the Transport sets no timeouts of its
	// own that could fire first and name the wrong cause.
	t := &http.Transport{
		DialContext:         (&net.Dialer{}).DialContext,
		MaxIdleConnsPerHost: 1,
		// Long enough to carry a connection from one probe to the next.
		IdleConnTimeout:    2 * p.Interval,
		DisableCompression: true,
	}
	if p.Scheme == "https" && p.Host != "" {
		host := p.Host
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		t.TLSClientConfig = &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12}
	}
	return t
}

// Start launches the probes; they stop when ctx ends or at Close. Only the
// first call does anything, and none after Close.
func (c *Checker) Start(ctx context.Context) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || c.started.Load() {
		return
	}
	c.ctx, c.cancel = context.WithCancel(ctx)
	for e, run := range c.runs {
		c.launchLocked(e, run)
	}
	c.started.Store(true)
}

// launchLocked starts the probing of e; c.mu is held and c.ctx set.
func (c *Checker) launchLocked(e *Endpoint, run *probeRun) {
	run.first.Store(true)
	c.pending.Add(1)
	ctx, cancel := context.WithCancel(c.ctx)
	run.cancel = cancel
	c.wg.Add(1)
	go c.run(ctx, e, run)
}

// SetEndpoints makes endpoints the set probed, which must belong to the
// Checker's group: endpoints new to the set are probed at once (when the
// Checker runs), those no longer in it stop being probed, and the others go
// on undisturbed.
func (c *Checker) SetEndpoints(endpoints []*Endpoint) {
	c.mu.Lock()
	defer c.mu.Unlock()
	keep := make(map[*Endpoint]bool, len(endpoints))
	for _, e := range endpoints {
		keep[e] = true
		if _, ok := c.runs[e]; ok {
			continue
		}
		run := &probeRun{url: c.probe.Scheme + "://" + e.addr + c.probe.Path}
		c.runs[e] = run
		if c.ctx != nil && !c.closed {
			c.launchLocked(e, run)
		}
	}
	for e, run := range c.runs {
		if keep[e] {
			continue
		}
		delete(c.runs, e)
		if run.cancel != nil {
			run.cancel()
		}
		if run.first.Swap(false) {
			c.pending.Add(-1)
		}
	}
}

// FirstRoundDone reports whether every endpoint in the set has been probed
// at least once since Start (or since it was added): the condition of the
// proxy's /readyz at startup. A Checker that was never started has not.
func (c *Checker) FirstRoundDone() bool {
	return c.started.Load() && c.pending.Load() == 0
}

// Close stops the probes and waits for their goroutines, then closes the
// private Transport's idle connections. It is idempotent.
func (c *Checker) Close() {
	c.mu.Lock()
	c.closed = true
	if c.cancel != nil {
		c.cancel()
	}
	c.mu.Unlock()
	c.wg.Wait()
	if c.own != nil {
		c.own.CloseIdleConnections()
	}
}

func (c *Checker) run(ctx context.Context, e *Endpoint, run *probeRun) {
	defer c.wg.Done()
	timer := time.NewTimer(c.probe.Interval)
	defer timer.Stop()
	for {
		res := c.check(ctx, run.url)
		if ctx.Err() != nil {
			return
		}
		if !res.OK {
			c.log.Debug("probe failed", zap.String("pool", c.group.name), zap.String("endpoint", e.addr),
				zap.Int("status", res.Status), zap.String("error", res.Error))
		}
		e.recordProbe(res, c.probe.Rise, c.probe.Fall)
		if run.first.Swap(false) {
			c.pending.Add(-1)
		}
		// Probes also notice ejections ending, so that a pool nobody
		// sends requests to still reports its endpoints back.
		e.expireIfDue(time.Now())
		timer.Reset(jitter(c.probe.Interval, rand.Int64N))
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
	}
}

// jitter returns interval less a random part of up to a tenth of it; rnd(n)
// draws from [0, n).
func jitter(interval time.Duration, rnd func(n int64) int64) time.Duration {
	spread := int64(interval / 10)
	if spread <= 0 {
		return interval
	}
	return interval - time.Duration(rnd(spread+1))
}

// check sends one probe to url.
func (c *Checker) check(ctx context.Context, url string) ProbeResult {
	start := time.Now()
	res := c.send(ctx, url)
	res.At = start
	res.DurationMS = float64(time.Since(start).Microseconds()) / 1000
	return res
}

func (c *Checker) send(ctx context.Context, url string) ProbeResult {
	ctx, cancel := context.WithTimeout(ctx, c.probe.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return ProbeResult{Error: err.Error()}
	}
	req.Header.Set("User-Agent", UserAgent)
	if c.probe.Host != "" {
		req.Host = c.probe.Host
	}
	resp, err := c.rt.RoundTrip(req)
	if err != nil {
		return ProbeResult{Error: c.describe(ctx, err)}
	}
	_, err = io.CopyN(io.Discard, resp.Body, maxProbeBody)
	resp.Body.Close()
	res := ProbeResult{Status: resp.StatusCode}
	switch {
	case err != nil && err != io.EOF:
		res.Error = "reading body: " + c.describe(ctx, err)
	case !expected(c.probe.Expect, resp.StatusCode):
		res.Error = fmt.Sprintf("unexpected status %d", resp.StatusCode)
	default:
		res.OK = true
	}
	return res
}

// describe names a probe's timeout as such, rather than as whatever the
// Transport was doing when the deadline cut it.
func (c *Checker) describe(ctx context.Context, err error) string {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Sprintf("timed out after %s", c.probe.Timeout)
	}
	return err.Error()
}
