package router

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
)

// Redirect is the redirect stage: it answers with a redirect to a URL built
// from the request, each empty field keeping the request's value. It is
// terminal.
//
// The port follows the authority: it is kept from the request only when
// neither Scheme nor Host is set, because a port belongs to the scheme and
// host it was reached by. So `redirect: {scheme: https}` turns
// http://example.com:8080/a?b into https://example.com/a?b, and a port the
// target needs is given in Port. A port that is the default of the target's
// scheme (80 for http, 443 for https) is never written.
//
// The request's scheme is https when it arrived over TLS (r.TLS), http
// otherwise. The query is kept unless DropQuery is set. Status defaults to
// 302 (Found); 301, 302, 307 and 308 are allowed.
//
// A Redirect must not be changed after Wrap; the handler Wrap returns is safe
// for concurrent use.
type Redirect struct {
	Scheme string // "http" or "https"; empty keeps the request's
	// Host is a host name or a bracketed IPv6 literal, without port; empty
	// keeps the request's.
	Host string
	Port string // 1..65535; empty: see the type's doc
	// Path replaces the whole path; it starts with / and has no query. Empty
	// keeps the request's path, escaped as it came.
	Path      string
	Status    int
	DropQuery bool
}

// Validate reports every problem of d at once, each a FieldError, including a redirect that
// would send the client back to the URL it asked for.
func (d Redirect) Validate() error {
	var errs []error
	switch d.Status {
	case 0, http.StatusMovedPermanently, http.StatusFound, http.StatusTemporaryRedirect, http.StatusPermanentRedirect:
	default:
		errs = append(errs, FieldErrorf("status", "status %d: want 301, 302, 307 or 308", d.Status))
	}
	switch d.Scheme {
	case "", "http", "https":
	default:
		errs = append(errs, FieldErrorf("scheme", "scheme %q: want http or https", d.Scheme))
	}
	if d.Host != "" {
		if err := validHostName(d.Host); err != nil {
			errs = append(errs, FieldErrorf("host", "host %q: %v", d.Host, err))
		}
	}
	if d.Port != "" {
		if n, err := strconv.Atoi(d.Port); err != nil || n < 1 || n > 65535 {
			errs = append(errs, FieldErrorf("port", "port %q: want 1..65535", d.Port))
		}
	}
	if d.Path != "" && (d.Path[0] != '/' || strings.ContainsAny(d.Path, "?# \t\r\n\x00")) {
		errs = append(errs, FieldErrorf("path", "path %q: want an absolute path without query, fragment or whitespace", d.Path))
	}
	if d.Scheme == "" && d.Host == "" && d.Port == "" && d.Path == "" && !d.DropQuery {
		errs = append(errs, FieldErrorf("", "redirect to the URL requested: set at least one of scheme, host, port, path or drop_query"))
	}
	return errors.Join(errs...)
}

// Wrap returns the handler that redirects; next must be nil.
func (d Redirect) Wrap(next http.Handler) (http.Handler, error) {
	if next != nil {
		return nil, errors.New("redirect: a redirect stage ends the pipeline")
	}
	if err := d.Validate(); err != nil {
		return nil, fmt.Errorf("redirect: %w", err)
	}
	if d.Status == 0 {
		d.Status = http.StatusFound
	}
	return &redirectHandler{d}, nil
}

// Terminal marks Redirect as ending a pipeline.
func (Redirect) Terminal() {}

type redirectHandler struct{ d Redirect }

func (h *redirectHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header()["Location"] = []string{h.d.Location(r)}
	w.WriteHeader(h.d.Status)
}

// Location returns the URL d sends r to.
func (d Redirect) Location(r *http.Request) string {
	scheme := d.Scheme
	if scheme == "" {
		scheme = "http"
		if r.TLS != nil {
			scheme = "https"
		}
	}
	reqHost, reqPort := splitAuthority(r.Host)
	host, port := d.Host, d.Port
	if host == "" {
		host = reqHost
	}
	if port == "" && d.Scheme == "" && d.Host == "" {
		port = reqPort
	}
	if (scheme == "http" && port == "80") || (scheme == "https" && port == "443") {
		port = ""
	}
	path := d.Path
	if path == "" {
		path = r.URL.EscapedPath()
		if path == "" {
			path = "/"
		}
	}

	var b strings.Builder
	b.Grow(len(scheme) + 3 + len(host) + 1 + len(port) + len(path) + 1 + len(r.URL.RawQuery) + 2)
	b.WriteString(scheme)
	b.WriteString("://")
	b.WriteString(host)
	if port != "" {
		b.WriteByte(':')
		b.WriteString(port)
	}
	b.WriteString(path)
	if !d.DropQuery && r.URL.RawQuery != "" {
		b.WriteByte('?')
		b.WriteString(r.URL.RawQuery)
	}
	return b.String()
}

// splitAuthority splits a Host header value into host and port, keeping an
// IPv6 literal's brackets; the port is empty when there is none.
func splitAuthority(a string) (host, port string) {
	i := strings.LastIndexByte(a, ':')
	if i < 0 || strings.IndexByte(a[i:], ']') >= 0 {
		return a, ""
	}
	return a[:i], a[i+1:]
}

var _ Terminal = Redirect{}
