package sharding

import (
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"sekisho/router"
)

// holdShards returns shards that answer with their name and, in
// X-Overflow, whether the stage overflowed to them. A request carrying
// X-Hold announces itself on started and waits for release.
func holdShards(names []string, started chan<- string, release <-chan struct{}) []Shard {
	shards := make([]Shard, len(names))
	for i, n := range names {
		shards[i] = Shard{Name: n, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if info := router.InfoFrom(r); info != nil {
				w.Header().Set("X-Overflow", strconv.FormatBool(info.Overflow))
			}
			if r.Header.Get("X-Hold") != "" {
				started <- n
				<-release
			}
			_, _ = io.WriteString(w, n)
		})}
	}
	return shards
}

// withInfo gives each request the Info the proxy's server would.
func withInfo(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(w, router.WithInfo(r, &router.Info{}))
	})
}

// expected applies the bounded-load rule to the stage's reported in-flight
// counts: the owner unless it is at ceil(factor x (total+1) / n), else the
// first shard after it in ring order under that bound.
func expected(rep Report, row []uint16, factor float64) int {
	if factor == 0 {
		return int(row[0])
	}
	var total int64
	for _, sh := range rep.Shards {
		total += sh.InFlight
	}
	bound := int64(math.Ceil(factor * float64(total+1) / float64(len(rep.Shards))))
	for _, c := range row {
		if rep.Shards[c].InFlight < bound {
			return int(c)
		}
	}
	return int(row[0])
}

func TestBoundedLoadOverflow(t *testing.T) {
	tests := []struct {
		name   string
		factor float64
	}{
		{"off", 0},
		{"factor 1", 1},
		{"factor 1.25", 1.25},
		{"factor 2", 2},
	}
	const held = 24
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			started := make(chan string, 1)
			release := make(chan struct{})
			names := []string{"users-0", "users-1", "users-2"}
			s := newStage(t, Config{Shards: holdShards(names, started, release), BalanceFactor: tt.factor, ExposeHeader: true})
			srv := httptest.NewServer(withInfo(s))
			client := &http.Client{Transport: &http.Transport{}}
			var wg sync.WaitGroup
			releaseOnce := sync.OnceFunc(func() { close(release) })
			t.Cleanup(func() {
				releaseOnce()
				wg.Wait()
				client.CloseIdleConnections()
				srv.Close()
			})

			key := keyOwnedBy(t, s, "users-1")
			row := s.ring.row(s.ring.partition(key))
			owner := int(row[0])
			get := func(hold bool) {
				defer wg.Done()
				req, err := http.NewRequest(http.MethodGet, srv.URL+"/users/1", nil)
				if !assert.NoError(t, err) {
					return
				}
				req.Header.Set("X-User-ID", key)
				if hold {
					req.Header.Set("X-Hold", "1")
				}
				resp, err := client.Do(req)
				if !assert.NoError(t, err) {
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				_ = resp.Body.Close()
				assert.Equal(t, http.StatusOK, resp.StatusCode)
			}
			probe := func() (shard string, overflow bool) {
				req, err := http.NewRequest(http.MethodGet, srv.URL+"/users/1", nil)
				require.NoError(t, err)
				req.Header.Set("X-User-ID", key)
				resp, err := client.Do(req)
				require.NoError(t, err)
				body, err := io.ReadAll(resp.Body)
				require.NoError(t, err)
				require.NoError(t, resp.Body.Close())
				require.Equal(t, http.StatusOK, resp.StatusCode)
				assert.Equal(t, string(body), resp.Header.Get(HeaderShard))
				return string(body), resp.Header.Get("X-Overflow") == "true"
			}
			// hold sends one slow request for key and reports where it
			// was held, checking it against the rule first.
			hold := func() string {
				want := names[expected(s.HotKeys(), row, tt.factor)]
				wg.Add(1)
				go get(true)
				select {
				case got := <-started:
					assert.Equal(t, want, got)
					return got
				case <-time.After(10 * time.Second):
					require.FailNow(t, "a held request never reached a shard")
					return ""
				}
			}

			got, overflow := probe()
			require.Equal(t, names[owner], got, "an idle stage sends the key to its owner")
			require.False(t, overflow)

			counts := make(map[string]int)
			firstOverflow := ""
			for range held {
				got := hold()
				counts[got]++
				if got != names[owner] && firstOverflow == "" {
					firstOverflow = got
				}
			}
			if tt.factor == 0 {
				assert.Equal(t, held, counts[names[owner]], "without a balance factor the owner takes every request")
				got, overflow := probe()
				assert.Equal(t, names[owner], got)
				assert.False(t, overflow)
				return
			}
			limit := int(math.Ceil(tt.factor * held / float64(len(names))))
			t.Logf("factor %v: %d held requests for one key spread as %v (owner %s, bound %d)", tt.factor, held, counts, names[owner], limit)
			assert.LessOrEqual(t, counts[names[owner]], limit)
			assert.Positive(t, counts[names[owner]])
			assert.Equal(t, names[row[1]], firstOverflow, "overflow goes to the next shard on the ring first")
			rep := s.HotKeys()
			assert.EqualValues(t, held-counts[names[owner]], rep.Shards[row[1]].OverflowedIn+rep.Shards[row[2]].OverflowedIn)

			// Keep holding until the owner is at the bound; then a new
			// request overflows.
			for range 4 * len(names) {
				if expected(s.HotKeys(), row, tt.factor) != owner {
					break
				}
				hold()
			}
			require.NotEqual(t, owner, expected(s.HotKeys(), row, tt.factor), "the owner never reached the bound")
			got, overflow = probe()
			assert.NotEqual(t, names[owner], got)
			assert.True(t, overflow)

			releaseOnce()
			wg.Wait()
			require.Eventually(t, func() bool {
				for _, sh := range s.HotKeys().Shards {
					if sh.InFlight != 0 {
						return false
					}
				}
				return true
			}, 10*time.Second, 5*time.Millisecond)
			for range 10 {
				got, overflow := probe()
				assert.Equal(t, names[owner], got, "once the load is gone the owner serves its key again")
				assert.False(t, overflow)
			}
		})
	}
}
