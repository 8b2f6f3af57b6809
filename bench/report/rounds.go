package main

import (
	"bufio"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
)

// round is one measured wrk run of one target.
type round struct {
	scenario, target string
	requests         float64
	durationUS       float64
	p50US, p99US     float64
	cpuTicks, clkTck float64
	errors           float64
	otherPercent     float64
}

// row is a target's summary over its rounds: medians, so that one disturbed
// round on a shared machine does not move the figure.
type row struct {
	scenario, target string
	rounds           int
	rps              float64
	p50ms, p99ms     float64
	cpuPer10k        float64 // proxy CPU seconds per 10 000 requests
	cpuPercent       float64 // proxy CPU time over wall time, 100 = one core
	spreadPercent    float64 // (max-min)/median of req/s over the rounds
	errors           float64 // failed or non-2xx/3xx responses, summed over rounds
	otherPercent     float64 // CPU of everything but proxy, backends and wrk, 100 = one core
}

// limits are the thresholds past which a row's figures get a warning; a zero
// field disables its check.
type limits struct {
	minBusy  float64 // proxy CPU % below this: something else than the proxy was the limit
	maxOther float64 // other CPU % above this: the machine was busy with foreign work
}

func (r row) notes(lim limits) string {
	var notes []string
	if r.errors > 0 {
		notes = append(notes, fmt.Sprintf("⚠ %.0f errors/non-2xx", r.errors))
	}
	if lim.minBusy > 0 && r.cpuPercent < lim.minBusy {
		notes = append(notes, fmt.Sprintf("⚠ proxy core only %.0f %% busy", r.cpuPercent))
	}
	if lim.maxOther > 0 && r.otherPercent > lim.maxOther {
		notes = append(notes, "⚠ disturbed by other work")
	}
	if r.rounds < 2 {
		notes = append(notes, fmt.Sprintf("%d round", r.rounds))
	}
	return strings.Join(notes, "; ")
}

func parseRounds(in io.Reader) ([]round, error) {
	var out []round
	sc := bufio.NewScanner(in)
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		f := strings.Split(text, "\t")
		if len(f) != 11 {
			return nil, fmt.Errorf("line %d: %d fields, want 11", line, len(f))
		}
		nums := make([]float64, 8)
		for i, s := range f[3:] {
			v, err := strconv.ParseFloat(s, 64)
			if err != nil {
				return nil, fmt.Errorf("line %d, field %d: %w", line, i+4, err)
			}
			nums[i] = v
		}
		r := round{
			scenario: f[0], target: f[1],
			requests: nums[0], durationUS: nums[1],
			p50US: nums[2], p99US: nums[3],
			cpuTicks: nums[4], clkTck: nums[5],
			errors: nums[6], otherPercent: nums[7],
		}
		if r.durationUS <= 0 || r.clkTck <= 0 {
			return nil, fmt.Errorf("line %d: duration and clock ticks must be positive", line)
		}
		out = append(out, r)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading rounds: %w", err)
	}
	return out, nil
}

func summarise(rounds []round) []row {
	type key struct{ scenario, target string }
	var order []key
	groups := map[key][]round{}
	for _, r := range rounds {
		k := key{r.scenario, r.target}
		if _, seen := groups[k]; !seen {
			order = append(order, k)
		}
		groups[k] = append(groups[k], r)
	}

	rows := make([]row, 0, len(order))
	for _, k := range order {
		g := groups[k]
		var rps, p50, p99, cpu, busy, other []float64
		var errs float64
		for _, r := range g {
			seconds := r.durationUS / 1e6
			cpuSeconds := r.cpuTicks / r.clkTck
			rps = append(rps, r.requests/seconds)
			p50 = append(p50, r.p50US/1e3)
			p99 = append(p99, r.p99US/1e3)
			if r.requests > 0 {
				cpu = append(cpu, cpuSeconds/r.requests*1e4)
			}
			busy = append(busy, cpuSeconds/seconds*100)
			other = append(other, r.otherPercent)
			errs += r.errors
		}
		med := median(rps)
		spread := 0.0
		if med > 0 {
			spread = (slices.Max(rps) - slices.Min(rps)) / med * 100
		}
		rows = append(rows, row{
			scenario: k.scenario, target: k.target, rounds: len(g),
			rps: med, p50ms: median(p50), p99ms: median(p99),
			cpuPer10k: median(cpu), cpuPercent: median(busy),
			spreadPercent: spread, errors: errs, otherPercent: median(other),
		})
	}
	return rows
}

// median of xs; the mean of the middle two for an even count, 0 for none.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}
