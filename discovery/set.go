package discovery

import (
	"cmp"
	"slices"
	"time"
)

// Endpoint is one member of a discovered Set.
type Endpoint struct {
	// Addr is host:port. The host is an IP address, except for a SRV record
	// whose target's address was not in the answer: then it is the target
	// name (without its trailing dot), left to the dialer.
	Addr string
	// Weight is 1 for an A/AAAA record and the SRV weight for a SRV record,
	// with weight 0 ("a very small chance", RFC 2782) mapped to 1; records
	// that name the same Addr add up.
	Weight int
	// Priority is the SRV priority (lower is preferred); 0 for A/AAAA.
	Priority uint16
}

// Set is the result of one resolution. A Set handed out by this package is
// never modified afterwards and may be shared between goroutines.
type Set struct {
	// Endpoints are sorted by Addr and unique. A resolution never yields an
	// empty Set: an empty answer is an error (ErrNoRecords).
	Endpoints []Endpoint
	// TTL is the smallest TTL of the records used, before clamping.
	TTL time.Duration
	// PortZero counts SRV records ignored because their port was 0.
	PortZero int
	// OverLimit counts endpoints ignored because the answer held more than
	// Resolver.MaxEndpoints; the ones kept are those of the preferred
	// priorities, then the first by Addr, so a server rotating its
	// answer's order does not make the set flap.
	OverLimit int
}

// Equal reports whether s and o hold the same endpoints (same addresses,
// weights and priorities); the TTL and the counts are not compared.
func (s Set) Equal(o Set) bool {
	return slices.Equal(s.Endpoints, o.Endpoints)
}

// Addrs returns the endpoints' addresses in order.
func (s Set) Addrs() []string {
	out := make([]string, len(s.Endpoints))
	for i, e := range s.Endpoints {
		out[i] = e.Addr
	}
	return out
}

// collector gathers endpoints up to a bound in memory that grows with the
// answer, which the wire format bounds (a DNS message is at most 64 KiB).
type collector struct {
	byAddr map[string]int // index into eps
	eps    []Endpoint
	ttl    time.Duration
	set    bool
	zero   int
}

func (c *collector) add(e Endpoint, ttl uint32) {
	d := time.Duration(ttl) * time.Second
	if !c.set || d < c.ttl {
		c.ttl, c.set = d, true
	}
	if c.byAddr == nil {
		c.byAddr = make(map[string]int)
	}
	if i, ok := c.byAddr[e.Addr]; ok {
		// One address in two records: the preferred priority's weights
		// count; a backup record does not add to a primary's share.
		switch had := &c.eps[i]; {
		case e.Priority == had.Priority:
			had.Weight += e.Weight
		case e.Priority < had.Priority:
			had.Weight, had.Priority = e.Weight, e.Priority
		}
		return
	}
	c.byAddr[e.Addr] = len(c.eps)
	c.eps = append(c.eps, e)
}

func (c *collector) build(limit int) Set {
	byAddr := func(a, b Endpoint) int { return cmp.Compare(a.Addr, b.Addr) }
	s := Set{TTL: c.ttl, PortZero: c.zero}
	if len(c.eps) > limit {
		// The preferred priorities are kept first: a bound never drops a
		// primary for a backup.
		slices.SortFunc(c.eps, func(a, b Endpoint) int {
			return cmp.Or(cmp.Compare(a.Priority, b.Priority), byAddr(a, b))
		})
		s.OverLimit = len(c.eps) - limit
		// A copy, so the dropped tail's backing array can be freed.
		c.eps = slices.Clone(c.eps[:limit])
	}
	slices.SortFunc(c.eps, byAddr)
	s.Endpoints = c.eps
	return s
}
