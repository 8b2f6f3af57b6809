package http1

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Transport is a lean HTTP/1.1 client for the requests that make up most
// proxy traffic: GET, HEAD and OPTIONS without a body and without an
// upgrade. It writes the request and reads the response head on the
// caller's goroutine over a pooled keep-alive connection, so a request
// costs no goroutine hand-off and none of http.Transport's per-request
// bookkeeping. RoundTrip hands everything else (bodies, upgrades, Expect)
// to Fallback; Forward is the direct path of a proxy, which writes the
// forwarded head and relays a plain answer without building either side's
// header map.
//
// The zero Transport is usable. Its fields must not change once it is in
// use; it must not be copied after first use; it is safe for concurrent
// use. Its idle connections are closed by CloseIdleConnections, by
// CloseIdleConnectionsTo for one address, and once idle for
// IdleConnTimeout (by a timer, as http.Transport's: a connection to an
// address no request asks for again is closed too).
type Transport struct {
	// DialContext dials the TCP connections. If nil, a net.Dialer's with
	// a 30-second keep-alive.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// TLSClientConfig configures the TLS connections of https requests;
	// its ServerName defaults to the address's host and its NextProtos are
	// always http/1.1. If nil, the zero tls.Config.
	TLSClientConfig *tls.Config
	// TLSHandshakeTimeout bounds a TLS handshake. Zero means no limit.
	TLSHandshakeTimeout time.Duration
	// MaxIdleConnsPerHost bounds the kept-alive connections waiting per
	// scheme and address. Zero means http.DefaultMaxIdleConnsPerHost.
	MaxIdleConnsPerHost int
	// IdleConnTimeout is how long a kept-alive connection may wait for its
	// next request. Zero means no limit.
	IdleConnTimeout time.Duration
	// ResponseHeaderTimeout bounds the wait for an answer's head once the
	// request is written. Zero means no limit.
	ResponseHeaderTimeout time.Duration
	// BodyIdleTimeout ends an answer's body (with a *BodyIdleError) when
	// the upstream sends nothing of it for this long. Zero means no limit.
	BodyIdleTimeout time.Duration
	// Fallback sends the requests RoundTrip does not send itself. If nil,
	// http.DefaultTransport.
	Fallback http.RoundTripper

	mu   sync.Mutex
	idle map[connKey][]*conn // most recent last
}

// connKey is what the idle pool is keyed by.
type connKey struct{ scheme, addr string }

var _ http.RoundTripper = (*Transport)(nil)

// maxResponseHead bounds an upstream's status line and headers, as
// http.Transport's MaxResponseHeaderBytes does.
const maxResponseHead = 1 << 20

var defaultDialer = &net.Dialer{KeepAlive: 30 * time.Second}

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

// conn is one upstream connection with its buffers.
type conn struct {
	conn    net.Conn
	lim     *headLimit
	br      *bufio.Reader
	bw      *bufio.Writer
	key     connKey
	idleAt  time.Time   // when it last went idle; under t.mu
	expiry  *time.Timer // closes it once idle for IdleConnTimeout; armed while idle
	reused  bool
	t       *Transport
	stopCtx func() bool // stops the context watch of the request in flight
	cut     func()      // moves the deadline into the past: bound once
	tls     bool
	poll    *socketPoll // nil where the socket cannot be polled
	// bodyDeadline is set while a read deadline of the body idle timeout
	// is on the connection.
	bodyDeadline bool
}

// pooled reports whether RoundTrip sends r itself.
func pooled(r *http.Request) bool {
	return replayable(r) && (r.URL.Scheme == "http" || r.URL.Scheme == "https")
}

// replayable reports whether r is a GET, HEAD or OPTIONS without a body, an
// upgrade or an expectation: what the Transport can send over a pooled
// connection and send again on a fresh one.
func replayable(r *http.Request) bool {
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

// RoundTrip sends r itself when it is a bodyless GET, HEAD or OPTIONS
// without an upgrade or an expectation, and through Fallback otherwise.
// The body of a response it read itself is a NotifyingBody.
func (t *Transport) RoundTrip(r *http.Request) (*http.Response, error) {
	if !pooled(r) {
		fb := t.Fallback
		if fb == nil {
			fb = http.DefaultTransport
		}
		return fb.RoundTrip(r)
	}
	a, err := t.do(r.Context(), r, r.URL.Scheme, r.URL.Host, nil)
	return a.Response, err
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

// do sends r to addr and reads the answer's head, written for the direct
// path when fwd is not nil. A kept-alive connection the upstream had closed
// fails before a byte of the answer; the request is idempotent and
// bodyless, so it goes again on a fresh connection, as http.Transport does.
func (t *Transport) do(ctx context.Context, r *http.Request, scheme, addr string, fwd *Forwarded) (Answer, error) {
	key := connKey{scheme, addr}
	for {
		c, err := t.get(ctx, key)
		if err != nil {
			return Answer{}, err
		}
		a, err := c.roundTrip(ctx, r, fwd)
		if err == nil {
			return a, nil
		}
		c.close()
		if c.reused && ctx.Err() == nil && err == errStaleConn {
			continue
		}
		return Answer{}, err
	}
}

// get returns an idle connection to key, or dials one.
func (t *Transport) get(ctx context.Context, key connKey) (*conn, error) {
	if err := ctx.Err(); err != nil {
		return nil, err // gone: neither a dial nor an idle connection spent on it
	}
	now := time.Now()
	t.mu.Lock()
	for list := t.idle[key]; len(list) > 0; list = t.idle[key] {
		c := list[len(list)-1]
		list[len(list)-1] = nil
		t.idle[key] = list[:len(list)-1] // its capacity kept for the next put
		idleAt := c.idleAt
		t.mu.Unlock()
		if c.expiry != nil {
			c.expiry.Stop() // a timer already firing finds c gone from the pool
		}
		if t.IdleConnTimeout > 0 && now.Sub(idleAt) > t.IdleConnTimeout || c.unsolicited() {
			c.conn.Close()
			t.mu.Lock()
			continue
		}
		c.reused = true
		return c, nil
	}
	t.mu.Unlock()
	return t.dial(ctx, key)
}

// unsolicited reports whether anything has arrived on the idle connection
// c: a byte in its buffers, or a byte or an EOF waiting on its socket. It
// never blocks. A TLS connection's own buffers are read with a deadline in the
// past (tls.Conn then returns what it holds without touching the socket);
// any byte waiting on its socket is taken as unsolicited, though it may be
// a late session ticket: the cost is a new connection, never a wrong
// answer.
func (c *conn) unsolicited() bool {
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
// cancelled request. The dialer's timeout bounds it.
func (t *Transport) dial(ctx context.Context, key connKey) (*conn, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	type dialed struct {
		c   *conn
		err error
	}
	done := make(chan dialed, 1)
	go func() {
		c, err := t.connect(context.WithoutCancel(ctx), key)
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

func (t *Transport) connect(ctx context.Context, key connKey) (*conn, error) {
	dial := t.DialContext
	if dial == nil {
		dial = defaultDialer.DialContext
	}
	nc, err := dial(ctx, "tcp", key.addr)
	if err != nil {
		return nil, err
	}
	if key.scheme == "https" {
		cfg := &tls.Config{}
		if t.TLSClientConfig != nil {
			cfg = t.TLSClientConfig.Clone()
		}
		if cfg.ServerName == "" {
			cfg.ServerName, _, _ = net.SplitHostPort(key.addr)
		}
		cfg.NextProtos = []string{"http/1.1"}
		tc := tls.Client(nc, cfg)
		hctx, cancel := ctx, context.CancelFunc(func() {})
		if t.TLSHandshakeTimeout > 0 {
			hctx, cancel = context.WithTimeout(ctx, t.TLSHandshakeTimeout)
		}
		err := tc.HandshakeContext(hctx)
		cancel()
		if err != nil {
			nc.Close()
			return nil, err
		}
		nc = tc
	}
	lim := &headLimit{conn: nc, budget: -1}
	c := &conn{conn: nc, lim: lim, br: bufio.NewReaderSize(lim, 16<<10), bw: bufio.NewWriterSize(nc, 4<<10), key: key, t: t,
		tls: key.scheme == "https", poll: newSocketPoll(nc)}
	c.cut = func() { c.conn.SetDeadline(aLongTimeAgo) }
	return c, nil
}

// put returns c to the idle pool, or closes it when the pool is full.
func (t *Transport) put(c *conn) {
	limit := t.MaxIdleConnsPerHost
	if limit == 0 {
		limit = http.DefaultMaxIdleConnsPerHost
	}
	t.mu.Lock()
	if list := t.idle[c.key]; len(list) < limit {
		if t.idle == nil {
			t.idle = map[connKey][]*conn{}
		}
		t.idle[c.key] = append(list, c)
		c.idleAt = time.Now()
		if t.IdleConnTimeout > 0 {
			if c.expiry == nil {
				c.expiry = time.AfterFunc(t.IdleConnTimeout, func() { t.expire(c) })
			} else {
				c.expiry.Reset(t.IdleConnTimeout)
			}
		}
		t.mu.Unlock()
		return
	}
	t.mu.Unlock()
	c.conn.Close()
}

// expire closes c when its idle timer fires, if c is still idle and has
// been for IdleConnTimeout: a request may have taken it, or taken it and
// put it back, since the timer was armed.
func (t *Transport) expire(c *conn) {
	t.mu.Lock()
	list := t.idle[c.key]
	i := slices.Index(list, c)
	if i < 0 || time.Since(c.idleAt) < t.IdleConnTimeout {
		t.mu.Unlock()
		return
	}
	if len(list) == 1 {
		delete(t.idle, c.key) // an address no request asks for leaves nothing behind
	} else {
		t.idle[c.key] = slices.Delete(list, i, i+1) // in order: the most recent stays last
	}
	t.mu.Unlock()
	c.conn.Close()
}

// CloseIdleConnectionsTo closes the idle connections to addr (host:port),
// of either scheme: a pool calls it for an endpoint it no longer has.
// Fallback's are left to its own idle timeout.
func (t *Transport) CloseIdleConnectionsTo(addr string) {
	var closing []*conn
	t.mu.Lock()
	for _, scheme := range [...]string{"http", "https"} {
		key := connKey{scheme, addr}
		closing = append(closing, t.idle[key]...)
		delete(t.idle, key)
	}
	t.mu.Unlock()
	for _, c := range closing {
		if c.expiry != nil {
			c.expiry.Stop()
		}
		c.conn.Close()
	}
}

// CloseIdleConnections closes every idle connection, Fallback's included.
func (t *Transport) CloseIdleConnections() {
	t.mu.Lock()
	idle := t.idle
	t.idle = nil
	t.mu.Unlock()
	for _, list := range idle {
		for _, c := range list {
			if c.expiry != nil {
				c.expiry.Stop()
			}
			c.conn.Close()
		}
	}
	if ci, ok := t.Fallback.(interface{ CloseIdleConnections() }); ok {
		ci.CloseIdleConnections()
	}
}

// close ends a connection a request held, instead of returning it to the
// idle pool: its context watch stops, and its address's idle-pool entry
// goes if this was the entry's last connection.
func (c *conn) close() {
	if c.stopCtx != nil {
		c.stopCtx()
		c.stopCtx = nil
	}
	c.conn.Close()
	c.t.forget(c.key)
}

// send writes r's head (rewritten for the direct path when fwd is not nil)
// and waits for the first byte of the answer, within the response header
// timeout. Until the answer is complete, the end of ctx cuts the
// connection's blocked reads and writes.
func (c *conn) send(ctx context.Context, r *http.Request, fwd *Forwarded) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	// A blocked read or write is cut by moving the deadline into the past
	// when the request's context ends.
	c.stopCtx = context.AfterFunc(ctx, c.cut)
	var err error
	if fwd != nil {
		err = writeForwardHead(c.bw, r, fwd, c.key.addr)
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
	if to := c.t.ResponseHeaderTimeout; to > 0 {
		c.conn.SetReadDeadline(time.Now().Add(to))
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
func (c *conn) readResponse(ctx context.Context, r *http.Request) (*http.Response, error) {
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
	b := &body{rc: resp.Body, c: c, ctx: ctx, reuse: reuse}
	if resp.Body == http.NoBody {
		// HEAD, 204, 304: the answer is complete, the connection free now.
		b.finish(true, nil)
		return resp, nil
	}
	resp.Body = b
	return resp, nil
}

// endHead marks the answer's head as read: the body is bounded by its own
// framing, and by no header timeout. It runs before anything can hand the
// connection back to the pool.
func (c *conn) endHead(ctx context.Context) {
	c.lim.budget = -1
	if c.t.ResponseHeaderTimeout > 0 {
		c.conn.SetReadDeadline(time.Time{})
		if ctx.Err() != nil {
			// Cancelled between the head and here: the watch's deadline
			// was just cleared, so set it again.
			c.conn.SetDeadline(aLongTimeAgo)
		}
	}
}

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
			writeField(w, k, v)
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
	w.WriteString(" HTTP/1.1\r\n")
	writeField(w, "Host", host)
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

func (c *conn) wrapErr(ctx context.Context, err error, firstByte bool) error {
	if ctxErr := ctx.Err(); ctxErr != nil {
		return ctxErr
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return timeoutError{c.t.ResponseHeaderTimeout}
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

// BodyIdleError ends an upstream body that sent nothing for the
// Transport's BodyIdleTimeout (Idle).
type BodyIdleError struct{ Idle time.Duration }

func (e *BodyIdleError) Error() string { return fmt.Sprintf("upstream body idle for %s", e.Idle) }

// Timeout reports true: a BodyIdleError is a net.Error that timed out.
func (*BodyIdleError) Timeout() bool { return true }

// Temporary reports false.
func (*BodyIdleError) Temporary() bool { return false }

// awaitBody bounds the body read that is about to wait for the upstream by
// the body idle timeout. The end of ctx still cuts it: were the context's
// cut (a deadline in the past) to have run already, it is set again.
func (c *conn) awaitBody(ctx context.Context) {
	idle := c.t.BodyIdleTimeout
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
// (*BodyIdleError) from the rest.
func (c *conn) bodyErr(ctx context.Context, err error) error {
	var ne net.Error
	if c.bodyDeadline && ctx.Err() == nil && errors.As(err, &ne) && ne.Timeout() {
		return &BodyIdleError{c.t.BodyIdleTimeout}
	}
	return err
}

// BodyEnder is told once that a response body of the Transport ended: err
// is the read error that ended it (a *BodyIdleError when the upstream
// stalled), nil at its end or when it was closed early.
type BodyEnder interface{ EndBody(err error) }

// NotifyingBody is the body of a response the Transport read itself.
// NotifyEnd, called before the first Read, names who is told of its end.
type NotifyingBody interface {
	io.ReadCloser
	NotifyEnd(BodyEnder)
}

// body is a response body read by the Transport: at its clean end the
// connection goes back to the pool; closed early, the connection is closed
// (what is left of the body would have to be read first).
type body struct {
	rc    io.ReadCloser
	c     *conn
	ctx   context.Context
	reuse bool
	done  bool
	ender BodyEnder
}

var _ NotifyingBody = (*body)(nil)

func (b *body) NotifyEnd(e BodyEnder) { b.ender = e }

func (b *body) Read(p []byte) (int, error) {
	if b.done {
		return 0, io.EOF
	}
	if b.c.br.Buffered() == 0 {
		b.c.awaitBody(b.ctx)
	}
	n, err := b.rc.Read(p)
	if err == io.EOF {
		b.finish(true, nil)
	} else if err != nil {
		err = b.c.bodyErr(b.ctx, err)
		b.finish(false, err)
	}
	return n, err
}

func (b *body) Close() error {
	if !b.done {
		b.finish(false, nil)
	}
	return nil
}

func (b *body) finish(clean bool, err error) {
	b.done = true
	if b.ender != nil {
		b.ender.EndBody(err)
		b.ender = nil
	}
	b.c.release(clean && b.reuse)
}

// release ends the request in flight on c: c goes back to the idle pool
// when reuse is true (its answer ended exactly at its framing boundary and
// neither side asked for a close), no cancellation cut it and nothing past
// the answer is buffered; otherwise it is closed.
func (c *conn) release(reuse bool) {
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
	c.close()
}

// forget drops key's entry from the idle pool when it holds no connection:
// get keeps an emptied entry for the put that usually follows, and a
// connection closed instead (an error, Connection: close) must not leave
// the entry of an address no request asks for again.
func (t *Transport) forget(key connKey) {
	t.mu.Lock()
	if list, ok := t.idle[key]; ok && len(list) == 0 {
		delete(t.idle, key)
	}
	t.mu.Unlock()
}
