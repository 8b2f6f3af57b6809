package config

import (
	"bytes"
	"fmt"
	"os"
	"reflect"
	"slices"
	"sort"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Load reads, expands, strictly decodes, defaults and validates the config
// file at path. It is pure: it starts nothing and touches nothing but the
// files the config names. Every problem found is returned at once as
// Errors, each with its file, line and column.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("loading config: %w", err)
	}
	return Parse(path, data, os.LookupEnv)
}

// Parse is Load for config text already read; file names it in errors and
// lookup resolves ${VAR} references (nil: os.LookupEnv). See env.go for
// how references are expanded.
func Parse(file string, data []byte, lookup func(string) (string, bool)) (*Config, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, Errors{{File: file, Pos: Pos{1, 1}, Msg: "the config file is empty"}}
	}
	if lookup == nil {
		lookup = os.LookupEnv
	}
	x := &expander{file: file, lookup: lookup}
	text, xerr := x.replace(data)
	if xerr != nil {
		return nil, Errors{*xerr}
	}
	root, perr := parseYAML(file, text)
	if perr != nil {
		return nil, Errors{*perr}
	}
	x.expandTree(root)
	if len(root.Content) == 0 {
		return nil, Errors{{File: file, Pos: Pos{1, 1}, Msg: "the config file is empty"}}
	}
	d := &decoder{file: file, pos: map[string]Pos{}, bad: x.bad, envNodes: x.env, env: map[string]*envUse{}}
	cfg := &Config{}
	d.decode(root.Content[0], reflect.ValueOf(cfg).Elem(), "")
	cfg.file, cfg.pos, cfg.env = file, d.pos, d.env
	if errs := append(x.errs, d.errs...); len(errs) > 0 {
		return nil, sortErrors(errs)
	}
	cfg.applyDefaults()
	if errs := cfg.validate(); len(errs) > 0 {
		return nil, sortErrors(errs)
	}
	return cfg, nil
}

func sortErrors(es Errors) Errors {
	sort.SliceStable(es, func(i, j int) bool {
		if es[i].Line != es[j].Line {
			return es[i].Line < es[j].Line
		}
		return es[i].Col < es[j].Col
	})
	return es
}

// at returns the position recorded for path, or for its closest recorded
// parent.
func (c *Config) at(path string) Pos {
	for {
		if p, ok := c.pos[path]; ok {
			return p
		}
		i := strings.LastIndexAny(path, ".[")
		if i < 0 {
			if p, ok := c.pos[""]; ok {
				return p
			}
			return Pos{1, 1}
		}
		path = path[:i]
	}
}

// File returns the path the config was loaded from.
func (c *Config) File() string { return c.file }

// Defaults, applied after decoding and before validation.
const (
	DefaultAdminListen    = "127.0.0.1:9901"
	DefaultShutdownGrace  = 15 * time.Second
	DefaultReadHeader     = 10 * time.Second
	DefaultIdle           = 120 * time.Second
	DefaultMaxHeaderBytes = 64 << 10
	DefaultConnect        = 2 * time.Second
	DefaultResponseHeader = 30 * time.Second
	DefaultUpstreamIdle   = 90 * time.Second
	DefaultBodyIdle       = 60 * time.Second
	DefaultMaxIdle        = 256
	// Passive ejection is on in every pool (outlier.enabled: false turns
	// it off), as nginx's max_fails=1 fail_timeout=10s.
	DefaultOutlierFailures = 1
	DefaultOutlierEject    = 10 * time.Second
)

// defInt sets *p to v when it is unset.
func defInt(p **int, v int) {
	if *p == nil {
		*p = &v
	}
}

func (c *Config) applyDefaults() {
	if c.Admin.Listen == "" {
		c.Admin.Listen = DefaultAdminListen
	}
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	defDur := func(d *Duration, v time.Duration) {
		if *d == 0 {
			*d = Duration(v)
		}
	}
	def(&c.Log.Level, "info")
	def(&c.Log.Format, "json")
	def(&c.Log.Access, "stdout")
	defDur(&c.ShutdownGrace, DefaultShutdownGrace)
	for i := range c.Listeners {
		l := &c.Listeners[i]
		defDur(&l.Timeouts.ReadHeader, DefaultReadHeader)
		defDur(&l.Timeouts.Idle, DefaultIdle)
		if l.MaxHeaderBytes == 0 {
			l.MaxHeaderBytes = DefaultMaxHeaderBytes
		}
		if l.TLS != nil {
			def(&l.TLS.MinVersion, "1.2")
		}
		for j := range l.Routes {
			def(&l.Routes[j].Match.PathPrefix, "/")
			if l.Routes[j].Upgrades == nil {
				l.Routes[j].Upgrades = []string{"websocket"}
			}
		}
	}
	for _, p := range c.Pools {
		if p == nil {
			continue
		}
		def(&p.Balance, "round_robin")
		def(&p.Protocol, "http1")
		if p.Retries == nil {
			p.Retries = &Retries{}
		}
		if r := p.Retries; r != nil {
			defInt(&r.Attempts, 1)
			if len(r.On) == 0 {
				r.On = []string{"connect-failure", "reset"}
			}
			if b := r.Backoff; b != nil {
				defDur(&b.Base, 25*time.Millisecond)
				defDur(&b.Max, 10*b.Base.D())
			}
			if r.Budget == nil {
				r.Budget = &RetryBudget{}
			}
			defInt(&r.Budget.Percent, 20)
			defInt(&r.Budget.MinConcurrency, 3)
		}
		for i := range p.Endpoints {
			// A dns+srv endpoint's weights are its records': it has none
			// of its own, so the effective config reads back as valid.
			if p.Endpoints[i].Weight == 0 && !p.Endpoints[i].srv() {
				p.Endpoints[i].Weight = 1
			}
		}
		defDur(&p.Timeouts.Connect, DefaultConnect)
		defDur(&p.Timeouts.ResponseHeader, DefaultResponseHeader)
		defDur(&p.Timeouts.Idle, DefaultUpstreamIdle)
		defDur(&p.Timeouts.BodyIdle, DefaultBodyIdle)
		if p.MaxIdlePerEndpoint == 0 {
			p.MaxIdlePerEndpoint = DefaultMaxIdle
		}
		if r := p.Readiness; r != nil {
			def(&r.Path, "/ready")
			defDur(&r.Interval, 2*time.Second)
			defDur(&r.Timeout, time.Second)
			if r.Rise == 0 {
				r.Rise = 2
			}
			if r.Fall == 0 {
				r.Fall = 3
			}
			if len(r.ExpectStatus) == 0 {
				r.ExpectStatus = []string{"200-299"}
			}
		}
		if s := p.Sticky; s != nil {
			s.applyDefaults()
		}
		if p.Outlier == nil {
			p.Outlier = &Outlier{}
		}
		if o := p.Outlier; o != nil {
			if o.Enabled == nil {
				on := true
				o.Enabled = &on
			}
			if o.ConsecutiveFailures == 0 {
				o.ConsecutiveFailures = DefaultOutlierFailures
			}
			defDur(&o.Eject, DefaultOutlierEject)
			defDur(&o.MaxEject, 10*o.Eject.D())
			if o.MaxEjectedPercent == nil {
				fifty := 50
				o.MaxEjectedPercent = &fifty
			}
		}
	}
}

// A MarshalOption changes what Marshal writes.
type MarshalOption int

const (
	// HideEnv writes each value that came from the environment as the
	// file wrote it (`token: ${TOKEN}`, `listen: 127.0.0.1:${PORT}`), not
	// as expanded, unless admin.show_env is true: what GET /config shows,
	// so that a secret passed by environment is not shown to whoever can
	// reach the admin port. The text still reads back as the same config
	// in the same environment.
	HideEnv MarshalOption = iota + 1
)

// Marshal returns the effective config as YAML, defaults filled in; it
// reads back (Parse) as the same config. Values from the environment are
// written expanded unless HideEnv is given.
func (c *Config) Marshal(opts ...MarshalOption) ([]byte, error) {
	var n yaml.Node
	if err := n.Encode(c); err != nil {
		return nil, fmt.Errorf("encoding config: %w", err)
	}
	var env map[string]*envUse
	if slices.Contains(opts, HideEnv) && !c.Admin.ShowEnv {
		env = c.env
	}
	escapeValues(&n, "", env)
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(&n); err != nil {
		return nil, fmt.Errorf("encoding config: %w", err)
	}
	return b.Bytes(), enc.Close()
}

// escapeValues writes each `$` of a value as `$$`, as Parse reads it, so
// that a value holding `${` reads back as itself; and a value whose path
// (named as the decoder names them) is in env as the file wrote it.
func escapeValues(n *yaml.Node, path string, env map[string]*envUse) {
	switch n.Kind {
	case yaml.DocumentNode:
		for _, c := range n.Content {
			escapeValues(c, path, env)
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			escapeValues(n.Content[i+1], joinPath(path, n.Content[i].Value), env)
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			escapeValues(c, fmt.Sprintf("%s[%d]", path, i), env)
		}
	case yaml.ScalarNode:
		if u := env[path]; u != nil {
			n.Value, n.Tag, n.Style = u.raw, "!!str", 0
		} else if strings.Contains(n.Value, "$") {
			n.Value = strings.ReplaceAll(n.Value, "$", "$$")
		}
	}
}

// FromEnv returns the environment variables the value at path was
// expanded from ("listeners[0].listen", "pools.web.endpoints[0].address",
// as errors and Marshal name them), or nil for a value written in the file.
func (c *Config) FromEnv(path string) []string {
	if u := c.env[path]; u != nil {
		return slices.Clone(u.names)
	}
	return nil
}

// Summary is the one-line description `sekisho validate` prints.
func (c *Config) Summary() string {
	routes := 0
	for _, l := range c.Listeners {
		routes += len(l.Routes)
	}
	return fmt.Sprintf("%s: ok: %d listener(s), %d route(s), %d pool(s)", c.file, len(c.Listeners), routes, len(c.Pools))
}
