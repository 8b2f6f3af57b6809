package http1

import (
	"bufio"
	"context"
	"net/http"
	"strings"
	"sync"
)

// The direct path forwards the requests that make up most proxy traffic
// without httputil.ReverseProxy: a bodyless GET, HEAD or OPTIONS whose
// answer is a plain one (a final status, a Content-Length, no trailers, not
// an event stream). The request head is written straight from the inbound
// request with the rewriting ReverseProxy does (hop-by-hop headers dropped,
// the client's forwarding headers replaced by Forwarded's), and the answer's
// head is parsed from the upstream connection's buffer into the
// ResponseWriter's header, so a request costs no clone of itself and no
// copy of either header map.
//
// Whatever the direct path meets that is not plain (an interim answer, a
// chunked or close-delimited body, trailers, a head it cannot parse) is
// read with http.ReadResponse and returned as it is, for the caller to
// relay through the one forwarder that handles it all.

// Forwarded holds the values of the forwarding headers a forwarded request
// carries, in place of the client's own: X-Forwarded-For, -Host and -Proto
// always; Forwarded (RFC 7239) and X-Real-IP when not empty.
type Forwarded struct{ For, Host, Proto, RFC7239, RealIP string }

// Forwardable reports whether Forward can send r: a GET, HEAD or OPTIONS
// without a body, an upgrade or an expectation, whose head can go on the
// wire as it is.
func Forwardable(r *http.Request) bool {
	return replayable(r) && r.URL.Opaque == "" && headerSafe(r.Header) && !strings.ContainsAny(r.Host, "\r\n ")
}

// Answer is an upstream's answer to a forwarded request. A plain answer
// has its Status and is relayed by Relay, which must then be called; any
// other is Response, read by http.ReadResponse, its body not yet read (a
// NotifyingBody, or http.NoBody).
type Answer struct {
	Status   int
	Response *http.Response

	c      *conn
	length int64 // of the body; 0 for a HEAD or a bodyless status
	reuse  bool
	head   *respHead // the parsed header lines; nil with Response
}

// Forward sends r, which must be Forwardable, to addr over scheme ("http"
// or "https") with its head rewritten as a proxy forwards it: hop-by-hop
// headers and the client's forwarding headers are dropped, fwd's
// headers are added, and a request without a Host (HTTP/1.0) gets
// addr. It returns once the answer's head is read. A kept-alive connection
// the upstream had closed is retried on a fresh one.
func (t *Transport) Forward(ctx context.Context, r *http.Request, scheme, addr string, fwd *Forwarded) (Answer, error) {
	return t.do(ctx, r, scheme, addr, fwd)
}

// roundTrip writes r and reads the answer's head: parsed in place when the
// direct path (fwd not nil) meets a plain answer, an *http.Response
// otherwise. A 408, which a reused connection may carry from before the
// request, is always read the second way, where readResponse tells it.
func (c *conn) roundTrip(ctx context.Context, r *http.Request, fwd *Forwarded) (Answer, error) {
	if err := c.send(ctx, r, fwd); err != nil {
		return Answer{}, err
	}
	if fwd != nil {
		h := respHeads.Get().(*respHead)
		ok, err := h.parse(c.br, r.Method == http.MethodHead)
		switch {
		case err != nil:
			respHeads.Put(h)
			return Answer{}, c.wrapErr(ctx, err, false)
		case ok && h.status != http.StatusRequestTimeout:
			if _, err := c.br.Discard(h.n); err != nil {
				respHeads.Put(h)
				return Answer{}, c.wrapErr(ctx, err, false)
			}
			c.endHead(ctx)
			return Answer{c: c, Status: h.status, length: h.length, reuse: h.keepAlive && !r.Close, head: h}, nil
		}
		respHeads.Put(h)
	}
	resp, err := c.readResponse(ctx, r)
	if err != nil {
		return Answer{}, err
	}
	return Answer{c: c, Response: resp}, nil
}

// Relay writes a plain answer to w: the header (but hop-by-hop fields and
// those its Connection names), the status and a body of exactly its length,
// passed from the upstream connection's buffer as they arrive. Before it
// waits for the upstream, it flushes what the client was given; a wait
// longer than the Transport's BodyIdleTimeout ends the body with a
// *BodyIdleError. An error means the answer was cut half-way, its head
// gone: the caller can only abort the client's answer.
func (a *Answer) Relay(ctx context.Context, w http.ResponseWriter) error {
	h := a.head
	h.fill(w.Header())
	respHeads.Put(h)
	a.head = nil
	w.WriteHeader(a.Status)
	c := a.c
	left := a.length
	var err error
	for left > 0 {
		if c.br.Buffered() == 0 {
			// Nothing on hand: what the client was given goes out now,
			// never held back while the upstream is slow.
			if f, ok := w.(http.Flusher); ok {
				f.Flush()
			}
			c.awaitBody(ctx)
			if _, err = c.br.Peek(1); err != nil {
				err = c.bodyErr(ctx, err)
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
	c.release(err == nil && a.reuse)
	return err
}

// Discard ends a plain answer the caller will not relay (a retry replaces
// it) without waiting for the upstream: when the whole body is already
// buffered it is dropped and the connection kept alive; otherwise the
// connection is closed. Relay must not be called after it.
func (a *Answer) Discard() {
	if a.head != nil {
		respHeads.Put(a.head)
		a.head = nil
	}
	c := a.c
	if c == nil {
		return
	}
	a.c = nil
	if int64(c.br.Buffered()) < a.length {
		c.release(false)
		return
	}
	c.br.Discard(int(a.length))
	c.release(a.reuse)
}

// hopHeaders are dropped in both directions, as ReverseProxy drops them;
// the client's forwarding headers are replaced by Forwarded's.
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
func writeForwardHead(w *bufio.Writer, r *http.Request, fwd *Forwarded, addr string) error {
	host := r.Host
	if host == "" {
		host = addr
	}
	writeRequestLine(w, r, host)
	conn := r.Header["Connection"]
	for k, vs := range r.Header {
		if k == "Host" || hopHeaders[k] || forwardingHeaders[k] || len(conn) > 0 && HasToken(conn, k) ||
			k == "X-Real-Ip" && fwd.RealIP != "" {
			continue
		}
		for _, v := range vs {
			writeField(w, k, v)
		}
	}
	if te := r.Header["Te"]; len(te) > 0 && HasToken(te, "trailers") {
		w.WriteString("Te: trailers\r\n")
	}
	writeField(w, "X-Forwarded-For", fwd.For)
	writeField(w, "X-Forwarded-Host", fwd.Host)
	writeField(w, "X-Forwarded-Proto", fwd.Proto)
	if fwd.RFC7239 != "" {
		writeField(w, "Forwarded", fwd.RFC7239)
	}
	if fwd.RealIP != "" {
		writeField(w, "X-Real-Ip", fwd.RealIP)
	}
	_, err := w.WriteString("\r\n")
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
	hs := headerScanner{rest: rest}
	for hs.next() {
		key, val := hs.key, hs.val
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
			if HasToken([]string{val}, "close") {
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
	if hs.refused != "" {
		return false, nil
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
		if hopHeaders[k] || len(conn) > 0 && HasToken(conn, k) {
			continue
		}
		if old, ok := dst[k]; ok {
			dst[k] = append(old, vals[i])
			continue
		}
		dst[k] = vals[i : i+1 : i+1]
	}
}
