package discovery

import (
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/miekg/dns"
	"github.com/stretchr/testify/require"
)

// dnsServer is a real miekg/dns server on 127.0.0.1, UDP and TCP on one
// port, whose records a test changes while it runs.
type dnsServer struct {
	addr string

	mu      sync.Mutex
	records map[string][]dns.RR // by lower-case owner name
	exists  map[string]bool     // names that answer NOERROR even with no record

	silent     atomic.Bool  // drop every query: the client times out
	rcode      atomic.Int64 // if not 0, answer every query with it
	udpQueries atomic.Int64
	tcpQueries atomic.Int64
}

func startDNS(t *testing.T) *dnsServer {
	t.Helper()
	s := &dnsServer{records: map[string][]dns.RR{}, exists: map[string]bool{}}
	var pc net.PacketConn
	var ln net.Listener
	for range 20 { // the UDP port may be taken for TCP; try another
		var err error
		pc, err = net.ListenPacket("udp", "127.0.0.1:0")
		require.NoError(t, err)
		ln, err = net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			break
		}
		pc.Close()
		pc = nil
	}
	require.NotNil(t, pc, "no port free for both UDP and TCP")
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
		t.Cleanup(func() {
			_ = srv.Shutdown()
			<-done
		})
	}
	return s
}

// set replaces the records of name ("a.test.") with rrs, each in zone-file
// form without the owner ("1 IN A 10.0.0.1").
func (s *dnsServer) set(t *testing.T, name string, rrs ...string) {
	t.Helper()
	parsed := make([]dns.RR, 0, len(rrs))
	for _, text := range rrs {
		rr, err := dns.NewRR(name + " " + text)
		require.NoError(t, err)
		parsed = append(parsed, rr)
	}
	s.setRR(name, parsed)
}

func (s *dnsServer) setRR(name string, rrs []dns.RR) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.records[strings.ToLower(name)] = rrs
	s.exists[strings.ToLower(name)] = true
}

func (s *dnsServer) serve(w dns.ResponseWriter, req *dns.Msg) {
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
	name := strings.ToLower(q.Name)
	m := new(dns.Msg)
	m.SetReply(req)
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
			m.Extra = append(m.Extra, s.records[strings.ToLower(srv.Target)]...)
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

// aRecords returns n A records with the given TTL, 10.x.y.z from 10.0.0.1.
func aRecords(name string, ttl uint32, n int) []dns.RR {
	out := make([]dns.RR, n)
	for i := range n {
		out[i] = &dns.A{
			Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: ttl},
			A:   net.IPv4(10, byte((i+1)>>16), byte((i+1)>>8), byte(i+1)),
		}
	}
	return out
}

func addrs(n int, port int) []string {
	out := make([]string, n)
	for i := range n {
		out[i] = fmt.Sprintf("10.%d.%d.%d:%d", byte((i+1)>>16), byte((i+1)>>8), byte(i+1), port)
	}
	return out
}

// remove makes name answer NXDOMAIN.
func (s *dnsServer) remove(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.records, name)
	delete(s.exists, name)
}
