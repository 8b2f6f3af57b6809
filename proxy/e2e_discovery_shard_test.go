package proxy

import (
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"sekisho/internal/dnstest"
)

// TestDiscoveryShardGrowsUnderLoad is a sharded tier on Kubernetes: three
// shards, each a pool over its headless Service's SRV records, and shard
// users-1 scaled from 2 to 4 replicas while a steady load runs. Its keys
// spread over the 4 replicas, no key moves to another shard (a shard's
// identity is its name, not its replicas), and no request fails.
func TestDiscoveryShardGrowsUnderLoad(t *testing.T) {
	noLeaks(t)
	dns := dnstest.Start(t)
	replicas := map[string][]*backend{}
	srvName := func(shard string) string { return "_http._tcp." + shard + ".shop.test." }
	records := func(shard string, n int) []dnstest.SRV {
		var out []dnstest.SRV
		for i, b := range replicas[shard][:n] {
			_, port, _ := net.SplitHostPort(b.addr())
			p, _ := strconv.Atoi(port)
			out = append(out, dnstest.SRV{Target: fmt.Sprintf("%s-%d.%s.shop.test.", shard, i, shard), IP: "127.0.0.1",
				Port: uint16(p), Weight: 10})
		}
		return out
	}
	shards := []string{"users-0", "users-1", "users-2"}
	pools := ""
	for _, shard := range shards {
		n := 2
		if shard == "users-1" {
			n = 4
		}
		for i := range n {
			replicas[shard] = append(replicas[shard], newBackend(t, fmt.Sprintf("%s/%d", shard, i)))
		}
		dns.SetSRV(srvName(shard), 1, records(shard, 2)...)
		pools += fmt.Sprintf(`  %s:
    endpoints: ["dns+srv://%s"]
    balance: hash
    hash_key: header:X-User
    %s
`, shard, strings.TrimSuffix(srvName(shard), "."), probes)
	}
	td := startPoolDaemon(t, edgePreamble+`    routes:
      - name: users
        pipeline:
          - shard: {key: header:X-User, shards: [users-0, users-1, users-2]}
discovery: {resolvers: ["`+dns.Addr()+`"]}
pools:
`+pools)
	waitReady(t, td)
	base := td.url("edge")

	const users = 300
	shardOf := map[string]string{} // user -> shard, before the change
	for i := range users {
		user := fmt.Sprint("user-", i)
		resp, _ := td.get(base+"/", "X-User", user)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		name := resp.Header.Get("X-Echo-Name")
		shardOf[user], _, _ = strings.Cut(name, "/")
	}
	perShard := map[string]int{}
	for _, shard := range shardOf {
		perShard[shard]++
	}
	assert.Len(t, perShard, 3, "keys over the three shards: %v", perShard)

	// Under steady load, every answer's shard is checked against the key's.
	var mu sync.Mutex
	var moved []string
	seen := func(h http.Header, name string) {
		user := h.Get("X-User")
		shard, _, _ := strings.Cut(name, "/")
		if shard != shardOf[user] {
			mu.Lock()
			moved = append(moved, fmt.Sprintf("%s: %s -> %s", user, shardOf[user], shard))
			mu.Unlock()
		}
	}
	stats, stop := steadyLoad(td, base+"/", 4, func(n int64) http.Header {
		return http.Header{"X-User": {fmt.Sprint("user-", n%users)}}
	}, seen)
	defer stop()
	require.Eventually(t, func() bool { ok, _, _ := stats.snapshot(); return ok > 100 }, 10*time.Second, 5*time.Millisecond)

	// users-1 scales from 2 to 4 replicas.
	dns.SetSRV(srvName("users-1"), 1, records("users-1", 4)...)
	for _, b := range replicas["users-1"][2:] {
		require.Eventually(t, func() bool { return b.hits.Load() > 0 }, 5*time.Second, 5*time.Millisecond,
			"new replica %s of users-1 never got traffic", b.name)
	}
	ok, _, _ := stats.snapshot()
	require.Eventually(t, func() bool { now, _, _ := stats.snapshot(); return now > ok+200 }, 10*time.Second, 5*time.Millisecond)
	stop()
	ok, failures, _ := stats.snapshot()
	assert.Empty(t, failures, "no request failed while users-1 grew (%d succeeded)", ok)
	mu.Lock()
	assert.Empty(t, moved, "no key moved to another shard")
	mu.Unlock()

	// After the change: the same shard for every key, and users-1's keys
	// over all four replicas.
	onReplica := map[string]int{}
	for i := range users {
		user := fmt.Sprint("user-", i)
		resp, _ := td.get(base+"/", "X-User", user)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		name := resp.Header.Get("X-Echo-Name")
		shard, _, _ := strings.Cut(name, "/")
		assert.Equal(t, shardOf[user], shard, "user %s stays on its shard", user)
		if shard == "users-1" {
			onReplica[name]++
		}
	}
	assert.Len(t, onReplica, 4, "users-1's keys spread over its 4 replicas: %v", onReplica)
	users1 := poolsView(t, td)["users-1"]
	assert.Len(t, users1.Endpoints, 4)
	for _, e := range users1.Endpoints {
		assert.Equal(t, "dns+srv://_http._tcp.users-1.shop.test", e.Source)
	}
	assert.Equal(t, 4.0, td.metric("sekisho_discovery_endpoints", "pool", "users-1"))
	assert.Equal(t, 2.0, td.metric("sekisho_discovery_endpoints", "pool", "users-0"))
}
