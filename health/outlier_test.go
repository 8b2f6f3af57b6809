package health

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestOutlierDefaults(t *testing.T) {
	tests := []struct {
		name string
		in   Outlier
		want Outlier
	}{
		{
			name: "zero fields",
			in:   Outlier{ConsecutiveFailures: 5},
			want: Outlier{ConsecutiveFailures: 5, Eject: 30 * time.Second, MaxEject: 5 * time.Minute, MaxEjectedPercent: 50},
		},
		{
			name: "max eject follows eject",
			in:   Outlier{ConsecutiveFailures: 1, Eject: time.Second},
			want: Outlier{ConsecutiveFailures: 1, Eject: time.Second, MaxEject: 10 * time.Second, MaxEjectedPercent: 50},
		},
		{
			name: "max eject below eject is raised",
			in:   Outlier{ConsecutiveFailures: 1, Eject: time.Minute, MaxEject: time.Second, MaxEjectedPercent: 20, Count5xx: true},
			want: Outlier{ConsecutiveFailures: 1, Eject: time.Minute, MaxEject: time.Minute, MaxEjectedPercent: 20, Count5xx: true},
		},
		{
			name: "negative percent ejects nothing, above 100 is 100",
			in:   Outlier{ConsecutiveFailures: 1, MaxEjectedPercent: -1},
			want: Outlier{ConsecutiveFailures: 1, Eject: 30 * time.Second, MaxEject: 5 * time.Minute, MaxEjectedPercent: 0},
		},
		{
			name: "percent above 100",
			in:   Outlier{ConsecutiveFailures: 1, MaxEjectedPercent: 150},
			want: Outlier{ConsecutiveFailures: 1, Eject: 30 * time.Second, MaxEject: 5 * time.Minute, MaxEjectedPercent: 100},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewRegistry(nil).Group("p")
			g.SetOutlier(tt.in)
			assert.Equal(t, tt.want, g.Outlier())
		})
	}
}

func TestOutlierDisabled(t *testing.T) {
	clk := newClock()
	reg, _ := newTestRegistry(clk)
	g := reg.Group("p")
	g.SetOutlier(Outlier{ConsecutiveFailures: 0, Count5xx: true})
	e := reg.Endpoint("p", "a:1")
	reg.Endpoint("p", "b:1")

	for range 100 {
		e.ObserveResult(false)
	}

	assert.False(t, e.Ejected(clk.Now()))
	assert.True(t, e.Available(clk.Now()))
	assert.False(t, g.Counts5xx(), "5xx count only when ejection is on")
	assert.Equal(t, Outlier{}, g.Outlier())

	g.SetOutlier(Outlier{ConsecutiveFailures: 3, Count5xx: true})
	assert.True(t, g.Counts5xx())
}

// failUntilEjected fails e's requests until it is ejected and returns how
// long the ejection lasts.
func failUntilEjected(t *testing.T, e *Endpoint, clk *clock) time.Duration {
	t.Helper()
	for range 100 {
		e.ObserveResult(false)
		if e.Ejected(clk.Now()) {
			return time.Unix(0, e.ejectedUntil.Load()).Sub(clk.Now())
		}
	}
	require.FailNow(t, "endpoint was never ejected")
	return 0
}

func TestEjection(t *testing.T) {
	clk := newClock()
	reg, rec := newTestRegistry(clk)
	reg.Group("p").SetOutlier(Outlier{ConsecutiveFailures: 3, Eject: 10 * time.Second, MaxEject: 35 * time.Second, MaxEjectedPercent: 100})
	e := reg.Endpoint("p", "a:1")

	t.Run("a success breaks the streak", func(t *testing.T) {
		e.ObserveResult(false)
		e.ObserveResult(false)
		e.ObserveResult(true)
		e.ObserveResult(false)
		e.ObserveResult(false)
		assert.False(t, e.Ejected(clk.Now()))
		assert.True(t, e.Available(clk.Now()))
		e.ObserveResult(false)
		assert.True(t, e.Ejected(clk.Now()))
		assert.False(t, e.Available(clk.Now()))
		assert.Equal(t, []string{"added", "ejected for 10s after 3 consecutive failures"}, rec.reasons("a:1"))
	})

	t.Run("ejection expires lazily", func(t *testing.T) {
		end := clk.Now().Add(10 * time.Second)
		assert.True(t, e.Ejected(end.Add(-time.Nanosecond)))
		assert.False(t, e.Available(end.Add(-time.Nanosecond)))
		assert.False(t, e.Ejected(end))
		assert.True(t, e.Available(end), "available again once the ejection ends")
		assert.True(t, e.Available(end), "noticed once")
		evs := rec.all()
		last := evs[len(evs)-1]
		assert.Equal(t, Event{Pool: "p", Endpoint: "a:1", Ready: true, Reason: "ejection ended"}, last)
		assert.Len(t, rec.reasons("a:1"), 3)
		clk.Advance(10 * time.Second)
	})

	t.Run("repeated ejections double up to the cap", func(t *testing.T) {
		var got []time.Duration
		for range 3 {
			clk.Advance(time.Second) // back for a moment, then failing again
			d := failUntilEjected(t, e, clk)
			got = append(got, d)
			clk.Advance(d)
			require.True(t, e.Available(clk.Now()))
		}
		assert.Equal(t, []time.Duration{20 * time.Second, 35 * time.Second, 35 * time.Second}, got)
	})

	t.Run("a quiet window as long as the last ejection resets the doubling", func(t *testing.T) {
		clk.Advance(34 * time.Second)
		assert.Equal(t, 35*time.Second, failUntilEjected(t, e, clk), "34s of quiet is not enough")
		clk.Advance(35*time.Second + 35*time.Second)
		assert.Equal(t, 10*time.Second, failUntilEjected(t, e, clk))
	})

	t.Run("snapshot counts ejections", func(t *testing.T) {
		st := reg.Snapshot()[0].Endpoints[0]
		assert.Equal(t, int64(6), st.Ejections)
		assert.True(t, st.Ejected)
		assert.Zero(t, st.PassiveFailures, "an ejection starts a new streak")
	})
}

func TestMaxEjectedPercent(t *testing.T) {
	tests := []struct {
		endpoints, percent, want int
	}{
		{endpoints: 1, percent: 50, want: 0},
		{endpoints: 2, percent: 50, want: 1},
		{endpoints: 3, percent: 50, want: 1},
		{endpoints: 4, percent: 50, want: 2},
		{endpoints: 10, percent: 50, want: 5},
		{endpoints: 4, percent: 0, want: 2}, // the default, 50
		{endpoints: 4, percent: 25, want: 1},
		{endpoints: 4, percent: 100, want: 4},
		{endpoints: 4, percent: -1, want: 0},
		{endpoints: 1, percent: 100, want: 1},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%d endpoints at %d%%", tt.endpoints, tt.percent), func(t *testing.T) {
			clk := newClock()
			reg, _ := newTestRegistry(clk)
			reg.Group("p").SetOutlier(Outlier{ConsecutiveFailures: 2, Eject: time.Second, MaxEjectedPercent: tt.percent})
			eps := make([]*Endpoint, tt.endpoints)
			for i := range eps {
				eps[i] = reg.Endpoint("p", fmt.Sprintf("10.0.0.%d:80", i))
			}
			for _, e := range eps {
				for range 5 {
					e.ObserveResult(false)
				}
			}
			ejected := 0
			for _, e := range eps {
				if e.Ejected(clk.Now()) {
					ejected++
				}
			}
			assert.Equal(t, tt.want, ejected)
		})
	}
}

func TestRefusedEjectionRetriesWhenRoomFrees(t *testing.T) {
	clk := newClock()
	reg, _ := newTestRegistry(clk)
	reg.Group("p").SetOutlier(Outlier{ConsecutiveFailures: 2, Eject: 10 * time.Second, MaxEjectedPercent: 50})
	a := reg.Endpoint("p", "a:1")
	b := reg.Endpoint("p", "b:1")

	failUntilEjected(t, a, clk)
	b.ObserveResult(false)
	b.ObserveResult(false)
	require.False(t, b.Ejected(clk.Now()), "one of two is the cap")

	clk.Advance(10 * time.Second)
	b.ObserveResult(false)
	assert.True(t, b.Ejected(clk.Now()), "the streak went on; the next failure ejects once a has returned")
	assert.False(t, a.Ejected(clk.Now()))
}
