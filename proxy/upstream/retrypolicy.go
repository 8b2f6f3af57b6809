package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// RetryOn is the set of failures a pool retries, in Envoy's vocabulary.
type RetryOn uint16

// The failures RetryOn may hold. ConnectFailure and RefusedStream never
// reached the endpoint's application and are retried for any method; the
// rest only for a replayable request (an idempotent method whose body,
// if any, was not read).
const (
	// RetryConnectFailure: the connection could not be made (refused,
	// unreachable, connect timeout).
	RetryConnectFailure RetryOn = 1 << iota
	// RetryReset: the connection was reset or closed before any answer
	// byte.
	RetryReset
	// RetryRefusedStream: an HTTP/2 endpoint refused the stream. net/http's
	// HTTP/2 client resends those itself on a fresh stream and reports them
	// by an unexported type, so no error the pool sees is classified as
	// one: the name is accepted for Envoy compatibility.
	RetryRefusedStream
	// Retry502, Retry503, Retry504: the endpoint answered that status; the
	// answer is discarded.
	Retry502
	Retry503
	Retry504
	// RetryTimeout: no answer head within timeouts.response_header or the
	// per-try timeout.
	RetryTimeout

	nRetryReasons = iota
)

// DefaultRetryOn is what `retries: N` retries: what cannot have reached the
// endpoint (today's behaviour since the first release).
const DefaultRetryOn = RetryConnectFailure | RetryReset

var retryNames = [nRetryReasons]string{"connect-failure", "reset", "refused-stream", "502", "503", "504", "timeout"}

// ParseRetryOn reads a list of retry conditions ("connect-failure",
// "reset", "refused-stream", "502", "503", "504", "timeout").
func ParseRetryOn(names []string) (RetryOn, error) {
	var on RetryOn
	for _, n := range names {
		found := false
		for i, name := range retryNames {
			if n == name {
				on |= 1 << i
				found = true
			}
		}
		if !found {
			return 0, fmt.Errorf("unknown retry condition %q: want one of %s", n, strings.Join(retryNames[:], ", "))
		}
	}
	return on, nil
}

// RetryBudget caps the retries in progress in a pool to Percent of its
// requests in progress, but always allows MinConcurrency of them (Envoy's
// retry budget, Finagle's RetryBudget). A Percent of 0 disables retries.
type RetryBudget struct {
	Percent        int
	MinConcurrency int
}

// DefaultRetryBudget applies when Options.RetryBudget is nil.
var DefaultRetryBudget = RetryBudget{Percent: 20, MinConcurrency: 3}

// Backoff spaces the retries of one request: before the k-th retry it
// waits a random time between 0 and min(Max, Base·2^(k-1)) ("full jitter").
// A zero Base means no wait; a zero Max is 10 × Base.
type Backoff struct {
	Base, Max time.Duration
}

func (b Backoff) wait(ctx context.Context, k int) error {
	if b.Base <= 0 {
		return nil
	}
	ceil := b.Max
	if ceil <= 0 {
		ceil = 10 * b.Base
	}
	d := b.Base << min(k, 30)
	if d <= 0 || d > ceil {
		d = ceil
	}
	t := time.NewTimer(rand.N(d) + 1)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// retryCounters are a pool's sekisho_upstream_retries_total children, by
// reason, and its budget's refusals.
type retryCounters struct {
	byReason  [nRetryReasons]prometheus.Counter
	exhausted prometheus.Counter
}

// reasonOf names the failure err is, for an attempt that got no answer;
// 0 when it is none the pool retries on.
func reasonOf(err error) RetryOn {
	var op *net.OpError
	switch {
	case errors.As(err, &op) && op.Op == "dial":
		return RetryConnectFailure
	case errors.Is(err, errPerTryTimeout) || isTimeout(err):
		return RetryTimeout
	case errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, syscall.EPIPE):
		return RetryReset
	}
	return 0
}

// reasonOfStatus is the retry condition an answer's status meets.
func reasonOfStatus(status int) RetryOn {
	switch status {
	case http.StatusBadGateway:
		return Retry502
	case http.StatusServiceUnavailable:
		return Retry503
	case http.StatusGatewayTimeout:
		return Retry504
	}
	return 0
}

func reasonIndex(r RetryOn) int { return bits.TrailingZeros16(uint16(r)) }

// idempotent reports whether r's method may be sent twice (RFC 9110 9.2.2).
func idempotent(r *http.Request) bool {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodPut, http.MethodDelete, http.MethodTrace:
		return true
	}
	return false
}

// perTryTimeoutError ends an attempt that outlasted the pool's per-try
// timeout: a timeout, answered 504 when it was the last attempt.
type perTryTimeoutError struct{ d time.Duration }

func (e *perTryTimeoutError) Error() string {
	return fmt.Sprintf("no answer within the per-try timeout (%s)", e.d)
}
func (*perTryTimeoutError) Timeout() bool   { return true }
func (*perTryTimeoutError) Temporary() bool { return true }
func (*perTryTimeoutError) Is(target error) bool {
	return target == errPerTryTimeout
}

var errPerTryTimeout = errors.New("per-try timeout")

// tryContext returns the context of one attempt: parent itself without a
// per-try timeout; otherwise a child that a timer cancels once d passes,
// and stop, which disarms the timer once the answer's head is in (the
// body then streams under the request's own context) and reports whether
// the time ran out first.
func tryContext(parent context.Context, d time.Duration) (context.Context, func() bool) {
	if d <= 0 {
		return parent, nil
	}
	ctx, cancel := context.WithCancelCause(parent)
	t := time.AfterFunc(d, func() { cancel(&perTryTimeoutError{d}) })
	return ctx, func() bool { return !t.Stop() && parent.Err() == nil }
}
