package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"os"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"sekisho/proxy/config"
)

// ReloadResult says what a reload did.
type ReloadResult struct {
	Changed bool   `json:"changed"`
	Summary string `json:"summary"`
}

// Reload reads the config file again and puts it in force: Load, Compile,
// Start, swap, and the old Runtime closes when its requests end. A config
// identical to the one in force changes nothing. On any error the config in
// force keeps serving; the error is logged, counted and shown by /config.
// Every call counts in sekisho_config_reloads_total, the unchanged ones
// included: the operator asked, and the answer was "in force". Concurrent
// reloads run one after the other.
func (d *Daemon) Reload() (ReloadResult, error) {
	return d.reloadAndCount(false)
}

// catchUp is the config watch's first read, once the watch is in place: a
// write that landed between Start and the watch is put in force as a
// reload, but a file still equal to the one Start loaded is the boot's own
// config, not a reload, and counts as none.
func (d *Daemon) catchUp() {
	d.reloadAndCount(true)
}

func (d *Daemon) reloadAndCount(uncountedIfUnchanged bool) (ReloadResult, error) {
	d.reloadMu.Lock()
	defer d.reloadMu.Unlock()
	res, err := d.reload()
	m := d.shared.Metrics
	if err != nil {
		m.Reloads.WithLabelValues("failure").Inc()
		m.ReloadOK.Set(0)
		msg := err.Error()
		d.lastError.Store(&msg)
		d.log.Error("reload failed; the previous config stays in force", zap.Error(err))
		return res, err
	}
	if !res.Changed && uncountedIfUnchanged {
		return res, nil
	}
	m.Reloads.WithLabelValues("success").Inc()
	m.ReloadOK.Set(1)
	d.lastError.Store(nil)
	if res.Changed {
		m.ReloadTimestamp.Set(float64(time.Now().Unix()))
		d.log.Info("config reloaded", zap.String("summary", res.Summary))
	}
	return res, nil
}

func (d *Daemon) reload() (ReloadResult, error) {
	cur := d.cfg.Load()
	if d.opts.Path == "" {
		return ReloadResult{Summary: "no config file to read: nothing to do"}, nil
	}
	lookup := d.opts.Lookup
	if lookup == nil {
		lookup = os.LookupEnv
	}
	data, err := os.ReadFile(d.opts.Path)
	if err != nil {
		return ReloadResult{}, fmt.Errorf("loading config: %w", err)
	}
	cfg, err := config.Parse(d.opts.Path, data, lookup)
	if err != nil {
		return ReloadResult{}, err
	}
	text, err := cfg.Marshal()
	if err == nil && d.cfgText != nil && bytes.Equal(text, d.cfgText) {
		return ReloadResult{Summary: "config unchanged"}, nil
	}
	if cfg.Admin.Listen != cur.Admin.Listen || cfg.Admin.Pprof != cur.Admin.Pprof || cfg.Admin.PublicListen != cur.Admin.PublicListen {
		d.log.Warn("admin settings changed; they take effect on restart",
			zap.String("admin.listen", cfg.Admin.Listen), zap.String("admin.public_listen", cfg.Admin.PublicListen))
	}
	if err := d.server.Apply(cfg); err != nil {
		return ReloadResult{}, err
	}
	if d.level != nil && cfg.Log.Level != cur.Log.Level {
		var lv zapcore.Level
		if lv.UnmarshalText([]byte(cfg.Log.Level)) == nil {
			d.level.SetLevel(lv)
		}
	}
	if cfg.Log.Format != cur.Log.Format {
		d.log.Warn("log.format changed; it takes effect on restart", zap.String("log.format", cfg.Log.Format))
	}
	d.cfg.Store(cfg)
	d.cfgText = text
	d.logWarnings(cfg)
	return ReloadResult{Changed: true, Summary: cfg.Summary()}, nil
}

func (d *Daemon) serveReload(w http.ResponseWriter, _ *http.Request) {
	res, err := d.Reload()
	if err != nil {
		// errors holds one line per problem, each FILE:LINE:COL: message
		// when the config itself is at fault.
		writeJSON(w, http.StatusBadRequest, map[string]any{"ok": false, "error": err.Error(), "errors": problems(err)})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"ok": true, "changed": res.Changed, "summary": res.Summary})
}

// problems lists err's problems one per entry: each config.Error (with
// its FILE:LINE:COL) when the config is at fault, else err itself.
func problems(err error) []string {
	var es config.Errors
	if !errors.As(err, &es) {
		return []string{err.Error()}
	}
	out := make([]string, len(es))
	for i, e := range es {
		out[i] = e.Error()
	}
	return out
}
