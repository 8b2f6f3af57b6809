package health

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// Endpoint is the health state of one address in one pool: probe readiness
// and its rise/fall streaks, passive ejection, and the in-flight count.
//
// The request path reads and counts with atomics only: Ready, Ejected,
// Available, ReadySince, ReadySinceUnixNano, InFlight, Begin, End and
// ObserveResult(true) take no lock and do not allocate. State changes (a probe result, an ejection) take
// the endpoint's lock. An Endpoint is safe for concurrent use and must not be
// copied; get it from Registry.Endpoint.
type Endpoint struct {
	group *Group
	addr  string

	ready        atomic.Bool  // written under mu
	readySince   atomic.Int64 // unix nanoseconds; 0: never ready
	ejectedUntil atomic.Int64 // unix nanoseconds; 0: not ejected, or the end was noticed
	inFlight     atomic.Int64
	removed      atomic.Bool

	// Passive ejection bookkeeping (outlier.go).
	passiveFails atomic.Int64 // current streak of failed requests
	lastFail     atomic.Int64 // unix nanoseconds of the latest failure
	ejections    atomic.Int64
	ejectLevel   atomic.Int32 // the next ejection lasts Eject << ejectLevel
	lastEjectFor atomic.Int64 // nanoseconds the latest ejection lasted
	returnAt     atomic.Int64 // unix nanoseconds the latest ejection ended

	mu        sync.Mutex
	probeOK   int // consecutive probe passes
	probeFail int // consecutive probe failures
	lastProbe *ProbeResult
	events    []Event // waiting for delivery, oldest first
	draining  bool    // a goroutine is delivering events
}

func newEndpoint(g *Group, addr string, ready bool, now time.Time) *Endpoint {
	e := &Endpoint{group: g, addr: addr}
	if ready {
		e.ready.Store(true)
		e.readySince.Store(now.UnixNano())
	}
	e.mu.Lock()
	e.enqueueLocked(now, "added")
	e.mu.Unlock()
	return e
}

// Addr returns the endpoint's address as the configuration names it.
func (e *Endpoint) Addr() string { return e.addr }

// Pool returns the name of the endpoint's pool.
func (e *Endpoint) Pool() string { return e.group.name }

// Group returns the endpoint's pool.
func (e *Endpoint) Group() *Group { return e.group }

// Ready reports the probe readiness: true for an endpoint of a pool without
// probes, and for a probed one since rise consecutive passes.
func (e *Endpoint) Ready() bool { return e.ready.Load() }

// ReadySince returns when the endpoint last became ready, the start of its
// slow start ramp; the zero Time if it never was. It keeps its value while
// the endpoint is unready.
func (e *Endpoint) ReadySince() time.Time {
	n := e.readySince.Load()
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

// ReadySinceUnixNano is ReadySince in Unix nanoseconds, 0 if never ready:
// one atomic load, for the balance policies that weigh every endpoint on
// every pick.
func (e *Endpoint) ReadySinceUnixNano() int64 { return e.readySince.Load() }

// Ejected reports whether a passive ejection is in force at now. An ejection
// expires by this comparison alone: no timer runs.
func (e *Endpoint) Ejected(now time.Time) bool {
	u := e.ejectedUntil.Load()
	return u != 0 && now.UnixNano() < u
}

// Available reports whether the endpoint may take a request at now: ready
// and not ejected. The first caller to see an ejection expired emits its
// "ejection ended" Event; that call, once per ejection, takes the endpoint's
// lock.
func (e *Endpoint) Available(now time.Time) bool {
	if !e.ready.Load() {
		return false
	}
	u := e.ejectedUntil.Load()
	if u == 0 {
		return true
	}
	if now.UnixNano() < u {
		return false
	}
	e.expire(u, now)
	return true
}

// InFlight returns the number of requests begun and not yet ended.
func (e *Endpoint) InFlight() int64 { return e.inFlight.Load() }

// Begin counts a request sent to the endpoint; End must follow it once the
// response is done (its body closed), so least_request sees streaming
// responses as load.
func (e *Endpoint) Begin() { e.inFlight.Add(1) }

// End counts a request begun with Begin as done.
func (e *Endpoint) End() { e.inFlight.Add(-1) }

// setReady changes the probe readiness, reporting whether it changed.
func (e *Endpoint) setReady(ready bool, now time.Time, reason string) bool {
	e.mu.Lock()
	changed := e.setReadyLocked(ready, now, reason)
	e.mu.Unlock()
	if changed {
		e.flush()
	}
	return changed
}

func (e *Endpoint) setReadyLocked(ready bool, now time.Time, reason string) bool {
	if e.ready.Load() == ready {
		return false
	}
	if ready {
		// Stored before the flag, so whoever sees the endpoint ready sees
		// the start of its ramp too.
		e.readySince.Store(now.UnixNano())
	}
	e.ready.Store(ready)
	e.enqueueLocked(now, reason)
	return true
}

// recordProbe applies one probe result to the rise/fall streaks and reports
// whether readiness changed.
func (e *Endpoint) recordProbe(res ProbeResult, rise, fall int) bool {
	e.mu.Lock()
	var changed bool
	first := e.lastProbe == nil && e.readySince.Load() == 0
	e.lastProbe = &res
	if res.OK {
		e.probeOK++
		e.probeFail = 0
		// A brand-new endpoint that passes its very first probe is ready at
		// once, as Envoy treats new hosts: rise guards against flapping, and
		// an endpoint with no history has not flapped. It keeps a proxy that
		// just started from answering 503 for a whole probe interval.
		switch {
		case first:
			changed = e.setReadyLocked(true, res.At, "probe: new endpoint ready on its first pass")
		case e.probeOK >= rise:
			changed = e.setReadyLocked(true, res.At, fmt.Sprintf("probe: ready after %d consecutive passes", e.probeOK))
		}
	} else {
		e.probeFail++
		e.probeOK = 0
		if e.probeFail >= fall {
			changed = e.setReadyLocked(false, res.At, fmt.Sprintf("probe: unready after %d consecutive failures: %s", e.probeFail, res.Error))
		}
	}
	e.mu.Unlock()
	if changed {
		e.flush()
	}
	return changed
}

// remove marks the endpoint dropped by Retain and emits its last event.
func (e *Endpoint) remove(reason string) {
	e.mu.Lock()
	ev := e.eventLocked(e.group.reg.now(), reason)
	ev.Removed = true
	e.pushLocked(ev)
	e.removed.Store(true)
	e.mu.Unlock()
	e.flush()
}

func (e *Endpoint) status(now time.Time) EndpointStatus {
	s := EndpointStatus{
		Address:         e.addr,
		Ready:           e.Ready(),
		ReadySince:      e.ReadySince(),
		Ejected:         e.Ejected(now),
		Ejections:       e.ejections.Load(),
		InFlight:        e.InFlight(),
		PassiveFailures: e.passiveFails.Load(),
	}
	s.Available = s.Ready && !s.Ejected
	if s.Ejected {
		s.EjectedUntil = time.Unix(0, e.ejectedUntil.Load())
	}
	e.mu.Lock()
	s.ConsecutiveSuccesses, s.ConsecutiveFailures = e.probeOK, e.probeFail
	if e.lastProbe != nil {
		p := *e.lastProbe
		s.LastProbe = &p
	}
	e.mu.Unlock()
	return s
}

// enqueueLocked records the state after a change for delivery by flush.
// Building the Event under the lock that serialises changes gives each event
// the whole state as of its change, in order.
func (e *Endpoint) enqueueLocked(now time.Time, reason string) {
	e.pushLocked(e.eventLocked(now, reason))
}

func (e *Endpoint) eventLocked(now time.Time, reason string) Event {
	return Event{
		Pool:     e.group.name,
		Endpoint: e.addr,
		Ready:    e.ready.Load(),
		Ejected:  e.Ejected(now),
		Reason:   reason,
	}
}

// pushLocked queues ev unless nobody listens or the endpoint is gone: a
// Runtime still draining may change a removed endpoint, and its events would
// resurrect what the consumer already deleted.
func (e *Endpoint) pushLocked(ev Event) {
	if e.removed.Load() || e.group.reg.notify.Load() == nil {
		return
	}
	e.events = append(e.events, ev)
}

// flush delivers queued events outside the lock. One goroutine at a time
// delivers an endpoint's events; one that finds delivery under way leaves
// its events to that goroutine, which keeps them in order and lets the
// notify function itself cause a change without deadlock.
func (e *Endpoint) flush() {
	e.mu.Lock()
	if e.draining {
		e.mu.Unlock()
		return
	}
	e.draining = true
	for len(e.events) > 0 {
		ev := e.events[0]
		e.events = e.events[1:]
		e.mu.Unlock()
		e.deliver(ev)
		e.mu.Lock()
	}
	e.events = nil
	e.draining = false
	e.mu.Unlock()
}

func (e *Endpoint) deliver(ev Event) {
	fn := e.group.reg.notify.Load()
	if fn == nil {
		return
	}
	defer func() {
		if p := recover(); p != nil {
			e.group.reg.log.Error("health event callback panicked",
				zap.String("pool", ev.Pool), zap.String("endpoint", ev.Endpoint), zap.Any("panic", p))
		}
	}()
	(*fn)(ev)
}
