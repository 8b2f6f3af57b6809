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
	"strings"
	"syscall"

	"go.uber.org/zap"

	"sekisho/proxy"
	"sekisho/proxy/config"
)

// configFlag defines -config, whose default is SEKISHO_CONFIG.
func configFlag(fs *flag.FlagSet) *string {
	return fs.String("config", os.Getenv("SEKISHO_CONFIG"), "config `file` (env SEKISHO_CONFIG); a FILE argument may stand instead")
}

// configPath is the config file of run and validate: the FILE argument or
// -config, never both; SEKISHO_CONFIG when neither is given. An error is a
// usage error.
func configPath(fs *flag.FlagSet, flagValue string, args []string) (string, error) {
	explicit := false
	fs.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "config" })
	switch {
	case len(args) > 1:
		if strings.HasPrefix(args[1], "-") {
			return "", fmt.Errorf("unexpected argument %q (flags go before FILE)", args[1])
		}
		return "", fmt.Errorf("one config file, got %d: %s", len(args), strings.Join(args, " "))
	case len(args) == 1 && explicit:
		return "", fmt.Errorf("the config file is given twice: -config %s and %s", flagValue, args[0])
	case len(args) == 1:
		return args[0], nil
	case flagValue == "":
		return "", errors.New("a config file is required: FILE, -config FILE or SEKISHO_CONFIG")
	}
	return flagValue, nil
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

func validateSetup(fs *flag.FlagSet) func([]string, io.Writer, io.Writer) int {
	flagPath := configFlag(fs)
	return func(args []string, stdout, stderr io.Writer) int {
		path, err := configPath(fs, *flagPath, args)
		if err != nil {
			return lookup("validate").usageError(stderr, "%v", err)
		}
		cfg, err := config.Load(path)
		if err != nil {
			printLoadError(stderr, err)
			return exitError
		}
		for _, w := range cfg.Warnings() {
			fmt.Fprintf(stderr, "%s:%d:%d: warning: %s\n", w.File, w.Line, w.Col, w.Msg)
		}
		fmt.Fprintln(stdout, cfg.Summary())
		return exitOK
	}
}

func runSetup(fs *flag.FlagSet) func([]string, io.Writer, io.Writer) int {
	flagPath := configFlag(fs)
	watch := fs.Bool("watch", true, "reload when the config file changes")
	return func(args []string, stdout, stderr io.Writer) int {
		path, err := configPath(fs, *flagPath, args)
		if err != nil {
			return lookup("run").usageError(stderr, "%v", err)
		}
		cfg, err := config.Load(path)
		if err != nil {
			printLoadError(stderr, err)
			return exitError
		}
		return serve(cfg, proxy.Options{Path: path}, *watch, stderr)
	}
}

// serve runs a Daemon until SIGTERM or SIGINT, reloading on SIGHUP (and on
// file changes when watch is set), then drains within the config's
// shutdown_grace and returns 0.
func serve(cfg *config.Config, opts proxy.Options, watch bool, stderr io.Writer) int {
	tuneGC()
	// The signals are caught before the listeners open: a SIGTERM sent as
	// soon as the first request is answered drains rather than kills.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	d, err := proxy.Start(cfg, opts)
	if err != nil {
		fmt.Fprintf(stderr, "sekisho: %v\n", err)
		return exitError
	}
	log := d.Shared().Log
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
	return exitOK
}
