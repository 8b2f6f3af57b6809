package scatter

import (
	"math"
	"sync/atomic"
)

// Budget arithmetic: a hedge costs budgetHedge tokens, a leaf request earns
// HedgeBudgetPercent * budgetPerPercent of them, so the percent is honoured
// to 1/10 000 of a percent.
const (
	budgetHedge      = 1_000_000
	budgetPerPercent = budgetHedge / 100
	// budgetBurst caps the saved-up tokens, in hedges: after a calm spell a
	// burst of slow requests may hedge this many at once and no more, so the
	// share is held over any window, not only since start.
	budgetBurst = 10
)

// budget caps one leaf's hedges at a share of its requests: a token bucket
// that every first attempt fills by the share and every hedge empties by
// one. It starts empty, so hedges never exceed the share of the requests
// seen since the stage was built, and no more than budgetBurst beyond the
// share in any window. Lock-free; safe for concurrent use. A compare-and-swap
// that keeps losing gives up after a bounded number of tries, on the side of
// fewer hedges.
type budget struct {
	tokens atomic.Int64
	earn   int64
}

func newBudget(percent float64) *budget {
	return &budget{earn: max(1, int64(math.Round(percent*budgetPerPercent)))}
}

// request earns the share of one leaf request.
func (b *budget) request() {
	const ceiling = budgetBurst * budgetHedge
	for range 64 {
		t := b.tokens.Load()
		n := min(t+b.earn, ceiling)
		if n == t || b.tokens.CompareAndSwap(t, n) {
			return
		}
	}
}

// take spends one hedge; false when the budget is spent.
func (b *budget) take() bool {
	for range 64 {
		t := b.tokens.Load()
		if t < budgetHedge {
			return false
		}
		if b.tokens.CompareAndSwap(t, t-budgetHedge) {
			return true
		}
	}
	return false
}
