// Package balance chooses the endpoint of a pool that takes a request. A
// Policy is a pure choice among the targets its caller marks usable:
// readiness, ejection, panic mode and the avoidance of endpoints a retry
// already tried are decided once, by the caller, in the usable function.
//
// Every Pick takes no lock and does not allocate for pools of up to 64
// targets.
//
// balance knows nothing of pools, configs or requests beyond the keys
// a hash policy reads: it is given targets and a usable function.
package balance

import (
	"fmt"
	"net/http"
	"time"

	"sekisho/health"
	"sekisho/router"
)

// Target is one endpoint of a pool as a policy sees it.
type Target struct {
	// Addr identifies the endpoint to the hash policies, which place keys
	// by address so that a key follows its endpoint through reloads and
	// reorderings of the endpoint list.
	Addr string
	// Weight is the endpoint's relative share; below 1 counts as 1, above
	// 65536 as 65536.
	Weight int
	// EP is the endpoint's health state: its in-flight count for
	// least_request and its ReadySince for slow start. nil counts as an
	// idle endpoint ready forever.
	EP *health.Endpoint
}

// Policy picks the target that takes a request.
type Policy interface {
	// Pick returns the index of the chosen target among those for which
	// usable(i) is true, or -1 if none is usable. A nil usable means every
	// target. usable is called at most once per target and per Pick, on
	// the calling goroutine; now is the time availability and slow start
	// are judged at.
	Pick(targets []Target, r *http.Request, now time.Time, usable func(i int) bool) int
}

// Repicker is a Policy whose Pick moves state shared by all requests (round
// robin's turn). PickAgain chooses a request's later attempt (a retry on
// another endpoint, a hedge) as Pick would, by the same contract, without
// moving that state, so that retries and hedges never skew how first
// attempts are spread. A pool calls PickAgain, when its policy has it, for
// every pick but a request's first.
type Repicker interface {
	PickAgain(targets []Target, r *http.Request, now time.Time, usable func(i int) bool) int
}

// Policy names, as the pool's balance key spells them.
const (
	RoundRobin   = "round_robin"
	LeastRequest = "least_request"
	Random       = "random"
	IPHash       = "ip_hash"
	Hash         = "hash"
)

// New returns the policy called name; "" is round_robin. key is the request
// key of hash, which needs one; the other policies ignore it. slowStart is
// the window over which a newly ready endpoint's weight ramps up linearly
// (from a tenth of it) under round_robin, least_request and random; 0
// disables it, and the hash policies ignore it, since moving keys off an
// endpoint to spare it would break the stickiness they exist for.
//
// Each call returns a new policy with its own state; a policy is safe for
// concurrent use.
func New(name string, key router.Key, slowStart time.Duration) (Policy, error) {
	if slowStart < 0 {
		return nil, fmt.Errorf("slow start %s: must not be negative", slowStart)
	}
	switch name {
	case RoundRobin, "":
		return &roundRobin{slow: slowStart}, nil
	case LeastRequest:
		return &leastRequest{slow: slowStart}, nil
	case Random:
		return &random{slow: slowStart}, nil
	case IPHash:
		return &rendezvous{key: router.MustParseKey("client_ip")}, nil
	case Hash:
		if key.IsZero() {
			return nil, fmt.Errorf("balance hash needs a key (hash_key)")
		}
		return &rendezvous{key: key}, nil
	default:
		return nil, fmt.Errorf("unknown balance %q: want round_robin, least_request, random, ip_hash or hash", name)
	}
}
