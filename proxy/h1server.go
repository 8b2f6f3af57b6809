package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"sekisho/proxy/config"
	"sekisho/router"
)

// frontServer serves the connections of one listener. HTTP/1.x is served by
// its own loop, one goroutine per connection that reads a request, runs the
// handler and writes the answer, with no goroutine of its own per request
// and nothing allocated per request but the head's bytes. HTTP/2 (TLS with
// ALPN h2, or h2c with prior knowledge) is served by an http.Server's
// HTTP/2 side, behind an h2Guard (h2guard.go).
//
// The loop keeps net/http's contract with handlers (keep-alive, pipelining,
// Content-Length and chunked bodies both ways, Expect: 100-continue,
// trailers, Hijack for upgrades, Flush, a context cancelled when the client
// goes away) and its answers to bad input (400, 431, 501, 505). Where
// net/http reads ahead on a goroutine of its own during every request to
// notice a client that goes away, the loop starts watching only when a
// request has run for watchAfter: the fast majority never pay for it.
type frontServer struct {
	s         *Server
	listener  string
	handler   http.Handler
	fallback  *http.Server // HTTP/2 connections
	hand      *handoffListener
	timeouts  config.ListenerTimeouts
	maxHeader int

	mu       sync.Mutex
	ln       net.Listener
	conns    map[*serverConn]struct{} // served by the loop, not hijacked
	shutting atomic.Bool
	watches  atomic.Int64 // watches started, for tests

	h2conns map[*h2Guard]struct{} // under mu: served by the fallback's HTTP/2 side
	// h2Closed counts the HTTP/2 connections a guard ends, by reason.
	h2Closed func(reason string)
	// writeTimeouts counts answers cut by the listener's write deadline.
	writeTimeouts prometheus.Counter
}

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

func newFrontServer(s *Server, lc *config.Listener, h http.Handler, fallback *http.Server, addr net.Addr) *frontServer {
	fs := &frontServer{
		s: s, listener: lc.Name, handler: h, fallback: fallback,
		hand:      newHandoffListener(addr),
		timeouts:  lc.Timeouts,
		maxHeader: lc.MaxHeaderBytes,
		conns:     map[*serverConn]struct{}{},
		h2conns:   map[*h2Guard]struct{}{},
		h2Closed:  h2ClosedCounter(s, lc.Name),
	}
	if s.env != nil {
		fs.writeTimeouts = s.env.Metrics.ClientWriteTimeouts.WithLabelValues(lc.Name)
	}
	return fs
}

// Serve accepts connections from ln until it fails or is closed.
func (fs *frontServer) Serve(ln net.Listener) error {
	fs.mu.Lock()
	fs.ln = ln
	fs.mu.Unlock()
	fallbackDone := make(chan struct{})
	go func() {
		defer close(fallbackDone)
		fs.fallback.Serve(fs.hand)
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			// The fallback serves what it was handed until Shutdown.
			<-fallbackDone
			if fs.shutting.Load() {
				return http.ErrServerClosed
			}
			return err
		}
		sc := fs.track(c)
		if sc == nil {
			c.Close()
			continue
		}
		go sc.serve()
	}
}

// track registers a new connection, or returns nil once shutting down.
func (fs *frontServer) track(c net.Conn) *serverConn {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if fs.shutting.Load() {
		return nil
	}
	sc := &serverConn{fs: fs, c: c}
	fs.conns[sc] = struct{}{}
	return sc
}

func (fs *frontServer) forget(sc *serverConn) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	delete(fs.conns, sc)
}

// closeIdle wakes the connections waiting for a request so that they end,
// and reports how many connections are left, HTTP/2 ones included (the
// fallback's Shutdown tells those to go).
func (fs *frontServer) closeIdle() int {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	for sc := range fs.conns {
		if sc.state.CompareAndSwap(connIdle, connClosing) {
			sc.c.SetReadDeadline(aLongTimeAgo)
		}
	}
	return len(fs.conns) + len(fs.h2conns)
}

// Shutdown stops accepting, closes idle connections, lets the requests in
// flight finish (their connections close after the answer) and waits for
// them until ctx ends. Hijacked connections are not waited for.
func (fs *frontServer) Shutdown(ctx context.Context) error {
	fs.shutting.Store(true)
	fs.mu.Lock()
	if fs.ln != nil {
		fs.ln.Close()
	}
	fs.mu.Unlock()
	errc := make(chan error, 1)
	go func() { errc <- fs.fallback.Shutdown(ctx) }()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for fs.closeIdle() > 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
	return <-errc
}

// Close closes every connection at once.
func (fs *frontServer) Close() error {
	fs.shutting.Store(true)
	fs.mu.Lock()
	if fs.ln != nil {
		fs.ln.Close()
	}
	for sc := range fs.conns {
		sc.c.Close()
	}
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

// replayConn is a connection whose first bytes were read into br already.
type replayConn struct {
	net.Conn
	br *bufio.Reader
}

func (c *replayConn) Read(p []byte) (int, error) { return c.br.Read(p) }

// CloseWrite closes the connection's writing side, when it has one.
func (c *replayConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// serverConn is one client connection on the HTTP/1.x loop.
type serverConn struct {
	fs    *frontServer
	c     net.Conn
	state atomic.Int32
	br    *bufio.Reader
	bw    *bufio.Writer
	wmu   sync.Mutex // orders an interim 100 Continue with the answer's head

	ctx     context.Context
	cancel  context.CancelFunc
	slot    router.InfoSlot
	base    *http.Request // carries ctx: each request starts as a copy
	remote  string
	tls     *tls.ConnectionState
	served  int // requests so far
	handed  bool
	hijack  bool
	body    *reqBody // of the request in flight, nil without one
	wire    int64    // bytes written to c so far: what the client was really sent
	big     []byte   // a head larger than br's buffer, gathered
	scratch [24]byte // number formatting
	// continued is set once this request's 100 Continue has gone: the
	// client sends its body. None goes after the answer's head.
	continued bool
	// ambiguous is set by parse for a request with both Content-Length
	// and Transfer-Encoding: its connection closes after the answer.
	ambiguous bool

	// The watch of a long bodyless request: a read of the connection that
	// either sees the client go (EOF, reset) and cancels the context, or
	// gets the first byte of the next request, kept in peeked for br.
	watchTimer *time.Timer
	watchMu    sync.Mutex
	watchOff   bool          // the request ended: a late timer does nothing
	watching   bool          // a watch's read has started
	watchArmed bool          // the timer was set for the request in flight
	watchFired chan struct{} // each run of the timer's function ends with a send
	watchBuf   [1]byte
	peeked     bool
	gone       atomic.Bool // the client went away during a request

	// Reused per request: nothing keeps a request past its handler (a stage
	// that works on afterwards, mirror or scatter, clones it first).
	req    http.Request
	url    url.URL
	header http.Header
	vals   []string
	w      respWriter
}

// serve runs the connection's requests one after another.
func (sc *serverConn) serve() {
	fs := sc.fs
	sc.ctx, sc.cancel = context.WithCancel(fs.s.ctx)
	defer func() {
		if p := recover(); p != nil {
			fs.s.log.Error("panic serving a connection", zap.Any("panic", p), zap.String("listener", fs.listener),
				zap.ByteString("stack", debug.Stack()))
		}
		sc.cancel()
		if !sc.handed && !sc.hijack {
			sc.c.Close()
		}
		fs.forget(sc)
	}()
	if to := fs.timeouts.ReadHeader.D(); to > 0 {
		sc.c.SetDeadline(time.Now().Add(to)) // the handshake's and the first head's
	}
	if tc, ok := sc.c.(*tls.Conn); ok {
		if err := tc.HandshakeContext(sc.ctx); err != nil {
			var re tls.RecordHeaderError
			if errors.As(err, &re) && re.Conn != nil && looksLikeHTTP(re.RecordHeader[:]) {
				io.WriteString(re.Conn, "HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n")
				return
			}
			fs.s.env.Metrics.TLSHandshakeErrs.WithLabelValues(fs.listener).Inc()
			fs.s.log.Debug("TLS handshake error", zap.String("listener", fs.listener),
				zap.Stringer("peer", sc.c.RemoteAddr()), zap.Error(err))
			return
		}
		cs := tc.ConnectionState()
		if cs.NegotiatedProtocol == "h2" {
			sc.handOver(sc.c, &cs)
			return
		}
		sc.tls = &cs
	}
	sc.c.SetWriteDeadline(time.Time{})
	sc.remote = sc.c.RemoteAddr().String()
	// http.ServerContextKey is what ReverseProxy looks for before it aborts
	// an answer whose upstream body failed (http.ErrAbortHandler) rather
	// than letting the handler end as if the answer were whole.
	ctx := context.WithValue(router.ContextWithSlot(sc.ctx, &sc.slot), http.ServerContextKey, fs.fallback)
	sc.base = (&http.Request{}).WithContext(ctx)
	sc.br = bufio.NewReaderSize(connReader{sc}, 4<<10)
	sc.watchFired = make(chan struct{}, 1)
	sc.watchTimer = time.AfterFunc(time.Hour, sc.watch)
	sc.watchTimer.Stop()
	defer sc.watchTimer.Stop()
	sc.bw = bufio.NewWriterSize(wireWriter{sc}, 4<<10)
	sc.header = make(http.Header, 16)
	sc.w.sc = sc
	sc.w.header = make(http.Header, 16)
	for sc.next() {
	}
}

// looksLikeHTTP reports whether the first bytes of a would-be TLS record
// are a plain HTTP request, which gets a plain 400 as from net/http.
func looksLikeHTTP(hdr []byte) bool {
	switch string(hdr) {
	case "GET /", "HEAD ", "POST ", "PUT /", "OPTIO":
		return true
	}
	return false
}

// handOver serves c, on which the client chose HTTP/2, with the fallback
// server's HTTP/2 side for the rest of its life, behind an h2Guard. cs is
// the TLS state, nil for h2c. The client preface is read here, within
// read_header.
func (sc *serverConn) handOver(c net.Conn, cs *tls.ConnectionState) {
	fs := sc.fs
	sc.handed = true
	fs.forget(sc)
	if to := fs.timeouts.ReadHeader.D(); to > 0 {
		sc.c.SetReadDeadline(time.Now().Add(to))
	}
	var preface [len(h2ClientPreface)]byte
	if _, err := io.ReadFull(c, preface[:]); err != nil || string(preface[:]) != h2ClientPreface {
		c.Close()
		return
	}
	sc.c.SetDeadline(time.Time{})
	g := newH2Guard(c, fs.timeouts.ReadHeader.D(), fs.h2Closed)
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
	ctx := fs.s.ctx
	if cc := fs.fallback.ConnContext; cc != nil {
		ctx = cc(ctx, conn)
	}
	serve(fs.fallback, tls.Client(h2HandOff{conn: conn}, nil), h2Entry{ctx: ctx, next: fs.handler, maxHeader: fs.maxHeader})
}

// next reads and serves one request; false ends the connection.
func (sc *serverConn) next() bool {
	// Wait for the request's first byte, skipping the empty lines a client
	// may send between requests.
	for skipped := 0; ; skipped++ {
		b, err := sc.br.Peek(1)
		if err != nil {
			return false
		}
		if (b[0] != '\r' && b[0] != '\n') || skipped > 64 {
			break
		}
		sc.br.Discard(1)
	}
	if !sc.state.CompareAndSwap(connIdle, connActive) {
		return false // claimed by Shutdown
	}
	head, consumed, err := sc.readHead()
	if err != nil {
		if err == errRequestHeadTooLarge {
			sc.refuse(http.StatusRequestHeaderFieldsTooLarge, "")
		}
		return false
	}
	if sc.served == 0 && sc.tls == nil && bytes.HasPrefix(head, []byte("PRI * HTTP/2.0\r\n")) {
		sc.handOver(&replayConn{Conn: sc.c, br: sc.br}, nil)
		return false
	}
	r, status, msg := sc.parse(head)
	if consumed > 0 {
		sc.br.Discard(consumed)
	}
	if r == nil {
		sc.refuse(status, msg)
		return false
	}
	sc.served++
	return sc.run(r)
}

// refuse answers a request the loop will not serve and closes the
// connection the way net/http does, letting the client read the answer
// before the socket goes.
func (sc *serverConn) refuse(status int, msg string) {
	line := statusLine(status) // "HTTP/1.1 400 Bad Request\r\n"
	text := strings.TrimSuffix(line[len("HTTP/1.1 "):], "\r\n")
	if msg != "" {
		text += ": " + msg
	}
	sc.bw.WriteString(line + "Content-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n" + text)
	sc.bw.Flush()
	sc.fs.s.log.Debug("refused a request", zap.String("listener", sc.fs.listener), zap.String("peer", sc.remote),
		zap.Int("status", status), zap.String("reason", msg))
	sc.lingerClose()
}

// lingerClose closes the write side, then reads (and drops) what the client
// still sends for a moment before closing, so that unread input does not
// turn the close into a reset that destroys the answer in flight.
func (sc *serverConn) lingerClose() {
	type closeWriter interface{ CloseWrite() error }
	if cw, ok := sc.c.(closeWriter); ok {
		cw.CloseWrite()
	}
	sc.c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	io.CopyN(io.Discard, sc.c, maxDrain)
}

// run serves r and reports whether the connection may carry another
// request.
func (sc *serverConn) run(r *http.Request) bool {
	fs := sc.fs
	// Expect as net/http has it: 100-continue is honoured on an HTTP/1.1
	// request with a body and ignored on any other; another expectation
	// is refused with 417.
	expect := false
	if e := r.Header["Expect"]; len(e) > 0 && e[0] != "" {
		if !expectsContinue(e[0]) {
			sc.refuse(http.StatusExpectationFailed, "")
			return false
		}
		expect = r.ProtoMinor >= 1 && r.ContentLength != 0
	}
	var body *reqBody
	if r.ContentLength != 0 {
		body = &reqBody{sc: sc, left: r.ContentLength, trailer: r.Trailer, expect: expect}
		r.Body = body
		// The body is read while the handler runs: the whole-request
		// timeout, or none, replaces the idle one left from before.
		var deadline time.Time
		if to := fs.timeouts.Read.D(); to > 0 {
			deadline = time.Now().Add(to)
		}
		sc.c.SetReadDeadline(deadline)
	} else {
		r.Body = http.NoBody
	}
	if to := fs.timeouts.Write.D(); to > 0 {
		sc.c.SetWriteDeadline(time.Now().Add(to))
	}
	w := &sc.w
	w.reset(r)
	w.closeAfter = sc.ambiguous
	sc.body = body
	sc.continued = false
	if body == nil {
		// A body is read by the handler; only a bodyless request's
		// connection is free for the watch to read.
		sc.watchMu.Lock()
		sc.watchOff = false
		sc.watchMu.Unlock()
		sc.watchArmed = true
		sc.watchTimer.Reset(watchAfter)
	}
	var ok bool
	if r.Method == http.MethodOptions && r.RequestURI == "*" {
		w.header.Set("Content-Length", "0")
		w.WriteHeader(http.StatusOK)
		ok = true
	} else {
		ok = sc.handle(w, r)
	}
	watched := body == nil && sc.unwatch()
	sc.body = nil
	if !ok {
		w.abort() // what went out stays short of the answer's end
	}
	if !ok || sc.hijack || sc.gone.Load() {
		return false // aborted, upgraded or abandoned: no answer to finish
	}
	w.complete()
	if w.closeAfter || fs.shutting.Load() {
		if body != nil && !body.eof {
			sc.lingerClose()
		}
		return false
	}
	// The idle deadline goes before the state says idle: Shutdown's
	// deadline in the past, set once it sees the state, must come last.
	if to := fs.timeouts.Idle.D(); to > 0 {
		sc.c.SetReadDeadline(time.Now().Add(to))
	} else if body != nil || watched {
		sc.c.SetReadDeadline(time.Time{})
	}
	sc.state.Store(connIdle)
	return !fs.shutting.Load()
}

// watch runs on the watch timer's goroutine once a bodyless request has run
// for watchAfter.
func (sc *serverConn) watch() {
	defer func() { sc.watchFired <- struct{}{} }() // unwatch waits for it
	sc.watchMu.Lock()
	if sc.watchOff {
		sc.watchMu.Unlock()
		return
	}
	sc.fs.watches.Add(1)
	sc.watching = true
	// No deadline but unwatch's: an idle deadline left from before must
	// not end the watch of a long request.
	sc.c.SetReadDeadline(time.Time{})
	sc.watchMu.Unlock()
	n, err := sc.c.Read(sc.watchBuf[:])
	if n == 1 {
		sc.peeked = true // read by the loop after unwatch's receive
		return
	}
	var ne net.Error
	if err != nil && !(errors.As(err, &ne) && ne.Timeout()) {
		sc.gone.Store(true)
		sc.cancel()
	}
}

// unwatch ends the watch of the request that just ended, waiting for its
// read to return; it reports whether a watch had started (and moved the
// read deadline).
func (sc *serverConn) unwatch() bool {
	if !sc.watchArmed {
		return false
	}
	sc.watchArmed = false
	if sc.watchTimer.Stop() {
		return false
	}
	// The timer fired: its watch runs, or is about to. Turn it off or cut
	// its read, then wait until it has returned, so that no late watch
	// can start during the next request.
	sc.watchMu.Lock()
	sc.watchOff = true
	started := sc.watching
	sc.watching = false
	sc.watchMu.Unlock()
	if started {
		sc.c.SetReadDeadline(aLongTimeAgo)
	}
	<-sc.watchFired
	return started
}

// wireWriter is what bw writes to: the connection, counting the bytes that
// really left, so that the access log records what the client was sent.
type wireWriter struct{ sc *serverConn }

func (w wireWriter) Write(p []byte) (int, error) {
	n, err := w.sc.c.Write(p)
	w.sc.wire += int64(n)
	return n, err
}

// connReader is what br reads: the byte a watch read first, then the
// connection.
type connReader struct{ sc *serverConn }

func (r connReader) Read(p []byte) (int, error) {
	sc := r.sc
	if sc.peeked && len(p) > 0 {
		sc.peeked = false
		p[0] = sc.watchBuf[0]
		return 1, nil
	}
	return sc.c.Read(p)
}

// handle runs the handler; false when it aborted the answer
// (http.ErrAbortHandler) or panicked past the listener's own recovery.
func (sc *serverConn) handle(w *respWriter, r *http.Request) (ok bool) {
	defer func() {
		if p := recover(); p != nil {
			if p != http.ErrAbortHandler {
				sc.fs.s.log.Error("panic serving request", zap.Any("panic", p), zap.String("listener", sc.fs.listener),
					zap.ByteString("stack", debug.Stack()))
			}
			ok = false
		}
	}()
	sc.fs.handler.ServeHTTP(w, r)
	return true
}
