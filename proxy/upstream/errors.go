package upstream

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"

	"go.uber.org/zap"

	"sekisho/http1"
	"sekisho/router"
)

// errorHandler answers a request that could not be forwarded: 503 when no
// endpoint is ready, 504 when the endpoint was too slow, 502 for every other
// upstream failure, and nothing at all when the client has gone.
func (p *Pool) errorHandler(w http.ResponseWriter, r *http.Request, err error) {
	status, msg := statusOf(r, err)
	info := router.InfoFrom(r)
	if info != nil && info.Pool == "" {
		info.Pool = p.name
	}
	if status == StatusClientClosed {
		if cg, ok := w.(ClientGoneRecorder); ok {
			cg.RecordClientGone()
		}
		p.log.Debug("client went away", zap.String("pool", p.name), zap.Error(err))
		return
	}
	fields := []zap.Field{zap.String("pool", p.name), zap.Int("status", status), zap.Error(err)}
	if info != nil {
		fields = append(fields, zap.String("upstream", info.Upstream), zap.String("request_id", info.RequestID))
	}
	p.log.Warn("upstream request failed", fields...)
	PlainError(w, status, msg)
}

// PlainError answers status with msg as plain text that no client
// sniffs: the one form of every error answer sekisho writes itself.
func PlainError(w http.ResponseWriter, status int, msg string) {
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	io.WriteString(w, msg)
}

// ClientGoneRecorder is the listener's ResponseWriter as a pool sees it:
// when the ResponseWriter a pool is given implements it, the pool calls
// RecordClientGone for an answer it never sent because the client left
// (StatusClientClosed).
type ClientGoneRecorder interface{ RecordClientGone() }

// clientBodyError is a failure to read the client's request body: the
// request ends there, answered 400 (408 for a read timeout), and it never
// counts against the endpoint.
type clientBodyError struct{ err error }

func (e *clientBodyError) Error() string { return "reading the request body: " + e.err.Error() }

func (e *clientBodyError) Unwrap() error { return e.err }

// clientFault reports whether err is the client's failure, not the
// upstream's.
func clientFault(err error) bool {
	var ce *clientBodyError
	return errors.As(err, &ce)
}

// StatusClientClosed is recorded for a request whose client left before an
// answer (nginx's 499); it is never sent.
const StatusClientClosed = 499

// statusOf is the one place an error becomes an HTTP status, by its type
// alone: 503 when no endpoint is ready (ErrNoReadyEndpoint); the client's
// own failures, 499 when it left (context.Canceled) and 400 or 408 when its
// body could not be read (clientBodyError); 504 when the upstream was too
// slow (a deadline, or a net.Error that timed out); 502 for every other
// upstream failure. It returns the answer's body with the status.
func statusOf(r *http.Request, err error) (int, string) {
	switch {
	case errors.Is(err, ErrNoReadyEndpoint):
		return http.StatusServiceUnavailable, "no ready endpoint\n"
	case r.Context().Err() == context.Canceled || errors.Is(err, context.Canceled):
		return StatusClientClosed, ""
	case clientFault(err):
		var fe *http1.FramingError
		switch {
		case errors.As(err, &fe):
			return http.StatusBadRequest, "malformed request body\n"
		case isTimeout(err):
			return http.StatusRequestTimeout, "request body timed out\n"
		}
		return http.StatusBadRequest, "request body could not be read\n"
	case errors.Is(err, context.DeadlineExceeded) || isTimeout(err):
		return http.StatusGatewayTimeout, "upstream timed out\n"
	default:
		return http.StatusBadGateway, "upstream unavailable\n"
	}
}

// isTimeout reports whether err is a timeout by its type: net/http's
// "timeout awaiting response headers" (HTTP/1 and HTTP/2 alike), a dial or
// read deadline and http1's own timeouts are net.Errors whose Timeout is
// true.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
