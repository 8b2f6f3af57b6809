package balance

import (
	"math/bits"
	"net/http"
	"sync/atomic"
	"time"
)

// golden is 2^64 divided by the golden ratio: the step of the Weyl sequence
// with the lowest discrepancy.
const golden = 0x9E3779B97F4A7C15

// roundRobin takes turns. With equal weights, the n-th pick goes to the
// (n mod k)-th of the k usable targets: exact rotation. With unequal ones
// (set by configuration or by slow start), the n-th pick lands at frac(n·φ)
// of the summed weights, each target owning a share of that line as wide as
// its weight. The golden-ratio sequence spreads successive points as
// evenly as any sequence can, so the picks interleave much as smooth
// weighted round robin's do (at 5:1:1, every run of 7 picks gives the heavy
// target 4 to 6, never more than 4 in a row), the shares match the weights
// to within a pick or two over any run, and the only state is one atomic
// counter: no lock, and no per-target state to rebuild when an endpoint
// comes or goes or slow start moves its weight.
//
// A request's later attempts (retries, scatter's hedges) take their turns
// from a second counter, again: were they to take first attempts' turns, a
// pool of two with one failing endpoint would send every first attempt to
// the failing one, since each retry would skip the live one's turn.
type roundRobin struct {
	slow  time.Duration
	next  atomic.Uint64
	again atomic.Uint64
}

var (
	_ Policy   = (*roundRobin)(nil)
	_ Repicker = (*roundRobin)(nil)
)

func (p *roundRobin) Pick(targets []Target, _ *http.Request, now time.Time, usable func(int) bool) int {
	return p.pick(&p.next, targets, now, usable)
}

// PickAgain takes turns among the usable targets on the counter of later
// attempts, leaving first attempts' rotation where it is.
func (p *roundRobin) PickAgain(targets []Target, _ *http.Request, now time.Time, usable func(int) bool) int {
	return p.pick(&p.again, targets, now, usable)
}

func (p *roundRobin) pick(turn *atomic.Uint64, targets []Target, now time.Time, usable func(int) bool) int {
	var buf [inline]uint64
	ws := weigh(scratch(&buf, len(targets)), targets, now, p.slow, usable)
	if ws.count == 0 {
		return -1
	}
	n := turn.Add(1) - 1
	if ws.equal {
		return ws.nth(int(n % uint64(ws.count)))
	}
	pos, _ := bits.Mul64(n*golden, ws.total)
	return ws.locate(pos)
}
