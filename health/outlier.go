package health

import (
	"fmt"
	"time"

	"go.uber.org/zap"
)

// Outlier configures passive ejection: an endpoint whose requests fail
// ConsecutiveFailures times in a row is taken out of rotation for Eject.
// Each ejection that follows too soon doubles the time out, up to MaxEject;
// an endpoint that then goes as long as its latest ejection lasted without a
// single failure starts over at Eject.
//
// Zero fields take defaults: ConsecutiveFailures 0 disables passive ejection;
// Eject 30s; MaxEject ten times Eject (and never less than Eject);
// MaxEjectedPercent 50 (a negative value means 0: nothing is ever ejected;
// above 100 means 100).
type Outlier struct {
	ConsecutiveFailures int
	Eject               time.Duration
	MaxEject            time.Duration
	// MaxEjectedPercent bounds how many of a pool's endpoints may be ejected
	// at once: floor(n*MaxEjectedPercent/100) of n. A pool of one at 50%
	// therefore never ejects, a pool of two or three ejects at most one: a
	// struggling endpoint is better than none, and what matters is that
	// one bad replica cannot take the pool down by ejecting its peers.
	MaxEjectedPercent int
	// Count5xx makes a 5xx response a failure, not only a failed connection.
	Count5xx bool
}

// DefaultEject is the first ejection time when Outlier.Eject is zero.
const DefaultEject = 30 * time.Second

// DefaultMaxEjectedPercent applies when Outlier.MaxEjectedPercent is zero.
const DefaultMaxEjectedPercent = 50

func (o Outlier) withDefaults() Outlier {
	if o.Eject <= 0 {
		o.Eject = DefaultEject
	}
	if o.MaxEject <= 0 {
		o.MaxEject = 10 * o.Eject
		if o.MaxEject/10 != o.Eject { // overflowed
			o.MaxEject = o.Eject
		}
	}
	o.MaxEject = max(o.MaxEject, o.Eject)
	switch {
	case o.MaxEjectedPercent == 0:
		o.MaxEjectedPercent = DefaultMaxEjectedPercent
	case o.MaxEjectedPercent < 0:
		o.MaxEjectedPercent = 0
	case o.MaxEjectedPercent > 100:
		o.MaxEjectedPercent = 100
	}
	return o
}

// SetOutlier replaces the pool's passive ejection settings, with the
// defaults of Outlier applied. It is atomic: requests in progress see the
// old or the new settings whole. Ejections in force keep their end time.
func (g *Group) SetOutlier(o Outlier) {
	if o.ConsecutiveFailures <= 0 {
		g.outlier.Store(nil)
		return
	}
	o = o.withDefaults()
	g.outlier.Store(&o)
}

// Outlier returns the settings in force, defaults applied; the zero Outlier
// when passive ejection is off.
func (g *Group) Outlier() Outlier {
	if o := g.outlier.Load(); o != nil {
		return *o
	}
	return Outlier{}
}

// Counts5xx reports whether a 5xx response is a failure for
// Endpoint.ObserveResult: passive ejection is on and counts 5xx.
func (g *Group) Counts5xx() bool {
	o := g.outlier.Load()
	return o != nil && o.Count5xx
}

// ObserveResult records the outcome of one request sent to the endpoint:
// ok is false for a failed connection, or for a 5xx when the pool counts
// them (Group.Counts5xx); the caller decides. A success takes no lock and
// does not allocate. A failure that completes a streak of
// ConsecutiveFailures ejects the endpoint unless max_ejected_percent of its
// pool is ejected already; the streak then goes on, and the next failure
// tries again.
func (e *Endpoint) ObserveResult(ok bool) {
	if ok {
		if e.passiveFails.Load() != 0 {
			e.passiveFails.Store(0)
		}
		return
	}
	e.observeFailure(e.group.reg.now())
}

func (e *Endpoint) observeFailure(now time.Time) {
	n := now.UnixNano()
	prev := e.lastFail.Swap(n)
	fails := e.passiveFails.Add(1)
	o := e.group.outlier.Load()
	if o == nil {
		return
	}
	e.expireIfDue(now)
	if ret := e.returnAt.Load(); ret != 0 && n-max(prev, ret) >= e.lastEjectFor.Load() {
		// As long without a failure as the latest time out: the endpoint
		// recovered rather than flapped, so it starts over at Eject.
		e.ejectLevel.Store(0)
	}
	if fails < int64(o.ConsecutiveFailures) || e.Ejected(now) {
		return
	}
	e.group.eject(e, now, o, fails)
}

// eject takes e out of rotation unless the pool's cap forbids it. The pool
// lock makes the count of ejected endpoints and the new ejection one step.
func (g *Group) eject(e *Endpoint, now time.Time, o *Outlier, fails int64) {
	g.mu.Lock()
	if e.Ejected(now) {
		g.mu.Unlock()
		return
	}
	ejected := 0
	for _, x := range g.eps {
		if x.Ejected(now) {
			ejected++
		}
	}
	if allowed := len(g.eps) * o.MaxEjectedPercent / 100; ejected >= allowed {
		g.mu.Unlock()
		g.reg.log.Debug("not ejecting: max_ejected_percent reached",
			zap.String("pool", g.name), zap.String("endpoint", e.addr),
			zap.Int("ejected", ejected), zap.Int("allowed", allowed), zap.Int("endpoints", len(g.eps)))
		return
	}
	e.mu.Lock()
	d := ejectFor(o, e.ejectLevel.Load())
	if d < o.MaxEject {
		e.ejectLevel.Add(1)
	}
	until := now.Add(d).UnixNano()
	e.ejectedUntil.Store(until)
	e.returnAt.Store(until)
	e.lastEjectFor.Store(int64(d))
	e.ejections.Add(1)
	e.passiveFails.Store(0)
	e.enqueueLocked(now, fmt.Sprintf("ejected for %s after %d consecutive failures", d, fails))
	e.mu.Unlock()
	g.mu.Unlock()
	e.flush()
}

// ejectFor is Eject doubled level times, capped at MaxEject.
func ejectFor(o *Outlier, level int32) time.Duration {
	d := o.Eject
	for range level {
		if d > o.MaxEject/2 {
			return o.MaxEject
		}
		d *= 2
	}
	return min(d, o.MaxEject)
}

// expireIfDue emits the end of an ejection that is over but unnoticed.
func (e *Endpoint) expireIfDue(now time.Time) {
	if u := e.ejectedUntil.Load(); u != 0 && now.UnixNano() >= u {
		e.expire(u, now)
	}
}

// expire clears the ejection that ends at u; of all who notice the end, the
// one that clears it emits the event.
func (e *Endpoint) expire(u int64, now time.Time) {
	if !e.ejectedUntil.CompareAndSwap(u, 0) {
		return
	}
	e.mu.Lock()
	e.enqueueLocked(now, "ejection ended")
	e.mu.Unlock()
	e.flush()
}
