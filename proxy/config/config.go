// Package config is sekisho's config language: the schema of a config file
// (version 1), its strict decoding with the position of every value,
// ${VAR} expansion, defaults, and Validate, which reports every problem of
// a file at once as Errors, each with its FILE:LINE:COL. It is pure: Load
// reads the files a config names (certificates, CA bundles) and starts
// nothing. It knows the stage packages' Config types, to run their own
// checks and to convert a stage for proxy's Compile, but nothing of the
// daemon that runs a config (it never imports sekisho/proxy).
package config

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"sekisho/discovery"
)

// Config is the root of a sekisho config file (version 1). Load fills it,
// applies defaults and validates it; Compile turns it into a Runtime.
type Config struct {
	Version       int              `yaml:"version,omitempty"`        // required; 1 is the only version
	Admin         Admin            `yaml:"admin,omitempty"`          // see Admin for its defaults
	Log           Log              `yaml:"log,omitempty"`            // see Log for its defaults
	ShutdownGrace Duration         `yaml:"shutdown_grace,omitempty"` // default 15s
	Listeners     []Listener       `yaml:"listeners,omitempty"`      // at least one; no default
	Pools         map[string]*Pool `yaml:"pools,omitempty"`          // by name; default none
	// Discovery is the default discovery settings of every pool with
	// dns:// or dns+srv:// endpoints; a pool's own discovery section
	// overrides it field by field (see DiscoveryFor). Default nil: the
	// defaults of Discovery.
	Discovery *Discovery `yaml:"discovery,omitempty"`

	file string
	pos  map[string]Pos
	env  map[string]*envUse // the paths whose values came from the environment

	warnings Errors
}

// Admin is the admin server.
type Admin struct {
	Listen string `yaml:"listen,omitempty"` // default 127.0.0.1:9901; "off" disables it
	Pprof  bool   `yaml:"pprof,omitempty"`  // serve /debug/pprof/ (default false)
	// PublicListen is a second, read-only admin listener for the pod
	// network: it serves only GET and HEAD /healthz, /readyz and /metrics,
	// so that a kubelet and Prometheus reach them while admin.listen stays
	// on loopback. Default "" (or "off"): none.
	PublicListen string `yaml:"public_listen,omitempty"`
	// ShowEnv makes GET /config show the values that came from the
	// environment; by default it shows each as the file wrote it
	// (`${TOKEN}`), so that a secret passed by environment stays secret.
	ShowEnv bool `yaml:"show_env,omitempty"`
}

// Log sets the process log and the access log.
type Log struct {
	Level  string `yaml:"level,omitempty"`  // debug | info (default) | warn | error
	Format string `yaml:"format,omitempty"` // json (default) | console
	Access string `yaml:"access,omitempty"` // stdout (default) | stderr | off | a file path
}

// Listener is one listening socket and its routes.
type Listener struct {
	Name           string           `yaml:"name,omitempty"`             // required, unique; a label in metrics and logs
	Listen         string           `yaml:"listen,omitempty"`           // host:port; required
	TLS            *TLS             `yaml:"tls,omitempty"`              // default nil: plain HTTP (h2c by prior knowledge)
	ClientIP       ClientIP         `yaml:"client_ip,omitempty"`        // default: no trusted proxy
	ProxyProtocol  bool             `yaml:"proxy_protocol,omitempty"`   // expect a PROXY protocol header (default false)
	Timeouts       ListenerTimeouts `yaml:"timeouts,omitempty"`         // see ListenerTimeouts for defaults
	MaxHeaderBytes int              `yaml:"max_header_bytes,omitempty"` // default 64 KiB
	// MaxBodyBytes bounds a request body; a route's own max_body_bytes
	// overrides it (default 0: no limit).
	MaxBodyBytes int64 `yaml:"max_body_bytes,omitempty"`
	// MaxConnections bounds the client connections open at once; when it is
	// reached the listener stops accepting and new connections wait in the
	// kernel's backlog (default 0: no limit).
	MaxConnections int     `yaml:"max_connections,omitempty"`
	Routes         []Route `yaml:"routes,omitempty"` // at least one; matched in order of precedence
}

// TLS makes a listener terminate TLS.
type TLS struct {
	Certificates []Cert `yaml:"certificates,omitempty"`   // at least one; several are chosen by SNI
	MinVersion   string `yaml:"min_version,omitempty"`    // 1.0 | 1.1 | 1.2 (default) | 1.3
	ClientCAFile string `yaml:"client_ca_file,omitempty"` // set: clients need a cert it signed (mTLS); default "" (none)
	// ForwardClientCert sends the verified client certificate's subject
	// upstream as X-Client-Cert-Subject (default false).
	ForwardClientCert bool `yaml:"forward_client_cert,omitempty"`
	// CipherSuites are the TLS 1.2 suites offered, by crypto/tls (IANA)
	// name; only ECDHE suites with AES-GCM or ChaCha20-Poly1305 may be
	// named. Default: all six of those (certs.DefaultCipherSuites). TLS 1.3
	// suites are not configurable.
	CipherSuites []string `yaml:"cipher_suites,omitempty"`
	// CurvePreferences are the key exchanges offered (X25519MLKEM768,
	// SecP256r1MLKEM768, SecP384r1MLKEM1024, X25519, P-256, P-384, P-521).
	// Default: Go's, which is all of them.
	CurvePreferences []string `yaml:"curve_preferences,omitempty"`
}

// Cert is one certificate and its key, both PEM files.
type Cert struct {
	CertFile string `yaml:"cert_file,omitempty"`
	KeyFile  string `yaml:"key_file,omitempty"`
}

// ClientIP says whom to believe about the client's address.
type ClientIP struct {
	TrustedProxies []string `yaml:"trusted_proxies,omitempty"` // CIDRs or addresses
}

// ListenerTimeouts bound the client side of a connection.
type ListenerTimeouts struct {
	ReadHeader Duration `yaml:"read_header,omitempty"` // default 10s
	Read       Duration `yaml:"read,omitempty"`        // whole request; default 0 (none)
	Write      Duration `yaml:"write,omitempty"`       // whole response; default 0 (none)
	Idle       Duration `yaml:"idle,omitempty"`        // keep-alive idle; default 120s
}

// Route matches requests and runs them through a pipeline.
type Route struct {
	Name  string `yaml:"name,omitempty"`
	Match Match  `yaml:"match,omitempty"`
	// Upgrades are the protocols a client may switch to on this route
	// (Upgrade header, HTTP/1.1); an Upgrade for any other is stripped and
	// the request goes on as a plain one. Default [websocket]; [] allows
	// none; h2c is never allowed. Always written out, so that an empty
	// list reads back as itself.
	Upgrades []string `yaml:"upgrades"`
	Pipeline []Stage  `yaml:"pipeline,omitempty"`
	// MaxBodyBytes bounds a request body on this route (default: the
	// listener's max_body_bytes; 0: no limit).
	MaxBodyBytes *int64 `yaml:"max_body_bytes,omitempty"`
	// Timeout bounds the whole request, every attempt and retry included
	// (default 0: none).
	Timeout Duration `yaml:"timeout,omitempty"`
}

// Match selects requests for a route. Every field set must match.
type Match struct {
	Host       string            `yaml:"host,omitempty"`        // exact or *.suffix
	PathPrefix string            `yaml:"path_prefix,omitempty"` // default /
	Methods    []string          `yaml:"methods,omitempty"`
	Headers    map[string]string `yaml:"headers,omitempty"` // "" or "*" => present
}

// Stage is one pipeline stage: a one-key map.
type Stage struct {
	Proxy    *ProxyStage    `yaml:"proxy,omitempty"`
	Shard    *ShardStage    `yaml:"shard,omitempty"`
	Scatter  *ScatterStage  `yaml:"scatter,omitempty"`
	Split    *SplitStage    `yaml:"split,omitempty"`
	Mirror   *MirrorStage   `yaml:"mirror,omitempty"`
	Headers  *HeadersStage  `yaml:"headers,omitempty"`
	Respond  *RespondStage  `yaml:"respond,omitempty"`
	Redirect *RedirectStage `yaml:"redirect,omitempty"`
}

func (*Stage) oneOf() {}

// Kind names the stage's key ("proxy", "shard", ...), or "" for none.
func (s *Stage) Kind() string {
	switch {
	case s.Proxy != nil:
		return "proxy"
	case s.Shard != nil:
		return "shard"
	case s.Scatter != nil:
		return "scatter"
	case s.Split != nil:
		return "split"
	case s.Mirror != nil:
		return "mirror"
	case s.Headers != nil:
		return "headers"
	case s.Respond != nil:
		return "respond"
	case s.Redirect != nil:
		return "redirect"
	}
	return ""
}

// terminal reports whether the stage answers the request itself.
func (s *Stage) terminal() bool {
	switch s.Kind() {
	case "proxy", "shard", "scatter", "split", "respond", "redirect":
		return true
	}
	return false
}

// ProxyStage forwards to a pool; `proxy: NAME` is short for
// `proxy: {pool: NAME}`.
type ProxyStage struct {
	Pool string `yaml:"pool,omitempty"`
}

func (*ProxyStage) scalarField() string { return ".pool" }

func (p *ProxyStage) decodeScalar(s string) error {
	p.Pool = s
	return nil
}

// ShardStage is the shard stage (package sharding).
type ShardStage struct {
	Key               KeySpec  `yaml:"key,omitempty"`
	Shards            []string `yaml:"shards,omitempty"`
	BalanceFactor     float64  `yaml:"balance_factor,omitempty"`
	Partitions        int      `yaml:"partitions,omitempty"`
	ReplicationFactor int      `yaml:"replication_factor,omitempty"`
	Load              float64  `yaml:"load,omitempty"`
	OnUnavailable     string   `yaml:"on_unavailable,omitempty"` // fail | next
	MissingKey        string   `yaml:"missing_key,omitempty"`    // reject | random
	ExposeHeader      bool     `yaml:"expose_header,omitempty"`
	HotKeys           int      `yaml:"hot_keys,omitempty"`
}

// ScatterStage is the scatter stage (package scatter).
type ScatterStage struct {
	Leaves             []string   `yaml:"leaves,omitempty"`
	Timeout            Duration   `yaml:"timeout,omitempty"`
	HedgeAfter         HedgeAfter `yaml:"hedge_after,omitempty"`
	HedgeBudgetPercent *float64   `yaml:"hedge_budget_percent,omitempty"`
	MinSuccess         int        `yaml:"min_success,omitempty"`
	Merge              Merge      `yaml:"merge,omitempty"`
	MaxBodyBytes       int64      `yaml:"max_body_bytes,omitempty"`
	MaxLeafBodyBytes   int64      `yaml:"max_leaf_body_bytes,omitempty"`
}

// Merge says how scatter combines leaf answers.
type Merge struct {
	Array    string `yaml:"array,omitempty"`
	SortBy   string `yaml:"sort_by,omitempty"`
	Order    string `yaml:"order,omitempty"`
	Limit    int    `yaml:"limit,omitempty"`
	DedupeBy string `yaml:"dedupe_by,omitempty"`
	Object   string `yaml:"object,omitempty"`
	Concat   string `yaml:"concat,omitempty"`
}

// HedgeAfter is a duration or "auto".
type HedgeAfter struct {
	Duration time.Duration
	Auto     bool
}

func (*HedgeAfter) scalarField() string { return "" }

func (h *HedgeAfter) decodeScalar(s string) error {
	if s == "auto" {
		h.Auto = true
		return nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("bad duration %q (want a Go duration such as 30ms, or auto)", s)
	}
	h.Duration = d
	return nil
}

// SplitStage is an experiment split.
type SplitStage struct {
	Name           string  `yaml:"name,omitempty"`
	Key            KeySpec `yaml:"key,omitempty"`
	OverrideHeader string  `yaml:"override_header,omitempty"`
	OverrideCookie string  `yaml:"override_cookie,omitempty"`
	Arms           []Arm   `yaml:"arms,omitempty"`
}

// Arm is one arm of a split: a weight and a nested pipeline.
type Arm struct {
	Name     string  `yaml:"name,omitempty"`
	Weight   *int    `yaml:"weight,omitempty"`
	Pipeline []Stage `yaml:"pipeline,omitempty"`
}

// MirrorStage copies a share of requests to a shadow pool.
type MirrorStage struct {
	Pool         string   `yaml:"pool,omitempty"`
	Percent      *float64 `yaml:"percent,omitempty"` // default 100
	Key          KeySpec  `yaml:"key,omitempty"`
	MaxBodyBytes int64    `yaml:"max_body_bytes,omitempty"`
	MaxInFlight  int      `yaml:"max_in_flight,omitempty"`
	Timeout      Duration `yaml:"timeout,omitempty"`
}

// HeadersStage edits request and response headers.
type HeadersStage struct {
	Request  HeaderOps `yaml:"request,omitempty"`
	Response HeaderOps `yaml:"response,omitempty"`
}

// HeaderOps is a set of header edits, applied remove, set, add.
type HeaderOps struct {
	Set    map[string]string `yaml:"set,omitempty"`
	Add    map[string]string `yaml:"add,omitempty"`
	Remove []string          `yaml:"remove,omitempty"`
}

// RespondStage answers directly.
type RespondStage struct {
	Status  int               `yaml:"status,omitempty"` // default 200
	Body    string            `yaml:"body,omitempty"`
	Headers map[string]string `yaml:"headers,omitempty"`
}

// RedirectStage answers with a redirect built from the request.
type RedirectStage struct {
	Scheme string `yaml:"scheme,omitempty"`
	Host   string `yaml:"host,omitempty"`
	Port   string `yaml:"port,omitempty"`
	Path   string `yaml:"path,omitempty"`
	Status int    `yaml:"status,omitempty"` // 301 | 302 (default) | 307 | 308
	// DropQuery leaves the request's query off the location (default false).
	DropQuery bool `yaml:"drop_query,omitempty"`
}

// Pool is a set of replicas of one service.
type Pool struct {
	Endpoints []Endpoint   `yaml:"endpoints,omitempty"`
	Balance   string       `yaml:"balance,omitempty"` // round_robin (default) | least_request | random | ip_hash | hash
	HashKey   KeySpec      `yaml:"hash_key,omitempty"`
	Readiness *Readiness   `yaml:"readiness,omitempty"`
	Outlier   *Outlier     `yaml:"outlier,omitempty"`
	Retries   *Retries     `yaml:"retries,omitempty"` // default {attempts: 1}
	Timeouts  PoolTimeouts `yaml:"timeouts,omitempty"`
	PanicMode bool         `yaml:"panic_mode,omitempty"`
	SlowStart Duration     `yaml:"slow_start,omitempty"`
	Protocol  string       `yaml:"protocol,omitempty"` // http1 (default) | h2c | h2 (https endpoints)
	TLS       *UpstreamTLS `yaml:"tls,omitempty"`
	// MaxIdlePerEndpoint bounds kept-alive connections per endpoint (default 256).
	MaxIdlePerEndpoint int `yaml:"max_idle_per_endpoint,omitempty"`
	// MaxInFlight is a circuit breaker: with that many requests in flight to
	// the pool, another one is answered 503 at once (default 0: no limit).
	MaxInFlight int `yaml:"max_in_flight,omitempty"`
	// OverflowRetryAfter is the Retry-After of that 503, rounded up to whole
	// seconds (default 1s).
	OverflowRetryAfter Duration `yaml:"overflow_retry_after,omitempty"`
	// Sticky is cookie affinity (default none).
	Sticky *Sticky `yaml:"sticky,omitempty"`
	// Forwarded, "rfc7239", sends a Forwarded header upstream besides
	// X-Forwarded-* (default "": none).
	Forwarded string `yaml:"forwarded,omitempty"`
	// SetRealIP sends X-Real-IP with the client address (default false).
	SetRealIP bool `yaml:"set_real_ip,omitempty"`
	// Discovery overrides, field by field, the top-level discovery
	// settings for this pool's dns:// and dns+srv:// endpoints; only
	// allowed in a pool that has one. Default nil: the top level's.
	Discovery *Discovery `yaml:"discovery,omitempty"`
}

// DiscoveredScheme is the scheme of the endpoints a pool discovers: https
// when the pool has a tls section, http otherwise (a DNS record carries no
// scheme).
func (p *Pool) DiscoveredScheme() string {
	if p.TLS != nil {
		return "https"
	}
	return "http"
}

// Endpoint is one replica: `host:port`, `http://host:port`,
// `https://host:port`, a discovered set `dns://NAME:PORT` or
// `dns+srv://NAME`, or {address, weight}.
type Endpoint struct {
	Address string `yaml:"address,omitempty"`
	// Weight is the endpoint's relative share (default 1); for dns:// it
	// is the weight of each address found. A dns+srv:// endpoint takes
	// its weights from the SRV records, so it has none (0).
	Weight int `yaml:"weight,omitempty"`
}

// Discovered reports whether the endpoint is a set found by DNS (a dns://
// or dns+srv:// address) rather than one static address; ParseEndpoint
// refuses those, discovery.ParseTarget parses them.
func (e Endpoint) Discovered() bool { return discovery.IsTarget(e.Address) }

// srv reports whether the endpoint is a dns+srv:// set.
func (e Endpoint) srv() bool { return strings.HasPrefix(e.Address, discovery.SchemeDNSSRV) }

// Discovery sets how pools resolve their dns:// and dns+srv:// endpoints.
// A zero field takes the top level's value, then its default.
type Discovery struct {
	// Resolvers are the DNS servers asked, in order: IP or IP:port (port
	// 53 by default). Default: the nameservers of /etc/resolv.conf.
	Resolvers []string `yaml:"resolvers,omitempty"`
	// MinTTL and MaxTTL clamp the records' TTL into the re-resolution
	// interval. Defaults discovery.DefaultMinTTL (1s) and
	// discovery.DefaultMaxTTL (30s).
	MinTTL Duration `yaml:"min_ttl,omitempty"`
	MaxTTL Duration `yaml:"max_ttl,omitempty"`
	// Timeout bounds one query to one server. Default
	// discovery.DefaultTimeout (2s).
	Timeout Duration `yaml:"timeout,omitempty"`
	// MaxEndpoints bounds the endpoints kept from one name's answer.
	// Default discovery.DefaultMaxEndpoints (1024).
	MaxEndpoints int `yaml:"max_endpoints,omitempty"`
}

// over returns d with each field that o sets replaced by o's.
func (d Discovery) over(o *Discovery) Discovery {
	if o == nil {
		return d
	}
	if len(o.Resolvers) > 0 {
		d.Resolvers = o.Resolvers
	}
	if o.MinTTL != 0 {
		d.MinTTL = o.MinTTL
	}
	if o.MaxTTL != 0 {
		d.MaxTTL = o.MaxTTL
	}
	if o.Timeout != 0 {
		d.Timeout = o.Timeout
	}
	if o.MaxEndpoints != 0 {
		d.MaxEndpoints = o.MaxEndpoints
	}
	return d
}

// withDefaults fills the zero fields of d but Resolvers, whose nil means
// resolv.conf.
func (d Discovery) withDefaults() Discovery {
	if d.MinTTL == 0 {
		d.MinTTL = Duration(discovery.DefaultMinTTL)
	}
	if d.MaxTTL == 0 {
		d.MaxTTL = Duration(discovery.DefaultMaxTTL)
	}
	if d.Timeout == 0 {
		d.Timeout = Duration(discovery.DefaultTimeout)
	}
	if d.MaxEndpoints == 0 {
		d.MaxEndpoints = discovery.DefaultMaxEndpoints
	}
	return d
}

// DiscoveryFor returns the discovery settings in force for the named pool:
// its own section over the top-level one, field by field, with every
// default filled but Resolvers (nil: the nameservers of /etc/resolv.conf).
// The Resolvers slice is a copy.
func (c *Config) DiscoveryFor(pool string) Discovery {
	var own *Discovery
	if p := c.Pools[pool]; p != nil {
		own = p.Discovery
	}
	d := Discovery{}.over(c.Discovery).over(own).withDefaults()
	d.Resolvers = slices.Clone(d.Resolvers)
	return d
}

func (*Endpoint) scalarField() string { return ".address" }

func (e *Endpoint) decodeScalar(s string) error {
	e.Address = s
	return nil
}

// Readiness is the active readiness probe of a pool.
type Readiness struct {
	Path         string   `yaml:"path,omitempty"`          // default /ready
	Interval     Duration `yaml:"interval,omitempty"`      // default 2s
	Timeout      Duration `yaml:"timeout,omitempty"`       // default 1s
	Rise         int      `yaml:"rise,omitempty"`          // default 2
	Fall         int      `yaml:"fall,omitempty"`          // default 3
	ExpectStatus []string `yaml:"expect_status,omitempty"` // default 200-299
	Host         string   `yaml:"host,omitempty"`
	// GatesReadyz makes the admin /readyz answer 503 while no endpoint of
	// the pool is ready (default false: an edge proxy stays ready while a
	// pool is down, since every replica of it sees the same pool). A
	// sidecar sets it, so that its pod is ready only when its service is.
	GatesReadyz bool `yaml:"gates_readyz,omitempty"`
}

// Outlier is passive ejection, on by default (nginx's max_fails=1
// fail_timeout=10s, within max_ejected_percent); Enabled false turns it off.
type Outlier struct {
	Enabled             *bool    `yaml:"enabled,omitempty"`              // default true
	ConsecutiveFailures int      `yaml:"consecutive_failures,omitempty"` // default 1
	Eject               Duration `yaml:"eject,omitempty"`                // default 10s
	MaxEject            Duration `yaml:"max_eject,omitempty"`            // default 10 x eject
	MaxEjectedPercent   *int     `yaml:"max_ejected_percent,omitempty"`  // default 50
	Count5xx            bool     `yaml:"count_5xx,omitempty"`
}

// Retries says which failed attempts a pool sends again to an endpoint the
// request has not tried, in Envoy's vocabulary. The short form `retries: N`
// is {attempts: N}: connect failures and resets only, as before the long
// form existed.
type Retries struct {
	Attempts      *int          `yaml:"attempts,omitempty"`        // default 1
	On            []string      `yaml:"on,omitempty"`              // default [connect-failure, reset]
	PerTryTimeout Duration      `yaml:"per_try_timeout,omitempty"` // default 0: none
	Backoff       *RetryBackoff `yaml:"backoff,omitempty"`         // default none
	Budget        *RetryBudget  `yaml:"budget,omitempty"`          // default {percent: 20, min_concurrency: 3}
}

func (*Retries) scalarField() string { return ".attempts" }

func (r *Retries) decodeScalar(s string) error {
	n, err := strconv.Atoi(s)
	if err != nil {
		return fmt.Errorf("want an integer or a mapping, got %q", s)
	}
	r.Attempts = &n
	return nil
}

// RetryBackoff spaces a request's retries: before the k-th, a random wait
// of up to min(max, base x 2^(k-1)) (full jitter).
type RetryBackoff struct {
	Base Duration `yaml:"base,omitempty"` // default 25ms
	Max  Duration `yaml:"max,omitempty"`  // default 10 x base
}

// RetryBudget caps the retries in progress in a pool to a percentage of its
// requests in progress, never below min_concurrency.
type RetryBudget struct {
	Percent        *int `yaml:"percent,omitempty"`         // default 20; 0 disables retries
	MinConcurrency *int `yaml:"min_concurrency,omitempty"` // default 3
}

// PoolTimeouts bound the upstream side.
type PoolTimeouts struct {
	Connect        Duration `yaml:"connect,omitempty"`         // default 2s
	ResponseHeader Duration `yaml:"response_header,omitempty"` // default 30s
	Idle           Duration `yaml:"idle,omitempty"`            // idle keep-alive; default 90s
	// BodyIdle ends an upstream body that sends nothing for this long
	// between two of its bytes, cutting the client's answer; default 60s.
	BodyIdle Duration `yaml:"body_idle,omitempty"`
}

// UpstreamTLS configures https endpoints.
type UpstreamTLS struct {
	CAFile             string `yaml:"ca_file,omitempty"`
	ServerName         string `yaml:"server_name,omitempty"`
	CertFile           string `yaml:"cert_file,omitempty"`
	KeyFile            string `yaml:"key_file,omitempty"`
	InsecureSkipVerify bool   `yaml:"insecure_skip_verify,omitempty"`
}

// KeySpec is a request key: one source or a list, first present wins.
type KeySpec []string

func (*KeySpec) scalarField() string { return "[0]" }

func (k *KeySpec) decodeScalar(s string) error {
	*k = KeySpec{s}
	return nil
}

// String joins the sources with commas.
func (k KeySpec) String() string { return strings.Join(k, ",") }

// Duration is a time.Duration written as a Go duration string.
type Duration time.Duration

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// MarshalYAML writes d as a duration string.
func (d Duration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }

// MarshalYAML writes auto or a duration string.
func (h HedgeAfter) MarshalYAML() (any, error) {
	if h.Auto {
		return "auto", nil
	}
	if h.Duration == 0 {
		return nil, nil
	}
	return h.Duration.String(), nil
}
