// Package metrics holds every sekisho_ Prometheus metric in one place: the
// daemon, the pools and the listeners resolve the label children they need
// when a config is compiled, so that the request path never looks a label
// set up. It knows nothing of configs, pools or requests.
package metrics

import (
	"strconv"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Metrics holds every sekisho_ metric. One Metrics lives as long as the
// process and is shared by consecutive Runtimes, which resolve the label
// children they need when they compile so that the request path never looks
// a label set up.
type Metrics struct {
	Registry *prometheus.Registry

	Requests         *prometheus.CounterVec   // listener, route, code
	RequestDuration  *prometheus.HistogramVec // listener, route
	Upstream         *prometheus.CounterVec   // pool, endpoint, code
	UpstreamDuration *prometheus.HistogramVec // pool
	EndpointReady    *prometheus.GaugeVec     // pool, endpoint
	ShardRequests    *prometheus.CounterVec   // route, shard, overflow
	SplitRequests    *prometheus.CounterVec   // experiment, arm
	SplitUnknown     *prometheus.CounterVec   // experiment
	MirrorRequests   *prometheus.CounterVec   // pool, result
	ScatterLeaves    *prometheus.CounterVec   // route, leaf, result
	Reloads          *prometheus.CounterVec   // result
	ReloadOK         prometheus.Gauge
	ReloadTimestamp  prometheus.Gauge
	CertExpiry       *prometheus.GaugeVec   // listener, name
	TLSHandshakeErrs *prometheus.CounterVec // listener
	CertReloadErrs   *prometheus.CounterVec // listener
	Panics           prometheus.Counter
	ProxyProtoErrs   *prometheus.CounterVec // listener
	Connections      *prometheus.GaugeVec   // listener
	ConnsLimited     *prometheus.CounterVec // listener
	PoolOverflow     *prometheus.CounterVec // pool
	HTTP2Closed      *prometheus.CounterVec // listener, reason
	// UpstreamBodyTimeouts counts upstream bodies ended by the pool's
	// timeouts.body_idle; ClientWriteTimeouts, answers ended by the
	// listener's timeouts.write. Each cut the client's answer short.
	UpstreamBodyTimeouts *prometheus.CounterVec // pool
	ClientWriteTimeouts  *prometheus.CounterVec // listener
	// UpstreamRetries counts the retries of each pool by what they
	// retried (connect-failure, reset, 502, ...);
	// UpstreamRetryBudgetExhausted, the retries its budget refused.
	UpstreamRetries              *prometheus.CounterVec // pool, reason
	UpstreamRetryBudgetExhausted *prometheus.CounterVec // pool
	// DiscoveryResolutions counts the DNS resolutions of each pool's
	// discovered endpoints by result; DiscoveryEndpoints is how many
	// discovered endpoints the pool has in force; DiscoveryIgnored counts
	// the records an answer held but the pool could not use.
	DiscoveryResolutions *prometheus.CounterVec // pool, result
	DiscoveryEndpoints   *prometheus.GaugeVec   // pool
	DiscoveryIgnored     *prometheus.CounterVec // pool, reason
}

// New registers every metric, with the Go runtime and process
// collectors, on a fresh registry.
func New() *Metrics {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	f := func(c prometheus.Collector) { reg.MustRegister(c) }
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		v := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "sekisho", Name: name, Help: help}, labels)
		f(v)
		return v
	}
	buckets := []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}
	m := &Metrics{Registry: reg}
	m.Requests = counter("requests_total", "Requests answered, by listener, route and status code.", "listener", "route", "code")
	m.RequestDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "sekisho", Name: "request_duration_seconds",
		Help: "Time from request headers read to response handler done.", Buckets: buckets}, []string{"listener", "route"})
	f(m.RequestDuration)
	m.Upstream = counter("upstream_requests_total", "Attempts sent to endpoints, by pool, endpoint and status code (error: no response).", "pool", "endpoint", "code")
	m.UpstreamDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "sekisho", Name: "upstream_duration_seconds",
		Help: "Time from sending an attempt to its response headers.", Buckets: buckets}, []string{"pool"})
	f(m.UpstreamDuration)
	m.EndpointReady = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "sekisho", Name: "endpoint_ready",
		Help: "1 when the endpoint gets traffic (ready and not ejected), else 0."}, []string{"pool", "endpoint"})
	f(m.EndpointReady)
	m.ShardRequests = counter("shard_requests_total", "Requests by the shard that served them; overflow=true when bounded load moved them off their owner.", "route", "shard", "overflow")
	m.SplitRequests = counter("split_requests_total", "Requests by experiment arm.", "experiment", "arm")
	m.SplitUnknown = counter("split_unknown_overrides_total", "Override headers or cookies naming no arm of the experiment (ignored).", "experiment")
	m.MirrorRequests = counter("mirror_requests_total", "Mirror copies by result (sent, dropped, skipped_body, error).", "pool", "result")
	m.ScatterLeaves = counter("scatter_leaf_results_total", "Scatter leaf outcomes (ok, error, timeout, hedged_win).", "route", "leaf", "result")
	// The load at start is not a reload: both results start at 0, and the
	// gauge at 1, for "no reload has failed".
	m.Reloads = counter("config_reloads_total", "Config reloads by result (success, failure); the load at start is not counted.", "result")
	m.Reloads.WithLabelValues("success")
	m.Reloads.WithLabelValues("failure")
	m.ReloadOK = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "sekisho", Name: "config_last_reload_successful",
		Help: "0 if the last reload failed, else 1 (1 from the start until a reload fails)."})
	m.ReloadTimestamp = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "sekisho", Name: "config_last_reload_success_timestamp_seconds",
		Help: "When the config in force was put in force: at start, or by the last reload that changed it."})
	f(m.ReloadOK)
	f(m.ReloadTimestamp)
	m.CertExpiry = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "sekisho", Name: "tls_certificate_expiry_timestamp_seconds",
		Help: "NotAfter of each served certificate, as a Unix timestamp."}, []string{"listener", "name"})
	f(m.CertExpiry)
	m.TLSHandshakeErrs = counter("tls_handshake_errors_total", "Failed TLS handshakes.", "listener")
	m.CertReloadErrs = counter("tls_certificate_reload_errors_total", "Certificate rotations that failed to load (the old pair stays in use).", "listener")
	m.Panics = prometheus.NewCounter(prometheus.CounterOpts{Namespace: "sekisho", Name: "handler_panics_total", Help: "Panics recovered on the request path (answered 500)."})
	f(m.Panics)
	m.ProxyProtoErrs = counter("proxy_protocol_errors_total", "Connections closed for a bad or unexpected PROXY protocol header.", "listener")
	m.Connections = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "sekisho", Name: "listener_connections",
		Help: "Client connections open, by listener."}, []string{"listener"})
	f(m.Connections)
	m.ConnsLimited = counter("listener_connections_limited_total", "Times a listener stopped accepting because max_connections were open.", "listener")
	m.PoolOverflow = counter("pool_overflow_total", "Requests refused 503 because the pool had max_in_flight requests in flight.", "pool")
	m.HTTP2Closed = counter("http2_connections_closed_total", "HTTP/2 client connections ended with GOAWAY for abuse, by reason (rapid_reset, header_timeout).", "listener", "reason")
	m.UpstreamBodyTimeouts = counter("upstream_body_timeouts_total", "Upstream bodies that stalled for the pool's timeouts.body_idle; the client's answer was cut.", "pool")
	m.ClientWriteTimeouts = counter("client_write_timeouts_total", "Answers whose write to the client missed the listener's timeouts.write; the answer was cut.", "listener")
	m.UpstreamRetries = counter("upstream_retries_total", "Attempts sent again to another endpoint, by pool and the reason (connect-failure, reset, refused-stream, 502, 503, 504, timeout).", "pool", "reason")
	m.UpstreamRetryBudgetExhausted = counter("upstream_retry_budget_exhausted_total", "Retries not sent because the pool's retry budget was spent.", "pool")
	m.DiscoveryResolutions = counter("discovery_resolutions_total", "DNS resolutions of a pool's dns:// and dns+srv:// endpoints, by result (success, nxdomain, no_records, timeout, error); a failure keeps the last good set.", "pool", "result")
	m.DiscoveryEndpoints = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "sekisho", Name: "discovery_endpoints",
		Help: "Endpoints of the pool that came from DNS discovery, in force now."}, []string{"pool"})
	f(m.DiscoveryEndpoints)
	m.DiscoveryIgnored = counter("discovery_ignored_records_total", "Records of a DNS answer left out of the pool, by reason (srv_port_zero, over_max_endpoints).", "pool", "reason")
	m.ReloadOK.Set(1)
	return m
}

// CodeCounters resolves the child of a vector for each status code on first
// use and keeps it, so that counting an answer is an array load and an atomic
// add. The vector must have exactly one free label, the code. It is safe
// for concurrent use.
type CodeCounters struct {
	vec   *prometheus.CounterVec
	codes [600]atomic.Pointer[prometheus.Counter]
	other atomic.Pointer[prometheus.Counter]
}

// NewCodeCounters returns the counters of vec, whose one free label is the
// status code.
func NewCodeCounters(vec *prometheus.CounterVec) *CodeCounters {
	return &CodeCounters{vec: vec}
}

// Inc counts one answer with code; code 0 means no answer ("error").
func (c *CodeCounters) Inc(code int) {
	slot := &c.other
	if code > 0 && code < len(c.codes) {
		slot = &c.codes[code]
	}
	if p := slot.Load(); p != nil {
		(*p).Inc()
		return
	}
	label := "error"
	if code > 0 {
		label = strconv.Itoa(code)
	}
	counter := c.vec.WithLabelValues(label)
	slot.Store(&counter)
	counter.Inc()
}
