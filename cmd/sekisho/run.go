package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"go.uber.org/zap"

	"sekisho/proxy"
	"sekisho/proxy/config"
)

func configFlag(fs *flag.FlagSet) *string {
	return fs.String("config", os.Getenv("SEKISHO_CONFIG"), "config file (env SEKISHO_CONFIG)")
}

// DefaultGOGC is the GC target sekisho runs with when GOGC is not set. A
// proxy's live heap is small and its garbage is almost all per-request, so
// collecting at 5x the live heap instead of 2x costs a few tens of MB and
// buys about a tenth of the CPU per request (bench/RESULTS.md). GOGC in the
// environment, and GOMEMLIMIT, are honoured as usual.
const DefaultGOGC = 400

func tuneGC() {
	if _, set := os.LookupEnv("GOGC"); !set {
		debug.SetGCPercent(DefaultGOGC)
	}
}

// printLoadError prints a config error as FILE:LINE:COL: message lines.
func printLoadError(w io.Writer, err error) {
	var ce config.Errors
	if errors.As(err, &ce) {
		for _, e := range ce {
			fmt.Fprintln(w, e.Error())
		}
		return
	}
	fmt.Fprintf(w, "sekisho: %v\n", err)
}

func validateCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("validate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := configFlag(fs)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *path == "" {
		fmt.Fprintln(stderr, "sekisho validate: -config is required (or SEKISHO_CONFIG)")
		return 2
	}
	cfg, err := config.Load(*path)
	if err != nil {
		printLoadError(stderr, err)
		return 1
	}
	fmt.Fprintln(stdout, cfg.Summary())
	return 0
}

func runCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := configFlag(fs)
	watch := fs.Bool("watch", true, "reload when the config file changes")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *path == "" {
		fmt.Fprintln(stderr, "sekisho run: -config is required (or SEKISHO_CONFIG)")
		return 2
	}
	cfg, err := config.Load(*path)
	if err != nil {
		printLoadError(stderr, err)
		return 1
	}
	return serve(cfg, proxy.Options{Path: *path}, *watch, stderr)
}

// serve runs a Daemon until SIGTERM or SIGINT, reloading on SIGHUP (and on
// file changes when watch is set), then drains within the config's
// shutdown_grace and returns 0.
func serve(cfg *config.Config, opts proxy.Options, watch bool, stderr io.Writer) int {
	tuneGC()
	d, err := proxy.Start(cfg, opts)
	if err != nil {
		fmt.Fprintf(stderr, "sekisho: %v\n", err)
		return 1
	}
	log := d.Env().Log
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	var w *proxy.ConfigWatch
	if watch && opts.Path != "" {
		if w, err = proxy.WatchConfig(ctx, d); err != nil {
			log.Warn("cannot watch the config file; reload with SIGHUP or POST /reload", zap.Error(err))
		}
	}
	for {
		select {
		case <-hup:
			d.Reload()
			continue
		case <-ctx.Done():
		}
		break
	}
	if w != nil {
		w.Close() // before the drain: a write now must not count as a failed reload
	}
	grace := d.Config().ShutdownGrace.D()
	sctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	if err := d.Shutdown(sctx); err != nil {
		log.Warn("grace period over; closed the remaining connections", zap.Error(err))
	}
	return 0
}
