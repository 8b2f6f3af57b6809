package router

import (
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

func resolver(prefixes ...string) *ClientIPResolver {
	c := &ClientIPResolver{}
	for _, p := range prefixes {
		c.Trusted = append(c.Trusted, netip.MustParsePrefix(p))
	}
	return c
}

func TestClientIPResolve(t *testing.T) {
	trusted := resolver("10.0.0.0/8", "fd00::/8")
	tests := []struct {
		name   string
		res    *ClientIPResolver
		peer   string
		xff    []string
		fwd    []string
		want   string
		reason string
	}{
		{name: "nil resolver trusts nobody", res: nil, peer: "10.0.0.1:1", xff: []string{"1.2.3.4"}, want: "10.0.0.1"},
		{name: "zero resolver trusts nobody", res: &ClientIPResolver{}, peer: "10.0.0.1:1", xff: []string{"1.2.3.4"}, want: "10.0.0.1"},
		{name: "untrusted peer's XFF is ignored", res: trusted, peer: "198.51.100.9:5000", xff: []string{"10.0.0.7"}, want: "198.51.100.9"},
		{name: "untrusted peer without headers", res: trusted, peer: "198.51.100.9:5000", want: "198.51.100.9"},
		{name: "trusted peer without headers", res: trusted, peer: "10.0.0.1:5000", want: "10.0.0.1"},
		{name: "trusted peer, one hop", res: trusted, peer: "10.0.0.1:5000", xff: []string{"203.0.113.5"}, want: "203.0.113.5"},
		{name: "right-most untrusted hop", res: trusted, peer: "10.0.0.1:5000", xff: []string{"6.6.6.6, 203.0.113.5, 10.0.0.2"}, want: "203.0.113.5",
			reason: "the client wrote 6.6.6.6 itself; only 203.0.113.5 was seen by a trusted proxy"},
		{name: "all trusted returns left-most", res: trusted, peer: "10.0.0.1:5000", xff: []string{"10.0.0.3, 10.0.0.2"}, want: "10.0.0.3"},
		{name: "garbage hop stops at last trusted", res: trusted, peer: "10.0.0.1:5000", xff: []string{"203.0.113.5, garbage, 10.0.0.2"}, want: "10.0.0.2"},
		{name: "garbage right of everything returns peer", res: trusted, peer: "10.0.0.1:5000", xff: []string{"203.0.113.5, unknown"}, want: "10.0.0.1"},
		{name: "empty elements skipped", res: trusted, peer: "10.0.0.1:5000", xff: []string{"203.0.113.5, , 10.0.0.2,"}, want: "203.0.113.5"},
		{name: "several header lines, last line is nearest", res: trusted, peer: "10.0.0.1:5000", xff: []string{"1.1.1.1", "2.2.2.2, 10.0.0.5"}, want: "2.2.2.2"},
		{name: "trusted lines continue into earlier line", res: trusted, peer: "10.0.0.1:5000", xff: []string{"1.1.1.1", "10.0.0.5"}, want: "1.1.1.1"},
		{name: "hop with port", res: trusted, peer: "10.0.0.1:5000", xff: []string{"203.0.113.5:4711"}, want: "203.0.113.5"},
		{name: "bracketed IPv6 hop with port", res: trusted, peer: "10.0.0.1:5000", xff: []string{"[2001:db8::1]:443"}, want: "2001:db8::1"},
		{name: "bare IPv6 hop", res: trusted, peer: "10.0.0.1:5000", xff: []string{"2001:db8::1"}, want: "2001:db8::1"},
		{name: "unclosed bracket is garbage", res: trusted, peer: "10.0.0.1:5000", xff: []string{"[2001:db8::1"}, want: "10.0.0.1"},
		{name: "IPv6 trusted peer", res: trusted, peer: "[fd00::1]:5000", xff: []string{"203.0.113.5, fd00::2"}, want: "203.0.113.5"},
		{name: "IPv4-mapped trusted peer", res: trusted, peer: "[::ffff:10.0.0.1]:5000", xff: []string{"203.0.113.5"}, want: "203.0.113.5"},
		{name: "IPv4-mapped untrusted peer", res: trusted, peer: "[::ffff:198.51.100.9]:5000", xff: []string{"203.0.113.5"}, want: "::ffff:198.51.100.9"},
		{name: "IPv4-mapped trusted hop", res: trusted, peer: "10.0.0.1:5000", xff: []string{"203.0.113.5, ::ffff:10.0.0.9"}, want: "203.0.113.5"},
		{name: "peer without port", res: trusted, peer: "10.0.0.1", xff: []string{"203.0.113.5"}, want: "203.0.113.5"},
		{name: "unparseable peer", res: trusted, peer: "@pipe", xff: []string{"203.0.113.5"}, want: "@pipe"},
		{name: "Forwarded quoted IPv6 and port", res: trusted, peer: "10.0.0.1:5000", fwd: []string{`for="[2001:db8:cafe::17]:4711"`}, want: "2001:db8:cafe::17"},
		{name: "Forwarded with other pairs", res: trusted, peer: "10.0.0.1:5000", fwd: []string{"proto=https;For=192.0.2.60;by=10.0.0.1"}, want: "192.0.2.60"},
		{name: "Forwarded right-most untrusted", res: trusted, peer: "10.0.0.1:5000", fwd: []string{"for=6.6.6.6, for=198.51.100.17, for=10.0.0.9"}, want: "198.51.100.17"},
		{name: "Forwarded obfuscated is garbage", res: trusted, peer: "10.0.0.1:5000", fwd: []string{`for=198.51.100.17, for="_hidden"`}, want: "10.0.0.1"},
		{name: "Forwarded element without for stops", res: trusted, peer: "10.0.0.1:5000", fwd: []string{"for=198.51.100.17, proto=https"}, want: "10.0.0.1"},
		{name: "XFF wins over Forwarded", res: trusted, peer: "10.0.0.1:5000", xff: []string{"203.0.113.5"}, fwd: []string{"for=198.51.100.17"}, want: "203.0.113.5"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &http.Request{RemoteAddr: tt.peer, Header: http.Header{}}
			if tt.xff != nil {
				r.Header["X-Forwarded-For"] = tt.xff
			}
			if tt.fwd != nil {
				r.Header["Forwarded"] = tt.fwd
			}
			assert.Equal(t, tt.want, tt.res.Resolve(r), tt.reason)
		})
	}
}

func TestClientIPResolveDoesNotAllocate(t *testing.T) {
	res := resolver("10.0.0.0/8")
	r := &http.Request{RemoteAddr: "10.0.0.1:5000", Header: http.Header{
		"X-Forwarded-For": {"6.6.6.6, 203.0.113.5, 10.0.0.2"},
	}}
	allocs := testing.AllocsPerRun(200, func() {
		if res.Resolve(r) != "203.0.113.5" {
			t.Fatal("wrong address")
		}
	})
	assert.Zero(t, allocs)
}

// The chain passed upstream is what the resolver believed: from the client
// to the peer, the client's own claims left out, Forwarded's for= as plain
// hops.
func TestClientIPResolveChain(t *testing.T) {
	trusted := resolver("10.0.0.0/8", "fd00::/8")
	tests := []struct {
		name   string
		peer   string
		xff    []string
		fwd    []string
		client string
		chain  string
	}{
		{name: "untrusted peer", peer: "198.51.100.9:5000", xff: []string{"10.0.0.7"}, client: "198.51.100.9", chain: ""},
		{name: "trusted peer without headers", peer: "10.0.0.1:5000", client: "10.0.0.1", chain: ""},
		{name: "one hop", peer: "10.0.0.1:5000", xff: []string{"203.0.113.5"}, client: "203.0.113.5", chain: "203.0.113.5, 10.0.0.1"},
		{name: "the client's own claims are left out", peer: "10.0.0.1:5000", xff: []string{"6.6.6.6, 203.0.113.5, 10.0.0.2"},
			client: "203.0.113.5", chain: "203.0.113.5, 10.0.0.2, 10.0.0.1"},
		{name: "all trusted", peer: "10.0.0.1:5000", xff: []string{"10.0.0.3, 10.0.0.2"}, client: "10.0.0.3", chain: "10.0.0.3, 10.0.0.2, 10.0.0.1"},
		{name: "garbage stops at the last trusted hop", peer: "10.0.0.1:5000", xff: []string{"203.0.113.5, garbage, 10.0.0.2"},
			client: "10.0.0.2", chain: "10.0.0.2, 10.0.0.1"},
		{name: "garbage right of everything", peer: "10.0.0.1:5000", xff: []string{"203.0.113.5, unknown"}, client: "10.0.0.1", chain: ""},
		{name: "ports and brackets dropped", peer: "10.0.0.1:5000", xff: []string{"[2001:db8::1]:443, 10.0.0.2:80"},
			client: "2001:db8::1", chain: "2001:db8::1, 10.0.0.2, 10.0.0.1"},
		{name: "several lines", peer: "10.0.0.1:5000", xff: []string{"1.1.1.1", "10.0.0.5"}, client: "1.1.1.1", chain: "1.1.1.1, 10.0.0.5, 10.0.0.1"},
		{name: "IPv6 peer", peer: "[fd00::1]:5000", xff: []string{"203.0.113.5, fd00::2"}, client: "203.0.113.5", chain: "203.0.113.5, fd00::2, fd00::1"},
		{name: "Forwarded for= becomes hops", peer: "10.0.0.1:5000", fwd: []string{`for=6.6.6.6, for="[2001:db8:cafe::17]:4711";proto=https, for=10.0.0.9`},
			client: "2001:db8:cafe::17", chain: "2001:db8:cafe::17, 10.0.0.9, 10.0.0.1"},
		{name: "XFF wins over Forwarded", peer: "10.0.0.1:5000", xff: []string{"203.0.113.5"}, fwd: []string{"for=198.51.100.17"},
			client: "203.0.113.5", chain: "203.0.113.5, 10.0.0.1"},
		{name: "long chain", peer: "10.0.0.1:5000", xff: []string{"203.0.113.5, 10.0.0.2, 10.0.0.3, 10.0.0.4, 10.0.0.5, 10.0.0.6, 10.0.0.7, 10.0.0.8, 10.0.0.9, 10.0.0.10"},
			client: "203.0.113.5", chain: "203.0.113.5, 10.0.0.2, 10.0.0.3, 10.0.0.4, 10.0.0.5, 10.0.0.6, 10.0.0.7, 10.0.0.8, 10.0.0.9, 10.0.0.10, 10.0.0.1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &http.Request{RemoteAddr: tt.peer, Header: http.Header{}}
			if tt.xff != nil {
				r.Header["X-Forwarded-For"] = tt.xff
			}
			if tt.fwd != nil {
				r.Header["Forwarded"] = tt.fwd
			}
			client, chain, _ := trusted.ResolveChain(r)
			assert.Equal(t, tt.client, client)
			assert.Equal(t, tt.chain, chain)
			assert.Equal(t, trusted.Resolve(r), client, "the same client as Resolve")
		})
	}
}

func TestClientIPResolveChainUntrustedDoesNotAllocate(t *testing.T) {
	res := resolver("10.0.0.0/8")
	r := &http.Request{RemoteAddr: "198.51.100.9:5000", Header: http.Header{
		"X-Forwarded-For": {"6.6.6.6, 203.0.113.5, 10.0.0.2"},
	}}
	allocs := testing.AllocsPerRun(200, func() {
		if _, chain, _ := res.ResolveChain(r); chain != "" {
			t.Fatal("an untrusted peer's chain")
		}
	})
	assert.Zero(t, allocs)
}

// FuzzClientIP checks that Resolve never panics and never makes an address
// up: the result is the peer, or an address that appears in the forwarding
// headers.
func FuzzClientIP(f *testing.F) {
	f.Add("10.0.0.1:5000", "203.0.113.5, 10.0.0.2", "")
	f.Add("10.0.0.1:5000", "", `for="[2001:db8:cafe::17]:4711";proto=https`)
	f.Add("[::ffff:10.0.0.1]:80", "[2001:db8::1]:443, ::ffff:10.1.1.1", "for=1.2.3.4")
	f.Add("10.0.0.1", "garbage, ,,", "for=_hidden, for=")
	f.Add("@pipe", "1.2.3.4", "")
	f.Add("[fe80::1%eth0]:1", "fe80::2%eth1, 10.0.0.1:", `for="[::1`)
	resolvers := []*ClientIPResolver{
		resolver("10.0.0.0/8", "::1/128", "fd00::/8", "::ffff:0:0/96"),
		resolver("0.0.0.0/0", "::/0"),
	}
	f.Fuzz(func(t *testing.T, remote, xff, fwd string) {
		r := &http.Request{RemoteAddr: remote, Header: http.Header{}}
		if xff != "" {
			r.Header["X-Forwarded-For"] = strings.Split(xff, "\n")
		}
		if fwd != "" {
			r.Header["Forwarded"] = []string{fwd}
		}
		peer := remote
		if host, _, err := net.SplitHostPort(remote); err == nil {
			peer = host
		}
		for _, res := range resolvers {
			got := res.Resolve(r)
			client, chain, _ := res.ResolveChain(r)
			if client != got {
				t.Fatalf("ResolveChain's client %q, Resolve's %q", client, got)
			}
			if chain != "" && (!strings.HasPrefix(chain, client+", ") || !strings.HasSuffix(chain, ", "+peer)) {
				t.Fatalf("chain %q does not run from the client %q to the peer %q", chain, client, peer)
			}
			if got == peer {
				continue
			}
			if _, err := netip.ParseAddr(got); err != nil {
				t.Fatalf("Resolve = %q: neither the peer %q nor an address: %v", got, peer, err)
			}
			if !strings.Contains(xff, got) && !strings.Contains(fwd, got) {
				t.Fatalf("Resolve = %q: not in the headers", got)
			}
		}
	})
}
