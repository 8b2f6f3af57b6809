package scatter

import (
	"bytes"
	"encoding/json"
	"unicode/utf8"
)

// The array merge reads leaf answers without decoding them into Go values:
// once json.Valid has accepted a body, these helpers find members and
// elements as sub-slices of it, so a merge of thousands of results copies
// each result's bytes once, into the answer. They are written for valid
// input but stay in bounds and terminate on any input, because the fuzzer
// and a buggy caller may hand them anything.

// kind is the JSON type of a raw value, told by its first byte.
type kind uint8

const (
	kindInvalid kind = iota
	kindNull
	kindBool
	kindNumber
	kindString
	kindArray
	kindObject
)

func (k kind) String() string {
	switch k {
	case kindNull:
		return "null"
	case kindBool:
		return "a boolean"
	case kindNumber:
		return "a number"
	case kindString:
		return "a string"
	case kindArray:
		return "an array"
	case kindObject:
		return "an object"
	}
	return "not JSON"
}

func kindOf(v []byte) kind {
	if len(v) == 0 {
		return kindInvalid
	}
	switch v[0] {
	case 'n':
		return kindNull
	case 't', 'f':
		return kindBool
	case '"':
		return kindString
	case '[':
		return kindArray
	case '{':
		return kindObject
	case '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9':
		return kindNumber
	}
	return kindInvalid
}

func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r'
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && isSpace(b[i]) {
		i++
	}
	return i
}

// skipString returns the index just past the string that opens at b[i]. It
// jumps from quote to quote; a quote ends the string unless an odd number of
// backslashes precedes it.
func skipString(b []byte, i int) int {
	start := i + 1
	for i = start; i < len(b); i++ {
		j := bytes.IndexByte(b[i:], '"')
		if j < 0 {
			break
		}
		i += j
		k := i - 1
		for k >= start && b[k] == '\\' {
			k--
		}
		if (i-1-k)%2 == 0 {
			return i + 1
		}
	}
	return len(b)
}

// skipValue returns the index just past the value that starts at b[i]
// (after any space). Composite values are skipped by counting brackets
// outside strings, without recursion, so nesting depth costs no stack.
func skipValue(b []byte, i int) int {
	i = skipSpace(b, i)
	if i >= len(b) {
		return len(b)
	}
	switch b[i] {
	case '"':
		return skipString(b, i)
	case '{', '[':
		depth := 0
		for i < len(b) {
			switch b[i] {
			case '"':
				i = skipString(b, i)
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1
				}
			}
			i++
		}
		return len(b)
	}
	for i < len(b) {
		switch c := b[i]; {
		case c == ',' || c == ']' || c == '}' || c == ':' || isSpace(c):
			return i
		}
		i++
	}
	return len(b)
}

// objectField returns the value of member name of the object obj. As
// encoding/json does, the last of duplicate members wins.
func objectField(obj []byte, name string) ([]byte, bool) {
	i := skipSpace(obj, 0)
	if i >= len(obj) || obj[i] != '{' {
		return nil, false
	}
	var val []byte
	found := false
	for i++; i < len(obj); {
		i = skipSpace(obj, i)
		if i >= len(obj) || obj[i] == '}' {
			break
		}
		if obj[i] == ',' {
			i++
			continue
		}
		if obj[i] != '"' {
			break
		}
		ks := i
		i = skipString(obj, i)
		key := obj[ks:i]
		i = skipSpace(obj, i)
		if i < len(obj) && obj[i] == ':' {
			i++
		}
		vs := skipSpace(obj, i)
		i = skipValue(obj, vs)
		if i <= vs {
			break
		}
		if keyIs(key, name) {
			val, found = obj[vs:i], true
		}
	}
	return val, found
}

// keyIs reports whether the quoted JSON string key decodes to name.
func keyIs(key []byte, name string) bool {
	if len(key) < 2 {
		return false
	}
	inner := key[1 : len(key)-1]
	if bytes.IndexByte(inner, '\\') < 0 && utf8.Valid(inner) {
		return string(inner) == name
	}
	var s string
	if json.Unmarshal(key, &s) != nil {
		return false
	}
	return s == name
}

// walk follows a dotted path through nested objects. A member that is absent
// or null, anywhere on the way, is missing (found false); a value on the way
// that is neither an object nor null is reported by its kind and depth.
func walk(v []byte, path []string) (val []byte, found bool, badKind kind, depth int) {
	v = v[skipSpace(v, 0):]
	for i, seg := range path {
		switch k := kindOf(v); k {
		case kindNull:
			return nil, false, kindInvalid, 0
		case kindObject:
		default:
			return nil, false, k, i
		}
		next, ok := objectField(v, seg)
		if !ok {
			return nil, false, kindInvalid, 0
		}
		v = next
	}
	if kindOf(v) == kindNull {
		return nil, false, kindInvalid, 0
	}
	return v, true, kindInvalid, 0
}

// stringValue returns the decoded text of the raw JSON string s, without
// copying when it holds no escape.
func stringValue(s []byte) []byte {
	if len(s) < 2 {
		return nil
	}
	inner := s[1 : len(s)-1]
	if bytes.IndexByte(inner, '\\') < 0 && utf8.Valid(inner) {
		return inner
	}
	var d string
	if json.Unmarshal(s, &d) != nil {
		return inner
	}
	return []byte(d)
}
