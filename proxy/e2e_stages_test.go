package proxy

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sekisho/sharding"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestShardStageEndToEnd: three shards of two replicas each. A key's
// requests spread over its own shard's replicas and never touch another
// shard; the access log and metrics name the shard; with balance_factor,
// slow requests held on one shard make new ones overflow to the next, and
// overflow stops when the load is gone.
func TestShardStageEndToEnd(t *testing.T) {
	var replicas [3][2]*backend
	pools := ""
	for s := range 3 {
		for r := range 2 {
			replicas[s][r] = newBackend(t, fmt.Sprintf("users-%d-%d", s, r))
		}
		pools += fmt.Sprintf("  users-%d: {endpoints: [%s, %s]}\n", s, replicas[s][0].addr(), replicas[s][1].addr())
	}
	td := startDaemon(t, `
version: 1
admin: {listen: "127.0.0.1:0"}
log: {access: "{{ACCESS}}"}
listeners:
  - name: edge
    listen: 127.0.0.1:0
    routes:
      - name: users
        pipeline:
          - shard:
              key: [header:X-User-ID, cookie:uid]
              shards: [users-2, users-0, users-1]
              balance_factor: 1.5
              expose_header: true
pools:
`+pools)
	base := td.url("edge")
	owner := map[string]string{}
	for i := range 60 {
		user := fmt.Sprintf("user-%d", i)
		before := hitsBy(replicas)
		for range 4 {
			resp, _ := td.get(base+"/profile", "X-User-ID", user)
			require.Equal(t, http.StatusOK, resp.StatusCode)
			shard := resp.Header.Get("X-Sekisho-Shard")
			require.NotEmpty(t, shard)
			if owner[user] == "" {
				owner[user] = shard
			}
			assert.Equal(t, owner[user], shard, "a key always reaches the same shard")
		}
		after := hitsBy(replicas)
		for s := range 3 {
			delta := after[s][0] + after[s][1] - before[s][0] - before[s][1]
			if fmt.Sprintf("users-%d", s) == owner[user] {
				assert.Equal(t, int64(4), delta)
				assert.Equal(t, int64(2), after[s][0]-before[s][0], "round robin over the shard's two replicas")
			} else {
				assert.Zero(t, delta, "no other shard sees the key")
			}
		}
	}
	shards := map[string]bool{}
	for _, s := range owner {
		shards[s] = true
	}
	assert.Len(t, shards, 3, "60 users spread over all three shards")
	line := td.accessLines(1)[0]
	assert.Equal(t, owner["user-0"], line["shard"])
	assert.Equal(t, false, line["overflow"])
	assert.Equal(t, float64(4*countOwned(owner, owner["user-0"])),
		td.metric("sekisho_shard_requests_total", "route", "users", "shard", owner["user-0"], "overflow", "false"))

	t.Run("missing key is 400 naming the key", func(t *testing.T) {
		resp, body := td.get(base + "/profile")
		assert.Equal(t, http.StatusBadRequest, resp.StatusCode)
		assert.Contains(t, body, "header:X-User-ID")
	})

	t.Run("bounded load overflows and recovers", func(t *testing.T) {
		hot := owner["user-0"]
		var hotIdx int
		fmt.Sscanf(hot, "users-%d", &hotIdx)
		var held sync.WaitGroup
		for r := range 2 {
			replicas[hotIdx][r].delay.Store(int64(10 * time.Second))
		}
		defer func() {
			for r := range 2 {
				replicas[hotIdx][r].delay.Store(0)
			}
		}()
		// Hold slow requests on the hot shard; past the bound, even these
		// overflow to the other shards, which answer at once. The held
		// requests have no client timeout of their own: they end when
		// cancelled, so none ends on its own while the probe runs.
		holdClient := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 8}}
		defer holdClient.CloseIdleConnections()
		const holds = 6
		var finished atomic.Int64
		ctxs := make([]func(), 0, holds)
		for range holds {
			req, _ := http.NewRequest(http.MethodGet, base+"/slow", nil)
			req.Header.Set("X-User-ID", "user-0")
			ctx, cancel := context.WithCancel(context.Background())
			ctxs = append(ctxs, cancel)
			held.Add(1)
			go func() {
				defer held.Done()
				resp, err := holdClient.Do(req.WithContext(ctx))
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				finished.Add(1)
			}()
		}
		// How many of the six stay on the owner depends on how they
		// arrive. The bound is against the mean over all shards, so the
		// probe waits until the six have settled: each either held on the
		// owner or answered elsewhere, and nothing in flight off the
		// owner. Then the owner's k >= 1 held requests are over the bound
		// (ceil(1.5*(k+1)/3) <= k) and the probe must overflow.
		require.Eventually(t, func() bool {
			var reports []sharding.Report
			_, body := td.get(td.admin() + "/shards")
			if json.Unmarshal([]byte(body), &reports) != nil || len(reports) != 1 {
				return false
			}
			var onOwner, elsewhere int64
			for _, sh := range reports[0].Shards {
				if sh.Name == hot {
					onOwner = sh.InFlight
				} else {
					elsewhere += sh.InFlight
				}
			}
			return onOwner >= 1 && elsewhere == 0 && onOwner+finished.Load() == holds
		}, 10*time.Second, 10*time.Millisecond, "the held requests settle")
		resp, _ := td.get(base+"/profile", "X-User-ID", "user-0")
		assert.Equal(t, http.StatusOK, resp.StatusCode)
		assert.NotEqual(t, hot, resp.Header.Get("X-Sekisho-Shard"), "the hot owner is over the bound: overflow")
		assert.GreaterOrEqual(t, td.metric("sekisho_shard_requests_total", "route", "users", "overflow", "true"), 1.0)
		for _, cancel := range ctxs {
			cancel()
		}
		held.Wait()
		for r := range 2 {
			replicas[hotIdx][r].delay.Store(0)
		}
		require.Eventually(t, func() bool {
			resp, _ := td.get(base+"/profile", "X-User-ID", "user-0")
			return resp.Header.Get("X-Sekisho-Shard") == hot
		}, 5*time.Second, 20*time.Millisecond, "load gone: back to the owner")
	})

	t.Run("GET /shards shows the hot keys", func(t *testing.T) {
		_, body := td.get(td.admin() + "/shards")
		assert.Contains(t, body, "user-0")
		assert.Contains(t, body, "users")
	})
}

func hitsBy(replicas [3][2]*backend) (out [3][2]int64) {
	for s := range 3 {
		for r := range 2 {
			out[s][r] = replicas[s][r].hits.Load()
		}
	}
	return out
}

func countOwned(owner map[string]string, shard string) int {
	n := 0
	for _, s := range owner {
		if s == shard {
			n++
		}
	}
	return n
}

// searchLeaf answers /search with results scored by the leaf.
func searchLeaf(t *testing.T, name string, delay time.Duration, cancelled *atomic.Int64) string {
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if delay > 0 {
			select {
			case <-time.After(delay):
			case <-r.Context().Done():
				if cancelled != nil {
					cancelled.Add(1)
				}
				return
			}
		}
		assert.Equal(t, name, r.Header.Get("X-Sekisho-Leaf"))
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"results":[{"id":"%s-a","score":%d},{"id":"%s-b","score":%d},{"id":"shared","score":1}]}`,
			name, len(name)*10, name, len(name))
	}))
	t.Cleanup(s.Close)
	return strings.TrimPrefix(s.URL, "http://")
}

// TestScatterStageEndToEnd: three leaves, one sleeping 5s with a 1s leaf
// timeout: the merged answer of the other two arrives at the deadline, well
// before the straggler, with the partial headers; with min_success: 3 the
// same setup fails with 502 at the deadline, not after 5s. The timeout is
// long enough for the fast leaves to answer on a loaded machine; the
// straggler is cancelled at the deadline, so its delay costs nothing.
func TestScatterStageEndToEnd(t *testing.T) {
	const timeout = time.Second
	var cancelled atomic.Int64
	fast1, fast2 := searchLeaf(t, "leaf-a", 0, nil), searchLeaf(t, "leaf-bb", 0, nil)
	slow := searchLeaf(t, "leaf-c", 5*timeout, &cancelled)
	td := startDaemon(t, fmt.Sprintf(`
version: 1
admin: {listen: "127.0.0.1:0"}
log: {access: "{{ACCESS}}"}
listeners:
  - name: edge
    listen: 127.0.0.1:0
    routes:
      - name: search
        match: {path_prefix: /search}
        pipeline:
          - scatter:
              leaves: [leaf-a, leaf-bb, leaf-c]
              timeout: %[4]s
              min_success: 2
              merge: {array: results, sort_by: score, order: desc, limit: 4, dedupe_by: id}
      - name: strict
        match: {path_prefix: /strict}
        pipeline:
          - scatter:
              leaves: [leaf-a, leaf-bb, leaf-c]
              timeout: %[4]s
              min_success: 3
              merge: {array: results}
pools:
  leaf-a: {endpoints: [%[1]s]}
  leaf-bb: {endpoints: [%[2]s]}
  leaf-c: {endpoints: [%[3]s]}
`, fast1, fast2, slow, timeout))
	base := td.url("edge")
	start := time.Now()
	resp, body := td.get(base + "/search?q=patents")
	elapsed := time.Since(start)
	require.Equal(t, http.StatusOK, resp.StatusCode, body)
	assert.Less(t, elapsed, timeout+time.Second, "answers at the deadline, not after the straggler")
	assert.Equal(t, "true", resp.Header.Get("X-Sekisho-Partial"))
	assert.Equal(t, "2/3", resp.Header.Get("X-Sekisho-Leaves"))
	var merged struct {
		Results []struct {
			ID    string  `json:"id"`
			Score float64 `json:"score"`
		} `json:"results"`
	}
	require.NoError(t, json.Unmarshal([]byte(body), &merged), body)
	ids := []string{}
	for _, r := range merged.Results {
		ids = append(ids, r.ID)
	}
	assert.Equal(t, []string{"leaf-bb-a", "leaf-a-a", "leaf-bb-b", "leaf-a-b"}, ids, "sorted by score, deduped, top 4")
	assert.True(t, sort.SliceIsSorted(merged.Results, func(i, j int) bool { return merged.Results[i].Score > merged.Results[j].Score }))

	start = time.Now()
	resp, body = td.get(base + "/strict")
	elapsed = time.Since(start)
	assert.Equal(t, http.StatusBadGateway, resp.StatusCode)
	assert.Less(t, elapsed, timeout+time.Second, "fails at the deadline, not after the straggler")
	assert.Contains(t, body, "leaf-c")
	assert.Contains(t, body, "timeout")
	require.Eventually(t, func() bool { return cancelled.Load() >= 2 }, 5*time.Second, 10*time.Millisecond, "the straggler's requests are cancelled")
	// The stage counts its leaves after it has answered, so the client may
	// have the answer first; a request's access line is written once the
	// stage has returned.
	line := td.accessLines(2)[0]
	assert.Contains(t, line["leaves"], "leaf-c:timeout")
	assert.GreaterOrEqual(t, td.metric("sekisho_scatter_leaf_results_total", "route", "search", "leaf", "leaf-c", "result", "timeout"), 1.0)
	assert.Equal(t, 1.0, td.metric("sekisho_scatter_leaf_results_total", "route", "search", "leaf", "leaf-a", "result", "ok"))
}

// TestSplitStageEndToEnd: a 90/10 experiment whose arms shard to different
// shard sets, with a nested split; overrides by header and cookie; the arm
// reaches the upstream and the metrics.
func TestSplitStageEndToEnd(t *testing.T) {
	v1a, v1b := newBackend(t, "v1-a"), newBackend(t, "v1-b")
	v2a, v2b := newBackend(t, "v2-a"), newBackend(t, "v2-b")
	blue, green := newBackend(t, "blue"), newBackend(t, "green")
	td := startDaemon(t, fmt.Sprintf(`
version: 1
admin: {listen: "127.0.0.1:0"}
log: {access: "{{ACCESS}}"}
listeners:
  - name: edge
    listen: 127.0.0.1:0
    routes:
      - name: web
        pipeline:
          - split:
              name: checkout-v2
              key: [cookie:uid, header:X-User]
              override_header: X-Force-Arm
              override_cookie: arm
              arms:
                - name: control
                  weight: 90
                  pipeline:
                    - shard: {key: header:X-User, shards: [v1-a, v1-b], missing_key: random}
                - name: v2
                  weight: 10
                  pipeline:
                    - split:
                        name: color
                        key: header:X-User
                        arms:
                          - {name: blue, weight: 50, pipeline: [{proxy: blue}]}
                          - {name: green, weight: 50, pipeline: [{proxy: green}]}
                - name: dark
                  weight: 0
                  pipeline:
                    - shard: {key: header:X-User, shards: [v2-a, v2-b]}
pools:
  v1-a: {endpoints: [%s]}
  v1-b: {endpoints: [%s]}
  v2-a: {endpoints: [%s]}
  v2-b: {endpoints: [%s]}
  blue: {endpoints: [%s]}
  green: {endpoints: [%s]}
`, v1a.addr(), v1b.addr(), v2a.addr(), v2b.addr(), blue.addr(), green.addr()))
	base := td.url("edge")
	armOf := map[string]string{}
	inV2 := 0
	const users = 400
	for i := range users {
		user := fmt.Sprintf("u%d", i)
		for range 2 {
			resp, _ := td.get(base+"/", "X-User", user)
			require.Equal(t, http.StatusOK, resp.StatusCode)
			name := resp.Header.Get("X-Echo-Name")
			arm := "control"
			if name == "blue" || name == "green" {
				arm = "v2/" + name
			}
			if prev, ok := armOf[user]; ok {
				assert.Equal(t, prev, arm, "a user sees one arm")
			}
			armOf[user] = arm
		}
		if strings.HasPrefix(armOf[user], "v2") {
			inV2++
		}
	}
	assert.InDelta(t, users/10, inV2, users*0.05, "about 10%% in v2: %d of %d", inV2, users)
	assert.Zero(t, v2a.hits.Load()+v2b.hits.Load(), "a weight-0 arm gets nothing without override")

	resp, _ := td.get(base+"/", "X-User", "u1", "X-Force-Arm", "dark")
	assert.Contains(t, []string{"v2-a", "v2-b"}, resp.Header.Get("X-Echo-Name"), "override by header")
	seen := v2a.lastRequest()
	if seen == nil {
		seen = v2b.lastRequest()
	}
	require.NotNil(t, seen)
	assert.Equal(t, "checkout-v2=dark", seen.Header.Get("X-Sekisho-Arm"))

	req, _ := http.NewRequest(http.MethodGet, base+"/", nil)
	req.Header.Set("X-User", "u2")
	req.AddCookie(&http.Cookie{Name: "arm", Value: "v2"})
	resp, _ = td.do(req)
	assert.Contains(t, []string{"blue", "green"}, resp.Header.Get("X-Echo-Name"), "override by cookie, then the nested split")
	last := blue.lastRequest()
	if resp.Header.Get("X-Echo-Name") == "green" {
		last = green.lastRequest()
	}
	assert.Regexp(t, `^checkout-v2=v2, ?color=(blue|green)$`, strings.Join(last.Header.Values("X-Sekisho-Arm"), ", "))

	_, body := td.get(td.admin() + "/metrics")
	assert.Greater(t, sampleValue(body, "sekisho_split_requests_total", "experiment", "checkout-v2", "arm", "control"), 600.0)
	assert.Equal(t, 1.0, sampleValue(body, "sekisho_split_requests_total", "experiment", "checkout-v2", "arm", "dark"))
	lines := td.accessLines(users * 2)
	assert.Contains(t, lines[0]["arm"], "checkout-v2=")
}

// TestMirrorStageEndToEnd: with the shadow pool holding every copy,
// the primary is unaffected, the shadow gets its share, and copies beyond
// max_in_flight are dropped and counted.
func TestMirrorStageEndToEnd(t *testing.T) {
	primary := newBackend(t, "primary")
	var shadowHits atomic.Int64
	shadow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		shadowHits.Add(1)
		assert.Equal(t, "1", r.Header.Get("X-Sekisho-Mirror"))
		// Held until the daemon stops: the five copies fill max_in_flight
		// for the whole test, however slowly the machine runs it.
		<-r.Context().Done()
	}))
	t.Cleanup(shadow.Close)
	td := startDaemon(t, fmt.Sprintf(edgePreamble+`    routes:
      - name: web
        pipeline:
          - mirror: {pool: shadow, percent: 100, max_in_flight: 5, timeout: 1m}
          - proxy: primary
pools:
  primary: {endpoints: [%s]}
  shadow: {endpoints: [%s]}
`, primary.addr(), strings.TrimPrefix(shadow.URL, "http://")))
	base := td.url("edge")
	for i := range 30 {
		start := time.Now()
		resp, _ := td.get(base + "/")
		require.Equal(t, http.StatusOK, resp.StatusCode)
		// A request that waited for its copy would take the mirror's
		// minute.
		assert.Less(t, time.Since(start), 30*time.Second, "request %d never waits for the shadow", i)
		assert.Equal(t, "primary", resp.Header.Get("X-Echo-Name"))
	}
	require.Eventually(t, func() bool { return shadowHits.Load() == 5 }, 3*time.Second, 10*time.Millisecond)
	assert.Empty(t, primary.lastRequest().Header.Get("X-Sekisho-Mirror"))
	assert.Equal(t, 25.0, td.metric("sekisho_mirror_requests_total", "pool", "shadow", "result", "dropped"))
}
