// Package scatter is the scatter-gather stage: it sends one request to every
// leaf of a sharded service at once, bounds how long it waits for each
// (per-leaf deadline, hedging on a second replica, a success quorum) and
// merges the JSON answers into one.
//
// A leaf is an http.Handler; in the proxy it is a pool whose replicas serve
// one shard. scatter never knows what a pool is: it only shares a
// router.Tried between a leaf's attempts, which a pool reads to send a hedge
// to a replica it has not used yet.
package scatter

import (
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"sekisho/router"
)

// Headers the stage adds: LeafHeader on each request sent to a leaf,
// LeavesHeader ("ok/total") on every answer, PartialHeader ("true") on an
// answer that lacks some leaf.
const (
	LeafHeader    = "X-Sekisho-Leaf"
	LeavesHeader  = "X-Sekisho-Leaves"
	PartialHeader = "X-Sekisho-Partial"
)

// Defaults of a Config's zero fields.
const (
	DefaultTimeout            = time.Second
	DefaultMinSuccess         = 1
	DefaultHedgeBudgetPercent = 10.0
	DefaultMaxBodyBytes       = 1 << 20
	DefaultMaxLeafBodyBytes   = 8 << 20
)

// Leaf results: the values of the result label of Config.Results, and what
// the access log and a 502 body say of each leaf.
const (
	ResultOK        = "ok"         // the first attempt answered 2xx with a usable body
	ResultError     = "error"      // every attempt failed: transport error, non-2xx, unusable or oversized body
	ResultTimeout   = "timeout"    // no usable answer within Timeout
	ResultHedgedWin = "hedged_win" // the hedge answered first
	// ResultCancelled is a leaf stopped before it finished because the
	// client went away or the quorum could no longer be met. It is logged
	// but not counted: the leaf itself did nothing wrong.
	ResultCancelled = "cancelled"
)

// Leaf is one shard of the scattered service.
type Leaf struct {
	// Name names the leaf in LeafHeader, metrics and logs: the pool name. It
	// is a label value and a field of the access log's "leaf:result:ms"
	// list, so it may not contain space, comma, colon, semicolon, equals
	// sign, quote or backslash.
	Name string
	// Handler serves the leaf. It must return soon after its request's
	// context is done: the stage waits for every handler it called before
	// it returns. It is called from goroutines of the stage, several at
	// once, and must be safe for concurrent use.
	Handler http.Handler
}

// Config configures a scatter stage: the YAML `scatter:` map, with leaves
// resolved to handlers. Zero fields take the defaults given per field.
type Config struct {
	// Leaves are called concurrently with a copy of every request; the
	// merge is in this order.
	Leaves []Leaf
	// Timeout is each leaf's deadline, hedges included, counted from the
	// moment the stage sends the request. Zero means DefaultTimeout (1s).
	Timeout time.Duration
	// HedgeAfter sends a second copy of the request to another replica of a
	// leaf that has not answered after this long; the first usable answer
	// wins and the other attempt is cancelled. Zero, with HedgeAuto false,
	// never hedges. It must be below Timeout.
	HedgeAfter time.Duration
	// HedgeAuto (hedge_after: auto) hedges each leaf after its own recent
	// p95 latency: the nearest-rank p95 of its last 128 attempts (slower
	// attempts that lost to a hedge or timed out count as the time they
	// ran). Until 20 attempts were seen it hedges after Timeout/2.
	HedgeAuto bool
	// HedgeBudgetPercent caps each leaf's hedges at this share of its
	// requests, 0..100, so hedging cannot double the load on a slow pool.
	// The budget starts empty and saves up at most 10 hedges. Zero means
	// DefaultHedgeBudgetPercent (10).
	HedgeBudgetPercent float64
	// MinSuccess is the quorum: with fewer usable answers the stage answers
	// 502. Zero means DefaultMinSuccess (1).
	MinSuccess int
	// Merge says how the answers are merged. It must be set.
	Merge Merge
	// MaxBodyBytes caps the request body, which is buffered to be sent to
	// every leaf; a larger one gets 413 before any leaf is called. Zero
	// means DefaultMaxBodyBytes (1 MiB).
	MaxBodyBytes int64
	// MaxLeafBodyBytes caps each leaf's answer; a larger one fails that
	// leaf as soon as the cap is crossed. Zero means
	// DefaultMaxLeafBodyBytes (8 MiB).
	MaxLeafBodyBytes int64
	// Results counts leaves by outcome (ResultOK, ResultError,
	// ResultTimeout, ResultHedgedWin); it must have exactly the labels leaf
	// and result (the proxy curries route). Nil counts nothing.
	Results *prometheus.CounterVec
}

// Validate reports every problem of c at once, each a router.FieldError
// naming its YAML field.
// It is pure: defaults are taken into account, not written into c.
func (c *Config) Validate() error {
	var errs []error
	if len(c.Leaves) == 0 {
		errs = append(errs, router.FieldErrorf("leaves", "leaves: none; a scatter needs at least one leaf"))
	}
	seen := make(map[string]bool, len(c.Leaves))
	for i, l := range c.Leaves {
		if err := checkLeafName(l.Name); err != nil {
			errs = append(errs, router.FieldErrorf(fmt.Sprintf("leaves[%d]", i), "leaves[%d]: %v", i, err))
		} else if seen[l.Name] {
			errs = append(errs, router.FieldErrorf(fmt.Sprintf("leaves[%d]", i), "leaves[%d]: %q is listed twice", i, l.Name))
		}
		seen[l.Name] = true
		if l.Handler == nil {
			errs = append(errs, router.FieldErrorf(fmt.Sprintf("leaves[%d]", i), "leaves[%d]: %q has no handler", i, l.Name))
		}
	}
	timeout := c.Timeout
	if timeout < 0 {
		errs = append(errs, router.FieldErrorf("timeout", "timeout: %v: want > 0 (0 means %v)", c.Timeout, DefaultTimeout))
	}
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	switch {
	case c.HedgeAfter < 0:
		errs = append(errs, router.FieldErrorf("hedge_after", "hedge_after: %v: want > 0, or auto", c.HedgeAfter))
	case c.HedgeAuto && c.HedgeAfter != 0:
		errs = append(errs, router.FieldErrorf("hedge_after", "hedge_after: both auto and %v", c.HedgeAfter))
	case c.HedgeAfter >= timeout:
		errs = append(errs, router.FieldErrorf("hedge_after", "hedge_after: %v is not below timeout %v, so no hedge would ever be sent", c.HedgeAfter, timeout))
	}
	if p := c.HedgeBudgetPercent; math.IsNaN(p) || p < 0 || p > 100 {
		errs = append(errs, router.FieldErrorf("hedge_budget_percent", "hedge_budget_percent: %v: want 0..100 (0 means %v)", p, DefaultHedgeBudgetPercent))
	}
	switch {
	case c.MinSuccess < 0:
		errs = append(errs, router.FieldErrorf("min_success", "min_success: %d: want >= 1 (0 means %d)", c.MinSuccess, DefaultMinSuccess))
	case c.MinSuccess > len(c.Leaves):
		errs = append(errs, router.FieldErrorf("min_success", "min_success: %d is more than the %d leaves", c.MinSuccess, len(c.Leaves)))
	}
	if err := c.Merge.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.MaxBodyBytes < 0 {
		errs = append(errs, router.FieldErrorf("max_body_bytes", "max_body_bytes: %d: want >= 0 (0 means %d)", c.MaxBodyBytes, DefaultMaxBodyBytes))
	}
	if c.MaxLeafBodyBytes < 0 {
		errs = append(errs, router.FieldErrorf("max_leaf_body_bytes", "max_leaf_body_bytes: %d: want >= 0 (0 means %d)", c.MaxLeafBodyBytes, DefaultMaxLeafBodyBytes))
	}
	return errors.Join(errs...)
}

func checkLeafName(n string) error {
	if n == "" {
		return errors.New("empty leaf name")
	}
	for i := 0; i < len(n); i++ {
		if c := n[i]; c <= ' ' || c >= 0x7f || strings.IndexByte(`,:;="\`, c) >= 0 {
			return fmt.Errorf("leaf name %q: use letters, digits and punctuation other than , : ; = \" \\", n)
		}
	}
	return nil
}

// Stage is a compiled Config: the terminal scatter stage, and the handler
// that serves it.
//
// A request's body is read whole (up to MaxBodyBytes) and a copy of the
// request goes to every leaf at once, each on its own goroutine, with
// LeafHeader set. The stage waits until every leaf has a usable answer, has
// failed or has timed out, then answers 200 with the merged JSON when at
// least MinSuccess leaves answered, and 502 with a JSON body listing each
// leaf's result otherwise. It fails at once, cancelling the leaves still
// running, when too few leaves are left to reach MinSuccess. A client that
// goes away cancels every leaf. The answer's headers are the stage's own
// (Content-Type, Content-Length, LeavesHeader, PartialHeader), never a
// leaf's.
//
// With merge concat: ndjson the answer streams: once MinSuccess leaves
// answered, the status (200) is sent with the bodies gathered so far, and
// every later answer is written and flushed as it arrives; leaves that fail
// afterwards add nothing. If some leaf was still running when the status
// went out, LeavesHeader and PartialHeader come as trailers.
//
// Every goroutine the stage starts for a request has ended when ServeHTTP
// returns; the answer is written before the stage waits for cancelled
// attempts, so a slow cancellation delays the end of the request, not the
// answer. Each leaf's result is counted in Config.Results and written, as
// "leaf:result:ms,...", to the request's router.Info Leaves.
//
// A Stage is safe for concurrent use and holds no goroutine of its own; it
// needs no Close.
type Stage struct {
	leaves      []leafRuntime
	timeout     time.Duration
	hedgeAfter  time.Duration
	hedgeAuto   bool
	minSuccess  int
	merger      *merger
	maxBody     int64
	maxLeafBody int64
}

// leafRuntime is what the stage keeps per leaf across requests.
type leafRuntime struct {
	name    string
	handler http.Handler
	lat     latency
	budget  *budget
	// results is indexed by outcome; nil for outcomes not counted.
	results [numOutcomes]prometheus.Counter
}

var (
	_ router.Terminal = (*Stage)(nil)
	_ http.Handler    = (*Stage)(nil)
)

// New validates c, applies its defaults and compiles it. It starts nothing.
func New(c Config) (*Stage, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	mg, err := compileMerge(c.Merge)
	if err != nil {
		return nil, err
	}
	s := &Stage{
		leaves:      make([]leafRuntime, len(c.Leaves)),
		timeout:     orDefault(c.Timeout, DefaultTimeout),
		hedgeAfter:  c.HedgeAfter,
		hedgeAuto:   c.HedgeAuto,
		minSuccess:  orDefault(c.MinSuccess, DefaultMinSuccess),
		merger:      mg,
		maxBody:     orDefault(c.MaxBodyBytes, DefaultMaxBodyBytes),
		maxLeafBody: orDefault(c.MaxLeafBodyBytes, DefaultMaxLeafBodyBytes),
	}
	percent := orDefault(c.HedgeBudgetPercent, DefaultHedgeBudgetPercent)
	for i, l := range c.Leaves {
		lr := &s.leaves[i]
		lr.name, lr.handler, lr.budget = l.Name, l.Handler, newBudget(percent)
		if c.Results == nil {
			continue
		}
		for o := outcomeOK; o <= outcomeHedgedWin; o++ {
			counter, err := c.Results.GetMetricWith(prometheus.Labels{"leaf": l.Name, "result": o.String()})
			if err != nil {
				return nil, fmt.Errorf("results counter: %w", err)
			}
			lr.results[o] = counter
		}
	}
	return s, nil
}

func orDefault[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

// Wrap returns the stage itself; next must be nil.
func (s *Stage) Wrap(next http.Handler) (http.Handler, error) {
	if next != nil {
		return nil, errors.New("scatter: a scatter stage ends the pipeline")
	}
	return s, nil
}

// Terminal marks Stage as ending a pipeline.
func (s *Stage) Terminal() {}

func (s *Stage) hedging() bool { return s.hedgeAuto || s.hedgeAfter > 0 }

// hedgeDelay is when, after the leaves were sent, leaf i gets its hedge; -1
// for never.
func (s *Stage) hedgeDelay(i int) time.Duration {
	d := s.hedgeAfter
	if s.hedgeAuto {
		var ok bool
		if d, ok = s.leaves[i].lat.estimate(); !ok {
			d = s.timeout / 2
		}
	}
	if d <= 0 || d >= s.timeout {
		return -1
	}
	return d
}

// ServeHTTP scatters r to every leaf and answers with the merged result.
func (s *Stage) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, status, err := s.readBody(w, r)
	if err != nil {
		http.Error(w, err.Error(), status)
		return
	}
	c := newCall(s, r, body)
	defer c.cancel()
	c.gather(w)
	c.cancel()
	c.respond(w)
	c.release()
	c.report()
	c.reap()
}

// readBody buffers the request body, which every leaf is sent a copy of.
func (s *Stage) readBody(w http.ResponseWriter, r *http.Request) ([]byte, int, error) {
	if r.Body == nil || r.Body == http.NoBody {
		return nil, 0, nil
	}
	tooLarge := func() ([]byte, int, error) {
		return nil, http.StatusRequestEntityTooLarge, fmt.Errorf("request body over max_body_bytes (%d bytes)", s.maxBody)
	}
	if r.ContentLength > s.maxBody {
		return tooLarge()
	}
	size := int64(512)
	if r.ContentLength >= 0 {
		size = r.ContentLength + 1 // room to read the EOF without growing
	}
	body := make([]byte, 0, size)
	rd := http.MaxBytesReader(w, r.Body, s.maxBody)
	// Each read either adds bytes, which MaxBytesReader bounds, or counts
	// toward the empty reads a broken reader is allowed, as in bufio.
	for empty := 0; ; {
		if len(body) == cap(body) {
			body = append(body, 0)[:len(body)]
		}
		n, err := rd.Read(body[len(body):cap(body)])
		body = body[:len(body)+n]
		if err == nil {
			if n > 0 {
				empty = 0
			} else if empty++; empty >= 100 {
				return nil, http.StatusBadRequest, fmt.Errorf("reading the request body: %w", io.ErrNoProgress)
			}
			continue
		}
		if err == io.EOF {
			return body, 0, nil
		}
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return tooLarge()
		}
		return nil, http.StatusBadRequest, fmt.Errorf("reading the request body: %w", err)
	}
}
