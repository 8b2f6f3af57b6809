package proxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"sekisho/discovery"
	"sekisho/internal/dnstest"
)

// Benchmarks of pools whose endpoints come from DNS, the figures of issue
// 17's closing note: how long a DNS change takes to bring traffic to a new
// endpoint, and what re-resolving 100 pools every second costs. Each is one
// measurement of many seconds, whatever b.N (the window is the unit); run
// them with `make bench-discovery`. They report figures and assert none.

// BenchmarkDiscoveryChangeToTraffic times, 20 times over, a DNS change to the
// first request its new endpoint receives: a real daemon, a dns:// pool over
// a real DNS server (TTL 1s, so re-resolution every 1s less up to 10%
// jitter), a steady load of two workers. Each round swaps the pool's fourth
// record for a backend that is not in the set (round 0 only adds one), so
// the endpoint taken out is out, at the same resolution, before the next
// round starts. A round waits a fraction of the re-resolution interval
// before its change, the fractions spread evenly over 20 rounds in random
// order, so that the changes land at every phase of the resolution cycle as
// real ones do; without it each change would land just after a resolution
// and wait a whole interval. The figure is dominated by that wait.
//
// probes=on gives the pool readiness probes (interval 100ms, rise 2). They
// add one probe's round trip, not an interval: a brand-new endpoint is
// probed at once and is ready on its first pass (rise applies to endpoints
// with a history; see health.Endpoint.recordProbe).
func BenchmarkDiscoveryChangeToTraffic(b *testing.B) {
	for _, tc := range []struct{ name, probes string }{
		{"probes=off", ""},
		{"probes=on", "readiness: {path: /ready, interval: 100ms, timeout: 100ms, rise: 2, fall: 3}"},
	} {
		b.Run(tc.name, func(b *testing.B) { changeToTraffic(b, tc.probes) })
	}
}

func changeToTraffic(b *testing.B, probes string) {
	const rounds = 20
	const name = "web.shop.test."
	dns := dnstest.Start(b)
	port, bs := hitBackendsOnOnePort(b, 5) // b1-b3 stay; b4 and b5 take turns
	base := []string{bs[0].ip, bs[1].ip, bs[2].ip}
	dns.SetA(name, 1, base...)
	d := benchStart(b, edgePreamble+`    routes:
      - {name: all, pipeline: [{proxy: web}]}
discovery: {resolvers: ["`+dns.Addr()+`"]}
pools:
  web:
    endpoints: ["dns://web.shop.test:`+strconv.Itoa(port)+`"]
    `+probes+`
`)
	td := benchClient(b, d)
	benchWaitReady(b, td)
	src := d.server.Runtime().discovered["web"].parts[0].w.src

	stats, stop := steadyLoad(td, "http://"+d.Server().Addr("edge").String()+"/", 2, nil, nil)
	defer stop()
	waitUntil(b, 10*time.Second, "the three first backends take traffic", func() bool {
		return bs[0].hits.Load() > 0 && bs[1].hits.Load() > 0 && bs[2].hits.Load() > 0
	})

	var toTraffic, toResolution, afterResolution []time.Duration
	for i, phase := range rand.Perm(rounds) {
		// (phase + 0.5) / rounds of the re-resolution interval since the
		// last change took effect, which was just after a resolution.
		time.Sleep(time.Duration(2*phase+1) * discovery.DefaultMinTTL / (2 * rounds))
		nb := bs[3+i%2]
		hit := nb.arm()
		changed := time.Now()
		dns.SetA(name, 1, append(slices.Clone(base), nb.ip)...)
		var first time.Time
		select {
		case first = <-hit:
		case <-time.After(10 * time.Second):
			b.Fatalf("round %d: %s had no request 10s after its record was added", i, nb.ip)
		}
		resolved := src.State().LastSuccess // the resolution that applied the change
		toTraffic = append(toTraffic, first.Sub(changed))
		toResolution = append(toResolution, resolved.Sub(changed))
		afterResolution = append(afterResolution, first.Sub(resolved))
	}
	ok, failures, _ := stats.snapshot()
	stop()

	b.Logf("DNS change to first request, ms, in round order: %s", msList(toTraffic))
	b.Logf("of which change to the resolution that saw it: %s", msList(toResolution))
	b.Logf("and that resolution to the first request: %s", msList(afterResolution))
	b.Logf("steady load: %d requests succeeded, %d failed %v", ok, len(failures), firstFew(failures, 3))
	b.ReportMetric(0, "ns/op") // the whole run's time says nothing
	b.ReportMetric(ms(quantile(toTraffic, 0.5)), "ms-median")
	b.ReportMetric(ms(quantile(toTraffic, 0.9)), "ms-p90")
	b.ReportMetric(ms(quantile(toTraffic, 1)), "ms-max")
	b.ReportMetric(ms(quantile(toTraffic, 0)), "ms-min")
	b.ReportMetric(ms(quantile(toResolution, 0.5)), "ms-to-resolution-median")
	b.ReportMetric(ms(quantile(afterResolution, 0.5)), "ms-after-resolution-median")
	b.ReportMetric(float64(len(failures)), "failed-requests")
}

// benchPools is how many pools BenchmarkDiscovery100Pools runs.
const benchPools = 100

// BenchmarkDiscovery100Pools measures what re-resolving 100 pools every
// second costs: a daemon with 100 pools, each dns://svcN.shop.test:8080
// over 3 to 5 A records with a TTL of 1s, against the same daemon with the
// same endpoints written statically, over a window of benchWindow.
//
// The DNS server runs in a process of its own (this test binary, running
// BenchmarkDiscoveryDNSProcess), so that the CPU figures (getrusage of this
// process over the window, as a share of one core) are the daemon's alone;
// the server's own CPU is reported apart (server-*). Heap is HeapInuse
// after a GC, less the same before the daemon started, per pool; goroutines
// likewise. The daemon logs at info level, JSON to a discarding writer, as
// a real one pays for its log.
//
//   - static: 100 pools with static endpoints, the baseline.
//   - dns: 100 dns:// pools whose records do not change.
//   - dns-flapping: every name alternates between 3 and 4 records every
//     second, so nearly every resolution changes a pool's set
//     (SetEndpoints, the registry, metrics, the change's log line).
//   - sources-only: 100 discovery.Sources and nothing else, no daemon: the
//     cost of the resolutions themselves.
//
// resolutions/s reads about 100 where the mean interval (1s less 0-10%
// jitter) gives about 105: the Sources start together and stay nearly in
// phase, so a 10s window holds 10 resolutions of each. CPU per resolution
// is not affected.
func BenchmarkDiscovery100Pools(b *testing.B) {
	p := startDNSProcess(b)
	b.Run("static", func(b *testing.B) { hundredPools(b, p, false, false) })
	b.Run("dns", func(b *testing.B) { hundredPools(b, p, true, false) })
	b.Run("dns-flapping", func(b *testing.B) { hundredPools(b, p, true, true) })
	b.Run("sources-only", func(b *testing.B) { hundredSources(b, p) })
}

// benchWindow is the measuring window of BenchmarkDiscovery100Pools, and
// benchSettle the time its daemon runs before it: long enough for every
// Source to resolve again after its first resolution.
const (
	benchWindow = 10 * time.Second
	benchSettle = 2 * time.Second
)

func hundredPools(b *testing.B, p *dnsProcess, discovered, flapping bool) {
	var cfg strings.Builder
	cfg.WriteString(edgePreamble + `    routes:
      - {name: all, pipeline: [{proxy: svc0}]}
`)
	if discovered {
		fmt.Fprintf(&cfg, "discovery: {resolvers: [%q]}\n", p.addr)
	}
	cfg.WriteString("pools:\n")
	for i := range benchPools {
		if discovered {
			fmt.Fprintf(&cfg, "  svc%d:\n    endpoints: [\"dns://%s:8080\"]\n", i, strings.TrimSuffix(svcName(i), "."))
			continue
		}
		fmt.Fprintf(&cfg, "  svc%d:\n    endpoints:\n", i)
		for _, a := range svcAddrs(i, svcRecords(i)) {
			fmt.Fprintf(&cfg, "      - %s:8080\n", a)
		}
	}

	before := heapAfterGC()
	g0 := runtime.NumGoroutine()
	var changes atomic.Int64
	log := zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()),
		zapcore.AddSync(io.Discard), zap.InfoLevel), zap.Hooks(func(e zapcore.Entry) error {
		if e.Message == "discovered endpoints changed" {
			changes.Add(1)
		}
		return nil
	}))
	d := benchStartLog(b, cfg.String(), log)
	td := benchClient(b, d)
	benchWaitReady(b, td)
	if flapping {
		p.send("flap")
		defer p.send("steady")
	}
	time.Sleep(benchSettle)

	heap := heapAfterGC()
	goroutines := runtime.NumGoroutine() - g0
	td.client.CloseIdleConnections() // the scrapes' connection: not the daemon's
	res0 := metricSum(b, td, "sekisho_discovery_resolutions_total")
	ch0 := changes.Load()
	w := startWindow(p)
	time.Sleep(benchWindow)
	w.stop()
	res := metricSum(b, td, "sekisho_discovery_resolutions_total") - res0
	ch := changes.Load() - ch0
	grown := heapAfterGC() - heap

	b.ReportMetric(0, "ns/op")
	b.ReportMetric(w.cpuShare(), "cpu-%core")
	b.ReportMetric(float64(heap-before)/benchPools, "heap-B/pool")
	b.ReportMetric(float64(goroutines)/benchPools, "goroutines/pool")
	b.ReportMetric(float64(grown)/1024, "heap-growth-KiB")
	w.reportServer(b)
	if discovered {
		b.ReportMetric(res/w.wall.Seconds(), "resolutions/s")
		b.ReportMetric(float64(ch)/w.wall.Seconds(), "set-changes/s")
		b.ReportMetric(float64(w.cpu.Microseconds())/res, "cpu-µs/resolution")
	}
	b.Logf("%d pools over %s: %s CPU (%.2f%% of one core), %.0f resolutions, %d set changes, %d DNS queries (the server used %s); heap %+d B over the daemon's start, %+d B over the window; %d goroutines",
		benchPools, w.wall.Round(time.Millisecond), w.cpu, w.cpuShare(), res, ch, w.queries, w.serverCPU, heap-before, grown, goroutines)
}

// hundredSources runs 100 discovery.Sources, each with its own Resolver as
// the daemon gives each, against the DNS process, and nothing else.
func hundredSources(b *testing.B, p *dnsProcess) {
	before := heapAfterGC()
	g0 := runtime.NumGoroutine()
	var resolutions atomic.Int64
	srcs := make([]*discovery.Source, benchPools)
	for i := range srcs {
		r := &discovery.Resolver{Servers: []string{p.addr},
			OnResult: func(string, bool) { resolutions.Add(1) }}
		target, err := discovery.ParseTarget("dns://" + strings.TrimSuffix(svcName(i), ".") + ":8080")
		if err != nil {
			b.Fatal(err)
		}
		srcs[i] = discovery.NewSource(r, target, nil)
		if err := srcs[i].Start(context.Background()); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(srcs[i].Close)
	}
	waitUntil(b, 10*time.Second, "every Source resolves", func() bool {
		for _, s := range srcs {
			if !s.State().Resolved {
				return false
			}
		}
		return true
	})
	time.Sleep(benchSettle)
	heap := heapAfterGC()
	goroutines := runtime.NumGoroutine() - g0
	res0 := resolutions.Load()
	w := startWindow(p)
	time.Sleep(benchWindow)
	w.stop()
	res := float64(resolutions.Load() - res0)

	b.ReportMetric(0, "ns/op")
	b.ReportMetric(w.cpuShare(), "cpu-%core")
	b.ReportMetric(float64(heap-before)/benchPools, "heap-B/pool")
	b.ReportMetric(float64(goroutines)/benchPools, "goroutines/pool")
	b.ReportMetric(res/w.wall.Seconds(), "resolutions/s")
	b.ReportMetric(float64(w.cpu.Microseconds())/res, "cpu-µs/resolution")
	w.reportServer(b)
	b.Logf("%d Sources over %s: %s CPU (%.2f%% of one core), %.0f resolutions, %d DNS queries (the server used %s); heap %+d B; %d goroutines",
		benchPools, w.wall.Round(time.Millisecond), w.cpu, w.cpuShare(), res, w.queries, w.serverCPU, heap-before, goroutines)
}

// window is one measuring window: this process's CPU and wall time, and
// the DNS process's CPU and queries.
type window struct {
	p                    *dnsProcess
	start                time.Time
	cpu0, serverCPU0     time.Duration
	queries0             int64
	wall, cpu, serverCPU time.Duration
	queries              int64
}

func startWindow(p *dnsProcess) *window {
	w := &window{p: p}
	w.serverCPU0, w.queries0 = p.stat()
	w.start, w.cpu0 = time.Now(), processCPU()
	return w
}

func (w *window) stop() {
	w.cpu, w.wall = processCPU()-w.cpu0, time.Since(w.start)
	cpu, q := w.p.stat()
	w.serverCPU, w.queries = cpu-w.serverCPU0, q-w.queries0
}

// cpuShare is this process's CPU over the window, in % of one core.
func (w *window) cpuShare() float64 { return 100 * w.cpu.Seconds() / w.wall.Seconds() }

func (w *window) reportServer(b *testing.B) {
	b.ReportMetric(100*w.serverCPU.Seconds()/w.wall.Seconds(), "server-cpu-%core")
	if w.queries > 0 {
		b.ReportMetric(float64(w.serverCPU.Microseconds())/float64(w.queries), "server-cpu-µs/query")
	}
}

// svcName is the DNS name of pool i of BenchmarkDiscovery100Pools.
func svcName(i int) string { return fmt.Sprintf("svc%d.shop.test.", i) }

// svcRecords is how many A records svcName(i) has when steady: 3 to 5.
func svcRecords(i int) int { return 3 + i%3 }

// svcAddrs are the first n addresses of pool i: nothing listens there, and
// nothing dials them (the pools have no probes and take no traffic).
func svcAddrs(i, n int) []string {
	out := make([]string, n)
	for k := range out {
		out[k] = fmt.Sprintf("10.%d.%d.%d", 1+i/250, i%250, k+1)
	}
	return out
}

// benchDNSEnv, set in its environment, makes the test binary the DNS
// process of BenchmarkDiscovery100Pools.
const benchDNSEnv = "SEKISHO_BENCH_DNS_PROCESS"

// BenchmarkDiscoveryDNSProcess measures nothing: it is the DNS server of
// BenchmarkDiscovery100Pools, in a process of its own so that the
// benchmark's CPU figures are the daemon's alone. It skips unless the
// benchmark started it (a benchmark, not a test, so that no test of the
// suite ever skips). It serves svcName(i) for every pool, prints its
// address, then obeys one command a line on stdin until stdin closes:
// "flap" (every name alternates between 3 and 4 records every second),
// "steady" (back to svcRecords(i) records each), "stat" (prints its CPU
// time in ns and the queries it received).
func BenchmarkDiscoveryDNSProcess(b *testing.B) {
	if os.Getenv(benchDNSEnv) == "" {
		b.Skip("the DNS process of BenchmarkDiscovery100Pools; runs only when it starts it")
	}
	dns := dnstest.Start(b)
	set := func(n func(i int) int) {
		for i := range benchPools {
			dns.SetA(svcName(i), 1, svcAddrs(i, n(i))...)
		}
	}
	set(svcRecords)
	fmt.Printf("addr %s\n", dns.Addr())
	stopFlap := func() {}
	defer func() { stopFlap() }()
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		switch in.Text() {
		case "flap":
			stopFlap()
			done, stopped := make(chan struct{}), make(chan struct{})
			go func() {
				defer close(stopped)
				tick := time.NewTicker(time.Second)
				defer tick.Stop()
				for n := 4; ; n = 7 - n {
					set(func(int) int { return n })
					select {
					case <-done:
						return
					case <-tick.C:
					}
				}
			}()
			stopFlap = func() { close(done); <-stopped; stopFlap = func() {} }
		case "steady":
			stopFlap()
			set(svcRecords)
		case "stat":
			udp, tcp := dns.Queries()
			fmt.Printf("stat %d %d\n", processCPU().Nanoseconds(), udp+tcp)
		}
	}
}

// dnsProcess is the DNS server of BenchmarkDiscovery100Pools, in a child
// process: this test binary running BenchmarkDiscoveryDNSProcess.
type dnsProcess struct {
	addr string
	in   io.WriteCloser
	out  *bufio.Scanner
}

func startDNSProcess(b *testing.B) *dnsProcess {
	b.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$", "-test.bench=^BenchmarkDiscoveryDNSProcess$", "-test.benchtime=1x", "-test.count=1")
	cmd.Env = append(os.Environ(), benchDNSEnv+"=1")
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		in.Close() // the process ends when its stdin does
		io.Copy(io.Discard, out)
		cmd.Wait()
	})
	p := &dnsProcess{in: in, out: bufio.NewScanner(out)}
	// The testing package's own output (goos, goarch, ..., and the
	// benchmark's name, with no newline) comes first.
	for p.out.Scan() && !strings.Contains(p.out.Text(), "addr ") {
	}
	_, addr, ok := strings.Cut(p.out.Text(), "addr ")
	if !ok {
		b.Fatalf("the DNS process did not start: %q %v", p.out.Text(), p.out.Err())
	}
	p.addr = addr
	return p
}

func (p *dnsProcess) send(cmd string) {
	if _, err := io.WriteString(p.in, cmd+"\n"); err != nil {
		panic("the DNS process is gone: " + err.Error())
	}
}

// stat returns the DNS process's CPU time and the queries it received.
func (p *dnsProcess) stat() (time.Duration, int64) {
	p.send("stat")
	var cpu, queries int64
	if !p.out.Scan() {
		panic(fmt.Sprintf("the DNS process is gone: %v", p.out.Err()))
	}
	if _, err := fmt.Sscanf(p.out.Text(), "stat %d %d", &cpu, &queries); err != nil {
		panic(fmt.Sprintf("the DNS process said %q: %v", p.out.Text(), err))
	}
	return time.Duration(cpu), queries
}

// processCPU is the user and system CPU time this process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		panic(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// heapAfterGC is HeapInuse once a GC has swept what is garbage.
func heapAfterGC() int64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapInuse)
}

// benchClient wraps d for the helpers of the e2e tests (fetch, steadyLoad,
// metricNow), which use only its client and admin address.
func benchClient(b *testing.B, d *Daemon) *testDaemon {
	td := &testDaemon{d: d, client: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}, Timeout: 10 * time.Second}}
	b.Cleanup(td.client.CloseIdleConnections)
	return td
}

func benchWaitReady(b *testing.B, td *testDaemon) {
	b.Helper()
	waitUntil(b, 10*time.Second, "/readyz turns 200", func() bool {
		resp, err := td.client.Get(td.admin() + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

// waitUntil polls cond every 5ms until it holds, failing b after limit.
func waitUntil(b *testing.B, limit time.Duration, what string, cond func() bool) {
	b.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			b.Fatalf("%s: not within %s", what, limit)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// metricSum sums every series of the counter or gauge name in /metrics.
func metricSum(b *testing.B, td *testDaemon, name string) float64 {
	b.Helper()
	resp, err := td.client.Get(td.admin() + "/metrics")
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		b.Fatal(err)
	}
	var sum float64
	for _, line := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(line, name+"{") || strings.HasPrefix(line, name+" ") {
			v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
			if err != nil {
				b.Fatalf("%s: %v", line, err)
			}
			sum += v
		}
	}
	return sum
}

// hitBackend is a backend of BenchmarkDiscoveryChangeToTraffic: it answers
// every request with its name, and once armed, reports when its first
// request came.
type hitBackend struct {
	ip   string
	hits atomic.Int64
	hit  atomic.Pointer[chan time.Time]
}

func (h *hitBackend) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	now := time.Now()
	if r.URL.Path != "/ready" {
		h.hits.Add(1)
		if ch := h.hit.Swap(nil); ch != nil {
			*ch <- now
		}
	}
	w.Header().Set("X-Echo-Name", h.ip)
	io.WriteString(w, h.ip)
}

// arm returns a channel that receives the time of the next request.
func (h *hitBackend) arm() <-chan time.Time {
	ch := make(chan time.Time, 1)
	h.hit.Store(&ch)
	return ch
}

// hitBackendsOnOnePort starts n backends on 127.0.0.1 .. 127.0.0.n, all on
// one port, so that an A record names each (as backendsOnOnePort does).
func hitBackendsOnOnePort(b *testing.B, n int) (int, []*hitBackend) {
	b.Helper()
	for range 50 {
		first, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		port := first.Addr().(*net.TCPAddr).Port
		lns := []net.Listener{first}
		for i := 2; i <= n; i++ {
			ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.%d:%d", i, port))
			if err != nil {
				break
			}
			lns = append(lns, ln)
		}
		if len(lns) < n {
			for _, ln := range lns {
				ln.Close()
			}
			continue
		}
		bs := make([]*hitBackend, n)
		for i, ln := range lns {
			bs[i] = &hitBackend{ip: fmt.Sprintf("127.0.0.%d", i+1)}
			srv := &http.Server{Handler: bs[i]}
			done := make(chan struct{})
			go func() {
				defer close(done)
				srv.Serve(ln)
			}()
			b.Cleanup(func() {
				srv.Close()
				<-done
			})
		}
		return port, bs
	}
	b.Fatal("no port free on every loopback address")
	return 0, nil
}

// quantile is the q-quantile of ds by nearest rank (0: the least, 1: the
// greatest).
func quantile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(ds))
	i := int(q*float64(len(s))+0.999999) - 1
	return s[min(max(i, 0), len(s)-1)]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func msList(ds []time.Duration) string {
	parts := make([]string, len(ds))
	for i, d := range ds {
		parts[i] = strconv.Itoa(int(d.Round(time.Millisecond).Milliseconds()))
	}
	return strings.Join(parts, " ")
}

func firstFew(s []string, n int) []string { return s[:min(n, len(s))] }
