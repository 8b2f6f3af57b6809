package sharding

import (
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"sekisho/router"
)

// named answers with its name.
func named(name string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, name)
	})
}

// toggled is a shard handler whose readiness the test sets.
type toggled struct {
	http.Handler
	down atomic.Bool
}

func (t *toggled) Available() bool { return !t.down.Load() }

func namedShards(names ...string) []Shard {
	shards := make([]Shard, len(names))
	for i, n := range names {
		shards[i] = Shard{Name: n, Handler: named(n)}
	}
	return shards
}

func newStage(t *testing.T, c Config) *Stage {
	t.Helper()
	if c.Key.IsZero() {
		c.Key = router.MustParseKey("header:X-User-ID")
	}
	if c.RingConfig == (RingConfig{}) && c.Ring == nil {
		c.RingConfig = small
	}
	s, err := New(c)
	require.NoError(t, err)
	return s
}

// serve sends one request with the given X-User-ID (none when empty)
// through h and returns the recorder and the request's Info.
func serve(h http.Handler, user string) (*httptest.ResponseRecorder, *router.Info) {
	r := httptest.NewRequest(http.MethodGet, "/users/1", nil)
	if user != "" {
		r.Header.Set("X-User-ID", user)
	}
	info := &router.Info{}
	r = router.WithInfo(r, info)
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w, info
}

// keyOwnedBy returns a key whose owner on s's ring is shard name.
func keyOwnedBy(t *testing.T, s *Stage, name string) string {
	t.Helper()
	names := s.Ring().Names()
	for i := range 100000 {
		k := "user-" + strconv.Itoa(i)
		if names[s.Ring().Owner(k)] == name {
			return k
		}
	}
	require.FailNow(t, "no key found", "shard %s owns none of 100000 keys", name)
	return ""
}

func TestStageRoutesByOwner(t *testing.T) {
	s := newStage(t, Config{Shards: namedShards("users-0", "users-1", "users-2"), ExposeHeader: true})
	names := s.Ring().Names()
	h, err := s.Wrap(nil)
	require.NoError(t, err)
	seen := make(map[string]int)
	for _, k := range testKeys(300) {
		want := names[s.Ring().Owner(k)]
		for range 3 {
			w, info := serve(h, k)
			require.Equal(t, http.StatusOK, w.Code)
			require.Equal(t, want, w.Body.String(), "key %s", k)
			assert.Equal(t, want, w.Header().Get(HeaderShard))
			assert.Equal(t, want, info.Shard)
			assert.False(t, info.Overflow)
		}
		seen[want]++
	}
	assert.Len(t, seen, 3, "300 keys all landed on %v", seen)
	rep := s.HotKeys()
	var total uint64
	for _, sh := range rep.Shards {
		total += sh.Requests
		assert.Zero(t, sh.InFlight)
		assert.Zero(t, sh.OverflowedIn)
	}
	assert.EqualValues(t, 900, total)
}

func TestStageHeaderOnlyWhenExposed(t *testing.T) {
	for _, expose := range []bool{false, true} {
		t.Run(strconv.FormatBool(expose), func(t *testing.T) {
			s := newStage(t, Config{Shards: namedShards("a", "b"), ExposeHeader: expose})
			w, _ := serve(s, "42")
			require.Equal(t, http.StatusOK, w.Code)
			if expose {
				assert.Equal(t, w.Body.String(), w.Header().Get(HeaderShard))
			} else {
				assert.Empty(t, w.Header().Values(HeaderShard))
			}
		})
	}
}

// Two stages built apart, from shards listed in different orders, send
// every key to the same shard.
func TestStagesAgree(t *testing.T) {
	a := newStage(t, Config{Shards: namedShards("s-0", "s-1", "s-2", "s-3", "s-4"), RingConfig: RingConfig{}})
	b := newStage(t, Config{Shards: namedShards("s-3", "s-0", "s-4", "s-2", "s-1"), RingConfig: RingConfig{}})
	for _, k := range testKeys(2000) {
		wa, _ := serve(a, k)
		wb, _ := serve(b, k)
		require.Equal(t, wa.Body.String(), wb.Body.String(), "key %s", k)
	}
}

func TestStageMissingKey(t *testing.T) {
	tests := []struct {
		name       string
		missingKey string
		wantCode   int
	}{
		{"default rejects", "", http.StatusBadRequest},
		{"reject", MissingKeyReject, http.StatusBadRequest},
		{"random", MissingKeyRandom, http.StatusOK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newStage(t, Config{
				Key:        router.MustParseKey("header:X-User-ID", "cookie:uid"),
				Shards:     namedShards("a", "b", "c"),
				MissingKey: tt.missingKey,
			})
			served := make(map[string]bool)
			for range 60 {
				w, info := serve(s, "")
				require.Equal(t, tt.wantCode, w.Code)
				if tt.wantCode == http.StatusBadRequest {
					assert.Equal(t, "missing request key: header:X-User-ID,cookie:uid\n", w.Body.String())
					assert.Empty(t, info.Shard)
					continue
				}
				assert.Equal(t, w.Body.String(), info.Shard)
				served[w.Body.String()] = true
			}
			if tt.wantCode == http.StatusOK {
				assert.Len(t, served, 3, "60 keyless requests should reach every shard")
			}
			rep := s.HotKeys()
			assert.EqualValues(t, 60, rep.MissingKey)
			for _, sh := range rep.Shards {
				assert.Zero(t, sh.Recorded, "a keyless request is no hot key")
			}
		})
	}
}

func TestStageUnavailable(t *testing.T) {
	tests := []struct {
		name          string
		onUnavailable string
		// Shards are "a" (the key's owner), "next" and "last" in the
		// key's ring order.
		down         []string // shards without a ready replica
		wantCode     int
		wantBody     string // a shard alias, or a literal body
		wantOverflow bool
	}{
		{"owner up", OnUnavailableFail, []string{"next", "last"}, http.StatusOK, "a", false},
		{"fail by default", "", []string{"a"}, http.StatusServiceUnavailable, "shard \"a\" has no ready replica\n", false},
		{"fail", OnUnavailableFail, []string{"a"}, http.StatusServiceUnavailable, "shard \"a\" has no ready replica\n", false},
		{"next", OnUnavailableNext, []string{"a"}, http.StatusOK, "next", true},
		{"next skips down shards", OnUnavailableNext, []string{"a", "next"}, http.StatusOK, "last", true},
		{"next with none up", OnUnavailableNext, []string{"a", "next", "last"}, http.StatusServiceUnavailable, "no shard has a ready replica\n", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			handlers := map[string]*toggled{}
			var shards []Shard
			for _, n := range []string{"a", "b", "c"} {
				handlers[n] = &toggled{Handler: named(n)}
				shards = append(shards, Shard{Name: n, Handler: handlers[n]})
			}
			s := newStage(t, Config{Shards: shards, OnUnavailable: tt.onUnavailable})
			key := keyOwnedBy(t, s, "a")
			row := s.ring.row(s.ring.partition(key))
			names := s.Ring().Names()
			alias := map[string]string{"a": "a", "next": names[row[1]], "last": names[row[2]]}
			for _, d := range tt.down {
				handlers[alias[d]].down.Store(true)
			}
			want, ok := alias[tt.wantBody]
			if !ok {
				want = tt.wantBody
			}

			w, info := serve(s, key)
			assert.Equal(t, tt.wantCode, w.Code)
			assert.Equal(t, want, w.Body.String())
			assert.Equal(t, tt.wantOverflow, info.Overflow)
			rep := s.HotKeys()
			if tt.wantCode == http.StatusServiceUnavailable {
				assert.Equal(t, "a", info.Shard, "the access log names the shard that was down")
				assert.EqualValues(t, 1, rep.Shards[0].Unavailable)
			} else {
				assert.Equal(t, want, info.Shard)
			}
		})
	}
}

func TestStageCountsRequests(t *testing.T) {
	vec := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "shard_requests_total"}, []string{"route", "shard", "overflow"})
	curried := vec.MustCurryWith(prometheus.Labels{"route": "profile"})
	handlers := map[string]*toggled{}
	var shards []Shard
	for _, n := range []string{"a", "b"} {
		handlers[n] = &toggled{Handler: named(n)}
		shards = append(shards, Shard{Name: n, Handler: handlers[n]})
	}
	s := newStage(t, Config{Route: "profile", Shards: shards, OnUnavailable: OnUnavailableNext, Requests: curried})
	key := keyOwnedBy(t, s, "a")
	for range 3 {
		serve(s, key)
	}
	handlers["a"].down.Store(true)
	for range 2 {
		serve(s, key)
	}
	assert.InDelta(t, 3, testutil.ToFloat64(vec.WithLabelValues("profile", "a", "false")), 0)
	assert.InDelta(t, 2, testutil.ToFloat64(vec.WithLabelValues("profile", "b", "true")), 0)
	assert.InDelta(t, 0, testutil.ToFloat64(vec.WithLabelValues("profile", "b", "false")), 0)
	rep := s.HotKeys()
	assert.Equal(t, "profile", rep.Route)
	assert.EqualValues(t, 2, rep.Shards[1].OverflowedIn)
}

func TestNewRejectsWrongCounterLabels(t *testing.T) {
	for _, labels := range [][]string{{"shard"}, {"shard", "spilled"}, {"route", "shard", "overflow"}} {
		vec := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "x"}, labels)
		_, err := New(Config{Key: router.MustParseKey("path"), Shards: namedShards("a"), RingConfig: small, Requests: vec})
		assert.ErrorContains(t, err, "shard requests counter", "labels %v", labels)
	}
}

func TestStageReusesRing(t *testing.T) {
	first := newStage(t, Config{Shards: namedShards("a", "b", "c")})
	second := newStage(t, Config{Shards: namedShards("c", "a", "b"), RingConfig: small, Ring: first.Ring()})
	assert.Same(t, first.Ring(), second.Ring())

	_, err := New(Config{Key: router.MustParseKey("path"), Shards: namedShards("a", "b", "d"), RingConfig: small, Ring: first.Ring()})
	assert.ErrorContains(t, err, "ring: built as")
	_, err = New(Config{Key: router.MustParseKey("path"), Shards: namedShards("a", "b", "c"), Ring: first.Ring()})
	assert.ErrorContains(t, err, "ring: built as", "settings differ: defaults versus small")
}

func TestStageIsTerminal(t *testing.T) {
	s := newStage(t, Config{Shards: namedShards("a")})
	_, err := s.Wrap(named("next"))
	require.Error(t, err)
	h, err := router.Compose([]router.Stage{s})
	require.NoError(t, err)
	w, _ := serve(h, "k")
	assert.Equal(t, "a", w.Body.String())
}

// A handler that aborts (as ReverseProxy does with http.ErrAbortHandler)
// must not leave a phantom in-flight request that would skew the bound.
func TestStageInFlightSurvivesPanic(t *testing.T) {
	s := newStage(t, Config{BalanceFactor: 1, Shards: []Shard{{Name: "a", Handler: http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
		panic(http.ErrAbortHandler)
	})}}})
	assert.PanicsWithValue(t, http.ErrAbortHandler, func() { serve(s, "k") })
	assert.Zero(t, s.HotKeys().Shards[0].InFlight)
	assert.Zero(t, s.inFlight.Load())
}

func TestConfigValidate(t *testing.T) {
	key := router.MustParseKey("header:X-User-ID")
	ring, err := NewRing([]string{"a", "b"}, small)
	require.NoError(t, err)
	tests := []struct {
		name string
		c    Config
		want []string // substrings; nil means valid
	}{
		{"valid", Config{Key: key, Shards: namedShards("a", "b")}, nil},
		{"valid full", Config{Key: key, Shards: namedShards("a", "b"), BalanceFactor: 1, OnUnavailable: "next", MissingKey: "random", HotKeys: -1, RingConfig: small}, nil},
		{"valid with ring", Config{Key: key, Shards: namedShards("b", "a"), Ring: ring, RingConfig: small}, nil},
		{"no key", Config{Shards: namedShards("a")}, []string{"key: required"}},
		{"no shards", Config{Key: key}, []string{"shards: at least one shard is required"}},
		{"duplicate shards", Config{Key: key, Shards: namedShards("a", "b", "a")}, []string{`shards[2]: duplicate name "a" (also shards[0])`}},
		{"nil handler", Config{Key: key, Shards: []Shard{{Name: "a"}}}, []string{`shards[0]: shard "a" has no handler`}},
		{"balance factor below 1", Config{Key: key, Shards: namedShards("a"), BalanceFactor: 0.5}, []string{"balance_factor: must be 0 or at least 1, got 0.5"}},
		{"balance factor negative", Config{Key: key, Shards: namedShards("a"), BalanceFactor: -2}, []string{"balance_factor: must be 0 or at least 1, got -2"}},
		{"balance factor NaN", Config{Key: key, Shards: namedShards("a"), BalanceFactor: math.NaN()}, []string{"balance_factor: must be 0 or at least 1, got NaN"}},
		{"on_unavailable", Config{Key: key, Shards: namedShards("a"), OnUnavailable: "retry"}, []string{`on_unavailable: must be "fail" or "next", got "retry"`}},
		{"missing_key", Config{Key: key, Shards: namedShards("a"), MissingKey: "drop"}, []string{`missing_key: must be "reject" or "random", got "drop"`}},
		{"hot_keys", Config{Key: key, Shards: namedShards("a"), HotKeys: MaxHotKeys + 1}, []string{"hot_keys: at most 4096"}},
		{"ring settings", Config{Key: key, Shards: namedShards("a", "b"), RingConfig: RingConfig{Partitions: 1, Load: 0.5}}, []string{
			"partitions: must be at least the number of shards (2), got 1", "load: must be a number of at least 1, got 0.5",
		}},
		{"ring for other shards", Config{Key: key, Shards: namedShards("a", "c"), Ring: ring, RingConfig: small}, []string{"ring: built as"}},
		{"everything at once", Config{Shards: namedShards("x", "x"), BalanceFactor: 0.99, OnUnavailable: "x", MissingKey: "x", RingConfig: RingConfig{ReplicationFactor: -1}}, []string{
			"key:", "shards[1]:", "balance_factor:", "on_unavailable:", "missing_key:", "replication_factor:",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.c.Validate()
			if tt.want == nil {
				require.NoError(t, err)
				s, err := New(tt.c)
				require.NoError(t, err)
				assert.NotNil(t, s)
				return
			}
			require.Error(t, err)
			for _, w := range tt.want {
				assert.Contains(t, err.Error(), w)
			}
			s, err := New(tt.c)
			assert.Error(t, err)
			assert.Nil(t, s)
		})
	}
}
