// Command report turns the raw rounds that bench/run.sh records into the
// Markdown table of the benchmark: per scenario and target, the median over
// rounds of req/s, p50 and p99 latency and proxy CPU per 10 000 requests, and
// each figure as a ratio to the reference targets of the same scenario.
//
// Input (stdin), one line per measured round, tab-separated:
//
//	scenario target round requests duration_us p50_us p99_us cpu_ticks clk_tck errors other_pct
//
// cpu_ticks is the proxy's CPU time during the round; other_pct the CPU of
// everything on the machine that was neither the proxy, the backends nor
// the load generator, in percent of one core, which tells a disturbed round.
//
// Rows keep the order in which their target first appears. A figure of a
// target is only compared with a reference measured in the same scenario of
// the same run, never with another run.
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"strings"
)

func main() {
	refs := flag.String("refs", "haproxy,nginx,caddy,sekisho-plain", "comma-separated targets that get a ratio column when a scenario has them")
	minBusy := flag.Float64("min-busy", 0, "flag rows whose proxy CPU % is below this (percore mode: the proxy's core was not the limit); 0 = off")
	maxOther := flag.Float64("max-other", 25, "flag rows whose other CPU % is above this (the round was disturbed); 0 = off")
	flag.Parse()

	rounds, err := parseRounds(os.Stdin)
	if err != nil {
		log.Fatalf("report: %v", err)
	}
	rows := summarise(rounds)
	lim := limits{minBusy: *minBusy, maxOther: *maxOther}
	if err := writeTable(os.Stdout, rows, splitList(*refs), lim); err != nil {
		log.Fatalf("report: %v", err)
	}
}

func splitList(s string) []string {
	var out []string
	for f := range strings.SplitSeq(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func writeTable(w io.Writer, rows []row, refs []string, lim limits) error {
	var present []string
	for _, ref := range refs {
		for _, r := range rows {
			if r.target == ref {
				present = append(present, ref)
				break
			}
		}
	}

	var b strings.Builder
	b.WriteString("| scenario | proxy | req/s | p50 ms | p99 ms | CPU s/10k req | proxy CPU % | other CPU % | req/s spread |")
	for _, ref := range present {
		fmt.Fprintf(&b, " vs %s |", ref)
	}
	b.WriteString(" notes |\n|---|---|--:|--:|--:|--:|--:|--:|--:|")
	for range present {
		b.WriteString("---|")
	}
	b.WriteString("---|\n")

	for _, r := range rows {
		fmt.Fprintf(&b, "| %s | %s | %.0f | %.2f | %.2f | %.3f | %.0f | %.0f | %.0f%% |",
			r.scenario, r.target, r.rps, r.p50ms, r.p99ms, r.cpuPer10k, r.cpuPercent, r.otherPercent, r.spreadPercent)
		for _, ref := range present {
			b.WriteString(" " + ratioCell(r, rows, ref) + " |")
		}
		fmt.Fprintf(&b, " %s |\n", r.notes(lim))
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// ratioCell compares r with the reference target of its own scenario, in the
// order req/s · p50 · p99 · CPU; empty when the scenario has no such
// reference, a dash for the reference itself.
func ratioCell(r row, rows []row, ref string) string {
	if r.target == ref {
		return "—"
	}
	for _, o := range rows {
		if o.scenario != r.scenario || o.target != ref {
			continue
		}
		return fmt.Sprintf("%s · %s · %s · %s",
			ratio(r.rps, o.rps), ratio(r.p50ms, o.p50ms), ratio(r.p99ms, o.p99ms), ratio(r.cpuPer10k, o.cpuPer10k))
	}
	return ""
}

func ratio(a, b float64) string {
	if b == 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.2f", a/b)
}
