package proxy

import (
	"bufio"
	"context"
	"errors"
	"net"
	"net/http"
	"net/textproto"
	"strings"
	"sync"
	"time"

	"sekisho/router"
)

// The direct path forwards the requests that make up most proxy traffic
// without httputil.ReverseProxy: a bodyless GET, HEAD or OPTIONS to an
// HTTP/1.1 pool whose answer is a plain one (a final status, a
// Content-Length, no trailers, not an event stream). The request head is
// written straight from the inbound request with the same rewriting
// ReverseProxy and Pool.rewrite do (hop-by-hop headers dropped, the
// client's forwarding headers replaced), and the answer's head is parsed
// from the upstream connection's buffer into the ResponseWriter's header, so
// a request costs no clone of itself and no copy of either header map.
//
// Whatever the direct path meets that is not plain (an interim answer, a
// chunked or close-delimited body, trailers, a head it cannot parse) is
// read with http.ReadResponse and handed to ReverseProxy, already received,
// so that every unusual case runs through the one forwarder that handles
// it all.

// directable reports whether r may take the direct path.
func directable(r *http.Request) bool {
	return bodylessIdempotent(r) && r.URL.Opaque == "" && headerSafe(r.Header) && !strings.ContainsAny(r.Host, "\r\n ")
}

// prepared is an answer the direct path received but does not forward
// itself: Pool.RoundTrip hands it to ReverseProxy instead of sending the
// request again.
type prepared struct {
	resp *http.Response
	t    int // target index
}

type preparedKey struct{}

// forward serves r on the direct path: it picks an endpoint as RoundTrip
// does (a refused dial moves on to another endpoint), sends the request and
// relays the answer.
func (p *Pool) forward(w http.ResponseWriter, r *http.Request, t *h1Transport, info *router.Info) {
	ctx := r.Context()
	var fwd forwardedValues
	fwd.set(r, info)
	pk := p.picker()
	defer pk.release()
	var lastErr error
	for attempt := 0; attempt <= p.retries; attempt++ {
		if err := ctx.Err(); err != nil {
			lastErr = err // the client has gone: no attempt, no dial
			break
		}
		i := pk.pick(r, info)
		if i < 0 {
			if lastErr == nil {
				lastErr = ErrNoReadyEndpoint
			}
			break
		}
		start := p.begin(i, info)
		x, err := t.exchange(ctx, r, p.keys[i], p.schemes[i], p.targets[i].Addr, &fwd)
		if err == nil {
			if x.resp != nil {
				p.answered(i, start, x.resp.StatusCode)
				p.relayPrepared(w, r, x.resp, i)
				return
			}
			p.answered(i, start, x.status)
			if err := x.relay(ctx, w, p.targets[i].EP, p.bodyIdle); err != nil {
				var idle bodyIdleError
				if errors.As(err, &idle) {
					p.bodyTimeouts.Inc()
				}
				// The head has gone: the client's answer can only be cut,
				// as ReverseProxy cuts it.
				panic(http.ErrAbortHandler)
			}
			return
		}
		lastErr = err
		if !p.failed(i, start, r, err, nil) {
			break
		}
		pk.exclude(i)
	}
	p.errorHandler(w, r, lastErr)
}

// relayPrepared lets ReverseProxy forward an answer the direct path has
// already received from target i.
func (p *Pool) relayPrepared(w http.ResponseWriter, r *http.Request, resp *http.Response, i int) {
	ctx := context.WithValue(r.Context(), preparedKey{}, &prepared{resp: resp, t: i})
	p.proxy.ServeHTTP(w, r.WithContext(ctx))
}

// takePrepared returns the answer waiting for out, if any, with its body
// set to end the endpoint's in-flight count.
func (p *Pool) takePrepared(out *http.Request) (*http.Response, bool) {
	pr, ok := out.Context().Value(preparedKey{}).(*prepared)
	if !ok || pr.resp == nil {
		return nil, false
	}
	resp := pr.resp
	pr.resp = nil // a retry by ReverseProxy, were there one, must not reuse it
	resp.Body = p.wrapBody(resp.Body, p.targets[pr.t].EP)
	return resp, true
}

// forwardedValues are the X-Forwarded-* values the upstream gets.
type forwardedValues struct{ forFor, host, proto string }

// set computes the values for in. An incoming X-Forwarded-For chain is kept
// only when the peer is a trusted proxy (the listener resolved a client
// address other than the peer, or the peer is trusted and sent no chain):
// from anyone else it could be forged.
func (f *forwardedValues) set(in *http.Request, info *router.Info) {
	peer := in.RemoteAddr
	if host, _, err := net.SplitHostPort(peer); err == nil {
		peer = host
	}
	trusted := info != nil && info.TrustedPeer
	f.forFor = peer
	if chain := in.Header["X-Forwarded-For"]; trusted && len(chain) > 0 {
		f.forFor = strings.Join(chain, ", ") + ", " + peer
	}
	f.host = in.Host
	switch {
	case in.TLS != nil:
		f.proto = "https"
	case trusted && in.Header.Get("X-Forwarded-Proto") != "":
		f.proto = in.Header.Get("X-Forwarded-Proto")
	default:
		f.proto = "http"
	}
}

// hopHeaders are dropped in both directions, as ReverseProxy drops them;
// the client's forwarding headers are replaced by ours.
var hopHeaders = map[string]bool{
	"Connection": true, "Proxy-Connection": true, "Keep-Alive": true, "Proxy-Authenticate": true,
	"Proxy-Authorization": true, "Te": true, "Trailer": true, "Transfer-Encoding": true, "Upgrade": true,
	"Http2-Settings": true,
}

var forwardingHeaders = map[string]bool{
	"Forwarded": true, "X-Forwarded-For": true, "X-Forwarded-Host": true, "X-Forwarded-Proto": true,
}

// writeForwardHead writes the head of r as the upstream at addr is to see
// it; a request without a Host (HTTP/1.0) gets addr, as http.Transport
// gives it.
func writeForwardHead(w *bufio.Writer, r *http.Request, fwd *forwardedValues, addr string) error {
	host := r.Host
	if host == "" {
		host = addr
	}
	writeRequestLine(w, r, host)
	conn := r.Header["Connection"]
	for k, vs := range r.Header {
		if k == "Host" || hopHeaders[k] || forwardingHeaders[k] || len(conn) > 0 && hasToken(conn, k) {
			continue
		}
		for _, v := range vs {
			w.WriteString(k)
			w.WriteString(": ")
			w.WriteString(v)
			w.WriteString("\r\n")
		}
	}
	if te := r.Header["Te"]; len(te) > 0 && hasToken(te, "trailers") {
		w.WriteString("Te: trailers\r\n")
	}
	w.WriteString("X-Forwarded-For: ")
	w.WriteString(fwd.forFor)
	w.WriteString("\r\nX-Forwarded-Host: ")
	w.WriteString(fwd.host)
	w.WriteString("\r\nX-Forwarded-Proto: ")
	w.WriteString(fwd.proto)
	_, err := w.WriteString("\r\n\r\n")
	return err
}

// hasToken reports whether the comma-separated values vs list token (case
// aside).
func hasToken(vs []string, token string) bool {
	for _, v := range vs {
		for v != "" {
			var tok string
			tok, v, _ = strings.Cut(v, ",")
			if strings.EqualFold(strings.TrimSpace(tok), token) {
				return true
			}
		}
	}
	return false
}

// exchange is one request on the direct path: the answer's head, parsed
// (status, header, length) when it is plain, else as an *http.Response.
type exchange struct {
	c      *h1Conn
	status int
	length int64 // of the body; 0 for a HEAD or a bodyless status
	reuse  bool
	head   *respHead // the parsed header lines; nil with resp
	resp   *http.Response
}

// exchange sends r to addr (key is scheme://addr, the idle pool's key) and
// reads the answer's head, on the direct path when fwd is not nil and on
// the lean path otherwise. A kept-alive connection the upstream had closed
// fails before a byte of the answer; the request is idempotent and
// bodyless, so it goes again on a fresh connection, as http.Transport does.
func (t *h1Transport) exchange(ctx context.Context, r *http.Request, key, scheme, addr string, fwd *forwardedValues) (exchange, error) {
	for {
		c, err := t.get(ctx, key, scheme, addr)
		if err != nil {
			return exchange{}, err
		}
		x, err := c.exchange(ctx, r, fwd)
		if err == nil {
			return x, nil
		}
		c.close()
		if c.reused && ctx.Err() == nil && err == errStaleConn {
			continue
		}
		return exchange{}, err
	}
}

// exchange writes r and reads the answer's head: parsed in place when the
// direct path (fwd not nil) meets a plain answer, an *http.Response
// otherwise. A 408, which a reused connection may carry from before the
// request, is always read the second way, where readResponse tells it.
func (c *h1Conn) exchange(ctx context.Context, r *http.Request, fwd *forwardedValues) (exchange, error) {
	if err := c.send(ctx, r, fwd); err != nil {
		return exchange{}, err
	}
	if fwd != nil {
		h := respHeads.Get().(*respHead)
		ok, err := h.parse(c.br, r.Method == http.MethodHead)
		switch {
		case err != nil:
			respHeads.Put(h)
			return exchange{}, c.wrapErr(ctx, err, false)
		case ok && h.status != http.StatusRequestTimeout:
			if err := h.consume(c.br); err != nil {
				respHeads.Put(h)
				return exchange{}, c.wrapErr(ctx, err, false)
			}
			c.endHead(ctx)
			return exchange{c: c, status: h.status, length: h.length, reuse: h.keepAlive && !r.Close, head: h}, nil
		}
		respHeads.Put(h)
	}
	resp, err := c.readResponse(ctx, r)
	if err != nil {
		return exchange{}, err
	}
	return exchange{c: c, resp: resp}, nil
}

// relay writes the answer to w: the header, the status and a body of
// exactly x.length bytes, passed from the upstream connection's buffer as
// they arrive. Before it waits for the upstream, it flushes what the client
// was given; a wait longer than idle (when not 0) ends the body with a
// bodyIdleError. An error means the answer was cut half-way: the caller
// aborts the client's answer.
func (x *exchange) relay(ctx context.Context, w http.ResponseWriter, ep interface{ End() }, idle time.Duration) error {
	h := x.head
	h.fill(w.Header())
	respHeads.Put(h)
	x.head = nil
	w.WriteHeader(x.status)
	c := x.c
	left := x.length
	var err error
	for left > 0 {
		if c.br.Buffered() == 0 {
			// Nothing on hand: what the client was given goes out now,
			// never held back while the upstream is slow.
			if f, ok := w.(http.Flusher); ok {
				f.Flush()
			}
			c.awaitBody(ctx, idle)
			if _, err = c.br.Peek(1); err != nil {
				err = c.bodyErr(ctx, err, idle)
				break
			}
		}
		n := min(int64(c.br.Buffered()), left)
		b, _ := c.br.Peek(int(n))
		if _, err = w.Write(b); err != nil {
			break
		}
		c.br.Discard(len(b))
		left -= n
	}
	ep.End()
	c.release(err == nil && x.reuse)
	return err
}

// respHead is an answer's head parsed in place: one string holds its bytes,
// the keys and values are slices of it (or interned names).
type respHead struct {
	status    int
	length    int64
	keepAlive bool
	n         int // bytes of the head, to consume
	keys      []string
	vals      []string
	keyBuf    [24]string
	valBuf    [24]string
}

var respHeads = sync.Pool{New: func() any {
	h := &respHead{}
	h.keys, h.vals = h.keyBuf[:0], h.valBuf[:0]
	return h
}}

// parse reads the head from br without consuming it. ok is false when the
// answer is not plain; the bytes are then still in br for
// http.ReadResponse.
func (h *respHead) parse(br *bufio.Reader, head bool) (ok bool, err error) {
	h.keys, h.vals = h.keys[:0], h.vals[:0]
	var buf []byte
	end := -1
	for want := 1; end < 0; want = len(buf) + 1 {
		if want > br.Size() {
			return false, nil // a head larger than the buffer: ReadResponse copes
		}
		if _, err = br.Peek(want); err != nil {
			return false, err
		}
		from := max(len(buf)-2, 0) // what was searched before, but a split end
		buf, _ = br.Peek(br.Buffered())
		end = headEndFrom(buf, from)
	}
	raw := buf[:end]
	for i, c := range raw {
		if c == '\n' && (i == 0 || raw[i-1] != '\r') {
			return false, nil // bare LF line ends: ReadResponse's case
		}
	}
	h.n = end
	s := string(raw[:end-2]) // the status line and each header line, CRLF-terminated
	line, rest, _ := strings.Cut(s, "\r\n")
	if len(line) < 12 || line[:9] != "HTTP/1.1 " || len(line) > 12 && line[12] != ' ' || !validValue(line[12:]) {
		return false, nil
	}
	status := 0
	for i := 9; i < 12; i++ {
		d := line[i]
		if d < '0' || d > '9' {
			return false, nil
		}
		status = status*10 + int(d-'0')
	}
	if status < 200 {
		return false, nil // interim answers, 101: ReverseProxy's cases
	}
	h.status, h.length, h.keepAlive = status, -1, true
	for rest != "" {
		line, rest, _ = strings.Cut(rest, "\r\n")
		colon := strings.IndexByte(line, ':')
		if colon <= 0 {
			return false, nil
		}
		key, ok := canonicalKey(line[:colon])
		if !ok {
			return false, nil
		}
		val := strings.Trim(line[colon+1:], " \t")
		if !validValue(val) {
			return false, nil
		}
		switch key {
		case "Content-Length":
			if h.length >= 0 {
				return false, nil
			}
			if h.length = parseLength(val); h.length < 0 {
				return false, nil
			}
		case "Transfer-Encoding", "Trailer", "Upgrade":
			return false, nil
		case "Connection":
			if hasToken([]string{val}, "close") {
				h.keepAlive = false
			}
		case "Content-Type":
			if strings.HasPrefix(val, "text/event-stream") {
				return false, nil // flushed as it comes: ReverseProxy's case
			}
		}
		h.keys = append(h.keys, key)
		h.vals = append(h.vals, val)
	}
	switch {
	case status == http.StatusNoContent && h.length > 0:
		return false, nil
	case head || status == http.StatusNoContent || status == http.StatusNotModified:
		h.length = 0 // no body, whatever the length says
	case h.length < 0:
		return false, nil // read to the close: ReverseProxy's case
	}
	return true, nil
}

// consume takes the parsed head out of br.
func (h *respHead) consume(br *bufio.Reader) error {
	_, err := br.Discard(h.n)
	return err
}

// fill puts the parsed header into dst, leaving out hop-by-hop headers and
// those the Connection header names.
func (h *respHead) fill(dst http.Header) {
	var conn []string
	for i, k := range h.keys {
		if k == "Connection" {
			conn = append(conn, h.vals[i])
		}
	}
	// One slice backs every value: three-index slices of it, so that an
	// Add elsewhere copies rather than writing into the next value.
	vals := make([]string, len(h.vals))
	copy(vals, h.vals)
	for i, k := range h.keys {
		if hopHeaders[k] || len(conn) > 0 && hasToken(conn, k) {
			continue
		}
		if old, ok := dst[k]; ok {
			dst[k] = append(old, vals[i])
			continue
		}
		dst[k] = vals[i : i+1 : i+1]
	}
}

// parseLength parses a Content-Length value, or returns -1.
func parseLength(s string) int64 {
	if s == "" || len(s) > 18 {
		return -1
	}
	var n int64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return -1
		}
		n = n*10 + int64(c-'0')
	}
	return n
}

// validValue reports whether v is a field value net/http would accept: no
// control bytes other than tab.
func validValue(v string) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

// canonicalKey returns the canonical form of a header name (a slice of k
// itself when k is already canonical), or false when k is not a token.
func canonicalKey(k string) (string, bool) {
	upper := true
	canonical := true
	for i := 0; i < len(k); i++ {
		c := k[i]
		if !router.TokenByte(c) {
			return "", false
		}
		if upper && 'a' <= c && c <= 'z' || !upper && 'A' <= c && c <= 'Z' {
			canonical = false
		}
		upper = c == '-'
	}
	if canonical {
		return k, true
	}
	return textproto.CanonicalMIMEHeaderKey(k), true
}

// asciiTable marks the letters, the digits and the bytes of extra.
func asciiTable(extra string) (t [128]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
		t[c-'a'+'A'] = true
	}
	for i := 0; i < len(extra); i++ {
		t[extra[i]] = true
	}
	return t
}
