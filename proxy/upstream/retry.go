package upstream

import (
	"errors"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"

	"sekisho/router"
)

// try is the one retry loop of both ways of forwarding: it picks an
// endpoint, sends r there with send (which returns the answer's status)
// and records the attempt. An attempt that failed before the endpoint saw
// the request (a refused dial), or that was reset before any response byte
// on an idempotent request whose body was not read, is retried on another
// endpoint, up to retries times. It returns the target that answered, whose
// in-flight count the caller ends with the answer, or the error to answer
// with. send, which does not escape, costs the plain path no allocation.
func (p *Pool) try(r *http.Request, info *router.Info, guard *replayGuard, send func(i int) (status int, err error)) (int, error) {
	pk := p.picker()
	defer pk.release()
	var lastErr error
	for attempt := 0; attempt <= p.retries; attempt++ {
		if err := r.Context().Err(); err != nil {
			return -1, err // the client has gone: no attempt, no dial
		}
		i := pk.pick(r, info)
		if i < 0 {
			if lastErr != nil {
				return -1, lastErr
			}
			return -1, ErrNoReadyEndpoint
		}
		start := p.begin(i, info)
		status, err := send(i)
		if err == nil {
			p.answered(i, start, status)
			return i, nil
		}
		if guard != nil {
			if ce := guard.err.Load(); ce != nil {
				// The client's body failed the attempt, whatever the
				// Transport made of it.
				err = ce
			}
		}
		lastErr = err
		if !p.failed(i, start, r, err, guard) {
			return -1, err
		}
		pk.exclude(i)
	}
	return -1, lastErr
}

// begin starts an attempt on target i: the Info names it, it joins the
// request's tried endpoints and counts one more request in flight.
func (p *Pool) begin(i int, info *router.Info) time.Time {
	t := &p.targets[i]
	if info != nil {
		info.Pool, info.Upstream = p.name, t.Addr
		if info.Tried != nil {
			info.Tried.Add(t.Addr)
		}
	}
	t.EP.Begin()
	return time.Now()
}

// answered records an attempt on target i that got an answer with status;
// the endpoint stays in flight until the answer's body ends.
func (p *Pool) answered(i int, start time.Time, status int) {
	p.duration.Observe(time.Since(start).Seconds())
	p.attempts[i].Inc(status)
	p.targets[i].EP.ObserveResult(status < 500 || !p.group.Counts5xx())
}

// failed records an attempt on target i that got no answer, and reports
// whether the request may go to another endpoint.
func (p *Pool) failed(i int, start time.Time, r *http.Request, err error, guard *replayGuard) bool {
	p.duration.Observe(time.Since(start).Seconds())
	t := &p.targets[i]
	t.EP.End()
	p.attempts[i].Inc(0)
	if r.Context().Err() != nil || clientFault(err) {
		return false // the client left, its deadline passed or its body failed: not the endpoint's fault
	}
	t.EP.ObserveResult(false)
	if !retryable(r, err, guard) {
		return false
	}
	p.log.Debug("retrying on another endpoint", zap.String("pool", p.name), zap.String("endpoint", t.Addr), zap.Error(err))
	return true
}

// retryable reports whether a failed attempt may be sent again elsewhere.
func retryable(r *http.Request, err error, guard *replayGuard) bool {
	if guard != nil && guard.used() {
		return false // part of the body is gone; it cannot be sent twice
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return true
	}
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodPut, http.MethodDelete:
	default:
		return false
	}
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, syscall.EPIPE)
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
