package dnstest

import (
	"net"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func query(t *testing.T, s *Server, network, name string, qtype uint16) (*dns.Msg, error) {
	t.Helper()
	c := &dns.Client{Net: network, Timeout: 300 * time.Millisecond}
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	in, _, err := c.Exchange(m, s.Addr())
	return in, err
}

func TestAnswers(t *testing.T) {
	s := Start(t)
	s.SetA("Web.Test", 7, "10.0.0.1", "10.0.0.2", "fd00::1")
	s.Set(t, "txt.test.", "5 IN TXT \"hi\"")
	s.Set(t, "empty.test.")

	for _, network := range []string{"udp", "tcp"} {
		t.Run(network, func(t *testing.T) {
			in, err := query(t, s, network, "WEB.test.", dns.TypeA)
			require.NoError(t, err)
			assert.Equal(t, dns.RcodeSuccess, in.Rcode)
			require.Len(t, in.Answer, 2)
			assert.Equal(t, "10.0.0.1", in.Answer[0].(*dns.A).A.String())
			assert.Equal(t, "10.0.0.2", in.Answer[1].(*dns.A).A.String())
			assert.Equal(t, uint32(7), in.Answer[0].Header().Ttl)

			in, err = query(t, s, network, "web.test", dns.TypeAAAA)
			require.NoError(t, err)
			require.Len(t, in.Answer, 1)
			assert.Equal(t, "fd00::1", in.Answer[0].(*dns.AAAA).AAAA.String())

			in, err = query(t, s, network, "txt.test", dns.TypeTXT)
			require.NoError(t, err)
			require.Len(t, in.Answer, 1)

			in, err = query(t, s, network, "empty.test", dns.TypeA)
			require.NoError(t, err)
			assert.Equal(t, dns.RcodeSuccess, in.Rcode)
			assert.Empty(t, in.Answer)

			in, err = query(t, s, network, "nowhere.test", dns.TypeA)
			require.NoError(t, err)
			assert.Equal(t, dns.RcodeNameError, in.Rcode)
		})
	}
	udp, tcp := s.Queries()
	assert.Equal(t, int64(5), udp)
	assert.Equal(t, int64(5), tcp)

	// Changed while running.
	s.SetA("web.test.", 1, "10.0.0.9")
	in, err := query(t, s, "udp", "web.test", dns.TypeA)
	require.NoError(t, err)
	require.Len(t, in.Answer, 1)
	assert.Equal(t, "10.0.0.9", in.Answer[0].(*dns.A).A.String())

	s.Remove("WEB.TEST")
	in, err = query(t, s, "udp", "web.test", dns.TypeA)
	require.NoError(t, err)
	assert.Equal(t, dns.RcodeNameError, in.Rcode)
}

func TestSRVGlue(t *testing.T) {
	s := Start(t)
	s.SetSRV("_http._tcp.users-1.shop.test", 5,
		SRV{Target: "users-1-0.users-1.shop.test.", IP: "10.0.1.1", Port: 8080, Weight: 50},
		SRV{Target: "users-1-1.users-1.shop.test", IP: "fd00::2", Port: 8080, Weight: 50, Priority: 1},
		SRV{Target: "external.test.", Port: 9000},
	)
	in, err := query(t, s, "udp", "_http._tcp.users-1.shop.test", dns.TypeSRV)
	require.NoError(t, err)
	require.Len(t, in.Answer, 3)
	srv := in.Answer[1].(*dns.SRV)
	assert.Equal(t, "users-1-1.users-1.shop.test.", srv.Target)
	assert.Equal(t, uint16(8080), srv.Port)
	assert.Equal(t, uint16(50), srv.Weight)
	assert.Equal(t, uint16(1), srv.Priority)

	glue := map[string]string{}
	for _, rr := range in.Extra {
		switch v := rr.(type) {
		case *dns.A:
			glue[v.Hdr.Name] = v.A.String()
		case *dns.AAAA:
			glue[v.Hdr.Name] = v.AAAA.String()
		}
	}
	assert.Equal(t, map[string]string{
		"users-1-0.users-1.shop.test.": "10.0.1.1",
		"users-1-1.users-1.shop.test.": "fd00::2",
	}, glue, "the targets with an IP, none for the one without")

	// The targets resolve on their own too, as a pod's name does.
	in, err = query(t, s, "udp", "users-1-0.users-1.shop.test", dns.TypeA)
	require.NoError(t, err)
	require.Len(t, in.Answer, 1)
}

func TestSilentAndRcode(t *testing.T) {
	s := Start(t)
	s.SetA("web.test", 5, "10.0.0.1")

	s.SetSilent(true)
	_, err := query(t, s, "udp", "web.test", dns.TypeA)
	var ne net.Error
	require.ErrorAs(t, err, &ne)
	assert.True(t, ne.Timeout())
	udp, _ := s.Queries()
	assert.Equal(t, int64(1), udp, "a dropped query is counted")

	s.SetSilent(false)
	s.SetRcode(dns.RcodeServerFailure)
	in, err := query(t, s, "udp", "web.test", dns.TypeA)
	require.NoError(t, err)
	assert.Equal(t, dns.RcodeServerFailure, in.Rcode)
	assert.Empty(t, in.Answer)

	s.SetRcode(0)
	in, err = query(t, s, "udp", "web.test", dns.TypeA)
	require.NoError(t, err)
	assert.Len(t, in.Answer, 1)
}

func TestTruncatedOverUDP(t *testing.T) {
	s := Start(t)
	addrs := make([]string, 100)
	for i := range addrs {
		addrs[i] = net.IPv4(10, 0, 1, byte(i)).String()
	}
	s.SetA("big.test", 5, addrs...)

	in, err := query(t, s, "udp", "big.test", dns.TypeA)
	require.NoError(t, err)
	assert.True(t, in.Truncated, "100 A records do not fit 512 bytes")
	assert.Less(t, len(in.Answer), 100)

	in, err = query(t, s, "tcp", "big.test", dns.TypeA)
	require.NoError(t, err)
	assert.False(t, in.Truncated)
	assert.Len(t, in.Answer, 100)
}
