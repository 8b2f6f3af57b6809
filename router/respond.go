package router

import (
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/textproto"
	"slices"
	"strconv"
	"strings"

	"sekisho/http1"
)

// Respond is the respond stage: it answers the request itself with a fixed
// status, body and headers (maintenance pages, health answers, 404 for a
// path nothing serves). It is terminal.
//
// Status defaults to 200. Content-Type defaults to text/plain;
// charset=utf-8; Content-Length is always computed from Body. A HEAD request
// gets the headers without the body.
//
// A Respond must not be changed after Wrap; the handler Wrap returns is safe
// for concurrent use.
type Respond struct {
	Status  int
	Body    string
	Headers map[string]string
}

// Validate reports every problem of s at once, each a FieldError. The status must be a final
// one, 200..599: net/http sends a 1xx from a handler as an informational
// response and then a 200 of its own, so a 1xx cannot end a request.
func (s Respond) Validate() error {
	var errs []error
	status := s.status()
	if status < 200 || status > 599 {
		errs = append(errs, FieldErrorf("status", "status %d: want 200..599", s.Status))
	}
	if !bodyAllowed(status) && s.Body != "" {
		errs = append(errs, FieldErrorf("status", "status %d: a %d response has no body", status, status))
	}
	for _, name := range slices.Sorted(maps.Keys(s.Headers)) {
		v := s.Headers[name]
		switch {
		case !http1.ValidToken(name):
			errs = append(errs, FieldErrorf("headers", "header %q: not a header name", name))
		case strings.EqualFold(name, "Content-Length"), strings.EqualFold(name, "Transfer-Encoding"):
			errs = append(errs, FieldErrorf("headers", "header %q: computed from the body, cannot be set", name))
		case strings.ContainsAny(v, "\r\n\x00"):
			errs = append(errs, FieldErrorf("headers", "header %q: value contains CR, LF or NUL", name))
		}
	}
	return errors.Join(errs...)
}

func (s Respond) status() int {
	if s.Status == 0 {
		return http.StatusOK
	}
	return s.Status
}

func bodyAllowed(status int) bool {
	return status != http.StatusNoContent && status != http.StatusNotModified
}

// Wrap returns the handler that answers; next must be nil.
func (s Respond) Wrap(next http.Handler) (http.Handler, error) {
	if next != nil {
		return nil, errors.New("respond: a respond stage ends the pipeline")
	}
	if err := s.Validate(); err != nil {
		return nil, fmt.Errorf("respond: %w", err)
	}
	h := &respondHandler{status: s.status(), body: []byte(s.Body)}
	hasType := false
	for _, name := range slices.Sorted(maps.Keys(s.Headers)) {
		canon := textproto.CanonicalMIMEHeaderKey(name)
		hasType = hasType || canon == "Content-Type"
		h.headers = append(h.headers, headerSlice{canon, []string{s.Headers[name]}})
	}
	if bodyAllowed(h.status) {
		if !hasType {
			h.headers = append(h.headers, headerSlice{"Content-Type", []string{"text/plain; charset=utf-8"}})
		}
		h.headers = append(h.headers, headerSlice{"Content-Length", []string{strconv.Itoa(len(h.body))}})
	}
	return h, nil
}

// Terminal marks Respond as ending a pipeline.
func (Respond) Terminal() {}

type headerSlice struct {
	name   string
	values []string
}

type respondHandler struct {
	status  int
	body    []byte
	headers []headerSlice
}

// ServeHTTP shares each value slice between requests, with its capacity
// clamped so that an Add by an outer stage copies instead of writing into it;
// nothing else touches a response header map between here and the wire.
func (h *respondHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	hdr := w.Header()
	for _, p := range h.headers {
		hdr[p.name] = p.values[:len(p.values):len(p.values)]
	}
	w.WriteHeader(h.status)
	if r.Method != http.MethodHead && len(h.body) > 0 && bodyAllowed(h.status) {
		_, _ = w.Write(h.body)
	}
}

var _ Terminal = Respond{}
