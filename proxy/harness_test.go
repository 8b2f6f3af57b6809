package proxy

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"sekisho/proxy/certs/certstest"
	"sekisho/proxy/config"
)

// edgePreamble starts most test configs: the admin server and one
// listener, edge, on 127.0.0.1 port 0, with the access log off. The rest of
// the listener's keys (routes first) and the pools follow it.
const edgePreamble = `version: 1
admin: {listen: "127.0.0.1:0"}
log: {access: off}
listeners:
  - name: edge
    listen: 127.0.0.1:0
`

// testDaemon is a real sekisho on 127.0.0.1 port 0, from a config file.
type testDaemon struct {
	t      *testing.T
	d      *Daemon
	path   string
	access string
	logs   *observer.ObservedLogs
	client *http.Client
}

// startDaemon writes text (with {{ACCESS}} replaced by an access log path)
// to a file, loads it and starts it; it is shut down when the test ends.
func startDaemon(t *testing.T, text string) *testDaemon {
	t.Helper()
	dir := t.TempDir()
	td := &testDaemon{t: t, path: filepath.Join(dir, "sekisho.yaml"), access: filepath.Join(dir, "access.log")}
	text = strings.ReplaceAll(text, "{{ACCESS}}", td.access)
	require.NoError(t, os.WriteFile(td.path, []byte(text), 0o644))
	cfg, err := config.Load(td.path)
	require.NoError(t, err)
	core, logs := observer.New(zap.DebugLevel)
	td.logs = logs
	td.d, err = Start(cfg, Options{Path: td.path, Log: zap.New(core)})
	require.NoError(t, err)
	td.client = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}, Timeout: 10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	t.Cleanup(func() {
		td.client.CloseIdleConnections()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		td.d.Shutdown(ctx)
	})
	return td
}

// url returns the base URL of the listener named name.
func (td *testDaemon) url(name string) string {
	addr := td.d.Server().Addr(name)
	require.NotNil(td.t, addr, "listener %q", name)
	return "http://" + addr.String()
}

func (td *testDaemon) admin() string { return "http://" + td.d.AdminAddr().String() }

// get sends a request and returns the response with its body read.
func (td *testDaemon) do(req *http.Request) (*http.Response, string) {
	td.t.Helper()
	resp, err := td.client.Do(req)
	require.NoError(td.t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(td.t, err)
	return resp, string(b)
}

func (td *testDaemon) get(url string, headers ...string) (*http.Response, string) {
	td.t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	require.NoError(td.t, err)
	for i := 0; i+1 < len(headers); i += 2 {
		if strings.EqualFold(headers[i], "Host") {
			req.Host = headers[i+1]
			continue
		}
		req.Header.Set(headers[i], headers[i+1])
	}
	return td.do(req)
}

// accessLines returns the access log's lines decoded, waiting until there
// are at least n (the log is flushed every 250ms).
func (td *testDaemon) accessLines(n int) []map[string]any {
	td.t.Helper()
	var lines []map[string]any
	require.Eventually(td.t, func() bool {
		f, err := os.Open(td.access)
		if err != nil {
			return false
		}
		defer f.Close()
		lines = lines[:0]
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) == nil {
				lines = append(lines, m)
			}
		}
		return len(lines) >= n
	}, 5*time.Second, 20*time.Millisecond)
	return lines
}

// metric returns the value of one sample of /metrics, or -1 when absent.
func (td *testDaemon) metric(name string, labels ...string) float64 {
	td.t.Helper()
	_, body := td.get(td.admin() + "/metrics")
	return sampleValue(body, name, labels...)
}

func sampleValue(body, name string, labels ...string) float64 {
	for _, line := range strings.Split(body, "\n") {
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		ok := true
		for i := 0; i+1 < len(labels); i += 2 {
			if !strings.Contains(line, fmt.Sprintf("%s=%q", labels[i], labels[i+1])) {
				ok = false
				break
			}
		}
		if !ok {
			continue
		}
		var v float64
		fmt.Sscanf(line[strings.LastIndexByte(line, ' ')+1:], "%g", &v)
		return v
	}
	return -1
}

// backend is a named upstream that records what it saw.
type backend struct {
	*httptest.Server
	name  string
	hits  atomic.Int64
	mu    sync.Mutex
	last  *http.Request
	ready atomic.Bool
	delay atomic.Int64 // nanoseconds per request
}

func newBackend(t *testing.T, name string) *backend {
	t.Helper()
	b := &backend{name: name}
	b.ready.Store(true)
	b.Server = httptest.NewServer(http.HandlerFunc(b.serve))
	t.Cleanup(b.Close)
	return b
}

func (b *backend) serve(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/ready" {
		if !b.ready.Load() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ready")
		return
	}
	b.hits.Add(1)
	b.mu.Lock()
	b.last = r.Clone(context.Background())
	b.mu.Unlock()
	if d := time.Duration(b.delay.Load()); d > 0 {
		select {
		case <-time.After(d):
		case <-r.Context().Done():
			return
		}
	}
	io.Copy(io.Discard, r.Body)
	w.Header().Set("X-Echo-Name", b.name)
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, `{"name":%q,"path":%q}`, b.name, r.URL.Path)
}

func (b *backend) lastRequest() *http.Request {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.last
}

// noLeaks checks, after every other cleanup of the test has run, that the
// test left no goroutine behind. Call it first in the test: cleanups run
// last-registered first.
func noLeaks(t *testing.T) {
	t.Helper()
	opt := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, opt) })
}

// freeAddr returns a loopback address nothing listens on: a dead endpoint,
// or an address for a listener to take.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	return ln.Addr().String()
}

// addr is the backend's host:port.
func (b *backend) addr() string { return strings.TrimPrefix(b.URL, "http://") }

// writeTestCert issues a certificate for localhost into dir and returns the
// cert file (the key is dir/tls.key).
func writeTestCert(t *testing.T, dir string) string {
	ca := certstest.NewCA(t)
	p := ca.Issue(t, dir, "localhost", "127.0.0.1")
	require.NoError(t, os.Rename(p.KeyFile, filepath.Join(dir, "tls.key")))
	return p.CertFile
}
