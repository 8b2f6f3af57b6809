package scatter_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"sekisho/router"
	"sekisho/scatter"
)

func newResults() *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sekisho_scatter_leaf_results_total",
		Help: "Scatter leaves by result.",
	}, []string{"route", "leaf", "result"})
}

func count(vec *prometheus.CounterVec, leaf, result string) float64 {
	return testutil.ToFloat64(vec.WithLabelValues("search", leaf, result))
}

// failureBody is the 502 body.
type failureBody struct {
	Error  string `json:"error"`
	Leaves []struct {
		Leaf      string `json:"leaf"`
		Result    string `json:"result"`
		LatencyMS int64  `json:"latency_ms"`
		Reason    string `json:"reason"`
	} `json:"leaves"`
}

func decodeFailure(t *testing.T, body []byte) failureBody {
	t.Helper()
	var f failureBody
	require.NoError(t, json.Unmarshal(body, &f), "502 body: %s", body)
	return f
}

var byScore = scatter.Merge{Array: "results", SortBy: "score", Order: scatter.OrderDesc}

func TestConfigValidate(t *testing.T) {
	h := http.NotFoundHandler()
	three := []scatter.Leaf{{Name: "s-0", Handler: h}, {Name: "s-1", Handler: h}, {Name: "s-2", Handler: h}}
	for _, tc := range []struct {
		name string
		cfg  scatter.Config
		want []string // substrings of the error; none means valid
	}{
		{name: "minimal", cfg: scatter.Config{Leaves: three, Merge: scatter.Merge{Object: "deep"}}},
		{name: "everything set", cfg: scatter.Config{
			Leaves: three, Timeout: 100 * time.Millisecond, HedgeAfter: 30 * time.Millisecond,
			HedgeBudgetPercent: 5, MinSuccess: 3, Merge: byScore, MaxBodyBytes: 10, MaxLeafBodyBytes: 10,
		}},
		{name: "auto hedging", cfg: scatter.Config{Leaves: three, HedgeAuto: true, Merge: byScore}},
		{name: "quorum above the leaves", cfg: scatter.Config{Leaves: three, MinSuccess: 4, Merge: byScore},
			want: []string{"min_success: 4 is more than the 3 leaves"}},
		{name: "no merge", cfg: scatter.Config{Leaves: three},
			want: []string{"merge: missing; set one of array: FIELD, object: deep or concat: ndjson"}},
		{name: "no leaves", cfg: scatter.Config{Merge: byScore},
			want: []string{"leaves: none"}},
		{name: "hedge never before the deadline", cfg: scatter.Config{Leaves: three, Timeout: time.Second, HedgeAfter: time.Second, Merge: byScore},
			want: []string{"hedge_after: 1s is not below timeout 1s"}},
		{name: "hedge after the default deadline", cfg: scatter.Config{Leaves: three, HedgeAfter: 2 * time.Second, Merge: byScore},
			want: []string{"hedge_after: 2s is not below timeout 1s"}},
		{name: "auto and a duration", cfg: scatter.Config{Leaves: three, HedgeAuto: true, HedgeAfter: time.Millisecond, Merge: byScore},
			want: []string{"hedge_after: both auto and 1ms"}},
		{name: "every problem at once", cfg: scatter.Config{
			Leaves:             []scatter.Leaf{{Name: "a:b", Handler: h}, {Name: "x", Handler: h}, {Name: "x"}},
			Timeout:            -time.Second,
			HedgeAfter:         -time.Millisecond,
			HedgeBudgetPercent: 150,
			MinSuccess:         -1,
			Merge:              scatter.Merge{Array: "results", Order: "up", Limit: -1, Object: "deep"},
			MaxBodyBytes:       -1,
			MaxLeafBodyBytes:   -2,
		}, want: []string{
			`leaves[0]: leaf name "a:b"`,
			`leaves[2]: "x" is listed twice`,
			`leaves[2]: "x" has no handler`,
			"timeout: -1s: want > 0",
			"hedge_after: -1ms",
			"hedge_budget_percent: 150: want 0..100",
			"min_success: -1",
			"merge: set only one of array, object and concat",
			`merge.order: "up": want asc or desc`,
			"merge.order: needs merge.sort_by",
			"merge.limit: -1",
			"max_body_bytes: -1",
			"max_leaf_body_bytes: -2",
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			_, newErr := scatter.New(tc.cfg)
			if len(tc.want) == 0 {
				assert.NoError(t, err)
				assert.NoError(t, newErr)
				return
			}
			require.Error(t, err)
			for _, w := range tc.want {
				assert.Contains(t, err.Error(), w)
			}
			assert.Equal(t, len(tc.want), strings.Count(err.Error(), "\n")+1, "one line per problem:\n%v", err)
			assert.EqualError(t, newErr, err.Error())
		})
	}
}

func TestNewResultsCounter(t *testing.T) {
	leaves := []scatter.Leaf{{Name: "s-0", Handler: results()}, {Name: "s-1", Handler: results()}}
	t.Run("children exist for every leaf and result", func(t *testing.T) {
		vec := newResults()
		_, err := scatter.New(scatter.Config{Leaves: leaves, Merge: byScore, Results: vec.MustCurryWith(prometheus.Labels{"route": "search"})})
		require.NoError(t, err)
		assert.Equal(t, 8, testutil.CollectAndCount(vec))
	})
	t.Run("wrong labels are an error", func(t *testing.T) {
		vec := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "x"}, []string{"leaf", "outcome"})
		_, err := scatter.New(scatter.Config{Leaves: leaves, Merge: byScore, Results: vec})
		assert.ErrorContains(t, err, "results counter")
	})
}

func TestStageIsTerminal(t *testing.T) {
	st, err := scatter.New(scatter.Config{Leaves: []scatter.Leaf{{Name: "s-0", Handler: results()}}, Merge: byScore})
	require.NoError(t, err)
	h, err := st.Wrap(nil)
	require.NoError(t, err)
	assert.Same(t, st, h)
	_, err = st.Wrap(http.NotFoundHandler())
	assert.Error(t, err)
	composed, err := router.Compose([]router.Stage{st})
	require.NoError(t, err)
	assert.Same(t, st, composed)
}

// One leaf sleeps 5 s against a 1 s timeout: the others' merged answer
// comes at the deadline, or a 502 does when the quorum needs all three.
// The timeout is long enough for the other two to answer on a loaded
// machine; the straggler is cancelled at the deadline, so its delay costs
// the test nothing.
func TestStragglerTimeout(t *testing.T) {
	const timeout = time.Second
	for _, tc := range []struct {
		name       string
		minSuccess int
		wantStatus int
	}{
		{name: "quorum of one answers with the other two", minSuccess: 1, wantStatus: http.StatusOK},
		{name: "quorum of three fails at the deadline", minSuccess: 3, wantStatus: http.StatusBadGateway},
	} {
		t.Run(tc.name, func(t *testing.T) {
			slow := newTestPool(t, after(5*timeout, results(map[string]any{"id": "z", "score": 9})))
			vec := newResults()
			st, err := scatter.New(scatter.Config{
				Leaves: []scatter.Leaf{
					{Name: "s-0", Handler: newTestPool(t, results(map[string]any{"id": "a", "score": 3}, map[string]any{"id": "b", "score": 1}))},
					{Name: "s-1", Handler: newTestPool(t, results(map[string]any{"id": "c", "score": 2}))},
					{Name: "s-2", Handler: slow},
				},
				Timeout:    timeout,
				MinSuccess: tc.minSuccess,
				Merge:      byScore,
				Results:    vec.MustCurryWith(prometheus.Labels{"route": "search"}),
			})
			require.NoError(t, err)
			srv, infos := serve(t, st)

			resp, body, took := get(t, newClient(t), srv.URL+"/search?q=x")
			info := nextInfo(t, infos)

			assert.Equal(t, tc.wantStatus, resp.StatusCode)
			assert.GreaterOrEqual(t, took, timeout, "waited for the straggler's deadline")
			assert.Less(t, took, timeout+time.Second, "no longer than the deadline: not the straggler's 5 s")
			assert.Equal(t, "application/json", resp.Header.Get("Content-Type"))
			assert.Equal(t, "2/3", resp.Header.Get(scatter.LeavesHeader))
			if tc.wantStatus == http.StatusOK {
				assert.Equal(t, "true", resp.Header.Get(scatter.PartialHeader))
				assert.JSONEq(t, `{"results":[{"id":"a","score":3},{"id":"c","score":2},{"id":"b","score":1}]}`, string(body))
			} else {
				f := decodeFailure(t, body)
				assert.Equal(t, "scatter: 2 of 3 leaves answered, min_success is 3", f.Error)
				require.Len(t, f.Leaves, 3)
				for i, want := range []string{"ok", "ok", "timeout"} {
					assert.Equal(t, want, f.Leaves[i].Result, f.Leaves[i].Leaf)
				}
				assert.Contains(t, f.Leaves[2].Reason, "no usable answer within 1s")
			}
			assert.Regexp(t, regexp.MustCompile(`^s-0:ok:\d+,s-1:ok:\d+,s-2:timeout:\d+$`), info.Leaves)
			assert.Equal(t, 1.0, count(vec, "s-0", scatter.ResultOK))
			assert.Equal(t, 1.0, count(vec, "s-1", scatter.ResultOK))
			assert.Equal(t, 1.0, count(vec, "s-2", scatter.ResultTimeout))
			assert.Equal(t, 0.0, count(vec, "s-2", scatter.ResultOK))
			require.Eventually(t, func() bool { return slow.replicas[0].cancels.Load() == 1 },
				5*time.Second, 5*time.Millisecond, "the straggler sees its request cancelled")
		})
	}
}

// A leaf that fails while the quorum needs it ends the request at once,
// long before the deadline, and cancels the leaves still running.
func TestQuorumUnreachableFailsAtOnce(t *testing.T) {
	arrived := make(chan struct{})
	slow := newTestPool(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(arrived)
		after(2*time.Second, results()).ServeHTTP(w, r)
	}))
	// The failing leaf answers once the slow one is busy, so that there is
	// a running request to cancel.
	failing := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-arrived:
		case <-r.Context().Done():
		}
		w.WriteHeader(http.StatusInternalServerError)
	})
	vec := newResults()
	st, err := scatter.New(scatter.Config{
		Leaves:     []scatter.Leaf{{Name: "s-0", Handler: newTestPool(t, failing)}, {Name: "s-1", Handler: slow}},
		Timeout:    time.Second,
		MinSuccess: 2,
		Merge:      byScore,
		Results:    vec.MustCurryWith(prometheus.Labels{"route": "search"}),
	})
	require.NoError(t, err)
	srv, infos := serve(t, st)

	resp, body, took := get(t, newClient(t), srv.URL)
	info := nextInfo(t, infos)

	assert.Equal(t, http.StatusBadGateway, resp.StatusCode)
	assert.Less(t, took, 500*time.Millisecond)
	f := decodeFailure(t, body)
	require.Len(t, f.Leaves, 2)
	assert.Equal(t, "error", f.Leaves[0].Result)
	assert.Equal(t, "status 500", f.Leaves[0].Reason)
	assert.Equal(t, "cancelled", f.Leaves[1].Result)
	assert.Regexp(t, `^s-0:error:\d+,s-1:cancelled:\d+$`, info.Leaves)
	assert.Equal(t, 1.0, count(vec, "s-0", scatter.ResultError))
	assert.Equal(t, 0.0, count(vec, "s-1", scatter.ResultTimeout)+count(vec, "s-1", scatter.ResultError), "a cancelled leaf is not counted")
	require.Eventually(t, func() bool { return slow.replicas[0].cancels.Load() == 1 }, 5*time.Second, 5*time.Millisecond)
}

// A leaf's answer counts as failed, with its reason, when it is not 2xx or
// not what the merge needs.
func TestLeafFailures(t *testing.T) {
	for _, tc := range []struct {
		name   string
		leaf   http.Handler
		reason string
	}{
		{name: "non-2xx", leaf: newTestPoolHandler(t, status(http.StatusServiceUnavailable)), reason: "status 503"},
		{name: "invalid JSON", leaf: newTestPoolHandler(t, raw(`{"results": [1,`)), reason: "not valid JSON"},
		{name: "not an object", leaf: newTestPoolHandler(t, raw(`[1, 2]`)), reason: "the answer is an array, want an object"},
		{name: "field not an array", leaf: newTestPoolHandler(t, raw(`{"results": {"a": 1}}`)), reason: "results is an object, want an array"},
		{name: "over max_leaf_body_bytes", leaf: newTestPoolHandler(t, raw(`{"results": ["`+strings.Repeat("x", 2048)+`"]}`)),
			reason: "answer over max_leaf_body_bytes (1024 bytes)"},
		{name: "panicking handler", leaf: http.HandlerFunc(func(http.ResponseWriter, *http.Request) { panic("boom") }),
			reason: "leaf handler panicked: boom"},
		{name: "unreachable replica", leaf: unreachablePool(t), reason: "status 502"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vec := newResults()
			st, err := scatter.New(scatter.Config{
				Leaves:           []scatter.Leaf{{Name: "good", Handler: newTestPool(t, results(1))}, {Name: "bad", Handler: tc.leaf}},
				Merge:            scatter.Merge{Array: "results"},
				MaxLeafBodyBytes: 1024,
				Results:          vec.MustCurryWith(prometheus.Labels{"route": "search"}),
			})
			require.NoError(t, err)
			rec := httptest.NewRecorder()
			st.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
			assert.Equal(t, http.StatusOK, rec.Code)
			assert.JSONEq(t, `{"results":[1]}`, rec.Body.String())
			assert.Equal(t, "true", rec.Header().Get(scatter.PartialHeader))
			assert.Equal(t, "1/2", rec.Header().Get(scatter.LeavesHeader))
			assert.Equal(t, 1.0, count(vec, "good", scatter.ResultOK))
			assert.Equal(t, 1.0, count(vec, "bad", scatter.ResultError))

			// Alone, the leaf fails the request, and the 502 says why.
			alone, err := scatter.New(scatter.Config{
				Leaves:           []scatter.Leaf{{Name: "bad", Handler: tc.leaf}},
				Merge:            scatter.Merge{Array: "results"},
				MaxLeafBodyBytes: 1024,
			})
			require.NoError(t, err)
			rec = httptest.NewRecorder()
			alone.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
			assert.Equal(t, http.StatusBadGateway, rec.Code)
			f := decodeFailure(t, rec.Body.Bytes())
			assert.Equal(t, "scatter: 0 of 1 leaves answered, min_success is 1", f.Error)
			require.Len(t, f.Leaves, 1)
			assert.Equal(t, "error", f.Leaves[0].Result)
			assert.Contains(t, f.Leaves[0].Reason, tc.reason)
		})
	}
}

func newTestPoolHandler(t *testing.T, h http.Handler) http.Handler { return newTestPool(t, h) }

// unreachablePool is a pool whose only replica has gone away.
func unreachablePool(t *testing.T) http.Handler {
	p := newTestPool(t, results())
	p.replicas[0].srv.Close()
	return p
}

// A leaf that streams an endless answer is cut off at the cap: its
// upstream stops being read long before it could exhaust memory.
func TestHugeLeafAnswerIsCapped(t *testing.T) {
	var written atomic.Int64
	var stopped atomic.Bool
	endless := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		defer stopped.Store(true)
		chunk := []byte(strings.Repeat("x", 32<<10))
		_, _ = w.Write([]byte(`{"results": ["`))
		for range 8 << 10 { // 256 MiB at most
			n, err := w.Write(chunk)
			written.Add(int64(n))
			if err != nil {
				return
			}
		}
	})
	st, err := scatter.New(scatter.Config{
		Leaves:           []scatter.Leaf{{Name: "huge", Handler: newTestPool(t, endless)}},
		Merge:            scatter.Merge{Array: "results"},
		MaxLeafBodyBytes: 64 << 10,
	})
	require.NoError(t, err)
	// Served for real, the pool's ReverseProxy panics with
	// http.ErrAbortHandler when the writer refuses the answer; the stage
	// must take that as the leaf's failure.
	srv, _ := serve(t, st)
	resp, body, _ := get(t, newClient(t), srv.URL)

	assert.Equal(t, http.StatusBadGateway, resp.StatusCode)
	f := decodeFailure(t, body)
	require.Len(t, f.Leaves, 1)
	assert.Equal(t, "answer over max_leaf_body_bytes (65536 bytes)", f.Leaves[0].Reason)
	require.Eventually(t, stopped.Load, 10*time.Second, 5*time.Millisecond, "the upstream's writes fail once the proxy stops reading")
	assert.Less(t, written.Load(), int64(64<<20), "the upstream was not drained")
}

// Every leaf gets the client's method, path, query, headers and body, and
// its own X-Sekisho-Leaf.
func TestRequestReachesEveryLeaf(t *testing.T) {
	type seen struct {
		method, uri, leaf, custom, body string
		length                          int64
	}
	for _, tc := range []struct {
		name    string
		body    func() io.Reader
		chunked bool
	}{
		{name: "body with a length", body: func() io.Reader { return strings.NewReader("hello leaves") }},
		{name: "chunked body", body: func() io.Reader { return io.MultiReader(strings.NewReader("hello "), strings.NewReader("leaves")) }, chunked: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var mu sync.Mutex
			got := map[string]seen{}
			leaf := func(i int) http.Handler {
				return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					b, _ := io.ReadAll(r.Body)
					name := r.Header.Get(scatter.LeafHeader)
					mu.Lock()
					got[name] = seen{r.Method, r.RequestURI, name, r.Header.Get("X-Custom"), string(b), r.ContentLength}
					mu.Unlock()
					_, _ = w.Write([]byte(`{"leaf": {"` + name + `": true}, "last": ` + string(rune('0'+i)) + `}`))
				})
			}
			st, err := scatter.New(scatter.Config{
				Leaves: []scatter.Leaf{{Name: "s-0", Handler: newTestPool(t, leaf(0))}, {Name: "s-1", Handler: newTestPool(t, leaf(1))}},
				Merge:  scatter.Merge{Object: scatter.ObjectDeep},
			})
			require.NoError(t, err)
			srv, _ := serve(t, st)
			req, err := http.NewRequest(http.MethodPost, srv.URL+"/search/v1?q=a+b&n=2", tc.body())
			require.NoError(t, err)
			if tc.chunked {
				req.ContentLength = -1
			}
			req.Header.Set("X-Custom", "kept")
			req.Header.Set(scatter.LeafHeader, "spoofed")
			resp, err := newClient(t).Do(req)
			require.NoError(t, err)
			body, err := io.ReadAll(resp.Body)
			require.NoError(t, resp.Body.Close())
			require.NoError(t, err)

			assert.Equal(t, http.StatusOK, resp.StatusCode)
			assert.JSONEq(t, `{"leaf": {"s-0": true, "s-1": true}, "last": 1}`, string(body))
			assert.Empty(t, resp.Header.Get(scatter.PartialHeader))
			assert.Equal(t, "2/2", resp.Header.Get(scatter.LeavesHeader))
			mu.Lock()
			defer mu.Unlock()
			for _, name := range []string{"s-0", "s-1"} {
				assert.Equal(t, seen{"POST", "/search/v1?q=a+b&n=2", name, "kept", "hello leaves", 12}, got[name])
			}
		})
	}
}

// A body over max_body_bytes is refused before any leaf is called.
func TestBodyTooLarge(t *testing.T) {
	for _, tc := range []struct {
		name    string
		size    int
		chunked bool
		want    int
	}{
		{name: "at the cap", size: 16, want: http.StatusOK},
		{name: "over the cap with a length", size: 17, want: http.StatusRequestEntityTooLarge},
		{name: "over the cap chunked", size: 17, chunked: true, want: http.StatusRequestEntityTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pool := newTestPool(t, results(1))
			st, err := scatter.New(scatter.Config{Leaves: []scatter.Leaf{{Name: "s-0", Handler: pool}}, Merge: byScore, MaxBodyBytes: 16})
			require.NoError(t, err)
			srv, _ := serve(t, st)
			var body io.Reader = strings.NewReader(strings.Repeat("b", tc.size))
			if tc.chunked {
				body = io.MultiReader(body)
			}
			resp, err := newClient(t).Post(srv.URL, "text/plain", body)
			require.NoError(t, err)
			require.NoError(t, resp.Body.Close())
			assert.Equal(t, tc.want, resp.StatusCode)
			want := int64(0)
			if tc.want == http.StatusOK {
				want = 1
			}
			assert.Equal(t, want, pool.replicas[0].hits.Load())
		})
	}
}

// A leaf pool of two replicas where the first is slow: the hedge goes to
// the other replica, wins, and the slow request is cancelled.
func TestHedgeReachesAnotherReplica(t *testing.T) {
	const hedgeAfter, fast = 50 * time.Millisecond, 20 * time.Millisecond
	// The fast replica starts its answer only once the slow one has the
	// first attempt: on a loaded machine that attempt can take longer than
	// hedge_after to arrive, and a hedge that won before it did would
	// cancel it before it reached the backend, where the test watches for
	// the cancellation.
	arrived := make(chan struct{})
	var once sync.Once
	slowFirst := after(10*time.Second, results("slow"))
	pool := newTestPool(t,
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			once.Do(func() { close(arrived) })
			slowFirst.ServeHTTP(w, r)
		}),
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-arrived:
			case <-r.Context().Done():
				return
			}
			after(fast, results("fast")).ServeHTTP(w, r)
		}),
	)
	vec := newResults()
	st, err := scatter.New(scatter.Config{
		Leaves: []scatter.Leaf{{Name: "s-0", Handler: pool}},
		// Far above the window allowed below, so that only the hedge can
		// end the leaf in it.
		Timeout:            5 * time.Second,
		HedgeAfter:         hedgeAfter,
		HedgeBudgetPercent: 100,
		Merge:              scatter.Merge{Array: "results"},
		Results:            vec.MustCurryWith(prometheus.Labels{"route": "search"}),
	})
	require.NoError(t, err)
	srv, infos := serve(t, st)

	resp, body, took := get(t, newClient(t), srv.URL)
	info := nextInfo(t, infos)

	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.JSONEq(t, `{"results":["fast"]}`, string(body))
	// The slack is for a loaded machine; the slow replica would take 10 s.
	const slack = time.Second
	assert.GreaterOrEqual(t, took, hedgeAfter+fast)
	assert.Less(t, took, hedgeAfter+fast+slack, "hedge_after plus the fast replica, not the slow one")
	m := regexp.MustCompile(`^s-0:hedged_win:(\d+)$`).FindStringSubmatch(info.Leaves)
	require.Len(t, m, 2, info.Leaves)
	leafMS, err := strconv.Atoi(m[1])
	require.NoError(t, err)
	assert.GreaterOrEqual(t, leafMS, int((hedgeAfter + fast).Milliseconds()), "the leaf's latency is hedge_after plus the fast replica")
	assert.Less(t, leafMS, int((hedgeAfter + fast + slack).Milliseconds()))
	assert.Equal(t, 1.0, count(vec, "s-0", scatter.ResultHedgedWin))
	assert.Equal(t, int64(1), pool.replicas[0].hits.Load())
	assert.Equal(t, int64(1), pool.replicas[1].hits.Load())
	require.Eventually(t, func() bool { return pool.replicas[0].cancels.Load() == 1 },
		5*time.Second, 5*time.Millisecond, "the losing request is cancelled at the backend")
}

// How a leaf ends, given how its first attempt and its hedge behave.
func TestHedgeOutcomes(t *testing.T) {
	// Wide margins: a loaded machine must not turn "before hedge_after"
	// into "after".
	const hedgeAfter = 200 * time.Millisecond
	for _, tc := range []struct {
		name          string
		first, second http.Handler
		budget        float64
		want          string // the leaf's result
		body          string // the answer, or "" for a 502
		hedges        int64
	}{
		{name: "first answers before hedge_after", first: results("first"), second: results("second"),
			want: scatter.ResultOK, body: `{"results":["first"]}`, hedges: 0},
		{name: "first fails before hedge_after: a failure is not hedged", first: status(http.StatusInternalServerError), second: results("second"),
			want: scatter.ResultError, hedges: 0},
		{name: "first fails after the hedge went: the hedge wins", first: after(300*time.Millisecond, status(http.StatusInternalServerError)),
			second: after(50*time.Millisecond, results("second")), want: scatter.ResultHedgedWin, body: `{"results":["second"]}`, hedges: 1},
		{name: "hedge fails, first answers", first: after(300*time.Millisecond, results("first")), second: status(http.StatusBadGateway),
			want: scatter.ResultOK, body: `{"results":["first"]}`, hedges: 1},
		{name: "both fail", first: after(300*time.Millisecond, status(http.StatusInternalServerError)), second: status(http.StatusBadGateway),
			want: scatter.ResultError, hedges: 1},
		{name: "both too slow", first: after(2*time.Second, results("first")), second: after(2*time.Second, results("second")),
			want: scatter.ResultTimeout, hedges: 1},
		{name: "no budget left: no hedge", first: after(300*time.Millisecond, results("first")), second: results("second"), budget: 10,
			want: scatter.ResultOK, body: `{"results":["first"]}`, hedges: 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pool := newTestPool(t, tc.first, tc.second)
			budget := tc.budget
			if budget == 0 {
				budget = 100
			}
			st, err := scatter.New(scatter.Config{
				Leaves:             []scatter.Leaf{{Name: "s-0", Handler: pool}},
				Timeout:            600 * time.Millisecond,
				HedgeAfter:         hedgeAfter,
				HedgeBudgetPercent: budget,
				Merge:              scatter.Merge{Array: "results"},
			})
			require.NoError(t, err)
			srv, infos := serve(t, st)
			resp, body, _ := get(t, newClient(t), srv.URL)
			info := nextInfo(t, infos)

			assert.Regexp(t, `^s-0:`+tc.want+`:\d+$`, info.Leaves)
			assert.Equal(t, tc.hedges, pool.replicas[1].picks.Load(), "hedges sent")
			if tc.body == "" {
				assert.Equal(t, http.StatusBadGateway, resp.StatusCode)
				return
			}
			assert.Equal(t, http.StatusOK, resp.StatusCode)
			assert.JSONEq(t, tc.body, string(body))
		})
	}
}

// Under sustained load on a leaf whose every first attempt is slow, hedges
// stay within hedge_budget_percent of the leaf's requests.
//
// Nothing here counts on the scheduler. The budget is a token bucket that
// starts empty and fills by the share on every request, so "hedges <= 10 %
// of requests" holds exactly, whatever the timing. The replica counts are
// exact because the test pool picks and records under one lock: each
// request's first pick goes to replica 0 and its second, if any, to
// replica 1, so replica 1's picks are the hedges sent, even when a hedge
// that fires before its first attempt has run picks first (that race, with
// a pick that looked at Tried and recorded in two steps, once sent both to
// replica 0: 201 picks there, 19 "hedges" for 20 hedged wins). Only the
// lower bound ("the budget is used") needs a hedge to fall due before a
// 10 ms answer, 10 times the 1 ms hedge delay, and a missed hedge keeps its
// token for a later request.
//
// Checked on a loaded machine: go test -race -count=20 ./scatter/ -run Hedge
// beside one `yes > /dev/null` per core (2 cores) for the whole run.
func TestHedgeBudgetHoldsUnderLoad(t *testing.T) {
	const requests, workers = 200, 8
	pool := newTestPool(t, after(10*time.Millisecond, results("slow")), results("fast"))
	vec := newResults()
	st, err := scatter.New(scatter.Config{
		Leaves: []scatter.Leaf{{Name: "s-0", Handler: pool}},
		// Far above the 10 ms the slow replica takes, so that a stall of a
		// loaded machine does not turn into timeouts.
		Timeout:    5 * time.Second,
		HedgeAfter: time.Millisecond,
		Merge:      scatter.Merge{Array: "results"},
		Results:    vec.MustCurryWith(prometheus.Labels{"route": "search"}),
	})
	require.NoError(t, err)

	var next atomic.Int64
	var wg sync.WaitGroup
	var failed atomic.Int64
	for range workers {
		wg.Go(func() {
			for next.Add(1) <= requests {
				rec := httptest.NewRecorder()
				st.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
				if rec.Code != http.StatusOK {
					failed.Add(1)
					t.Logf("status %d: %s", rec.Code, rec.Body)
				}
			}
		})
	}
	wg.Wait()

	hedges := pool.replicas[1].picks.Load()
	assert.Zero(t, failed.Load())
	assert.Equal(t, int64(requests), pool.replicas[0].picks.Load(), "each request picks the first replica once")
	assert.LessOrEqual(t, hedges, int64(requests*scatter.DefaultHedgeBudgetPercent/100), "hedges within 10%% of requests")
	assert.GreaterOrEqual(t, hedges, int64(requests*scatter.DefaultHedgeBudgetPercent/100*3/4), "the budget is used")
	won := count(vec, "s-0", scatter.ResultHedgedWin)
	assert.LessOrEqual(t, won, float64(hedges), "no more hedged wins than hedges sent")
	assert.Equal(t, float64(requests), won+count(vec, "s-0", scatter.ResultOK))
}

// hedge_after: auto hedges after timeout/2 until it knows the leaf, then
// after the leaf's recent p95.
func TestHedgeAuto(t *testing.T) {
	for _, tc := range []struct {
		name          string
		timeout       time.Duration
		warmup        int
		atLeast, less time.Duration
	}{
		{name: "before warm-up hedges after timeout/2", timeout: time.Second, warmup: 0, atLeast: 500 * time.Millisecond, less: time.Second},
		// The replica answers in about a millisecond: its p95 is far below
		// the 2 s that timeout/2 would wait.
		{name: "after warm-up hedges after the p95", timeout: 4 * time.Second, warmup: 40, less: time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var slow atomic.Bool
			first := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if slow.Load() {
					after(10*time.Second, results("slow")).ServeHTTP(w, r)
					return
				}
				results("warm").ServeHTTP(w, r)
			})
			pool := newTestPool(t, first, results("fast"))
			st, err := scatter.New(scatter.Config{
				Leaves:             []scatter.Leaf{{Name: "s-0", Handler: pool}},
				Timeout:            tc.timeout,
				HedgeAuto:          true,
				HedgeBudgetPercent: 100,
				Merge:              scatter.Merge{Array: "results"},
			})
			require.NoError(t, err)
			for range tc.warmup {
				rec := httptest.NewRecorder()
				st.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
				// Once the p95 is known, the slowest 5 % are hedged too.
				require.Equal(t, http.StatusOK, rec.Code)
			}
			slow.Store(true)

			srv, infos := serve(t, st)
			resp, body, took := get(t, newClient(t), srv.URL)
			info := nextInfo(t, infos)

			assert.Equal(t, http.StatusOK, resp.StatusCode)
			assert.JSONEq(t, `{"results":["fast"]}`, string(body))
			assert.Regexp(t, `^s-0:hedged_win:\d+$`, info.Leaves)
			assert.GreaterOrEqual(t, took, tc.atLeast)
			assert.Less(t, took, tc.less)
		})
	}
}

// A client that goes away cancels every leaf, and the request leaves no
// goroutine behind.
func TestClientDisconnectCancelsEveryLeaf(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Run("disconnect", func(t *testing.T) {
		arrived := make(chan struct{}, 3)
		cancelled := make(chan struct{}, 3)
		block := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			arrived <- struct{}{}
			deadline := time.NewTimer(5 * time.Second)
			defer deadline.Stop()
			select {
			case <-r.Context().Done():
				cancelled <- struct{}{}
			case <-deadline.C:
			}
		})
		vec := newResults()
		st, err := scatter.New(scatter.Config{
			Leaves: []scatter.Leaf{
				{Name: "s-0", Handler: newTestPool(t, block)},
				{Name: "s-1", Handler: newTestPool(t, block)},
				{Name: "s-2", Handler: newTestPool(t, block)},
			},
			Timeout:    10 * time.Second,
			HedgeAfter: 5 * time.Second,
			Merge:      byScore,
			Results:    vec.MustCurryWith(prometheus.Labels{"route": "search"}),
		})
		require.NoError(t, err)
		srv, infos := serve(t, st)

		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		client := newClient(t)
		clientDone := make(chan error, 1)
		go func() {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL, nil)
			if err == nil {
				var resp *http.Response
				if resp, err = client.Do(req); err == nil {
					_ = resp.Body.Close()
				}
			}
			clientDone <- err
		}()
		for range 3 {
			waitFor(t, arrived, "every leaf got the request")
		}
		cancel()
		for range 3 {
			waitFor(t, cancelled, "every leaf saw the cancellation")
		}
		info := nextInfo(t, infos)
		assert.Regexp(t, `^s-0:cancelled:\d+,s-1:cancelled:\d+,s-2:cancelled:\d+$`, info.Leaves)
		select {
		case err := <-clientDone:
			assert.True(t, errors.Is(err, context.Canceled), "client error: %v", err)
		case <-time.After(5 * time.Second):
			require.FailNow(t, "the client did not return")
		}
		for _, leaf := range []string{"s-0", "s-1", "s-2"} {
			for _, result := range []string{scatter.ResultOK, scatter.ResultError, scatter.ResultTimeout, scatter.ResultHedgedWin} {
				assert.Zero(t, count(vec, leaf, result), "cancelled leaves are not counted")
			}
		}
	})
	goleak.VerifyNone(t, ignore)
}

func waitFor(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(5 * time.Second):
		require.FailNow(t, "timed out: "+what)
	}
}

// concat: ndjson sends what it has once the quorum is met and streams the
// rest as it arrives.
func TestNDJSONStreams(t *testing.T) {
	release := make(chan struct{})
	later := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
			_, _ = w.Write([]byte(`{"n":3}`))
		case <-r.Context().Done():
		}
	})
	st, err := scatter.New(scatter.Config{
		Leaves: []scatter.Leaf{
			{Name: "now", Handler: newTestPool(t, raw("{\"n\":1}\n\n{\"n\":2}\n"))},
			{Name: "later", Handler: newTestPool(t, later)},
			{Name: "broken", Handler: newTestPool(t, status(http.StatusInternalServerError))},
		},
		Timeout: 10 * time.Second,
		Merge:   scatter.Merge{Concat: scatter.ConcatNDJSON},
	})
	require.NoError(t, err)
	srv, infos := serve(t, st)

	resp, err := newClient(t).Get(srv.URL)
	require.NoError(t, err)
	defer resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, "application/x-ndjson", resp.Header.Get("Content-Type"))
	rd := bufio.NewReader(resp.Body)
	var lines []string
	for range 3 {
		line, err := rd.ReadString('\n')
		require.NoError(t, err)
		lines = append(lines, line)
	}
	assert.Equal(t, []string{"{\"n\":1}\n", "\n", "{\"n\":2}\n"}, lines, "the first leaf's lines arrive while another is still running")
	close(release)
	rest, err := io.ReadAll(rd)
	require.NoError(t, err)
	assert.Equal(t, "{\"n\":3}\n", string(rest))
	assert.Equal(t, "2/3", resp.Trailer.Get(scatter.LeavesHeader))
	assert.Equal(t, "true", resp.Trailer.Get(scatter.PartialHeader))
	assert.Regexp(t, `^now:ok:\d+,later:ok:\d+,broken:error:\d+$`, nextInfo(t, infos).Leaves)
}

func TestNDJSONWithoutQuorum(t *testing.T) {
	st, err := scatter.New(scatter.Config{
		Leaves: []scatter.Leaf{
			{Name: "ok", Handler: raw("{\"n\":1}\n")},
			{Name: "bad", Handler: raw("{\"n\":\n")},
		},
		MinSuccess: 2,
		Merge:      scatter.Merge{Concat: scatter.ConcatNDJSON},
	})
	require.NoError(t, err)
	rec := httptest.NewRecorder()
	st.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
	assert.Equal(t, http.StatusBadGateway, rec.Code)
	f := decodeFailure(t, rec.Body.Bytes())
	require.Len(t, f.Leaves, 2)
	assert.Equal(t, "line 1 is not valid JSON", f.Leaves[1].Reason)
}

// With every leaf done before the quorum, the leaves headers are headers,
// not trailers.
func TestNDJSONAllLeavesBeforeTheStatus(t *testing.T) {
	st, err := scatter.New(scatter.Config{
		Leaves:     []scatter.Leaf{{Name: "a", Handler: raw(`{"n":1}`)}, {Name: "b", Handler: raw(`{"n":2}`)}},
		MinSuccess: 2,
		Merge:      scatter.Merge{Concat: scatter.ConcatNDJSON},
	})
	require.NoError(t, err)
	rec := httptest.NewRecorder()
	st.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
	assert.Equal(t, http.StatusOK, rec.Code)
	assert.Equal(t, "2/2", rec.Header().Get(scatter.LeavesHeader))
	assert.Empty(t, rec.Header().Get("Trailer"))
	assert.ElementsMatch(t, []string{`{"n":1}`, `{"n":2}`}, strings.Fields(rec.Body.String()))
}
