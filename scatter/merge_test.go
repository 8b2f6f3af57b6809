package scatter_test

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"sekisho/scatter"
)

func TestMergeValidate(t *testing.T) {
	for _, tc := range []struct {
		name  string
		merge scatter.Merge
		want  []string
	}{
		{name: "array", merge: scatter.Merge{Array: "results"}},
		{name: "array with everything", merge: scatter.Merge{Array: "data.hits", SortBy: "meta.score", Order: "desc", Limit: 10, DedupeBy: "id"}},
		{name: "object", merge: scatter.Merge{Object: "deep"}},
		{name: "concat", merge: scatter.Merge{Concat: "ndjson"}},
		{name: "nothing", merge: scatter.Merge{}, want: []string{"merge: missing"}},
		{name: "two strategies", merge: scatter.Merge{Array: "results", Concat: "ndjson"}, want: []string{"merge: set only one of array, object and concat"}},
		{name: "empty path segment", merge: scatter.Merge{Array: "data..hits"}, want: []string{`merge.array: "data..hits": empty name in dotted path`}},
		{name: "trailing dot", merge: scatter.Merge{Array: "results", SortBy: "score."}, want: []string{`merge.sort_by: "score.": empty name`}},
		{name: "bad dedupe path", merge: scatter.Merge{Array: "results", DedupeBy: ".id"}, want: []string{`merge.dedupe_by: ".id"`}},
		{name: "bad order", merge: scatter.Merge{Array: "results", SortBy: "score", Order: "descending"}, want: []string{`merge.order: "descending": want asc or desc`}},
		{name: "order without sort_by", merge: scatter.Merge{Array: "results", Order: "asc"}, want: []string{"merge.order: needs merge.sort_by"}},
		{name: "negative limit", merge: scatter.Merge{Array: "results", Limit: -5}, want: []string{"merge.limit: -5"}},
		{name: "array options without array", merge: scatter.Merge{Object: "deep", SortBy: "score", Order: "asc", Limit: 3, DedupeBy: "id"}, want: []string{
			"merge.sort_by: applies to merge.array only", "merge.order: applies to merge.array only",
			"merge.limit: applies to merge.array only", "merge.dedupe_by: applies to merge.array only",
		}},
		{name: "unknown object strategy", merge: scatter.Merge{Object: "shallow"}, want: []string{`merge.object: "shallow": want deep`}},
		{name: "unknown concat format", merge: scatter.Merge{Concat: "json"}, want: []string{`merge.concat: "json": want ndjson`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.merge.Validate()
			if len(tc.want) == 0 {
				assert.NoError(t, err)
				return
			}
			require.Error(t, err)
			for _, w := range tc.want {
				assert.Contains(t, err.Error(), w)
			}
			assert.Len(t, strings.Split(err.Error(), "\n"), len(tc.want), err.Error())
		})
	}
}

func TestMerge(t *testing.T) {
	results := scatter.Merge{Array: "results"}
	asc := scatter.Merge{Array: "results", SortBy: "s"}
	desc := scatter.Merge{Array: "results", SortBy: "s", Order: "desc"}
	deep := scatter.Merge{Object: "deep"}
	ndjson := scatter.Merge{Concat: "ndjson"}
	for _, tc := range []struct {
		name    string
		merge   scatter.Merge
		bodies  []string
		want    string // exact bytes
		wantErr string
	}{
		// array: where the arrays are found
		{name: "concatenates in leaf order", merge: results,
			bodies: []string{`{"results":[1,2],"took":3}`, `{"results":[3]}`, ` {"results" : [ {"a" : 1} , "x" ] } `},
			want:   `{"results":[1,2,3,{"a" : 1},"x"]}`},
		{name: "no leaves", merge: results, want: `{"results":[]}`},
		{name: "dotted path", merge: scatter.Merge{Array: "data.hits"},
			bodies: []string{`{"data":{"hits":[1],"total":1}}`, `{"data":{"hits":[2]}}`},
			want:   `{"data":{"hits":[1,2]}}`},
		{name: "missing field contributes nothing", merge: results,
			bodies: []string{`{"results":[1]}`, `{"other":[9]}`, `{"results":null}`, `{}`},
			want:   `{"results":[1]}`},
		{name: "null on the way is missing", merge: scatter.Merge{Array: "data.hits"},
			bodies: []string{`{"data":null}`, `{"data":{"hits":[1]}}`},
			want:   `{"data":{"hits":[1]}}`},
		{name: "escaped member name", merge: results,
			bodies: []string{`{"res\u0075lts":[1]}`},
			want:   `{"results":[1]}`},
		{name: "last duplicate member wins", merge: results,
			bodies: []string{`{"results":[1],"results":[2]}`},
			want:   `{"results":[2]}`},
		{name: "numbers and strings kept as sent", merge: results,
			bodies: []string{`{"results":[1.000000000000000000001,123456789012345678901234567890,"\u00e9<>"]}`},
			want:   `{"results":[1.000000000000000000001,123456789012345678901234567890,"\u00e9<>"]}`},
		{name: "path names are escaped in the answer", merge: scatter.Merge{Array: `a"b`},
			bodies: []string{`{"a\"b":[1]}`},
			want:   `{"a\"b":[1]}`},

		// array: failures
		{name: "invalid JSON", merge: results, bodies: []string{`{"results":[1,]}`}, wantErr: "body 0: not valid JSON"},
		{name: "trailing garbage", merge: results, bodies: []string{`{"results":[1]} x`}, wantErr: "body 0: not valid JSON"},
		{name: "not an object", merge: results, bodies: []string{`{"results":[]}`, `[1]`}, wantErr: "body 1: the answer is an array, want an object"},
		{name: "field not an array", merge: results, bodies: []string{`{"results":"many"}`}, wantErr: "body 0: results is a string, want an array"},
		{name: "scalar on the way", merge: scatter.Merge{Array: "data.hits"}, bodies: []string{`{"data":5}`}, wantErr: "body 0: data is a number, want an object"},
		{name: "empty body", merge: results, bodies: []string{``}, wantErr: "body 0: not valid JSON"},

		// array: sort
		{name: "sort numbers ascending", merge: asc,
			bodies: []string{`{"results":[{"s":3},{"s":-1}]}`, `{"results":[{"s":2.5},{"s":1e1},{"s":0}]}`},
			want:   `{"results":[{"s":-1},{"s":0},{"s":2.5},{"s":3},{"s":1e1}]}`},
		{name: "sort numbers descending, ties in leaf order", merge: desc,
			bodies: []string{`{"results":[{"s":1,"id":"a"},{"s":2,"id":"b"}]}`, `{"results":[{"s":2.0,"id":"c"},{"s":1,"id":"d"}]}`},
			want:   `{"results":[{"s":2,"id":"b"},{"s":2.0,"id":"c"},{"s":1,"id":"a"},{"s":1,"id":"d"}]}`},
		{name: "sort big integers exactly", merge: asc,
			bodies: []string{`{"results":[{"s":9007199254740993},{"s":9007199254740992},{"s":9007199254740992.5}]}`},
			want:   `{"results":[{"s":9007199254740992},{"s":9007199254740992.5},{"s":9007199254740993}]}`},
		{name: "sort strings by bytes, escapes decoded", merge: asc,
			bodies: []string{`{"results":[{"s":"b"},{"s":"\u0061"},{"s":"B"},{"s":"ab"}]}`},
			want:   `{"results":[{"s":"B"},{"s":"\u0061"},{"s":"ab"},{"s":"b"}]}`},
		{name: "sort mixed types ascending, missing last", merge: asc,
			bodies: []string{`{"results":[{"s":"b"},{"s":2},{"s":true},{"s":null,"id":1},{"id":2},{"s":[1]},"bare",{"s":"a"},{"s":{"x":1}},{"s":1.5},{"s":false}]}`},
			want:   `{"results":[{"s":false},{"s":true},{"s":1.5},{"s":2},{"s":"a"},{"s":"b"},{"s":[1]},{"s":{"x":1}},{"s":null,"id":1},{"id":2},"bare"]}`},
		{name: "sort mixed types descending, missing still last", merge: desc,
			bodies: []string{`{"results":[{"id":2},{"s":"b"},{"s":2},{"s":true},{"s":[1]},{"s":"a"},{"s":1.5},{"s":false}]}`},
			want:   `{"results":[{"s":[1]},{"s":"b"},{"s":"a"},{"s":2},{"s":1.5},{"s":true},{"s":false},{"id":2}]}`},
		{name: "sort by dotted path", merge: scatter.Merge{Array: "results", SortBy: "meta.score", Order: "desc"},
			bodies: []string{`{"results":[{"meta":{"score":1}},{"meta":{"score":3}},{"meta":7},{"meta":{"score":2}}]}`},
			want:   `{"results":[{"meta":{"score":3}},{"meta":{"score":2}},{"meta":{"score":1}},{"meta":7}]}`},

		// array: dedupe and limit
		{name: "limit keeps the top N", merge: scatter.Merge{Array: "results", SortBy: "s", Order: "desc", Limit: 2},
			bodies: []string{`{"results":[{"s":1},{"s":5}]}`, `{"results":[{"s":3},{"s":4}]}`},
			want:   `{"results":[{"s":5},{"s":4}]}`},
		{name: "limit above the total", merge: scatter.Merge{Array: "results", Limit: 10},
			bodies: []string{`{"results":[1,2]}`}, want: `{"results":[1,2]}`},
		{name: "limit without sort keeps leaf order", merge: scatter.Merge{Array: "results", Limit: 3},
			bodies: []string{`{"results":[1,2]}`, `{"results":[3,4]}`}, want: `{"results":[1,2,3]}`},
		{name: "dedupe keeps the best after sorting", merge: scatter.Merge{Array: "results", SortBy: "score", Order: "desc", DedupeBy: "id"},
			bodies: []string{`{"results":[{"id":"x","score":1},{"id":"y","score":2}]}`, `{"results":[{"id":"x","score":5}]}`},
			want:   `{"results":[{"id":"x","score":5},{"id":"y","score":2}]}`},
		{name: "dedupe equal values written differently", merge: scatter.Merge{Array: "results", DedupeBy: "id"},
			bodies: []string{`{"results":[{"id":"a"},{"id":1},{"id":{"k":[1, 2]}},{"id":true}]}`, `{"results":[{"id":"\u0061"},{"id":1.0},{"id":10e-1},{"id":{"k":[1,2]}},{"id":"1"},{"id":true},{"id":false}]}`},
			want:   `{"results":[{"id":"a"},{"id":1},{"id":{"k":[1, 2]}},{"id":true},{"id":"1"},{"id":false}]}`},
		{name: "dedupe keeps every element without the field", merge: scatter.Merge{Array: "results", DedupeBy: "id"},
			bodies: []string{`{"results":[{"n":1},{"id":null},{"n":1},7]}`},
			want:   `{"results":[{"n":1},{"id":null},{"n":1},7]}`},
		{name: "limit counts what dedupe kept", merge: scatter.Merge{Array: "results", DedupeBy: "id", Limit: 2},
			bodies: []string{`{"results":[{"id":1},{"id":1},{"id":1},{"id":2},{"id":3}]}`},
			want:   `{"results":[{"id":1},{"id":2}]}`},

		// object
		{name: "deep merge in leaf order", merge: deep,
			bodies: []string{`{"a":{"x":1,"y":{"p":1}},"b":[1,2],"c":"first","d":{"k":1}}`, `{"a":{"y":{"q":2},"z":3},"b":[3],"c":"second","d":5}`, `{"d":{"m":1}}`},
			want:   `{"a":{"x":1,"y":{"p":1,"q":2},"z":3},"b":[3],"c":"second","d":{"m":1}}`},
		{name: "deep merge keeps numbers exact and HTML as is", merge: deep,
			bodies: []string{`{"n":123456789012345678901234567890,"f":0.10000000000000000001,"h":"<a&b>"}`},
			want:   `{"f":0.10000000000000000001,"h":"<a&b>","n":123456789012345678901234567890}`},
		{name: "deep merge of nothing", merge: deep, want: `{}`},
		{name: "deep merge of a non-object", merge: deep, bodies: []string{`{"a":1}`, `"x"`}, wantErr: "body 1: the answer is a string, want an object"},
		{name: "deep merge of invalid JSON", merge: deep, bodies: []string{`{"a":}`}, wantErr: "body 0: not valid JSON"},

		// ndjson
		{name: "ndjson concatenates, ending each body with a newline", merge: ndjson,
			bodies: []string{"{\"a\":1}\n{\"a\":2}", "", "\n  \n{\"b\":1}\n"},
			want:   "{\"a\":1}\n{\"a\":2}\n\n  \n{\"b\":1}\n"},
		{name: "ndjson line that is not JSON", merge: ndjson,
			bodies: []string{"{\"a\":1}\n", "1\n{\"b\":\n"}, wantErr: "body 1: line 2 is not valid JSON"},
		{name: "ndjson line with two values", merge: ndjson,
			bodies: []string{"1 2\n"}, wantErr: "body 0: line 1 is not valid JSON"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bodies := make([][]byte, len(tc.bodies))
			for i, b := range tc.bodies {
				bodies[i] = []byte(b)
			}
			got, err := tc.merge.Merge(bodies)
			if tc.wantErr != "" {
				assert.ErrorContains(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, string(got))
		})
	}
}

// Merging must not change the leaves' bodies: the stage may still hold
// them.
func TestMergeLeavesBodiesAlone(t *testing.T) {
	for _, m := range []scatter.Merge{
		{Array: "results", SortBy: "s", DedupeBy: "s", Limit: 1},
		{Object: "deep"},
		{Concat: "ndjson"},
	} {
		bodies := [][]byte{[]byte(`{"results":[{"s":2},{"s":1}],"o":{"a":1}}`), []byte(`{"results":[{"s":1}],"o":{"b":2}}`)}
		want := [][]byte{append([]byte(nil), bodies[0]...), append([]byte(nil), bodies[1]...)}
		_, err := m.Merge(bodies)
		require.NoError(t, err)
		assert.Equal(t, want, bodies)
	}
}
