package router

import (
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/cespare/xxhash/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// armRecorder is an arm's pipeline in tests: it answers with the arm's name
// and keeps what the upstream would have seen.
type armRecorder struct {
	name      string
	armHeader []string
	infoArm   string
}

func (a *armRecorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a.armHeader = r.Header.Values(ArmHeader)
	if info := InfoFrom(r); info != nil {
		a.infoArm = info.Arm
	}
	_, _ = w.Write([]byte(a.name))
}

func newSplit(t testing.TB, name string, key Key, weights ...any) *SplitStage {
	t.Helper()
	s := Split{Name: name, Key: key}
	for i := 0; i < len(weights); i += 2 {
		arm := weights[i].(string)
		s.Arms = append(s.Arms, Arm{Name: arm, Weight: weights[i+1].(int), Handler: &armRecorder{name: arm}})
	}
	st, err := NewSplit(s)
	require.NoError(t, err)
	return st
}

func userKeys(n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("user-%d", i)
	}
	return keys
}

func TestSplitBucketFormula(t *testing.T) {
	st := newSplit(t, "checkout-v2", Key{}, "control", 90, "v2", 10)
	for _, k := range []string{"", "user-1", "a much longer key than the thirty-two bytes of an xxhash stripe"} {
		want := int(xxhash.Sum64String("checkout-v2\x00"+k) % SplitBuckets)
		assert.Equal(t, want, st.Bucket(k), "bucket of %q is reproducible outside the proxy", k)
	}
}

func TestSplitDistributionAndStability(t *testing.T) {
	key := MustParseKey("header:X-User-ID")
	before := newSplit(t, "checkout-v2", key, "control", 90, "v2", 10)
	replica := newSplit(t, "checkout-v2", key, "control", 90, "v2", 10)
	after := newSplit(t, "checkout-v2", key, "control", 80, "v2", 20)

	keys := userKeys(20000)
	r := httptest.NewRequest("GET", "/", nil)
	arm := func(st *SplitStage, k string) string {
		r.Header.Set("X-User-ID", k)
		return st.choose(r).name
	}
	small, smallAfter := 0, 0
	for _, k := range keys {
		a := arm(before, k)
		require.Equal(t, a, arm(before, k), "key %s sees one arm across requests", k)
		require.Equal(t, a, arm(replica, k), "key %s sees one arm across replicas", k)
		b := arm(after, k)
		if a == "v2" {
			small++
			require.Equal(t, "v2", b, "key %s left v2 when v2 grew", k)
		}
		if b == "v2" {
			smallAfter++
		}
	}
	share := float64(small) / float64(len(keys))
	assert.InDelta(t, 0.10, share, 0.01, "v2 share at 90/10")
	assert.InDelta(t, 0.20, float64(smallAfter)/float64(len(keys)), 0.01, "v2 share at 80/20")
}

func TestSplitRanges(t *testing.T) {
	tests := []struct {
		name    string
		weights []any
		probes  map[int]string
	}{
		{name: "90/10", weights: []any{"control", 90, "v2", 10}, probes: map[int]string{0: "control", 8999: "control", 9000: "v2", 9999: "v2"}},
		{name: "weights need not sum to 100", weights: []any{"a", 2, "b", 1}, probes: map[int]string{6665: "a", 6666: "b", 9999: "b"}},
		{name: "zero weight in the middle", weights: []any{"a", 1, "dark", 0, "b", 1}, probes: map[int]string{4999: "a", 5000: "b"}},
		{name: "zero weight last", weights: []any{"a", 1, "b", 3, "dark", 0}, probes: map[int]string{2499: "a", 2500: "b", 9999: "b"}},
		{name: "one arm", weights: []any{"only", 7}, probes: map[int]string{0: "only", 9999: "only"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := newSplit(t, "exp", Key{}, tt.weights...)
			for b, want := range tt.probes {
				assert.Equal(t, want, st.armOf(b).name, "bucket %d", b)
			}
		})
	}
}

func TestSplitIndependentExperiments(t *testing.T) {
	a := newSplit(t, "exp-a", Key{}, "x", 50, "y", 50)
	b := newSplit(t, "exp-b", Key{}, "x", 50, "y", 50)
	keys := userKeys(20000)
	cells := map[string]int{}
	var sa, sb, saa, sbb, sab float64
	for _, k := range keys {
		ba, bb := a.Bucket(k), b.Bucket(k)
		cells[a.armOf(ba).name+b.armOf(bb).name]++
		fa, fb := float64(ba), float64(bb)
		sa, sb, saa, sbb, sab = sa+fa, sb+fb, saa+fa*fa, sbb+fb*fb, sab+fa*fb
	}
	n := float64(len(keys))
	corr := (n*sab - sa*sb) / math.Sqrt((n*saa-sa*sa)*(n*sbb-sb*sb))
	assert.Less(t, math.Abs(corr), 0.03, "bucket correlation between experiments")
	for _, cell := range []string{"xx", "xy", "yx", "yy"} {
		assert.InDelta(t, 0.25, float64(cells[cell])/n, 0.015, "share of users in arms %s", cell)
	}
}

func TestSplitMissingKeyIsRandom(t *testing.T) {
	st := newSplit(t, "exp", MustParseKey("cookie:uid"), "a", 50, "b", 50)
	r := httptest.NewRequest("GET", "/", nil)
	seen := map[string]int{}
	for range 2000 {
		seen[st.choose(r).name]++
	}
	assert.InDelta(t, 1000, seen["a"], 150, "a request without the key is bucketed at random")
	assert.InDelta(t, 1000, seen["b"], 150)
}

func TestSplitOverride(t *testing.T) {
	unknown := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "unknown"}, []string{"experiment"})
	st, err := NewSplit(Split{
		Name:             "checkout",
		Key:              MustParseKey("header:X-User-ID"),
		OverrideHeader:   "x-force-arm",
		OverrideCookie:   "arm",
		UnknownOverrides: unknown,
		Arms: []Arm{
			{Name: "control", Weight: 100, Handler: &armRecorder{name: "control"}},
			{Name: "v2", Weight: 0, Handler: &armRecorder{name: "v2"}},
			{Name: "v3", Weight: 0, Handler: &armRecorder{name: "v3"}},
		},
	})
	require.NoError(t, err)
	tests := []struct {
		name        string
		header      []string
		cookie      string
		want        string
		wantUnknown float64
	}{
		{name: "no override", want: "control"},
		{name: "header bare arm", header: []string{"v2"}, want: "v2"},
		{name: "header experiment=arm", header: []string{"other=v3, checkout = v2"}, want: "v2"},
		{name: "other experiment ignored uncounted", header: []string{"other=v2"}, want: "control"},
		{name: "unknown arm counted then next element", header: []string{"nope, v3"}, want: "v3", wantUnknown: 1},
		{name: "unknown arm only", header: []string{"checkout=nope"}, want: "control", wantUnknown: 1},
		{name: "second header line", header: []string{"", "v3"}, want: "v3"},
		{name: "cookie", cookie: "v3", want: "v3"},
		{name: "cookie experiment=arm", cookie: "checkout=v2", want: "v2"},
		{name: "header wins over cookie", header: []string{"v2"}, cookie: "v3", want: "v2"},
		{name: "unknown header falls to cookie", header: []string{"zz"}, cookie: "v3", want: "v3", wantUnknown: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := testutil.ToFloat64(unknown.WithLabelValues("checkout"))
			r := httptest.NewRequest("GET", "/", nil)
			r.Header.Set("X-User-ID", "u1")
			if tt.header != nil {
				r.Header["X-Force-Arm"] = tt.header
			}
			if tt.cookie != "" {
				r.AddCookie(&http.Cookie{Name: "arm", Value: tt.cookie})
			}
			rec := httptest.NewRecorder()
			st.ServeHTTP(rec, r)
			assert.Equal(t, tt.want, rec.Body.String())
			assert.Equal(t, tt.wantUnknown, testutil.ToFloat64(unknown.WithLabelValues("checkout"))-before)
		})
	}
}

func TestSplitMarksRequestAndCounts(t *testing.T) {
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "split"}, []string{"arm", "experiment"})
	control, v2 := &armRecorder{name: "control"}, &armRecorder{name: "v2"}
	st, err := NewSplit(Split{
		Name:           "checkout-v2",
		Key:            MustParseKey("cookie:uid"),
		OverrideHeader: ArmHeader,
		Requests:       requests,
		Arms:           []Arm{{Name: "control", Weight: 90, Handler: control}, {Name: "v2", Weight: 10, Handler: v2}},
	})
	require.NoError(t, err)
	h, err := Compose([]Stage{st})
	require.NoError(t, err)

	t.Run("client's arm header is replaced by the first split", func(t *testing.T) {
		r := httptest.NewRequest("GET", "/", nil)
		r.Header.Set(ArmHeader, "checkout-v2=pretend")
		r = WithInfo(r, &Info{})
		h.ServeHTTP(httptest.NewRecorder(), r)
		got := control.armHeader
		if got == nil {
			got = v2.armHeader
		}
		assert.Len(t, got, 1)
		assert.NotContains(t, got, "checkout-v2=pretend")
	})
	t.Run("the arm header is also the override header", func(t *testing.T) {
		r := WithInfo(httptest.NewRequest("GET", "/", nil), &Info{})
		r.Header.Set(ArmHeader, "v2")
		h.ServeHTTP(httptest.NewRecorder(), r)
		assert.Equal(t, []string{"checkout-v2=v2"}, v2.armHeader)
		assert.Equal(t, "checkout-v2=v2", v2.infoArm)
	})
	t.Run("counted by arm", func(t *testing.T) {
		before := testutil.ToFloat64(requests.WithLabelValues("v2", "checkout-v2"))
		for range 3 {
			r := httptest.NewRequest("GET", "/", nil)
			r.Header.Set(ArmHeader, "v2")
			h.ServeHTTP(httptest.NewRecorder(), r)
		}
		assert.Equal(t, 3.0, testutil.ToFloat64(requests.WithLabelValues("v2", "checkout-v2"))-before)
	})
}

func TestSplitNested(t *testing.T) {
	leaves := map[string]*armRecorder{}
	leaf := func(name string) http.Handler {
		leaves[name] = &armRecorder{name: name}
		return leaves[name]
	}
	inner, err := NewSplit(Split{
		Name:           "color",
		Key:            MustParseKey("header:X-User-ID"),
		OverrideCookie: "force",
		OverrideHeader: "X-Force",
		Arms:           []Arm{{Name: "red", Weight: 1, Handler: leaf("red")}, {Name: "blue", Weight: 1, Handler: leaf("blue")}},
	})
	require.NoError(t, err)
	innerHandler, err := Compose([]Stage{inner})
	require.NoError(t, err)
	outer, err := NewSplit(Split{
		Name:           "checkout",
		Key:            MustParseKey("header:X-User-ID"),
		OverrideCookie: "force",
		OverrideHeader: "X-Force",
		Arms:           []Arm{{Name: "control", Weight: 1, Handler: leaf("control")}, {Name: "v2", Weight: 1, Handler: innerHandler}},
	})
	require.NoError(t, err)

	tests := []struct {
		name     string
		info     *Info
		byHeader bool
	}{
		{name: "cookie with Info", info: &Info{}},
		{name: "cookie without Info"},
		{name: "header with Info", info: &Info{}, byHeader: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest("GET", "/", nil)
			if tt.byHeader {
				r.Header.Set("X-Force", "checkout=v2, color=blue")
			} else {
				r.AddCookie(&http.Cookie{Name: "force", Value: "checkout=v2,color=blue"})
			}
			if tt.info != nil {
				r = WithInfo(r, tt.info)
			}
			rec := httptest.NewRecorder()
			outer.ServeHTTP(rec, r)
			assert.Equal(t, "blue", rec.Body.String())
			assert.Equal(t, []string{"checkout=v2", "color=blue"}, leaves["blue"].armHeader)
			assert.Equal(t, "checkout=v2, color=blue", strings.Join(leaves["blue"].armHeader, ", "))
			if tt.info != nil {
				assert.Equal(t, "checkout=v2,color=blue", tt.info.Arm)
			}
		})
	}
	t.Run("bucketed without override", func(t *testing.T) {
		seen := map[string]bool{}
		for _, k := range userKeys(200) {
			r := httptest.NewRequest("GET", "/", nil)
			r.Header.Set("X-User-ID", k)
			rec := httptest.NewRecorder()
			outer.ServeHTTP(rec, r)
			seen[rec.Body.String()] = true
		}
		assert.Equal(t, map[string]bool{"control": true, "red": true, "blue": true}, seen)
	})
}

func TestNewSplitValidation(t *testing.T) {
	h := named("arm")
	tests := []struct {
		name    string
		split   Split
		wantErr []string
	}{
		{name: "no name", split: Split{Arms: []Arm{{Name: "a", Weight: 1, Handler: h}}}, wantErr: []string{"name: empty"}},
		{name: "name with =", split: Split{Name: "a=b", Arms: []Arm{{Name: "a", Weight: 1, Handler: h}}}, wantErr: []string{"name:"}},
		{name: "no arms", split: Split{Name: "e"}, wantErr: []string{"no arms"}},
		{name: "weights sum to zero", split: Split{Name: "e", Arms: []Arm{{Name: "a", Handler: h}, {Name: "b", Handler: h}}}, wantErr: []string{"sum to 0"}},
		{name: "negative weight", split: Split{Name: "e", Arms: []Arm{{Name: "a", Weight: -1, Handler: h}, {Name: "b", Weight: 1, Handler: h}}}, wantErr: []string{"weight -1"}},
		{name: "huge weight", split: Split{Name: "e", Arms: []Arm{{Name: "a", Weight: math.MaxInt, Handler: h}}}, wantErr: []string{"want 0..1000000"}},
		{name: "duplicate arm", split: Split{Name: "e", Arms: []Arm{{Name: "a", Weight: 1, Handler: h}, {Name: "a", Weight: 1, Handler: h}}}, wantErr: []string{`duplicate name "a"`}},
		{name: "empty arm name", split: Split{Name: "e", Arms: []Arm{{Weight: 1, Handler: h}}}, wantErr: []string{"arm 0: name: empty"}},
		{name: "nil handler", split: Split{Name: "e", Arms: []Arm{{Name: "a", Weight: 1}}}, wantErr: []string{"no pipeline"}},
		{name: "bad override header", split: Split{Name: "e", OverrideHeader: "X Arm", Arms: []Arm{{Name: "a", Weight: 1, Handler: h}}}, wantErr: []string{"override_header"}},
		{name: "every error at once", split: Split{Arms: []Arm{{Name: "a"}, {Name: "a"}}}, wantErr: []string{"name: empty", "duplicate", "no pipeline", "sum to 0"}},
		{name: "wrong counter labels", split: Split{Name: "e", Requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "x"}, []string{"pool"}), Arms: []Arm{{Name: "a", Weight: 1, Handler: h}}}, wantErr: []string{"requests counter"}},
		{name: "valid", split: Split{Name: "e", Arms: []Arm{{Name: "a", Weight: 1, Handler: h}, {Name: "dark", Handler: h}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, err := NewSplit(tt.split)
			if len(tt.wantErr) == 0 {
				require.NoError(t, err)
				_, err = st.Wrap(h)
				assert.ErrorContains(t, err, "ends the pipeline")
				return
			}
			for _, want := range tt.wantErr {
				assert.ErrorContains(t, err, want)
			}
			assert.Nil(t, st)
		})
	}
}

func TestSplitChooseDoesNotAllocate(t *testing.T) {
	st := newSplit(t, "checkout-v2", MustParseKey("cookie:uid", "client_ip"), "control", 90, "v2", 10)
	r := httptest.NewRequest("GET", "/", nil)
	r.Header.Set("Cookie", "session=s; uid=user-12345")
	allocs := testing.AllocsPerRun(200, func() {
		if st.choose(r) == nil {
			t.Fatal("no arm")
		}
	})
	assert.Zero(t, allocs)
}

// BenchmarkSplitChoose measures choosing an arm: key extraction from a
// cookie, the salted hash and the range lookup, with override headers
// configured but absent.
func BenchmarkSplitChoose(b *testing.B) {
	st, err := NewSplit(Split{
		Name:           "checkout-v2",
		Key:            MustParseKey("cookie:uid", "client_ip"),
		OverrideHeader: ArmHeader,
		Arms:           []Arm{{Name: "control", Weight: 90, Handler: named("c")}, {Name: "v2", Weight: 10, Handler: named("v")}},
	})
	require.NoError(b, err)
	r := httptest.NewRequest("GET", "/", nil)
	r.Header.Set("Cookie", "session=s; uid=user-12345")
	b.ReportAllocs()
	for b.Loop() {
		if st.choose(r) == nil {
			b.Fatal("no arm")
		}
	}
}
