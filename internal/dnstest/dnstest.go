// Package dnstest is a real DNS server for tests: a github.com/miekg/dns
// server on 127.0.0.1, UDP and TCP on one port, whose records a test
// changes while it runs, and which can be made to go silent or answer
// every query with an error code. It answers SRV queries as Kubernetes
// does, with the targets' address records as glue in the additional
// section, and truncates a UDP answer that does not fit so the client asks
// again over TCP. Tests of discovery/ and of the daemon share it. It knows
// nothing of sekisho.
package dnstest

import (
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/miekg/dns"
)

// Server is an authoritative-looking DNS server on 127.0.0.1. A name it was
// never given (or was told to Remove) answers NXDOMAIN; a name set with no
// record of the asked type answers NOERROR with an empty answer. Names are
// case-insensitive and fully qualified (a name given without its trailing
// dot gets one). Its listeners are closed and its goroutines waited for
// when the test ends. Safe for concurrent use.
type Server struct {
	addr string

	mu      sync.Mutex
	records map[string][]dns.RR // by canonical owner name
	exists  map[string]bool     // names that answer NOERROR even with no record

	silent     atomic.Bool  // drop every query: the client times out
	rcode      atomic.Int64 // if not 0, answer every query with it
	udpQueries atomic.Int64
	tcpQueries atomic.Int64
}

// SRV is one SRV record as SetSRV writes it. Target is the record's target
// ("users-1-0.users.shop.test.", made fully qualified); IP, if not empty,
// is an IPv4 or IPv6 literal that becomes the target's A or AAAA record,
// sent as glue with every SRV answer naming it. With IP empty the target's
// records are left as they are (no glue unless the test set some).
type SRV struct {
	Target   string
	IP       string
	Port     uint16
	Weight   uint16
	Priority uint16
}

// Start starts a Server and stops it with tb.Cleanup.
func Start(tb testing.TB) *Server {
	tb.Helper()
	s := &Server{records: map[string][]dns.RR{}, exists: map[string]bool{}}
	var pc net.PacketConn
	var ln net.Listener
	for range 20 { // the UDP port may be taken for TCP; try another
		var err error
		pc, err = net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			tb.Fatalf("dnstest: %v", err)
		}
		ln, err = net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			break
		}
		pc.Close()
		pc = nil
	}
	if pc == nil {
		tb.Fatalf("dnstest: no port free for both UDP and TCP")
	}
	s.addr = pc.LocalAddr().String()
	for _, srv := range []*dns.Server{
		{PacketConn: pc, Handler: dns.HandlerFunc(s.serve)},
		{Listener: ln, Handler: dns.HandlerFunc(s.serve)},
	} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		done := make(chan struct{})
		go func() {
			defer close(done)
			_ = srv.ActivateAndServe()
		}()
		<-started
		tb.Cleanup(func() {
			_ = srv.Shutdown()
			<-done
		})
	}
	return s
}

// Addr returns the server's address, "127.0.0.1:PORT", the same for UDP
// and TCP: what a resolver list takes.
func (s *Server) Addr() string { return s.addr }

// Set replaces the records of name with rrs, each in zone-file form
// without the owner ("1 IN A 10.0.0.1", "5 IN SRV 0 10 8080 a.test."). With
// no rrs the name exists but has no records: every query answers NOERROR
// with an empty answer. A record that does not parse fails the test.
func (s *Server) Set(tb testing.TB, name string, rrs ...string) {
	tb.Helper()
	name = Fqdn(name)
	parsed := make([]dns.RR, 0, len(rrs))
	for _, text := range rrs {
		rr, err := dns.NewRR(name + " " + text)
		if err != nil {
			tb.Fatalf("dnstest: record %q of %s: %v", text, name, err)
		}
		parsed = append(parsed, rr)
	}
	s.SetRR(name, parsed)
}

// SetRR replaces the records of name with rrs, as they are (their owner
// names are not checked). rrs must not be changed afterwards.
func (s *Server) SetRR(name string, rrs []dns.RR) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.setLocked(Fqdn(name), rrs)
}

func (s *Server) setLocked(name string, rrs []dns.RR) {
	s.records[name] = rrs
	s.exists[name] = true
}

// SetA replaces the records of name with one A record (for an IPv4 literal)
// or AAAA record (for an IPv6 literal) per addr, each with the given TTL.
// An addr that is not an IP literal panics: it is a bug in the test.
func (s *Server) SetA(name string, ttl uint32, addrs ...string) {
	name = Fqdn(name)
	s.SetRR(name, addrRRs(name, ttl, addrs...))
}

// SetSRV replaces the records of name with one SRV record per target, each
// with the given TTL, and sets each target that has an IP to that address
// (A or AAAA, same TTL; targets named more than once get all their IPs), so
// that an SRV answer carries them as glue. An IP that is not an IP literal
// panics: it is a bug in the test.
func (s *Server) SetSRV(name string, ttl uint32, targets ...SRV) {
	name = Fqdn(name)
	srvs := make([]dns.RR, 0, len(targets))
	glue := map[string][]string{}
	var order []string
	for _, tg := range targets {
		target := Fqdn(tg.Target)
		srvs = append(srvs, &dns.SRV{
			Hdr:      dns.RR_Header{Name: name, Rrtype: dns.TypeSRV, Class: dns.ClassINET, Ttl: ttl},
			Priority: tg.Priority,
			Weight:   tg.Weight,
			Port:     tg.Port,
			Target:   target,
		})
		if tg.IP == "" {
			continue
		}
		if _, seen := glue[target]; !seen {
			order = append(order, target)
		}
		glue[target] = append(glue[target], tg.IP)
	}
	built := make(map[string][]dns.RR, len(order))
	for _, target := range order {
		built[target] = addrRRs(target, ttl, glue[target]...)
	}
	// One lock for the whole change: a concurrent query sees the old set
	// or the new one, never SRV records without their glue.
	s.mu.Lock()
	defer s.mu.Unlock()
	s.setLocked(name, srvs)
	for _, target := range order {
		s.setLocked(target, built[target])
	}
}

// Remove forgets name: it answers NXDOMAIN.
func (s *Server) Remove(name string) {
	name = Fqdn(name)
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.records, name)
	delete(s.exists, name)
}

// SetSilent makes the server drop every query (true), so clients time out,
// or answer again (false). Queries are still counted. Default false.
func (s *Server) SetSilent(silent bool) { s.silent.Store(silent) }

// SetRcode makes the server answer every query with rcode and no record
// (dns.RcodeServerFailure, dns.RcodeRefused, ...); 0 (the default) answers
// normally.
func (s *Server) SetRcode(rcode int) { s.rcode.Store(int64(rcode)) }

// Queries returns how many queries the server has received over UDP and
// over TCP, answered or not.
func (s *Server) Queries() (udp, tcp int64) {
	return s.udpQueries.Load(), s.tcpQueries.Load()
}

// Fqdn returns name in the form the server keys it by: lower case, with a
// trailing dot.
func Fqdn(name string) string {
	return dns.Fqdn(strings.ToLower(name))
}

func addrRRs(name string, ttl uint32, addrs ...string) []dns.RR {
	out := make([]dns.RR, 0, len(addrs))
	for _, a := range addrs {
		ip, err := netip.ParseAddr(a)
		if err != nil {
			panic("dnstest: " + err.Error())
		}
		if ip.Is4() || ip.Is4In6() {
			out = append(out, &dns.A{
				Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: ttl},
				A:   net.IP(ip.Unmap().AsSlice()),
			})
			continue
		}
		out = append(out, &dns.AAAA{
			Hdr:  dns.RR_Header{Name: name, Rrtype: dns.TypeAAAA, Class: dns.ClassINET, Ttl: ttl},
			AAAA: net.IP(ip.AsSlice()),
		})
	}
	return out
}

func (s *Server) serve(w dns.ResponseWriter, req *dns.Msg) {
	_, udp := w.LocalAddr().(*net.UDPAddr)
	if udp {
		s.udpQueries.Add(1)
	} else {
		s.tcpQueries.Add(1)
	}
	if s.silent.Load() || len(req.Question) != 1 {
		return
	}
	q := req.Question[0]
	name := Fqdn(q.Name)
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	if rc := s.rcode.Load(); rc != 0 {
		m.Rcode = int(rc)
		_ = w.WriteMsg(m)
		return
	}
	s.mu.Lock()
	if !s.exists[name] {
		m.Rcode = dns.RcodeNameError
	}
	for _, rr := range s.records[name] {
		if rr.Header().Rrtype != q.Qtype {
			continue
		}
		m.Answer = append(m.Answer, rr)
		if srv, ok := rr.(*dns.SRV); ok { // glue, as Kubernetes sends it
			for _, g := range s.records[Fqdn(srv.Target)] {
				if t := g.Header().Rrtype; t == dns.TypeA || t == dns.TypeAAAA {
					m.Extra = append(m.Extra, g)
				}
			}
		}
	}
	s.mu.Unlock()
	size := dns.MaxMsgSize
	if udp {
		size = dns.MinMsgSize
		if opt := req.IsEdns0(); opt != nil {
			size = int(opt.UDPSize())
		}
	}
	if opt := req.IsEdns0(); opt != nil {
		m.SetEdns0(opt.UDPSize(), false)
	}
	m.Truncate(size)
	_ = w.WriteMsg(m)
}
