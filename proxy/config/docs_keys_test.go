package config_test

import (
	"bufio"
	"errors"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"sekisho/proxy/config"
)

const configDoc = "../../docs/config.md"

// docKey is a key named in a table of docs/config.md, with its place: the
// path from the top of the file, `[]` for a list element, `*` for a map
// entry ("listeners[].tls.min_version", "pools.*.retries").
type docKey struct {
	path string
	line int // in docs/config.md
}

var (
	keysMarker = regexp.MustCompile(`^<!-- keys: (\S+) -->$`)
	backquoted = regexp.MustCompile("`([^`]+)`")
	keyPath    = regexp.MustCompile(`^[a-z0-9_]+(\[\])?(\.[a-z0-9_]+(\[\])?)*$`)
)

// documentedKeys reads every key table of docs/config.md: a table whose
// header's first cell is "key" must follow a `<!-- keys: PLACE -->` comment
// (PLACE "." for the top level), and each backquoted name in its rows' first
// cell is a key relative to PLACE.
func documentedKeys(t *testing.T) []docKey {
	t.Helper()
	f, err := os.Open(configDoc)
	require.NoError(t, err)
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	require.NoError(t, sc.Err())
	firstCell := func(row string) string {
		cells := strings.Split(row, "|")
		if len(cells) < 3 {
			return ""
		}
		return strings.TrimSpace(cells[1])
	}
	var keys []docKey
	place, placeLine := "", -1 // the last marker not yet used by a table
	for i := 0; i < len(lines); i++ {
		if m := keysMarker.FindStringSubmatch(lines[i]); m != nil {
			place, placeLine = m[1], i
			continue
		}
		isHeader := strings.HasPrefix(lines[i], "|") && i+1 < len(lines) && strings.HasPrefix(lines[i+1], "|---")
		if !isHeader || firstCell(lines[i]) != "key" {
			continue
		}
		if !assert.NotEqual(t, -1, placeLine, "%s:%d: a key table without a <!-- keys: PLACE --> comment before it", configDoc, i+1) {
			continue
		}
		prefix := ""
		if place != "." {
			prefix = place + "."
		}
		n := 0
		for i += 2; i < len(lines) && strings.HasPrefix(lines[i], "|"); i++ {
			for _, m := range backquoted.FindAllStringSubmatch(firstCell(lines[i]), -1) {
				if assert.Regexp(t, keyPath, m[1], "%s:%d: not a key", configDoc, i+1) {
					keys = append(keys, docKey{path: prefix + m[1], line: i + 1})
					n++
				}
			}
		}
		assert.NotZero(t, n, "%s:%d: a key table without keys", configDoc, placeLine+1)
		placeLine = -1
	}
	require.NotEmpty(t, keys)
	return keys
}

// acceptedKeys walks the config's types as the decoder does (yaml tags;
// pointers followed; `[]` into a list's elements, `*` into a map's values) and
// returns the path of every key it accepts. A type met again below itself (a
// split arm's pipeline) is not walked twice.
func acceptedKeys() []string {
	var out []string
	var walk func(t reflect.Type, path string, seen []reflect.Type)
	walk = func(t reflect.Type, path string, seen []reflect.Type) {
		for t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		switch t.Kind() {
		case reflect.Slice:
			walk(t.Elem(), path+"[]", seen)
			return
		case reflect.Map:
			walk(t.Elem(), path+".*", seen)
			return
		case reflect.Struct:
		default:
			return
		}
		if slices.Contains(seen, t) {
			return
		}
		seen = append(seen, t)
		for i := range t.NumField() {
			tag, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
			if tag == "" || tag == "-" {
				continue
			}
			p := tag
			if path != "" {
				p = path + "." + tag
			}
			out = append(out, p)
			walk(t.Field(i).Type, p, seen)
		}
	}
	walk(reflect.TypeFor[config.Config](), "", nil)
	return out
}

// probe is a config file that holds the key at path with a null value (which
// every kind of value accepts), and the position of that key.
func probe(path string) (text string, pos config.Pos) {
	segs := strings.Split(strings.ReplaceAll(path, "[]", ".[]"), ".")
	// The probed key is on the second line: an error about the whole file
	// is at the first.
	if len(segs) == 1 {
		if segs[0] == "version" {
			return "admin: {}\nversion: 1\n", config.Pos{Line: 2, Col: 1}
		}
		return "version: 1\n" + segs[0] + ": ~\n", config.Pos{Line: 2, Col: 1}
	}
	// Built inside out: inner is the flow text below the segment at hand,
	// col the 0-based column of the probed key within inner.
	inner, col := "{"+segs[len(segs)-1]+": ~}", 1
	for i := len(segs) - 2; i >= 1; i-- {
		switch segs[i] {
		case "[]":
			inner, col = "["+inner+"]", col+1
		case "*":
			inner, col = "{p: "+inner+"}", col+4
		default:
			inner, col = "{"+segs[i]+": "+inner+"}", col+len(segs[i])+3
		}
	}
	lead := segs[0] + ": "
	return "version: 1\n" + lead + inner + "\n", config.Pos{Line: 2, Col: len(lead) + col + 1}
}

// TestDocsKeysAreAcceptedAndComplete: every key a table of docs/config.md
// names is accepted by the decoder at that place, and every key the decoder
// accepts is in a table.
func TestDocsKeysAreAcceptedAndComplete(t *testing.T) {
	documented := documentedKeys(t)
	accepted := acceptedKeys()
	noEnv := func(string) (string, bool) { return "", false }

	inDocs := map[string]bool{}
	for _, k := range documented {
		inDocs[k.path] = true
		t.Run("documented/"+k.path, func(t *testing.T) {
			assert.Contains(t, accepted, k.path, "%s:%d: `%s` is documented but no such key exists", configDoc, k.line, k.path)
			text, pos := probe(k.path)
			_, err := config.Parse("probe.yaml", []byte(text), noEnv)
			var errs config.Errors
			if err != nil && !errors.As(err, &errs) {
				t.Fatalf("probe of %s:\n%s\nis not a config error: %v", k.path, text, err)
			}
			for _, e := range errs {
				assert.NotEqual(t, pos, e.Pos, "%s:%d: the decoder refuses `%s`:\n%s%s", configDoc, k.line, k.path, text, e.Error())
			}
		})
	}
	for _, path := range accepted {
		assert.True(t, inDocs[path], "the decoder accepts `%s`, but no table of %s lists it", path, configDoc)
	}
}

// TestProbeFindsUnknownKeys: the probe of a key that does not exist is
// refused at the position probe names, so the test above can fail.
func TestProbeFindsUnknownKeys(t *testing.T) {
	for _, path := range []string{"nokey", "admin.nokey", "listeners[].routes[].pipeline[].split.arms[].nokey", "pools.*.readiness.nokey"} {
		t.Run(path, func(t *testing.T) {
			text, pos := probe(path)
			_, err := config.Parse("probe.yaml", []byte(text), func(string) (string, bool) { return "", false })
			var errs config.Errors
			require.ErrorAs(t, err, &errs)
			var at []string
			for _, e := range errs {
				if e.Pos == pos {
					at = append(at, e.Msg)
				}
			}
			require.Len(t, at, 1, "%s\n%v", text, err)
			assert.Contains(t, at[0], `unknown key "nokey"`)
		})
	}
}

// TestDocsNameOnlyRealKeys: a dotted name in backquotes anywhere in the
// README or docs/config.md whose first part is a key (`log.level`,
// `client_ip.trusted_proxies`, `timeouts.body_idle`) is the end of a key
// path the decoder accepts, so that the prose never names a key that does
// not exist.
func TestDocsNameOnlyRealKeys(t *testing.T) {
	accepted := acceptedKeys()
	names := map[string]bool{}
	for _, p := range accepted {
		for _, seg := range strings.Split(strings.ReplaceAll(p, "[]", ""), ".") {
			names[seg] = true
		}
	}
	plain := make([]string, len(accepted))
	for i, p := range accepted {
		plain[i] = "." + strings.ReplaceAll(strings.ReplaceAll(p, "[]", ""), ".*", "")
	}
	dotted := regexp.MustCompile(`^[a-z0-9_]+(\.[a-z0-9_]+)+$`)
	for _, doc := range []string{"../../README.md", configDoc} {
		data, err := os.ReadFile(doc)
		require.NoError(t, err)
		for i, line := range strings.Split(string(data), "\n") {
			for _, m := range backquoted.FindAllStringSubmatch(line, -1) {
				span := strings.ReplaceAll(m[1], "[]", "")
				if !dotted.MatchString(span) {
					continue
				}
				segs := strings.Split(span, ".")
				if !names[segs[0]] {
					continue // a file name or a value (`sekisho.yaml`, `1.2`), not a key
				}
				found := slices.ContainsFunc(plain, func(p string) bool { return strings.HasSuffix(p, "."+span) })
				assert.True(t, found, "%s:%d: `%s` is no key", doc, i+1, m[1])
			}
		}
	}
}
