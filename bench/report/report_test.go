package main

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestMedian(t *testing.T) {
	tests := []struct {
		name string
		in   []float64
		want float64
	}{
		{"empty", nil, 0},
		{"one", []float64{3}, 3},
		{"odd count ignores order", []float64{9, 1, 5}, 5},
		{"even count averages the middle pair", []float64{4, 1, 3, 2}, 2.5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.InDelta(t, tt.want, median(tt.in), 1e-9)
		})
	}
}

func TestParseRounds(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    int
		wantErr string
	}{
		{"skips comments and blank lines", "# header\n\nplain\thaproxy\t1\t100\t1000000\t500\t900\t10\t100\t0\t0\n", 1, ""},
		{"wrong field count", "plain\thaproxy\t1\t100\n", 0, "4 fields"},
		{"not a number", "plain\thaproxy\t1\tmany\t1000000\t500\t900\t10\t100\t0\t0\n", 0, "field 4"},
		{"zero duration", "plain\thaproxy\t1\t100\t0\t500\t900\t10\t100\t0\t0\n", 0, "positive"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseRounds(strings.NewReader(tt.in))
			if tt.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Len(t, got, tt.want)
		})
	}
}

func TestSummariseAndTable(t *testing.T) {
	// Two targets, three rounds each, 10 s per round; haproxy serves
	// 20 000 req/s at 50 % CPU (0.25 s per 10k), sekisho half of that at
	// twice the CPU per request, with one disturbed round that the median
	// must ignore.
	in := strings.Join([]string{
		"plain\thaproxy\t1\t200000\t10000000\t1000\t3000\t500\t100\t0\t2",
		"plain\tsekisho\t1\t100000\t10000000\t2000\t6000\t500\t100\t0\t2",
		"plain\thaproxy\t2\t200000\t10000000\t1000\t3000\t500\t100\t0\t2",
		"plain\tsekisho\t2\t10000\t10000000\t9000\t90000\t100\t100\t3\t70",
		"plain\thaproxy\t3\t200000\t10000000\t1000\t3000\t500\t100\t0\t2",
		"plain\tsekisho\t3\t100000\t10000000\t2000\t6000\t500\t100\t0\t2",
		"tls\tsekisho\t1\t50000\t10000000\t2000\t6000\t500\t100\t0\t2",
	}, "\n")
	rounds, err := parseRounds(strings.NewReader(in))
	require.NoError(t, err)
	rows := summarise(rounds)
	require.Len(t, rows, 3)

	t.Run("medians", func(t *testing.T) {
		h, s := rows[0], rows[1]
		assert.Equal(t, "haproxy", h.target)
		assert.InDelta(t, 20000, h.rps, 1e-6)
		assert.InDelta(t, 0.25, h.cpuPer10k, 1e-9)
		assert.InDelta(t, 50, h.cpuPercent, 1e-9)
		assert.Equal(t, "sekisho", s.target)
		assert.InDelta(t, 10000, s.rps, 1e-6)
		assert.InDelta(t, 2.0, s.p50ms, 1e-9)
		assert.InDelta(t, 0.5, s.cpuPer10k, 1e-9)
		assert.InDelta(t, 3, s.errors, 1e-9)
		assert.InDelta(t, 90, s.spreadPercent, 1e-9)
		assert.InDelta(t, 2, s.otherPercent, 1e-9)
	})

	var out strings.Builder
	require.NoError(t, writeTable(&out, rows, []string{"haproxy", "nginx"}, limits{minBusy: 90, maxOther: 25}))
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	require.Len(t, lines, 5)

	tests := []struct {
		name string
		line string
		want []string
	}{
		{"header has only the references present", lines[0], []string{"vs haproxy", "req/s"}},
		{"reference row has a dash", lines[2], []string{"| plain | haproxy | 20000 |", "—"}},
		{"ratios in order req/s p50 p99 CPU", lines[3], []string{"0.50 · 2.00 · 2.00 · 2.00", "⚠ 3 errors/non-2xx"}},
		{"an idle proxy core is flagged", lines[2], []string{"⚠ proxy core only 50 % busy"}},
		{"scenario without the reference leaves the cell empty", lines[4], []string{"| tls | sekisho |", "|  |", "1 round"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, w := range tt.want {
				assert.Contains(t, tt.line, w)
			}
		})
	}
	assert.NotContains(t, lines[0], "vs nginx")
	assert.NotContains(t, out.String(), "disturbed", "other CPU of 2 % is a quiet machine")

	t.Run("a busy machine is flagged", func(t *testing.T) {
		var busy strings.Builder
		noisy := rows[0]
		noisy.otherPercent = 80
		require.NoError(t, writeTable(&busy, []row{noisy}, nil, limits{maxOther: 25}))
		assert.Contains(t, busy.String(), "⚠ disturbed by other work")
	})
}
