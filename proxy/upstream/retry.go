package upstream

import (
	"context"
	"io"
	"net/http"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"sekisho/router"
)

// try is the one retry loop of both ways of forwarding: it picks an
// endpoint, sends r there with send (which returns the answer's status)
// and records the attempt. A failed attempt, or an answer whose status the
// pool retries on, is sent again to an endpoint this request has not tried
// yet, up to retries times, when the failure is one of the pool's retryOn,
// the request can be replayed (see retryable) and the retry budget allows.
// drop discards the answer of target t that a retry replaces. It returns
// the target that answered, whose in-flight count the caller ends with the
// answer, or the error to answer with. Every attempt picks from the one
// member set in force when the request began. send and drop, which do not
// escape, cost the plain path no allocation.
func (p *Pool) try(r *http.Request, info *router.Info, guard *replayGuard,
	send func(t *member, ctx context.Context) (status int, err error), drop func(t *member)) (*member, error) {
	pk := p.picker()
	defer pk.release()
	p.active.Add(1)
	defer p.active.Add(-1)
	retrying := false
	defer func() {
		if retrying {
			p.retrying.Add(-1)
		}
	}()
	var lastErr error
	for attempt := 0; ; attempt++ {
		ctx := r.Context()
		if err := ctx.Err(); err != nil {
			return nil, err // the client has gone: no attempt, no dial
		}
		i := pk.pick(r, info)
		if i < 0 {
			if lastErr != nil {
				return nil, lastErr
			}
			return nil, ErrNoReadyEndpoint
		}
		t := &pk.set.all[i]
		start := p.begin(t, info)
		tctx, stop := tryContext(ctx, p.perTry)
		status, err := send(t, tctx)
		if stop != nil && stop() {
			if err == nil {
				// The head came as the time ran out: the answer is cut
				// under the cancelled context, so it is a timeout too.
				p.answered(t, start, status)
				drop(t)
				t.ep.ObserveResult(false)
				err = context.Cause(tctx)
				lastErr = err
				if !p.retryAgain(attempt, RetryTimeout, r, guard, &retrying) {
					return nil, err
				}
				pk.exclude(i)
				continue
			}
			err = context.Cause(tctx)
		}
		if err == nil {
			p.answered(t, start, status)
			reason := reasonOfStatus(status)
			if reason&p.retryOn == 0 || !p.retryAgain(attempt, reason, r, guard, &retrying) {
				return t, nil
			}
			drop(t)
			pk.exclude(i)
			if err := p.backoff.wait(ctx, attempt); err != nil {
				return nil, err
			}
			continue
		}
		if guard != nil {
			if ce := guard.err.Load(); ce != nil {
				// The client's body failed the attempt, whatever the
				// Transport made of it.
				err = ce
			}
		}
		lastErr = err
		if !p.failed(t, start, r, err) {
			return nil, err
		}
		if !p.retryAgain(attempt, reasonOf(err), r, guard, &retrying) {
			return nil, err
		}
		pk.exclude(i)
		if err := p.backoff.wait(ctx, attempt); err != nil {
			return nil, err
		}
	}
}

// retryAgain reports whether the request may be sent again after its
// attempt-th attempt failed for reason: the pool retries on reason,
// attempts are left, the request can be replayed and the budget has room.
// It counts the retry by reason, or the budget's refusal. The request
// takes its place in the budget at its first retry (retrying), and keeps
// it until it ends. A connect failure is retried without asking the budget
// (unless its percent is 0, which turns retries off): the request never
// reached an endpoint, so retrying it adds no load a brownout would feel,
// and refusing it would answer 502 for an endpoint that just died while
// passive ejection has not yet taken it out.
func (p *Pool) retryAgain(attempt int, reason RetryOn, r *http.Request, guard *replayGuard, retrying *bool) bool {
	if attempt >= p.retries || reason&p.retryOn == 0 || !retryable(r, reason, guard) {
		return false
	}
	if reason == RetryConnectFailure && p.budget.Percent > 0 {
		p.retryCounts.byReason[reasonIndex(reason)].Inc()
		return true
	}
	if !*retrying {
		n := p.retrying.Add(1)
		if n > max(int64(p.budget.MinConcurrency), p.active.Load()*int64(p.budget.Percent)/100) {
			p.retrying.Add(-1)
			p.retryCounts.exhausted.Inc()
			return false
		}
		*retrying = true
	}
	p.retryCounts.byReason[reasonIndex(reason)].Inc()
	p.log.Debug("retrying on another endpoint", zap.String("pool", p.name), zap.String("reason", retryNames[reasonIndex(reason)]))
	return true
}

// begin starts an attempt on target t: the Info names it, it joins the
// request's tried endpoints and counts one more request in flight.
func (p *Pool) begin(t *member, info *router.Info) time.Time {
	if info != nil {
		info.Pool, info.Upstream = p.name, t.addr
		if info.Tried != nil {
			info.Tried.Add(t.addr)
		}
	}
	t.ep.Begin()
	return time.Now()
}

// answered records an attempt on target t that got an answer with status;
// the endpoint stays in flight until the answer's body ends.
func (p *Pool) answered(t *member, start time.Time, status int) {
	p.duration.Observe(time.Since(start).Seconds())
	t.attempts.Inc(status)
	t.ep.ObserveResult(status < 500 || !p.group.Counts5xx())
}

// failed records an attempt on target t that got no answer, and reports
// whether it was the endpoint's failure (not the client's), which may be
// retried.
func (p *Pool) failed(t *member, start time.Time, r *http.Request, err error) bool {
	p.duration.Observe(time.Since(start).Seconds())
	t.ep.End()
	t.attempts.Inc(0)
	if r.Context().Err() != nil || clientFault(err) {
		return false // the client left, its deadline passed or its body failed: not the endpoint's fault
	}
	t.ep.ObserveResult(false)
	p.log.Debug("attempt failed", zap.String("pool", p.name), zap.String("endpoint", t.addr), zap.Error(err))
	return true
}

// retryable reports whether r may be sent again after a failure for
// reason: never once a byte of its body was read (a body is not buffered
// for replay); for any method when the endpoint cannot have seen it (a
// failed connect, a refused stream); otherwise only for an idempotent
// method.
func retryable(r *http.Request, reason RetryOn, guard *replayGuard) bool {
	if guard != nil && guard.used() {
		return false // part of the body is gone; it cannot be sent twice
	}
	if reason&(RetryConnectFailure|RetryRefusedStream) != 0 {
		return true
	}
	return idempotent(r)
}

// replayGuard stands between the client's body and the Transport: it
// remembers whether any byte was read (then the request cannot be retried)
// and ignores the Transport's Close after a failed attempt so that a retry
// can still send the untouched body. The server closes the real body.
//
// It also records the body's own failure (malformed framing, a client that
// stops sending): that is the client's doing, never the endpoint's, and
// the Transport reports it in terms of the upstream connection.
type replayGuard struct {
	body io.ReadCloser
	read atomic.Bool                     // the Transport's writer reads; RoundTrip asks
	err  atomic.Pointer[clientBodyError] // the first read error but EOF
}

func (g *replayGuard) Read(b []byte) (int, error) {
	n, err := g.body.Read(b)
	if n > 0 {
		g.read.Store(true)
	}
	if err != nil && err != io.EOF {
		ce := &clientBodyError{err: err}
		g.err.CompareAndSwap(nil, ce)
		return n, ce
	}
	return n, err
}

func (g *replayGuard) Close() error { return nil }

func (g *replayGuard) used() bool { return g.read.Load() }
