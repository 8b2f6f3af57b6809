package http1

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
)

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

// serverConn is one client connection on the loop.
type serverConn struct {
	srv   *Server
	c     net.Conn
	state atomic.Int32
	br    *bufio.Reader
	bw    *bufio.Writer
	wmu   sync.Mutex // orders an interim 100 Continue with the answer's head

	ctx       context.Context
	cancel    context.CancelFunc
	base      *http.Request // carries ctx: each request starts as a copy
	remote    string
	tls       *tls.ConnectionState
	maxHeader int
	served    int // requests so far
	handed    bool
	hijack    bool
	body      *reqBody // of the request in flight, nil without one
	wire      int64    // bytes written to c so far: what the client was really sent
	big       []byte   // a head larger than br's buffer, gathered
	scratch   [24]byte // number formatting
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

	// Reused per request: nothing keeps a request past its handler.
	req    http.Request
	url    url.URL
	header http.Header
	vals   []string
	w      respWriter
}

// serve runs the connection's requests one after another.
func (sc *serverConn) serve(base context.Context) {
	srv := sc.srv
	if srv.ConnContext != nil {
		base = srv.ConnContext(base, sc.c)
	}
	sc.ctx, sc.cancel = context.WithCancel(base)
	defer func() {
		if p := recover(); p != nil {
			srv.logf("http1: panic serving %v: %v\n%s", sc.c.RemoteAddr(), p, debug.Stack())
		}
		sc.cancel()
		if !sc.handed && !sc.hijack {
			sc.c.Close()
		}
		srv.forget(sc)
	}()
	sc.maxHeader = srv.maxHeaderBytes()
	if to := srv.ReadHeaderTimeout; to > 0 {
		sc.c.SetDeadline(time.Now().Add(to)) // the handshake's and the first head's
	}
	if tc, ok := sc.c.(*tls.Conn); ok {
		if err := tc.HandshakeContext(sc.ctx); err != nil {
			var re tls.RecordHeaderError
			if errors.As(err, &re) && re.Conn != nil && looksLikeHTTP(re.RecordHeader[:]) {
				io.WriteString(re.Conn, "HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n")
				return
			}
			if srv.OnHandshakeError != nil {
				srv.OnHandshakeError(sc.c, err)
			}
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
	ctx := context.WithValue(sc.ctx, http.ServerContextKey, srv)
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

// handOver gives c, on which the client chose HTTP/2, to ServeHTTP2 for the
// rest of its life; cs is the TLS state, nil for h2c.
func (sc *serverConn) handOver(c net.Conn, cs *tls.ConnectionState) {
	srv := sc.srv
	srv.forget(sc)
	if srv.ServeHTTP2 == nil {
		return // closed by serve
	}
	sc.handed = true
	srv.ServeHTTP2(c, cs)
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
	if sc.served == 0 && sc.tls == nil && sc.srv.ServeHTTP2 != nil && bytes.HasPrefix(head, []byte("PRI * HTTP/2.0\r\n")) {
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
	if f := sc.srv.OnRefuse; f != nil {
		f(sc.c, status, msg)
	}
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
	srv := sc.srv
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
		if to := srv.ReadTimeout; to > 0 {
			deadline = time.Now().Add(to)
		}
		sc.c.SetReadDeadline(deadline)
	} else {
		r.Body = http.NoBody
	}
	if to := srv.WriteTimeout; to > 0 {
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
	if !ok {
		w.Abort() // what went out stays short of the answer's end
	}
	if !ok || sc.hijack || sc.gone.Load() {
		sc.body = nil
		return false // aborted, upgraded or abandoned: no answer to finish
	}
	// Complete drains what the handler left of the body (unless the
	// handler completed the answer itself, which drained it then).
	w.Complete()
	sc.body = nil
	if w.closeAfter || srv.shutting.Load() {
		if body != nil && !body.eof {
			sc.lingerClose()
		}
		return false
	}
	// The idle deadline goes before the state says idle: Shutdown's
	// deadline in the past, set once it sees the state, must come last.
	if to := srv.IdleTimeout; to > 0 {
		sc.c.SetReadDeadline(time.Now().Add(to))
	} else if body != nil || watched {
		sc.c.SetReadDeadline(time.Time{})
	}
	sc.state.Store(connIdle)
	return !srv.shutting.Load()
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
	sc.srv.watches.Add(1)
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
// really left, so that Delivered can tell what the client was sent.
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
// (http.ErrAbortHandler) or panicked.
func (sc *serverConn) handle(w *respWriter, r *http.Request) (ok bool) {
	defer func() {
		if p := recover(); p != nil {
			if p != http.ErrAbortHandler {
				sc.srv.logf("http1: panic serving %s: %v\n%s", sc.remote, p, debug.Stack())
			}
			ok = false
		}
	}()
	h := sc.srv.Handler
	if h == nil {
		h = notFound
	}
	h.ServeHTTP(w, r)
	return true
}

var notFound = http.NotFoundHandler()
