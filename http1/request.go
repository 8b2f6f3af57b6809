package http1

import (
	"bufio"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// The loop's reading side: the request head, its parsing, the request body
// (Content-Length or chunked) and 100 Continue.

var errRequestHeadTooLarge = errors.New("request head too large")

// readHead returns the request's head up to and including its empty line:
// a view of br's buffer (consumed bytes to discard once parsed) or, for a
// head larger than the buffer, a copy gathered in big. A head longer than
// max_header_bytes, its request line and empty line included, is refused
// exactly there (MaxHeaderBytes): net/http allows 4 KiB more for the
// request line, and the loop does not.
func (sc *serverConn) readHead() (head []byte, consumed int, err error) {
	limit := sc.maxHeader
	tightened := false
	for {
		buf, _ := sc.br.Peek(sc.br.Buffered())
		if end := headEnd(buf); end >= 0 {
			if end > limit {
				return nil, 0, errRequestHeadTooLarge
			}
			return buf[:end], end, nil
		}
		if len(buf) >= limit { // incomplete: the head is longer still
			return nil, 0, errRequestHeadTooLarge
		}
		if len(buf) == sc.br.Size() {
			break
		}
		if !tightened {
			// The head did not come in one piece: from here on the header
			// timeout, not the idle one, bounds the wait.
			tightened = true
			if to := sc.srv.ReadHeaderTimeout; to > 0 && sc.served > 0 {
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
		if len(sc.big) > limit {
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
	if !ValidToken(method) {
		return nil, http.StatusBadRequest, "invalid method"
	}
	r := &sc.req
	*r = *sc.base
	sc.ambiguous = false
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
	hs := headerScanner{rest: rest}
	for hs.next() {
		key, val := hs.key, hs.val
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
	if hs.refused != "" {
		return nil, http.StatusBadRequest, hs.refused
	}
	r.Header = h

	switch {
	case hosts > 1:
		return nil, http.StatusBadRequest, "too many Host headers"
	case hosts == 0 && r.ProtoMinor >= 1 && r.Method != http.MethodConnect:
		// An absolute target does not stand in for Host (RFC 9112 3.2),
		// where net/http lets it.
		return nil, http.StatusBadRequest, "missing required Host header"
	}
	if r.Host == "" { // an absolute target's host wins
		r.Host = h.Get("Host")
	}
	if !validHost(r.Host) {
		return nil, http.StatusBadRequest, "malformed Host header"
	}
	delete(h, "Host")

	// Framing of the body. Content-Length is checked even when chunked
	// overrides it, as net/http checks it.
	te := h["Transfer-Encoding"]
	if len(te) > 0 {
		if len(te) != 1 || !strings.EqualFold(te[0], "chunked") {
			return nil, http.StatusNotImplemented, "unsupported transfer encoding"
		}
		if r.ProtoMinor == 0 {
			return nil, http.StatusBadRequest, "chunked body on HTTP/1.0"
		}
	}
	if cl := h["Content-Length"]; len(cl) > 0 {
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
	if len(te) > 0 {
		r.TransferEncoding = []string{"chunked"}
		r.ContentLength = -1
		// Chunked wins, as in net/http; but a request with both may be an
		// attempt at smuggling, so the connection closes after the answer
		// (RFC 9112 6.1).
		sc.ambiguous = len(h["Content-Length"]) > 0
		delete(h, "Content-Length")
		delete(h, "Transfer-Encoding")
	}
	if tr := h["Trailer"]; len(tr) > 0 && r.ContentLength != 0 {
		r.Trailer = http.Header{}
		for _, k := range trailerKeys(tr) {
			r.Trailer[k] = nil
		}
	}
	r.Close = closeRequested(r)
	return r, 0, ""
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
var pathTable = asciiTable("-._~$&+,/:;=@")

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

var hostTable = asciiTable("!$%&'()*+,-.:;=[]_~")

// closeRequested reports whether the client wants the connection closed
// after this request.
func closeRequested(r *http.Request) bool {
	conn := r.Header["Connection"]
	if r.ProtoMajor == 1 && r.ProtoMinor == 0 {
		return !HasToken(conn, "keep-alive")
	}
	return len(conn) > 0 && HasToken(conn, "close")
}

// reqBody is a request's body on the loop: Content-Length or chunked, read
// from the connection's buffer. It is safe for the concurrent Read and
// Close of a Transport's writer and the server.
type reqBody struct {
	mu      sync.Mutex
	sc      *serverConn
	left    int64 // bytes left of a Content-Length body; -1 for chunked
	chunked *chunkedReader
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
		b.chunked = &chunkedReader{br: br}
	}
	n, err := b.chunked.Read(p)
	if err == io.EOF {
		if err = readTrailer(br, b.sc.maxHeader, b.trailer); err == nil {
			b.eof = true
			return n, io.EOF
		}
	}
	b.err = err
	return n, err
}

// Stop ends the body with err, unless it has ended already: later reads
// return err, and the loop does not read what is left after the handler,
// so the connection closes after the answer.
func (b *reqBody) Stop(err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err == nil && !b.eof {
		b.err = err
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
	_, err := io.Copy(io.Discard, io.LimitReader(heldBody{b}, maxDrain+1))
	return err == nil && b.eof
}

// heldBody reads a reqBody whose lock the reader holds.
type heldBody struct{ b *reqBody }

func (h heldBody) Read(p []byte) (int, error) { return h.b.read(p) }

// sendContinue writes the interim 100 Continue unless the answer's head
// has gone already.
func (sc *serverConn) sendContinue() {
	sc.wmu.Lock()
	defer sc.wmu.Unlock()
	if sc.continued || sc.w.headSent {
		return
	}
	sc.continued = true
	sc.bw.WriteString("HTTP/1.1 100 Continue\r\n\r\n")
	sc.bw.Flush()
}

// expectsContinue reports whether an Expect value lists 100-continue,
// with net/http's token rule (request.go's hasToken): the token anywhere
// in v, bounded by the start, the end, a space, a tab or a comma, case
// aside.
func expectsContinue(v string) bool {
	const token = "100-continue"
	boundary := func(c byte) bool { return c == ' ' || c == ',' || c == '\t' }
	for sp := 0; sp+len(token) <= len(v); sp++ {
		if sp > 0 && !boundary(v[sp-1]) {
			continue
		}
		if end := sp + len(token); end != len(v) && !boundary(v[end]) {
			continue
		}
		if strings.EqualFold(v[sp:sp+len(token)], token) {
			return true
		}
	}
	return false
}
