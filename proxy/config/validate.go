package config

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"sekisho/health"
	"sekisho/proxy/balance"
	"sekisho/router"
)

// validation collects positioned problems.
type validation struct {
	c    *Config
	errs Errors
	// reported holds the paths of the problems found by this package's own
	// checks, so that a stage package's Validate reporting the same field
	// again is left out (see stageErrors).
	reported map[string]bool
	warnings Errors
}

func (v *validation) at(path, format string, args ...any) {
	if v.reported == nil {
		v.reported = map[string]bool{}
	}
	v.reported[path] = true
	v.add(path, fmt.Sprintf(format, args...))
}

func (v *validation) add(path, msg string) {
	v.errs = append(v.errs, Error{File: v.c.file, Pos: v.c.at(path), Msg: msg})
}

// stageErrors places the errors of a stage package's Validate at the stage
// at path: a router.FieldError at its Field within the stage ("leaves[2]",
// "merge.sort_by"; at the closest key written when the field was left
// out), any other error at the stage itself. A FieldError for a field this
// validation has reported a problem at already is left out: it is the same
// problem, found by both. reported, when not nil, names further fields whose
// problems this validation reports itself, with sharper positions or
// words; their errors are left out too.
func (v *validation) stageErrors(path string, err error, reported func(field string) bool) {
	for _, e := range joinedErrors(err) {
		var fe router.FieldError
		if !errors.As(e, &fe) {
			v.add(path, e.Error())
			continue
		}
		if reported != nil && reported(fe.Field) {
			continue
		}
		fp := path
		if fe.Field != "" {
			fp = path + "." + fe.Field
			if strings.HasPrefix(fe.Field, "[") {
				fp = path + fe.Field
			}
		}
		if v.reported[fp] {
			continue
		}
		v.add(fp, fe.Msg)
	}
}

// joinedErrors returns the errors joined in err, at any depth and through
// a wrapper of a join ("split x: ..."), so each problem gets a line of its
// own.
func joinedErrors(err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, joinedErrors(e)...)
		}
		return out
	}
	if inner := errors.Unwrap(err); inner != nil {
		if _, ok := inner.(interface{ Unwrap() []error }); ok {
			return joinedErrors(inner)
		}
	}
	return []error{err}
}

// fieldKey is the stage's own key in a FieldError's Field: the path up to
// its first "." or "[".
func fieldKey(field string) string {
	if i := strings.IndexAny(field, ".["); i >= 0 {
		return field[:i]
	}
	return field
}

// listEntry reports whether field is an entry of the stage's list key
// ("shards[2]" or "shards[2].name" of "shards").
func listEntry(field, key string) bool {
	return strings.HasPrefix(field, key+"[")
}

func (c *Config) validate() Errors {
	v := &validation{c: c}
	defer func() {
		if len(v.errs) == 0 {
			c.warnings = sortErrors(v.warnings)
		}
	}()
	if c.Version != 1 {
		v.at("version", "version: want 1, got %d", c.Version)
	}
	var bound []socket // every address the daemon binds, for clashes
	if c.Admin.Listen != "off" {
		if err := checkListenAddr(c.Admin.Listen); err != nil {
			v.at("admin.listen", "admin.listen: %v", err)
		} else {
			bound = append(bound, socket{"admin.listen", "admin.listen", "admin.listen", c.Admin.Listen})
		}
	}
	if pl := c.Admin.PublicListen; pl != "" && pl != "off" {
		if err := checkListenAddr(pl); err != nil {
			v.at("admin.public_listen", "admin.public_listen: %v", err)
		} else {
			bound = append(bound, socket{"admin.public_listen", "admin.public_listen", "admin.public_listen", pl})
		}
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		v.at("log.level", "log.level: want debug, info, warn or error, got %q", c.Log.Level)
	}
	switch c.Log.Format {
	case "json", "console":
	default:
		v.at("log.format", "log.format: want json or console, got %q", c.Log.Format)
	}
	if c.ShutdownGrace < 0 {
		v.at("shutdown_grace", "shutdown_grace: must not be negative")
	}
	if len(c.Listeners) == 0 {
		v.at("listeners", "listeners: at least one listener is needed")
	}
	names := map[string]string{}
	for i := range c.Listeners {
		l := &c.Listeners[i]
		p := fmt.Sprintf("listeners[%d]", i)
		switch {
		case l.Name == "":
			v.at(p, "listener: name is missing")
		case names[l.Name] != "":
			v.at(p+".name", "listener name %q is used twice (first at %s)", l.Name, names[l.Name])
		default:
			names[l.Name] = posString(c.at(p + ".name"))
		}
		if err := checkListenAddr(l.Listen); err != nil {
			v.at(p+".listen", "listen: %v", err)
		} else {
			bound = append(bound, socket{p + ".listen", "listen", fmt.Sprintf("listener %q", l.Name), l.Listen})
		}
		v.listener(l, p)
	}
	v.sockets(bound)
	for _, name := range slices.Sorted(maps.Keys(c.Pools)) {
		v.pool(name, c.Pools[name], "pools."+name)
	}
	v.discoveryRules()
	return v.errs
}

func posString(p Pos) string { return fmt.Sprintf("%d:%d", p.Line, p.Col) }

func checkListenAddr(addr string) error {
	if addr == "" {
		return errors.New("address is missing (want host:port, as 127.0.0.1:8080 or :8080)")
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q is not host:port", addr)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("%q: bad port %q", addr, port)
	}
	if host != "" && host != "localhost" {
		if _, err := netip.ParseAddr(host); err != nil {
			return fmt.Errorf("%q: listen on an IP address, localhost or all addresses (:PORT)", addr)
		}
	}
	return nil
}

func (v *validation) listener(l *Listener, p string) {
	if l.Timeouts.ReadHeader < 0 || l.Timeouts.Read < 0 || l.Timeouts.Write < 0 || l.Timeouts.Idle < 0 {
		v.at(p+".timeouts", "timeouts: must not be negative")
	}
	if l.MaxHeaderBytes < 1024 {
		v.at(p+".max_header_bytes", "max_header_bytes: %d is too small (at least 1024)", l.MaxHeaderBytes)
	}
	if l.MaxBodyBytes < 0 {
		v.at(p+".max_body_bytes", "max_body_bytes: must not be negative (0: no limit)")
	}
	if l.MaxConnections < 0 {
		v.at(p+".max_connections", "max_connections: must not be negative (0: no limit)")
	}
	for i, s := range l.ClientIP.TrustedProxies {
		if _, err := ParsePrefix(s); err != nil {
			v.at(fmt.Sprintf("%s.client_ip.trusted_proxies[%d]", p, i), "trusted_proxies: %v", err)
		}
	}
	if l.TLS != nil {
		v.tls(l.TLS, p+".tls")
	}
	if len(l.Routes) == 0 {
		v.at(p, "listener %q has no routes", l.Name)
	}
	routes := map[string]string{}
	for i := range l.Routes {
		r := &l.Routes[i]
		rp := fmt.Sprintf("%s.routes[%d]", p, i)
		switch {
		case r.Name == "":
			v.at(rp, "route: name is missing")
		case routes[r.Name] != "":
			v.at(rp+".name", "route name %q is used twice in listener %q (first at %s)", r.Name, l.Name, routes[r.Name])
		default:
			routes[r.Name] = posString(v.c.at(rp + ".name"))
		}
		v.match(&r.Match, rp+".match")
		if r.MaxBodyBytes != nil && *r.MaxBodyBytes < 0 {
			v.at(rp+".max_body_bytes", "max_body_bytes: must not be negative (0: no limit)")
		}
		if r.Timeout < 0 {
			v.at(rp+".timeout", "timeout: must not be negative (0: none)")
		}
		v.upgrades(r.Upgrades, rp+".upgrades")
		v.pipeline(r.Pipeline, rp+".pipeline")
		v.redirectLoops(l, i, r.Pipeline, rp+".pipeline")
	}
	v.shadowedRoutes(l, p)
}

// upgrades checks a route's upgrade protocols: names (tokens), never h2c,
// whose tunnel would carry the client's later requests past every route.
func (v *validation) upgrades(protos []string, p string) {
	for i, proto := range protos {
		ip := fmt.Sprintf("%s[%d]", p, i)
		switch {
		case !router.ValidToken(proto):
			v.at(ip, "upgrades: %q is not a protocol name (a token, as websocket)", proto)
		case strings.EqualFold(proto, "h2c"):
			v.at(ip, "upgrades: h2c is never tunnelled (speak HTTP/2 to the listener with prior knowledge or TLS instead)")
		}
	}
}

// ParsePrefix accepts a CIDR or a single address.
func ParsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is not a CIDR", s)
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not an address or CIDR", s)
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

func (v *validation) match(m *Match, p string) {
	if h := m.Host; h != "" {
		name := strings.TrimPrefix(h, "*.")
		if strings.Contains(name, "*") || strings.ContainsAny(name, " /:") || name == "" {
			v.at(p+".host", "host: %q is not a host name or *.suffix wildcard", h)
		}
	}
	if !strings.HasPrefix(m.PathPrefix, "/") {
		v.at(p+".path_prefix", "path_prefix: %q must start with /", m.PathPrefix)
	}
	for i, meth := range m.Methods {
		if meth == "" || strings.ToUpper(meth) != meth || strings.ContainsAny(meth, " \t/") {
			v.at(fmt.Sprintf("%s.methods[%d]", p, i), "methods: %q is not an HTTP method (write it in capitals, as GET)", meth)
		}
	}
	for name := range m.Headers {
		if !router.ValidToken(name) {
			v.at(p+".headers."+name, "headers: %q is not a header name", name)
		}
	}
}

func (v *validation) pipeline(stages []Stage, p string) {
	if len(stages) == 0 {
		v.at(p, "pipeline is empty: it must end in a terminal stage (proxy, shard, scatter, split, respond or redirect)")
		return
	}
	for i := range stages {
		s := &stages[i]
		sp := fmt.Sprintf("%s[%d]", p, i)
		kind := s.Kind()
		if kind == "" {
			continue // the decoder reported it
		}
		last := i == len(stages)-1
		if s.terminal() && !last {
			v.at(sp+"."+kind, "%s is a terminal stage, but %d stage(s) follow it", kind, len(stages)-1-i)
		}
		if last && !s.terminal() {
			v.at(sp+"."+kind, "pipeline ends in %s, which is not a terminal stage: end it with proxy, shard, scatter, split, respond or redirect", kind)
		}
		v.stage(s, sp+"."+kind)
	}
}

func (v *validation) poolRef(name, p string) {
	if name == "" {
		v.at(p, "pool name is missing")
		return
	}
	if _, ok := v.c.Pools[name]; !ok {
		v.at(p, "pool %q is not defined under pools", name)
	}
}

func (v *validation) key(k KeySpec, p string, required bool) {
	if len(k) == 0 {
		if required {
			v.at(p, "key is missing (client_ip, header:NAME, cookie:NAME, query:NAME, path or host)")
		}
		return
	}
	if _, err := router.ParseKey(k...); err != nil {
		v.at(p, "%v", err)
	}
}

func (v *validation) stage(s *Stage, p string) {
	switch {
	case s.Proxy != nil:
		v.poolRef(s.Proxy.Pool, p)
	case s.Headers != nil:
		v.stageErrors(p, s.Headers.Headers().Validate(), nil)
	case s.Respond != nil:
		v.stageErrors(p, s.Respond.Respond().Validate(), nil)
	case s.Redirect != nil:
		v.stageErrors(p, s.Redirect.Redirect().Validate(), nil)
	case s.Shard != nil:
		v.shard(s.Shard, p)
	case s.Scatter != nil:
		v.scatter(s.Scatter, p)
	case s.Split != nil:
		v.split(s.Split, p)
	case s.Mirror != nil:
		v.mirror(s.Mirror, p)
	}
}

func (v *validation) pool(name string, pc *Pool, p string) {
	if pc == nil {
		v.at(p, "pool %q is empty: it needs endpoints", name)
		return
	}
	if len(pc.Endpoints) == 0 {
		v.at(p, "pool %q has no endpoints", name)
	}
	seen := map[string]bool{}
	targets := map[targetKey]bool{}
	for i, e := range pc.Endpoints {
		ep := fmt.Sprintf("%s.endpoints[%d]", p, i)
		if e.Discovered() {
			v.discoveredEndpoint(name, pc, e, ep, targets)
			continue
		}
		u, err := ParseEndpoint(e.Address)
		if err != nil {
			v.at(ep, "endpoint: %v", err)
			continue
		}
		if seen[u.Host] {
			v.at(ep, "endpoint %q is listed twice in pool %q", e.Address, name)
		}
		seen[u.Host] = true
		if e.Weight < 0 {
			v.at(ep+".weight", "weight: must not be negative")
		}
		if u.Scheme == "https" && pc.Protocol == "h2c" {
			v.at(ep, "endpoint %q is https but the pool's protocol is h2c (cleartext)", e.Address)
		}
	}
	if _, err := balance.New(pc.Balance, router.Key{}, 0); err != nil && pc.Balance != "hash" {
		v.at(p+".balance", "balance: want round_robin, least_request, random, ip_hash or hash, got %q", pc.Balance)
	}
	if pc.Balance == "hash" && len(pc.HashKey) == 0 {
		v.at(p+".balance", "balance: hash needs hash_key")
	}
	if len(pc.HashKey) > 0 && pc.Balance != "hash" {
		v.at(p+".hash_key", "hash_key is only used with balance: hash")
	}
	v.key(pc.HashKey, p+".hash_key", false)
	v.retries(pc.Retries, p+".retries")
	if pc.Timeouts.Connect < 0 || pc.Timeouts.ResponseHeader < 0 || pc.Timeouts.Idle < 0 || pc.Timeouts.BodyIdle < 0 {
		v.at(p+".timeouts", "timeouts: must not be negative")
	}
	if pc.SlowStart < 0 {
		v.at(p+".slow_start", "slow_start: must not be negative")
	}
	if pc.MaxIdlePerEndpoint < 0 {
		v.at(p+".max_idle_per_endpoint", "max_idle_per_endpoint: must not be negative")
	}
	if pc.MaxInFlight < 0 {
		v.at(p+".max_in_flight", "max_in_flight: must not be negative (0: no limit)")
	}
	if pc.OverflowRetryAfter < 0 {
		v.at(p+".overflow_retry_after", "overflow_retry_after: must not be negative")
	}
	if pc.OverflowRetryAfter != 0 && pc.MaxInFlight == 0 {
		v.at(p+".overflow_retry_after", "overflow_retry_after is only used with max_in_flight")
	}
	switch pc.Protocol {
	case "http1", "h2c", "h2":
	default:
		v.at(p+".protocol", "protocol: want http1, h2c or h2, got %q", pc.Protocol)
	}
	if pc.Forwarded != "" && pc.Forwarded != "rfc7239" {
		v.at(p+".forwarded", "forwarded: want rfc7239 or nothing, got %q", pc.Forwarded)
	}
	if r := pc.Readiness; r != nil {
		rp := p + ".readiness"
		if !strings.HasPrefix(r.Path, "/") {
			v.at(rp+".path", "path: %q must start with /", r.Path)
		}
		if r.Interval <= 0 {
			v.at(rp+".interval", "interval: must be positive")
		}
		if r.Timeout <= 0 {
			v.at(rp+".timeout", "timeout: must be positive")
		}
		if r.Rise < 1 {
			v.at(rp+".rise", "rise: must be at least 1")
		}
		if r.Fall < 1 {
			v.at(rp+".fall", "fall: must be at least 1")
		}
		for i, spec := range r.ExpectStatus {
			if _, err := health.ParseStatusRanges([]string{spec}); err != nil {
				v.at(fmt.Sprintf("%s.expect_status[%d]", rp, i), "expect_status: %v", err)
			}
		}
	}
	if o := pc.Outlier; o != nil {
		op := p + ".outlier"
		if o.ConsecutiveFailures < 1 {
			v.at(op+".consecutive_failures", "consecutive_failures: must be at least 1")
		}
		if o.Eject <= 0 {
			v.at(op+".eject", "eject: must be positive")
		}
		if o.MaxEject < o.Eject {
			v.at(op+".max_eject", "max_eject: must be at least eject (%s)", o.Eject.D())
		}
		if *o.MaxEjectedPercent < 0 || *o.MaxEjectedPercent > 100 {
			v.at(op+".max_ejected_percent", "max_ejected_percent: want 0..100, got %d", *o.MaxEjectedPercent)
		}
	}
	if pc.TLS != nil {
		v.upstreamTLS(pc.TLS, p+".tls")
	}
	if pc.Sticky != nil {
		v.sticky(pc.Sticky, p+".sticky")
	}
	v.poolDiscovery(name, pc, p)
}

// ParseEndpoint accepts host:port, http://host:port and https://host:port.
func ParseEndpoint(s string) (*url.URL, error) {
	if s == "" {
		return nil, errors.New("address is missing")
	}
	raw := s
	if !strings.Contains(s, "://") {
		raw = "http://" + s
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("%q is not host:port or http(s)://host:port", s)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("%q: scheme must be http or https", s)
	}
	if u.Path != "" && u.Path != "/" || u.RawQuery != "" || u.User != nil {
		return nil, fmt.Errorf("%q: an endpoint is an address only (no path, query or user)", s)
	}
	host, port, err := net.SplitHostPort(u.Host)
	if err != nil || host == "" {
		return nil, fmt.Errorf("%q needs a host and a port", s)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return nil, fmt.Errorf("%q: bad port %q", s, port)
	}
	u.Path = ""
	return u, nil
}

// retryConditions are the values of a pool's retries.on.
var retryConditions = []string{"connect-failure", "reset", "refused-stream", "502", "503", "504", "timeout"}

func (v *validation) retries(r *Retries, p string) {
	if *r.Attempts < 0 {
		v.at(p+".attempts", "attempts: must not be negative")
	}
	for i, on := range r.On {
		if !slices.Contains(retryConditions, on) {
			v.at(fmt.Sprintf("%s.on[%d]", p, i), "on: want %s, got %q", strings.Join(retryConditions, ", "), on)
		}
	}
	if r.PerTryTimeout < 0 {
		v.at(p+".per_try_timeout", "per_try_timeout: must not be negative")
	}
	if b := r.Backoff; b != nil {
		if b.Base <= 0 {
			v.at(p+".backoff.base", "base: must be positive")
		}
		if b.Max < b.Base {
			v.at(p+".backoff.max", "max: must be at least base (%s)", b.Base.D())
		}
	}
	if pct := *r.Budget.Percent; pct < 0 || pct > 100 {
		v.at(p+".budget.percent", "percent: want 0..100, got %d", pct)
	}
	if *r.Budget.MinConcurrency < 0 {
		v.at(p+".budget.min_concurrency", "min_concurrency: must not be negative")
	}
}
