package balance

import "time"

const (
	// unit is the fixed-point scale of effective weights, so that slow
	// start can give a fraction of a weight of 1.
	unit = 1 << 10
	// maxWeight bounds Target.Weight so that sums and the products of
	// least_request cannot overflow.
	maxWeight = 1 << 16
	// rampFloor is where slow start begins, as a share of the weight: at
	// zero an endpoint would get nothing until its first tick, and the
	// first requests are what warms it.
	rampFloor = 0.1
	// inline is how many targets a Pick weighs in a stack buffer; larger
	// pools cost one allocation per Pick.
	inline = 64
)

// weight returns t's weight in units, ramped by slow start; now is in Unix
// nanoseconds.
func weight(t *Target, now int64, slow time.Duration) uint64 {
	w := uint64(min(max(t.Weight, 1), maxWeight)) * unit
	if slow <= 0 || t.EP == nil {
		return w
	}
	since := t.EP.ReadySinceUnixNano()
	if since == 0 {
		return w
	}
	elapsed := now - since
	if elapsed >= int64(slow) {
		return w
	}
	f := max(rampFloor, float64(elapsed)/float64(slow))
	return max(uint64(float64(w)*f), 1)
}

// weights is the effective weight of every target of one Pick, 0 for those
// not usable.
type weights struct {
	w     []uint64
	count int    // usable targets
	total uint64 // their summed weight
	equal bool   // all usable targets weigh the same
}

// scratch returns room for n weights: buf when it is large enough.
func scratch(buf *[inline]uint64, n int) []uint64 {
	if n <= len(buf) {
		return buf[:n]
	}
	return make([]uint64, n)
}

// weigh returns the effective weights of targets, in w (len(targets) long).
func weigh(w []uint64, targets []Target, now time.Time, slow time.Duration, usable func(int) bool) weights {
	ws := weights{w: w, equal: true}
	var nowNano int64
	if slow > 0 {
		nowNano = now.UnixNano()
	}
	var first uint64
	for i := range targets {
		if usable != nil && !usable(i) {
			w[i] = 0
			continue
		}
		x := weight(&targets[i], nowNano, slow)
		w[i] = x
		if ws.count == 0 {
			first = x
		} else if x != first {
			ws.equal = false
		}
		ws.count++
		ws.total += x
	}
	return ws
}

// locate returns the target whose share of [0, total) holds pos.
func (ws *weights) locate(pos uint64) int {
	last := -1
	for i, x := range ws.w {
		if x == 0 {
			continue
		}
		if pos < x {
			return i
		}
		pos -= x
		last = i
	}
	return last
}

// nth returns the k-th usable target, counting from 0.
func (ws *weights) nth(k int) int {
	last := -1
	for i, x := range ws.w {
		if x == 0 {
			continue
		}
		if k == 0 {
			return i
		}
		k--
		last = i
	}
	return last
}
