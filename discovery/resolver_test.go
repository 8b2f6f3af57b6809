package discovery

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"sekisho/internal/dnstest"
)

func TestResolveNextServer(t *testing.T) {
	tg, err := ParseTarget("dns://web.test:80")
	require.NoError(t, err)
	for _, tc := range []struct {
		name  string
		spoil func(*dnstest.Server)
	}{
		{"first silent", func(s *dnstest.Server) { s.SetSilent(true) }},
		{"first SERVFAIL", func(s *dnstest.Server) { s.SetRcode(dns.RcodeServerFailure) }},
		{"first REFUSED", func(s *dnstest.Server) { s.SetRcode(dns.RcodeRefused) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bad, good := dnstest.Start(t), dnstest.Start(t)
			tc.spoil(bad)
			good.Set(t, "web.test.", "5 IN A 10.0.0.1")
			r := &Resolver{Servers: []string{bad.Addr(), good.Addr()}, Timeout: 200 * time.Millisecond}
			set, err := r.Resolve(context.Background(), tg)
			require.NoError(t, err)
			assert.Equal(t, []string{"10.0.0.1:80"}, set.Addrs())
		})
	}

	t.Run("all fail", func(t *testing.T) {
		a, b := dnstest.Start(t), dnstest.Start(t)
		a.SetSilent(true)
		b.SetRcode(dns.RcodeServerFailure)
		r := &Resolver{Servers: []string{a.Addr(), b.Addr()}, Timeout: 200 * time.Millisecond}
		_, err := r.Resolve(context.Background(), tg)
		var rc *RcodeError
		require.ErrorAs(t, err, &rc)
		assert.Equal(t, dns.RcodeServerFailure, rc.Rcode)
		var re *ResolveError
		require.ErrorAs(t, err, &re)
		assert.Equal(t, "dns://web.test:80", re.Target)
	})

	t.Run("cancelled", func(t *testing.T) {
		s := dnstest.Start(t)
		s.SetSilent(true)
		r := &Resolver{Servers: []string{s.Addr()}, Timeout: time.Minute}
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := r.Resolve(ctx, tg)
		require.Error(t, err)
		assert.Less(t, time.Since(start), 2*time.Second)
	})
}

func TestServers(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "resolv.conf")
	require.NoError(t, os.WriteFile(conf, []byte("search svc.cluster.local\nnameserver 10.96.0.10\nnameserver fd00::a\noptions ndots:5\n"), 0o644))
	assert.Equal(t, []string{"10.96.0.10:53", "[fd00::a]:53"}, serversFromFile(conf))
	assert.Equal(t, []string{"127.0.0.1:53", "[::1]:53"}, serversFromFile(filepath.Join(dir, "missing")))

	r := &Resolver{Servers: []string{"10.0.0.1", "10.0.0.2:5353", "::1", "[::2]"}}
	assert.Equal(t, []string{"10.0.0.1:53", "10.0.0.2:5353", "[::1]:53", "[::2]:53"}, r.serverList())
	assert.NotEmpty(t, (&Resolver{}).serverList())
}

func TestResolverDefaults(t *testing.T) {
	var r Resolver
	assert.Equal(t, DefaultTimeout, r.timeout())
	assert.Equal(t, DefaultMaxEndpoints, r.maxEndpoints())
	assert.Equal(t, time.Second, r.clamp(0))
	assert.Equal(t, 5*time.Second, r.clamp(5*time.Second))
	assert.Equal(t, 30*time.Second, r.clamp(time.Hour))
	r = Resolver{MinTTL: time.Minute, MaxTTL: time.Second}
	assert.Equal(t, time.Minute, r.clamp(0), "MaxTTL below MinTTL is raised to it")
	for range 100 {
		d := jitter(10 * time.Second)
		require.True(t, d > 9*time.Second-time.Millisecond && d <= 10*time.Second, d)
	}
}
