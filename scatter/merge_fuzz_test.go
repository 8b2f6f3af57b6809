package scatter_test

import (
	"bytes"
	"encoding/json"
	"math/big"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"sekisho/scatter"
)

// The fuzz tests check the merger against encoding/json: the merger finds
// members and elements with a scanner of its own, so a body encoding/json
// reads differently is a bug. Run one with
//
//	go test ./scatter -run '^$' -fuzz FuzzMergeArray -fuzztime 60s
//
// The seeds below run in every go test.

func decodeRef(b []byte) (any, error) {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		return nil, err
	}
	if d.More() {
		return nil, assert.AnError
	}
	return v, nil
}

// refElements is what the array merge must find in one body: the elements
// at "results", or ok false when the body must fail.
func refElements(b []byte) (elems []any, ok bool) {
	if !json.Valid(b) {
		return nil, false
	}
	v, err := decodeRef(b)
	if err != nil {
		return nil, false
	}
	obj, isObj := v.(map[string]any)
	if !isObj {
		return nil, false
	}
	switch r := obj["results"].(type) {
	case nil:
		return nil, true
	case []any:
		return r, true
	}
	return nil, false
}

// refKey is an element's "s" (or "id") member; present false when the
// element is not an object or the member is absent or null.
func refKey(el any, name string) (v any, present bool) {
	obj, ok := el.(map[string]any)
	if !ok {
		return nil, false
	}
	v, ok = obj[name]
	return v, ok && v != nil
}

// refNumber is a JSON number's value as the merger reads it: an int64 when
// it is an integer that fits, else the nearest float64, held exactly.
func refNumber(n json.Number) *big.Float {
	if i, err := strconv.ParseInt(string(n), 10, 64); err == nil {
		return new(big.Float).SetInt64(i)
	}
	f, _ := strconv.ParseFloat(string(n), 64)
	return new(big.Float).SetFloat64(f)
}

func refRank(v any) int {
	switch v.(type) {
	case bool:
		return 0
	case json.Number:
		return 1
	case string:
		return 2
	}
	return 3
}

// refCompare orders two present values ascending.
func refCompare(a, b any) int {
	ra, rb := refRank(a), refRank(b)
	if ra != rb {
		return ra - rb
	}
	switch x := a.(type) {
	case bool:
		y := b.(bool)
		switch {
		case x == y:
			return 0
		case !x:
			return -1
		}
		return 1
	case json.Number:
		return refNumber(x).Cmp(refNumber(b.(json.Number)))
	case string:
		y := b.(string)
		switch {
		case x < y:
			return -1
		case x > y:
			return 1
		}
	}
	return 0
}

func FuzzMergeArray(f *testing.F) {
	f.Add([]byte(`{"results":[{"s":3,"id":"a"},{"s":1,"id":"b"}]}`), []byte(`{"results":[{"s":2,"id":"a"}]}`), true, true, true, uint8(2))
	f.Add([]byte(`{"results":[{"s":"b"},{"s":2},{"s":true},{"s":null},{},{"s":[1]},"bare",{"s":1.5}]}`), []byte(`{"other":1}`), true, false, false, uint8(0))
	f.Add([]byte(`{"results":[{"s":9007199254740993,"id":1},{"s":9007199254740992.5,"id":1.0}]}`), []byte(`{"results":null}`), true, true, true, uint8(0))
	f.Add([]byte(`{"res\u0075lts":[1,2],"results":[3]}`), []byte(` {"results" : [ "\u0061" , "a" ] } `), false, false, true, uint8(1))
	f.Add([]byte(`{"results":[1,]}`), []byte(`[1]`), false, false, false, uint8(0))
	f.Add([]byte(`{"results":"x"}`), []byte(`{"results":[{"id":{"k":[1,2]}},{"id":{"k":[1, 2]}}]}`), false, false, true, uint8(0))
	f.Add([]byte(`{"results":[{"s":1e400},{"s":-1e400},{"s":-0},{"s":0.0}]}`), []byte(`{"results":[[[[{}]]],"\"]\\",{"s":"\ud800"}]}`), true, true, false, uint8(3))
	f.Add([]byte(`{}`), []byte(`{}`), false, false, false, uint8(130))
	f.Fuzz(func(t *testing.T, a, b []byte, sort, desc, dedupe bool, limit uint8) {
		m := scatter.Merge{Array: "results", Limit: int(limit)}
		if sort {
			m.SortBy = "s"
			if desc {
				m.Order = scatter.OrderDesc
			}
		}
		if dedupe {
			m.DedupeBy = "id"
		}
		bodies := [][]byte{a, b}
		orig := [][]byte{bytes.Clone(a), bytes.Clone(b)}
		out, err := m.Merge(bodies)
		assert.Equal(t, orig, bodies, "the bodies are left alone")

		var all []any
		valid := true
		for _, body := range bodies {
			elems, ok := refElements(body)
			valid = valid && ok
			all = append(all, elems...)
		}
		if !valid {
			require.Error(t, err, "encoding/json rejects a body")
			return
		}
		require.NoError(t, err, "encoding/json accepts every body")
		again, err := m.Merge(bodies)
		require.NoError(t, err)
		require.Equal(t, out, again, "deterministic")

		v, err := decodeRef(out)
		require.NoError(t, err, "the answer is JSON: %s", out)
		obj, ok := v.(map[string]any)
		require.True(t, ok)
		require.Len(t, obj, 1)
		got, ok := obj["results"].([]any)
		require.True(t, ok, "results is an array: %s", out)

		want := len(all)
		if m.Limit > 0 {
			want = min(want, m.Limit)
		}
		if !dedupe {
			require.Len(t, got, want)
		} else {
			require.LessOrEqual(t, len(got), want)
		}
		if !sort && !dedupe && want > 0 {
			require.Equal(t, all[:want], got, "concatenation in leaf order")
		}
		if sort {
			for i := 1; i < len(got); i++ {
				pv, pok := refKey(got[i-1], "s")
				nv, nok := refKey(got[i], "s")
				switch {
				case !pok:
					require.False(t, nok, "missing values sort last: %s", out)
				case nok:
					c := refCompare(pv, nv)
					if desc {
						c = -c
					}
					require.LessOrEqual(t, c, 0, "sorted: %v before %v", pv, nv)
				}
			}
		}
		if dedupe {
			for i := range got {
				for j := range i {
					x, xok := refKey(got[i], "id")
					y, yok := refKey(got[j], "id")
					if !xok || !yok || refRank(x) == 3 || refRank(y) == 3 {
						continue
					}
					require.NotZero(t, refCompare(x, y), "duplicate ids %v and %v kept", x, y)
				}
			}
		}
	})
}

func refDeepMerge(dst, src map[string]any) {
	for k, v := range src {
		if sv, ok := v.(map[string]any); ok {
			if dv, ok := dst[k].(map[string]any); ok {
				refDeepMerge(dv, sv)
				continue
			}
		}
		dst[k] = v
	}
}

func FuzzMergeObject(f *testing.F) {
	f.Add([]byte(`{"a":{"x":1,"y":{"p":1}},"b":[1,2],"c":"first"}`), []byte(`{"a":{"y":{"q":2}},"b":[3],"c":{"o":1}}`))
	f.Add([]byte(`{"n":123456789012345678901234567890,"h":"<a&b>"}`), []byte(`{"n":{"deep":true}}`))
	f.Add([]byte(`{"a":1}`), []byte(`[1]`))
	f.Add([]byte(`{"a":`), []byte(`{}`))
	f.Add([]byte(`{"a":1,"a":{"b":2}}`), []byte(` {"a":{"c":"\ud800"}} `))
	f.Fuzz(func(t *testing.T, a, b []byte) {
		m := scatter.Merge{Object: scatter.ObjectDeep}
		out, err := m.Merge([][]byte{a, b})
		want := map[string]any{}
		for _, body := range [][]byte{a, b} {
			v, rerr := decodeRef(body)
			obj, ok := v.(map[string]any)
			if !json.Valid(body) || rerr != nil || !ok {
				require.Error(t, err)
				return
			}
			refDeepMerge(want, obj)
		}
		require.NoError(t, err)
		got, err := decodeRef(out)
		require.NoError(t, err, "the answer is JSON: %s", out)
		require.Equal(t, want, got)
	})
}

func FuzzMergeNDJSON(f *testing.F) {
	f.Add([]byte("{\"a\":1}\n{\"a\":2}"), []byte("\n \n3\n"))
	f.Add([]byte("1 2\n"), []byte(""))
	f.Add([]byte("{\"a\":\n1}"), []byte("\r\n[]\r\n"))
	f.Add([]byte("\u00a0\n"), []byte(" \t\r\n"))
	f.Fuzz(func(t *testing.T, a, b []byte) {
		m := scatter.Merge{Concat: scatter.ConcatNDJSON}
		out, err := m.Merge([][]byte{a, b})
		var want []byte
		for _, body := range [][]byte{a, b} {
			for line := range bytes.SplitSeq(body, []byte{'\n'}) {
				if l := bytes.Trim(line, " \t\r"); len(l) > 0 && !json.Valid(l) {
					require.Error(t, err)
					return
				}
			}
			if len(body) > 0 {
				want = append(want, body...)
				if body[len(body)-1] != '\n' {
					want = append(want, '\n')
				}
			}
		}
		require.NoError(t, err)
		require.Equal(t, want, out)
	})
}
