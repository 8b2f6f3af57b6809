package config

import (
	"bytes"
	"fmt"
	"os"
	"reflect"
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
// lookup resolves ${VAR} references.
func Parse(file string, data []byte, lookup func(string) (string, bool)) (*Config, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, Errors{{File: file, Pos: Pos{1, 1}, Msg: "the config file is empty"}}
	}
	root, perr := parseYAML(file, data)
	if perr != nil {
		return nil, Errors{*perr}
	}
	if len(root.Content) == 0 {
		return nil, Errors{{File: file, Pos: Pos{1, 1}, Msg: "the config file is empty"}}
	}
	d := &decoder{file: file, pos: map[string]Pos{}, env: lookup}
	cfg := &Config{}
	d.decode(root.Content[0], reflect.ValueOf(cfg).Elem(), "")
	cfg.file, cfg.pos = file, d.pos
	if len(d.errs) > 0 {
		return nil, sortErrors(d.errs)
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
)

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
			one := 1
			p.Retries = &one
		}
		for i := range p.Endpoints {
			if p.Endpoints[i].Weight == 0 {
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
		if o := p.Outlier; o != nil {
			if o.ConsecutiveFailures == 0 {
				o.ConsecutiveFailures = 5
			}
			defDur(&o.Eject, 30*time.Second)
			defDur(&o.MaxEject, 10*o.Eject.D())
			if o.MaxEjectedPercent == nil {
				fifty := 50
				o.MaxEjectedPercent = &fifty
			}
		}
	}
}

// Marshal returns the effective config as YAML (for GET /config).
func (c *Config) Marshal() ([]byte, error) {
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(c); err != nil {
		return nil, fmt.Errorf("encoding config: %w", err)
	}
	return b.Bytes(), enc.Close()
}

// Summary is the one-line description `sekisho validate` prints.
func (c *Config) Summary() string {
	routes := 0
	for _, l := range c.Listeners {
		routes += len(l.Routes)
	}
	return fmt.Sprintf("%s: ok: %d listener(s), %d route(s), %d pool(s)", c.file, len(c.Listeners), routes, len(c.Pools))
}
