// Command refproxy is the benchmark's reference row: a plain
// httputil.ReverseProxy that spreads requests round robin over fixed
// backends with a Transport tuned for keep-alive. It shows what the standard
// library alone costs, so that sekisho's own overhead can be read as the gap
// between the two rows of the same run.
//
// It does nothing else: no health checks, no retries, no logging of
// requests. With -cert and -key it terminates TLS (HTTP/1.1 and HTTP/2).
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"sekisho/bench/internal/serve"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:18201", "address to serve on")
	backends := flag.String("backends", "127.0.0.1:18001,127.0.0.1:18002,127.0.0.1:18003", "comma-separated host:port list, balanced round robin")
	idle := flag.Int("idle-per-host", 64, "idle keep-alive connections kept per backend")
	cert := flag.String("cert", "", "PEM certificate; with -key, serve TLS")
	key := flag.String("key", "", "PEM private key")
	flag.Parse()

	targets, err := parseBackends(*backends)
	if err != nil {
		log.Fatalf("refproxy: %v", err)
	}
	if err := run(*listen, newProxy(targets, *idle), *cert, *key); err != nil {
		log.Fatalf("refproxy: %v", err)
	}
}

func parseBackends(list string) ([]*url.URL, error) {
	var targets []*url.URL
	for hostport := range strings.SplitSeq(list, ",") {
		hostport = strings.TrimSpace(hostport)
		if hostport == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(hostport); err != nil {
			return nil, fmt.Errorf("backend %q: %w", hostport, err)
		}
		targets = append(targets, &url.URL{Scheme: "http", Host: hostport})
	}
	if len(targets) == 0 {
		return nil, errors.New("no backends")
	}
	return targets, nil
}

func newProxy(targets []*url.URL, idlePerHost int) *httputil.ReverseProxy {
	transport := &http.Transport{
		DialContext:           (&net.Dialer{Timeout: 2 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:          idlePerHost * len(targets),
		MaxIdleConnsPerHost:   idlePerHost,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: 30 * time.Second,
		// The backends speak HTTP/1.1 only, as they do behind every peer.
		ForceAttemptHTTP2:  false,
		DisableCompression: true,
	}
	var next atomic.Uint64
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			target := targets[(next.Add(1)-1)%uint64(len(targets))]
			pr.SetURL(target)
			pr.SetXForwarded()
		},
		Transport:  transport,
		BufferPool: newBufferPool(),
		ErrorLog:   log.New(io.Discard, "", 0),
		ErrorHandler: func(w http.ResponseWriter, _ *http.Request, _ error) {
			w.WriteHeader(http.StatusBadGateway)
		},
	}
}

func run(listen string, handler http.Handler, cert, key string) error {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", listen, err)
	}
	srv := &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          log.New(io.Discard, "", 0),
	}

	return serve.Until(srv, func() error {
		if cert != "" || key != "" {
			return srv.ServeTLS(ln, cert, key)
		}
		return srv.Serve(ln)
	})
}
