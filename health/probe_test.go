package health

import (
	"bufio"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"sekisho/internal/rawupstream"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

const waitFor = 5 * time.Second

// steadyInterval is the probe interval, and so the timeout (Probe caps
// Timeout at Interval), of the tests whose assertions name the path a
// probe result took. A probe cut by its timeout is a failure, and on a
// loaded machine a 20ms one is: it takes a first probe off the first-pass
// path, names itself as the cause of a fall, or adds events. 200ms is far
// more than a loopback probe takes, and keeps each such test near a second.
const steadyInterval = 200 * time.Millisecond

func TestParseStatusRanges(t *testing.T) {
	tests := []struct {
		name    string
		specs   []string
		want    []StatusRange
		wantErr []string
	}{
		{name: "empty", specs: nil, want: nil},
		{name: "code", specs: []string{"204"}, want: []StatusRange{{204, 204}}},
		{name: "range", specs: []string{"200-299"}, want: []StatusRange{{200, 299}}},
		{name: "mixed with spaces", specs: []string{" 200 - 299 ", "301"}, want: []StatusRange{{200, 299}, {301, 301}}},
		{name: "not a number", specs: []string{"ok"}, wantErr: []string{`status "ok"`}},
		{name: "2xx is not accepted", specs: []string{"2xx"}, wantErr: []string{`"2xx" is not a status code`}},
		{name: "out of range", specs: []string{"600"}, wantErr: []string{"600 is not between 100 and 599"}},
		{name: "reversed", specs: []string{"299-200"}, wantErr: []string{"299 is above 200"}},
		{name: "open range", specs: []string{"200-"}, wantErr: []string{`status range "200-"`}},
		{name: "every error at once", specs: []string{"x", "200", "700-800"}, wantErr: []string{`status "x"`, `status "700-800"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseStatusRanges(tt.specs)
			if len(tt.wantErr) > 0 {
				require.Error(t, err)
				for _, s := range tt.wantErr {
					assert.Contains(t, err.Error(), s)
				}
				assert.Nil(t, got)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}

func TestStatusRangeString(t *testing.T) {
	assert.Equal(t, "204", StatusRange{204, 204}.String())
	assert.Equal(t, "200-299", StatusRange{200, 299}.String())
}

func TestJitter(t *testing.T) {
	tests := []struct {
		name     string
		interval time.Duration
	}{
		{"2s", 2 * time.Second},
		{"150ms", 150 * time.Millisecond},
		{"7ns", 7 * time.Nanosecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lo := tt.interval - tt.interval/10
			seen := map[time.Duration]bool{}
			for range 1000 {
				d := jitter(tt.interval, rand.Int64N)
				assert.GreaterOrEqual(t, d, lo)
				assert.LessOrEqual(t, d, tt.interval)
				seen[d] = true
			}
			if tt.interval >= 10 {
				assert.Greater(t, len(seen), 1, "the waits vary")
			}
			assert.Equal(t, tt.interval, jitter(tt.interval, func(int64) int64 { return 0 }))
			assert.Equal(t, lo, jitter(tt.interval, func(n int64) int64 { return n - 1 }))
		})
	}
}

// flipServer answers probes with the status it is set to and counts how
// many answers it gave since the last change.
type flipServer struct {
	*httptest.Server
	mu     sync.Mutex
	status int
	since  int
	last   *http.Request
}

func newFlipServer(t *testing.T, status int) *flipServer {
	t.Helper()
	s := &flipServer{status: status}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		st := s.status
		s.since++
		s.last = r
		s.mu.Unlock()
		w.WriteHeader(st)
		io.WriteString(w, strings.Repeat("x", 64<<10)) // more than a probe reads
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *flipServer) set(status int) {
	s.mu.Lock()
	s.status, s.since = status, 0
	s.mu.Unlock()
}

func (s *flipServer) answered() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.since
}

func (s *flipServer) addr() string { return strings.TrimPrefix(s.URL, "http://") }

func TestProbeRiseAndFall(t *testing.T) {
	srv := newFlipServer(t, http.StatusOK)
	reg := NewRegistry(nil)
	type seen struct {
		ev       Event
		answered int
	}
	var mu sync.Mutex
	var events []seen
	reg.SetNotify(func(ev Event) {
		n := srv.answered()
		mu.Lock()
		events = append(events, seen{ev, n})
		mu.Unlock()
	})
	g := reg.Group("p")
	g.SetProbed(true)
	e := reg.Endpoint("p", srv.addr())
	const rise, fall = 3, 2
	c := NewChecker(g, []*Endpoint{e}, Probe{Path: "/ready", Interval: steadyInterval, Timeout: steadyInterval, Rise: rise, Fall: fall}, nil, nil)
	t.Cleanup(c.Close)
	require.False(t, e.Ready(), "a new endpoint of a probed pool starts unready")

	// Each flip waits for the event itself, not only the state: the
	// event is delivered just after the state changes, and it reads the
	// server's count of answers of the current kind.
	delivered := func(n int) func() bool {
		return func() bool {
			mu.Lock()
			defer mu.Unlock()
			return len(events) >= n
		}
	}
	c.Start(context.Background())
	require.Eventually(t, delivered(2), waitFor, time.Millisecond)
	require.True(t, e.Ready())
	srv.set(http.StatusServiceUnavailable)
	require.Eventually(t, delivered(3), waitFor, time.Millisecond)
	require.False(t, e.Ready())
	srv.set(http.StatusNoContent)
	require.Eventually(t, delivered(4), waitFor, time.Millisecond)
	require.True(t, e.Ready())
	c.Close()

	mu.Lock()
	defer mu.Unlock()
	require.Len(t, events, 4)
	assert.Equal(t, "added", events[0].ev.Reason)
	want := []struct {
		ready  bool
		streak int
		reason string
	}{
		{true, 1, "probe: new endpoint ready on its first pass"},
		{false, fall, "probe: unready after 2 consecutive failures: unexpected status 503"},
		{true, rise, "probe: ready after 3 consecutive passes"},
	}
	for i, w := range want {
		got := events[i+1]
		assert.Equal(t, w.ready, got.ev.Ready, "event %d", i+1)
		assert.Equal(t, w.reason, got.ev.Reason, "event %d", i+1)
		assert.GreaterOrEqual(t, got.answered, w.streak, "event %d came after %d answers of the new kind", i+1, got.answered)
	}
	assert.False(t, e.ReadySince().IsZero())
}

func TestProbeRequest(t *testing.T) {
	srv := newFlipServer(t, http.StatusOK)
	reg := NewRegistry(nil)
	g := reg.Group("p")
	g.SetProbed(true)
	e := reg.Endpoint("p", srv.addr())
	c := NewChecker(g, []*Endpoint{e}, Probe{Path: "healthz?deep=1", Interval: time.Hour, Host: "svc.internal", Rise: 1}, nil, nil)
	t.Cleanup(c.Close)
	require.False(t, c.FirstRoundDone(), "not before Start")

	c.Start(context.Background())
	require.Eventually(t, c.FirstRoundDone, waitFor, time.Millisecond, "the first probe goes out at once, not after the interval")

	srv.mu.Lock()
	r := srv.last
	srv.mu.Unlock()
	require.NotNil(t, r)
	assert.Equal(t, http.MethodGet, r.Method)
	assert.Equal(t, "/healthz", r.URL.Path)
	assert.Equal(t, "deep=1", r.URL.RawQuery)
	assert.Equal(t, "svc.internal", r.Host)
	assert.Equal(t, "sekisho-probe", r.UserAgent())
	assert.True(t, e.Ready())
}

func TestProbeExpectStatus(t *testing.T) {
	tests := []struct {
		name   string
		status int
		expect []string
		want   bool
	}{
		{"default accepts 204", 204, nil, true},
		{"default refuses 302", 302, nil, false},
		{"default refuses 500", 500, nil, false},
		{"code", 418, []string{"418"}, true},
		{"range", 302, []string{"200-399"}, true},
		{"outside every range", 404, []string{"200-299", "301"}, false},
		{"second range", 301, []string{"200-299", "301"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newFlipServer(t, tt.status)
			expect, err := ParseStatusRanges(tt.expect)
			require.NoError(t, err)
			reg := NewRegistry(nil)
			g := reg.Group("p")
			g.SetProbed(true)
			e := reg.Endpoint("p", srv.addr())
			c := NewChecker(g, []*Endpoint{e}, Probe{Interval: time.Hour, Rise: 1, Fall: 1, Expect: expect}, nil, nil)
			t.Cleanup(c.Close)

			c.Start(context.Background())
			require.Eventually(t, c.FirstRoundDone, waitFor, time.Millisecond)

			assert.Equal(t, tt.want, e.Ready())
			last := reg.Snapshot()[0].Endpoints[0].LastProbe
			require.NotNil(t, last)
			assert.Equal(t, tt.status, last.Status)
			assert.Equal(t, tt.want, last.OK)
		})
	}
}

func TestProbeHangingIsCutAtTimeout(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) })

	reg := NewRegistry(nil)
	g := reg.Group("p")
	g.SetProbed(true)
	e := reg.Endpoint("p", strings.TrimPrefix(srv.URL, "http://"))
	const timeout = 100 * time.Millisecond
	c := NewChecker(g, []*Endpoint{e}, Probe{Interval: time.Hour, Timeout: timeout, Rise: 1, Fall: 1}, nil, nil)
	t.Cleanup(c.Close)

	c.Start(context.Background())
	require.Eventually(t, c.FirstRoundDone, waitFor, time.Millisecond)

	st := reg.Snapshot()[0].Endpoints[0]
	require.NotNil(t, st.LastProbe)
	assert.False(t, st.LastProbe.OK)
	assert.Equal(t, "timed out after 100ms", st.LastProbe.Error)
	assert.GreaterOrEqual(t, st.LastProbe.DurationMS, 100.0)
	assert.Less(t, st.LastProbe.DurationMS, 2000.0)
	assert.False(t, e.Ready())
}

// garbageListener accepts TCP connections and answers each with bytes that
// are not HTTP.
func garbageListener(t *testing.T) string {
	t.Helper()
	return rawupstream.New(t, func(c net.Conn, br *bufio.Reader) {
		c.SetDeadline(time.Now().Add(time.Second))
		br.Read(make([]byte, 4096)) // answer the request, not the connection
		io.WriteString(c, "SSH-2.0-OpenSSH_9.6\r\n\x00\x01\x02garbage\r\n\r\n")
	}).Addr()
}

func TestProbeGarbageAnswerFails(t *testing.T) {
	addr := garbageListener(t)
	reg := NewRegistry(nil)
	g := reg.Group("p")
	g.SetProbed(true)
	e := reg.Endpoint("p", addr)
	c := NewChecker(g, []*Endpoint{e}, Probe{Interval: time.Hour, Rise: 1, Fall: 1}, nil, nil)
	t.Cleanup(c.Close)

	c.Start(context.Background())
	require.Eventually(t, c.FirstRoundDone, waitFor, time.Millisecond)

	st := reg.Snapshot()[0].Endpoints[0]
	require.NotNil(t, st.LastProbe)
	assert.False(t, st.LastProbe.OK)
	assert.Zero(t, st.LastProbe.Status)
	assert.NotEmpty(t, st.LastProbe.Error)
	assert.False(t, e.Ready())
}

func TestProbeTransportError(t *testing.T) {
	reg := NewRegistry(nil)
	g := reg.Group("p")
	g.SetProbed(true)
	e := reg.Endpoint("p", "127.0.0.1:1")
	boom := errors.New("boom")
	rt := roundTripFunc(func(*http.Request) (*http.Response, error) { return nil, boom })
	c := NewChecker(g, []*Endpoint{e}, Probe{Interval: time.Hour, Rise: 1, Fall: 1}, rt, nil)
	t.Cleanup(c.Close)

	c.Start(context.Background())
	require.Eventually(t, c.FirstRoundDone, waitFor, time.Millisecond)

	st := reg.Snapshot()[0].Endpoints[0]
	require.NotNil(t, st.LastProbe)
	assert.Equal(t, "boom", st.LastProbe.Error)
}

func TestProbeHTTPS(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(srv.Close)
	addr := strings.TrimPrefix(srv.URL, "https://")
	tests := []struct {
		name      string
		rt        http.RoundTripper
		wantReady bool
	}{
		{name: "transport that trusts the server", rt: srv.Client().Transport, wantReady: true},
		{name: "private transport verifies with the system roots", rt: nil, wantReady: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := NewRegistry(nil)
			g := reg.Group("p")
			g.SetProbed(true)
			e := reg.Endpoint("p", addr)
			c := NewChecker(g, []*Endpoint{e}, Probe{Scheme: "https", Interval: time.Hour, Rise: 1, Fall: 1}, tt.rt, nil)
			t.Cleanup(c.Close)

			c.Start(context.Background())
			require.Eventually(t, c.FirstRoundDone, waitFor, time.Millisecond)

			assert.Equal(t, tt.wantReady, e.Ready())
			if !tt.wantReady {
				assert.Contains(t, reg.Snapshot()[0].Endpoints[0].LastProbe.Error, "certificate")
			}
		})
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func TestReloadKeepsState(t *testing.T) {
	srvA := newFlipServer(t, http.StatusOK)
	srvB := newFlipServer(t, http.StatusOK)
	reg, rec := newTestRegistry(nil)
	// A Fall no run reaches keeps a slow machine's probe timeout from
	// passing for a lost state; the interval keeps A's first probe, whose
	// reason is checked below, from timing out.
	probe := Probe{Interval: steadyInterval, Timeout: steadyInterval, Rise: 2, Fall: 1000}

	// The first Runtime: pool p with endpoint A.
	g := reg.Group("p")
	g.SetProbed(true)
	a := reg.Endpoint("p", srvA.addr())
	c1 := NewChecker(g, []*Endpoint{a}, probe, nil, nil)
	t.Cleanup(c1.Close)
	c1.Start(context.Background())
	require.Eventually(t, a.Ready, waitFor, time.Millisecond)
	readySince := a.ReadySince()

	// The second Runtime compiles while the first serves: A again, and B.
	g2 := reg.Group("p")
	g2.SetProbed(true)
	a2 := reg.Endpoint("p", srvA.addr())
	b := reg.Endpoint("p", srvB.addr())
	require.Same(t, g, g2)
	require.Same(t, a, a2)
	assert.True(t, a2.Ready(), "an unchanged endpoint keeps its readiness")
	assert.False(t, b.Ready(), "a new endpoint starts unready")
	c2 := NewChecker(g2, []*Endpoint{a2, b}, probe, nil, nil)
	t.Cleanup(c2.Close)
	c2.Start(context.Background())
	require.Eventually(t, c2.FirstRoundDone, waitFor, time.Millisecond)
	require.Eventually(t, b.Ready, waitFor, time.Millisecond)

	// Both Checkers probe A for a while; then the old Runtime closes.
	before := srvA.answered()
	require.Eventually(t, func() bool { return srvA.answered() > before+4 }, waitFor, time.Millisecond)
	c1.Close()
	reg.Retain(map[string][]string{"p": {srvA.addr(), srvB.addr()}})

	assert.True(t, a.Ready())
	assert.Equal(t, readySince, a.ReadySince(), "A never went unready")
	assert.Equal(t, []string{"added", "probe: new endpoint ready on its first pass"}, rec.reasons(srvA.addr()))
	assert.Len(t, reg.Snapshot()[0].Endpoints, 2)
}

func TestCheckerLifecycle(t *testing.T) {
	srv := newFlipServer(t, http.StatusOK)
	reg := NewRegistry(nil)
	g := reg.Group("p")
	g.SetProbed(true)
	eps := []*Endpoint{reg.Endpoint("p", srv.addr()), reg.Endpoint("p", "127.0.0.1:1")}

	t.Run("empty checker is done at once", func(t *testing.T) {
		c := NewChecker(g, nil, Probe{}, nil, nil)
		c.Start(context.Background())
		assert.True(t, c.FirstRoundDone())
		c.Close()
	})

	t.Run("start after close does nothing", func(t *testing.T) {
		c := NewChecker(g, eps, Probe{}, nil, nil)
		c.Close()
		c.Start(context.Background())
		assert.False(t, c.FirstRoundDone())
		c.Close()
	})

	t.Run("context ends the probes", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		c := NewChecker(g, eps, Probe{Interval: 5 * time.Millisecond, Timeout: 5 * time.Millisecond}, nil, nil)
		c.Start(ctx)
		require.Eventually(t, c.FirstRoundDone, waitFor, time.Millisecond)
		cancel()
		c.Close()
	})

	t.Run("close stops and waits for every goroutine", func(t *testing.T) {
		c := NewChecker(g, eps, Probe{Interval: 5 * time.Millisecond, Timeout: 5 * time.Millisecond}, nil, nil)
		c.Start(context.Background())
		c.Start(context.Background()) // only the first counts
		require.Eventually(t, c.FirstRoundDone, waitFor, time.Millisecond)
		c.Close()
		c.Close()
		srv.Close()
		goleak.VerifyNone(t)
	})
}

// TestCheckerSetEndpoints changes the probed set of a running Checker, as
// DNS discovery does: an added endpoint is probed at once, a removed one is
// probed no more, and the first round stays the one Start found.
func TestCheckerSetEndpoints(t *testing.T) {
	srvA := newFlipServer(t, http.StatusOK)
	srvB := newFlipServer(t, http.StatusOK)
	srvC := newFlipServer(t, http.StatusOK)
	reg, rec := newTestRegistry(nil)
	g := reg.Group("p")
	g.SetProbed(true)
	a, b, c := reg.Endpoint("p", srvA.addr()), reg.Endpoint("p", srvB.addr()), reg.Endpoint("p", srvC.addr())
	// Rise 1 and a Fall no run reaches: a probe cut by its timeout (20ms,
	// capped by the interval) changes no readiness here, so the interval
	// can be short enough to count many of A's probes below.
	probe := Probe{Interval: 20 * time.Millisecond, Timeout: 20 * time.Millisecond, Rise: 1, Fall: 1000}
	ch := NewChecker(g, []*Endpoint{a, b}, probe, nil, nil)
	t.Cleanup(ch.Close)
	ch.Start(context.Background())
	require.Eventually(t, ch.FirstRoundDone, waitFor, time.Millisecond)
	require.Eventually(t, func() bool { return a.Ready() && b.Ready() }, waitFor, time.Millisecond)

	// C joins and is probed ("added at once", below, shows that the probe
	// comes at once). Its readiness is set a moment before its first probe
	// is counted off the round.
	ch.SetEndpoints([]*Endpoint{a, c})
	require.Eventually(t, c.Ready, waitFor, time.Millisecond, "an added endpoint is probed")
	require.Eventually(t, ch.FirstRoundDone, waitFor, time.Millisecond, "every endpoint of the set has had its first probe")
	reg.Release("p", []string{srvB.addr()}, "no longer discovered")

	// B's probes have stopped: its count stands still while A's grows.
	stopped := srvB.answered()
	aBefore := srvA.answered()
	require.Eventually(t, func() bool { return srvA.answered() > aBefore+3 }, waitFor, time.Millisecond)
	assert.LessOrEqual(t, srvB.answered(), stopped+1, "a removed endpoint is not probed (one probe may have been on its way)")
	assert.Contains(t, rec.reasons(srvB.addr()), "no longer discovered")
	for _, ps := range reg.Snapshot() {
		for _, es := range ps.Endpoints {
			assert.NotEqual(t, srvB.addr(), es.Address, "a forgotten endpoint leaves /pools")
		}
	}

	t.Run("removed before its first probe", func(t *testing.T) {
		reg := NewRegistry(nil)
		g := reg.Group("q")
		g.SetProbed(true)
		hang := reg.Endpoint("q", silentListener(t))
		ok := reg.Endpoint("q", srvA.addr())
		ch := NewChecker(g, []*Endpoint{hang, ok}, Probe{Interval: time.Hour, Timeout: time.Hour, Rise: 1, Fall: 1}, nil, nil)
		t.Cleanup(ch.Close)
		ch.Start(context.Background())
		require.Eventually(t, ok.Ready, waitFor, time.Millisecond)
		assert.False(t, ch.FirstRoundDone(), "the silent endpoint has not had its first probe")
		ch.SetEndpoints([]*Endpoint{ok})
		// Eventually: ok is ready a moment before its own first probe is
		// counted off the round; the silent one's never ends.
		require.Eventually(t, ch.FirstRoundDone, waitFor, time.Millisecond, "the first round no longer waits for a removed endpoint")
		// One added later holds the round back until its first probe.
		late := reg.Endpoint("q", silentListener(t))
		ch.SetEndpoints([]*Endpoint{ok, late})
		assert.False(t, ch.FirstRoundDone(), "an added endpoint's first probe is part of the round")
	})

	t.Run("added at once", func(t *testing.T) {
		reg := NewRegistry(nil)
		g := reg.Group("r")
		g.SetProbed(true)
		first := reg.Endpoint("r", srvA.addr())
		ch := NewChecker(g, []*Endpoint{first}, Probe{Interval: time.Hour, Timeout: time.Hour, Rise: 1, Fall: 1}, nil, nil)
		t.Cleanup(ch.Close)
		ch.Start(context.Background())
		require.Eventually(t, first.Ready, waitFor, time.Millisecond)
		added := reg.Endpoint("r", srvC.addr())
		ch.SetEndpoints([]*Endpoint{first, added})
		require.Eventually(t, added.Ready, waitFor, time.Millisecond, "an added endpoint is probed at once: the next probe is an hour away")
	})
}

// silentListener accepts connections and never answers on them.
func silentListener(t *testing.T) string {
	t.Helper()
	return rawupstream.New(t, func(_ net.Conn, br *bufio.Reader) {
		io.Copy(io.Discard, br) // until the test ends and closes it
	}).Addr()
}
