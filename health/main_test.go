package health

import (
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// recorder collects the events a Registry emits.
type recorder struct {
	mu     sync.Mutex
	events []Event
}

func (r *recorder) add(ev Event) {
	r.mu.Lock()
	r.events = append(r.events, ev)
	r.mu.Unlock()
}

func (r *recorder) all() []Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Event(nil), r.events...)
}

// reasons returns the reasons of the events of one endpoint, in order.
func (r *recorder) reasons(addr string) []string {
	var out []string
	for _, ev := range r.all() {
		if ev.Endpoint == addr {
			out = append(out, ev.Reason)
		}
	}
	return out
}

// clock is a settable time source for the Registry.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *clock { return &clock{now: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	return c.now
}

// newTestRegistry returns a Registry on clk (real time when nil) whose
// events go to the returned recorder.
func newTestRegistry(clk *clock) (*Registry, *recorder) {
	reg := NewRegistry(nil)
	if clk != nil {
		reg.now = clk.Now
	}
	rec := &recorder{}
	reg.SetNotify(rec.add)
	return reg, rec
}
