package discovery

import (
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/miekg/dns"
)

// FuzzAnswer feeds what a hostile DNS server may send, as wire bytes, to
// the code that turns an answer into endpoints: whatever the records, the
// Set is bounded, sorted and unique, its addresses are host:port with a
// port in 1..65535, and its weights are positive.
func FuzzAnswer(f *testing.F) {
	for _, rrs := range [][]string{
		{"a.test. 5 IN A 10.0.0.1", "a.test. 5 IN A 10.0.0.1", "a.test. 1 IN AAAA ::ffff:10.0.0.2"},
		{"_h._tcp.a.test. 5 IN SRV 0 0 8080 p0.a.test.", "_h._tcp.a.test. 5 IN SRV 1 65535 0 p1.a.test.",
			"_h._tcp.a.test. 5 IN SRV 0 3 80 .", "p0.a.test. 5 IN A 10.0.0.3"},
	} {
		m := new(dns.Msg)
		m.SetQuestion("a.test.", dns.TypeA)
		for _, text := range rrs {
			rr, err := dns.NewRR(text)
			if err != nil {
				f.Fatal(err)
			}
			m.Answer = append(m.Answer, rr)
		}
		m.Extra = m.Answer
		wire, err := m.Pack()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(wire, uint16(8080))
	}
	f.Fuzz(func(t *testing.T, wire []byte, port uint16) {
		in := new(dns.Msg)
		if in.Unpack(wire) != nil {
			return
		}
		const limit = 8
		for _, kind := range []Kind{KindAddr, KindSRV} {
			var c collector
			if kind == KindAddr {
				addAddrs(&c, in, max(port, 1))
			} else {
				addSRV(&c, in)
			}
			set := c.build(limit)
			if len(set.Endpoints) > limit {
				t.Fatalf("%d endpoints over a limit of %d", len(set.Endpoints), limit)
			}
			if !slices.IsSortedFunc(set.Endpoints, func(a, b Endpoint) int { return strings.Compare(a.Addr, b.Addr) }) {
				t.Fatalf("endpoints not sorted: %v", set.Endpoints)
			}
			for i, e := range set.Endpoints {
				if i > 0 && set.Endpoints[i-1].Addr == e.Addr {
					t.Fatalf("%s listed twice", e.Addr)
				}
				host, p, err := net.SplitHostPort(e.Addr)
				if err != nil || host == "" {
					t.Fatalf("endpoint %q is not host:port: %v", e.Addr, err)
				}
				if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
					t.Fatalf("endpoint %q: port out of range", e.Addr)
				}
				if e.Weight < 1 {
					t.Fatalf("endpoint %q: weight %d", e.Addr, e.Weight)
				}
			}
		}
	})
}
