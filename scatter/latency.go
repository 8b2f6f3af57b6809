package scatter

import (
	"slices"
	"sync/atomic"
	"time"
)

// The estimate behind hedge_after: auto.
const (
	// latencyWindow is how many recent samples the estimate is drawn from;
	// older ones drop out, so the estimate follows a leaf that speeds up or
	// slows down within a few hundred requests.
	latencyWindow = 128
	// latencyMinSamples is how many samples the estimate needs before it is
	// trusted; a p95 of fewer would be the maximum of a handful.
	latencyMinSamples = 20
	// latencyRefresh is how often, in samples, the p95 is recomputed: the
	// cost of a sort of the window is paid once per this many requests.
	latencyRefresh = 16
)

// latency estimates the p95 of one leaf's attempt latencies over the last
// latencyWindow samples. Observing is an atomic add and store, plus a sort
// of the window every latencyRefresh samples; reading is one atomic load.
// It is safe for concurrent use: a sample written while the window is being
// sorted lands in this refresh or the next, either is fine for an estimate.
type latency struct {
	n    atomic.Uint64
	ring [latencyWindow]atomic.Int64
	p95  atomic.Int64 // nanoseconds; 0 until latencyMinSamples were seen
}

func (l *latency) observe(d time.Duration) {
	if d <= 0 {
		d = 1
	}
	n := l.n.Add(1)
	l.ring[(n-1)%latencyWindow].Store(int64(d))
	if n >= latencyMinSamples && (n == latencyMinSamples || n%latencyRefresh == 0) {
		l.refresh(n)
	}
}

func (l *latency) refresh(n uint64) {
	k := int(min(n, latencyWindow))
	var buf [latencyWindow]int64
	s := buf[:k]
	for i := range s {
		s[i] = l.ring[i].Load()
	}
	slices.Sort(s)
	// Nearest rank: the smallest sample at or above 95 % of the others.
	l.p95.Store(s[(k*95+99)/100-1])
}

// estimate returns the p95, or ok false before enough samples were seen.
func (l *latency) estimate() (p95 time.Duration, ok bool) {
	v := l.p95.Load()
	return time.Duration(v), v > 0
}
