package main

import (
	"fmt"
	"io"
	"log"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// Bounds on what a query string may ask for, so that no request can make the
// backend loop or allocate without limit.
const (
	maxSearchResults = 1000
	maxStreamChunks  = 10000
	defaultResults   = 5
	defaultChunks    = 3
	tinyBodySize     = 100
)

// Header values shared by every response. Each slice has len == cap, so an
// Add on a response header copies instead of writing into the shared array.
var (
	contentJSON   = []string{"application/json"}
	contentText   = []string{"text/plain; charset=utf-8"}
	contentNDJSON = []string{"application/x-ndjson"}
)

// options configure an echo server. The zero value is a server that starts
// unready (ready is false), with an empty name, no delay, no ready-file, the
// full echo and no per-request log.
type options struct {
	name      string        // reported in every body and in X-Echo-Name
	delay     time.Duration // added to every non-control request
	ready     bool          // initial readiness, switchable by POST /ready
	readyFile string        // when set, readiness also requires this file to exist
	tiny      bool          // answer every request with a fixed small body
	logger    *log.Logger   // nil: no per-request log line
}

// server is the echo backend's handler. It is safe for concurrent use; its
// counters and readiness are atomics, so no request waits on another.
type server struct {
	opts     options
	nameHdr  []string
	nameJSON []byte // the name as a quoted JSON string, built once
	nameLine string // the name as it goes on the hand-written 101 response
	tinyBody []byte

	ready     atomic.Bool
	requests  atomic.Int64
	cancelled atomic.Int64
	inFlight  atomic.Int64
}

var _ http.Handler = (*server)(nil)

func newServer(opts options) *server {
	s := &server{
		opts:     opts,
		nameHdr:  []string{opts.name},
		nameJSON: appendJSONString(nil, opts.name),
		nameLine: sanitizeHeaderValue(opts.name),
	}
	s.ready.Store(opts.ready)
	s.tinyBody = buildTinyBody(s.nameJSON)
	return s
}

// newHTTPServer returns the http.Server the binary runs h with: HTTP/1.1 and
// cleartext HTTP/2 with prior knowledge, keep-alive on, header reads bounded
// so a stalled client cannot hold a connection forever.
func newHTTPServer(h http.Handler) *http.Server {
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	return &http.Server{
		Handler:           h,
		Protocols:         &p,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       120 * time.Second,
	}
}

// buildTinyBody pads a minimal JSON object to tinyBodySize bytes so that -tiny
// benchmarks move the same number of bytes whatever the name's length.
func buildTinyBody(nameJSON []byte) []byte {
	b := append([]byte(`{"name":`), nameJSON...)
	b = append(b, `,"pad":"`...)
	for len(b) < tinyBodySize-3 {
		b = append(b, '.')
	}
	return append(b, "\"}\n"...)
}

// ServeHTTP routes by exact path with a switch rather than a ServeMux: the
// set of paths is fixed and the plain echo path should pay for nothing.
func (s *server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h["X-Echo-Name"] = s.nameHdr
	if s.opts.tiny {
		h["Content-Type"] = contentJSON
		w.Write(s.tinyBody)
		return
	}
	if s.opts.logger != nil {
		rec := &statusRecorder{ResponseWriter: w}
		start := time.Now()
		defer func() {
			// A request that wrote nothing was cancelled, hijacked or
			// aborted: "-" rather than a status it never sent.
			status := "-"
			if rec.status != 0 {
				status = strconv.Itoa(rec.status)
			}
			s.opts.logger.Printf("%s %s %s %s %s %s", r.RemoteAddr, r.Proto, r.Method, r.URL.RequestURI(), status, time.Since(start))
		}()
		w = rec
	}

	// Control paths are what probes and test harnesses call: they ignore
	// -delay and stay out of the counters, so the counters describe traffic.
	switch r.URL.Path {
	case "/ready", "/healthz", "/_echo/stats":
		if !s.delayRequest(w, r, 0, false) {
			return
		}
		switch r.URL.Path {
		case "/ready":
			s.serveReady(w, r)
		case "/healthz":
			writeText(w, http.StatusOK, "ok\n")
		default:
			s.serveStats(w)
		}
		return
	}

	s.requests.Add(1)
	s.inFlight.Add(1)
	defer s.inFlight.Add(-1)

	if r.URL.Path == "/upgrade" {
		if s.delayRequest(w, r, s.opts.delay, true) {
			s.serveUpgrade(w, r)
		}
		return
	}
	n, _ := io.Copy(io.Discard, r.Body)
	if !s.delayRequest(w, r, s.opts.delay, true) {
		return
	}
	switch {
	case r.URL.Path == "/search":
		s.serveSearch(w, r)
	case r.URL.Path == "/stream":
		s.serveStream(w, r)
	case r.URL.Path == "/trailers":
		s.serveTrailers(w, r, n)
	case strings.HasPrefix(r.URL.Path, "/status/"):
		s.serveStatus(w, r, n)
	default:
		s.writeEcho(w, r, http.StatusOK, n, false)
	}
}

// delayRequest waits base plus the ?delay= of the request, and reports
// whether the request should still be answered. A wait cut short by the
// request's context (the client or a proxy gave up) is counted when count is
// set: that is how tests see a proxy's cancellation reach its upstream.
func (s *server) delayRequest(w http.ResponseWriter, r *http.Request, base time.Duration, count bool) bool {
	d := base
	if v, ok := queryParam(r.URL.RawQuery, "delay"); ok {
		extra, err := time.ParseDuration(v)
		if err != nil || extra < 0 {
			s.writeError(w, http.StatusBadRequest, fmt.Sprintf("bad delay %q: want a non-negative Go duration", v))
			return false
		}
		d += extra
	}
	if !s.sleep(r, d) {
		if count {
			s.cancelled.Add(1)
		}
		return false
	}
	return true
}

// sleep waits d unless the request's context ends first; it reports whether
// the whole wait elapsed.
func (s *server) sleep(r *http.Request, d time.Duration) bool {
	if d <= 0 {
		return r.Context().Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-r.Context().Done():
		return false
	}
}

// isReady combines the switch and the ready-file: a backend switched off
// stays unready whatever the file says, so an operator can drain it by hand.
func (s *server) isReady() bool {
	if !s.ready.Load() {
		return false
	}
	if s.opts.readyFile == "" {
		return true
	}
	_, err := os.Stat(s.opts.readyFile)
	return err == nil
}

func (s *server) serveReady(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodPost {
		state, _ := queryParam(r.URL.RawQuery, "state")
		switch state {
		case "on":
			s.ready.Store(true)
		case "off":
			s.ready.Store(false)
		default:
			s.writeError(w, http.StatusBadRequest, `POST /ready needs state=on or state=off`)
			return
		}
	}
	if s.isReady() {
		writeText(w, http.StatusOK, "ready\n")
		return
	}
	writeText(w, http.StatusServiceUnavailable, "not ready\n")
}

func (s *server) serveStats(w http.ResponseWriter) {
	sc := getScratch()
	defer putScratch(sc)
	b := append(sc.b[:0], `{"name":`...)
	b = append(b, s.nameJSON...)
	b = append(b, `,"requests":`...)
	b = strconv.AppendInt(b, s.requests.Load(), 10)
	b = append(b, `,"cancelled":`...)
	b = strconv.AppendInt(b, s.cancelled.Load(), 10)
	b = append(b, `,"in_flight":`...)
	b = strconv.AppendInt(b, s.inFlight.Load(), 10)
	b = append(b, "}\n"...)
	sc.b = b
	writeBody(w, http.StatusOK, contentJSON, b)
}

func (s *server) serveStatus(w http.ResponseWriter, r *http.Request, n int64) {
	code, err := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/status/"))
	// 1xx codes are informational in net/http and would be followed by a 200,
	// so they cannot be the answer.
	if err != nil || code < 200 || code > 599 {
		s.writeError(w, http.StatusBadRequest, "want /status/NNN with NNN in 200..599")
		return
	}
	s.writeEcho(w, r, code, n, false)
}

func (s *server) serveTrailers(w http.ResponseWriter, r *http.Request, n int64) {
	h := w.Header()
	h.Set("Trailer", "X-Echo-Trailer, Grpc-Status")
	s.writeEcho(w, r, http.StatusOK, n, true)
	h.Set("X-Echo-Trailer", strconv.FormatInt(n, 10))
	h.Set("Grpc-Status", "0")
}

// searchResult is one hit of /search.
type searchResult struct {
	index int
	score float64
}

func (s *server) serveSearch(w http.ResponseWriter, r *http.Request) {
	q, _ := queryParam(r.URL.RawQuery, "q")
	k := defaultResults
	if v, ok := queryParam(r.URL.RawQuery, "n"); ok {
		var err error
		k, err = strconv.Atoi(v)
		if err != nil || k < 0 || k > maxSearchResults {
			s.writeError(w, http.StatusBadRequest, fmt.Sprintf("want n in 0..%d", maxSearchResults))
			return
		}
	}
	results := make([]searchResult, k)
	for i := range results {
		results[i] = searchResult{index: i, score: searchScore(s.opts.name, q, i)}
	}
	// Leaves answer best-first, as a search engine would, so a merge has
	// sorted runs to interleave.
	slices.SortFunc(results, func(a, b searchResult) int {
		if a.score != b.score {
			if a.score > b.score {
				return -1
			}
			return 1
		}
		return a.index - b.index
	})

	sc := getScratch()
	defer putScratch(sc)
	b := append(sc.b[:0], `{"results":[`...)
	for i, res := range results {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"id":`...)
		b = appendJSONString(b, s.opts.name+"-"+strconv.Itoa(res.index))
		b = append(b, `,"score":`...)
		b = strconv.AppendFloat(b, res.score, 'f', -1, 64)
		b = append(b, `,"leaf":`...)
		b = append(b, s.nameJSON...)
		b = append(b, '}')
	}
	b = append(b, "]}\n"...)
	sc.b = b
	writeBody(w, http.StatusOK, contentJSON, b)
}

// searchScore is a pseudo-random score in [0,1) that depends only on the
// leaf's name, the query and the result's index, so that every run and test sees
// the same results. The separators keep ("ab","c") apart from ("a","bc").
func searchScore(name, q string, i int) float64 {
	const prime = 1099511628211
	x := uint64(14695981039346656037) // FNV-1a offset basis
	add := func(s string) {
		for j := 0; j < len(s); j++ {
			x ^= uint64(s[j])
			x *= prime
		}
		x *= prime // a zero separator byte; the xor with it is a no-op
	}
	add(name)
	add(q)
	var digits [20]byte
	add(string(strconv.AppendInt(digits[:0], int64(i), 10)))
	// FNV leaves the high bits poorly mixed for inputs that differ in the
	// last byte; the splitmix64 finaliser spreads them before they become
	// the mantissa.
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return float64(x>>11) / (1 << 53)
}

func (s *server) serveStream(w http.ResponseWriter, r *http.Request) {
	chunks := defaultChunks
	if v, ok := queryParam(r.URL.RawQuery, "chunks"); ok {
		var err error
		chunks, err = strconv.Atoi(v)
		if err != nil || chunks < 0 || chunks > maxStreamChunks {
			s.writeError(w, http.StatusBadRequest, fmt.Sprintf("want chunks in 0..%d", maxStreamChunks))
			return
		}
	}
	var interval time.Duration
	if v, ok := queryParam(r.URL.RawQuery, "interval"); ok {
		var err error
		interval, err = time.ParseDuration(v)
		if err != nil || interval < 0 {
			s.writeError(w, http.StatusBadRequest, fmt.Sprintf("bad interval %q: want a non-negative Go duration", v))
			return
		}
	}
	abort, _ := queryParam(r.URL.RawQuery, "abort")
	aborting := abort == "1" || abort == "true"

	w.Header()["Content-Type"] = contentNDJSON
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	sc := getScratch()
	defer putScratch(sc)
	for i := range chunks {
		if i > 0 && !s.sleep(r, interval) {
			s.cancelled.Add(1)
			return
		}
		b := append(sc.b[:0], `{"name":`...)
		b = append(b, s.nameJSON...)
		b = append(b, `,"chunk":`...)
		b = strconv.AppendInt(b, int64(i), 10)
		b = append(b, "}\n"...)
		sc.b = b
		// With no write timeout, a write fails only when the client (or
		// a proxy) reset the stream or closed the connection before the
		// stream was done: a cancellation, as a wait cut short shows. A
		// reset before the first chunk fails the write, not a wait; on
		// HTTP/1 the write may see the closed connection before the
		// request's context does, so the error decides.
		if _, err := w.Write(b); err != nil {
			s.cancelled.Add(1)
			return
		}
		if err := rc.Flush(); err != nil {
			s.cancelled.Add(1)
			return
		}
		if aborting {
			break
		}
	}
	if aborting {
		rc.Flush()
		// ErrAbortHandler makes net/http drop the connection (HTTP/1.1) or
		// reset the stream (HTTP/2) without logging a stack: the client sees
		// a response that dies in the middle, as with a crashed upstream.
		panic(http.ErrAbortHandler)
	}
}

// serveUpgrade switches to the "echo" protocol: every byte the peer sends is
// sent back until it closes. It stands in for WebSocket when testing that a
// proxy keeps upgraded connections open and passes bytes both ways.
func (s *server) serveUpgrade(w http.ResponseWriter, r *http.Request) {
	if r.ProtoMajor != 1 || !headerHasToken(r.Header, "Connection", "upgrade") || !headerHasToken(r.Header, "Upgrade", "echo") {
		s.writeError(w, http.StatusBadRequest, "want an HTTP/1.1 request with Connection: Upgrade and Upgrade: echo")
		return
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		s.writeError(w, http.StatusInternalServerError, "hijack: "+err.Error())
		return
	}
	defer conn.Close()
	// The server's read and write deadlines were for the HTTP exchange; the
	// upgraded connection lives as long as the peer wants.
	if err := conn.SetDeadline(time.Time{}); err != nil {
		return
	}
	brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\nX-Echo-Name: ")
	brw.WriteString(s.nameLine)
	brw.WriteString("\r\n\r\n")
	if err := brw.Flush(); err != nil {
		return
	}
	// brw.Reader first hands over what the peer sent right behind the
	// request headers, then reads the connection itself.
	io.Copy(conn, brw.Reader)
}

// sanitizeHeaderValue drops bytes that would end the header line early; the
// name is operator input written into a hand-built response.
func sanitizeHeaderValue(v string) string {
	return strings.Map(func(r rune) rune {
		if r == '\r' || r == '\n' {
			return -1
		}
		return r
	}, v)
}

// headerHasToken reports whether a comma-separated header holds token,
// compared without case as RFC 9110 says for Connection and Upgrade.
func headerHasToken(h http.Header, key, token string) bool {
	for _, v := range h[key] {
		for part := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(part), token) {
				return true
			}
		}
	}
	return false
}

// writeEcho answers with the JSON description of the request. It is the hot
// path of benchmarks, so it builds the JSON by hand in a pooled buffer
// instead of reflecting over a map with encoding/json.
func (s *server) writeEcho(w http.ResponseWriter, r *http.Request, code int, n int64, trailers bool) {
	sc := getScratch()
	defer putScratch(sc)
	b := append(sc.b[:0], `{"name":`...)
	b = append(b, s.nameJSON...)
	b = append(b, `,"method":`...)
	b = appendJSONString(b, r.Method)
	b = append(b, `,"proto":`...)
	b = appendJSONString(b, r.Proto)
	b = append(b, `,"path":`...)
	b = appendJSONString(b, r.URL.Path)
	b = append(b, `,"query":`...)
	b = appendJSONString(b, r.URL.RawQuery)
	b = append(b, `,"host":`...)
	b = appendJSONString(b, r.Host)
	b = append(b, `,"remote_addr":`...)
	b = appendJSONString(b, r.RemoteAddr)
	b = append(b, `,"headers":`...)
	b, sc.keys = appendHeaders(b, sc.keys, r.Header)
	b = append(b, `,"body_bytes":`...)
	b = strconv.AppendInt(b, n, 10)
	if trailers {
		b = append(b, `,"trailers":`...)
		b, sc.keys = appendHeaders(b, sc.keys, r.Trailer)
	}
	b = append(b, "}\n"...)
	sc.b = b
	writeBody(w, code, contentJSON, b)
}

// appendHeaders writes h as a JSON object with sorted keys, so equal
// requests give byte-equal bodies. Repeated fields are joined with ", ", which
// is what they mean in HTTP; keys is scratch space for the sort.
func appendHeaders(b []byte, keys []string, h http.Header) ([]byte, []string) {
	keys = keys[:0]
	for k := range h {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	b = append(b, '{')
	for i, k := range keys {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, k)
		b = append(b, ':', '"')
		for j, v := range h[k] {
			if j > 0 {
				b = append(b, ',', ' ')
			}
			b = appendJSONStringBody(b, v)
		}
		b = append(b, '"')
	}
	clear(keys)
	return append(b, '}'), keys[:0]
}

func (s *server) writeError(w http.ResponseWriter, code int, msg string) {
	sc := getScratch()
	defer putScratch(sc)
	b := append(sc.b[:0], `{"name":`...)
	b = append(b, s.nameJSON...)
	b = append(b, `,"error":`...)
	b = appendJSONString(b, msg)
	b = append(b, "}\n"...)
	sc.b = b
	writeBody(w, code, contentJSON, b)
}

func writeText(w http.ResponseWriter, code int, text string) {
	w.Header()["Content-Type"] = contentText
	w.WriteHeader(code)
	io.WriteString(w, text)
}

func writeBody(w http.ResponseWriter, code int, contentType []string, b []byte) {
	w.Header()["Content-Type"] = contentType
	w.WriteHeader(code)
	w.Write(b)
}

// scratch is the per-request buffer of the hand-built JSON answers, pooled
// so that the echo path does not allocate a body per request.
type scratch struct {
	b    []byte
	keys []string
}

var scratchPool = sync.Pool{New: func() any {
	return &scratch{b: make([]byte, 0, 2048), keys: make([]string, 0, 16)}
}}

func getScratch() *scratch { return scratchPool.Get().(*scratch) }

// putScratch keeps ordinary buffers only: one huge request must not pin a
// huge buffer in the pool for the life of the process.
func putScratch(sc *scratch) {
	if cap(sc.b) > 64<<10 || cap(sc.keys) > 1024 {
		return
	}
	scratchPool.Put(sc)
}

// queryParam returns the first value of key in a raw query without building
// url.Values, which would allocate a map on every request. Like
// url.ParseQuery it skips a pair whose escaping is broken.
func queryParam(raw, key string) (string, bool) {
	for i := 0; raw != "" && i < 1<<16; i++ {
		var pair string
		pair, raw, _ = strings.Cut(raw, "&")
		k, v, _ := strings.Cut(pair, "=")
		if k != key {
			continue
		}
		if strings.ContainsAny(v, "%+") {
			u, err := url.QueryUnescape(v)
			if err != nil {
				continue
			}
			return u, true
		}
		return v, true
	}
	return "", false
}

// appendJSONString appends s as a JSON string literal. strconv.Quote is not
// enough: its \x and \U escapes are not JSON.
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	b = appendJSONStringBody(b, s)
	return append(b, '"')
}

const hexDigits = "0123456789abcdef"

// appendJSONStringBody appends s escaped for the inside of a JSON string:
// quotes, backslashes and control bytes escaped, invalid UTF-8 replaced by
// U+FFFD, and U+2028/U+2029 escaped because JavaScript parsers choke on them.
func appendJSONStringBody(b []byte, s string) []byte {
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	return append(b, s[start:]...)
}

// statusRecorder remembers the status for the per-request log line. Unwrap
// lets http.ResponseController reach Flush and Hijack underneath.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }
