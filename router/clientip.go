package router

import (
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// ClientIPResolver finds the address of the client behind a request. The peer
// address is the client unless the peer is a trusted proxy; then the
// right-most X-Forwarded-For hop that is not itself trusted is (the Forwarded
// header's for= is read when X-Forwarded-For is absent). Hops to the left of
// the first untrusted one were written by parties nobody vouches for, so they
// are never believed.
//
// The zero ClientIPResolver trusts nobody: the peer address is the client.
// It is immutable once built and safe for concurrent use.
type ClientIPResolver struct {
	// Trusted are the networks of proxies whose forwarding headers are believed.
	Trusted []netip.Prefix
}

// Resolve returns the client address of r, without a port. It does not
// allocate.
func (c *ClientIPResolver) Resolve(r *http.Request) string {
	ip, _ := c.ResolvePeer(r)
	return ip
}

// ResolvePeer is Resolve that also reports whether the peer itself is a
// trusted proxy, whose forwarding headers may be passed upstream.
func (c *ClientIPResolver) ResolvePeer(r *http.Request) (client string, trustedPeer bool) {
	peer, trusted := c.peer(r)
	if !trusted {
		return peer, false
	}
	return c.fromHeaders(r, peer, nil), true
}

// ResolveChain is ResolvePeer that also returns the X-Forwarded-For chain a
// proxy passes on for r: the hops from the client to the peer, client first,
// each an address without port or brackets, ", "-separated. The chain is
// what ResolvePeer believed and nothing more: the client's own claims (the
// hops to the left of the client) are left out, and a Forwarded header's
// for= addresses become plain hops. chain is "" when it would be the peer
// alone (an untrusted peer, or a trusted one that vouched for nobody); then
// ResolveChain does not allocate.
func (c *ClientIPResolver) ResolveChain(r *http.Request) (client, chain string, trustedPeer bool) {
	peer, trusted := c.peer(r)
	if !trusted {
		return peer, "", false
	}
	var buf [8]string
	hops := buf[:0]
	client = c.fromHeaders(r, peer, &hops)
	if len(hops) == 0 {
		return client, "", true
	}
	n := len(peer)
	for _, h := range hops {
		n += len(h) + 2
	}
	var b strings.Builder
	b.Grow(n)
	for i := len(hops) - 1; i >= 0; i-- {
		b.WriteString(hops[i])
		b.WriteString(", ")
	}
	b.WriteString(peer)
	return client, b.String(), true
}

// peer returns the address of r's peer, without port, and whether it is
// trusted.
func (c *ClientIPResolver) peer(r *http.Request) (string, bool) {
	peer := r.RemoteAddr
	if host, _, err := net.SplitHostPort(peer); err == nil {
		peer = host
	}
	if c == nil || len(c.Trusted) == 0 {
		return peer, false
	}
	addr, err := netip.ParseAddr(peer)
	if err != nil || !c.trusted(addr) {
		return peer, false
	}
	return peer, true
}

// fromHeaders resolves the client behind the trusted peer from r's
// forwarding headers, appending to hops, when not nil, each hop it
// believes, from the right.
func (c *ClientIPResolver) fromHeaders(r *http.Request, peer string, hops *[]string) string {
	if xff := r.Header["X-Forwarded-For"]; len(xff) > 0 {
		return c.walk(xff, peer, xffHop, hops)
	}
	if fwd := r.Header["Forwarded"]; len(fwd) > 0 {
		return c.walk(fwd, peer, forwardedFor, hops)
	}
	return peer
}

func (c *ClientIPResolver) trusted(a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range c.Trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// walk visits the comma-separated elements of lines from the right. It
// returns the first address that is not trusted; an element that is not an
// address stops the walk at the last trusted hop, and a chain of trusted hops
// only yields its left-most one. Each address it believes (the trusted hops
// and the one it returns) is appended to hops when hops is not nil.
func (c *ClientIPResolver) walk(lines []string, peer string, hop func(string) string, hops *[]string) string {
	last := peer
	for i := len(lines) - 1; i >= 0; i-- {
		line := lines[i]
		for line != "" {
			var elem string
			if j := strings.LastIndexByte(line, ','); j >= 0 {
				elem, line = line[j+1:], line[:j]
			} else {
				elem, line = line, ""
			}
			h := hop(strings.TrimSpace(elem))
			if h == "" {
				if strings.TrimSpace(elem) == "" {
					continue
				}
				return last
			}
			a, err := netip.ParseAddr(h)
			if err != nil {
				return last
			}
			if hops != nil {
				*hops = append(*hops, h)
			}
			if !c.trusted(a) {
				return h
			}
			last = h
		}
	}
	return last
}

// xffHop returns the address of an X-Forwarded-For element, dropping a port
// or IPv6 brackets some proxies add.
func xffHop(e string) string {
	if e == "" {
		return ""
	}
	if e[0] == '[' {
		if j := strings.IndexByte(e, ']'); j > 0 {
			return e[1:j]
		}
		return e
	}
	if strings.Count(e, ":") == 1 {
		host, _, _ := strings.Cut(e, ":")
		return host
	}
	return e
}

// forwardedFor returns the for= address of one Forwarded element (RFC 7239),
// or "" when the element has none.
func forwardedFor(e string) string {
	for e != "" {
		var pair string
		pair, e, _ = strings.Cut(e, ";")
		k, v, ok := strings.Cut(strings.TrimSpace(pair), "=")
		if !ok || !strings.EqualFold(k, "for") {
			continue
		}
		v = strings.Trim(v, `"`)
		return xffHop(v)
	}
	return ""
}
