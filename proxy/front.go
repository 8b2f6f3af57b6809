package proxy

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"sekisho/http1"
	"sekisho/proxy/config"
	"sekisho/router"
)

// frontServer serves the connections of one listener. HTTP/1.x is served by
// an http1.Server, one goroutine per connection; a connection whose client
// chooses HTTP/2 (TLS with ALPN h2, or h2c with prior knowledge) is handed
// to an http.Server's HTTP/2 side, behind an h2Guard (h2guard.go).
type frontServer struct {
	loop       *http1.Server
	fallback   *http.Server // HTTP/2 connections
	hand       *handoffListener
	ctx        context.Context
	handler    http.Handler
	readHeader time.Duration
	maxHeader  int
	// h2Closed counts the HTTP/2 connections a guard ends, by reason.
	h2Closed func(reason string)

	mu       sync.Mutex
	h2conns  map[*h2Guard]struct{} // served by the fallback's HTTP/2 side
	shutting atomic.Bool
}

func newFrontServer(s *Server, lc *config.Listener, h http.Handler, fallback *http.Server, addr net.Addr) *frontServer {
	fs := &frontServer{
		fallback: fallback, hand: newHandoffListener(addr), ctx: s.ctx, handler: h,
		readHeader: lc.Timeouts.ReadHeader.D(), maxHeader: lc.MaxHeaderBytes,
		h2Closed: h2ClosedCounter(s, lc.Name),
		h2conns:  map[*h2Guard]struct{}{},
	}
	listener := lc.Name
	errorLog, _ := zap.NewStdLogAt(s.log.With(zap.String("listener", listener)), zap.ErrorLevel)
	fs.loop = &http1.Server{
		Handler:           h,
		ReadHeaderTimeout: lc.Timeouts.ReadHeader.D(),
		ReadTimeout:       lc.Timeouts.Read.D(),
		WriteTimeout:      lc.Timeouts.Write.D(),
		IdleTimeout:       lc.Timeouts.Idle.D(),
		MaxHeaderBytes:    lc.MaxHeaderBytes,
		BaseContext:       func(net.Listener) context.Context { return s.ctx },
		// Each connection gets a slot for the Info of its request in flight.
		ConnContext: func(ctx context.Context, _ net.Conn) context.Context {
			return router.ContextWithSlot(ctx, &router.InfoSlot{})
		},
		ErrorLog: errorLog,
		OnHandshakeError: func(c net.Conn, err error) {
			s.shared.Metrics.TLSHandshakeErrs.WithLabelValues(listener).Inc()
			s.log.Debug("TLS handshake error", zap.String("listener", listener),
				zap.Stringer("peer", c.RemoteAddr()), zap.Error(err))
		},
		OnRefuse: func(c net.Conn, status int, reason string) {
			s.log.Debug("refused a request", zap.String("listener", listener), zap.String("peer", c.RemoteAddr().String()),
				zap.Int("status", status), zap.String("reason", reason))
		},
		ServeHTTP2: fs.serveHTTP2,
	}
	if s.shared != nil {
		fs.loop.OnWriteTimeout = s.shared.Metrics.ClientWriteTimeouts.WithLabelValues(listener).Inc
	}
	return fs
}

// Serve accepts connections from ln until it fails or is closed.
func (fs *frontServer) Serve(ln net.Listener) error {
	fallbackDone := make(chan struct{})
	go func() {
		defer close(fallbackDone)
		fs.fallback.Serve(fs.hand)
	}()
	err := fs.loop.Serve(ln)
	// The fallback serves what it was handed until Shutdown.
	<-fallbackDone
	return err
}

// Shutdown stops accepting, closes idle connections, lets the requests in
// flight finish (their connections close after the answer) and waits for
// them, HTTP/2 connections included, until ctx ends. Hijacked connections
// are not waited for.
func (fs *frontServer) Shutdown(ctx context.Context) error {
	fs.shutting.Store(true)
	errc := make(chan error, 1)
	go func() { errc <- fs.fallback.Shutdown(ctx) }()
	if err := fs.loop.Shutdown(ctx); err != nil {
		return err
	}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for fs.h2Count() > 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
	return <-errc
}

func (fs *frontServer) h2Count() int {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return len(fs.h2conns)
}

// Close closes every connection at once.
func (fs *frontServer) Close() error {
	fs.shutting.Store(true)
	fs.loop.Close()
	fs.mu.Lock()
	for g := range fs.h2conns {
		g.Conn.Close()
	}
	fs.mu.Unlock()
	return fs.fallback.Close()
}

// handoffListener is the fallback http.Server's listener. It yields no
// connection: HTTP/2 connections reach the server's HTTP/2 side through
// serveH2. Serving it sets that side up (ready closes once it is) and gives
// Shutdown and Close their hold on it.
type handoffListener struct {
	addr      net.Addr
	ready     chan struct{}
	readyOnce sync.Once
	done      chan struct{}
	once      sync.Once
}

func newHandoffListener(addr net.Addr) *handoffListener {
	return &handoffListener{addr: addr, ready: make(chan struct{}), done: make(chan struct{})}
}

func (l *handoffListener) Accept() (net.Conn, error) {
	l.readyOnce.Do(func() { close(l.ready) })
	<-l.done
	return nil, net.ErrClosed
}

func (l *handoffListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *handoffListener) Addr() net.Addr { return l.addr }

// serveHTTP2 is the loop's ServeHTTP2: it serves c, on which the client
// chose HTTP/2, with the fallback server's HTTP/2 side for the rest of its
// life, behind an h2Guard. cs is the TLS state, nil for h2c. The client
// preface is read here, within read_header.
func (fs *frontServer) serveHTTP2(c net.Conn, cs *tls.ConnectionState) {
	if to := fs.readHeader; to > 0 {
		c.SetReadDeadline(time.Now().Add(to))
	}
	var preface [len(h2ClientPreface)]byte
	if _, err := io.ReadFull(c, preface[:]); err != nil || string(preface[:]) != h2ClientPreface {
		c.Close()
		return
	}
	c.SetDeadline(time.Time{})
	g := newH2Guard(c, fs.readHeader, fs.h2Closed)
	var conn net.Conn = g
	if cs != nil {
		conn = &h2TLSGuard{h2Guard: g, state: *cs}
	}
	fs.serveH2(g, conn)
}

// serveH2 runs the fallback server's HTTP/2 side on conn (g, or g with its
// TLS state) until the connection ends. net/http serves HTTP/2 over TLS
// only on a *tls.Conn of its own, and a guard is not one; it takes any
// connection as HTTP/2 with prior knowledge, and the guard's
// ConnectionState gives each request its TLS state.
func (fs *frontServer) serveH2(g *h2Guard, conn net.Conn) {
	fs.mu.Lock()
	if fs.shutting.Load() {
		fs.mu.Unlock()
		g.Conn.Close()
		return
	}
	fs.h2conns[g] = struct{}{}
	fs.mu.Unlock()
	defer func() {
		fs.mu.Lock()
		delete(fs.h2conns, g)
		fs.mu.Unlock()
		g.Close()
	}()
	select {
	case <-fs.hand.ready: // the server has set up its HTTP/2 side
	case <-fs.hand.done:
		return
	}
	serve := fs.fallback.TLSNextProto[nextProtoH2]
	if serve == nil {
		return
	}
	ctx := fs.ctx
	if cc := fs.fallback.ConnContext; cc != nil {
		ctx = cc(ctx, conn)
	}
	serve(fs.fallback, tls.Client(h2HandOff{conn: conn}, nil), h2Entry{ctx: ctx, next: fs.handler, maxHeader: fs.maxHeader})
}
