package scatter

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"

	"sekisho/router"
)

// Values of the Merge fields that name a strategy.
const (
	OrderAsc     = "asc"
	OrderDesc    = "desc"
	ObjectDeep   = "deep"
	ConcatNDJSON = "ndjson"
)

// Merge says how the answers of the successful leaves become one answer. It
// is the YAML `merge:` map; exactly one of Array, Object and Concat is set.
//
// Array: each leaf answers a JSON object holding an array at the dotted path
// Array ("results", "data.hits"); the answer is an object holding, at the
// same path and nothing else, the concatenation of those arrays in leaf
// order, then sorted by SortBy, then deduplicated by DedupeBy, then cut to
// Limit. A leaf whose object lacks the path, or has null there, contributes
// no element; a leaf whose answer is not an object, or has something other
// than an array (or an object on the way) at the path, fails.
//
// SortBy is a dotted path inside each element. Values compare within their
// type: numbers numerically (exactly for integers that fit in 64 bits,
// otherwise as float64), strings by their bytes, false before true. Across
// types, in ascending order, booleans < numbers < strings < arrays and
// objects (which tie with each other); Order desc reverses that. An element
// without the field, with null there, or that is not an object sorts last in
// either order, so it never pushes a scored element out of the Limit. The
// sort is stable: ties keep leaf order, then array order.
//
// DedupeBy is a dotted path inside each element; of the elements with equal
// values there, the first after sorting is kept, so the best-scored one
// survives. Strings are equal by their decoded text, numbers by value,
// objects and arrays by their compact text. Elements without the field (or
// with null) are all kept.
//
// Object: "deep" merges the leaves' objects in leaf order: a member of a
// later leaf replaces the same member of an earlier one, except that two
// objects are merged member by member; arrays are replaced, not joined.
// The answer's members come out sorted by name. A leaf whose answer is not
// an object fails.
//
// Concat: "ndjson" streams each successful leaf's body, as it arrives, as
// lines of newline-delimited JSON (see Stage for when the status is sent).
// A leaf body fails when any of its non-blank lines is not one JSON value.
//
// Numbers are kept as their original text in every strategy. A dotted path
// cannot name a member whose name contains a dot.
//
// The zero Order is asc and the zero Limit keeps every element. A Merge is a
// value; it is safe for concurrent use.
type Merge struct {
	Array    string
	SortBy   string
	Order    string
	Limit    int
	DedupeBy string
	Object   string
	Concat   string
}

// Validate reports every problem of m at once, each a router.FieldError
// naming its YAML field.
func (m Merge) Validate() error {
	var errs []error
	set := 0
	for _, f := range []string{m.Array, m.Object, m.Concat} {
		if f != "" {
			set++
		}
	}
	switch {
	case set == 0:
		errs = append(errs, router.FieldErrorf("merge", "merge: missing; set one of array: FIELD, object: deep or concat: ndjson"))
	case set > 1:
		errs = append(errs, router.FieldErrorf("merge", "merge: set only one of array, object and concat"))
	}
	if m.Array != "" {
		if err := checkPath(m.Array); err != nil {
			errs = append(errs, router.FieldErrorf("merge.array", "merge.array: %v", err))
		}
	} else {
		for _, f := range []struct {
			name string
			set  bool
		}{{"sort_by", m.SortBy != ""}, {"order", m.Order != ""}, {"limit", m.Limit != 0}, {"dedupe_by", m.DedupeBy != ""}} {
			if f.set {
				errs = append(errs, router.FieldErrorf("merge."+f.name, "merge.%s: applies to merge.array only", f.name))
			}
		}
	}
	if m.SortBy != "" {
		if err := checkPath(m.SortBy); err != nil {
			errs = append(errs, router.FieldErrorf("merge.sort_by", "merge.sort_by: %v", err))
		}
	}
	if m.Order != "" && m.Order != OrderAsc && m.Order != OrderDesc {
		errs = append(errs, router.FieldErrorf("merge.order", "merge.order: %q: want asc or desc", m.Order))
	}
	if m.Order != "" && m.SortBy == "" && m.Array != "" {
		errs = append(errs, router.FieldErrorf("merge.order", "merge.order: needs merge.sort_by"))
	}
	if m.Limit < 0 {
		errs = append(errs, router.FieldErrorf("merge.limit", "merge.limit: %d: want >= 0 (0 keeps every element)", m.Limit))
	}
	if m.DedupeBy != "" {
		if err := checkPath(m.DedupeBy); err != nil {
			errs = append(errs, router.FieldErrorf("merge.dedupe_by", "merge.dedupe_by: %v", err))
		}
	}
	if m.Object != "" && m.Object != ObjectDeep {
		errs = append(errs, router.FieldErrorf("merge.object", "merge.object: %q: want deep", m.Object))
	}
	if m.Concat != "" && m.Concat != ConcatNDJSON {
		errs = append(errs, router.FieldErrorf("merge.concat", "merge.concat: %q: want ndjson", m.Concat))
	}
	return errors.Join(errs...)
}

func checkPath(p string) error {
	for _, seg := range strings.Split(p, ".") {
		if seg == "" {
			return fmt.Errorf("%q: empty name in dotted path; want FIELD or FIELD.SUBFIELD", p)
		}
	}
	return nil
}

// Merge validates m and merges bodies, the answers of successful leaves in
// leaf order. A body the strategy cannot use is an error naming its index.
// It is the whole merge the stage does, in one call, for tests and fuzzing.
func (m Merge) Merge(bodies [][]byte) ([]byte, error) {
	mg, err := compileMerge(m)
	if err != nil {
		return nil, err
	}
	parts := make([]*part, 0, len(bodies))
	defer func() {
		for _, p := range parts {
			putElems(p.elems)
		}
	}()
	for i, b := range bodies {
		var elems []elem
		if mg.kind == mergeArray {
			elems = getElems()
		}
		p, err := mg.parse(b, elems)
		if err != nil {
			putElems(elems)
			return nil, fmt.Errorf("body %d: %w", i, err)
		}
		parts = append(parts, &p)
	}
	return mg.write(nil, parts)
}

type mergeKind uint8

const (
	mergeArray mergeKind = iota + 1
	mergeObject
	mergeNDJSON
)

// merger is a compiled Merge. It is immutable.
type merger struct {
	kind     mergeKind
	array    []string
	sortBy   []string
	dedupeBy []string
	desc     bool
	limit    int
	// prefix and suffix wrap the merged array in the objects of its path.
	prefix, suffix []byte
}

func compileMerge(m Merge) (*merger, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	switch {
	case m.Object != "":
		return &merger{kind: mergeObject}, nil
	case m.Concat != "":
		return &merger{kind: mergeNDJSON}, nil
	}
	mg := &merger{
		kind:  mergeArray,
		array: strings.Split(m.Array, "."),
		desc:  m.Order == OrderDesc,
		limit: m.Limit,
	}
	if m.SortBy != "" {
		mg.sortBy = strings.Split(m.SortBy, ".")
	}
	if m.DedupeBy != "" {
		mg.dedupeBy = strings.Split(m.DedupeBy, ".")
	}
	for _, seg := range mg.array {
		name, _ := json.Marshal(seg)
		mg.prefix = append(append(append(mg.prefix, '{'), name...), ':')
		mg.suffix = append(mg.suffix, '}')
	}
	mg.prefix = append(mg.prefix, '[')
	mg.suffix = append([]byte{']'}, mg.suffix...)
	return mg, nil
}

func (mg *merger) contentType() string {
	if mg.kind == mergeNDJSON {
		return "application/x-ndjson"
	}
	return "application/json"
}

// part is one leaf's answer, parsed for its merger. An array part's elements
// are sub-slices of body.
type part struct {
	body  []byte
	elems []elem
	obj   map[string]any
}

type elem struct {
	raw    []byte
	dedupe []byte // the raw DedupeBy value; nil when absent or null
	key    sortKey
}

// Ranks order values of different types; rankMissing is handled apart since
// it sorts last in both orders.
const (
	rankBool uint8 = iota
	rankNumber
	rankString
	rankComposite
	rankMissing
)

// sortKey is an element's SortBy value, decoded once so that sorting does
// not parse.
type sortKey struct {
	rank  uint8
	isInt bool
	i     int64 // integers, and booleans as 0 or 1
	f     float64
	s     []byte
}

// parse checks one leaf body for the strategy and prepares it for write;
// an array part's elements are appended to elems. It runs on the leaf's own
// goroutine, so leaves are parsed in parallel.
func (mg *merger) parse(body []byte, elems []elem) (part, error) {
	switch mg.kind {
	case mergeNDJSON:
		return part{body: body}, checkNDJSON(body)
	case mergeObject:
		obj, err := decodeObject(body)
		return part{body: body, obj: obj}, err
	}
	if !json.Valid(body) {
		return part{}, errNotJSON(body)
	}
	b := bytes.TrimSpace(body)
	if k := kindOf(b); k != kindObject {
		return part{}, fmt.Errorf("the answer is %s, want an object", k)
	}
	arr, found, bad, depth := walk(b, mg.array)
	if bad != kindInvalid {
		return part{}, fmt.Errorf("%s is %s, want an object", strings.Join(mg.array[:depth], "."), bad)
	}
	p := part{body: body, elems: elems[:0]}
	if !found {
		return p, nil
	}
	if k := kindOf(arr); k != kindArray {
		return part{}, fmt.Errorf("%s is %s, want an array", strings.Join(mg.array, "."), k)
	}
	for i := 0; ; {
		var raw []byte
		var ok bool
		if raw, i, ok = nextElement(arr, i); !ok {
			break
		}
		e := elem{raw: raw, key: sortKey{rank: rankMissing}}
		if mg.sortBy != nil {
			v, found, _, _ := walk(raw, mg.sortBy)
			e.key = makeSortKey(v, found)
		}
		if mg.dedupeBy != nil {
			if v, found, _, _ := walk(raw, mg.dedupeBy); found {
				e.dedupe = v
			}
		}
		p.elems = append(p.elems, e)
	}
	return p, nil
}

// nextElement returns the element of the array arr after offset i (0 for the
// first) and the offset to pass for the next.
func nextElement(arr []byte, i int) (el []byte, next int, ok bool) {
	if i == 0 {
		i = skipSpace(arr, 0)
		if i >= len(arr) || arr[i] != '[' {
			return nil, len(arr), false
		}
		i++
	}
	for i < len(arr) {
		i = skipSpace(arr, i)
		if i >= len(arr) || arr[i] == ']' {
			break
		}
		if arr[i] == ',' {
			i++
			continue
		}
		end := skipValue(arr, i)
		if end <= i {
			break
		}
		return arr[i:end], end, true
	}
	return nil, len(arr), false
}

func errNotJSON(body []byte) error {
	var v any
	err := json.Unmarshal(body, &v)
	if err == nil {
		return errors.New("not valid JSON")
	}
	return fmt.Errorf("not valid JSON: %w", err)
}

func decodeObject(body []byte) (map[string]any, error) {
	if !json.Valid(body) {
		return nil, errNotJSON(body)
	}
	d := json.NewDecoder(bytes.NewReader(body))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		return nil, fmt.Errorf("not valid JSON: %w", err)
	}
	obj, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("the answer is %s, want an object", kindOf(bytes.TrimSpace(body)))
	}
	return obj, nil
}

func checkNDJSON(body []byte) error {
	for line, rest := 1, body; len(rest) > 0; line++ {
		l, tail, _ := bytes.Cut(rest, []byte{'\n'})
		rest = tail
		// Only JSON's own white space makes a line blank: a line of other
		// space would break a reader of the stream.
		if skipSpace(l, 0) < len(l) && !json.Valid(l) {
			return fmt.Errorf("line %d is not valid JSON", line)
		}
	}
	return nil
}

func makeSortKey(v []byte, found bool) sortKey {
	if !found {
		return sortKey{rank: rankMissing}
	}
	switch kindOf(v) {
	case kindBool:
		k := sortKey{rank: rankBool}
		if v[0] == 't' {
			k.i = 1
		}
		return k
	case kindNumber:
		i, f, isInt := parseNumber(v)
		return sortKey{rank: rankNumber, isInt: isInt, i: i, f: f}
	case kindString:
		return sortKey{rank: rankString, s: stringValue(v)}
	case kindArray, kindObject:
		return sortKey{rank: rankComposite}
	}
	return sortKey{rank: rankMissing}
}

// parseNumber reads a JSON number as an int64 when it is an integer that
// fits, else as the nearest float64 (±Inf beyond its range).
func parseNumber(v []byte) (i int64, f float64, isInt bool) {
	// ParseInt is tried only on integer text: its error would allocate.
	if !bytes.ContainsAny(v, ".eE") && len(v) <= 20 {
		if i, err := strconv.ParseInt(string(v), 10, 64); err == nil {
			return i, 0, true
		}
	}
	f, _ = strconv.ParseFloat(string(v), 64)
	return 0, f, false
}

// compareValues orders two present keys ascending.
func compareValues(a, b *sortKey) int {
	if a.rank != b.rank {
		return cmp.Compare(a.rank, b.rank)
	}
	switch a.rank {
	case rankBool:
		return cmp.Compare(a.i, b.i)
	case rankNumber:
		switch {
		case a.isInt && b.isInt:
			return cmp.Compare(a.i, b.i)
		case a.isInt:
			return compareIntFloat(a.i, b.f)
		case b.isInt:
			return -compareIntFloat(b.i, a.f)
		}
		return cmp.Compare(a.f, b.f)
	case rankString:
		return bytes.Compare(a.s, b.s)
	}
	return 0
}

// compareIntFloat compares exactly, where converting i to float64 would
// round and make the order intransitive.
func compareIntFloat(i int64, f float64) int {
	const two63 = 9223372036854775808.0
	switch {
	case f >= two63:
		return -1
	case f < -two63:
		return 1
	}
	fl := math.Floor(f)
	fi := int64(fl)
	switch {
	case i < fi:
		return -1
	case i > fi:
		return 1
	case f > fl:
		return -1
	}
	return 0
}

// compare orders elements for the answer: present values by Order, missing
// ones last, ties by position.
func (mg *merger) compare(a, b *elem) int {
	am, bm := a.key.rank == rankMissing, b.key.rank == rankMissing
	switch {
	case am && bm:
		return 0
	case am:
		return 1
	case bm:
		return -1
	}
	c := compareValues(&a.key, &b.key)
	if mg.desc {
		c = -c
	}
	return c
}

// appendDedupeKey appends a text for v that is equal for equal values and
// different for different ones (the first byte tells the type).
func appendDedupeKey(dst, v []byte) []byte {
	switch kindOf(v) {
	case kindString:
		return append(append(dst, 's'), stringValue(v)...)
	case kindNumber:
		dst = append(dst, 'n')
		i, f, isInt := parseNumber(v)
		if !isInt && f == math.Trunc(f) && f >= -9223372036854775808.0 && f < 9223372036854775808.0 {
			i, isInt = int64(f), true
		}
		if isInt {
			return strconv.AppendInt(dst, i, 10)
		}
		return strconv.AppendFloat(dst, f, 'g', -1, 64)
	case kindObject, kindArray:
		buf := bytes.NewBuffer(append(dst, 'c'))
		if json.Compact(buf, v) != nil {
			buf.Write(v)
		}
		return buf.Bytes()
	}
	return append(dst, v...)
}

// write appends the merged answer of parts, in leaf order, to dst.
func (mg *merger) write(dst []byte, parts []*part) ([]byte, error) {
	switch mg.kind {
	case mergeNDJSON:
		for _, p := range parts {
			dst = appendNDJSON(dst, p.body)
		}
		return dst, nil
	case mergeObject:
		return writeObject(dst, parts)
	}
	return mg.writeArray(dst, parts), nil
}

func appendNDJSON(dst, body []byte) []byte {
	if len(body) == 0 {
		return dst
	}
	dst = append(dst, body...)
	if body[len(body)-1] != '\n' {
		dst = append(dst, '\n')
	}
	return dst
}

func writeObject(dst []byte, parts []*part) ([]byte, error) {
	var merged map[string]any
	for _, p := range parts {
		if merged == nil {
			merged = p.obj
			continue
		}
		deepMerge(merged, p.obj)
	}
	if merged == nil {
		merged = map[string]any{}
	}
	buf := bytes.NewBuffer(dst)
	enc := json.NewEncoder(buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(merged); err != nil {
		return dst, fmt.Errorf("encoding the merged object: %w", err)
	}
	out := buf.Bytes()
	return out[:len(out)-1], nil // Encode ends the value with a newline
}

// deepMerge merges src into dst; both are freshly decoded and owned by the
// request, so dst takes src's members without copying them.
func deepMerge(dst, src map[string]any) {
	for k, v := range src {
		if sv, ok := v.(map[string]any); ok {
			if dv, ok := dst[k].(map[string]any); ok {
				deepMerge(dv, sv)
				continue
			}
		}
		dst[k] = v
	}
}

func (mg *merger) writeArray(dst []byte, parts []*part) []byte {
	total := 0
	for _, p := range parts {
		total += len(p.elems)
	}
	limit := total
	if mg.limit > 0 && mg.limit < total {
		limit = mg.limit
	}
	size := len(mg.prefix) + len(mg.suffix)
	for _, p := range parts {
		for i := range p.elems {
			size += len(p.elems[i].raw) + 1
		}
	}
	dst = slices.Grow(dst, size)
	dst = append(dst, mg.prefix...)
	if mg.sortBy == nil && mg.dedupeBy == nil {
		n := 0
		for _, p := range parts {
			for i := range p.elems {
				if n == limit {
					break
				}
				if n > 0 {
					dst = append(dst, ',')
				}
				dst = append(dst, p.elems[i].raw...)
				n++
			}
		}
		return append(dst, mg.suffix...)
	}

	all := make([]*elem, 0, total)
	for _, p := range parts {
		for i := range p.elems {
			all = append(all, &p.elems[i])
		}
	}
	if mg.sortBy != nil {
		slices.SortStableFunc(all, mg.compare)
	}
	var seen map[string]struct{}
	var scratch []byte
	if mg.dedupeBy != nil {
		seen = make(map[string]struct{}, limit)
	}
	n := 0
	for _, e := range all {
		if n == limit {
			break
		}
		if seen != nil && e.dedupe != nil {
			scratch = appendDedupeKey(scratch[:0], e.dedupe)
			if _, dup := seen[string(scratch)]; dup {
				continue
			}
			seen[string(scratch)] = struct{}{}
		}
		if n > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, e.raw...)
		n++
	}
	return append(dst, mg.suffix...)
}
