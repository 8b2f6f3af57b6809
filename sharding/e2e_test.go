package sharding

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// roundRobin stands in for a pool: it forwards to its replicas in turn.
type roundRobin struct {
	proxies []*httputil.ReverseProxy
	next    atomic.Uint64
}

func newRoundRobin(t *testing.T, transport http.RoundTripper, urls ...string) *roundRobin {
	rr := &roundRobin{}
	for _, raw := range urls {
		u, err := url.Parse(raw)
		require.NoError(t, err)
		rr.proxies = append(rr.proxies, &httputil.ReverseProxy{
			Rewrite:   func(pr *httputil.ProxyRequest) { pr.SetURL(u) },
			Transport: transport,
		})
	}
	return rr
}

func (rr *roundRobin) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rr.proxies[(rr.next.Add(1)-1)%uint64(len(rr.proxies))].ServeHTTP(w, r)
}

// Three shards of two replicas each, all real servers: a key's requests
// spread over its shard's two replicas and never reach another shard.
func TestShardsOfReplicas(t *testing.T) {
	transport := &http.Transport{}
	t.Cleanup(transport.CloseIdleConnections)

	var mu sync.Mutex
	hits := make(map[string]map[string]int) // key -> replica -> requests
	names := []string{"users-0", "users-1", "users-2"}
	var shards []Shard
	for _, name := range names {
		var urls []string
		for i := range 2 {
			replica := fmt.Sprintf("%s/r%d", name, i)
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				key := r.Header.Get("X-User-ID")
				mu.Lock()
				if hits[key] == nil {
					hits[key] = make(map[string]int)
				}
				hits[key][replica]++
				mu.Unlock()
				_, _ = io.WriteString(w, replica)
			}))
			t.Cleanup(srv.Close)
			urls = append(urls, srv.URL)
		}
		shards = append(shards, Shard{Name: name, Handler: newRoundRobin(t, transport, urls...)})
	}
	s := newStage(t, Config{Shards: shards, ExposeHeader: true, RingConfig: RingConfig{}})
	front := httptest.NewServer(withInfo(s))
	client := &http.Client{Transport: &http.Transport{}}
	t.Cleanup(func() {
		client.CloseIdleConnections()
		front.Close()
	})

	keys := testKeys(30)
	const perKey = 6
	for _, key := range keys {
		for range perKey {
			req, err := http.NewRequest(http.MethodGet, front.URL+"/users/"+key, nil)
			require.NoError(t, err)
			req.Header.Set("X-User-ID", key)
			resp, err := client.Do(req)
			require.NoError(t, err)
			body, err := io.ReadAll(resp.Body)
			require.NoError(t, err)
			require.NoError(t, resp.Body.Close())
			require.Equal(t, http.StatusOK, resp.StatusCode)
			shard, _, _ := strings.Cut(string(body), "/")
			assert.Equal(t, resp.Header.Get(HeaderShard), shard)
		}
	}

	owners := s.Ring().Names()
	mu.Lock()
	defer mu.Unlock()
	perShard := make(map[string]int)
	for _, key := range keys {
		owner := owners[s.Ring().Owner(key)]
		perShard[owner]++
		got := hits[key]
		assert.Len(t, got, 2, "key %s reached %v", key, got)
		var total int
		for replica, n := range got {
			assert.True(t, strings.HasPrefix(replica, owner+"/"), "key %s owned by %s reached %s", key, owner, replica)
			assert.Positive(t, n)
			total += n
		}
		assert.Equal(t, perKey, total)
	}
	assert.Len(t, perShard, 3, "30 keys should cover the three shards: %v", perShard)
}
