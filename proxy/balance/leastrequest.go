package balance

import (
	"math/rand/v2"
	"net/http"
	"time"
)

// leastRequest draws two distinct targets at random, each in proportion to
// its weight, and sends the request to the one with fewer requests in flight
// per unit of weight; a tie goes to the first drawn. Comparing two instead
// of scanning for the least loaded keeps a burst from landing on the one
// endpoint that looked idle a moment ago, and drawing by weight makes an
// idle pool split its requests by weight.
type leastRequest struct {
	slow time.Duration
}

var _ Policy = (*leastRequest)(nil)

// maxLoad bounds in-flight counts so that load times weight cannot overflow.
const maxLoad = 1 << 31

func (p *leastRequest) Pick(targets []Target, _ *http.Request, now time.Time, usable func(int) bool) int {
	var buf [inline]uint64
	ws := weigh(scratch(&buf, len(targets)), targets, now, p.slow, usable)
	switch ws.count {
	case 0:
		return -1
	case 1:
		return ws.nth(0)
	}
	a := ws.locate(rand.Uint64N(ws.total))
	wa := ws.w[a]
	ws.w[a] = 0 // draw the second among the others
	b := ws.locate(rand.Uint64N(ws.total - wa))
	wb := ws.w[b]
	// la/wa against lb/wb, multiplied out.
	if load(&targets[b])*wa < load(&targets[a])*wb {
		return b
	}
	return a
}

func load(t *Target) uint64 {
	if t.EP == nil {
		return 0
	}
	return uint64(min(max(t.EP.InFlight(), 0), maxLoad))
}
