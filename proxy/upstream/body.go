package upstream

import (
	"errors"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"sekisho/health"
	"sekisho/http1"
)

// endBody ends an endpoint's in-flight count when the response body is
// closed, so that least_request and shard load see streaming responses.
// With idle set, a read that waits longer than idle for the upstream ends
// the body: a timer closes it under the read, which then fails with a
// *http1.BodyIdleError, counted by idleTimeouts.
type endBody struct {
	io.ReadCloser
	ep   *health.Endpoint
	once sync.Once

	idle         time.Duration
	idleTimeouts prometheus.Counter
	timer        *time.Timer // made on the first read
	expired      atomic.Bool
}

func (b *endBody) Read(p []byte) (int, error) {
	if b.idle <= 0 {
		return b.ReadCloser.Read(p)
	}
	if b.timer == nil {
		b.timer = time.AfterFunc(b.idle, b.expire)
	} else {
		b.timer.Reset(b.idle)
	}
	n, err := b.ReadCloser.Read(p)
	b.timer.Stop()
	if err != nil && err != io.EOF && b.expired.Load() {
		b.idleTimeouts.Inc()
		err = &http1.BodyIdleError{Idle: b.idle}
	}
	return n, err
}

// expire runs on the timer's goroutine: the read under way waited too long.
func (b *endBody) expire() {
	b.expired.Store(true)
	b.ReadCloser.Close()
}

func (b *endBody) Close() error {
	if b.timer != nil {
		b.timer.Stop()
	}
	err := b.ReadCloser.Close()
	b.once.Do(b.ep.End)
	return err
}

// endRWC is endBody for a 101 Switching Protocols response, whose body is
// the upgraded connection and must stay writable; a tunnel may be idle, so
// no idle timeout applies.
type endRWC struct {
	*endBody
	io.Writer
}

// wrapBody makes body, from target t, end the endpoint's in-flight count
// when it is closed and end itself when the upstream stalls for the pool's
// body_idle.
func (p *Pool) wrapBody(body io.ReadCloser, t *member) io.ReadCloser {
	ep := t.ep
	if nb, ok := body.(http1.NotifyingBody); ok {
		// The direct transport's body bounds its reads itself and says
		// when it ends: no wrapper.
		nb.NotifyEnd(&t.bodyEnd)
		return nb
	}
	if rwc, ok := body.(io.ReadWriteCloser); ok {
		return endRWC{endBody: &endBody{ReadCloser: rwc, ep: ep}, Writer: rwc}
	}
	if body == http.NoBody {
		return &endBody{ReadCloser: body, ep: ep}
	}
	return &endBody{ReadCloser: body, ep: ep, idle: p.bodyIdle, idleTimeouts: p.bodyTimeouts}
}

// bodyEnd is told when a body of the direct transport from one target
// ends: it ends the endpoint's in-flight count and counts a stalled body.
type bodyEnd struct {
	ep           *health.Endpoint
	idleTimeouts prometheus.Counter
}

var _ http1.BodyEnder = (*bodyEnd)(nil)

func (e *bodyEnd) EndBody(err error) {
	var idle *http1.BodyIdleError
	if err != nil && errors.As(err, &idle) {
		e.idleTimeouts.Inc()
	}
	e.ep.End()
}

// discard ends the body of an answer a retry replaces. It is closed
// unread, never waited for: a body the transport has not read to its end
// takes its connection with it.
func discard(body io.ReadCloser) { body.Close() }
