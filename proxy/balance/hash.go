package balance

import (
	"math"
	"net/http"
	"time"

	"github.com/cespare/xxhash/v2"

	"sekisho/router"
)

// rendezvous is ip_hash and hash: weighted rendezvous hashing (highest
// random weight). Each usable target scores the request key, by a hash of
// the key and the target's address, and the best score wins. A key
// therefore moves only when its own target becomes unusable, to its second
// best, and moves back when the target returns; other keys stay where they
// are, whatever the order of the endpoint list. With unequal weights a
// target scores w / -ln(u), u its hash mapped into (0, 1), which gives it a
// share of keys in proportion to w.
//
// A request without the key (a hash header absent) has nothing to stick to
// and is placed at random by weight.
type rendezvous struct {
	key      router.Key
	fallback random
}

var _ Policy = (*rendezvous)(nil)

func (p *rendezvous) Pick(targets []Target, r *http.Request, now time.Time, usable func(int) bool) int {
	var key string
	var ok bool
	if r != nil {
		key, ok = p.key.Value(r)
	}
	if !ok {
		return p.fallback.Pick(targets, r, now, usable)
	}
	kh := xxhash.Sum64String(key)
	weighted := false
	for i := 1; i < len(targets); i++ {
		if max(targets[i].Weight, 1) != max(targets[0].Weight, 1) {
			weighted = true
			break
		}
	}
	best := -1
	var bestHash uint64
	var bestScore float64
	for i := range targets {
		if usable != nil && !usable(i) {
			continue
		}
		h := mix(kh ^ xxhash.Sum64String(targets[i].Addr))
		if !weighted {
			// -1/ln(u) grows with u: the raw hash ranks the same.
			if best < 0 || h > bestHash {
				best, bestHash = i, h
			}
			continue
		}
		w := float64(min(max(targets[i].Weight, 1), maxWeight))
		u := unitInterval(h)
		// -ln(u) >= 1-u, so w/(1-u) bounds the score from above: most
		// targets lose to the best so far without a logarithm.
		if best >= 0 && w/(1-u) <= bestScore {
			continue
		}
		if s := w / -math.Log(u); best < 0 || s > bestScore {
			best, bestScore = i, s
		}
	}
	return best
}

// mix is the 64-bit finaliser of MurmurHash3: it makes every bit of the
// combined key and address hash depend on every other, so the ranks of two
// addresses for one key are independent.
func mix(x uint64) uint64 {
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	x *= 0xc4ceb9fe1a85ec53
	x ^= x >> 33
	return x
}

// unitInterval maps h to a float in (0, 1), from its top 53 bits.
func unitInterval(h uint64) float64 {
	return (float64(h>>11) + 0.5) / (1 << 53)
}
