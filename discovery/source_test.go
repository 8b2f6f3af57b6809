package discovery

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"sekisho/internal/dnstest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// changes records every Set a Source hands to onChange.
type changes struct {
	mu   sync.Mutex
	sets []Set
}

func (c *changes) add(s Set) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sets = append(c.sets, s)
}

func (c *changes) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.sets)
}

func (c *changes) last() Set {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.sets) == 0 {
		return Set{}
	}
	return c.sets[len(c.sets)-1]
}

func startSource(t *testing.T, r *Resolver, target string) (*Source, *changes) {
	t.Helper()
	tg, err := ParseTarget(target)
	require.NoError(t, err)
	c := &changes{}
	s := NewSource(r, tg, c.add)
	require.NoError(t, s.Start(context.Background()))
	t.Cleanup(s.Close)
	return s, c
}

func hasAddrs(s *Source, want ...string) func() bool {
	return func() bool {
		got := s.Current().Addrs()
		if len(got) != len(want) {
			return false
		}
		for i := range got {
			if got[i] != want[i] {
				return false
			}
		}
		return true
	}
}

func TestSourceFollowsARecords(t *testing.T) {
	srv := dnstest.Start(t)
	srv.Set(t, "web.test.", "1 IN A 10.0.0.1", "1 IN A 10.0.0.2", "1 IN A 10.0.0.3")
	var okN, failN atomic.Int64
	r := &Resolver{Servers: []string{srv.Addr()}, Timeout: 500 * time.Millisecond,
		OnResult: func(target string, ok bool) {
			assert.Equal(t, "dns://web.test:8080", target)
			if ok {
				okN.Add(1)
			} else {
				failN.Add(1)
			}
		}}
	s, c := startSource(t, r, "dns://web.test:8080")

	require.Eventually(t, hasAddrs(s, "10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"), 2*time.Second, 10*time.Millisecond)
	st := s.State()
	assert.True(t, st.Resolved)
	assert.NoError(t, st.LastError)
	assert.False(t, st.LastSuccess.IsZero())
	assert.Equal(t, 1, c.count())
	assert.Equal(t, time.Second, s.Current().TTL)

	// A 4th record (and an AAAA) is seen within TTL + 1 s.
	srv.Set(t, "web.test.", "1 IN A 10.0.0.1", "1 IN A 10.0.0.2", "1 IN A 10.0.0.3", "1 IN A 10.0.0.4", "1 IN AAAA fd00::1")
	added := time.Now()
	require.Eventually(t, hasAddrs(s, "10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080", "10.0.0.4:8080", "[fd00::1]:8080"),
		2*time.Second, 10*time.Millisecond)
	t.Logf("added record seen after %v", time.Since(added))

	// One removed.
	srv.Set(t, "web.test.", "1 IN A 10.0.0.1", "1 IN A 10.0.0.3", "1 IN A 10.0.0.4", "1 IN AAAA fd00::1")
	require.Eventually(t, hasAddrs(s, "10.0.0.1:8080", "10.0.0.3:8080", "10.0.0.4:8080", "[fd00::1]:8080"), 2*time.Second, 10*time.Millisecond)

	assert.Equal(t, 3, c.count(), "onChange only on a change")
	assert.True(t, c.last().Equal(s.Current()))
	// OnResult runs once a resolution's state is in place, so it may lag
	// what Current shows.
	require.Eventually(t, func() bool { return okN.Load() >= 3 }, 2*time.Second, 5*time.Millisecond)
	assert.Zero(t, failN.Load())
}

func TestSourceKeepsLastSet(t *testing.T) {
	for _, tc := range []struct {
		name    string
		breakIt func(t *testing.T, srv *dnstest.Server)
		wantErr func(t *testing.T, err error)
	}{
		{
			name:    "server silent",
			breakIt: func(t *testing.T, srv *dnstest.Server) { srv.SetSilent(true) },
			wantErr: func(t *testing.T, err error) {
				var re *ResolveError
				assert.ErrorAs(t, err, &re)
				assert.ErrorIs(t, err, ErrTimeout)
			},
		},
		{
			name:    "zero records",
			breakIt: func(t *testing.T, srv *dnstest.Server) { srv.Set(t, "web.test.") },
			wantErr: func(t *testing.T, err error) { assert.ErrorIs(t, err, ErrNoRecords) },
		},
		{
			name:    "name gone",
			breakIt: func(t *testing.T, srv *dnstest.Server) { srv.Remove("web.test.") },
			wantErr: func(t *testing.T, err error) { assert.ErrorIs(t, err, ErrNXDomain) },
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := dnstest.Start(t)
			srv.Set(t, "web.test.", "1 IN A 10.0.0.1", "1 IN A 10.0.0.2", "1 IN A 10.0.0.3")
			var failN atomic.Int64
			r := &Resolver{Servers: []string{srv.Addr()}, Timeout: 200 * time.Millisecond,
				OnResult: func(_ string, ok bool) {
					if !ok {
						failN.Add(1)
					}
				}}
			s, c := startSource(t, r, "dns://web.test:80")
			want := []string{"10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"}
			require.Eventually(t, hasAddrs(s, want...), 2*time.Second, 10*time.Millisecond)

			tc.breakIt(t, srv)
			require.Eventually(t, func() bool { return s.State().LastError != nil }, 3*time.Second, 10*time.Millisecond)
			st := s.State()
			tc.wantErr(t, st.LastError)
			assert.True(t, st.Resolved)
			assert.GreaterOrEqual(t, st.Failures, 1)
			require.Eventually(t, func() bool { return failN.Load() >= 1 }, 2*time.Second, 5*time.Millisecond,
				"OnResult follows the state it reports")
			assert.Equal(t, want, s.Current().Addrs(), "the last good set is kept")
			assert.Equal(t, 1, c.count())
		})
	}
}

func TestSourceNXDomainNeverResolves(t *testing.T) {
	srv := dnstest.Start(t)
	r := &Resolver{Servers: []string{srv.Addr()}, Timeout: 200 * time.Millisecond}
	s, c := startSource(t, r, "dns://missing.test:80")
	require.Eventually(t, func() bool { return s.State().LastError != nil }, 2*time.Second, 10*time.Millisecond)
	st := s.State()
	assert.ErrorIs(t, st.LastError, ErrNXDomain)
	assert.False(t, st.Resolved)
	assert.True(t, st.LastSuccess.IsZero())
	assert.Empty(t, s.Current().Endpoints)
	assert.Zero(t, c.count())
}

func TestResolveSRV(t *testing.T) {
	srv := dnstest.Start(t)
	srv.Set(t, "_http._tcp.users.test.",
		"5 IN SRV 0 10 8080 a.users.test.",
		"5 IN SRV 0 30 8081 b.users.test.",
		"5 IN SRV 1 0 9000 c.users.test.", // weight 0, no glue: the name is kept
		"5 IN SRV 0 50 0 d.users.test.",   // port 0: ignored and counted
	)
	srv.Set(t, "a.users.test.", "3 IN A 10.0.1.1")
	srv.Set(t, "b.users.test.", "5 IN A 10.0.1.2", "5 IN AAAA fd00::2")
	srv.Set(t, "d.users.test.", "5 IN A 10.0.1.4")
	r := &Resolver{Servers: []string{srv.Addr()}, Timeout: time.Second}
	tg, err := ParseTarget("dns+srv://_http._tcp.users.test")
	require.NoError(t, err)

	set, err := r.Resolve(context.Background(), tg)
	require.NoError(t, err)
	assert.Equal(t, []Endpoint{
		{Addr: "10.0.1.1:8080", Weight: 10},
		{Addr: "10.0.1.2:8081", Weight: 30},
		{Addr: "[fd00::2]:8081", Weight: 30},
		{Addr: "c.users.test:9000", Weight: 1, Priority: 1},
	}, set.Endpoints)
	assert.Equal(t, 1, set.PortZero)
	assert.Equal(t, 3*time.Second, set.TTL)

	// Only port-0 records: no usable record.
	srv.Set(t, "_http._tcp.users.test.", "5 IN SRV 0 50 0 d.users.test.")
	_, err = r.Resolve(context.Background(), tg)
	assert.ErrorIs(t, err, ErrNoRecords)
}

func TestResolveLargeAnswerBounded(t *testing.T) {
	srv := dnstest.Start(t)
	// 10,000 records do not fit one DNS message (at most 64 KiB, ~4,000 A
	// records): the server truncates over UDP, sends what fits over TCP,
	// and the resolver keeps MaxEndpoints of those.
	srv.SetRR("big.test.", aRecords("big.test.", 30, 10_000))
	r := &Resolver{Servers: []string{srv.Addr()}, Timeout: 2 * time.Second}
	tg, err := ParseTarget("dns://big.test:80")
	require.NoError(t, err)

	set, err := r.Resolve(context.Background(), tg)
	require.NoError(t, err)
	assert.Len(t, set.Endpoints, DefaultMaxEndpoints)
	assert.Positive(t, set.OverLimit)
	_, tcp := srv.Queries()
	assert.Positive(t, tcp, "a truncated answer is asked again over TCP")
	t.Logf("kept %d, ignored %d", len(set.Endpoints), set.OverLimit)
	for i := 1; i < len(set.Endpoints); i++ {
		require.Less(t, set.Endpoints[i-1].Addr, set.Endpoints[i].Addr)
	}
}

func TestSourceFlappingRecords(t *testing.T) {
	srv := dnstest.Start(t)
	srv.Set(t, "flap.test.", "0 IN A 10.0.0.1")
	const minTTL = 50 * time.Millisecond
	r := &Resolver{Servers: []string{srv.Addr()}, Timeout: time.Second, MinTTL: minTTL}
	s, c := startSource(t, r, "dns://flap.test:80")
	require.Eventually(t, func() bool { return c.count() == 1 }, 2*time.Second, 5*time.Millisecond)

	start := time.Now()
	stop := make(chan struct{})
	flipped := make(chan struct{})
	go func() { // the records change far faster than MinTTL
		defer close(flipped)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
			}
			srv.SetRR("flap.test.", aRecords("flap.test.", 0, 1+i%3))
		}
	}()
	require.Eventually(t, func() bool { return c.count() >= 6 }, 3*time.Second, 5*time.Millisecond)
	close(stop)
	<-flipped
	elapsed := time.Since(start)
	// At most one change per resolution, and resolutions are MinTTL apart
	// (less 10% jitter).
	assert.LessOrEqual(t, c.count()-1, int(elapsed/(minTTL*9/10))+1)
	assert.NotEmpty(t, s.Current().Endpoints)
}

func TestSourceCloseDoesNotWaitForDNS(t *testing.T) {
	srv := dnstest.Start(t)
	srv.SetSilent(true)
	r := &Resolver{Servers: []string{srv.Addr()}, Timeout: time.Minute}
	tg, err := ParseTarget("dns://slow.test:80")
	require.NoError(t, err)
	s := NewSource(r, tg, nil)
	require.NoError(t, s.Start(context.Background()))
	require.ErrorIs(t, s.Start(context.Background()), ErrStarted)
	require.Eventually(t, func() bool {
		udp, _ := srv.Queries()
		return udp > 0
	}, 2*time.Second, 5*time.Millisecond)

	assert.Empty(t, s.Current().Endpoints, "Current never waits on DNS")
	closed := make(chan struct{})
	go func() {
		s.Close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(2 * time.Second):
		t.Fatal("Close waited on a query that never ends")
	}
	s.Close() // twice is fine
	NewSource(nil, tg, nil).Close()
}

func TestResolveIPLiteral(t *testing.T) {
	r := &Resolver{Servers: []string{"127.0.0.1:1"}}
	tg, err := ParseTarget("dns://10.1.2.3:80")
	require.NoError(t, err)
	set, err := r.Resolve(context.Background(), tg)
	require.NoError(t, err)
	assert.Equal(t, []string{"10.1.2.3:80"}, set.Addrs())
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

// SRV priorities: an address named by a preferred and a backup record
// keeps the preferred record's priority and weight only, and a bound on
// the endpoints drops backups before any preferred one, whatever their
// addresses.
func TestResolveSRVPriorities(t *testing.T) {
	srv := dnstest.Start(t)
	srv.Set(t, "_http._tcp.users.test.",
		"5 IN SRV 10 7 8080 a.users.test.",
		"5 IN SRV 20 5 8080 a.users.test.", // a backup record for a preferred address
		"5 IN SRV 20 5 8080 b.users.test.", // sorts before z, but is a backup
		"5 IN SRV 10 3 8080 z.users.test.",
	)
	srv.Set(t, "a.users.test.", "5 IN A 10.0.2.9")
	srv.Set(t, "b.users.test.", "5 IN A 10.0.2.1")
	srv.Set(t, "z.users.test.", "5 IN A 10.0.2.200")
	tg, err := ParseTarget("dns+srv://_http._tcp.users.test")
	require.NoError(t, err)

	r := &Resolver{Servers: []string{srv.Addr()}, Timeout: time.Second}
	set, err := r.Resolve(context.Background(), tg)
	require.NoError(t, err)
	assert.Equal(t, []Endpoint{
		{Addr: "10.0.2.1:8080", Weight: 5, Priority: 20},
		{Addr: "10.0.2.200:8080", Weight: 3, Priority: 10},
		{Addr: "10.0.2.9:8080", Weight: 7, Priority: 10},
	}, set.Endpoints)

	r.MaxEndpoints = 2
	set, err = r.Resolve(context.Background(), tg)
	require.NoError(t, err)
	assert.Equal(t, []string{"10.0.2.200:8080", "10.0.2.9:8080"}, set.Addrs(), "the backup went first")
	assert.Equal(t, 1, set.OverLimit)
}
