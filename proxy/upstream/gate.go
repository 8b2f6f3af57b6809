package upstream

import (
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"sekisho/proxy/metrics"
	"sekisho/router"
)

// inFlightGate is a pool's circuit breaker: at most max requests in flight,
// the rest answered 503 at once. It is safe for concurrent use and takes no
// lock.
type inFlightGate struct {
	max        int64
	n          atomic.Int64
	retryAfter []string // the header's value, with no spare capacity
	overflow   prometheus.Counter
}

// newInFlightGate returns the gate of pool name for limit requests in flight,
// whose overflow answer says Retry-After: after, or nil when limit is 0.
func newInFlightGate(name string, limit int, after time.Duration, m *metrics.Metrics) *inFlightGate {
	if limit <= 0 {
		return nil
	}
	if after <= 0 {
		after = DefaultOverflowRetryAfter
	}
	secs := int64((after + time.Second - 1) / time.Second)
	return &inFlightGate{max: int64(limit), retryAfter: []string{strconv.FormatInt(secs, 10)},
		overflow: m.PoolOverflow.WithLabelValues(name)}
}

// DefaultOverflowRetryAfter is the Retry-After of a pool's overflow 503.
const DefaultOverflowRetryAfter = time.Second

// enter takes a place for one request, or reports false when the pool is
// full; a true enter is paired with a leave.
func (g *inFlightGate) enter() bool {
	if g.n.Add(1) > g.max {
		g.n.Add(-1)
		return false
	}
	return true
}

func (g *inFlightGate) leave() { g.n.Add(-1) }

// refuse answers a request the full pool will not take.
func (g *inFlightGate) refuse(w http.ResponseWriter, r *http.Request, pool string) {
	g.overflow.Inc()
	if info := router.InfoFrom(r); info != nil && info.Pool == "" {
		info.Pool = pool
	}
	w.Header()["Retry-After"] = g.retryAfter[:1:1]
	PlainError(w, http.StatusServiceUnavailable, "pool at capacity\n")
}
