package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
)

// Admin is the admin server: metrics, health, readiness, the effective
// config, pool state and reload. It listens on loopback by default.
type Admin struct {
	srv  *http.Server
	ln   net.Listener
	done chan struct{}
}

// StartAdmin listens on addr and serves the admin endpoints of d until
// Close. reload, when not nil, serves POST /reload.
func StartAdmin(addr string, d *Daemon, pprofOn bool) (*Admin, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(d.shared.Metrics.Registry, promhttp.HandlerOpts{ErrorLog: zap.NewStdLog(d.log)}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if ok, why := d.Ready(); !ok {
			http.Error(w, why, http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ready\n"))
	})
	mux.HandleFunc("GET /config", d.serveConfig)
	mux.HandleFunc("GET /pools", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, d.shared.Registry.Snapshot())
	})
	mux.HandleFunc("GET /shards", func(w http.ResponseWriter, _ *http.Request) {
		reports := []any{}
		if rt := d.server.Runtime(); rt != nil {
			for _, s := range rt.shards {
				reports = append(reports, s.HotKeysReport())
			}
		}
		writeJSON(w, http.StatusOK, reports)
	})
	mux.HandleFunc("POST /reload", d.serveReload)
	if pprofOn {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	a := &Admin{
		srv:  &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, ErrorLog: zap.NewStdLog(d.log)},
		ln:   ln,
		done: make(chan struct{}),
	}
	go func() {
		defer close(a.done)
		if err := a.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.log.Error("admin server stopped", zap.Error(err))
		}
	}()
	return a, nil
}

// Addr returns the admin server's bound address.
func (a *Admin) Addr() net.Addr { return a.ln.Addr() }

// Close stops the admin server and waits for it.
func (a *Admin) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := a.srv.Shutdown(ctx); err != nil {
		a.srv.Close()
	}
	<-a.done
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}
