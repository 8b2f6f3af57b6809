package config

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// onceConfig is a valid config but for the stage (a flow mapping) it is
// given, which stands on line 4.
func onceConfig(stage string) string {
	return "version: 1\nlisteners:\n  - {name: a, listen: ':0', routes: [{name: r, pipeline: [\n      " + stage +
		"\n    ]}]}\npools:\n  p: {endpoints: ['127.0.0.1:1']}\n  q: {endpoints: ['127.0.0.1:2']}\n"
}

// TestEachProblemReportedOnce: every kind of problem is one line, with a
// position, however many checks (the config's own and a stage package's
// Validate) find it.
func TestEachProblemReportedOnce(t *testing.T) {
	tests := []struct {
		name, text string
		want       []string
	}{
		{"scatter leaf listed twice", onceConfig(`{scatter: {leaves: [p, p], merge: {concat: ndjson}}}`),
			[]string{`4:30: leaves: "p" is listed twice`}},
		{"hedge_after not before timeout", onceConfig(`{scatter: {leaves: [p], timeout: 10ms, hedge_after: 20ms, merge: {concat: ndjson}}}`),
			[]string{`4:59: hedge_after: 20ms is not before the leaf timeout 10ms, so it would never hedge`}},
		{"scatter without merge", onceConfig(`{scatter: {leaves: [p]}}`),
			[]string{`4:17: merge: missing; set one of array: FIELD, object: deep or concat: ndjson`}},
		{"shard listed twice", onceConfig(`{shard: {key: path, shards: [p, p]}}`),
			[]string{`4:39: shards: "p" is listed twice`}},
		{"shard undefined pool", onceConfig(`{shard: {key: path, shards: [p, nope]}}`),
			[]string{`4:39: pool "nope" is not defined under pools`}},
		{"split arms weigh 0", onceConfig(`{split: {name: x, key: path, arms: [{name: a, weight: 0, pipeline: [{proxy: p}]}]}}`),
			[]string{`4:42: arms: the weights sum to 0; at least one arm needs a positive weight`}},
		{"split arm named twice", onceConfig(`{split: {name: x, key: path, arms: [{name: a, weight: 1, pipeline: [{proxy: p}]}, {name: a, weight: 1, pipeline: [{proxy: q}]}]}}`),
			[]string{`4:96: arm name "a" is used twice`}},
		{"split without name", onceConfig(`{split: {key: path, arms: [{name: a, weight: 1, pipeline: [{proxy: p}]}]}}`),
			[]string{`4:15: split: name is missing (it names the experiment and salts its buckets)`}},
		{"redirect bad status", onceConfig(`{redirect: {host: example.com, status: 303}}`),
			[]string{`4:46: status 303: want 301, 302, 307 or 308`}},
		{"redirect to itself", onceConfig(`{redirect: {status: 301}}`),
			[]string{`4:18: redirect to the URL requested: set at least one of scheme, host, port, path or drop_query`}},
		{"respond bad status", onceConfig(`{respond: {status: 99}}`),
			[]string{`4:26: status 99: want 200..599`}},
		{"headers bad name", onceConfig(`{headers: {request: {set: {"a b": x}}}}, {proxy: p}`),
			[]string{`4:33: request.set: "a b" is not a header name`}},
		{"mirror percent", onceConfig(`{mirror: {pool: q, percent: 200}}, {proxy: p}`),
			[]string{`4:35: percent: want 0..100, got 200`}},
		{"mirror undefined pool", onceConfig(`{mirror: {pool: nope}}, {proxy: p}`),
			[]string{`4:23: pool "nope" is not defined under pools`}},
		{"merge sort_by without array", onceConfig(`{scatter: {leaves: [p], merge: {sort_by: score}}}`),
			[]string{`4:38: merge: missing; set one of array: FIELD, object: deep or concat: ndjson`, `4:48: merge.sort_by: applies to merge.array only`}},
		{"expect_status two bad", "version: 1\nlisteners: [{name: a, listen: ':0', routes: [{name: r, pipeline: [{proxy: p}]}]}]\npools:\n  p: {endpoints: ['127.0.0.1:1'], readiness: {expect_status: [\"200-99\", abc]}}\n",
			[]string{`4:63: expect_status: status range "200-99": "99" is not a status code`, `4:73: expect_status: status "abc": "abc" is not a status code`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("f.yaml", []byte(tc.text), func(string) (string, bool) { return "", false })
			var ce Errors
			require.ErrorAs(t, err, &ce)
			got := make([]string, len(ce))
			for i, e := range ce {
				got[i] = strings.TrimPrefix(e.Error(), "f.yaml:")
				assert.NotContains(t, e.Msg, "\n")
			}
			assert.Equal(t, tc.want, got)
		})
	}
}
