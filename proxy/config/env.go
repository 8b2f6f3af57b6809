package config

import (
	"bytes"
	"fmt"
	"strings"
	"unicode/utf8"

	"gopkg.in/yaml.v3"
)

// Environment references are expanded before the YAML is parsed, so that a
// ${VAR} may stand anywhere a value may (plain or quoted, block or flow:
// `endpoints: [${BACKEND}]`), and yet no value from the environment can
// change the file's structure:
//
//  1. The text is scanned for references. Each ${NAME} or ${NAME:-default}
//     (on one line) is replaced by a placeholder of exactly as many
//     characters, made of letters, digits and `_` only: a prefix of two
//     letters found nowhere in the file, the reference's index in two
//     base-62 digits, padding. Every line and column yaml.v3 reports is so
//     the file's own, and a placeholder is a plain scalar, or a part of
//     one, wherever the reference stood. `$$` is skipped over, so `$${`
//     starts no reference.
//  2. The text is parsed.
//  3. Each scalar value is expanded: a placeholder becomes the variable's
//     value (or the default), `$$` becomes `$`. The value is text inside a
//     scalar the parser already made, so `a: b`, `#`, `[1,2]`, quotes or a
//     newline in it are characters of that scalar and nothing else, and a
//     ${OTHER} in it is not expanded again. A plain scalar that was exactly
//     one reference is read as if the value had been written there, so
//     `~`, `null` or an empty value is null (the key left out); any other
//     value is a string, read as the key's type by the decoder.
//  4. Mapping keys are not expanded: the file fixes its own structure. A
//     reference in a key is an error. References in comments are never
//     looked up.

// envRef is one ${NAME} or ${NAME:-default} of the file.
type envRef struct {
	pos    Pos
	raw    string // as written, "${NAME:-default}"
	name   string
	def    string
	hasDef bool
}

// envUse is how a scalar value was written, for the scalars that took
// something from the environment.
type envUse struct {
	names []string // the variables, in order
	raw   string   // the value with its references as written
}

// expander carries the references of one file from the text to its nodes.
type expander struct {
	file      string
	lookup    func(string) (string, bool)
	refs      []envRef
	prefix    string
	malformed []Pos // each "${" that starts no reference, in file order
	claimed   int   // malformed[:claimed] have been reported

	errs Errors
	bad  map[*yaml.Node]bool    // nodes whose expansion failed (reported)
	env  map[*yaml.Node]*envUse // nodes that took a value from the environment
}

const (
	base62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
	// maxRefs is how many references the two base-62 digits can number.
	maxRefs = len(base62) * len(base62)
)

// replace scans data for references and returns data with each replaced
// by its placeholder.
func (x *expander) replace(data []byte) ([]byte, *Error) {
	if !bytes.Contains(data, []byte("${")) {
		return data, nil
	}
	x.prefix = freePrefix(data)
	if x.prefix == "" {
		return nil, &Error{File: x.file, Pos: Pos{1, 1}, Msg: "environment references: the file uses every pair of letters, so ${VAR} cannot be expanded"}
	}
	out := make([]byte, 0, len(data))
	line, lineStart := 1, 0
	for i := 0; i < len(data); {
		c := data[i]
		switch {
		case c == '\n':
			line, lineStart = line+1, i+1
		case c == '$' && i+1 < len(data) && data[i+1] == '$':
			out = append(out, "$$"...)
			i += 2
			continue
		case c == '$' && i+1 < len(data) && data[i+1] == '{':
			pos := Pos{line, utf8.RuneCount(data[lineStart:i]) + 1}
			ref, ok := parseRef(data[i:])
			if !ok {
				x.malformed = append(x.malformed, pos)
				break
			}
			if len(x.refs) == maxRefs {
				return nil, &Error{File: x.file, Pos: pos, Msg: fmt.Sprintf("environment references: more than %d in one file", maxRefs)}
			}
			ref.pos = pos
			out = append(out, x.placeholder(len(x.refs), utf8.RuneCountInString(ref.raw))...)
			x.refs = append(x.refs, ref)
			i += len(ref.raw)
			continue
		}
		out = append(out, c)
		i++
	}
	return out, nil
}

// parseRef reads the reference at the start of b ("${" already seen).
func parseRef(b []byte) (envRef, bool) {
	end := bytes.IndexAny(b, "}\n")
	if end < 0 || b[end] != '}' {
		return envRef{}, false
	}
	expr := string(b[2:end])
	name, def, hasDef := strings.Cut(expr, ":-")
	if !validEnvName(name) {
		return envRef{}, false
	}
	return envRef{raw: string(b[:end+1]), name: name, def: def, hasDef: hasDef}, true
}

// freePrefix returns two distinct ASCII letters that occur together nowhere
// in data, or "" if there are none.
func freePrefix(data []byte) string {
	var seen [128][128]bool
	for i := 0; i+1 < len(data); i++ {
		if a, b := data[i], data[i+1]; a < 128 && b < 128 {
			seen[a][b] = true
		}
	}
	const letters = "QZXJqzxjKVWYkvwyABCDEFGHILMNOPRSTUabcdefghilmnoprstu"
	for _, a := range []byte(letters) {
		for _, b := range []byte(letters) {
			if a != b && !seen[a][b] {
				return string([]byte{a, b})
			}
		}
	}
	return ""
}

func (x *expander) placeholder(i, width int) string {
	p := x.prefix + string(base62[i/len(base62)]) + string(base62[i%len(base62)])
	return p + strings.Repeat("_", width-len(p))
}

// at returns the reference whose placeholder starts s, if one does.
func (x *expander) at(s string) (int, bool) {
	if x.prefix == "" || len(s) < 4 || s[:2] != x.prefix {
		return 0, false
	}
	hi, lo := strings.IndexByte(base62, s[2]), strings.IndexByte(base62, s[3])
	if hi < 0 || lo < 0 {
		return 0, false
	}
	i := hi*len(base62) + lo
	if i >= len(x.refs) {
		return 0, false
	}
	w := utf8.RuneCountInString(x.refs[i].raw)
	if len(s) < w || s[:w] != x.placeholder(i, w) {
		return 0, false
	}
	return i, true
}

// expandTree expands every scalar of the tree in place.
func (x *expander) expandTree(n *yaml.Node) {
	switch n.Kind {
	case yaml.DocumentNode, yaml.SequenceNode:
		for _, c := range n.Content {
			x.expandTree(c)
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			x.key(n.Content[i])
			x.expandTree(n.Content[i+1])
		}
	case yaml.ScalarNode:
		x.value(n)
	}
}

// key reports each reference in a mapping key and puts its text back.
func (x *expander) key(n *yaml.Node) {
	if n.Kind != yaml.ScalarNode {
		x.expandTree(n) // the decoder rejects a key that is not a scalar
		return
	}
	if x.prefix == "" || !strings.Contains(n.Value, x.prefix) {
		return
	}
	var b strings.Builder
	for s := n.Value; s != ""; {
		if i, ok := x.at(s); ok {
			r := x.refs[i]
			x.errorf(n, r.pos, "%s in a mapping key: keys are not expanded (a value may come from the environment, a key may not)", r.raw)
			b.WriteString(r.raw)
			s = s[len(x.placeholder(i, utf8.RuneCountInString(r.raw))):]
			continue
		}
		b.WriteByte(s[0])
		s = s[1:]
	}
	n.Value = b.String()
}

// value expands the references of one scalar value.
func (x *expander) value(n *yaml.Node) {
	if !strings.Contains(n.Value, "$") && (x.prefix == "" || !strings.Contains(n.Value, x.prefix)) {
		return
	}
	var out, raw strings.Builder
	var use envUse
	whole := false
	for s := n.Value; s != ""; {
		if i, ok := x.at(s); ok {
			r := x.refs[i]
			width := len(x.placeholder(i, utf8.RuneCountInString(r.raw)))
			whole = width == len(n.Value)
			val, set := x.lookup(r.name)
			switch {
			case set && val != "":
			case r.hasDef:
				val = r.def
			case set:
			default:
				x.errorf(n, r.pos, "environment variable %s is not set and has no default (write ${%s:-default})", r.name, r.name)
			}
			out.WriteString(val)
			raw.WriteString(r.raw)
			use.names = append(use.names, r.name)
			s = s[width:]
			continue
		}
		switch {
		case strings.HasPrefix(s, "$$"):
			out.WriteByte('$')
			raw.WriteString("$$")
			s = s[2:]
			continue
		case strings.HasPrefix(s, "${"):
			pos := Pos{n.Line, n.Column}
			for x.claimed < len(x.malformed) {
				m := x.malformed[x.claimed]
				x.claimed++
				if m.Line > n.Line || m.Line == n.Line && m.Col >= n.Column {
					pos = m
					break
				}
			}
			x.errorf(n, pos, "${ starts no reference: want ${NAME} or ${NAME:-default} on one line, NAME of letters, digits and _ (write $${ for a literal ${)")
		}
		out.WriteByte(s[0])
		raw.WriteByte(s[0])
		s = s[1:]
	}
	if x.bad[n] {
		return
	}
	n.Value = out.String()
	if len(use.names) == 0 {
		return
	}
	use.raw = raw.String()
	if x.env == nil {
		x.env = map[*yaml.Node]*envUse{}
	}
	x.env[n] = &use
	if whole && n.Style == 0 {
		switch n.Value {
		case "", "~", "null", "Null", "NULL":
			n.Tag = "!!null"
		default:
			n.Tag = "!!str"
		}
	}
}

func (x *expander) errorf(n *yaml.Node, pos Pos, format string, args ...any) {
	if x.bad == nil {
		x.bad = map[*yaml.Node]bool{}
	}
	x.bad[n] = true
	x.errs = append(x.errs, Error{File: x.file, Pos: pos, Msg: fmt.Sprintf(format, args...)})
}

func validEnvName(s string) bool {
	if s == "" {
		return false
	}
	for i, c := range s {
		if c == '_' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || i > 0 && c >= '0' && c <= '9' {
			continue
		}
		return false
	}
	return true
}
