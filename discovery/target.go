package discovery

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/miekg/dns"
)

// Scheme prefixes of the targets ParseTarget accepts.
const (
	SchemeDNS    = "dns://"
	SchemeDNSSRV = "dns+srv://"
)

// Kind says which records a Target is resolved from.
type Kind uint8

const (
	// KindAddr resolves A and AAAA records; every address is an endpoint at
	// the target's port.
	KindAddr Kind = iota + 1
	// KindSRV resolves SRV records; each record names its own port and weight.
	KindSRV
)

// ErrBadTarget is wrapped by every error ParseTarget returns.
var ErrBadTarget = errors.New("discovery: bad target")

// Target is a parsed dns:// or dns+srv:// endpoint. Its zero value is not a
// valid target; build one with ParseTarget. A Target is a comparable value.
type Target struct {
	// Kind is KindAddr for dns://, KindSRV for dns+srv://.
	Kind Kind
	// Name is the fully qualified name queried, with its trailing dot.
	// Names are absolute: no search domain from resolv.conf is applied.
	Name string
	// Port is the port of every endpoint of a KindAddr target; 0 for KindSRV.
	Port uint16
	// raw is the text the target was parsed from, for String.
	raw string
}

// IsTarget reports whether s names a discovered endpoint (has a dns:// or
// dns+srv:// scheme), so that a config can tell it from a static host:port.
func IsTarget(s string) bool {
	return strings.HasPrefix(s, SchemeDNS) || strings.HasPrefix(s, SchemeDNSSRV)
}

// ParseTarget parses dns://NAME:PORT or dns+srv://NAME. NAME may be an IP
// literal for dns:// (it then resolves to itself without a query).
func ParseTarget(s string) (Target, error) {
	switch {
	case strings.HasPrefix(s, SchemeDNSSRV):
		name := strings.TrimPrefix(s, SchemeDNSSRV)
		if strings.ContainsAny(name, ":/") {
			return Target{}, fmt.Errorf("%w %q: a SRV target takes no port or path (the records carry the ports)", ErrBadTarget, s)
		}
		if err := checkName(name); err != nil {
			return Target{}, fmt.Errorf("%w %q: %v", ErrBadTarget, s, err)
		}
		return Target{Kind: KindSRV, Name: dns.Fqdn(strings.ToLower(name)), raw: s}, nil
	case strings.HasPrefix(s, SchemeDNS):
		rest := strings.TrimPrefix(s, SchemeDNS)
		host, portText, err := net.SplitHostPort(rest)
		if err != nil {
			return Target{}, fmt.Errorf("%w %q: want dns://NAME:PORT: %v", ErrBadTarget, s, err)
		}
		port, err := strconv.ParseUint(portText, 10, 16)
		if err != nil || port == 0 {
			return Target{}, fmt.Errorf("%w %q: port %q is not in 1..65535", ErrBadTarget, s, portText)
		}
		if ip, err := netip.ParseAddr(host); err == nil {
			return Target{Kind: KindAddr, Name: ip.String(), Port: uint16(port), raw: s}, nil
		}
		if err := checkName(host); err != nil {
			return Target{}, fmt.Errorf("%w %q: %v", ErrBadTarget, s, err)
		}
		return Target{Kind: KindAddr, Name: dns.Fqdn(strings.ToLower(host)), Port: uint16(port), raw: s}, nil
	}
	return Target{}, fmt.Errorf("%w %q: want dns://NAME:PORT or dns+srv://NAME", ErrBadTarget, s)
}

func checkName(name string) error {
	if name == "" || name == "." {
		return errors.New("empty name")
	}
	if _, ok := dns.IsDomainName(name); !ok {
		return fmt.Errorf("%q is not a domain name", name)
	}
	return nil
}

// String returns the text the target was parsed from.
func (t Target) String() string { return t.raw }

// literal returns the address of a dns:// target whose name is an IP literal.
func (t Target) literal() (netip.Addr, bool) {
	if t.Kind != KindAddr {
		return netip.Addr{}, false
	}
	ip, err := netip.ParseAddr(t.Name)
	return ip, err == nil
}
