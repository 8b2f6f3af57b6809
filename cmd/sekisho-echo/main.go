// Command sekisho-echo is the test, demo and benchmark backend of sekisho: it
// names itself, echoes each request as JSON, and can be slowed down, made
// unready, made to fail mid-response, upgraded, or asked for search results
// that a scatter stage merges. It speaks HTTP/1.1 and cleartext HTTP/2.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// shutdownGrace is how long in-flight requests get to finish after SIGTERM.
const shutdownGrace = 5 * time.Second

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	code := run(ctx, os.Args[1:], os.Stderr)
	stop()
	os.Exit(code)
}

// config is what the command line asks for.
type config struct {
	listen string
	quiet  bool
	opts   options
}

func parseFlags(args []string, stderr io.Writer) (config, error) {
	var c config
	fs := flag.NewFlagSet("sekisho-echo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.listen, "listen", "127.0.0.1:9001", "address to serve on")
	fs.StringVar(&c.opts.name, "name", "", "name reported in bodies and X-Echo-Name (default: the listen address)")
	fs.DurationVar(&c.opts.delay, "delay", 0, "artificial delay added to every request but /ready, /healthz and /_echo/stats")
	fs.BoolVar(&c.opts.ready, "ready", true, "initial readiness, switchable by POST /ready?state=on|off")
	fs.StringVar(&c.opts.readyFile, "ready-file", "", "when set, /ready is ready only while this file exists")
	fs.BoolVar(&c.quiet, "quiet", true, "log only start and stop; -quiet=false logs every request")
	fs.BoolVar(&c.opts.tiny, "tiny", false, "answer every request with a fixed ~100-byte body (benchmarks)")
	if err := fs.Parse(args); err != nil {
		return config{}, err
	}
	if fs.NArg() > 0 {
		return config{}, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	if c.opts.delay < 0 {
		return config{}, fmt.Errorf("-delay %s: must not be negative", c.opts.delay)
	}
	return c, nil
}

// run serves until ctx ends, then drains for shutdownGrace. It returns the
// process exit code: 0 after a stop, 1 when serving could not start, 2 for a
// bad command line.
func run(ctx context.Context, args []string, stderr io.Writer) int {
	c, err := parseFlags(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(stderr, "sekisho-echo:", err)
		return 2
	}
	logger := log.New(stderr, "sekisho-echo: ", log.LstdFlags|log.Lmicroseconds)

	ln, err := net.Listen("tcp", c.listen)
	if err != nil {
		logger.Print(err)
		return 1
	}
	if c.opts.name == "" {
		c.opts.name = ln.Addr().String()
	}
	if !c.quiet {
		c.opts.logger = logger
	}
	srv := newHTTPServer(newServer(c.opts))

	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	logger.Printf("%s listening on %s", c.opts.name, ln.Addr())

	select {
	case err := <-served:
		logger.Printf("serve: %v", err)
		return 1
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		logger.Printf("requests still running after %s, closing: %v", shutdownGrace, err)
		srv.Close()
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		logger.Printf("serve: %v", err)
	}
	logger.Printf("%s stopped", c.opts.name)
	return 0
}
