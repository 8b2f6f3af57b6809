package router

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"log"
	"math"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// noLeaks makes the test fail if a goroutine started during it is still
// running once every cleanup (servers, transports, stages) has run.
func noLeaks(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
}

// backendRecord is what a test backend saw of one request.
type backendRecord struct {
	header http.Header
	body   []byte
	err    error
}

// backend is an upstream that records every request. When hold is set it
// answers only once hold is closed or the request is cancelled, so a test
// controls how long it is busy without sleeping.
type backend struct {
	srv     *httptest.Server
	hold    chan struct{}
	mu      sync.Mutex
	records []backendRecord
}

func newBackend(t *testing.T, hold chan struct{}) *backend {
	b := &backend{hold: hold}
	b.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		b.mu.Lock()
		b.records = append(b.records, backendRecord{header: r.Header.Clone(), body: body, err: err})
		b.mu.Unlock()
		if b.hold != nil {
			select {
			case <-b.hold:
			case <-r.Context().Done():
				return
			}
		}
		_, _ = fmt.Fprintf(w, "read %d bytes", len(body))
	}))
	t.Cleanup(b.srv.Close)
	return b
}

func (b *backend) seen() []backendRecord {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.records)
}

// pool is a small pool in front of one backend, as the proxy package builds
// them: a ReverseProxy with its own transport.
func pool(t *testing.T, b *backend) http.Handler {
	target, err := url.Parse(b.srv.URL)
	require.NoError(t, err)
	transport := &http.Transport{MaxIdleConnsPerHost: 64}
	t.Cleanup(transport.CloseIdleConnections)
	return &httputil.ReverseProxy{
		Rewrite:   func(pr *httputil.ProxyRequest) { pr.SetURL(target) },
		Transport: transport,
		ErrorLog:  nopLogger,
	}
}

// mirrorFront serves stage in front of primary on a real socket, with an
// Info on every request as the listener would attach. The stage is closed
// when the test ends, before the servers.
func mirrorFront(t *testing.T, m Mirror, primary http.Handler) (*httptest.Server, *MirrorStage) {
	st, err := NewMirror(m)
	require.NoError(t, err)
	h, err := st.Wrap(primary)
	require.NoError(t, err)
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(w, WithInfo(r, &Info{Route: "web", Start: time.Now()}))
	}))
	t.Cleanup(front.Close)
	t.Cleanup(st.Close)
	return front, st
}

// settle waits until every copy started so far has ended, so that Close
// does not cancel one the test expects to complete.
func settle(t *testing.T, st *MirrorStage) {
	require.Eventually(t, func() bool { return st.InFlight() == 0 }, 10*time.Second, 2*time.Millisecond)
}

func mirrorCounter() *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mirror_requests_total"}, []string{"pool", "result"})
}

func results(c *prometheus.CounterVec, pool string) map[string]float64 {
	out := map[string]float64{}
	for _, r := range []string{MirrorSent, MirrorError, MirrorDropped, MirrorSkippedBody} {
		if v := testutil.ToFloat64(c.WithLabelValues(pool, r)); v != 0 {
			out[r] = v
		}
	}
	return out
}

func get(t *testing.T, client *http.Client, target string, header http.Header) string {
	req, err := http.NewRequest("GET", target, nil)
	require.NoError(t, err)
	for k, v := range header {
		req.Header[k] = v
	}
	res, err := client.Do(req)
	require.NoError(t, err)
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, res.StatusCode)
	return string(body)
}

// TestMirrorDoesNotSlowPrimary: with a shadow that never answers until the
// stage is closed, every primary request is answered while its copy is
// still held by the shadow. Nothing is timed: were the primary to wait for
// its copy, the first request would hang until the client's timeout
// (the mirror's own timeout is an hour), and a slow machine cannot turn a copy
// into a success, as a shadow that answered after a fixed delay could.
func TestMirrorDoesNotSlowPrimary(t *testing.T) {
	noLeaks(t)
	primary := newBackend(t, nil)
	var held atomic.Int64
	stuckShadow := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		held.Add(1)
		<-r.Context().Done()
	})
	counter := mirrorCounter()
	mirrored, st := mirrorFront(t, Mirror{Pool: "shadow", Handler: stuckShadow, Percent: 100, MaxInFlight: 1000, Timeout: time.Hour, Requests: counter}, pool(t, primary))
	client := mirrored.Client()
	client.Timeout = 5 * time.Second

	const n = 200
	for range n {
		assert.Equal(t, "read 0 bytes", get(t, client, mirrored.URL, nil))
	}
	require.Eventually(t, func() bool { return held.Load() == n }, 10*time.Second, 2*time.Millisecond,
		"every copy reached the shadow, which still holds it")
	assert.Equal(t, int64(n), int64(st.InFlight()), "all %d copies in flight at once, none answered", n)

	st.Close()
	assert.Equal(t, map[string]float64{MirrorError: n}, results(counter, "shadow"),
		"every copy was still waiting on the shadow when Close cancelled it")
}

func TestMirrorShare(t *testing.T) {
	t.Run("random", func(t *testing.T) {
		noLeaks(t)
		primary, shadow := newBackend(t, nil), newBackend(t, nil)
		counter := mirrorCounter()
		front, st := mirrorFront(t, Mirror{Pool: "shadow", Handler: pool(t, shadow), Percent: 50, Requests: counter}, pool(t, primary))
		for range 400 {
			get(t, front.Client(), front.URL, nil)
		}
		settle(t, st)
		st.Close()
		got := len(shadow.seen())
		assert.InDelta(t, 200, got, 60, "shadow share of 400 requests at 50%%")
		assert.Len(t, primary.seen(), 400)
		assert.Equal(t, map[string]float64{MirrorSent: float64(got)}, results(counter, "shadow"))
	})
	t.Run("by key", func(t *testing.T) {
		noLeaks(t)
		primary, shadow := newBackend(t, nil), newBackend(t, nil)
		front, st := mirrorFront(t, Mirror{Pool: "shadow", Handler: pool(t, shadow), Percent: 50, Key: MustParseKey("header:X-User-ID")}, pool(t, primary))
		const users = 200
		for range 2 {
			for u := range users {
				get(t, front.Client(), front.URL, http.Header{"X-User-Id": {fmt.Sprint(u)}})
			}
		}
		settle(t, st)
		st.Close()
		perUser := map[string]int{}
		for _, rec := range shadow.seen() {
			perUser[rec.header.Get("X-User-Id")]++
		}
		for u, copies := range perUser {
			assert.Equal(t, 2, copies, "user %s is mirrored on every request or never", u)
		}
		assert.InDelta(t, users/2, len(perUser), 35)
		for u := range users {
			r := httptest.NewRequest("GET", "/", nil)
			r.Header.Set("X-User-ID", fmt.Sprint(u))
			_, mirrored := perUser[fmt.Sprint(u)]
			assert.Equal(t, st.chosen(r), mirrored, "user %d", u)
		}
	})
	t.Run("edges", func(t *testing.T) {
		r := httptest.NewRequest("GET", "/", nil)
		none, err := NewMirror(Mirror{Pool: "p", Handler: named("s"), Percent: 0})
		require.NoError(t, err)
		defer none.Close()
		all, err := NewMirror(Mirror{Pool: "p", Handler: named("s"), Percent: 100, Key: MustParseKey("path")})
		require.NoError(t, err)
		defer all.Close()
		for range 100 {
			assert.False(t, none.chosen(r))
			assert.True(t, all.chosen(r))
		}
	})
}

func TestMirrorMarksOnlyTheCopy(t *testing.T) {
	noLeaks(t)
	primary, shadow := newBackend(t, nil), newBackend(t, nil)
	front, st := mirrorFront(t, Mirror{Pool: "shadow", Handler: pool(t, shadow), Percent: 100}, pool(t, primary))
	get(t, front.Client(), front.URL+"/path?q=1", http.Header{"X-Request-Id": {"abc"}})
	settle(t, st)
	st.Close()
	require.Len(t, shadow.seen(), 1)
	require.Len(t, primary.seen(), 1)
	assert.Equal(t, "1", shadow.seen()[0].header.Get(MirrorHeader))
	assert.Equal(t, "abc", shadow.seen()[0].header.Get("X-Request-Id"))
	assert.Empty(t, primary.seen()[0].header.Values(MirrorHeader))
}

func TestMirrorDropsBeyondMaxInFlight(t *testing.T) {
	noLeaks(t)
	hold := make(chan struct{})
	primary, shadow := newBackend(t, nil), newBackend(t, hold)
	counter := mirrorCounter()
	front, st := mirrorFront(t, Mirror{Pool: "shadow", Handler: pool(t, shadow), Percent: 100, MaxInFlight: 2, Requests: counter}, pool(t, primary))
	for range 5 {
		get(t, front.Client(), front.URL, nil)
	}
	assert.Equal(t, map[string]float64{MirrorDropped: 3}, results(counter, "shadow"))
	require.Eventually(t, func() bool { return len(shadow.seen()) == 2 }, 5*time.Second, 5*time.Millisecond)

	close(hold)
	require.Eventually(t, func() bool { return results(counter, "shadow")[MirrorSent] == 2 }, 5*time.Second, 5*time.Millisecond,
		"copies outlive their client's request: the client's context does not cancel them")
	get(t, front.Client(), front.URL, nil)
	settle(t, st)
	st.Close()
	assert.Equal(t, map[string]float64{MirrorDropped: 3, MirrorSent: 3}, results(counter, "shadow"), "a freed slot takes the next copy")
}

func TestMirrorCloseCancelsInFlight(t *testing.T) {
	noLeaks(t)
	primary, shadow := newBackend(t, nil), newBackend(t, make(chan struct{}))
	counter := mirrorCounter()
	front, st := mirrorFront(t, Mirror{Pool: "shadow", Handler: pool(t, shadow), Percent: 100, Requests: counter}, pool(t, primary))
	for range 3 {
		get(t, front.Client(), front.URL, nil)
	}
	require.Eventually(t, func() bool { return len(shadow.seen()) == 3 }, 5*time.Second, 5*time.Millisecond)
	closed := make(chan struct{})
	go func() {
		st.Close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return: it must cancel the copies, not wait out their 10 s timeout")
	}
	assert.Equal(t, map[string]float64{MirrorError: 3}, results(counter, "shadow"))
	st.Close()

	get(t, front.Client(), front.URL, nil)
	assert.Len(t, primary.seen(), 4, "a closed mirror still serves the primary")
	assert.Len(t, shadow.seen(), 3, "and sends no more copies")
}

func TestMirrorTimeout(t *testing.T) {
	noLeaks(t)
	primary, shadow := newBackend(t, nil), newBackend(t, make(chan struct{}))
	counter := mirrorCounter()
	front, _ := mirrorFront(t, Mirror{Pool: "shadow", Handler: pool(t, shadow), Percent: 100, Timeout: 50 * time.Millisecond, Requests: counter}, pool(t, primary))
	get(t, front.Client(), front.URL, nil)
	require.Eventually(t, func() bool { return results(counter, "shadow")[MirrorError] == 1 }, 5*time.Second, 5*time.Millisecond)
}

func TestMirrorShadowPanics(t *testing.T) {
	noLeaks(t)
	primary := newBackend(t, nil)
	counter := mirrorCounter()
	panicky := http.HandlerFunc(func(http.ResponseWriter, *http.Request) { panic("shadow bug") })
	front, st := mirrorFront(t, Mirror{Pool: "shadow", Handler: panicky, Percent: 100, Requests: counter}, pool(t, primary))
	get(t, front.Client(), front.URL, nil)
	settle(t, st)
	st.Close()
	assert.Equal(t, map[string]float64{MirrorError: 1}, results(counter, "shadow"))
}

func TestMirrorBodies(t *testing.T) {
	const limit = 4 << 10
	small := bytes.Repeat([]byte("s"), 1<<10)
	large := bytes.Repeat([]byte("L"), 100<<10)
	tests := []struct {
		name        string
		body        []byte
		chunked     bool
		primaryRead bool
		wantCopy    bool
		wantResult  string
	}{
		{name: "small body is mirrored", body: small, primaryRead: true, wantCopy: true, wantResult: MirrorSent},
		{name: "small chunked body is mirrored", body: small, chunked: true, primaryRead: true, wantCopy: true, wantResult: MirrorSent},
		{name: "body at the limit is mirrored", body: large[:limit], primaryRead: true, wantCopy: true, wantResult: MirrorSent},
		{name: "large body is skipped by its length", body: large, primaryRead: true, wantResult: MirrorSkippedBody},
		{name: "large chunked body is skipped as it streams", body: large, chunked: true, primaryRead: true, wantResult: MirrorSkippedBody},
		{name: "body the primary did not read is skipped", body: small, wantResult: MirrorSkippedBody},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			noLeaks(t)
			shadow := newBackend(t, nil)
			var primaryGot []byte
			var primaryErr error
			primary := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if tt.primaryRead {
					primaryGot, primaryErr = io.ReadAll(r.Body)
				}
				_, _ = w.Write([]byte("primary"))
			})
			counter := mirrorCounter()
			front, st := mirrorFront(t, Mirror{Pool: "shadow", Handler: pool(t, shadow), Percent: 100, MaxBodyBytes: limit, Requests: counter}, primary)

			var body io.Reader = bytes.NewReader(tt.body)
			if tt.chunked {
				body = io.MultiReader(body)
			}
			req, err := http.NewRequest("POST", front.URL, body)
			require.NoError(t, err)
			res, err := front.Client().Do(req)
			require.NoError(t, err)
			_, _ = io.Copy(io.Discard, res.Body)
			require.NoError(t, res.Body.Close())
			settle(t, st)
			st.Close()

			if tt.primaryRead {
				require.NoError(t, primaryErr)
				assert.Equal(t, sha256.Sum256(tt.body), sha256.Sum256(primaryGot), "the primary gets the whole body")
			}
			assert.Equal(t, map[string]float64{tt.wantResult: 1}, results(counter, "shadow"))
			if !tt.wantCopy {
				assert.Empty(t, shadow.seen())
				return
			}
			require.Len(t, shadow.seen(), 1)
			rec := shadow.seen()[0]
			require.NoError(t, rec.err)
			assert.Equal(t, tt.body, rec.body)
		})
	}
}

func TestMirrorSkipsUpgrades(t *testing.T) {
	var shadowCalls atomic.Int32
	st, err := NewMirror(Mirror{Pool: "shadow", Percent: 100, Handler: http.HandlerFunc(func(http.ResponseWriter, *http.Request) { shadowCalls.Add(1) })})
	require.NoError(t, err)
	h, err := st.Wrap(named("primary"))
	require.NoError(t, err)
	r := httptest.NewRequest("GET", "/ws", nil)
	r.Header.Set("Connection", "Upgrade")
	r.Header.Set("Upgrade", "websocket")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, r)
	st.Close()
	assert.Equal(t, "primary", rec.Body.String())
	assert.Zero(t, shadowCalls.Load())
}

// TestMirrorForksInfo runs under -race: the primary writes its Info while
// the copy reads its own.
func TestMirrorForksInfo(t *testing.T) {
	noLeaks(t)
	type seen struct {
		route string
		same  bool
	}
	got := make(chan seen, 1)
	primaryInfo := make(chan *Info, 1)
	shadow := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		info := InfoFrom(r)
		pi := <-primaryInfo
		got <- seen{route: info.Route, same: info == pi}
		info.Pool = "shadow"
	})
	primary := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		info := InfoFrom(r)
		primaryInfo <- info
		info.Pool = "primary"
		info.Upstream = "127.0.0.1:1"
	})
	front, st := mirrorFront(t, Mirror{Pool: "shadow", Handler: shadow, Percent: 100}, primary)
	get(t, front.Client(), front.URL, nil)
	settle(t, st)
	st.Close()
	s := <-got
	assert.Equal(t, "web", s.route, "the copy carries the request's Info")
	assert.False(t, s.same, "but its own")
}

func TestNewMirrorValidation(t *testing.T) {
	h := named("shadow")
	tests := []struct {
		name    string
		m       Mirror
		wantErr []string
	}{
		{name: "no pool", m: Mirror{Handler: h}, wantErr: []string{"pool: empty"}},
		{name: "no handler", m: Mirror{Pool: "p"}, wantErr: []string{"no shadow handler"}},
		{name: "percent over 100", m: Mirror{Pool: "p", Handler: h, Percent: 100.5}, wantErr: []string{"want 0..100"}},
		{name: "percent NaN", m: Mirror{Pool: "p", Handler: h, Percent: math.NaN()}, wantErr: []string{"want 0..100"}},
		{name: "negatives", m: Mirror{Pool: "p", Handler: h, MaxBodyBytes: -1, MaxInFlight: -1, Timeout: -1}, wantErr: []string{"max_body_bytes", "max_in_flight", "timeout"}},
		{name: "wrong counter labels", m: Mirror{Pool: "p", Handler: h, Requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "x"}, []string{"pool"})}, wantErr: []string{"requests counter"}},
		{name: "defaults", m: Mirror{Pool: "p", Handler: h, Percent: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, err := NewMirror(tt.m)
			if len(tt.wantErr) == 0 {
				require.NoError(t, err)
				defer st.Close()
				assert.Equal(t, int64(DefaultMirrorMaxBodyBytes), st.maxBody)
				assert.Equal(t, int64(DefaultMirrorMaxInFlight), st.maxFlight)
				assert.Equal(t, DefaultMirrorTimeout, st.timeout)
				_, err = st.Wrap(nil)
				assert.ErrorContains(t, err, "needs a stage after it")
				return
			}
			for _, want := range tt.wantErr {
				assert.ErrorContains(t, err, want)
			}
			assert.Nil(t, st)
		})
	}
}

// BenchmarkMirrorNotChosen measures the cost of a mirror stage on the
// requests it does not copy (the common case at a small percent).
func BenchmarkMirrorNotChosen(b *testing.B) {
	st, err := NewMirror(Mirror{Pool: "shadow", Handler: named("s"), Percent: 0.001, Key: MustParseKey("header:X-User-ID")})
	require.NoError(b, err)
	defer st.Close()
	h, err := st.Wrap(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	require.NoError(b, err)
	r := httptest.NewRequest("GET", "/", nil)
	r.Header.Set("X-User-ID", "never-chosen")
	require.False(b, st.chosen(r))
	w := &discardWriter{header: make(http.Header)}
	b.ReportAllocs()
	for b.Loop() {
		h.ServeHTTP(w, r)
	}
}

// nopLogger keeps ReverseProxy's expected errors (cancelled copies) out of
// the test output.
var nopLogger = log.New(io.Discard, "", 0)
