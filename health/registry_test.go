package health

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestEndpointStartState(t *testing.T) {
	tests := []struct {
		name      string
		probed    bool
		wantReady bool
	}{
		{name: "pool without probes starts ready", probed: false, wantReady: true},
		{name: "probed pool starts unready", probed: true, wantReady: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := newClock()
			reg, rec := newTestRegistry(clk)
			reg.Group("p").SetProbed(tt.probed)
			e := reg.Endpoint("p", "10.0.0.1:80")

			assert.Same(t, e, reg.Endpoint("p", "10.0.0.1:80"), "get or create returns the same state")
			assert.Equal(t, tt.wantReady, e.Ready())
			assert.Equal(t, tt.wantReady, e.Available(clk.Now()))
			assert.Equal(t, "p", e.Pool())
			assert.Equal(t, "10.0.0.1:80", e.Addr())
			if tt.wantReady {
				assert.Equal(t, clk.Now(), e.ReadySince().UTC())
			} else {
				assert.True(t, e.ReadySince().IsZero())
			}
			assert.Equal(t, []Event{{Pool: "p", Endpoint: "10.0.0.1:80", Ready: tt.wantReady, Reason: "added"}}, rec.all())
		})
	}
}

func TestSetProbedOffMarksReady(t *testing.T) {
	reg, rec := newTestRegistry(newClock())
	g := reg.Group("p")
	g.SetProbed(true)
	e := reg.Endpoint("p", "a:1")
	require.False(t, e.Ready())

	g.SetProbed(true) // no change, no event
	g.SetProbed(false)

	assert.True(t, e.Ready())
	assert.False(t, g.Probed())
	assert.Equal(t, []string{"added", "pool has no readiness probe"}, rec.reasons("a:1"))
}

func TestRetain(t *testing.T) {
	reg, rec := newTestRegistry(newClock())
	reg.Group("p").SetProbed(true)
	a := reg.Endpoint("p", "a:1")
	b := reg.Endpoint("p", "b:1")
	reg.Endpoint("q", "c:1")

	reg.Retain(map[string][]string{"p": {"a:1"}})

	snap := reg.Snapshot()
	require.Len(t, snap, 1)
	assert.Equal(t, "p", snap[0].Pool)
	require.Len(t, snap[0].Endpoints, 1)
	assert.Equal(t, "a:1", snap[0].Endpoints[0].Address)
	assert.Same(t, a, reg.Endpoint("p", "a:1"), "a kept endpoint keeps its state")

	var removed []string
	for _, ev := range rec.all() {
		if ev.Removed {
			removed = append(removed, ev.Pool+"/"+ev.Endpoint)
		}
	}
	assert.Equal(t, []string{"p/b:1", "q/c:1"}, removed)

	// A Runtime still draining may change a removed endpoint: no event.
	n := len(rec.all())
	b.recordProbe(ProbeResult{At: time.Now(), OK: true}, 1, 1)
	assert.True(t, b.Ready())
	assert.Len(t, rec.all(), n, "a removed endpoint emits nothing")

	b2 := reg.Endpoint("p", "b:1")
	assert.NotSame(t, b, b2, "adding a removed endpoint again starts it anew")
	assert.False(t, b2.Ready())
}

func TestSnapshot(t *testing.T) {
	clk := newClock()
	reg, _ := newTestRegistry(clk)
	reg.Group("web").SetProbed(true)
	reg.Group("web").SetOutlier(Outlier{ConsecutiveFailures: 1, MaxEjectedPercent: 100})
	b := reg.Endpoint("web", "b:1")
	a := reg.Endpoint("web", "a:1")
	reg.Endpoint("api", "c:1")
	a.recordProbe(ProbeResult{At: clk.Now(), OK: true, Status: 200}, 1, 3)
	a.Begin()
	b.recordProbe(ProbeResult{At: clk.Now(), Status: 503, Error: "unexpected status 503"}, 1, 3)
	b.ObserveResult(false)

	snap := reg.Snapshot()

	require.Len(t, snap, 2)
	assert.Equal(t, "api", snap[0].Pool)
	assert.False(t, snap[0].Probed)
	web := snap[1]
	assert.True(t, web.Probed)
	require.Len(t, web.Endpoints, 2)
	sa, sb := web.Endpoints[0], web.Endpoints[1]
	assert.Equal(t, "a:1", sa.Address)
	assert.True(t, sa.Ready)
	assert.True(t, sa.Available)
	assert.Equal(t, int64(1), sa.InFlight)
	assert.Equal(t, 1, sa.ConsecutiveSuccesses)
	require.NotNil(t, sa.LastProbe)
	assert.Equal(t, 200, sa.LastProbe.Status)

	assert.False(t, sb.Ready)
	assert.True(t, sb.Ejected)
	assert.Equal(t, clk.Now().Add(DefaultEject), sb.EjectedUntil.UTC())
	assert.Equal(t, int64(1), sb.Ejections)
	assert.Equal(t, 1, sb.ConsecutiveFailures)
	require.NotNil(t, sb.LastProbe)
	assert.Equal(t, "unexpected status 503", sb.LastProbe.Error)

	raw, err := json.Marshal(snap)
	require.NoError(t, err)
	assert.Contains(t, string(raw), `"ejected_until":`)
	assert.NotContains(t, string(raw), `"ready_since":"0001`, "zero times are omitted")
	a.End()
}

func TestNotifyReentrantAndOrdered(t *testing.T) {
	clk := newClock()
	reg := NewRegistry(nil)
	reg.now = clk.Now
	reg.Group("p").SetOutlier(Outlier{ConsecutiveFailures: 1, Eject: time.Second, MaxEjectedPercent: 100})
	var got []Event
	var e *Endpoint
	reg.SetNotify(func(ev Event) {
		got = append(got, ev)
		reg.Snapshot()
		if ev.Ejected {
			// The callback itself notices the end of the ejection: that
			// event must queue behind this one, not deadlock.
			assert.True(t, e.Available(clk.Now().Add(time.Second)))
		}
	})
	e = reg.Endpoint("p", "a:1")

	e.ObserveResult(false)

	require.Len(t, got, 3)
	assert.Equal(t, "added", got[0].Reason)
	assert.True(t, got[1].Ejected)
	assert.Equal(t, "ejected for 1s after 1 consecutive failures", got[1].Reason)
	assert.False(t, got[2].Ejected)
	assert.Equal(t, "ejection ended", got[2].Reason)
}

func TestNotifyPanicIsContained(t *testing.T) {
	reg := NewRegistry(nil)
	calls := 0
	reg.SetNotify(func(Event) {
		calls++
		panic("boom")
	})
	reg.Group("p").SetProbed(true)
	e := reg.Endpoint("p", "a:1")

	assert.NotPanics(t, func() { e.recordProbe(ProbeResult{At: time.Now(), OK: true}, 1, 1) })
	assert.True(t, e.Ready())
	assert.Equal(t, 2, calls, "a panic does not stop later events")
}

func TestHotPathDoesNotAllocate(t *testing.T) {
	reg := NewRegistry(nil)
	reg.Group("p").SetOutlier(Outlier{ConsecutiveFailures: 5})
	e := reg.Endpoint("p", "a:1")
	now := time.Now()
	tests := []struct {
		name string
		fn   func()
	}{
		{"Available", func() { e.Available(now) }},
		{"Ejected", func() { e.Ejected(now) }},
		{"ReadySince", func() { e.ReadySince(); e.ReadySinceUnixNano() }},
		{"Begin/End/InFlight", func() { e.Begin(); e.InFlight(); e.End() }},
		{"ObserveResult(true)", func() { e.ObserveResult(true) }},
		{"Counts5xx", func() { e.Group().Counts5xx() }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Zero(t, testing.AllocsPerRun(100, tt.fn))
		})
	}
}

// TestHoldAndRelease: an endpoint held by two pools of one name (the one in
// force and a draining one) stays until the last lets it go; held again
// after that, it starts anew.
func TestHoldAndRelease(t *testing.T) {
	reg, rec := newTestRegistry(nil)
	a := reg.Hold("p", "10.0.0.1:80", false)
	assert.Same(t, a, reg.Hold("p", "10.0.0.1:80", false))
	assert.Empty(t, reg.Release("p", []string{"10.0.0.1:80"}, "no longer discovered"), "one holder is left")
	assert.Len(t, reg.Snapshot()[0].Endpoints, 1)
	assert.Equal(t, []string{"10.0.0.1:80"}, reg.Release("p", []string{"10.0.0.1:80"}, "pool closed"))
	assert.Empty(t, reg.Snapshot()[0].Endpoints)
	assert.Equal(t, []string{"added", "pool closed"}, rec.reasons("10.0.0.1:80"))
	b := reg.Hold("p", "10.0.0.1:80", false)
	assert.NotSame(t, a, b, "held again after its release, an endpoint starts anew")
}
