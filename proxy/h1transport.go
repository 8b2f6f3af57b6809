package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"time"

	"sekisho/proxy/config"
)

// h1Transport is a lean HTTP/1.1 RoundTripper for the requests that make up
// most proxy traffic: GET, HEAD and OPTIONS without a body and without an
// upgrade. It writes the request and reads the response head on the
// caller's goroutine over a pooled keep-alive connection, so a request costs
// no goroutine hand-off and none of http.Transport's per-request
// bookkeeping. Everything else (bodies, upgrades, Expect, h2 and h2c) goes
// to the fallback, a stock *http.Transport with the same settings.
//
// An h1Transport is safe for concurrent use. Its idle connections are
// closed by CloseIdleConnections and after IdleTimeout.
type h1Transport struct {
	fallback *http.Transport

	dialer         *net.Dialer
	tlsConfig      *tls.Config // nil: the transport's default
	headerTimeout  time.Duration
	idleTimeout    time.Duration
	maxIdlePerHost int

	mu   sync.Mutex
	idle map[string][]*h1Conn // by scheme://host:port, most recent last
}

// maxResponseHead bounds an upstream's status line and headers, as
// http.Transport's MaxResponseHeaderBytes does.
const maxResponseHead = 1 << 20

// headLimit stands between a connection and its reader: while a response
// head is read, it lets at most budget bytes through, so an upstream that
// sends endless headers costs bounded memory. A negative budget is no limit.
type headLimit struct {
	conn   net.Conn
	budget int
}

var errHeadTooLarge = errors.New("upstream response head larger than 1 MiB")

func (l *headLimit) Read(p []byte) (int, error) {
	if l.budget < 0 {
		return l.conn.Read(p)
	}
	if l.budget == 0 {
		return 0, errHeadTooLarge
	}
	if len(p) > l.budget {
		p = p[:l.budget]
	}
	n, err := l.conn.Read(p)
	l.budget -= n
	return n, err
}

// h1Conn is one upstream connection with its buffers.
type h1Conn struct {
	conn    net.Conn
	lim     *headLimit
	br      *bufio.Reader
	bw      *bufio.Writer
	key     string
	addr    string
	idleAt  time.Time
	reused  bool
	t       *h1Transport
	stopCtx func() bool // stops the context watch of the request in flight
	cut     func()      // moves the deadline into the past: bound once
	tls     bool
	poll    *socketPoll // nil where the socket cannot be polled
	// bodyDeadline is set while a read deadline of the body idle timeout
	// is on the connection.
	bodyDeadline bool
}

func newH1Transport(fallback *http.Transport, tlsConfig *tls.Config, pc *config.Pool) *h1Transport {
	return &h1Transport{
		fallback:       fallback,
		dialer:         &net.Dialer{Timeout: pc.Timeouts.Connect.D(), KeepAlive: 30 * time.Second},
		tlsConfig:      tlsConfig,
		headerTimeout:  pc.Timeouts.ResponseHeader.D(),
		idleTimeout:    pc.Timeouts.Idle.D(),
		maxIdlePerHost: pc.MaxIdlePerEndpoint,
		idle:           map[string][]*h1Conn{},
	}
}

// lean reports whether r can take the lean path.
func lean(r *http.Request) bool {
	return bodylessIdempotent(r) && (r.URL.Scheme == "http" || r.URL.Scheme == "https")
}

// bodylessIdempotent reports whether r is a GET, HEAD or OPTIONS without a
// body, an upgrade or an expectation: what the lean and the direct paths
// can send over a pooled connection and send again on a fresh one.
func bodylessIdempotent(r *http.Request) bool {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
	default:
		return false
	}
	if r.Body != nil && r.Body != http.NoBody || r.ContentLength > 0 || len(r.TransferEncoding) > 0 {
		return false
	}
	return r.Header.Get("Upgrade") == "" && r.Header.Get("Expect") == ""
}

// RoundTrip sends r, on the lean path when it can.
func (t *h1Transport) RoundTrip(r *http.Request) (*http.Response, error) {
	if !lean(r) {
		return t.fallback.RoundTrip(r)
	}
	x, err := t.exchange(r.Context(), r, r.URL.Scheme+"://"+r.URL.Host, r.URL.Scheme, r.URL.Host, nil)
	return x.resp, err
}

var errStaleConn = errors.New("upstream closed the kept-alive connection")

var errBadStatus = errors.New("upstream answered with a status below 100")

// When an upstream connection may be reused. A connection goes back to the
// idle pool only when
//
//   - its answer ended exactly at its framing boundary: the body was read to
//     its last byte (or the answer had none: HEAD, 1xx, 204, 304), and
//     nothing past that boundary is in the connection's buffer;
//   - neither the request nor the answer asked for a close, and no deadline
//     or cancellation cut the connection meanwhile (stopCtx);
//
// and it is taken out again only when, at that moment and whatever its idle
// age, nothing has arrived on it since: no byte and no EOF (unsolicited,
// a non-blocking poll of the socket). Anything else, a late extra answer
// after a HEAD or a 204, a body after a 304, bytes past a Content-Length,
// a 408 or a close, closes the connection, as Go's Transport closes an idle
// connection on any unsolicited byte: an answer to no request must never
// become the next request's answer. What no proxy can tell apart is a byte
// that arrives after the next request was written; from then on it is that
// request's answer.

// get returns an idle connection to key, or dials one to addr.
func (t *h1Transport) get(ctx context.Context, key, scheme, addr string) (*h1Conn, error) {
	if err := ctx.Err(); err != nil {
		return nil, err // gone: neither a dial nor an idle connection spent on it
	}
	now := time.Now()
	t.mu.Lock()
	for list := t.idle[key]; len(list) > 0; list = t.idle[key] {
		c := list[len(list)-1]
		list[len(list)-1] = nil
		t.idle[key] = list[:len(list)-1]
		t.mu.Unlock()
		if t.idleTimeout > 0 && now.Sub(c.idleAt) > t.idleTimeout || c.unsolicited() {
			c.conn.Close()
			t.mu.Lock()
			continue
		}
		c.reused = true
		return c, nil
	}
	t.mu.Unlock()
	return t.dial(ctx, key, scheme, addr)
}

// unsolicited reports whether anything has arrived on the idle connection
// c: a byte in its buffers, or a byte or an EOF waiting on its socket. It
// never blocks. A TLS connection's own buffers are read with a deadline in the
// past (tls.Conn then returns what it holds without touching the socket);
// any byte waiting on its socket is taken as unsolicited, though it may be
// a late session ticket: the cost is a new connection, never a wrong
// answer.
func (c *h1Conn) unsolicited() bool {
	if c.br.Buffered() > 0 {
		return true
	}
	if c.tls {
		c.conn.SetReadDeadline(aLongTimeAgo)
		_, err := c.br.Peek(1)
		c.conn.SetReadDeadline(time.Time{})
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			return true
		}
	}
	return c.poll != nil && !c.poll.quiet()
}

// dial makes a connection for a request. The connection is not the
// request's: when the request is cancelled while it is being made (a
// client resetting its streams), dial returns at once and the connection,
// once made, waits in the idle pool for the next request, as
// http.Transport's do, rather than costing the upstream a connection per
// cancelled request. The connect timeout bounds it.
func (t *h1Transport) dial(ctx context.Context, key, scheme, addr string) (*h1Conn, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	type dialed struct {
		c   *h1Conn
		err error
	}
	done := make(chan dialed, 1)
	go func() {
		c, err := t.connect(context.WithoutCancel(ctx), key, scheme, addr)
		done <- dialed{c, err}
	}()
	select {
	case d := <-done:
		return d.c, d.err
	case <-ctx.Done():
		go func() {
			if d := <-done; d.err == nil {
				t.put(d.c)
			}
		}()
		return nil, ctx.Err()
	}
}

func (t *h1Transport) connect(ctx context.Context, key, scheme, addr string) (*h1Conn, error) {
	conn, err := t.dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if scheme == "https" {
		cfg := &tls.Config{}
		if t.tlsConfig != nil {
			cfg = t.tlsConfig.Clone()
		}
		if cfg.ServerName == "" {
			cfg.ServerName, _, _ = net.SplitHostPort(addr)
		}
		cfg.NextProtos = []string{"http/1.1"}
		tc := tls.Client(conn, cfg)
		hctx, cancel := context.WithTimeout(ctx, t.dialer.Timeout+5*time.Second)
		err := tc.HandshakeContext(hctx)
		cancel()
		if err != nil {
			conn.Close()
			return nil, err
		}
		conn = tc
	}
	lim := &headLimit{conn: conn, budget: -1}
	c := &h1Conn{conn: conn, lim: lim, br: bufio.NewReaderSize(lim, 16<<10), bw: bufio.NewWriterSize(conn, 4<<10), key: key, addr: addr, t: t,
		tls: scheme == "https", poll: newSocketPoll(conn)}
	c.cut = func() { c.conn.SetDeadline(aLongTimeAgo) }
	return c, nil
}

// put returns c to the idle pool, or closes it when the pool is full.
func (t *h1Transport) put(c *h1Conn) {
	c.idleAt = time.Now()
	t.mu.Lock()
	if list := t.idle[c.key]; len(list) < t.maxIdlePerHost {
		t.idle[c.key] = append(list, c)
		t.mu.Unlock()
		return
	}
	t.mu.Unlock()
	c.conn.Close()
}

// CloseIdleConnections closes every idle connection, of both paths.
func (t *h1Transport) CloseIdleConnections() {
	t.mu.Lock()
	idle := t.idle
	t.idle = map[string][]*h1Conn{}
	t.mu.Unlock()
	for _, list := range idle {
		for _, c := range list {
			c.conn.Close()
		}
	}
	t.fallback.CloseIdleConnections()
}

func (c *h1Conn) close() {
	if c.stopCtx != nil {
		c.stopCtx()
		c.stopCtx = nil
	}
	c.conn.Close()
}

// send writes r's head (rewritten for the direct path when fwd is not nil)
// and waits for the first byte of the answer, within the response header
// timeout. Until the answer is complete, the end of ctx cuts the
// connection's blocked reads and writes.
func (c *h1Conn) send(ctx context.Context, r *http.Request, fwd *forwardedValues) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	// A blocked read or write is cut by moving the deadline into the past
	// when the request's context ends.
	c.stopCtx = context.AfterFunc(ctx, c.cut)
	var err error
	if fwd != nil {
		err = writeForwardHead(c.bw, r, fwd, c.addr)
	} else {
		err = writeRequestHead(c.bw, r)
	}
	if err != nil {
		return c.wrapErr(ctx, err, false)
	}
	if err := c.bw.Flush(); err != nil {
		// A kept-alive connection the upstream had closed can fail as
		// early as the write.
		return c.wrapErr(ctx, err, c.reused)
	}
	if c.t.headerTimeout > 0 {
		c.conn.SetReadDeadline(time.Now().Add(c.t.headerTimeout))
	}
	c.lim.budget = maxResponseHead
	if c.reused {
		// Wait for the first byte separately: nothing at all means the
		// upstream had closed the idle connection (errStaleConn).
		if _, err := c.br.Peek(1); err != nil {
			return c.wrapErr(ctx, err, true)
		}
	}
	return nil
}

// readResponse reads the answer's head into an *http.Response whose body
// gives the connection back to the pool at its clean end.
func (c *h1Conn) readResponse(ctx context.Context, r *http.Request) (*http.Response, error) {
	var resp *http.Response
	var err error
	for {
		resp, err = http.ReadResponse(c.br, r)
		if err != nil {
			return nil, c.wrapErr(ctx, err, false)
		}
		if resp.StatusCode < 100 {
			// Not an interim answer to skip: what follows it must not be
			// taken for the answer (http.Transport fails it too).
			return nil, errBadStatus
		}
		// Informational answers other than 101 are not forwarded.
		if resp.StatusCode >= 200 || resp.StatusCode == http.StatusSwitchingProtocols {
			break
		}
	}
	if c.reused && resp.StatusCode == http.StatusRequestTimeout {
		// An idle connection's 408, sent before the request arrived: the
		// caller sends the request again on a fresh connection.
		return nil, errStaleConn
	}
	c.endHead(ctx)
	// After a 101 the connection speaks another protocol: never reused
	// (these requests ask for no upgrade, so it is unsolicited too).
	reuse := !resp.Close && !r.Close && resp.ProtoAtLeast(1, 1) && resp.StatusCode != http.StatusSwitchingProtocols
	body := &h1Body{rc: resp.Body, c: c, ctx: ctx, reuse: reuse}
	if resp.Body == http.NoBody {
		// HEAD, 204, 304: the answer is complete, the connection free now.
		body.finish(true)
		return resp, nil
	}
	resp.Body = body
	return resp, nil
}

// endHead marks the answer's head as read: the body is bounded by its own
// framing, and by no header timeout. It runs before anything can hand the
// connection back to the pool.
func (c *h1Conn) endHead(ctx context.Context) {
	c.lim.budget = -1
	if c.t.headerTimeout > 0 {
		c.conn.SetReadDeadline(time.Time{})
		if ctx.Err() != nil {
			// Cancelled between the head and here: the watch's deadline
			// was just cleared, so set it again.
			c.conn.SetDeadline(aLongTimeAgo)
		}
	}
}

var aLongTimeAgo = time.Unix(1, 0)

// writeRequestHead writes a bodyless request's head, as Request.Write would
// but without its per-request allocations. A request it cannot write
// faithfully (an opaque URL, a value with a line break) goes through
// Request.Write itself.
func writeRequestHead(w *bufio.Writer, r *http.Request) error {
	if r.URL.Opaque != "" || r.Close || !headerSafe(r.Header) || strings.ContainsAny(r.Host, "\r\n ") {
		return r.Write(w)
	}
	host := r.Host
	if host == "" {
		host = r.URL.Host
	}
	writeRequestLine(w, r, host)
	for k, vs := range r.Header {
		if k == "Host" {
			continue // r.Host is the Host
		}
		for _, v := range vs {
			if v == "" && k == "User-Agent" {
				continue // ReverseProxy's way of saying "send none"
			}
			w.WriteString(k)
			w.WriteString(": ")
			w.WriteString(v)
			w.WriteString("\r\n")
		}
	}
	_, err := w.WriteString("\r\n")
	return err
}

// writeRequestLine writes r's request line and the Host header.
func writeRequestLine(w *bufio.Writer, r *http.Request, host string) {
	w.WriteString(r.Method)
	w.WriteByte(' ')
	if p := r.URL.EscapedPath(); p != "" {
		w.WriteString(p)
	} else {
		w.WriteByte('/')
	}
	if r.URL.ForceQuery || r.URL.RawQuery != "" {
		w.WriteByte('?')
		w.WriteString(r.URL.RawQuery)
	}
	w.WriteString(" HTTP/1.1\r\nHost: ")
	w.WriteString(host)
	w.WriteString("\r\n")
}

// headerSafe reports whether every name and value can go on the wire as
// it is.
func headerSafe(h http.Header) bool {
	for k, vs := range h {
		if strings.ContainsAny(k, "\r\n: ") {
			return false
		}
		for _, v := range vs {
			if strings.ContainsAny(v, "\r\n") {
				return false
			}
		}
	}
	return true
}

// timeoutError is returned when the response header timeout passes.
type timeoutError struct{ d time.Duration }

func (e timeoutError) Error() string {
	return fmt.Sprintf("timeout awaiting response headers after %s", e.d)
}
func (timeoutError) Timeout() bool   { return true }
func (timeoutError) Temporary() bool { return true }

func (c *h1Conn) wrapErr(ctx context.Context, err error, firstByte bool) error {
	if ctxErr := ctx.Err(); ctxErr != nil {
		return ctxErr
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return timeoutError{c.t.headerTimeout}
	}
	if firstByte && (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || isConnReset(err) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET)) {
		return errStaleConn
	}
	return err
}

func isConnReset(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "read"
}

// bodyIdleError ends an upstream body that sent nothing for the pool's
// timeouts.body_idle.
type bodyIdleError struct{ d time.Duration }

func (e bodyIdleError) Error() string { return fmt.Sprintf("upstream body idle for %s", e.d) }
func (bodyIdleError) Timeout() bool   { return true }
func (bodyIdleError) Temporary() bool { return false }

// awaitBody bounds the body read that is about to wait for the upstream by
// idle (none when 0). The end of ctx still cuts it: were the context's cut
// (a deadline in the past) to have run already, it is set again.
func (c *h1Conn) awaitBody(ctx context.Context, idle time.Duration) {
	if idle <= 0 {
		return
	}
	c.bodyDeadline = true
	c.conn.SetReadDeadline(time.Now().Add(idle))
	if ctx.Err() != nil {
		c.conn.SetDeadline(aLongTimeAgo)
	}
}

// bodyErr tells a body read that outwaited awaitBody's deadline
// (bodyIdleError) from the rest.
func (c *h1Conn) bodyErr(ctx context.Context, err error, idle time.Duration) error {
	var ne net.Error
	if c.bodyDeadline && ctx.Err() == nil && errors.As(err, &ne) && ne.Timeout() {
		return bodyIdleError{idle}
	}
	return err
}

// h1Body is a response body on the lean path: at its clean end the
// connection goes back to the pool; closed early, the connection is closed
// (what is left of the body would have to be read first).
type h1Body struct {
	rc    io.ReadCloser
	c     *h1Conn
	ctx   context.Context
	reuse bool
	done  bool
	ep    interface{ End() } // set by the pool: the endpoint's in-flight count
	// Set by the pool: a read that waits longer than idle for the
	// upstream ends the body, counted by idleTimeouts.
	idle         time.Duration
	idleTimeouts interface{ Inc() }
}

func (b *h1Body) Read(p []byte) (int, error) {
	if b.done {
		return 0, io.EOF
	}
	if b.c.br.Buffered() == 0 {
		b.c.awaitBody(b.ctx, b.idle)
	}
	n, err := b.rc.Read(p)
	if err == io.EOF {
		b.finish(true)
	} else if err != nil {
		if err = b.c.bodyErr(b.ctx, err, b.idle); b.idleTimeouts != nil {
			var idle bodyIdleError
			if errors.As(err, &idle) {
				b.idleTimeouts.Inc()
			}
		}
		b.finish(false)
	}
	return n, err
}

func (b *h1Body) Close() error {
	if !b.done {
		b.finish(false)
	}
	return nil
}

func (b *h1Body) finish(clean bool) {
	b.done = true
	if b.ep != nil {
		b.ep.End()
		b.ep = nil
	}
	b.c.release(clean && b.reuse)
}

// release ends the request in flight on c: c goes back to the idle pool
// when reuse is true (its answer ended exactly at its framing boundary and
// neither side asked for a close), no cancellation cut it and nothing past
// the answer is buffered; otherwise it is closed.
func (c *h1Conn) release(reuse bool) {
	stopped := c.stopCtx()
	c.stopCtx = nil
	if reuse && stopped && c.br.Buffered() == 0 {
		if c.bodyDeadline {
			c.bodyDeadline = false
			c.conn.SetReadDeadline(time.Time{})
		}
		c.reused = false
		c.t.put(c)
		return
	}
	c.conn.Close()
}
