package config

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"sekisho/discovery"
)

// maxDiscoveryTimeout bounds discovery.timeout: a server that takes this
// long is not answering, and one query waits for it before the next
// server is asked.
const maxDiscoveryTimeout = 30 * time.Second

// maxDiscoveryEndpoints bounds discovery.max_endpoints, so that one name
// cannot make a pool of unbounded size.
const maxDiscoveryEndpoints = 65536

// targetKey identifies a discovered endpoint whatever its spelling (case,
// trailing dot).
type targetKey struct {
	kind discovery.Kind
	name string
	port uint16
}

// discoveredEndpoint checks the dns:// or dns+srv:// endpoint e at ep of
// pool name, recording it in seen.
func (v *validation) discoveredEndpoint(name string, pc *Pool, e Endpoint, ep string, seen map[targetKey]bool) {
	t, err := discovery.ParseTarget(e.Address)
	if err != nil {
		v.at(ep, "endpoint: %v", err)
		return
	}
	k := targetKey{t.Kind, t.Name, t.Port}
	if seen[k] {
		v.at(ep, "endpoint %q is listed twice in pool %q", e.Address, name)
	}
	seen[k] = true
	_, weightWritten := v.c.pos[ep+".weight"]
	switch {
	case t.Kind == discovery.KindSRV && (weightWritten || e.Weight != 0):
		v.at(ep+".weight", "weight: a dns+srv endpoint takes its weights from the SRV records")
	case e.Weight < 0:
		v.at(ep+".weight", "weight: must not be negative")
	}
	if pc.DiscoveredScheme() == "https" && pc.Protocol == "h2c" {
		v.at(ep, "endpoint %q is https (its pool has a tls section) but the pool's protocol is h2c (cleartext)", e.Address)
	}
}

// discovery checks a discovery section at p on its own.
func (v *validation) discovery(d *Discovery, p string) {
	for i, r := range d.Resolvers {
		if err := checkResolver(r); err != nil {
			v.at(fmt.Sprintf("%s.resolvers[%d]", p, i), "resolvers: %v", err)
		}
	}
	for _, f := range []struct {
		key string
		d   Duration
	}{{"min_ttl", d.MinTTL}, {"max_ttl", d.MaxTTL}, {"timeout", d.Timeout}} {
		if f.d < 0 {
			v.at(p+"."+f.key, "%s: must not be negative (0: the default)", f.key)
		}
	}
	if d.Timeout.D() >= maxDiscoveryTimeout {
		v.at(p+".timeout", "timeout: must be below %s, got %s", maxDiscoveryTimeout, d.Timeout.D())
	}
	if d.MaxEndpoints < 0 || d.MaxEndpoints > maxDiscoveryEndpoints {
		v.at(p+".max_endpoints", "max_endpoints: want 0..%d (0: the default, %d), got %d",
			maxDiscoveryEndpoints, discovery.DefaultMaxEndpoints, d.MaxEndpoints)
	}
}

// ttlOrder checks min_ttl <= max_ttl of the settings in force, eff, where
// own is the section at p that set at least one of them (the pool's, or
// the top level's when both come from there).
func (v *validation) ttlOrder(eff Discovery, own *Discovery, p string) {
	if eff.MinTTL < 0 || eff.MaxTTL < 0 || eff.MinTTL <= eff.MaxTTL {
		return // a negative one is reported already
	}
	if own.MaxTTL != 0 {
		v.at(p+".max_ttl", "max_ttl: must be at least min_ttl (%s)", eff.MinTTL.D())
		return
	}
	v.at(p+".min_ttl", "min_ttl: must be at most max_ttl (%s)", eff.MaxTTL.D())
}

// discoveryRules checks the top-level discovery section and the use of
// discovery by every pool: a top-level section no pool uses is a warning.
func (v *validation) discoveryRules() {
	used := false
	for _, pc := range v.c.Pools {
		if pc != nil && pc.discovers() {
			used = true
		}
	}
	if v.c.Discovery == nil {
		return
	}
	v.discovery(v.c.Discovery, "discovery")
	v.ttlOrder(Discovery{}.over(v.c.Discovery).withDefaults(), v.c.Discovery, "discovery")
	if !used {
		v.warnAt("discovery", "discovery: no pool has a dns:// or dns+srv:// endpoint, so these settings are not used")
	}
}

// poolDiscovery checks the discovery section of pool name, at p.
func (v *validation) poolDiscovery(name string, pc *Pool, p string) {
	d := pc.Discovery
	if d == nil {
		return
	}
	dp := p + ".discovery"
	if !pc.discovers() {
		v.at(dp, "discovery is only used with dns:// or dns+srv:// endpoints")
	}
	v.discovery(d, dp)
	if d.MinTTL != 0 || d.MaxTTL != 0 {
		v.ttlOrder(v.c.DiscoveryFor(name), d, dp)
	}
}

// discovers reports whether the pool has a dns:// or dns+srv:// endpoint.
func (p *Pool) discovers() bool {
	for _, e := range p.Endpoints {
		if e.Discovered() {
			return true
		}
	}
	return false
}

// checkResolver accepts an IP address with an optional port: "10.96.0.10",
// "10.96.0.10:53", "fd00::a", "[fd00::a]:53". A name is refused: finding
// the DNS server by DNS would be a loop.
func checkResolver(s string) error {
	host, port, splitErr := net.SplitHostPort(s)
	if splitErr != nil {
		host, port = strings.TrimSuffix(strings.TrimPrefix(s, "["), "]"), ""
	}
	if _, err := netip.ParseAddr(host); err != nil {
		return fmt.Errorf("%q is not an IP address or IP:port (a resolver cannot be found by DNS)", s)
	}
	if splitErr == nil {
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("%q: bad port %q (want 1..65535)", s, port)
		}
	}
	return nil
}
