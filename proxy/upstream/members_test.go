package upstream

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"sekisho/health"
	"sekisho/proxy/balance"
	"sekisho/proxy/metrics"
	"sekisho/router"
)

// namedBackend answers every request with its name; hold, when not nil,
// keeps each request until it is closed.
func namedBackend(t *testing.T, name string, hold chan struct{}) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if hold != nil {
			<-hold
		}
		io.WriteString(w, name)
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

func membersPool(t *testing.T, policy balance.Policy, addrs ...string) (*Pool, *health.Registry) {
	reg := health.NewRegistry(nil)
	eps := make([]Endpoint, len(addrs))
	for i, a := range addrs {
		eps[i] = Endpoint{Addr: a}
	}
	p, err := New(Options{Name: "web", Endpoints: eps, Policy: policy, Registry: reg, Metrics: metrics.New(),
		Transport: NewTransport(TransportOptions{})})
	require.NoError(t, err)
	p.Commit()
	t.Cleanup(func() { p.Transport().CloseIdleConnections() })
	return p, reg
}

// serveVia sends one GET through p on the direct path and returns the
// answer's body (the backend's name) and status.
func serveVia(p *Pool, user string) (int, string) {
	r := httptest.NewRequest(http.MethodGet, "http://web/", nil)
	if user != "" {
		r.Header.Set("X-User", user)
	}
	r = router.WithInfo(r, &router.Info{})
	w := httptest.NewRecorder()
	p.ServeHTTP(w, r)
	return w.Code, w.Body.String()
}

// TestSetEndpointsKeepsStateAndMovesFewKeys changes a hash pool's set in
// place: the endpoints that stay keep their health state, and a key moves
// only to the endpoint that joined, never between the ones that stayed.
func TestSetEndpointsKeepsStateAndMovesFewKeys(t *testing.T) {
	names := []string{"a", "b", "c", "d"}
	addrs := make([]string, len(names))
	byAddr := map[string]string{}
	for i, n := range names {
		addrs[i] = namedBackend(t, n, nil)
		byAddr[addrs[i]] = n
	}
	policy, err := balance.New(balance.Hash, router.MustParseKey("header:X-User"), 0)
	require.NoError(t, err)
	p, reg := membersPool(t, policy, addrs[:3]...)
	before := map[string]*health.Endpoint{}
	for _, tg := range p.Targets() {
		before[tg.Addr] = tg.EP
	}
	place := func() map[string]string {
		out := map[string]string{}
		for k := range 300 {
			code, who := serveVia(p, fmt.Sprint("user-", k))
			require.Equal(t, http.StatusOK, code)
			out[fmt.Sprint("user-", k)] = who
		}
		return out
	}
	first := place()

	added, removed := p.SetEndpoints([]Endpoint{{Addr: addrs[0]}, {Addr: addrs[1]}, {Addr: addrs[2]}, {Addr: addrs[3]}})
	assert.Equal(t, []string{addrs[3]}, added)
	assert.Empty(t, removed)
	for _, tg := range p.Targets() {
		if ep, ok := before[tg.Addr]; ok {
			assert.Same(t, ep, tg.EP, "%s keeps its health state", tg.Addr)
		}
	}
	second := place()
	moved := 0
	for k, was := range first {
		if second[k] != was {
			assert.Equal(t, "d", second[k], "key %s moved from %s to another old endpoint", k, was)
			moved++
		}
	}
	assert.InDelta(t, 75, moved, 40, "about a quarter of the keys move to the new endpoint")

	// Taking b out moves b's keys only.
	_, removed = p.SetEndpoints([]Endpoint{{Addr: addrs[0]}, {Addr: addrs[2]}, {Addr: addrs[3]}})
	assert.Equal(t, []string{addrs[1]}, removed)
	third := place()
	for k, was := range second {
		if was != "b" {
			assert.Equal(t, was, third[k], "key %s stays where it was", k)
		} else {
			assert.NotEqual(t, "b", third[k])
		}
	}
	for _, ps := range reg.Snapshot() {
		for _, es := range ps.Endpoints {
			assert.NotEqual(t, addrs[1], es.Address, "a removed endpoint's state is dropped")
		}
	}
}

// TestSetEndpointsDrainsARemovedEndpoint removes the endpoint a slow
// request is on: the request completes there, new ones go to the new set.
func TestSetEndpointsDrainsARemovedEndpoint(t *testing.T) {
	hold := make(chan struct{})
	slow := namedBackend(t, "slow", hold)
	fast := namedBackend(t, "fast", nil)
	p, _ := membersPool(t, nil, slow)
	type result struct {
		code int
		body string
	}
	done := make(chan result, 1)
	go func() {
		code, body := serveVia(p, "")
		done <- result{code, body}
	}()
	ep := p.Targets()[0].EP
	require.Eventually(t, func() bool { return ep.InFlight() == 1 }, 5*time.Second, time.Millisecond)

	_, removed := p.SetEndpoints([]Endpoint{{Addr: fast}})
	require.Equal(t, []string{slow}, removed)
	for range 5 {
		code, who := serveVia(p, "")
		assert.Equal(t, http.StatusOK, code)
		assert.Equal(t, "fast", who, "no new request goes to a removed endpoint")
	}
	close(hold)
	select {
	case r := <-done:
		assert.Equal(t, result{http.StatusOK, "slow"}, r, "the request under way on the removed endpoint completes")
	case <-time.After(5 * time.Second):
		t.Fatal("the in-flight request never completed")
	}
	require.Eventually(t, func() bool { return ep.InFlight() == 0 }, 5*time.Second, time.Millisecond)
}

// TestSetEndpointsToNoneAndBack empties a pool (503) and fills it again.
func TestSetEndpointsToNoneAndBack(t *testing.T) {
	a := namedBackend(t, "a", nil)
	p, _ := membersPool(t, nil)
	code, _ := serveVia(p, "")
	assert.Equal(t, http.StatusServiceUnavailable, code)
	assert.False(t, p.Available())
	p.SetEndpoints([]Endpoint{{Addr: a}})
	assert.True(t, p.Available())
	code, who := serveVia(p, "")
	assert.Equal(t, http.StatusOK, code)
	assert.Equal(t, "a", who)
	added, removed := p.SetEndpoints([]Endpoint{{Addr: a}})
	assert.Nil(t, added)
	assert.Nil(t, removed, "an unchanged set changes nothing")
}

// A change of priority alone is a change of set: the endpoint moved to a
// backup tier stops taking traffic while the preferred one is available,
// under every balance policy, and takes it again once moved back.
func TestSetEndpointsPriorityAlone(t *testing.T) {
	a, b := namedBackend(t, "a", nil), namedBackend(t, "b", nil)
	for _, kind := range []string{balance.RoundRobin, balance.LeastRequest, balance.Random, balance.Hash} {
		t.Run(kind, func(t *testing.T) {
			policy, err := balance.New(kind, router.MustParseKey("header:X-User"), 0)
			require.NoError(t, err)
			p, _ := membersPool(t, policy, a, b)
			spread := func() map[string]int {
				seen := map[string]int{}
				for i := range 40 {
					code, who := serveVia(p, fmt.Sprintf("user-%d", i))
					require.Equal(t, http.StatusOK, code)
					seen[who]++
				}
				return seen
			}
			assert.Len(t, spread(), 2, "both take traffic in one tier")
			p.SetEndpoints([]Endpoint{{Addr: a}, {Addr: b, Priority: 1}})
			assert.Equal(t, map[string]int{"a": 40}, spread(), "the backup takes none")
			p.SetEndpoints([]Endpoint{{Addr: a, Priority: 1}, {Addr: b}})
			assert.Equal(t, map[string]int{"b": 40}, spread(), "the tiers swapped")
		})
	}
}
