package router

import (
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/netip"
	"net/textproto"
	"slices"
	"sort"
	"strings"

	"sekisho/http1"
)

// Match selects the requests a Route takes. The zero Match takes every
// request.
//
// Host and PathPrefix decide which route is most specific (see Table);
// Methods and Headers only filter.
type Match struct {
	// Host is an exact host name ("api.example.com") or a wildcard
	// ("*.example.com") that matches any depth of subdomain but not
	// "example.com" itself. It is compared case-insensitively with the
	// request's Host without its port and without a trailing dot. Empty
	// matches any host.
	Host string
	// PathPrefix is a plain string prefix of r.URL.Path, as Envoy's route
	// `prefix`: "/api" matches "/api", "/api/x" and also "/apix". Write
	// "/api/" to stop at the segment boundary. Empty means "/". A request
	// with an empty path (absolute-form without one) is matched as "/".
	PathPrefix string
	// Methods lists the request methods taken, compared exactly after
	// upper-casing the configured names (HTTP methods are case-sensitive and
	// clients send them upper-case). Empty takes every method.
	Methods []string
	// Headers maps a header name to the value it must have: the header must
	// be present, and unless the value is "" or "*" one of its field lines
	// must equal the value exactly. Empty requires nothing.
	Headers map[string]string
}

// Validate reports every problem of m at once.
func (m Match) Validate() error {
	var errs []error
	switch h := m.Host; {
	case h == "":
	case h == "*":
		errs = append(errs, errors.New(`host "*": leave host empty to match any host`))
	case strings.HasPrefix(h, "*."):
		if err := validHostName(h[2:]); err != nil {
			errs = append(errs, fmt.Errorf("host %q: %w", h, err))
		}
	default:
		if err := validHostName(h); err != nil {
			errs = append(errs, fmt.Errorf("host %q: %w", h, err))
		}
	}
	if m.PathPrefix != "" && m.PathPrefix[0] != '/' {
		errs = append(errs, fmt.Errorf("path_prefix %q: must start with /", m.PathPrefix))
	}
	for _, meth := range m.Methods {
		if !http1.ValidToken(meth) {
			errs = append(errs, fmt.Errorf("method %q: not an HTTP method token", meth))
		}
	}
	for _, name := range slices.Sorted(maps.Keys(m.Headers)) {
		if !http1.ValidToken(name) {
			errs = append(errs, fmt.Errorf("header %q: not a header name", name))
		}
	}
	return errors.Join(errs...)
}

func validHostName(h string) error {
	if h == "" {
		return errors.New("empty name")
	}
	if strings.HasPrefix(h, "[") {
		if a, err := netip.ParseAddr(strings.TrimSuffix(h[1:], "]")); err != nil || !a.Is6() || !strings.HasSuffix(h, "]") {
			return errors.New("want a bracketed IPv6 address such as [2001:db8::1]")
		}
		return nil
	}
	if strings.ContainsAny(h, "*/?#@[] \t:") {
		return errors.New("want a host name without port, scheme or path; a wildcard only as a leading *.")
	}
	return nil
}

// Route is a named pipeline and the requests it takes. Handler serves
// concurrent requests, so it must be safe for concurrent use.
type Route struct {
	Name    string
	Match   Match
	Handler http.Handler
}

// Table finds the route of a request. The most specific route wins: a route
// with an exact host before one with a wildcard host (the longer wildcard
// suffix first) before one with no host; then the longest path prefix; then
// the order of the configuration. Methods and headers filter but do not rank.
//
// A Table is immutable once built and safe for concurrent use; Match does not
// allocate.
type Table struct {
	routes []compiledRoute
}

type hostKind uint8

const (
	hostAny hostKind = iota
	hostWildcard
	hostExact
)

type compiledRoute struct {
	route   *Route
	kind    hostKind
	host    string // exact host, or ".example.com" for a wildcard
	prefix  string
	methods []string
	headers []headerMatch
}

type headerMatch struct {
	name  string // canonical
	value string
	any   bool
}

// NewTable orders routes by precedence once, so that Match is a scan that
// stops at the first hit. It copies routes; later changes to the slice do not
// reach the Table. Match.Validate is not called: validate first.
func NewTable(routes []Route) *Table {
	t := &Table{routes: make([]compiledRoute, len(routes))}
	own := make([]Route, len(routes))
	copy(own, routes)
	for i := range own {
		m := own[i].Match
		c := compiledRoute{route: &own[i], prefix: m.PathPrefix}
		if c.prefix == "" {
			c.prefix = "/"
		}
		switch {
		case m.Host == "":
		case strings.HasPrefix(m.Host, "*."):
			c.kind, c.host = hostWildcard, strings.ToLower(strings.TrimSuffix(m.Host[1:], "."))
		default:
			c.kind, c.host = hostExact, strings.ToLower(strings.TrimSuffix(m.Host, "."))
		}
		for _, meth := range m.Methods {
			c.methods = append(c.methods, strings.ToUpper(meth))
		}
		for _, name := range slices.Sorted(maps.Keys(m.Headers)) {
			v := m.Headers[name]
			c.headers = append(c.headers, headerMatch{
				name:  textproto.CanonicalMIMEHeaderKey(name),
				value: v,
				any:   v == "" || v == "*",
			})
		}
		t.routes[i] = c
	}
	sort.SliceStable(t.routes, func(i, j int) bool {
		a, b := &t.routes[i], &t.routes[j]
		if a.kind != b.kind {
			return a.kind > b.kind
		}
		if a.kind == hostWildcard && len(a.host) != len(b.host) {
			return len(a.host) > len(b.host)
		}
		return len(a.prefix) > len(b.prefix)
	})
	return t
}

// Match returns the route of r, or nil when no route takes it. The Route
// belongs to the Table and must not be modified.
func (t *Table) Match(r *http.Request) *Route {
	host := requestHost(r)
	path := r.URL.Path
	if path == "" {
		path = "/"
	}
	for i := range t.routes {
		c := &t.routes[i]
		if c.matches(r, host, path) {
			return c.route
		}
	}
	return nil
}

// Len reports the number of routes.
func (t *Table) Len() int { return len(t.routes) }

func (c *compiledRoute) matches(r *http.Request, host, path string) bool {
	switch c.kind {
	case hostExact:
		if len(host) != len(c.host) || !strings.EqualFold(host, c.host) {
			return false
		}
	case hostWildcard:
		if len(host) <= len(c.host) || !strings.EqualFold(host[len(host)-len(c.host):], c.host) {
			return false
		}
	}
	if !strings.HasPrefix(path, c.prefix) {
		return false
	}
	if len(c.methods) > 0 && !contains(c.methods, r.Method) {
		return false
	}
	for i := range c.headers {
		h := &c.headers[i]
		vs, ok := r.Header[h.name]
		if !ok || (!h.any && !contains(vs, h.value)) {
			return false
		}
	}
	return true
}

// requestHost returns the host of r without its port and without a trailing
// dot, keeping an IPv6 literal's brackets. It does not allocate.
func requestHost(r *http.Request) string {
	h := r.Host
	if h == "" && r.URL != nil {
		h = r.URL.Host
	}
	if i := strings.LastIndexByte(h, ':'); i >= 0 && !strings.Contains(h[i:], "]") {
		h = h[:i]
	}
	return strings.TrimSuffix(h, ".")
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// ValidToken reports whether s is an RFC 9110 token: http1.ValidToken,
// for the config validation that still calls it here (issue 14 moves it).
func ValidToken(s string) bool { return http1.ValidToken(s) }
