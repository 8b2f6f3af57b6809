package scatter

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	"sekisho/router"
)

// outcome is a leaf's result within one request.
type outcome uint8

const (
	outcomePending outcome = iota
	outcomeOK
	outcomeError
	outcomeTimeout
	outcomeHedgedWin
	outcomeCancelled
	numOutcomes
)

func (o outcome) String() string {
	switch o {
	case outcomeOK:
		return ResultOK
	case outcomeError:
		return ResultError
	case outcomeTimeout:
		return ResultTimeout
	case outcomeHedgedWin:
		return ResultHedgedWin
	case outcomeCancelled:
		return ResultCancelled
	}
	return "pending"
}

// call is one request's scatter and gather. Only the goroutine serving the
// request touches it, except each attempt's writer and result fields, which
// the attempt's goroutine owns until it sends the attempt on results.
type call struct {
	s      *Stage
	r      *http.Request
	body   []byte
	info   *router.Info // the request's, or nil
	ctx    context.Context
	cancel context.CancelFunc
	start  time.Time

	// results is buffered for every attempt there can be, so an attempt's
	// goroutine never blocks on sending, even after the gatherer stopped
	// listening.
	results  chan *attempt
	leaves   []leafCall
	inflight int // attempts launched and not yet received
	done, ok int // leaves with an outcome; of them, usable

	// With concat: ndjson, the usable leaves in order of arrival, how many
	// of them were written, and whether the status was.
	arrivals []int
	streamed int
	wrote    bool
	trailers bool // the leaves headers go in the trailer
	rc       *http.ResponseController
}

// leafCall is one leaf within one request.
type leafCall struct {
	tried    router.Tried
	attempts [2]attempt // the first, then the hedge
	launched int
	running  int
	outcome  outcome
	reason   string
	latency  time.Duration // from the scatter to the outcome
	win      *attempt      // the attempt whose answer is used
	hedgeAt  time.Duration // since start; -1 once hedged or never to be
}

func newCall(s *Stage, r *http.Request, body []byte) *call {
	c := &call{
		s:       s,
		r:       r,
		body:    body,
		info:    router.InfoFrom(r),
		start:   time.Now(),
		results: make(chan *attempt, 2*len(s.leaves)),
		leaves:  make([]leafCall, len(s.leaves)),
	}
	c.ctx, c.cancel = context.WithTimeout(r.Context(), s.timeout)
	hedging := s.hedging()
	for i := range c.leaves {
		c.leaves[i].hedgeAt = -1
		if hedging {
			s.leaves[i].budget.request()
			c.leaves[i].hedgeAt = s.hedgeDelay(i)
		}
		c.launch(i, false)
	}
	return c
}

// gather waits for outcomes until every leaf has one, the deadline passes,
// the client goes away or the quorum can no longer be met, launching hedges
// as they fall due.
func (c *call) gather(w http.ResponseWriter) {
	var hedges <-chan time.Time
	var timer *time.Timer
	if next, ok := c.nextHedge(time.Now()); ok {
		timer = time.NewTimer(next)
		defer timer.Stop()
		hedges = timer.C
	}
	n := len(c.leaves)
	// Each round receives one of at most 2n attempts, fires the hedge timer
	// (once per leaf at most) or ends the gathering.
	for range 3*n + 1 {
		if c.done == n {
			return
		}
		if c.ok+n-c.done < c.s.minSuccess {
			c.abandon(outcomeCancelled, "cancelled: too few leaves left to reach min_success")
			return
		}
		select {
		case a := <-c.results:
			c.inflight--
			c.finish(a, time.Now())
		case <-hedges:
			if next, ok := c.hedge(time.Now()); ok {
				timer.Reset(next)
			} else {
				hedges = nil
			}
		case <-c.ctx.Done():
			c.drain()
			if c.r.Context().Err() != nil {
				c.abandon(outcomeCancelled, "cancelled: the client went away")
			} else {
				c.abandon(outcomeTimeout, "no usable answer within "+c.s.timeout.String())
			}
			return
		}
		c.stream(w)
	}
	c.abandon(outcomeError, "internal error: gathering did not converge")
}

// finish takes the attempt a back from its goroutine.
func (c *call) finish(a *attempt, now time.Time) {
	l := &c.leaves[a.leaf]
	a.running = false
	l.running--
	if l.outcome != outcomePending {
		return // it lost to its sibling and was cancelled
	}
	if a.fail == nil {
		c.observe(a.leaf, now.Sub(a.start))
		l.outcome, l.win = outcomeOK, a
		if a.hedge {
			l.outcome = outcomeHedgedWin
		}
		l.latency = now.Sub(c.start)
		c.done++
		c.ok++
		for i := range l.launched {
			if other := &l.attempts[i]; other.running {
				other.cancel()
				// It ran at least this long; leaving it out would teach
				// the estimate that slow attempts never happen.
				c.observe(a.leaf, now.Sub(other.start))
			}
		}
		if c.s.merger.kind == mergeNDJSON {
			c.arrivals = append(c.arrivals, a.leaf)
		}
		return
	}
	if a.ctx.Err() != nil {
		// Cancelled with the whole request (deadline or client): the
		// ctx.Done case of gather gives the leaf its outcome.
		return
	}
	l.reason = a.fail.Error()
	if l.running > 0 {
		return // its sibling may still answer
	}
	l.outcome = outcomeError
	l.latency = now.Sub(c.start)
	c.done++
}

// drain takes back the attempts that already ended, so that an answer that
// arrived with the deadline still counts.
func (c *call) drain() {
	for range c.inflight {
		select {
		case a := <-c.results:
			c.inflight--
			c.finish(a, time.Now())
		default:
			return
		}
	}
}

// abandon gives every leaf without an outcome the outcome o.
func (c *call) abandon(o outcome, reason string) {
	now := time.Now()
	for i := range c.leaves {
		l := &c.leaves[i]
		if l.outcome != outcomePending {
			continue
		}
		if o == outcomeTimeout {
			for j := range l.launched {
				if a := &l.attempts[j]; a.running {
					c.observe(i, now.Sub(a.start))
				}
			}
		}
		l.outcome = o
		if l.reason == "" || o != outcomeTimeout {
			l.reason = reason
		} else {
			l.reason = reason + " (last failure: " + l.reason + ")"
		}
		l.latency = now.Sub(c.start)
		c.done++
	}
}

// reap waits for the attempts still running; all were cancelled.
func (c *call) reap() {
	for c.inflight > 0 {
		<-c.results
		c.inflight--
	}
}

func (c *call) observe(leaf int, d time.Duration) {
	if c.s.hedgeAuto {
		c.s.leaves[leaf].lat.observe(d)
	}
}

// nextHedge returns how long from now the next hedge falls due.
func (c *call) nextHedge(now time.Time) (time.Duration, bool) {
	elapsed := now.Sub(c.start)
	next, ok := time.Duration(0), false
	for i := range c.leaves {
		l := &c.leaves[i]
		if l.hedgeAt < 0 || l.outcome != outcomePending {
			continue
		}
		if d := l.hedgeAt - elapsed; !ok || d < next {
			next, ok = d, true
		}
	}
	return max(next, 0), ok
}

// hedge launches the hedges that fell due, within each leaf's budget, and
// returns how long from now the next one falls due.
func (c *call) hedge(now time.Time) (time.Duration, bool) {
	elapsed := now.Sub(c.start)
	for i := range c.leaves {
		l := &c.leaves[i]
		if l.hedgeAt < 0 || l.hedgeAt > elapsed || l.outcome != outcomePending {
			continue
		}
		l.hedgeAt = -1
		if l.running == 1 && c.s.leaves[i].budget.take() {
			c.launch(i, true)
		}
	}
	return c.nextHedge(now)
}

// stream writes, for concat: ndjson, the answers that arrived since the
// last call, once the quorum is met.
func (c *call) stream(w http.ResponseWriter) {
	if c.s.merger.kind != mergeNDJSON || c.ok < c.s.minSuccess || c.streamed == len(c.arrivals) {
		return
	}
	if !c.wrote {
		h := w.Header()
		h.Set("Content-Type", c.s.merger.contentType())
		if c.done == len(c.leaves) {
			c.setLeavesHeaders(h)
		} else {
			h.Set("Trailer", LeavesHeader+", "+PartialHeader)
			c.trailers = true
		}
		w.WriteHeader(http.StatusOK)
		c.wrote = true
		c.rc = http.NewResponseController(w)
	}
	for ; c.streamed < len(c.arrivals); c.streamed++ {
		body := c.leaves[c.arrivals[c.streamed]].win.w.body
		if len(body) == 0 {
			continue
		}
		_, err := w.Write(body)
		if err == nil && body[len(body)-1] != '\n' {
			_, err = w.Write(newline)
		}
		if err != nil {
			return // the client is gone; its context ends the gathering
		}
	}
	_ = c.rc.Flush()
}

var newline = []byte{'\n'}

func (c *call) setLeavesHeaders(h http.Header) {
	h.Set(LeavesHeader, strconv.Itoa(c.ok)+"/"+strconv.Itoa(len(c.leaves)))
	if c.ok < len(c.leaves) {
		h.Set(PartialHeader, "true")
	}
}

// mergeBuffers recycles the merged answers' buffers: an answer is copied by
// Write before the buffer goes back. Buffers that grew large are dropped so
// one huge answer does not stay pinned.
var mergeBuffers = sync.Pool{New: func() any { return new([]byte) }}

const maxPooledBuffer = 256 << 10

// elemPool recycles the element lists of array merges, which would
// otherwise be the largest allocation of a request after the leaves'
// bodies. Lists that grew past maxPooledElems are left to the collector.
var elemPool = sync.Pool{New: func() any { return new([]elem) }}

const maxPooledElems = 4096

func getElems() []elem {
	return (*elemPool.Get().(*[]elem))[:0]
}

// putElems takes back a list no one refers to any more. It is cleared
// first, so the pool does not keep leaf bodies alive.
func putElems(elems []elem) {
	if cap(elems) == 0 || cap(elems) > maxPooledElems {
		return
	}
	elems = elems[:cap(elems)]
	clear(elems)
	elemPool.Put(&elems)
}

// release hands the parts' element lists back once the answer is written.
func (c *call) release() {
	for i := range c.leaves {
		if win := c.leaves[i].win; win != nil {
			putElems(win.part.elems)
			win.part.elems = nil
		}
	}
}

// respond writes the answer, once the gathering ended.
func (c *call) respond(w http.ResponseWriter) {
	if c.s.merger.kind == mergeNDJSON {
		c.stream(w)
		if c.wrote {
			if c.trailers {
				c.setLeavesHeaders(w.Header())
			}
			return
		}
	}
	if c.ok < c.s.minSuccess {
		c.fail(w, fmt.Sprintf("%d of %d leaves answered, min_success is %d", c.ok, len(c.leaves), c.s.minSuccess))
		return
	}
	parts := make([]*part, 0, c.ok)
	for i := range c.leaves {
		if win := c.leaves[i].win; win != nil {
			parts = append(parts, &win.part)
		}
	}
	bp := mergeBuffers.Get().(*[]byte)
	out, err := c.s.merger.write((*bp)[:0], parts)
	if err != nil {
		mergeBuffers.Put(bp)
		c.fail(w, err.Error())
		return
	}
	h := w.Header()
	h.Set("Content-Type", c.s.merger.contentType())
	h.Set("Content-Length", strconv.Itoa(len(out)))
	c.setLeavesHeaders(h)
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(out)
	if cap(out) <= maxPooledBuffer {
		*bp = out
		mergeBuffers.Put(bp)
	}
	c.flushIfWaiting(w)
}

// failure is the body of a 502.
type failure struct {
	Error  string       `json:"error"`
	Leaves []leafReport `json:"leaves"`
}

type leafReport struct {
	Leaf      string `json:"leaf"`
	Result    string `json:"result"`
	LatencyMS int64  `json:"latency_ms"`
	Reason    string `json:"reason,omitempty"`
}

func (c *call) fail(w http.ResponseWriter, msg string) {
	f := failure{Error: "scatter: " + msg, Leaves: make([]leafReport, len(c.leaves))}
	for i := range c.leaves {
		l := &c.leaves[i]
		f.Leaves[i] = leafReport{
			Leaf:      c.s.leaves[i].name,
			Result:    l.outcome.String(),
			LatencyMS: l.latency.Milliseconds(),
			Reason:    l.reason,
		}
	}
	body, _ := json.Marshal(f)
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	h.Set(LeavesHeader, strconv.Itoa(c.ok)+"/"+strconv.Itoa(len(c.leaves)))
	w.WriteHeader(http.StatusBadGateway)
	_, _ = w.Write(body)
	c.flushIfWaiting(w)
}

// flushIfWaiting sends the answer now when cancelled attempts are still to
// be reaped, rather than when ServeHTTP returns.
func (c *call) flushIfWaiting(w http.ResponseWriter) {
	if c.inflight > 0 {
		_ = http.NewResponseController(w).Flush()
	}
}

// report counts each leaf's outcome and lists it for the access log.
func (c *call) report() {
	var b []byte
	if c.info != nil {
		b = make([]byte, 0, 24*len(c.leaves))
	}
	for i := range c.leaves {
		l := &c.leaves[i]
		if counter := c.s.leaves[i].results[l.outcome]; counter != nil {
			counter.Inc()
		}
		if c.info == nil {
			continue
		}
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, c.s.leaves[i].name...)
		b = append(b, ':')
		b = append(b, l.outcome.String()...)
		b = append(b, ':')
		b = strconv.AppendInt(b, l.latency.Milliseconds(), 10)
	}
	if c.info != nil {
		c.info.Leaves = string(b)
	}
}
