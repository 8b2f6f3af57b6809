package discovery

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// Defaults of the Resolver's zero fields.
const (
	DefaultTimeout      = 2 * time.Second
	DefaultMinTTL       = 1 * time.Second
	DefaultMaxTTL       = 30 * time.Second
	DefaultMaxEndpoints = 1024
	// DefaultResolvConf is read when Resolver.Servers is empty.
	DefaultResolvConf = "/etc/resolv.conf"
)

// udpSize is the EDNS(0) buffer size offered: the DNS flag day 2020 value,
// which avoids IP fragmentation; a larger answer comes back truncated and is
// asked again over TCP.
const udpSize = 1232

// Errors of a resolution, checked with errors.Is; each comes wrapped in a
// *ResolveError.
var (
	// ErrNXDomain: the name does not exist.
	ErrNXDomain = errors.New("discovery: name does not exist (NXDOMAIN)")
	// ErrNoRecords: the name exists but the answer held no usable record
	// (none of the type asked, or only SRV records with port 0).
	ErrNoRecords = errors.New("discovery: no usable records")
	// ErrTimeout: no answer from a server within Resolver.Timeout.
	ErrTimeout = errors.New("discovery: DNS server did not answer in time")
)

// RcodeError is a DNS answer with a failure code other than NXDOMAIN (for
// example SERVFAIL or REFUSED).
type RcodeError struct{ Rcode int }

func (e *RcodeError) Error() string {
	return "discovery: server answered " + dns.RcodeToString[e.Rcode]
}

// ResolveError is the error of a failed resolution: which target, which
// query type, and why (a timeout, a *RcodeError, ErrNXDomain, ErrNoRecords).
type ResolveError struct {
	Target string
	Qtype  string
	Err    error
}

func (e *ResolveError) Error() string {
	return fmt.Sprintf("resolving %s (%s): %v", e.Target, e.Qtype, e.Err)
}

func (e *ResolveError) Unwrap() error { return e.Err }

// Resolver resolves Targets against a set of DNS servers. Its zero value
// uses the servers of /etc/resolv.conf. A Resolver is safe for concurrent
// use once its fields are set, and must not be copied after first use.
type Resolver struct {
	// Servers are the DNS servers asked, in order ("host" or "host:port",
	// port 53 by default); the next is asked when one fails to answer. If
	// empty, the nameservers of /etc/resolv.conf are used, and when that
	// file is missing or lists none, 127.0.0.1:53 and [::1]:53 (as Go's own
	// resolver does).
	Servers []string
	// Timeout bounds one query to one server (over UDP, and again over TCP
	// when the answer was truncated). Default DefaultTimeout.
	Timeout time.Duration
	// MinTTL and MaxTTL clamp the records' TTL into the re-resolution
	// interval of a Source. Defaults DefaultMinTTL and DefaultMaxTTL.
	MinTTL, MaxTTL time.Duration
	// MaxEndpoints bounds the endpoints kept from one answer; the rest are
	// counted in Set.OverLimit. Default DefaultMaxEndpoints.
	MaxEndpoints int
	// OnResult, if set, is called after every resolution a Source makes,
	// with the target's text and whether it succeeded, once the Source's
	// State and Current show it (and its onChange, if any, has returned):
	// the hook for a resolutions counter and a log of failures. It must be
	// fast and safe for concurrent use.
	OnResult func(target string, ok bool)

	once    sync.Once
	servers []string
}

func (r *Resolver) timeout() time.Duration { return orDefault(r.Timeout, DefaultTimeout) }
func (r *Resolver) minTTL() time.Duration  { return orDefault(r.MinTTL, DefaultMinTTL) }
func (r *Resolver) maxTTL() time.Duration {
	return max(orDefault(r.MaxTTL, DefaultMaxTTL), r.minTTL())
}

func (r *Resolver) maxEndpoints() int {
	if r.MaxEndpoints > 0 {
		return r.MaxEndpoints
	}
	return DefaultMaxEndpoints
}

func orDefault(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

// clamp maps a TTL onto the re-resolution interval.
func (r *Resolver) clamp(ttl time.Duration) time.Duration {
	return min(max(ttl, r.minTTL()), r.maxTTL())
}

func (r *Resolver) serverList() []string {
	r.once.Do(func() {
		if len(r.Servers) > 0 {
			r.servers = make([]string, len(r.Servers))
			for i, s := range r.Servers {
				r.servers[i] = withPort(s, "53")
			}
			return
		}
		r.servers = serversFromFile(DefaultResolvConf)
	})
	return r.servers
}

func serversFromFile(path string) []string {
	if cfg, err := dns.ClientConfigFromFile(path); err == nil && len(cfg.Servers) > 0 {
		out := make([]string, len(cfg.Servers))
		for i, s := range cfg.Servers {
			out[i] = net.JoinHostPort(s, cmpOr(cfg.Port, "53"))
		}
		return out
	}
	return []string{"127.0.0.1:53", "[::1]:53"}
}

func cmpOr(s, def string) string {
	if s != "" {
		return s
	}
	return def
}

// withPort adds port to a server address that has none ("10.0.0.1",
// "::1", "[::1]").
func withPort(s, port string) string {
	if _, _, err := net.SplitHostPort(s); err == nil {
		return s
	}
	return net.JoinHostPort(strings.Trim(s, "[]"), port)
}

// Resolve resolves t once. It returns a non-empty Set or an error wrapped in
// a *ResolveError; it never waits longer than Timeout per server and query,
// and returns early when ctx ends.
func (r *Resolver) Resolve(ctx context.Context, t Target) (Set, error) {
	var c collector
	switch t.Kind {
	case KindAddr:
		if ip, ok := t.literal(); ok {
			c.add(Endpoint{Addr: addrPort(ip, t.Port), Weight: 1}, uint32(r.maxTTL()/time.Second))
			return c.build(r.maxEndpoints()), nil
		}
		for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA} {
			in, err := r.query(ctx, t.Name, qt)
			if err != nil {
				return Set{}, &ResolveError{Target: t.String(), Qtype: dns.TypeToString[qt], Err: err}
			}
			addAddrs(&c, in, t.Port)
		}
	case KindSRV:
		in, err := r.query(ctx, t.Name, dns.TypeSRV)
		if err != nil {
			return Set{}, &ResolveError{Target: t.String(), Qtype: "SRV", Err: err}
		}
		addSRV(&c, in)
	default:
		return Set{}, fmt.Errorf("%w: zero Target", ErrBadTarget)
	}
	if len(c.eps) == 0 {
		return Set{}, &ResolveError{Target: t.String(), Qtype: kindQtype(t.Kind), Err: ErrNoRecords}
	}
	return c.build(r.maxEndpoints()), nil
}

func kindQtype(k Kind) string {
	if k == KindSRV {
		return "SRV"
	}
	return "A/AAAA"
}

// addAddrs adds an endpoint at port for each A and AAAA record of the
// answer.
func addAddrs(c *collector, in *dns.Msg, port uint16) {
	for _, rr := range in.Answer {
		if ip, ok := rrAddr(rr); ok {
			c.add(Endpoint{Addr: addrPort(ip, port), Weight: 1}, rr.Header().Ttl)
		}
	}
}

// addSRV adds one endpoint per address of each SRV target found in the
// additional section (as Kubernetes answers), or the target name itself.
func addSRV(c *collector, in *dns.Msg) {
	// A target's glue, each address once: a server that repeats it (once
	// per SRV record naming the target) must not multiply its weight.
	type glue struct {
		name string
		ip   netip.Addr
	}
	seen := make(map[glue]bool)
	addrs := make(map[string][]dns.RR)
	for _, rr := range in.Extra {
		ip, ok := rrAddr(rr)
		if !ok {
			continue
		}
		name := strings.ToLower(rr.Header().Name)
		if g := (glue{name, ip}); !seen[g] {
			seen[g] = true
			addrs[name] = append(addrs[name], rr)
		}
	}
	for _, rr := range in.Answer {
		srv, ok := rr.(*dns.SRV)
		if !ok {
			continue
		}
		if srv.Port == 0 {
			c.zero++
			continue
		}
		e := Endpoint{Weight: max(int(srv.Weight), 1), Priority: srv.Priority}
		target := strings.ToLower(srv.Target)
		if glue := addrs[target]; len(glue) > 0 {
			for _, a := range glue {
				ip, _ := rrAddr(a)
				e.Addr = addrPort(ip, srv.Port)
				c.add(e, min(srv.Hdr.Ttl, a.Header().Ttl))
			}
			continue
		}
		if target == "." || target == "" {
			continue // "service decidedly not available" (RFC 2782)
		}
		e.Addr = net.JoinHostPort(strings.TrimSuffix(target, "."), strconv.Itoa(int(srv.Port)))
		c.add(e, srv.Hdr.Ttl)
	}
}

func rrAddr(rr dns.RR) (netip.Addr, bool) {
	switch v := rr.(type) {
	case *dns.A:
		ip, ok := netip.AddrFromSlice(v.A.To4())
		return ip, ok
	case *dns.AAAA:
		ip, ok := netip.AddrFromSlice(v.AAAA.To16())
		return ip.Unmap(), ok
	}
	return netip.Addr{}, false
}

func addrPort(ip netip.Addr, port uint16) string {
	return netip.AddrPortFrom(ip, port).String()
}

// query asks each server in turn until one answers. NXDOMAIN is an answer
// and is returned at once; a server that fails to answer, or answers with
// another failure code (SERVFAIL, REFUSED), passes the question on to the
// next, as Go's own resolver does.
func (r *Resolver) query(ctx context.Context, name string, qtype uint16) (*dns.Msg, error) {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.SetEdns0(udpSize, false)
	var last error
	for _, server := range r.serverList() {
		in, err := r.exchange(ctx, "udp", m, server)
		if err == nil && in.Truncated {
			in, err = r.exchange(ctx, "tcp", m, server)
		}
		if err != nil {
			last = err
			if ctx.Err() != nil {
				return nil, err
			}
			continue
		}
		switch in.Rcode {
		case dns.RcodeSuccess:
			return in, nil
		case dns.RcodeNameError:
			return nil, ErrNXDomain
		default:
			last = fmt.Errorf("%s: %w", server, &RcodeError{Rcode: in.Rcode})
		}
	}
	if last == nil {
		last = errors.New("discovery: no DNS server configured")
	}
	return nil, last
}

// exchange is one query to one server over network, bounded by Timeout and
// interrupted at once when ctx ends (miekg/dns only reads the deadline).
func (r *Resolver) exchange(ctx context.Context, network string, m *dns.Msg, server string) (*dns.Msg, error) {
	ctx, cancel := context.WithTimeout(ctx, r.timeout())
	defer cancel()
	c := &dns.Client{Net: network, UDPSize: udpSize}
	conn, err := c.DialContext(ctx, server)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	in, _, err := c.ExchangeWithConnContext(ctx, m, conn)
	if err != nil {
		var ne net.Error
		if errors.Is(ctx.Err(), context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout() {
			return nil, fmt.Errorf("%s query to %s: %w (%w)", network, server, ErrTimeout, err)
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%s query to %s: %w", network, server, ctx.Err())
		}
		return nil, fmt.Errorf("%s query to %s: %w", network, server, err)
	}
	return in, nil
}
