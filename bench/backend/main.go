// Command backend is the benchmark's upstream: it answers every request with
// the same small JSON body and names itself in X-Echo-Name, so that a load
// run measures the proxy in front of it rather than the backend, and the
// harness can count how a proxy spreads requests over several of them.
//
// The body is about 100 bytes of JSON with a one-element "results" array,
// which lets the scatter stage merge the answers of several backends.
// Keep-alive is on (net/http's default) and there are no timeouts but the
// idle one, because the harness, not the backend, bounds a run.
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"strconv"
	"time"

	"sekisho/bench/internal/serve"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:18001", "address to serve on")
	name := flag.String("name", "b1", "name sent in X-Echo-Name and in the body")
	flag.Parse()

	if err := run(*listen, *name); err != nil {
		log.Fatalf("backend: %v", err)
	}
}

func run(listen, name string) error {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", listen, err)
	}
	srv := &http.Server{
		Handler:           fixedReply(name),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       5 * time.Minute,
	}

	return serve.Until(srv, func() error { return srv.Serve(ln) })
}

// body returns the fixed reply of the backend called name. The nginx backend
// of bench/run.sh sends the same bytes, so both backends cost the proxies the
// same.
func body(name string) []byte {
	const width = 100
	head := fmt.Sprintf(`{"backend":%q,"results":[{"id":%q,"score":1}],"pad":"`, name, name)
	const tail = "\"}\n"
	pad := width - len(head) - len(tail)
	if pad < 0 {
		pad = 0
	}
	b := make([]byte, 0, width)
	b = append(b, head...)
	for range pad {
		b = append(b, 'x')
	}
	return append(b, tail...)
}

func fixedReply(name string) http.Handler {
	b := body(name)
	length := []string{strconv.Itoa(len(b))}
	ctype := []string{"application/json"}
	echo := []string{name}
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		h := w.Header()
		// Assigning the slices directly skips canonicalisation and the
		// per-request allocations of Header.Set.
		h["Content-Type"] = ctype
		h["Content-Length"] = length
		h["X-Echo-Name"] = echo
		_, _ = w.Write(b)
	})
}
