package proxy

import (
	"fmt"
	"net/http"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"sekisho/proxy/config"
	"sekisho/router"
	"sekisho/scatter"
	"sekisho/sharding"
)

// stage compiles one stage of a route's pipeline.
func (c *compiler) stage(s *config.Stage, route string) (router.Stage, error) {
	m := c.shared.Metrics
	pools := func(name string) http.Handler { return c.rt.pools[name] }
	switch {
	case s.Proxy != nil:
		return proxyStage{pool: c.rt.pools[s.Proxy.Pool]}, nil
	case s.Headers != nil:
		st := s.Headers.Headers()
		return st, st.Validate()
	case s.Respond != nil:
		st := s.Respond.Respond()
		return st, st.Validate()
	case s.Redirect != nil:
		st := s.Redirect.Redirect()
		return st, st.Validate()
	case s.Shard != nil:
		key, err := router.ParseKey(s.Shard.Key...)
		if err != nil {
			return nil, err
		}
		ring, err := c.shared.rings.get(s.Shard.Shards, s.Shard.Ring())
		if err != nil {
			return nil, err
		}
		sc := s.Shard.Sharding(key, pools)
		sc.Route, sc.Ring = route, ring
		sc.Requests = m.ShardRequests.MustCurryWith(prometheus.Labels{"route": route})
		st, err := sharding.New(sc)
		if err != nil {
			return nil, err
		}
		c.rt.shards = append(c.rt.shards, shardReport{st})
		return st, nil
	case s.Scatter != nil:
		sc := s.Scatter.Scatter(pools)
		sc.Results = m.ScatterLeaves.MustCurryWith(prometheus.Labels{"route": route})
		return scatter.New(sc)
	case s.Split != nil:
		key, err := router.ParseKey(s.Split.Key...)
		if err != nil {
			return nil, err
		}
		arms := make([]http.Handler, len(s.Split.Arms))
		for i := range s.Split.Arms {
			a := &s.Split.Arms[i]
			if arms[i], err = c.pipeline(a.Pipeline, route); err != nil {
				return nil, fmt.Errorf("arm %q: %w", a.Name, err)
			}
		}
		sc := s.Split.Split(key, arms)
		sc.Requests, sc.UnknownOverrides = m.SplitRequests, m.SplitUnknown
		return router.NewSplit(sc)
	case s.Mirror != nil:
		key, err := s.Mirror.Key.Key()
		if err != nil {
			return nil, err
		}
		mc := s.Mirror.Mirror(key, pools)
		mc.Requests = m.MirrorRequests
		st, err := router.NewMirror(mc)
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
