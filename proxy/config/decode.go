package config

import (
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Pos is a position in a config file, 1-based.
type Pos struct {
	Line, Col int
}

// Error is one problem in a config file, at a position.
type Error struct {
	File string
	Pos
	Msg string
}

// Error formats the problem as FILE:LINE:COL: message.
func (e Error) Error() string {
	return fmt.Sprintf("%s:%d:%d: %s", e.File, e.Line, e.Col, e.Msg)
}

// Errors is every problem found in one config file, in file order.
type Errors []Error

// Error returns one problem per line.
func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// scalarShorthand is implemented by config types that also accept a scalar
// in place of their mapping form (`- proxy: web` for `- proxy: {pool: web}`).
type scalarShorthand interface {
	decodeScalar(value string) error
	// scalarField is the path, within the mapping form, of the field the
	// scalar fills (".pool", "[0]"), or "" when the type writes itself
	// out as a scalar.
	scalarField() string
}

// oneOf is implemented by structs that must hold exactly one of their keys
// (a pipeline stage).
type oneOf interface {
	oneOf()
}

var (
	shorthandType = reflect.TypeFor[scalarShorthand]()
	oneOfType     = reflect.TypeFor[oneOf]()
	durationType  = reflect.TypeFor[Duration]()
)

// decoder walks a yaml.Node tree into Go values strictly: an unknown key, a
// duplicate key or a value of the wrong kind is an error at the node's
// position. It keeps going after an error so that one pass reports them all,
// and records the position of every value by its path ("pools.web.retries")
// so that validation can point at the value it rejects.
type decoder struct {
	file string
	errs Errors
	pos  map[string]Pos
	// bad holds the scalars whose expansion failed, reported already;
	// envNodes those that took a value from the environment, and env
	// records their paths.
	bad      map[*yaml.Node]bool
	envNodes map[*yaml.Node]*envUse
	env      map[string]*envUse
}

func (d *decoder) errorf(n *yaml.Node, format string, args ...any) {
	d.errs = append(d.errs, Error{File: d.file, Pos: Pos{n.Line, n.Column}, Msg: fmt.Sprintf(format, args...)})
}

func (d *decoder) decode(n *yaml.Node, v reflect.Value, path string) {
	for n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	d.pos[path] = Pos{n.Line, n.Column}
	if u := d.envNodes[n]; u != nil {
		d.env[path] = u
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" && v.Kind() != reflect.Struct {
		v.Set(reflect.Zero(v.Type()))
		return
	}
	if v.Kind() == reflect.Pointer {
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		d.decode(n, v.Elem(), path)
		return
	}
	if n.Kind == yaml.ScalarNode && reflect.PointerTo(v.Type()).Implements(shorthandType) {
		s, ok := d.scalar(n)
		if !ok {
			return
		}
		sh := v.Addr().Interface().(scalarShorthand)
		if err := sh.decodeScalar(s); err != nil {
			d.errorf(n, "%s: %v", lastKey(path), err)
		}
		if u := d.env[path]; u != nil {
			// The value fills one field of the mapping form, where it
			// is written out (see Marshal).
			delete(d.env, path)
			d.env[path+sh.scalarField()] = u
		}
		return
	}
	switch v.Kind() {
	case reflect.Struct:
		d.decodeStruct(n, v, path)
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			d.errorf(n, "%s: want a list, got %s", lastKey(path), describe(n))
			return
		}
		s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
		for i, c := range n.Content {
			d.decode(c, s.Index(i), fmt.Sprintf("%s[%d]", path, i))
		}
		v.Set(s)
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			d.errorf(n, "%s: want a mapping, got %s", lastKey(path), describe(n))
			return
		}
		m := reflect.MakeMapWithSize(v.Type(), len(n.Content)/2)
		d.pairs(n, func(k, val *yaml.Node, key string) {
			d.pos[path+"."+key+"#key"] = Pos{k.Line, k.Column}
			e := reflect.New(v.Type().Elem()).Elem()
			d.decode(val, e, path+"."+key)
			m.SetMapIndex(reflect.ValueOf(key).Convert(v.Type().Key()), e)
		})
		v.Set(m)
	default:
		s, ok := d.scalar(n)
		if !ok {
			return
		}
		if err := setScalar(v, s); err != nil {
			d.errorf(n, "%s: %v", lastKey(path), err)
		}
	}
}

func (d *decoder) decodeStruct(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.MappingNode {
		if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
			return
		}
		d.errorf(n, "%s: want a mapping, got %s", lastKey(path), describe(n))
		return
	}
	fields := yamlFields(v.Type())
	seen := d.pairs(n, func(k, val *yaml.Node, key string) {
		idx, ok := fields[key]
		if !ok {
			d.errorf(k, "unknown key %q%s (known: %s)", key, inWhat(path), strings.Join(slices.Sorted(maps.Keys(fields)), ", "))
			return
		}
		d.decode(val, v.Field(idx), joinPath(path, key))
	})
	if reflect.PointerTo(v.Type()).Implements(oneOfType) && len(seen) != 1 {
		keys := slices.Sorted(maps.Keys(seen))
		if len(keys) == 0 {
			d.errorf(n, "a stage is a one-key map such as `proxy: POOL`; got an empty map")
		} else {
			d.errorf(n, "a stage is a one-key map such as `proxy: POOL`; got %d keys (%s)", len(keys), strings.Join(keys, ", "))
		}
	}
}

// pairs calls fn for each key of mapping n, once: a key that is not a
// scalar, or that comes again, is reported instead. It returns the keys seen.
func (d *decoder) pairs(n *yaml.Node, fn func(k, val *yaml.Node, key string)) map[string]bool {
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		if d.bad[k] {
			seen[k.Value] = true // reported: a key, though not one to decode
			continue
		}
		key, ok := d.scalar(k)
		if !ok {
			continue
		}
		if seen[key] {
			d.errorf(k, "duplicate key %q", key)
			continue
		}
		seen[key] = true
		fn(k, val, key)
	}
	return seen
}

// scalar returns the scalar value of n (expanded already), or reports a
// non-scalar. A scalar whose expansion failed was reported then.
func (d *decoder) scalar(n *yaml.Node) (string, bool) {
	for n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	if n.Kind != yaml.ScalarNode {
		d.errorf(n, "want a single value, got %s", describe(n))
		return "", false
	}
	if d.bad[n] {
		return "", false
	}
	return n.Value, true
}

func setScalar(v reflect.Value, s string) error {
	switch v.Kind() {
	case reflect.String:
		v.SetString(s)
	case reflect.Bool:
		switch s {
		case "true":
			v.SetBool(true)
		case "false":
			v.SetBool(false)
		default:
			return fmt.Errorf("want true or false, got %q", s)
		}
	case reflect.Int, reflect.Int64, reflect.Int32:
		if v.Type() == durationType {
			dur, err := time.ParseDuration(s)
			if err != nil {
				return fmt.Errorf("bad duration %q (want a Go duration such as 150ms or 2s)", s)
			}
			v.SetInt(int64(dur))
			return nil
		}
		i, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return fmt.Errorf("want an integer, got %q", s)
		}
		v.SetInt(i)
	case reflect.Float64:
		f, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return fmt.Errorf("want a number, got %q", s)
		}
		v.SetFloat(f)
	default:
		return fmt.Errorf("cannot hold a %s", v.Kind())
	}
	return nil
}

func yamlFields(t reflect.Type) map[string]int {
	m := map[string]int{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if tag == "" || tag == "-" {
			continue
		}
		m[tag] = i
	}
	return m
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		return fmt.Sprintf("%q", n.Value)
	}
	return "nothing"
}

func joinPath(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func lastKey(path string) string {
	if i := strings.LastIndexByte(path, '.'); i >= 0 {
		return path[i+1:]
	}
	if path == "" {
		return "config"
	}
	return path
}

func inWhat(path string) string {
	if path == "" {
		return ""
	}
	return " in " + path
}
