package proxy

import (
	"net/http"
	"strings"

	"sekisho/http1"
	"sekisho/proxy/config"
	"sekisho/router"
	"sekisho/scatter"
)

// The inbound request is cleaned before anything reads it: the client-IP
// resolution, the request id, the route match, every stage and every
// forwarding path (direct, ReverseProxy, scatter leaves, mirrors, shards)
// see a request that carries nothing about the client's connection to
// sekisho. Hop-by-hop headers go, with every header the client's
// Connection names; only what must survive is put back, in a canonical
// form: "Te: trailers", and "Connection: Upgrade" with the Upgrade asked
// for. Since the request then has no client-made Connection list, the
// hop-by-hop removal each forwarder does later can no longer remove a
// header a stage or the proxy has added (httputil.ReverseProxy's Rewrite
// exists for the same reason).

// inboundRules are a listener's rules for the inbound request, built once
// when the Runtime is compiled.
type inboundRules struct {
	// confusable holds, lower case and with '-' for '_', the names that
	// sekisho sets, strips or trusts: a client's header whose name reads
	// as one of them once its '_' are '-' is dropped, since some backends
	// (CGI-style environments among them) read X_Forwarded_For as
	// X-Forwarded-For.
	confusable map[string]struct{}
}

// confusableBase are the names every listener protects; newInboundRules
// adds those its headers stages edit.
var confusableBase = []string{
	"X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "X-Real-Ip", "X-Request-Id",
	"X-Client-Cert-Subject", router.MirrorHeader,
	// Set by a split and a scatter leaf for the upstream to trust.
	router.ArmHeader, scatter.LeafHeader,
	// Hop-by-hop and framing names: a backend that reads them with '_'
	// as '-' would frame the request or the connection differently.
	"Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Transfer-Encoding",
	"Content-Length", "Http2-Settings",
}

// newInboundRules builds the rules of a listener whose routes are routes.
func newInboundRules(routes []config.Route) inboundRules {
	in := inboundRules{confusable: map[string]struct{}{}}
	add := func(name string) {
		if strings.ContainsAny(name, "-_") {
			in.confusable[foldName(name)] = struct{}{}
		}
	}
	for _, n := range confusableBase {
		add(n)
	}
	var walk func([]config.Stage)
	walk = func(stages []config.Stage) {
		for i := range stages {
			s := &stages[i]
			if h := s.Headers; h != nil {
				for _, ops := range []config.HeaderOps{h.Request, h.Response} {
					for n := range ops.Set {
						add(n)
					}
					for n := range ops.Add {
						add(n)
					}
					for _, n := range ops.Remove {
						add(n)
					}
				}
			}
			if sp := s.Split; sp != nil {
				for j := range sp.Arms {
					walk(sp.Arms[j].Pipeline)
				}
			}
		}
	}
	for i := range routes {
		walk(routes[i].Pipeline)
	}
	return in
}

// foldName returns name lower case with '-' for '_'.
func foldName(name string) string {
	b := []byte(name)
	for i, c := range b {
		b[i] = foldByte(c)
	}
	return string(b)
}

func foldByte(c byte) byte {
	switch {
	case c == '_':
		return '-'
	case 'A' <= c && c <= 'Z':
		return c + 'a' - 'A'
	}
	return c
}

// isConfusable reports whether k, a name with a '_', reads as a protected
// name once folded.
func (in *inboundRules) isConfusable(k string) bool {
	var buf [64]byte
	if len(k) > len(buf) {
		_, ok := in.confusable[foldName(k)]
		return ok
	}
	for i := 0; i < len(k); i++ {
		buf[i] = foldByte(k[i])
	}
	_, ok := in.confusable[string(buf[:len(k)])]
	return ok
}

// hopByHop reports whether k is a hop-by-hop header of the client's
// connection: RFC 9110's list, as httputil.ReverseProxy has it, and
// HTTP2-Settings, which only means something with an h2c upgrade.
func hopByHop(k string) bool {
	switch k {
	case "Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
		"Te", "Trailer", "Transfer-Encoding", "Upgrade", "Http2-Settings":
		return true
	}
	return false
}

// sanitize cleans r's header in place, before any other part of sekisho
// reads it: hop-by-hop headers, X-Real-IP, and the underscore twins of
// protected names go. It costs one pass over the header's names and allocates only
// for a request it changes beyond deleting names (a Te list other than
// "trailers", an upgrade).
func (in *inboundRules) sanitize(r *http.Request) {
	h := r.Header
	conn := h["Connection"]
	te := h["Te"]
	// "Te: trailers" exactly, as gRPC clients send it, is kept as it is.
	teKept := len(te) == 1 && te[0] == "trailers"
	// An upgrade means something on HTTP/1.1 only (RFC 9110 7.8).
	var upgrade []string
	if len(conn) > 0 && r.ProtoMajor == 1 && r.ProtoMinor >= 1 && len(h["Upgrade"]) > 0 && http1.HasToken(conn, "upgrade") {
		upgrade = h["Upgrade"]
	}
	for k := range h {
		switch {
		case k == "Te" && teKept:
		case hopByHop(k),
			// Never read, and set only by a pool that says so
			// (set_real_ip): from a client it could be forged.
			k == "X-Real-Ip",
			len(conn) > 0 && http1.HasToken(conn, k),
			strings.IndexByte(k, '_') >= 0 && in.isConfusable(k):
			delete(h, k)
		}
	}
	if !teKept && len(te) > 0 && http1.HasToken(te, "trailers") {
		h["Te"] = []string{"trailers"}
	}
	if upgrade != nil {
		// h2c is never tunnelled: past the switch, the client's requests
		// would reach the upstream without a route, a stage or a rule.
		setUpgrade(h, upgrade, func(proto string) bool { return !strings.EqualFold(proto, "h2c") })
	}
}

// setUpgrade puts back on h the protocols of the Upgrade values vs that
// allow accepts (by protocol name, without its version), with
// "Connection: Upgrade"; when it accepts none, h asks for no upgrade.
func setUpgrade(h http.Header, vs []string, allow func(proto string) bool) {
	kept, same := filterUpgrade(vs, allow)
	switch {
	case kept == "":
		delete(h, "Upgrade")
		delete(h, "Connection")
		return
	case same:
		h["Upgrade"] = vs[:1:1]
	default:
		h["Upgrade"] = []string{kept}
	}
	if c := h["Connection"]; len(c) != 1 || c[0] != "Upgrade" {
		h["Connection"] = []string{"Upgrade"}
	}
}

// filterUpgrade returns the protocols of vs (comma-separated lists of
// protocol-name["/"protocol-version]) that are well formed and that allow
// accepts, as one value; same reports that this is vs's only value, unchanged.
func filterUpgrade(vs []string, allow func(proto string) bool) (kept string, same bool) {
	var b strings.Builder
	all := len(vs) == 1
	for _, v := range vs {
		for v != "" {
			var p string
			p, v, _ = strings.Cut(v, ",")
			p = strings.TrimSpace(p)
			if p == "" {
				continue
			}
			name, version, hasVersion := strings.Cut(p, "/")
			if !router.ValidToken(name) || hasVersion && !router.ValidToken(version) || !allow(name) {
				all = false
				continue
			}
			if b.Len() > 0 {
				b.WriteString(", ")
			}
			b.WriteString(p)
		}
	}
	if all && b.Len() > 0 && b.String() == vs[0] {
		return vs[0], true
	}
	return b.String(), false
}

// routeUpgrades are the protocols a route lets a client switch to, lower
// case; none when empty.
type routeUpgrades []string

func newRouteUpgrades(protos []string) routeUpgrades {
	u := make(routeUpgrades, len(protos))
	for i, p := range protos {
		u[i] = strings.ToLower(p)
	}
	return u
}

func (u routeUpgrades) allows(proto string) bool {
	for _, p := range u {
		if strings.EqualFold(p, proto) {
			return true
		}
	}
	return false
}

// apply strips from h an upgrade the route does not allow.
func (u routeUpgrades) apply(h http.Header) {
	setUpgrade(h, h["Upgrade"], u.allows)
}
