package discovery

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// ErrStarted is returned by a second Source.Start.
var ErrStarted = errors.New("discovery: source already started")

// State is what a Source knows of its target, for /pools and /readyz.
type State struct {
	// Resolved reports whether the target ever resolved: a pool whose
	// Source never did has no endpoints and is not ready.
	Resolved bool
	// LastAttempt is when the last resolution ended, LastSuccess when the
	// last successful one did (zero if none).
	LastAttempt, LastSuccess time.Time
	// LastError is the error of the last resolution, nil if it succeeded.
	// A failure keeps the last good Set serving.
	LastError error
	// Failures counts resolutions that failed in a row.
	Failures int
	// Next is when the next resolution is due.
	Next time.Time
}

// Source keeps the Set of one Target current: it resolves at Start and again
// at the records' TTL clamped to [MinTTL, MaxTTL] (less up to 10% jitter, so
// that pools resolved together spread out); after a failure it retries from
// MinTTL, doubling up to MaxTTL. A failed or empty answer keeps the last good
// Set. Current and State are safe for concurrent use and never wait on DNS.
type Source struct {
	r        *Resolver
	target   Target
	onChange func(Set)

	current atomic.Pointer[Set]
	mu      sync.Mutex
	state   State
	started bool
	cancel  context.CancelFunc
	done    chan struct{}
}

// NewSource returns a Source of t resolved by r (nil: a zero Resolver).
// onChange, if set, is called with every new Set that differs from the last
// one (the first successful resolution included), from the Source's own
// goroutine, one call at a time; it should not block, as the next
// resolution waits for it and Close waits for it.
func NewSource(r *Resolver, t Target, onChange func(Set)) *Source {
	if r == nil {
		r = &Resolver{}
	}
	return &Source{r: r, target: t, onChange: onChange}
}

// Target returns the target the Source resolves.
func (s *Source) Target() Target { return s.target }

// Current returns the last good Set; its Endpoints are empty until the first
// successful resolution.
func (s *Source) Current() Set {
	if p := s.current.Load(); p != nil {
		return *p
	}
	return Set{}
}

// State returns a snapshot of the Source's state.
func (s *Source) State() State {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state
}

// Start starts the Source's goroutine, which resolves at once and runs until
// ctx ends or Close is called. It does not wait for the first resolution.
func (s *Source) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started {
		return ErrStarted
	}
	s.started = true
	ctx, s.cancel = context.WithCancel(ctx)
	s.done = make(chan struct{})
	go s.run(ctx)
	return nil
}

// Close stops the Source and waits for its goroutine (and any onChange call
// in progress) to end. It may be called more than once, and without Start.
func (s *Source) Close() {
	s.mu.Lock()
	cancel, done := s.cancel, s.done
	s.mu.Unlock()
	if cancel == nil {
		return
	}
	cancel()
	<-done
}

func (s *Source) run(ctx context.Context) {
	defer close(s.done)
	timer := time.NewTimer(0)
	defer timer.Stop()
	backoff := time.Duration(0)
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		set, err := s.r.Resolve(ctx, s.target)
		if ctx.Err() != nil {
			return // cancelled mid-query: neither a result nor an error
		}
		var wait time.Duration
		if err != nil {
			backoff = min(max(backoff*2, s.r.minTTL()), s.r.maxTTL())
			wait = backoff
		} else {
			backoff = 0
			wait = jitter(s.r.clamp(set.TTL))
		}
		changed := s.record(set, err, wait)
		if changed && s.onChange != nil {
			s.onChange(set)
		}
		// After the change is applied, so that the hook sees the State
		// and Current of this resolution.
		if s.r.OnResult != nil {
			s.r.OnResult(s.target.String(), err == nil)
		}
		timer.Reset(wait)
	}
}

// record updates the state and the current Set; it reports whether the Set
// changed.
func (s *Source) record(set Set, err error, wait time.Duration) bool {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.state.LastAttempt = now
	s.state.Next = now.Add(wait)
	s.state.LastError = err
	if err != nil {
		s.state.Failures++
		return false
	}
	s.state.Failures = 0
	s.state.LastSuccess = now
	first := !s.state.Resolved
	s.state.Resolved = true
	if old := s.current.Load(); !first && old != nil && old.Equal(set) {
		// Keep the counts of the latest answer, not the Set identity.
		if old.PortZero != set.PortZero || old.OverLimit != set.OverLimit || old.TTL != set.TTL {
			s.current.Store(&set)
		}
		return false
	}
	s.current.Store(&set)
	return true
}

// jitter takes up to 10% off d.
func jitter(d time.Duration) time.Duration {
	return d - rand.N(d/10+1)
}
