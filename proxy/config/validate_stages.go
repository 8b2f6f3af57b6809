package config

import (
	"fmt"
	"net/http"
	"strings"

	"sekisho/router"
)

// poolList checks a list of pool names: present, defined, unique.
func (v *validation) poolList(names []string, p, what string) {
	if len(names) == 0 {
		v.at(p, "%s: at least one pool is needed", what)
	}
	seen := map[string]bool{}
	for i, n := range names {
		ip := fmt.Sprintf("%s[%d]", p, i)
		if seen[n] {
			v.at(ip, "%s: %q is listed twice", what, n)
			continue
		}
		seen[n] = true
		v.poolRef(n, ip)
	}
}

func (v *validation) shard(s *ShardStage, p string) {
	v.key(s.Key, p+".key", true)
	v.poolList(s.Shards, p+".shards", "shards")
	// The rest is the stage's own Validate: balance_factor, the modes and
	// the ring settings consistent.New would panic on.
	sc := s.Sharding(router.MustParseKey("path"), standIn)
	// The key and each name were checked above, with positions; the shard
	// count limit was not.
	v.stageErrors(p, sc.Validate(), func(field string) bool {
		return field == "key" || listEntry(field, "shards")
	})
}

func (v *validation) scatter(s *ScatterStage, p string) {
	v.poolList(s.Leaves, p+".leaves", "leaves")
	if s.Timeout < 0 {
		v.at(p+".timeout", "timeout: must not be negative")
	}
	if s.HedgeAfter.Duration < 0 {
		v.at(p+".hedge_after", "hedge_after: must not be negative")
	}
	if s.Timeout > 0 && s.HedgeAfter.Duration >= s.Timeout.D() {
		v.at(p+".hedge_after", "hedge_after: %s is not before the leaf timeout %s, so it would never hedge", s.HedgeAfter.Duration, s.Timeout.D())
	}
	if b := s.HedgeBudgetPercent; b != nil && (*b < 0 || *b > 100) {
		v.at(p+".hedge_budget_percent", "hedge_budget_percent: want 0..100, got %g", *b)
	}
	if s.MinSuccess < 0 {
		v.at(p+".min_success", "min_success: must not be negative")
	} else if s.MinSuccess > len(s.Leaves) && len(s.Leaves) > 0 {
		v.at(p+".min_success", "min_success: %d is more than the %d leaves", s.MinSuccess, len(s.Leaves))
	}
	if s.MaxBodyBytes < 0 {
		v.at(p+".max_body_bytes", "max_body_bytes: must not be negative")
	}
	if s.MaxLeafBodyBytes < 0 {
		v.at(p+".max_leaf_body_bytes", "max_leaf_body_bytes: must not be negative")
	}
	v.stageErrors(p, s.Merge.Scatter().Validate(), nil)
	// The stage's own rules (leaf names, hedging against the default
	// timeout), with stand-in handlers: only the settings are checked here.
	sc := s.Scatter(standIn)
	v.stageErrors(p, sc.Validate(), func(field string) bool {
		switch fieldKey(field) {
		case "merge", "min_success", "hedge_budget_percent", "max_body_bytes", "max_leaf_body_bytes":
			return true
		}
		return field == "leaves" // none at all
	})
}

func (v *validation) split(s *SplitStage, p string) {
	if s.Name == "" {
		v.at(p, "split: name is missing (it names the experiment and salts its buckets)")
	}
	v.key(s.Key, p+".key", true)
	if len(s.Arms) == 0 {
		v.at(p+".arms", "arms: a split needs at least one arm")
	}
	seen := map[string]bool{}
	total := 0
	for i := range s.Arms {
		a := &s.Arms[i]
		ap := fmt.Sprintf("%s.arms[%d]", p, i)
		switch {
		case a.Name == "":
			v.at(ap, "arm: name is missing")
		case seen[a.Name]:
			v.at(ap+".name", "arm name %q is used twice", a.Name)
		}
		seen[a.Name] = true
		switch {
		case a.Weight == nil:
			v.at(ap, "arm %q: weight is missing", a.Name)
		case *a.Weight < 0:
			v.at(ap+".weight", "weight: must not be negative, got %d", *a.Weight)
		default:
			total += *a.Weight
		}
		v.pipeline(a.Pipeline, ap+".pipeline")
	}
	if len(s.Arms) > 0 && total == 0 {
		v.at(p+".arms", "arms: the weights sum to 0; at least one arm needs a positive weight")
	}
	// The stage's own rules (name syntax, weight bounds, override header).
	arms := make([]http.Handler, len(s.Arms))
	for i := range arms {
		arms[i] = standIn("")
	}
	if _, err := router.NewSplit(s.Split(router.MustParseKey("path"), arms)); err != nil {
		// No arms, a zero sum of weights, a missing name and a name used
		// twice (an error of the arm entry) were reported above.
		v.stageErrors(p, err, func(field string) bool {
			switch {
			case field == "arms", field == "name" && s.Name == "":
				return true
			}
			return listEntry(field, "arms") && !strings.Contains(field, ".")
		})
	}
}

func (v *validation) mirror(m *MirrorStage, p string) {
	v.poolRef(m.Pool, p+".pool")
	if m.Percent != nil && (*m.Percent < 0 || *m.Percent > 100) {
		v.at(p+".percent", "percent: want 0..100, got %g", *m.Percent)
	}
	v.key(m.Key, p+".key", false)
	if m.MaxBodyBytes < 0 {
		v.at(p+".max_body_bytes", "max_body_bytes: must not be negative")
	}
	if m.MaxInFlight < 0 {
		v.at(p+".max_in_flight", "max_in_flight: must not be negative")
	}
	if m.Timeout < 0 {
		v.at(p+".timeout", "timeout: must not be negative")
	}
	if m.Percent == nil || *m.Percent >= 0 && *m.Percent <= 100 {
		st, err := router.NewMirror(m.Mirror(router.Key{}, standIn))
		if err != nil {
			v.stageErrors(p, err, nil)
		} else {
			st.Close()
		}
	}
}
