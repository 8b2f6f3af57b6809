package config

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
)

// ListenClash reports whether the listen addresses a and b (host:port, as
// checkListenAddr accepts) cannot both be bound: one port other than 0,
// and the same IP, or all addresses on either side (Linux refuses
// 0.0.0.0:80 beside 127.0.0.1:80, and [::]:80 takes IPv4 too). localhost
// is 127.0.0.1 or ::1, as the resolver may give either. An address that
// does not parse clashes with nothing; checkListenAddr reports it.
func ListenClash(a, b string) bool { return clash(a, b) != "" }

// clash says why a and b cannot both be bound, or "" when they can.
func clash(a, b string) string {
	ha, pa, okA := splitListen(a)
	hb, pb, okB := splitListen(b)
	switch {
	case !okA || !okB || pa != pb || pa == 0:
		return ""
	case a == b:
		return "the same address"
	case ha.wildcard || hb.wildcard:
		return fmt.Sprintf("port %d on all addresses includes the other", pa)
	case ha.localhost || hb.localhost:
		if loopbackOrLocalhost(ha) && loopbackOrLocalhost(hb) {
			return "localhost is the loopback address"
		}
		return ""
	case ha.ip == hb.ip:
		return "the same address"
	}
	return ""
}

// listenHost is the host part of a listen address.
type listenHost struct {
	ip        netip.Addr // when neither flag is set
	wildcard  bool       // "", 0.0.0.0 or ::
	localhost bool       // the name localhost
}

func loopbackOrLocalhost(h listenHost) bool {
	return h.localhost || h.ip == netip.IPv6Loopback() || h.ip == netip.AddrFrom4([4]byte{127, 0, 0, 1})
}

func splitListen(addr string) (listenHost, int, bool) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return listenHost{}, 0, false
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		return listenHost{}, 0, false
	}
	switch host {
	case "":
		return listenHost{wildcard: true}, p, true
	case "localhost":
		return listenHost{localhost: true}, p, true
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return listenHost{}, 0, false
	}
	ip = ip.Unmap()
	return listenHost{ip: ip, wildcard: ip.IsUnspecified()}, p, true
}

// socket is an address the daemon binds: where the config sets it, and
// what it is called in an error.
type socket struct {
	path  string // its place in the config
	field string // what its errors start with
	owner string // what the error about another socket calls it
	addr  string
}

// sockets reports each address of a pair that cannot both be bound, at
// the later one's position: two listeners on one port, a listener on the
// admin port, the public admin listener on the admin listener's.
func (v *validation) sockets(all []socket) {
	for j, b := range all {
		for _, a := range all[:j] {
			if why := clash(a.addr, b.addr); why != "" {
				where := "the default"
				if _, written := v.c.pos[a.path]; written {
					where = "at " + posString(v.c.at(a.path))
				}
				v.at(b.path, "%s: %q clashes with %q of %s (%s): %s; each listener needs an address of its own",
					b.field, b.addr, a.addr, a.owner, where, why)
				break
			}
		}
	}
}
