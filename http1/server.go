package http1

import (
	"context"
	"crypto/tls"
	"io"
	"log"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// Server serves HTTP/1.x on the connections of a listener: one goroutine
// per connection reads a request, runs the Handler and writes the answer,
// with no goroutine of its own per request and nothing allocated per
// request but the head's bytes. It is configured like an http.Server, and
// knows only its own fields and hooks.
//
// The loop keeps net/http's contract with handlers (keep-alive,
// pipelining, Content-Length and chunked bodies both ways, Expect:
// 100-continue, trailers, Hijack for upgrades, Flush, a context cancelled
// when the client goes away, http.ServerContextKey in the request's
// context) and its answers to bad input (400, 431, 501, 505). Where
// net/http reads ahead on a goroutine of its own during every request to
// notice a client that goes away, the loop starts watching only when a
// bodyless request has run for a while: the fast majority never pay for
// it. The request and its header are reused from one request to the next:
// a handler must not keep them past its return.
//
// A client that chooses HTTP/2 (ALPN h2 after the loop's TLS handshake, or
// the h2c prior-knowledge preface) is handed to ServeHTTP2.
//
// The http.ResponseWriter given to the Handler is also a Finisher.
//
// A Server's fields must not change once it serves. Its methods are safe
// for concurrent use.
type Server struct {
	// Handler serves each request. If nil, every request is answered 404.
	Handler http.Handler

	// ReadHeaderTimeout bounds the TLS handshake and the read of a
	// request's head (once its first byte has come, for a kept-alive
	// connection). Zero means no limit.
	ReadHeaderTimeout time.Duration
	// ReadTimeout bounds the read of a request with a body, from the end
	// of its head. Zero means no limit.
	ReadTimeout time.Duration
	// WriteTimeout bounds the writing of each answer, from the end of its
	// request's head. Zero means no limit.
	WriteTimeout time.Duration
	// IdleTimeout bounds the wait for the next request on a kept-alive
	// connection. Zero means no limit.
	IdleTimeout time.Duration
	// MaxHeaderBytes bounds a request's head, its request line and empty
	// line included, exactly: a longer one is answered 431. It bounds a
	// request's trailer section too. Zero means http.DefaultMaxHeaderBytes.
	MaxHeaderBytes int

	// BaseContext returns the context of the connections Serve accepts
	// from its listener. If nil, context.Background().
	BaseContext func(net.Listener) context.Context
	// ConnContext derives a connection's context from the base one, once
	// per connection, before its TLS handshake: it is how a user carries
	// per-connection state to its handlers. If nil, the base context.
	ConnContext func(ctx context.Context, c net.Conn) context.Context

	// ErrorLog receives the panics of handlers (but http.ErrAbortHandler)
	// and connections. If nil, the log package's standard logger.
	ErrorLog *log.Logger

	// OnHandshakeError is called when a TLS handshake on c fails (but for
	// a plain HTTP request sent to it, which is answered 400). If nil,
	// nothing is told.
	OnHandshakeError func(c net.Conn, err error)
	// OnRefuse is called when the loop refuses a request it will not serve
	// (malformed, too large, unsupported) with status and reason, before
	// the connection closes. If nil, nothing is told.
	OnRefuse func(c net.Conn, status int, reason string)
	// OnWriteTimeout is called when a write to a client misses
	// WriteTimeout, which cuts its answer. If nil, nothing is told.
	OnWriteTimeout func()
	// ServeHTTP2 takes over a connection whose client chose HTTP/2, for
	// the rest of its life: c's first bytes (the client preface) are still
	// unread; cs is the TLS state, nil for h2c with prior knowledge. The
	// connection is no longer the Server's: Shutdown and Close leave it
	// alone. If nil, an ALPN h2 connection is closed and the h2c preface is
	// refused as a request (505).
	ServeHTTP2 func(c net.Conn, cs *tls.ConnectionState)

	mu       sync.Mutex
	ln       map[net.Listener]struct{}
	conns    map[*serverConn]struct{} // served by the loop, not hijacked or handed over
	shutting atomic.Bool
	watches  atomic.Int64 // watches started, for tests
}

// Finisher is implemented by the http.ResponseWriter that the Server gives
// its Handler. A handler that records what the client got (an access log)
// ends the answer itself before it looks: once ended, the loop does not end
// it again.
type Finisher interface {
	// Complete ends the answer as the loop does after the handler returns:
	// what is left of the request body is drained (or the connection
	// marked to close) and the answer is finished and flushed.
	Complete()
	// Abort ends an answer that failed half-way: what was already given
	// goes out, but never the end of its framing (no last chunk, no
	// padding to its length), and the connection closes after it.
	Abort()
	// Delivered reports, after Complete or Abort, what the client was
	// sent of an answer that was cut (aborted, or a write to the client
	// failed): whether its whole head went out, and how many body bytes
	// after it. An answer that was not cut reports cut false.
	Delivered() (head bool, body int64, cut bool)
	// Err returns the first write to the client that failed, or nil.
	Err() error
}

// StoppableBody is implemented by the Body of a request with a body on
// the Server. Stop ends it with err, unless it has ended already: later
// reads return err, and the loop does not read what the handler left of
// it (which it otherwise does, to keep a connection whose remainder is
// small), so that the connection closes after the answer.
type StoppableBody interface {
	io.ReadCloser
	Stop(err error)
}

var _ StoppableBody = (*reqBody)(nil)

// Connection states, as Shutdown sees them.
const (
	connIdle    int32 = iota // waiting for a request: may be closed
	connActive               // a request is being read or served
	connClosing              // Shutdown has claimed it
)

// maxDrain is how much of a request body the handler left unread the server
// reads and drops to keep the connection, as net/http does.
const maxDrain = 256 << 10

// watchAfter is how long a bodyless request runs before the loop starts
// watching its connection for the client's going away.
const watchAfter = 50 * time.Millisecond

// pendingMax is how much of an answer without a Content-Length is held back
// so that a short answer can still be sent with one.
const pendingMax = 4 << 10

// Serve accepts connections from ln and serves each on a goroutine of its
// own until ln fails or is closed; after Shutdown or Close it returns
// http.ErrServerClosed.
func (s *Server) Serve(ln net.Listener) error {
	if !s.trackListener(ln, true) {
		return http.ErrServerClosed
	}
	defer s.trackListener(ln, false)
	base := context.Background()
	if s.BaseContext != nil {
		base = s.BaseContext(ln)
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			if s.shutting.Load() {
				return http.ErrServerClosed
			}
			return err
		}
		sc := s.track(c)
		if sc == nil {
			c.Close()
			continue
		}
		go sc.serve(base)
	}
}

func (s *Server) trackListener(ln net.Listener, add bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !add {
		delete(s.ln, ln)
		return true
	}
	if s.shutting.Load() {
		return false
	}
	if s.ln == nil {
		s.ln = map[net.Listener]struct{}{}
	}
	s.ln[ln] = struct{}{}
	return true
}

// track registers a new connection, or returns nil once shutting down.
func (s *Server) track(c net.Conn) *serverConn {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shutting.Load() {
		return nil
	}
	if s.conns == nil {
		s.conns = map[*serverConn]struct{}{}
	}
	sc := &serverConn{srv: s, c: c}
	s.conns[sc] = struct{}{}
	return sc
}

func (s *Server) forget(sc *serverConn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.conns, sc)
}

// closeIdle wakes the connections waiting for a request so that they end,
// and reports how many connections are left.
func (s *Server) closeIdle() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	for sc := range s.conns {
		if sc.state.CompareAndSwap(connIdle, connClosing) {
			sc.c.SetReadDeadline(aLongTimeAgo)
		}
	}
	return len(s.conns)
}

// closeListeners closes every listener Serve accepts from.
func (s *Server) closeListeners() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for ln := range s.ln {
		ln.Close()
	}
}

// Shutdown stops accepting, closes idle connections, lets the requests in
// flight finish (their connections close after the answer) and waits for
// them until ctx ends, when it returns ctx's error. Hijacked connections
// and those handed to ServeHTTP2 are not waited for.
func (s *Server) Shutdown(ctx context.Context) error {
	s.shutting.Store(true)
	s.closeListeners()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for s.closeIdle() > 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
	return nil
}

// Close stops accepting and closes every connection at once.
func (s *Server) Close() error {
	s.shutting.Store(true)
	s.closeListeners()
	s.mu.Lock()
	defer s.mu.Unlock()
	for sc := range s.conns {
		sc.c.Close()
	}
	return nil
}

func (s *Server) maxHeaderBytes() int {
	if s.MaxHeaderBytes > 0 {
		return s.MaxHeaderBytes
	}
	return http.DefaultMaxHeaderBytes
}

func (s *Server) logf(format string, args ...any) {
	if s.ErrorLog != nil {
		s.ErrorLog.Printf(format, args...)
		return
	}
	log.Printf(format, args...)
}
