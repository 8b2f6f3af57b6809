package balance

import (
	"math/rand/v2"
	"net/http"
	"time"
)

// random picks a usable target at random in proportion to its weight.
type random struct {
	slow time.Duration
}

var _ Policy = (*random)(nil)

func (p *random) Pick(targets []Target, _ *http.Request, now time.Time, usable func(int) bool) int {
	var buf [inline]uint64
	ws := weigh(scratch(&buf, len(targets)), targets, now, p.slow, usable)
	if ws.count == 0 {
		return -1
	}
	return ws.locate(rand.Uint64N(ws.total))
}
