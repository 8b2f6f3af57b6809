package proxy

import (
	"fmt"
	"net/http"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"sekisho/router"
	"sekisho/scatter"
	"sekisho/sharding"
)

// stageMore compiles the stages that choose between pools.
func (c *compiler) stageMore(s *StageConfig, route string) (router.Stage, error) {
	m := c.env.Metrics
	switch {
	case s.Shard != nil:
		sc := s.Shard
		key, err := router.ParseKey(sc.Key...)
		if err != nil {
			return nil, err
		}
		rc := sharding.RingConfig{Partitions: sc.Partitions, ReplicationFactor: sc.ReplicationFactor, Load: sc.Load}
		ring, err := c.env.rings.get(sc.Shards, rc)
		if err != nil {
			return nil, err
		}
		shards := make([]sharding.Shard, len(sc.Shards))
		for i, name := range sc.Shards {
			shards[i] = sharding.Shard{Name: name, Handler: c.rt.pools[name]}
		}
		st, err := sharding.New(sharding.Config{
			Route: route, Key: key, Shards: shards, Ring: ring, RingConfig: rc,
			BalanceFactor: sc.BalanceFactor, OnUnavailable: sc.OnUnavailable, MissingKey: sc.MissingKey,
			ExposeHeader: sc.ExposeHeader, HotKeys: sc.HotKeys,
			Requests: m.ShardRequests.MustCurryWith(prometheus.Labels{"route": route}),
		})
		if err != nil {
			return nil, err
		}
		c.rt.shards = append(c.rt.shards, shardReport{st})
		return st, nil
	case s.Scatter != nil:
		sc := s.Scatter
		leaves := make([]scatter.Leaf, len(sc.Leaves))
		for i, name := range sc.Leaves {
			leaves[i] = scatter.Leaf{Name: name, Handler: c.rt.pools[name]}
		}
		budget := 0.0
		if sc.HedgeBudgetPercent != nil {
			budget = *sc.HedgeBudgetPercent
		}
		return scatter.New(scatter.Config{
			Leaves: leaves, Timeout: sc.Timeout.D(), HedgeAfter: sc.HedgeAfter.Duration, HedgeAuto: sc.HedgeAfter.Auto,
			HedgeBudgetPercent: budget, MinSuccess: sc.MinSuccess, Merge: sc.Merge.toScatter(),
			MaxBodyBytes: sc.MaxBodyBytes, MaxLeafBodyBytes: sc.MaxLeafBodyBytes,
			Results: m.ScatterLeaves.MustCurryWith(prometheus.Labels{"route": route}),
		})
	case s.Split != nil:
		sc := s.Split
		key, err := router.ParseKey(sc.Key...)
		if err != nil {
			return nil, err
		}
		arms := make([]router.Arm, len(sc.Arms))
		for i := range sc.Arms {
			a := &sc.Arms[i]
			h, err := c.pipeline(a.Pipeline, route)
			if err != nil {
				return nil, fmt.Errorf("arm %q: %w", a.Name, err)
			}
			arms[i] = router.Arm{Name: a.Name, Weight: *a.Weight, Handler: h}
		}
		return router.NewSplit(router.Split{Name: sc.Name, Key: key, Arms: arms, OverrideHeader: sc.OverrideHeader,
			OverrideCookie: sc.OverrideCookie, Requests: m.SplitRequests, UnknownOverrides: m.SplitUnknown})
	case s.Mirror != nil:
		mc := s.Mirror
		var key router.Key
		if len(mc.Key) > 0 {
			k, err := router.ParseKey(mc.Key...)
			if err != nil {
				return nil, err
			}
			key = k
		}
		percent := 100.0
		if mc.Percent != nil {
			percent = *mc.Percent
		}
		st, err := router.NewMirror(router.Mirror{Pool: mc.Pool, Handler: c.rt.pools[mc.Pool], Percent: percent, Key: key,
			MaxBodyBytes: mc.MaxBodyBytes, MaxInFlight: mc.MaxInFlight, Timeout: mc.Timeout.D(), Requests: m.MirrorRequests})
		if err != nil {
			return nil, err
		}
		c.rt.closers = append(c.rt.closers, closerFunc(st.Close))
		return st, nil
	}
	return nil, fmt.Errorf("empty stage")
}

type closerFunc func()

func (f closerFunc) Close() error {
	f()
	return nil
}

// shardReport adapts a shard stage to GET /shards.
type shardReport struct{ s *sharding.Stage }

func (r shardReport) HotKeysReport() any { return r.s.HotKeys() }

func (m MergeConfig) toScatter() scatter.Merge {
	return scatter.Merge{Array: m.Array, SortBy: m.SortBy, Order: m.Order, Limit: m.Limit, DedupeBy: m.DedupeBy, Object: m.Object, Concat: m.Concat}
}

// ringCache keeps shard rings across Runtimes: a shard stage whose set of
// shard names and ring settings did not change reuses its ring, placement
// tables and all. It is safe for concurrent use.
type ringCache struct {
	mu    sync.Mutex
	rings map[string]*sharding.Ring
}

func (c *ringCache) get(names []string, rc sharding.RingConfig) (*sharding.Ring, error) {
	sig := sharding.RingSignature(names, rc)
	c.mu.Lock()
	defer c.mu.Unlock()
	if r, ok := c.rings[sig]; ok {
		return r, nil
	}
	r, err := sharding.NewRing(names, rc)
	if err != nil {
		return nil, err
	}
	if c.rings == nil {
		c.rings = map[string]*sharding.Ring{}
	}
	c.rings[sig] = r
	return r, nil
}

// retain drops rings no Runtime in force uses.
func (c *ringCache) retain(rt *Runtime) {
	used := map[string]bool{}
	for _, s := range rt.shards {
		if sr, ok := s.(shardReport); ok {
			used[sr.s.Ring().Signature()] = true
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for sig := range c.rings {
		if !used[sig] {
			delete(c.rings, sig)
		}
	}
}

var _ http.Handler = (*Pool)(nil)
