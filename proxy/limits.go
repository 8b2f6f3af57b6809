package proxy

import (
	"context"
	"errors"
	"io"
	"net/http"
	"sync/atomic"
	"time"

	"sekisho/http1"
	"sekisho/proxy/config"
	"sekisho/proxy/upstream"
)

// errBodyTooLarge ends the read of a request body that grew past the
// route's max_body_bytes.
var errBodyTooLarge = errors.New("request body too large")

// routeLimits are a route's protective limits on one request: the size of
// its body and the time it may take, every attempt and retry included.
type routeLimits struct {
	maxBody int64         // 0: no limit
	timeout time.Duration // 0: none
}

// newRouteLimits returns rc's limits, the listener's body limit standing in
// for a route that sets none, or nil when there are none: a route without
// limits pays nothing for them.
func newRouteLimits(lc *config.Listener, rc *config.Route) *routeLimits {
	l := routeLimits{maxBody: lc.MaxBodyBytes, timeout: rc.Timeout.D()}
	if rc.MaxBodyBytes != nil {
		l.maxBody = *rc.MaxBodyBytes
	}
	if l.maxBody == 0 && l.timeout == 0 {
		return nil
	}
	return &l
}

// serve runs h on r within the limits. A body announced larger than the
// limit is refused 413 before anything runs; a body that grows past it
// stops at the limit and cancels the request, whose answer is then a 413
// when no answer head has gone out yet. The request's context carries the
// timeout: when it passes before the answer head the answer is a 504, after
// it the forwarding aborts the answer. On HTTP/1 the connection closes after
// a 413, without reading what is left of the body.
func (l *routeLimits) serve(w *statusWriter, r *http.Request, h http.Handler) {
	body := r.Body
	hasBody := body != nil && body != http.NoBody && r.ContentLength != 0
	if l.maxBody > 0 && r.ContentLength > l.maxBody {
		stopBody(body)
		tooLarge(w, r)
		return
	}
	limitBody := l.maxBody > 0 && hasBody
	if !limitBody && l.timeout == 0 {
		h.ServeHTTP(w, r)
		return
	}
	var ctx context.Context
	var cancel context.CancelFunc
	if l.timeout > 0 {
		ctx, cancel = context.WithTimeout(r.Context(), l.timeout)
	} else {
		ctx, cancel = context.WithCancel(r.Context())
	}
	defer cancel()
	r = r.WithContext(ctx)
	var lb *limitedBody
	if limitBody {
		lb = &limitedBody{body: body, left: l.maxBody, cancel: cancel}
		r.Body = lb
	}
	h.ServeHTTP(w, r)
	switch {
	case lb != nil && lb.hit.Load():
		if !w.wroteHeader {
			tooLarge(w, r)
		}
	case ctx.Err() == context.DeadlineExceeded && !w.wroteHeader:
		// A stage that gave up quietly when the deadline passed (the pool
		// answers 504 itself).
		upstream.PlainError(w, http.StatusGatewayTimeout, "request timed out\n")
	}
}

// tooLarge answers 413. On HTTP/1 it closes the connection after the
// answer: the rest of the body is not worth reading. HTTP/2 ends the
// stream alone (a Connection header there would close the connection).
func tooLarge(w *statusWriter, r *http.Request) {
	if r.ProtoMajor == 1 {
		w.Header().Set("Connection", "close")
	}
	upstream.PlainError(w, http.StatusRequestEntityTooLarge, "request body too large\n")
}

// stopBody tells the HTTP/1 loop not to read what is left of body after the
// handler (it would otherwise drain a small remainder to keep the
// connection), so that the connection closes after the answer.
func stopBody(body io.ReadCloser) {
	if sb, ok := body.(http1.StoppableBody); ok {
		sb.Stop(errBodyTooLarge)
	}
}

// limitedBody passes on at most left bytes of a request body. A body that
// has more ends with errBodyTooLarge and cancels the request, so that its
// forwarding stops and nothing counts against the endpoint. It is read by
// one reader at a time; hit may be read by any goroutine.
type limitedBody struct {
	body   io.ReadCloser
	left   int64
	hit    atomic.Bool
	cancel context.CancelFunc
}

func (b *limitedBody) Read(p []byte) (int, error) {
	if b.hit.Load() {
		return 0, errBodyTooLarge
	}
	// One byte more than is left tells a body that ends at the limit from
	// one that goes on.
	if int64(len(p)) > b.left+1 {
		p = p[:b.left+1]
	}
	n, err := b.body.Read(p)
	if int64(n) <= b.left {
		b.left -= int64(n)
		return n, err
	}
	n, b.left = int(b.left), 0
	stopBody(b.body)
	b.hit.Store(true)
	b.cancel()
	return n, errBodyTooLarge
}

func (b *limitedBody) Close() error { return b.body.Close() }
