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

// Admin is an admin server: the full one (metrics, health, readiness, the
// effective config, pool state and reload), on loopback by default, or the
// read-only public one (StartPublicAdmin).
type Admin struct {
	srv  *http.Server
	ln   net.Listener
	done chan struct{}
}

// StartAdmin listens on addr and serves the admin endpoints of d until
// Close: metrics, health, readiness, the config, pool and shard state,
// POST /reload and, when pprofOn, the profiler.
func StartAdmin(addr string, d *Daemon, pprofOn bool) (*Admin, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	d.probeRoutes(mux)
	mux.HandleFunc("GET /config", d.serveConfig)
	mux.HandleFunc("GET /pools", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, d.pools())
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
	srv := &http.Server{Handler: noStore(mux), ReadHeaderTimeout: 5 * time.Second, ErrorLog: zap.NewStdLog(d.log)}
	return serveAdmin(srv, ln, d.log, "admin server stopped"), nil
}

// StartPublicAdmin listens on addr and serves, until Close, only what the
// pod network may see: GET and HEAD /healthz, /readyz and /metrics. Another
// method on those paths is 405 and any other path 404, so nothing there
// reloads, shows the config or profiles the process, whatever admin.pprof
// says.
func StartPublicAdmin(addr string, d *Daemon) (*Admin, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	d.probeRoutes(mux)
	// Unlike the loopback server's, its peers are not trusted to behave:
	// every phase of a request has a deadline and a head is small.
	srv := &http.Server{
		Handler:           noStore(mux),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          zap.NewStdLog(d.log),
	}
	return serveAdmin(srv, ln, d.log, "public admin server stopped"), nil
}

// probeRoutes adds what both admin servers serve: /metrics, /healthz and
// /readyz ("GET" patterns answer HEAD too).
func (d *Daemon) probeRoutes(mux *http.ServeMux) {
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
}

// noStore marks every admin answer, errors included, as not to be cached
// (health and state are only true when asked) and not to be sniffed.
func noStore(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		h.ServeHTTP(w, r)
	})
}

func serveAdmin(srv *http.Server, ln net.Listener, log *zap.Logger, stopped string) *Admin {
	a := &Admin{srv: srv, ln: ln, done: make(chan struct{})}
	go func() {
		defer close(a.done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error(stopped, zap.Error(err))
		}
	}()
	return a
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
