package config

import (
	"fmt"
	"net/textproto"
	"slices"
	"strings"
)

// Warnings are problems that do not stop a config from loading but make a
// part of it do nothing (a route no request can reach), in file order.
// `sekisho validate` prints them and a load logs them. Empty for a config
// that failed to load.
func (c *Config) Warnings() Errors { return c.warnings }

func (v *validation) warnAt(path, format string, args ...any) {
	v.warnings = append(v.warnings, Error{File: v.c.file, Pos: v.c.at(path), Msg: fmt.Sprintf(format, args...)})
}

// shadowedRoutes warns of each route of a listener that an earlier route
// takes every request of. Routes are tried most specific first (see
// router.Table), so only a route as specific (the same host, the same
// path_prefix) that comes earlier in the file can shadow one: it does when
// it accepts every method the later one does and asks of the headers no
// more than the later one does.
func (v *validation) shadowedRoutes(l *Listener, p string) {
	for j := range l.Routes {
		for i := range j {
			a, b := &l.Routes[i].Match, &l.Routes[j].Match
			if !covers(a, b) {
				continue
			}
			v.warnAt(fmt.Sprintf("%s.routes[%d].name", p, j),
				"route %q never gets a request: route %q (at %s) matches every request it does and is tried first (the same host and path_prefix, earlier in the file)",
				l.Routes[j].Name, l.Routes[i].Name, posString(v.c.at(fmt.Sprintf("%s.routes[%d].name", p, i))))
			break
		}
	}
}

// covers reports whether a route matching a, tried before one matching b,
// takes every request b matches.
func covers(a, b *Match) bool {
	if normHost(a.Host) != normHost(b.Host) || a.PathPrefix != b.PathPrefix {
		return false
	}
	if len(a.Methods) > 0 {
		if len(b.Methods) == 0 {
			return false
		}
		for _, m := range b.Methods {
			if !slices.Contains(a.Methods, m) {
				return false
			}
		}
	}
	bh := map[string]string{}
	for name, val := range b.Headers {
		bh[textproto.CanonicalMIMEHeaderKey(name)] = val
	}
	for name, want := range a.Headers {
		got, ok := bh[textproto.CanonicalMIMEHeaderKey(name)]
		if !ok {
			return false
		}
		if want != "" && want != "*" && got != want {
			return false
		}
	}
	return true
}

func normHost(h string) string { return strings.ToLower(strings.TrimSuffix(h, ".")) }

// redirectLoops reports the redirects of a route's pipeline (split arms
// included) that send a client back to a URL the same route answers with
// the same redirect, forever:
//   - drop_query alone: /a?x goes to /a, and /a to /a;
//   - path alone (with or without drop_query), when the route matches that
//     path itself, no other route of the listener could take it first
//     (one whose path_prefix the path starts with too) and the route asks
//     nothing of methods or headers that the redirected request might not
//     have: every request goes to the path, and the path to itself.
//
// A redirect that changes the scheme, host or port may reach another
// listener or another proxy, so it is never taken for a loop.
func (v *validation) redirectLoops(l *Listener, ri int, stages []Stage, p string) {
	r := &l.Routes[ri]
	for i := range stages {
		s := &stages[i]
		sp := fmt.Sprintf("%s[%d]", p, i)
		if s.Split != nil {
			for a := range s.Split.Arms {
				v.redirectLoops(l, ri, s.Split.Arms[a].Pipeline, fmt.Sprintf("%s.split.arms[%d].pipeline", sp, a))
			}
		}
		d := s.Redirect
		if d == nil || d.Scheme != "" || d.Host != "" || d.Port != "" {
			continue
		}
		switch {
		case d.Path == "" && d.DropQuery:
			v.at(sp+".redirect", "redirect: drop_query alone sends /a?x to /a and /a to itself, a loop; set scheme, host, port or path too")
		case d.Path != "" && strings.HasPrefix(d.Path, r.Match.PathPrefix) && len(r.Match.Methods) == 0 && len(r.Match.Headers) == 0 && !takenFirst(l, ri, d.Path):
			v.at(sp+".redirect.path", "redirect: path %q is matched by this route (path_prefix %q), which redirects it to itself, a loop", d.Path, r.Match.PathPrefix)
		}
	}
}

// takenFirst reports whether a route of l other than the ri-th might take
// a request for path on the ri-th route's host before it.
func takenFirst(l *Listener, ri int, path string) bool {
	for i := range l.Routes {
		if i != ri && strings.HasPrefix(path, l.Routes[i].Match.PathPrefix) && len(l.Routes[i].Match.PathPrefix) >= len(l.Routes[ri].Match.PathPrefix) {
			return true
		}
		if i != ri && l.Routes[i].Match.Host != "" && l.Routes[ri].Match.Host == "" && strings.HasPrefix(path, l.Routes[i].Match.PathPrefix) {
			return true
		}
	}
	return false
}
