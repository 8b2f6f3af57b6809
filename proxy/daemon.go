// Package proxy is sekisho's daemon: the Daemon (process log, admin server,
// signals, reload triggers), the Server (listeners, TLS termination, the
// atomic swap of the Runtime in force, graceful drain), the per-request
// entry (entry.go: inbound request cleaning, client identity, route match,
// access log), Compile (config -> Runtime: routes, stages and pools), HTTP/2
// serving behind a guard, the route limits, the admin endpoints and the file
// watch. It owns no wire format and no pool mechanics: the HTTP/1.x codec is
// http1, pools are proxy/upstream, the config language is proxy/config,
// metrics are proxy/metrics.
package proxy

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"sekisho/proxy/config"
)

// Options configure a Daemon beyond its config file.
type Options struct {
	// Path is the config file, read again on Reload; "" means the config
	// came from elsewhere (sidecar flags) and Reload has nothing to do.
	Path string
	// Log is the process logger; nil builds one from the config's log section.
	Log *zap.Logger
	// Lookup resolves ${VAR} on reload; nil means os.LookupEnv.
	Lookup func(string) (string, bool)
}

// Daemon is a running sekisho: the Server with its listeners, the admin
// server, and the reload machinery. Start returns a running Daemon;
// Shutdown stops it. Its methods are safe for concurrent use.
type Daemon struct {
	opts   Options
	shared *Shared
	log    *zap.Logger
	server *Server
	admin  *Admin
	public *Admin // admin.public_listen's server, nil when off

	reloadMu  sync.Mutex // one reload at a time
	cfg       atomic.Pointer[config.Config]
	cfgText   []byte // cfg marshalled, to compare a reload with; guarded by reloadMu
	lastError atomic.Pointer[string]
	wasReady  atomic.Bool      // the first probe rounds are done: reloads no longer gate readiness
	level     *zap.AtomicLevel // the process log's level, when the Daemon built the logger
}

// Start applies cfg, opens its listeners and the admin servers, and starts
// its probes. Nothing is left running when it fails.
func Start(cfg *config.Config, opts Options) (*Daemon, error) {
	log := opts.Log
	var level *zap.AtomicLevel
	if log == nil {
		l, lv, err := newLogger(cfg.Log)
		if err != nil {
			return nil, err
		}
		log, level = l, &lv
	}
	d := &Daemon{opts: opts, shared: NewShared(log), log: log, level: level}
	d.server = NewServer(d.shared)
	if err := d.server.Apply(cfg); err != nil {
		d.server.Shutdown(context.Background())
		return nil, err
	}
	d.cfg.Store(cfg)
	d.cfgText, _ = cfg.Marshal() // nil on error: the first reload then always applies
	d.logWarnings(cfg)
	d.shared.Metrics.ReloadOK.Set(1)
	d.shared.Metrics.ReloadTimestamp.Set(float64(time.Now().Unix()))
	if cfg.Admin.Listen != "off" {
		a, err := StartAdmin(cfg.Admin.Listen, d, cfg.Admin.Pprof)
		if err != nil {
			d.server.Shutdown(context.Background())
			return nil, fmt.Errorf("admin server: %w", err)
		}
		d.admin = a
	}
	if pl := cfg.Admin.PublicListen; pl != "" && pl != "off" {
		a, err := StartPublicAdmin(pl, d)
		if err != nil {
			if d.admin != nil {
				d.admin.Close()
			}
			d.server.Shutdown(context.Background())
			return nil, fmt.Errorf("public admin server: %w", err)
		}
		d.public = a
	}
	log.Info("sekisho started", zap.String("config", cfg.File()), zap.Int("listeners", len(cfg.Listeners)), zap.Int("pools", len(cfg.Pools)))
	return d, nil
}

// Server returns the Daemon's Server.
func (d *Daemon) Server() *Server { return d.server }

// Shared returns the state shared by the Daemon's Runtimes.
func (d *Daemon) Shared() *Shared { return d.shared }

// AdminAddr returns the admin server's address, or nil when it is off.
func (d *Daemon) AdminAddr() net.Addr {
	if d.admin == nil {
		return nil
	}
	return d.admin.Addr()
}

// PublicAdminAddr returns the public admin server's address, or nil when
// admin.public_listen is off.
func (d *Daemon) PublicAdminAddr() net.Addr {
	if d.public == nil {
		return nil
	}
	return d.public.Addr()
}

// Config returns the config in force.
func (d *Daemon) Config() *config.Config { return d.cfg.Load() }

// Ready reports whether the Daemon should get traffic: a config in force,
// its listeners open, every pool's first probe round done, and not draining.
// Only the first config's probe rounds gate readiness: after a reload, the
// endpoints the Daemon already knew keep their state and a new endpoint
// takes no request before it is ready, so there is no reason to turn
// /readyz 503 while the new Runtime's probes run their first round.
func (d *Daemon) Ready() (bool, string) {
	if d.server.Draining() {
		return false, "draining"
	}
	rt := d.server.Runtime()
	if rt == nil {
		return false, "no config in force"
	}
	if !d.wasReady.Load() {
		if why := rt.notReady(); why != "" {
			return false, why
		}
		d.wasReady.Store(true)
	}
	if pool := rt.closedGate(); pool != "" {
		return false, fmt.Sprintf("pool %q has no ready endpoint", pool)
	}
	return true, ""
}

// Shutdown drains: /readyz turns 503 at once, listeners stop accepting,
// in-flight requests have until ctx ends, then everything stops.
func (d *Daemon) Shutdown(ctx context.Context) error {
	d.log.Info("draining")
	err := d.server.Shutdown(ctx)
	if d.admin != nil {
		d.admin.Close()
	}
	if d.public != nil {
		d.public.Close()
	}
	d.log.Info("stopped")
	d.log.Sync()
	return err
}

func (d *Daemon) serveConfig(w http.ResponseWriter, _ *http.Request) {
	cfg := d.cfg.Load()
	out, err := cfg.Marshal(config.HideEnv)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/yaml")
	if p := d.lastError.Load(); p != nil {
		fmt.Fprintf(w, "# last reload failed; this config is still in force:\n")
		for _, line := range strings.Split(*p, "\n") {
			fmt.Fprintf(w, "#   %s\n", line)
		}
	}
	w.Write(out)
}

// logWarnings logs what cfg's validation found suspicious but not wrong (a
// route that an earlier one shadows), once per load.
func (d *Daemon) logWarnings(cfg *config.Config) {
	for _, w := range cfg.Warnings() {
		d.log.Warn("config warning", zap.String("at", w.Error()))
	}
}
