package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"sekisho/router"
)

// frontServer serves the connections of one listener. HTTP/1.x is served by
// its own loop, one goroutine per connection that reads a request, runs the
// handler and writes the answer, with no goroutine of its own per request
// and nothing allocated per request but the head's bytes. HTTP/2 (TLS with
// ALPN h2, or h2c with prior knowledge) is handed to an http.Server.
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
	timeouts  ListenerTimeouts
	maxHeader int
	h2c       bool

	mu       sync.Mutex
	ln       net.Listener
	conns    map[*serverConn]struct{} // served by the loop, not hijacked
	shutting atomic.Bool
	watches  atomic.Int64 // watches started, for tests
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

func newFrontServer(s *Server, lc *ListenerConfig, h http.Handler, fallback *http.Server, addr net.Addr) *frontServer {
	return &frontServer{
		s: s, listener: lc.Name, handler: h, fallback: fallback,
		hand:      &handoffListener{addr: addr, ch: make(chan net.Conn), done: make(chan struct{})},
		timeouts:  lc.Timeouts,
		maxHeader: lc.MaxHeaderBytes,
		h2c:       true,
		conns:     map[*serverConn]struct{}{},
	}
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
// and reports how many connections are left.
func (fs *frontServer) closeIdle() int {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	for sc := range fs.conns {
		if sc.state.CompareAndSwap(connIdle, connClosing) {
			sc.c.SetReadDeadline(aLongTimeAgo)
		}
	}
	return len(fs.conns)
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
	fs.mu.Unlock()
	return fs.fallback.Close()
}

// handoffListener feeds the fallback http.Server the connections the loop
// hands over.
type handoffListener struct {
	addr net.Addr
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func (l *handoffListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *handoffListener) push(c net.Conn) {
	select {
	case l.ch <- c:
	case <-l.done:
		c.Close()
	}
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
	big     []byte   // a head larger than br's buffer, gathered
	scratch [24]byte // number formatting
	// continued is set once this request's 100 Continue (or the answer's
	// head) has gone, so that no other is sent.
	continued bool

	// The watch of a long bodyless request: a read of the connection that
	// either sees the client go (EOF, reset) and cancels the context, or
	// gets the first byte of the next request, kept in peeked for br.
	watchTimer *time.Timer
	watchMu    sync.Mutex
	watchOff   bool          // the request ended: a late timer does nothing
	watchDone  chan struct{} // closed when the watch's read has returned
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
			sc.handOver(sc.c)
			return
		}
		sc.tls = &cs
	}
	sc.c.SetWriteDeadline(time.Time{})
	sc.remote = sc.c.RemoteAddr().String()
	ctx := router.ContextWithSlot(sc.ctx, &sc.slot)
	sc.base = (&http.Request{}).WithContext(ctx)
	sc.br = bufio.NewReaderSize(connReader{sc}, 4<<10)
	sc.watchTimer = time.AfterFunc(time.Hour, sc.watch)
	sc.watchTimer.Stop()
	defer sc.watchTimer.Stop()
	sc.bw = bufio.NewWriterSize(sc.c, 4<<10)
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

// handOver gives c to the fallback server for the rest of its life.
func (sc *serverConn) handOver(c net.Conn) {
	sc.handed = true
	sc.c.SetDeadline(time.Time{})
	sc.fs.forget(sc)
	sc.fs.hand.push(c)
}

// next reads and serves one request; false ends the connection.
func (sc *serverConn) next() bool {
	fs := sc.fs
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
	if sc.served == 0 && sc.tls == nil && fs.h2c && bytes.HasPrefix(head, []byte("PRI * HTTP/2.0\r\n")) {
		sc.handOver(&replayConn{Conn: sc.c, br: sc.br})
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

var errRequestHeadTooLarge = errors.New("request head too large")

// readHead returns the request's head up to and including its empty line:
// a view of br's buffer (consumed bytes to discard once parsed) or, for a
// head larger than the buffer, a copy gathered in big.
func (sc *serverConn) readHead() (head []byte, consumed int, err error) {
	limit := sc.fs.maxHeader + 4<<10 // net/http's slack for the request line
	tightened := false
	for {
		buf, _ := sc.br.Peek(sc.br.Buffered())
		if end := headEnd(buf); end >= 0 {
			return buf[:end], end, nil
		}
		if len(buf) >= limit {
			return nil, 0, errRequestHeadTooLarge
		}
		if len(buf) == sc.br.Size() {
			break
		}
		if !tightened {
			// The head did not come in one piece: from here on the header
			// timeout, not the idle one, bounds the wait.
			tightened = true
			if to := sc.fs.timeouts.ReadHeader.D(); to > 0 && sc.served > 0 {
				sc.c.SetReadDeadline(time.Now().Add(to))
			}
		}
		if _, err := sc.br.Peek(len(buf) + 1); err != nil {
			return nil, 0, err
		}
	}
	// Line by line from here; the head ends with the first empty line,
	// which may be the first line the loop below reads whole.
	sc.big = sc.big[:0]
	whole := true // the last line ended in sc.big
	for {
		line, err := sc.br.ReadSlice('\n')
		sc.big = append(sc.big, line...)
		if len(sc.big) >= limit {
			return nil, 0, errRequestHeadTooLarge
		}
		switch err {
		case nil:
			if whole && (len(line) == 1 || len(line) == 2 && line[0] == '\r') {
				return sc.big, 0, nil
			}
			whole = true
		case bufio.ErrBufferFull:
			whole = false
		default:
			return nil, 0, err
		}
	}
}

// headEnd returns the length of the head in b (through its empty line), or
// -1 while it is incomplete. Lines end in CRLF or a bare LF.
func headEnd(b []byte) int {
	for i := 0; ; {
		j := bytes.IndexByte(b[i:], '\n')
		if j < 0 {
			return -1
		}
		i += j + 1
		switch {
		case i < len(b) && b[i] == '\n':
			return i + 1
		case i+1 < len(b) && b[i] == '\r' && b[i+1] == '\n':
			return i + 2
		}
	}
}

// parse builds the request from its head, or returns the status and
// message of a refusal.
func (sc *serverConn) parse(head []byte) (*http.Request, int, string) {
	s := string(head) // one allocation; every string of the request is a slice of it
	line, rest := cutLine(s)
	method, after, ok1 := strings.Cut(line, " ")
	target, proto, ok2 := strings.Cut(after, " ")
	if !ok1 || !ok2 || method == "" || target == "" {
		return nil, http.StatusBadRequest, "malformed HTTP request"
	}
	for i := 0; i < len(method); i++ {
		if !tokenByte(method[i]) {
			return nil, http.StatusBadRequest, "invalid method"
		}
	}
	r := &sc.req
	*r = *sc.base
	switch proto {
	case "HTTP/1.1":
		r.Proto, r.ProtoMajor, r.ProtoMinor = proto, 1, 1
	case "HTTP/1.0":
		r.Proto, r.ProtoMajor, r.ProtoMinor = proto, 1, 0
	default:
		major, minor, ok := http.ParseHTTPVersion(proto)
		if !ok {
			return nil, http.StatusBadRequest, "malformed HTTP version"
		}
		if major != 1 {
			return nil, http.StatusHTTPVersionNotSupported, "unsupported protocol version"
		}
		r.Proto, r.ProtoMajor, r.ProtoMinor = proto, major, minor
	}
	r.Method, r.RequestURI, r.RemoteAddr, r.TLS = method, target, sc.remote, sc.tls
	if !sc.parseTarget(r, target) {
		return nil, http.StatusBadRequest, "invalid request target"
	}

	h := sc.header
	clear(h)
	sc.vals = sc.vals[:0]
	hosts := 0
	for rest != "" {
		line, rest = cutLine(rest)
		if line == "" {
			break
		}
		if line[0] == ' ' || line[0] == '\t' {
			return nil, http.StatusBadRequest, "obsolete line folding"
		}
		colon := strings.IndexByte(line, ':')
		if colon <= 0 {
			return nil, http.StatusBadRequest, "malformed MIME header line"
		}
		key, ok := canonicalKey(line[:colon])
		if !ok {
			return nil, http.StatusBadRequest, "invalid header name"
		}
		val := strings.Trim(line[colon+1:], " \t")
		if !validValue(val) {
			return nil, http.StatusBadRequest, "invalid header value"
		}
		if key == "Host" {
			hosts++
		}
		sc.vals = append(sc.vals, val)
		i := len(sc.vals) - 1
		if old, ok := h[key]; ok {
			h[key] = append(old, val)
			continue
		}
		h[key] = sc.vals[i : i+1 : i+1]
	}
	r.Header = h

	switch {
	case hosts > 1:
		return nil, http.StatusBadRequest, "too many Host headers"
	case hosts == 0 && r.ProtoMinor >= 1 && r.URL.Host == "" && r.Method != http.MethodConnect:
		return nil, http.StatusBadRequest, "missing required Host header"
	}
	if r.Host == "" { // an absolute target's host wins
		r.Host = h.Get("Host")
	}
	if !validHost(r.Host) {
		return nil, http.StatusBadRequest, "malformed Host header"
	}
	delete(h, "Host")

	// Framing of the body.
	if te := h["Transfer-Encoding"]; len(te) > 0 {
		if len(te) != 1 || !strings.EqualFold(te[0], "chunked") {
			return nil, http.StatusNotImplemented, "unsupported transfer encoding"
		}
		if r.ProtoMinor == 0 {
			return nil, http.StatusBadRequest, "chunked body on HTTP/1.0"
		}
		r.TransferEncoding = []string{"chunked"}
		r.ContentLength = -1
		delete(h, "Content-Length") // chunked wins, as in net/http
		delete(h, "Transfer-Encoding")
	} else if cl := h["Content-Length"]; len(cl) > 0 {
		for _, v := range cl[1:] {
			if v != cl[0] {
				return nil, http.StatusBadRequest, "conflicting Content-Length"
			}
		}
		if r.ContentLength = parseLength(cl[0]); r.ContentLength < 0 {
			return nil, http.StatusBadRequest, "bad Content-Length"
		}
		if len(cl) > 1 {
			h["Content-Length"] = cl[:1]
		}
	}
	if r.ContentLength > 0 || r.ContentLength < 0 {
		if tr := h["Trailer"]; len(tr) > 0 {
			r.Trailer = http.Header{}
			for _, v := range tr {
				for _, k := range strings.Split(v, ",") {
					if k = textprotoKey(strings.TrimSpace(k)); k != "" {
						r.Trailer[k] = nil
					}
				}
			}
		}
	}
	r.Close = closeRequested(r)
	return r, 0, ""
}

func cutLine(s string) (line, rest string) {
	line, rest, _ = strings.Cut(s, "\n")
	return strings.TrimSuffix(line, "\r"), rest
}

func textprotoKey(k string) string {
	if k == "" {
		return ""
	}
	c, ok := canonicalKey(k)
	if !ok {
		return ""
	}
	return c
}

// parseTarget sets r.URL (and r.Host for an absolute target). A plain
// origin-form path is split by hand; anything else goes to url's parser.
func (sc *serverConn) parseTarget(r *http.Request, target string) bool {
	u := &sc.url
	*u = url.URL{}
	r.URL = u
	if r.Method == http.MethodConnect && target[0] != '/' {
		pu, err := url.ParseRequestURI("http://" + target)
		if err != nil {
			return false
		}
		*u = *pu
		u.Scheme = "" // as net/http reads an authority
		r.Host = u.Host
		return true
	}
	if target[0] == '/' && plainTarget(target) {
		path, query, hasQuery := strings.Cut(target, "?")
		u.Path, u.RawQuery, u.ForceQuery = path, query, hasQuery && query == ""
		return true
	}
	pu, err := url.ParseRequestURI(target)
	if err != nil {
		return false
	}
	*u = *pu
	if u.Host != "" {
		r.Host = u.Host
	}
	return true
}

// plainTarget reports whether t reads the same split by hand as parsed by
// url: a path of bytes that URL.EscapedPath leaves as they are, and a query
// of printable bytes, with no escapes and no fragment.
func plainTarget(t string) bool {
	path, query, _ := strings.Cut(t, "?")
	for i := 0; i < len(path); i++ {
		if c := path[i]; c >= 0x80 || !pathTable[c] {
			return false
		}
	}
	for i := 0; i < len(query); i++ {
		if c := query[i]; c <= ' ' || c >= 0x7f || c == '%' || c == '#' {
			return false
		}
	}
	return true
}

// pathTable holds the bytes URL.EscapedPath writes unescaped.
var pathTable = func() (t [128]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
		t[c-'a'+'A'] = true
	}
	for _, c := range "-._~$&+,/:;=@" {
		t[c] = true
	}
	return t
}()

// validHost reports whether h may be a Host header (net/http's rule: the
// bytes of a host, a port, an IPv6 literal or a percent-escape).
func validHost(h string) bool {
	for i := 0; i < len(h); i++ {
		c := h[i]
		if c >= 0x80 || !hostTable[c] {
			return false
		}
	}
	return true
}

var hostTable = func() (t [128]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
		t[c-'a'+'A'] = true
	}
	for _, c := range "!$%&'()*+,-.:;=[]_~" {
		t[c] = true
	}
	return t
}()

// closeRequested reports whether the client wants the connection closed
// after this request.
func closeRequested(r *http.Request) bool {
	conn := r.Header["Connection"]
	if r.ProtoMajor == 1 && r.ProtoMinor == 0 {
		return !hasToken(conn, "keep-alive")
	}
	return len(conn) > 0 && hasToken(conn, "close")
}

// refuse answers a request the loop will not serve and closes the
// connection the way net/http does, letting the client read the answer
// before the socket goes.
func (sc *serverConn) refuse(status int, msg string) {
	text := strconv.Itoa(status) + " " + http.StatusText(status)
	if msg != "" {
		text += ": " + msg
	}
	sc.bw.WriteString("HTTP/1.1 " + strconv.Itoa(status) + " " + http.StatusText(status) +
		"\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n" + text)
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
	var body *reqBody
	if r.ContentLength != 0 {
		body = &reqBody{sc: sc, left: r.ContentLength, trailer: r.Trailer}
		if e := r.Header["Expect"]; len(e) > 0 {
			if len(e) > 1 || !strings.EqualFold(e[0], "100-continue") {
				sc.refuse(http.StatusExpectationFailed, "")
				return false
			}
			body.expect = r.ProtoMinor >= 1
		}
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
	sc.continued = false
	if body == nil {
		// A body is read by the handler; only a bodyless request's
		// connection is free for the watch to read.
		sc.watchMu.Lock()
		sc.watchOff = false
		sc.watchMu.Unlock()
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
	if !ok || sc.hijack || sc.gone.Load() {
		return false // aborted, upgraded or abandoned: no answer to finish
	}
	if body != nil && !body.finish() {
		w.closeAfter = true
	}
	w.finish()
	if w.closeAfter || fs.shutting.Load() {
		if body != nil && !body.eof {
			sc.lingerClose()
		}
		return false
	}
	sc.state.Store(connIdle)
	if fs.shutting.Load() {
		return false
	}
	if to := fs.timeouts.Idle.D(); to > 0 {
		sc.c.SetReadDeadline(time.Now().Add(to))
	} else if body != nil || watched {
		sc.c.SetReadDeadline(time.Time{})
	}
	return true
}

// watch runs on the watch timer's goroutine once a bodyless request has run
// for watchAfter.
func (sc *serverConn) watch() {
	sc.watchMu.Lock()
	if sc.watchOff {
		sc.watchMu.Unlock()
		return
	}
	sc.fs.watches.Add(1)
	done := make(chan struct{})
	sc.watchDone = done
	// No deadline but unwatch's: an idle deadline left from before must
	// not end the watch of a long request.
	sc.c.SetReadDeadline(time.Time{})
	sc.watchMu.Unlock()
	defer close(done)
	n, err := sc.c.Read(sc.watchBuf[:])
	if n == 1 {
		sc.peeked = true // read by the loop once done is closed
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
	if sc.watchTimer.Stop() {
		return false
	}
	sc.watchMu.Lock()
	sc.watchOff = true
	done := sc.watchDone
	sc.watchDone = nil
	sc.watchMu.Unlock()
	if done == nil {
		return false
	}
	sc.c.SetReadDeadline(aLongTimeAgo)
	<-done
	return true
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

// reqBody is a request's body on the loop: Content-Length or chunked, read
// from the connection's buffer. It is safe for the concurrent Read and
// Close of a Transport's writer and the server.
type reqBody struct {
	mu      sync.Mutex
	sc      *serverConn
	left    int64 // bytes left of a Content-Length body; -1 for chunked
	chunked io.Reader
	trailer http.Header
	expect  bool // a 100 Continue is owed before the first read
	eof     bool
	closed  bool
	err     error
}

func (b *reqBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return 0, http.ErrBodyReadAfterClose
	}
	return b.read(p)
}

func (b *reqBody) read(p []byte) (int, error) {
	if b.eof {
		return 0, io.EOF
	}
	if b.err != nil {
		return 0, b.err
	}
	if b.expect {
		b.expect = false
		b.sc.sendContinue()
	}
	br := b.sc.br
	if b.left >= 0 {
		if int64(len(p)) > b.left {
			p = p[:b.left]
		}
		n, err := br.Read(p)
		b.left -= int64(n)
		if b.left == 0 {
			b.eof = true
			return n, io.EOF
		}
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		b.err = err
		return n, err
	}
	if b.chunked == nil {
		b.chunked = newChunkedReader(br)
	}
	n, err := b.chunked.Read(p)
	if err == io.EOF {
		if err = b.readTrailer(); err == nil {
			b.eof = true
			return n, io.EOF
		}
	}
	b.err = err
	return n, err
}

// readTrailer reads the trailer section after the last chunk into the
// announced keys of the request's Trailer.
func (b *reqBody) readTrailer() error {
	total := 0
	for {
		line, err := b.sc.br.ReadSlice('\n')
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
		if total += len(line); total > b.sc.fs.maxHeader {
			return errors.New("request trailer too large")
		}
		l := strings.TrimRight(string(line), "\r\n")
		if l == "" {
			return nil
		}
		k, v, ok := strings.Cut(l, ":")
		if !ok {
			return errors.New("malformed trailer line")
		}
		if key := textprotoKey(k); key != "" && b.trailer != nil {
			if _, announced := b.trailer[key]; announced {
				b.trailer[key] = append(b.trailer[key], strings.TrimSpace(v))
			}
		}
	}
}

// Close is the Transport's or the handler's: the server reads what is
// left after the handler returns.
func (b *reqBody) Close() error { return nil }

// finish ends the body after the handler: what it left unread is read and
// dropped when it is small, so the connection can carry the next request.
// It reports whether the connection can stay open.
func (b *reqBody) finish() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
	if b.eof {
		return true
	}
	if b.err != nil || b.expect && !b.sc.continued {
		// Broken, or the client still waits for a 100 Continue before it
		// sends the body: the connection cannot be reused.
		return false
	}
	if b.left > maxDrain {
		return false
	}
	var buf [4 << 10]byte
	for drained := 0; drained <= maxDrain; {
		n, err := b.read(buf[:])
		drained += n
		if err == io.EOF {
			return true
		}
		if err != nil {
			return false
		}
	}
	return false
}

// sendContinue writes the interim 100 Continue unless the answer's head
// has gone already.
func (sc *serverConn) sendContinue() {
	sc.wmu.Lock()
	defer sc.wmu.Unlock()
	if sc.continued {
		return
	}
	sc.continued = true
	sc.bw.WriteString("HTTP/1.1 100 Continue\r\n\r\n")
	sc.bw.Flush()
}

// respWriter is the http.ResponseWriter of the loop, reused per request.
// It holds an answer without a Content-Length back while it is short, so
// that it can go with one; a longer one goes chunked (HTTP/1.1) or until
// the close (HTTP/1.0).
type respWriter struct {
	sc          *serverConn
	req         *http.Request
	header      http.Header
	status      int
	wroteHeader bool
	headSent    bool
	length      int64 // declared Content-Length, or -1
	written     int64
	chunked     bool
	noBody      bool // HEAD, 204, 304: bytes written are dropped
	closeAfter  bool
	hijacked    bool
	pending     []byte
}

var (
	_ http.ResponseWriter = (*respWriter)(nil)
	_ http.Flusher        = (*respWriter)(nil)
	_ http.Hijacker       = (*respWriter)(nil)
)

func (w *respWriter) reset(r *http.Request) {
	clear(w.header)
	*w = respWriter{sc: w.sc, req: r, header: w.header, length: -1, pending: w.pending[:0]}
}

func (w *respWriter) Header() http.Header { return w.header }

func (w *respWriter) WriteHeader(code int) {
	if w.hijacked || w.wroteHeader {
		return
	}
	if code < 100 || code > 999 {
		panic(fmt.Sprintf("invalid WriteHeader code %v", code))
	}
	if code < 200 && code != http.StatusSwitchingProtocols {
		w.interim(code)
		return
	}
	w.wroteHeader, w.status = true, code
	if cl := w.header["Content-Length"]; len(cl) > 0 {
		if w.length = parseLength(strings.TrimSpace(cl[0])); w.length < 0 {
			delete(w.header, "Content-Length")
		}
	}
	switch {
	case code == http.StatusNoContent:
		delete(w.header, "Content-Length")
		w.length = -1
		w.noBody = true
	case code == http.StatusNotModified || w.req.Method == http.MethodHead:
		w.noBody = true
	}
}

// interim sends a 1xx answer with the header as it stands.
func (w *respWriter) interim(code int) {
	if w.req.ProtoMinor == 0 {
		return
	}
	sc := w.sc
	sc.wmu.Lock()
	defer sc.wmu.Unlock()
	if w.headSent {
		return
	}
	if code == http.StatusContinue {
		if sc.continued {
			return
		}
		sc.continued = true
	}
	sc.bw.WriteString(statusLine(code))
	w.writeFields(false)
	sc.bw.WriteString("\r\n")
	sc.bw.Flush()
}

func (w *respWriter) Write(p []byte) (int, error) {
	if w.hijacked {
		return 0, http.ErrHijacked
	}
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if w.noBody {
		if w.req.Method == http.MethodHead {
			w.written += int64(len(p))
			return len(p), nil
		}
		return 0, http.ErrBodyNotAllowed
	}
	if w.length >= 0 && w.written+int64(len(p)) > w.length {
		return 0, http.ErrContentLength
	}
	w.written += int64(len(p))
	if !w.headSent {
		if w.length < 0 && len(w.pending)+len(p) <= pendingMax {
			w.pending = append(w.pending, p...)
			return len(p), nil
		}
		w.sendHead()
	}
	return w.writeBody(p)
}

func (w *respWriter) writeBody(p []byte) (int, error) {
	bw := w.sc.bw
	if !w.chunked {
		return bw.Write(p)
	}
	if len(p) == 0 {
		return 0, nil
	}
	bw.Write(strconv.AppendInt(w.sc.scratch[:0], int64(len(p)), 16))
	bw.WriteString("\r\n")
	n, err := bw.Write(p)
	if err == nil {
		_, err = bw.WriteString("\r\n")
	}
	return n, err
}

// sendHead writes the status line and header; a body whose length is
// still unknown goes chunked, or until the close for HTTP/1.0.
func (w *respWriter) sendHead() {
	sc := w.sc
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	sc.wmu.Lock()
	w.headSent = true
	sc.continued = true
	sc.wmu.Unlock()
	streaming := w.length < 0
	r := w.req
	if r.Close || sc.fs.shutting.Load() || hasToken(w.header["Connection"], "close") {
		w.closeAfter = true
	}
	if streaming && !w.noBody {
		if r.ProtoMinor >= 1 {
			w.chunked = true
		} else {
			w.closeAfter = true // the close ends the body
		}
	}
	bw := sc.bw
	bw.WriteString(statusLine(w.status))
	w.writeFields(true)
	if _, ok := w.header["Date"]; !ok {
		bw.WriteString("Date: ")
		bw.Write(sc.date())
		bw.WriteString("\r\n")
	}
	switch {
	case w.chunked:
		bw.WriteString("Transfer-Encoding: chunked\r\n")
	case w.length >= 0 && w.status != http.StatusNoContent:
		bw.WriteString("Content-Length: ")
		bw.Write(strconv.AppendInt(sc.scratch[:0], w.length, 10))
		bw.WriteString("\r\n")
	}
	switch {
	case w.closeAfter:
		bw.WriteString("Connection: close\r\n")
	case r.ProtoMinor == 0:
		bw.WriteString("Connection: keep-alive\r\n")
	}
	bw.WriteString("\r\n")
}

// writeFields writes the header's fields but the ones the framing owns
// (those too when all is false). Line breaks in values become spaces, as
// net/http does.
func (w *respWriter) writeFields(skipFraming bool) {
	bw := w.sc.bw
	for k, vs := range w.header {
		if skipFraming {
			switch k {
			case "Content-Length", "Transfer-Encoding", "Connection":
				continue
			}
			if strings.HasPrefix(k, http.TrailerPrefix) {
				continue
			}
		}
		if !fieldName(k) {
			continue
		}
		for _, v := range vs {
			bw.WriteString(k)
			bw.WriteString(": ")
			if strings.ContainsAny(v, "\r\n") {
				v = newlineToSpace.Replace(v)
			}
			bw.WriteString(v)
			bw.WriteString("\r\n")
		}
	}
}

var newlineToSpace = strings.NewReplacer("\r", " ", "\n", " ")

func fieldName(k string) bool {
	if k == "" {
		return false
	}
	for i := 0; i < len(k); i++ {
		if !tokenByte(k[i]) {
			return false
		}
	}
	return true
}

// Flush sends what is held back and the buffer.
func (w *respWriter) Flush() {
	if w.hijacked {
		return
	}
	if !w.headSent {
		w.sendHead()
		if len(w.pending) > 0 {
			w.writeBody(w.pending)
			w.pending = w.pending[:0]
		}
	}
	if err := w.sc.bw.Flush(); err != nil {
		w.closeAfter = true
	}
}

// finish completes the answer after the handler returned.
func (w *respWriter) finish() {
	if w.hijacked {
		return
	}
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	bw := w.sc.bw
	if !w.headSent {
		if w.length < 0 && !w.wantsTrailers() {
			switch {
			case !w.noBody:
				w.length = int64(len(w.pending))
			case w.req.Method == http.MethodHead && w.written > 0:
				w.length = w.written
			}
		}
		w.sendHead()
		if len(w.pending) > 0 {
			w.writeBody(w.pending)
		}
	}
	switch {
	case w.chunked:
		bw.WriteString("0\r\n")
		w.writeTrailers()
		bw.WriteString("\r\n")
	case w.length >= 0 && w.written < w.length && !w.noBody:
		w.closeAfter = true // short of its length: the client must not wait
	}
	if err := bw.Flush(); err != nil {
		w.closeAfter = true
	}
	w.pending = w.pending[:0]
}

// wantsTrailers reports whether the handler announced trailers or set
// some with http.TrailerPrefix.
func (w *respWriter) wantsTrailers() bool {
	if len(w.header["Trailer"]) > 0 {
		return w.req.ProtoMinor >= 1
	}
	for k := range w.header {
		if strings.HasPrefix(k, http.TrailerPrefix) {
			return w.req.ProtoMinor >= 1
		}
	}
	return false
}

func (w *respWriter) writeTrailers() {
	bw := w.sc.bw
	write := func(k string, vs []string) {
		if !fieldName(k) {
			return
		}
		for _, v := range vs {
			bw.WriteString(k)
			bw.WriteString(": ")
			bw.WriteString(newlineToSpace.Replace(v))
			bw.WriteString("\r\n")
		}
	}
	for _, list := range w.header["Trailer"] {
		for _, k := range strings.Split(list, ",") {
			if k = textprotoKey(strings.TrimSpace(k)); k != "" {
				write(k, w.header[k])
			}
		}
	}
	for k, vs := range w.header {
		if name, ok := strings.CutPrefix(k, http.TrailerPrefix); ok {
			write(name, vs)
		}
	}
}

// Hijack hands the connection to the handler (an upgrade): the loop lets
// go of it, and Shutdown no longer waits for it.
func (w *respWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if w.hijacked {
		return nil, nil, http.ErrHijacked
	}
	sc := w.sc
	if w.headSent {
		sc.bw.Flush()
	}
	w.hijacked = true
	sc.hijack = true
	sc.unwatch() // the connection is the handler's alone now
	sc.c.SetDeadline(time.Time{})
	sc.fs.forget(sc)
	return sc.c, bufio.NewReadWriter(sc.br, sc.bw), nil
}

// SetReadDeadline and SetWriteDeadline serve http.ResponseController.
func (w *respWriter) SetReadDeadline(t time.Time) error  { return w.sc.c.SetReadDeadline(t) }
func (w *respWriter) SetWriteDeadline(t time.Time) error { return w.sc.c.SetWriteDeadline(t) }

// EnableFullDuplex serves http.ResponseController: the loop always lets a
// handler read the body while it writes the answer.
func (w *respWriter) EnableFullDuplex() error { return nil }

// statusLine returns "HTTP/1.1 CODE TEXT\r\n".
func statusLine(code int) string {
	if code >= 100 && code < 600 {
		if s := statusLines[code]; s != "" {
			return s
		}
	}
	return "HTTP/1.1 " + strconv.Itoa(code) + " " + http.StatusText(code) + "\r\n"
}

var statusLines = func() (t [600]string) {
	for c := 100; c < 600; c++ {
		if text := http.StatusText(c); text != "" {
			t[c] = "HTTP/1.1 " + strconv.Itoa(c) + " " + text + "\r\n"
		}
	}
	return t
}()

// date returns the Date header's value for now, formatted once a second.
func (sc *serverConn) date() []byte {
	d := currentDate.Load()
	now := time.Now().Unix()
	if d == nil || d.unix != now {
		d = &httpDate{unix: now}
		d.text = time.Unix(now, 0).UTC().AppendFormat(d.buf[:0], http.TimeFormat)
		currentDate.Store(d)
	}
	return d.text
}

type httpDate struct {
	unix int64
	buf  [32]byte
	text []byte
}

var currentDate atomic.Pointer[httpDate]

// newChunkedReader reads a chunked body up to (not including) its trailer.
func newChunkedReader(br *bufio.Reader) io.Reader { return &chunkedReader{br: br} }

// chunkedReader decodes chunked transfer coding (RFC 9112 section 7.1),
// leaving the trailer section to its caller.
type chunkedReader struct {
	br   *bufio.Reader
	left int64 // bytes left in the current chunk
	done bool
}

func (c *chunkedReader) Read(p []byte) (int, error) {
	for c.left == 0 {
		if c.done {
			return 0, io.EOF
		}
		size, err := c.chunkSize()
		if err != nil {
			return 0, err
		}
		if size == 0 {
			c.done = true
			return 0, io.EOF
		}
		c.left = size
	}
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	n, err := c.br.Read(p)
	c.left -= int64(n)
	if c.left == 0 && err == nil {
		err = c.crlf()
	}
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

var errChunk = errors.New("malformed chunked encoding")

func (c *chunkedReader) chunkSize() (int64, error) {
	line, err := c.br.ReadSlice('\n')
	if err != nil {
		if err == bufio.ErrBufferFull {
			return 0, errChunk
		}
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return 0, err
	}
	line = bytes.TrimRight(line, "\r\n")
	if i := bytes.IndexByte(line, ';'); i >= 0 {
		line = line[:i] // chunk extensions are ignored
	}
	line = bytes.TrimRight(line, " \t")
	if len(line) == 0 || len(line) > 16 {
		return 0, errChunk
	}
	var n int64
	for _, b := range line {
		var d byte
		switch {
		case '0' <= b && b <= '9':
			d = b - '0'
		case 'a' <= b && b <= 'f':
			d = b - 'a' + 10
		case 'A' <= b && b <= 'F':
			d = b - 'A' + 10
		default:
			return 0, errChunk
		}
		n = n<<4 | int64(d)
	}
	if n < 0 {
		return 0, errChunk
	}
	return n, nil
}

func (c *chunkedReader) crlf() error {
	b, err := c.br.Peek(2)
	if err != nil {
		if err == io.EOF {
			return io.ErrUnexpectedEOF
		}
		return err
	}
	if b[0] != '\r' || b[1] != '\n' {
		return errChunk
	}
	c.br.Discard(2)
	return nil
}
