package config

import (
	"net/http"

	"sekisho/router"
	"sekisho/scatter"
	"sekisho/sharding"
)

// The conversions from a stage's YAML form to its package's config, shared
// by proxy's Compile (with the pools as handlers) and by validation (with
// stand-in handlers, to run the package's own checks without building
// anything).

// PoolHandlers resolves a pool name to the handler a stage calls.
type PoolHandlers func(pool string) http.Handler

// standIn is the PoolHandlers validation uses.
func standIn(string) http.Handler { return http.NotFoundHandler() }

// Ring is the stage's ring settings.
func (s *ShardStage) Ring() sharding.RingConfig {
	return sharding.RingConfig{Partitions: s.Partitions, ReplicationFactor: s.ReplicationFactor, Load: s.Load}
}

// Sharding is the stage's sharding.Config, less what only Compile knows
// (route, ring, metrics).
func (s *ShardStage) Sharding(key router.Key, pools PoolHandlers) sharding.Config {
	shards := make([]sharding.Shard, len(s.Shards))
	for i, name := range s.Shards {
		shards[i] = sharding.Shard{Name: name, Handler: pools(name)}
	}
	return sharding.Config{Key: key, Shards: shards, RingConfig: s.Ring(), BalanceFactor: s.BalanceFactor,
		OnUnavailable: s.OnUnavailable, MissingKey: s.MissingKey, ExposeHeader: s.ExposeHeader, HotKeys: s.HotKeys}
}

// Scatter is the stage's scatter.Config, less its metrics.
func (s *ScatterStage) Scatter(pools PoolHandlers) scatter.Config {
	leaves := make([]scatter.Leaf, len(s.Leaves))
	for i, name := range s.Leaves {
		leaves[i] = scatter.Leaf{Name: name, Handler: pools(name)}
	}
	budget := 0.0
	if s.HedgeBudgetPercent != nil {
		budget = *s.HedgeBudgetPercent
	}
	return scatter.Config{Leaves: leaves, Timeout: s.Timeout.D(), HedgeAfter: s.HedgeAfter.Duration, HedgeAuto: s.HedgeAfter.Auto,
		HedgeBudgetPercent: budget, MinSuccess: s.MinSuccess, Merge: s.Merge.Scatter(),
		MaxBodyBytes: s.MaxBodyBytes, MaxLeafBodyBytes: s.MaxLeafBodyBytes}
}

// Scatter is the merge as scatter.Merge.
func (m Merge) Scatter() scatter.Merge {
	return scatter.Merge{Array: m.Array, SortBy: m.SortBy, Order: m.Order, Limit: m.Limit, DedupeBy: m.DedupeBy, Object: m.Object, Concat: m.Concat}
}

// Split is the stage's router.Split with arms[i] serving the i-th arm,
// less its metrics. A missing or negative weight, which validation reports
// itself, counts as 0.
func (s *SplitStage) Split(key router.Key, arms []http.Handler) router.Split {
	out := make([]router.Arm, len(s.Arms))
	for i, a := range s.Arms {
		w := 0
		if a.Weight != nil {
			w = max(*a.Weight, 0)
		}
		out[i] = router.Arm{Name: a.Name, Weight: w, Handler: arms[i]}
	}
	return router.Split{Name: s.Name, Key: key, Arms: out, OverrideHeader: s.OverrideHeader, OverrideCookie: s.OverrideCookie}
}

// Mirror is the stage's router.Mirror, less its metrics: percent defaults to
// 100, and negative sizes (reported by validation) count as defaults.
func (m *MirrorStage) Mirror(key router.Key, pools PoolHandlers) router.Mirror {
	percent := 100.0
	if m.Percent != nil {
		percent = *m.Percent
	}
	return router.Mirror{Pool: m.Pool, Handler: pools(m.Pool), Percent: percent, Key: key,
		MaxBodyBytes: max(m.MaxBodyBytes, 0), MaxInFlight: max(m.MaxInFlight, 0), Timeout: max(m.Timeout.D(), 0)}
}

// Headers is the stage's router.Headers.
func (h *HeadersStage) Headers() router.Headers {
	return router.Headers{
		Request:  router.HeaderOps{Set: h.Request.Set, Add: h.Request.Add, Remove: h.Request.Remove},
		Response: router.HeaderOps{Set: h.Response.Set, Add: h.Response.Add, Remove: h.Response.Remove},
	}
}

// Respond is the stage's router.Respond.
func (r *RespondStage) Respond() router.Respond {
	return router.Respond{Status: r.Status, Body: r.Body, Headers: r.Headers}
}

// Redirect is the stage's router.Redirect.
func (r *RedirectStage) Redirect() router.Redirect {
	return router.Redirect{Scheme: r.Scheme, Host: r.Host, Port: r.Port, Path: r.Path, Status: r.Status, DropQuery: r.DropQuery}
}

// Key parses the request key, which may be absent (the zero Key).
func (k KeySpec) Key() (router.Key, error) {
	if len(k) == 0 {
		return router.Key{}, nil
	}
	return router.ParseKey(k...)
}
