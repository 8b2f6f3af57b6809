package config

import (
	"bytes"
	"strings"
	"unicode/utf8"

	"gopkg.in/yaml.v3"
)

// parseYAML parses data as one YAML document. A syntax error is returned
// positioned where it is in the file (see syntaxError).
func parseYAML(file string, data []byte) (*yaml.Node, *Error) {
	var root yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&root); err != nil {
		e := syntaxError(file, data, err)
		return nil, &e
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, &Error{File: file, Pos: Pos{extra.Line, extra.Column}, Msg: "the config file holds more than one YAML document"}
	}
	return &root, nil
}

// syntaxError positions a yaml.v3 syntax error. yaml.v3 gives its error as
// text only ("yaml: line N: msg"), and N is not the problem's line: it is
// the line of the construct being parsed when there is one (the mapping or
// flow sequence that holds the problem), counted from 0 for parser errors
// and from 1 for scanner errors, and left out on the first line. So the
// position is found instead of read: the problem is where the file first
// fails the same way, the end of the shortest prefix of the file that
// yaml.v3 rejects with the same message. A prefix that stops before the
// problem either parses or fails differently (a flow sequence left open,
// for example, is "did not find expected node content" right after its
// `[`), and one that reaches it fails as the whole file does. The line is
// found by bisection over whole lines, then the column within it; the
// column is moved back to the start of a word the problem ends in (with
// the `[`, `{`, `*`, `&` or `!` glued before it), so that `[oops` is
// reported at its `[` and an unknown alias at its `*`.
func syntaxError(file string, data []byte, err error) Error {
	full := err.Error()
	msg := strings.TrimPrefix(full, "yaml: ")
	if strings.HasPrefix(msg, "line ") {
		if _, rest, ok := strings.Cut(msg, ": "); ok {
			msg = rest
		}
	}
	e := Error{File: file, Pos: Pos{1, 1}, Msg: "not valid YAML: " + msg}
	same := func(prefix []byte) bool {
		var n yaml.Node
		err := yaml.NewDecoder(bytes.NewReader(prefix)).Decode(&n)
		return err != nil && err.Error() == full
	}
	lines := bytes.SplitAfter(data, []byte("\n"))
	if len(lines[len(lines)-1]) == 0 {
		lines = lines[:len(lines)-1]
	}
	offsets := make([]int, len(lines)+1) // offsets[i]: where line i (0-based) starts
	for i, l := range lines {
		offsets[i+1] = offsets[i] + len(l)
	}
	// The first line k whose end reproduces the error; the whole file does.
	lo, hi := 0, len(lines)-1
	if hi < 0 || !same(data) {
		return e
	}
	for lo < hi {
		mid := (lo + hi) / 2
		if same(data[:offsets[mid+1]]) {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	line := lines[lo]
	start := offsets[lo]
	// The first byte of that line whose inclusion reproduces it.
	clo, chi := 1, len(line)
	for clo < chi {
		mid := (clo + chi) / 2
		if same(data[:start+mid]) {
			chi = mid
		} else {
			clo = mid + 1
		}
	}
	at := clo - 1 // index in line of the byte the problem is at
	if at >= len(line) {
		at = len(line) - 1
	}
	if at > 0 && wordByte(line[at]) {
		for at > 0 && wordByte(line[at-1]) {
			at--
		}
		if at > 0 && strings.IndexByte("[{*&!", line[at-1]) >= 0 {
			at--
		}
	}
	for at > 0 && !utf8.RuneStart(line[at]) {
		at--
	}
	e.Pos = Pos{lo + 1, utf8.RuneCount(line[:at]) + 1}
	return e
}

func wordByte(c byte) bool {
	return c == '_' || c == '-' || c == '.' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= utf8.RuneSelf
}
