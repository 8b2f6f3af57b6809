package upstream

import (
	"net/http"
	"sync"
	"time"

	"sekisho/router"
)

// picker is one request's state across its attempts, as the balance
// policy's usable filter reads it: the endpoints tried so far and the rule
// of the pick under way. A closure over that state would escape into the
// Policy interface and cost allocations on every pick, so pickers are
// pooled with their filter bound once, as a method value. A picker belongs
// to one request at a time.
type picker struct {
	p      *Pool
	set    *members // the endpoint set of every attempt of the request
	now    time.Time
	tried  []int  // target indexes this request's attempts used
	local  [4]int // tried's backing array until a request retries more
	shared *router.Tried
	rule   pickRule
	// tier, when tiered, is the one priority a pick of a tiered set
	// (members.tiered) may choose from: the most preferred one with a
	// usable endpoint.
	tier   int
	tiered bool
	usable func(int) bool // check, bound once
}

// pickRule is what a target must be, besides untried, to be usable.
type pickRule uint8

const (
	// availableUnshared: available, and not used by another attempt of the
	// same logical request (scatter's hedges).
	availableUnshared pickRule = iota
	availableOnly
	// anyUntried is panic mode: an unavailable endpoint beats none.
	anyUntried
)

var pickers = sync.Pool{New: func() any {
	pk := &picker{}
	pk.tried = pk.local[:0]
	pk.usable = pk.check
	return pk
}}

// picker returns a picker for one request to p; release gives it back.
func (p *Pool) picker() *picker {
	pk := pickers.Get().(*picker)
	pk.p, pk.set = p, p.set.Load()
	return pk
}

func (pk *picker) release() {
	pk.p, pk.set, pk.shared = nil, nil, nil
	pk.tried, pk.tiered = pk.tried[:0], false
	pickers.Put(pk)
}

// exclude keeps target i out of this request's later picks.
func (pk *picker) exclude(i int) { pk.tried = append(pk.tried, i) }

// pick chooses an endpoint that is available and not yet tried by this
// request; endpoints another attempt of the same logical request used
// (scatter's hedges) are avoided while others remain. In panic mode an
// unavailable endpoint is better than none.
func (pk *picker) pick(r *http.Request, info *router.Info) int {
	p := pk.p
	pk.now = time.Now()
	if i := pk.stickyPick(r, info); i >= 0 {
		return i
	}
	if info != nil && info.Tried != nil && info.Tried.Len() > 0 {
		pk.shared, pk.rule = info.Tried, availableUnshared
		if i := pk.choose(r, true); i >= 0 {
			return i
		}
	}
	later := len(pk.tried) > 0 || pk.shared != nil
	pk.rule = availableOnly
	if i := pk.choose(r, later); i >= 0 || !p.panicMode {
		return i
	}
	pk.rule = anyUntried
	return pk.choose(r, later)
}

// choose asks the policy; a later attempt of a request (a retry, a hedge)
// leaves the turns that spread first attempts where they are.
//
// In a tiered set the policy sees only the most preferred tier with an
// untried endpoint that is available (in panic mode: with an untried
// endpoint at all). Another attempt of the same logical request on one of
// the tier's endpoints is no reason to leave it: a hedge that finds only
// shared endpoints in its tier falls back, in pick, to a shared one, never
// to a backup. An endpoint may drop out of the tier between the two looks
// (an ejection under way), so a tier found empty by the policy is looked
// for again.
func (pk *picker) choose(r *http.Request, later bool) int {
	if !pk.set.tiered {
		return pk.policyPick(r, later)
	}
	rule := pk.rule
	for range 3 {
		if rule == availableUnshared {
			pk.rule = availableOnly
		}
		tier, ok := pk.preferredTier()
		pk.rule = rule
		if !ok {
			return -1
		}
		pk.tier, pk.tiered = tier, true
		i := pk.policyPick(r, later)
		pk.tiered = false
		if i >= 0 || rule == availableUnshared {
			return i
		}
	}
	return -1
}

func (pk *picker) policyPick(r *http.Request, later bool) int {
	p := pk.p
	if later && p.again != nil {
		return p.again.PickAgain(pk.set.targets, r, pk.now, pk.usable)
	}
	return p.policy.Pick(pk.set.targets, r, pk.now, pk.usable)
}

// preferredTier returns the lowest priority of the endpoints the pick's
// rule allows, and false when it allows none.
func (pk *picker) preferredTier() (int, bool) {
	best, found := 0, false
	for i := range pk.set.all {
		if pr := pk.set.all[i].priority; (!found || pr < best) && pk.check(i) {
			best, found = pr, true
		}
	}
	return best, found
}

// check is the usable filter of the pick under way.
func (pk *picker) check(i int) bool {
	for _, j := range pk.tried {
		if i == j {
			return false
		}
	}
	if pk.tiered && pk.set.all[i].priority != pk.tier {
		return false
	}
	t := &pk.set.targets[i]
	switch pk.rule {
	case anyUntried:
		return true
	case availableUnshared:
		if pk.shared.Has(t.Addr) {
			return false
		}
	}
	return t.EP.Available(pk.now)
}
