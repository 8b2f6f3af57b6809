package router

import (
	"bufio"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/textproto"
	"slices"
	"strings"

	"sekisho/http1"
)

// HeaderOps edits one header map. Operations run in a fixed order: Remove,
// then Set, then Add, so a config can clear a header and write it anew. The
// zero HeaderOps changes nothing.
type HeaderOps struct {
	// Set replaces every value of a header with one value.
	Set map[string]string
	// Add appends one value to a header, keeping the values already there.
	Add map[string]string
	// Remove deletes headers by name.
	Remove []string
}

func (o HeaderOps) empty() bool {
	return len(o.Set) == 0 && len(o.Add) == 0 && len(o.Remove) == 0
}

func (o HeaderOps) validate(side string, request bool) []error {
	var errs []error
	check := func(op, name, value string) {
		switch {
		case !http1.ValidToken(name):
			errs = append(errs, FieldErrorf(side+"."+op, "%s.%s: %q is not a header name", side, op, name))
		case request && strings.EqualFold(name, "Host"):
			errs = append(errs, FieldErrorf(side+"."+op, "%s.%s: Host cannot be edited: the request's Host is passed upstream as the client sent it", side, op))
		case strings.ContainsAny(value, "\r\n\x00"):
			errs = append(errs, FieldErrorf(side+"."+op, "%s.%s: value of %q contains CR, LF or NUL", side, op, name))
		}
	}
	for _, name := range o.Remove {
		check("remove", name, "")
	}
	for _, name := range slices.Sorted(maps.Keys(o.Set)) {
		check("set", name, o.Set[name])
	}
	for _, name := range slices.Sorted(maps.Keys(o.Add)) {
		check("add", name, o.Add[name])
	}
	return errs
}

// compiledOps is a HeaderOps with canonical names, in a fixed order.
type compiledOps struct {
	remove []string
	set    []headerPair
	add    []headerPair
}

type headerPair struct{ name, value string }

func compileOps(o HeaderOps) compiledOps {
	var c compiledOps
	for _, name := range o.Remove {
		c.remove = append(c.remove, textproto.CanonicalMIMEHeaderKey(name))
	}
	for _, name := range slices.Sorted(maps.Keys(o.Set)) {
		c.set = append(c.set, headerPair{textproto.CanonicalMIMEHeaderKey(name), o.Set[name]})
	}
	for _, name := range slices.Sorted(maps.Keys(o.Add)) {
		c.add = append(c.add, headerPair{textproto.CanonicalMIMEHeaderKey(name), o.Add[name]})
	}
	return c
}

// apply edits h. Each set value gets its own slice: a handler further on may
// write into a header's values, and a slice shared between requests would
// carry that write into the next one.
func (c *compiledOps) apply(h http.Header) {
	for _, name := range c.remove {
		delete(h, name)
	}
	for _, p := range c.set {
		h[p.name] = []string{p.value}
	}
	for _, p := range c.add {
		h[p.name] = append(h[p.name], p.value)
	}
}

// Headers is the headers stage: it edits the request's headers before the
// rest of the pipeline sees them, and the response's headers just before they
// are written. It is not terminal.
//
// Request edits are made in place on the inbound request, as a reverse proxy's
// header rules are: stages after this one and the upstream see them, stages
// before it (a mirror placed earlier) do not. Response edits apply to the
// response the rest of the pipeline writes through WriteHeader, Write or
// Flush; a protocol switch (101, WebSocket) hijacks the connection and writes
// its own response, which they do not reach. A Host request header cannot be
// edited: the request's Host is passed upstream as the client sent it.
//
// The zero Headers changes nothing. A Headers must not be changed after Wrap;
// the handler Wrap returns is safe for concurrent use.
type Headers struct {
	Request  HeaderOps
	Response HeaderOps
}

// Validate reports every problem of h at once, each a FieldError.
func (h Headers) Validate() error {
	errs := h.Request.validate("request", true)
	errs = append(errs, h.Response.validate("response", false)...)
	return errors.Join(errs...)
}

// Wrap returns a handler that edits headers around next.
func (h Headers) Wrap(next http.Handler) (http.Handler, error) {
	if next == nil {
		return nil, errors.New("headers: a headers stage needs a stage after it")
	}
	if err := h.Validate(); err != nil {
		return nil, fmt.Errorf("headers: %w", err)
	}
	return &headersHandler{
		next:        next,
		request:     compileOps(h.Request),
		response:    compileOps(h.Response),
		hasRequest:  !h.Request.empty(),
		hasResponse: !h.Response.empty(),
	}, nil
}

type headersHandler struct {
	next        http.Handler
	request     compiledOps
	response    compiledOps
	hasRequest  bool
	hasResponse bool
}

func (h *headersHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if h.hasRequest {
		h.request.apply(r.Header)
	}
	if !h.hasResponse {
		h.next.ServeHTTP(w, r)
		return
	}
	h.next.ServeHTTP(&headerWriter{ResponseWriter: w, ops: &h.response}, r)
}

// headerWriter applies response header edits once, at the first final
// status. It implements Flush and Hijack itself (Flush must edit first) and
// Unwrap so that http.ResponseController reaches the rest (deadlines, full
// duplex) on the server's writer.
type headerWriter struct {
	http.ResponseWriter
	ops     *compiledOps
	applied bool
}

func (w *headerWriter) applyOnce() {
	if !w.applied {
		w.applied = true
		w.ops.apply(w.ResponseWriter.Header())
	}
}

// WriteHeader applies the edits before the first final status; informational
// 1xx responses (103 Early Hints) pass through unedited.
func (w *headerWriter) WriteHeader(code int) {
	if code >= 200 || code == http.StatusSwitchingProtocols {
		w.applyOnce()
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *headerWriter) Write(b []byte) (int, error) {
	w.applyOnce()
	return w.ResponseWriter.Write(b)
}

// Flush implements http.Flusher; a flush before any write sends the headers,
// so the edits come first.
func (w *headerWriter) Flush() {
	_ = w.FlushError()
}

// FlushError is what http.ResponseController.Flush calls.
func (w *headerWriter) FlushError() error {
	w.applyOnce()
	return http.NewResponseController(w.ResponseWriter).Flush()
}

// Hijack implements http.Hijacker for protocol upgrades.
func (w *headerWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return http.NewResponseController(w.ResponseWriter).Hijack()
}

// Unwrap lets http.ResponseController reach the server's writer.
func (w *headerWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

var (
	_ http.Flusher  = (*headerWriter)(nil)
	_ http.Hijacker = (*headerWriter)(nil)
)
