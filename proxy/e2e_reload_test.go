package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"sekisho/internal/rawclient"
	"sekisho/proxy/config"
	"sekisho/sharding"
)

// startDaemonAt starts a Daemon from the config file at path as it stands
// (a symlink, for the ConfigMap layout); it is shut down when the test ends.
// quiet drops the process log instead of keeping it in td.logs, for tests
// that measure the heap.
func startDaemonAt(t *testing.T, path string, quiet bool) *testDaemon {
	t.Helper()
	cfg, err := config.Load(path)
	require.NoError(t, err)
	td := &testDaemon{t: t, path: path}
	log := zap.NewNop()
	if !quiet {
		core, logs := observer.New(zap.DebugLevel)
		td.logs, log = logs, zap.New(core)
	}
	td.d, err = Start(cfg, Options{Path: path, Log: log})
	require.NoError(t, err)
	td.client = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}, Timeout: 10 * time.Second}
	t.Cleanup(func() {
		td.client.CloseIdleConnections()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		td.d.Shutdown(ctx)
	})
	return td
}

// watch starts the file watch of td's Daemon until the test ends.
func (td *testDaemon) watch() {
	td.t.Helper()
	cw, err := WatchConfig(context.Background(), td.d)
	require.NoError(td.t, err)
	td.t.Cleanup(cw.Close)
}

// watchWith is watch with another debounce.
func (td *testDaemon) watchWith(debounce time.Duration) {
	td.t.Helper()
	cw, err := watchConfig(context.Background(), td.d, debounce)
	require.NoError(td.t, err)
	td.t.Cleanup(cw.Close)
}

// rewrite writes text to td's config file and reloads it; the reload must
// put a new config in force.
func (td *testDaemon) rewrite(text string) *Runtime {
	td.t.Helper()
	require.NoError(td.t, os.WriteFile(td.path, []byte(text), 0o644))
	res, err := td.d.Reload()
	require.NoError(td.t, err)
	require.True(td.t, res.Changed, res.Summary)
	return td.d.Server().Runtime()
}

// postReload is POST /reload, decoded.
func (td *testDaemon) postReload() (int, reloadAnswer) {
	td.t.Helper()
	resp, err := td.client.Post(td.admin()+"/reload", "text/plain", nil)
	require.NoError(td.t, err)
	defer resp.Body.Close()
	var ans reloadAnswer
	require.NoError(td.t, json.NewDecoder(resp.Body).Decode(&ans))
	return resp.StatusCode, ans
}

type reloadAnswer struct {
	OK      bool     `json:"ok"`
	Changed bool     `json:"changed"`
	Summary string   `json:"summary"`
	Error   string   `json:"error"`
	Errors  []string `json:"errors"`
}

// respondConfig is a one-listener config whose only route answers body.
func respondConfig(body string) string {
	return fmt.Sprintf(edgePreamble+`    routes:
      - name: all
        pipeline:
          - respond: {status: 200, body: %q}
`, body)
}

// halfWritten cuts a respondConfig before its routes: valid YAML that
// fails validation, as a file caught in the middle of a write would.
func halfWritten(text string) string {
	return text[:strings.Index(text, "      - name: all")]
}

// bodyInForce is what the respondConfig in force answers.
func bodyInForce(d *Daemon) string {
	rt := d.Server().Runtime()
	if rt == nil {
		return ""
	}
	return rt.Config().Listeners[0].Routes[0].Pipeline[0].Respond.Body
}

var positioned = regexp.MustCompile(`\.yaml:\d+:\d+: `)

// steadyConfigs are two configs that differ in routes, pools, endpoints,
// shard sets and split weights, with the backends each allows per path.
// Their rings are small: the default ring takes long to build under the
// race detector, and each reload builds the one of its changed shard set.
func steadyConfigs(bs map[string]*backend) ([2]string, [2]map[string][]string) {
	a := fmt.Sprintf(edgePreamble+`    routes:
      - {name: web, match: {path_prefix: /web}, pipeline: [{proxy: web}]}
      - {name: shard, match: {path_prefix: /shard}, pipeline: [{shard: {key: header:X-User, shards: [s0, s1], partitions: 271, replication_factor: 20}}]}
      - name: split
        match: {path_prefix: /split}
        pipeline:
          - split:
              name: exp
              key: header:X-User
              arms:
                - {name: a, weight: 100, pipeline: [{proxy: arm-a}]}
                - {name: b, weight: 0, pipeline: [{proxy: arm-b-old}]}
pools:
  web: {endpoints: [%s, %s], readiness: {interval: 100ms, rise: 1}}
  s0: {endpoints: [%s]}
  s1: {endpoints: [%s]}
  arm-a: {endpoints: [%s]}
  arm-b-old: {endpoints: [%s]}
`, bs["w1"].addr(), bs["w2"].addr(), bs["s0"].addr(), bs["s1"].addr(), bs["arm-a"].addr(), bs["arm-b-old"].addr())
	b := fmt.Sprintf(edgePreamble+`    routes:
      - {name: web, match: {path_prefix: /web}, pipeline: [{proxy: web}]}
      - {name: extra, match: {path_prefix: /web/extra}, pipeline: [{proxy: extra}]}
      - {name: shard, match: {path_prefix: /shard}, pipeline: [{shard: {key: header:X-User, shards: [s0, s1, s2], partitions: 271, replication_factor: 20}}]}
      - name: split
        match: {path_prefix: /split}
        pipeline:
          - split:
              name: exp
              key: header:X-User
              arms:
                - {name: a, weight: 0, pipeline: [{proxy: arm-a}]}
                - {name: b, weight: 100, pipeline: [{proxy: arm-b-new}]}
pools:
  web: {endpoints: [%s, %s], readiness: {interval: 100ms, rise: 1}}
  s0: {endpoints: [%s]}
  s1: {endpoints: [%s]}
  s2: {endpoints: [%s]}
  arm-a: {endpoints: [%s]}
  arm-b-new: {endpoints: [%s]}
  extra: {endpoints: [%s]}
`, bs["w2"].addr(), bs["w3"].addr(), bs["s0"].addr(), bs["s1"].addr(), bs["s2"].addr(), bs["arm-a"].addr(),
		bs["arm-b-new"].addr(), bs["extra"].addr())
	allowed := [2]map[string][]string{
		{"/web/x": {"w1", "w2"}, "/web/extra": {"w1", "w2"}, "/shard": {"s0", "s1"}, "/split": {"arm-a"}},
		{"/web/x": {"w2", "w3"}, "/web/extra": {"extra"}, "/shard": {"s0", "s1", "s2"}, "/split": {"arm-b-new"}},
	}
	return [2]string{a, b}, allowed
}

func steadyBackends(t *testing.T) map[string]*backend {
	bs := map[string]*backend{}
	for _, n := range []string{"w1", "w2", "w3", "s0", "s1", "s2", "arm-a", "arm-b-old", "arm-b-new", "extra"} {
		bs[n] = newBackend(t, n)
	}
	return bs
}

func (td *testDaemon) waitReady() {
	td.t.Helper()
	require.Eventually(td.t, func() bool {
		ok, _ := td.d.Ready()
		return ok
	}, 5*time.Second, 10*time.Millisecond)
}

// TestReloadUnderSteadyLoad: concurrent clients send requests for several
// seconds while the config is reloaded 60 times, alternating between two
// configs that add and remove routes, pools, endpoints, shards and split
// weights. No request fails, each is answered by a backend that the config
// in force allowed, the clients' connections to sekisho survive every
// reload, and every Runtime that went out of force has closed.
func TestReloadUnderSteadyLoad(t *testing.T) {
	bs := steadyBackends(t)
	configs, allowed := steadyConfigs(bs)
	td := startDaemon(t, configs[0])
	td.waitReady()
	srv := td.d.Server()
	base := td.url("edge")
	var dials atomic.Int64
	dialer := &net.Dialer{}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		MaxIdleConnsPerHost: 16,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			dials.Add(1)
			return dialer.DialContext(ctx, network, addr)
		},
	}}
	defer client.CloseIdleConnections()

	type sample struct {
		path, name, err string
		from, to        *Runtime
	}
	const clients, reloads = 4, 60
	paths := []string{"/web/x", "/web/extra", "/shard", "/split"}
	samples := make([][]sample, clients)
	var stop atomic.Bool
	var wg sync.WaitGroup
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; n < 1_000_000 && !stop.Load(); n++ {
				s := sample{path: paths[n%len(paths)], from: srv.Runtime()}
				req, _ := http.NewRequest(http.MethodGet, base+s.path, nil)
				req.Header.Set("X-User", fmt.Sprintf("user-%d-%d", c, n%64))
				resp, err := client.Do(req)
				if err != nil {
					s.err = err.Error()
				} else {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					s.name = resp.Header.Get("X-Echo-Name")
					if resp.StatusCode != http.StatusOK {
						s.err = resp.Status
					}
				}
				s.to = srv.Runtime()
				samples[c] = append(samples[c], s)
			}
		}()
	}

	rts := []*Runtime{srv.Runtime()}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for i := 1; i <= reloads; i++ {
		<-tick.C
		require.NoError(t, os.WriteFile(td.path, []byte(configs[i%2]), 0o644))
		if i%2 == 0 {
			res, err := td.d.Reload()
			require.NoError(t, err)
			require.True(t, res.Changed)
		} else {
			code, ans := td.postReload()
			require.Equal(t, http.StatusOK, code, ans.Error)
			require.True(t, ans.Changed)
		}
		rts = append(rts, srv.Runtime())
	}
	stop.Store(true)
	wg.Wait()

	at := map[*Runtime]int{}
	for i, rt := range rts {
		at[rt] = i
	}
	var total, strict int
	var failures, strays []string
	seen := [2]map[string]bool{{}, {}}
	for _, ss := range samples {
		for _, s := range ss {
			total++
			if s.err != "" {
				failures = append(failures, s.path+": "+s.err)
				continue
			}
			from, ok1 := at[s.from]
			to, ok2 := at[s.to]
			require.True(t, ok1 && ok2, "every Runtime in force was one of the reloads")
			// A request that spans a swap may be served by any config in
			// force during its life.
			var ok bool
			for i := from; i <= to; i++ {
				ok = ok || slices.Contains(allowed[i%2][s.path], s.name)
			}
			if !ok {
				strays = append(strays, fmt.Sprintf("%s answered by %q under configs %d..%d", s.path, s.name, from, to))
			}
			if from == to {
				strict++
				seen[from%2][s.name] = true
			}
		}
	}
	t.Logf("%d requests during %d reloads, %d of them within one config; %d connections dialled", total, reloads, strict, dials.Load())
	assert.Empty(t, failures, "failed requests (first of %d): %.5q", len(failures), failures)
	assert.Empty(t, strays, "requests answered by a backend the config in force did not allow: %.5q", strays)
	assert.Greater(t, total, 8*reloads, "steady load throughout")
	assert.Greater(t, strict, total/2, "most requests are checked against exactly one config")
	for _, name := range []string{"w2", "s0", "s1", "arm-a"} {
		assert.True(t, seen[0][name], "config A served %s", name)
	}
	for _, name := range []string{"w2", "s2", "arm-b-new", "extra"} {
		assert.True(t, seen[1][name], "config B served %s", name)
	}
	assert.False(t, seen[0]["arm-b-old"], "a weight 0 arm gets nothing")
	assert.LessOrEqual(t, dials.Load(), int64(2*clients), "client connections survive the reloads")
	assert.Equal(t, float64(reloads), td.metric("sekisho_config_reloads_total", "result", "success"))
	assert.Equal(t, float64(0), td.metric("sekisho_config_reloads_total", "result", "failure"))
	require.Eventually(t, func() bool {
		for _, rt := range rts[:len(rts)-1] {
			if rt.refs.Load() != 0 {
				return false
			}
		}
		return true
	}, 5*time.Second, 10*time.Millisecond, "every Runtime out of force closes once its requests end")
	assert.Equal(t, int64(1), rts[len(rts)-1].refs.Load(), "the Runtime in force holds the Server's reference only")
}

// newUpgradeBackend answers `Upgrade: echo` with 101 Switching Protocols
// and then echoes every byte on the hijacked connection.
func newUpgradeBackend(t *testing.T) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.EqualFold(r.Header.Get("Upgrade"), "echo") {
			w.Header().Set("X-Echo-Name", "upgrade")
			io.WriteString(w, "plain")
			return
		}
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
		if brw.Flush() != nil {
			return
		}
		io.Copy(conn, brw.Reader)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// upgraded is a client connection upgraded to the echo protocol.
type upgraded struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

func dialUpgrade(t *testing.T, addr string) *upgraded {
	t.Helper()
	rc := rawclient.Dial(t, addr)
	c, br := rc.Conn, rc.BR
	_, err := io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: echo.test\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
	require.NoError(t, err)
	resp, err := http.ReadResponse(br, nil)
	require.NoError(t, err)
	require.Equal(t, http.StatusSwitchingProtocols, resp.StatusCode)
	return &upgraded{t: t, c: c, br: br}
}

// echo sends msg and expects it back.
func (u *upgraded) echo(msg string) {
	u.t.Helper()
	require.NoError(u.t, u.c.SetDeadline(time.Now().Add(5*time.Second)))
	_, err := io.WriteString(u.c, msg+"\n")
	require.NoError(u.t, err)
	line, err := u.br.ReadString('\n')
	require.NoError(u.t, err)
	assert.Equal(u.t, msg+"\n", line)
}

// upgradeConfig is a config for the echo upgrade test; i varies the
// listener's timeouts (so a new http.Server takes the socket), the pool's
// transport settings, a second listener and the routes.
func upgradeConfig(i int, up, other, side string) string {
	text := fmt.Sprintf(edgePreamble+`    timeouts: {idle: %ds}
    routes:
      - {name: ws, match: {path_prefix: /ws}, upgrades: [echo], pipeline: [{proxy: up}]}
      - {name: other-%d, match: {path_prefix: /other}, pipeline: [{proxy: other}]}
`, 60+i, i%2)
	if i%2 == 1 {
		text += fmt.Sprintf(`  - name: side
    listen: %s
    routes: [{name: all, pipeline: [{proxy: other}]}]
`, side)
	}
	return text + fmt.Sprintf(`pools:
  up: {endpoints: [%s], timeouts: {connect: %ds}}
  other: {endpoints: [%s]}
`, up, 2+i%2, other)
}

// TestUpgradedConnectionOutlivesReloads: an upgraded connection opened
// before 10 reloads, which replace the listener's http.Server, the pool's
// Transport and its Runtime each time, still echoes after each of them; its
// Runtime stays open while it runs and closes when it ends.
func TestUpgradedConnectionOutlivesReloads(t *testing.T) {
	up := newUpgradeBackend(t)
	other := newBackend(t, "other")
	side := freeAddr(t)
	upAddr := strings.TrimPrefix(up.URL, "http://")
	td := startDaemon(t, upgradeConfig(0, upAddr, other.addr(), side))
	edge := td.d.Server().Addr("edge").String()

	before := td.d.Server().Runtime()
	u := dialUpgrade(t, edge)
	require.Same(t, before, td.d.Server().Runtime())
	u.echo("hello")
	for i := 1; i <= 10; i++ {
		rt := td.rewrite(upgradeConfig(i, upAddr, other.addr(), side))
		u.echo(fmt.Sprintf("after reload %d", i))
		resp, _ := td.get("http://" + edge + "/other")
		assert.Equal(t, http.StatusOK, resp.StatusCode)
		require.NotSame(t, before, rt)
	}
	assert.Positive(t, before.refs.Load(), "the upgraded connection keeps its Runtime open")
	second := dialUpgrade(t, edge)
	second.echo("a new upgrade after the reloads")
	require.NoError(t, u.c.Close())
	require.Eventually(t, func() bool { return before.refs.Load() == 0 }, 5*time.Second, 10*time.Millisecond,
		"the Runtime closes when the upgraded connection ends")
}

// configLayout is one way of writing a config file that the watch must see.
type configLayout struct {
	name string
	// setup writes the first config into dir and returns the path the
	// Daemon is started from.
	setup func(t *testing.T, dir, text string) string
	write func(t *testing.T, dir, text string)
}

func configLayouts() []configLayout {
	plain := func(t *testing.T, dir, text string) string {
		p := filepath.Join(dir, "sekisho.yaml")
		require.NoError(t, os.WriteFile(p, []byte(text), 0o644))
		return p
	}
	var revision atomic.Int64
	return []configLayout{
		{name: "write in place", setup: plain, write: func(t *testing.T, dir, text string) {
			require.NoError(t, os.WriteFile(filepath.Join(dir, "sekisho.yaml"), []byte(text), 0o644))
		}},
		{name: "editor write and rename", setup: plain, write: func(t *testing.T, dir, text string) {
			tmp := filepath.Join(dir, ".sekisho.yaml.swp")
			require.NoError(t, os.WriteFile(tmp, []byte(text), 0o644))
			require.NoError(t, os.Rename(tmp, filepath.Join(dir, "sekisho.yaml")))
		}},
		{name: "file briefly disappears", setup: plain, write: func(t *testing.T, dir, text string) {
			p := filepath.Join(dir, "sekisho.yaml")
			require.NoError(t, os.Remove(p))
			require.NoError(t, os.WriteFile(p, []byte(text), 0o644))
		}},
		{
			// The kubelet's atomic writer: a new timestamped directory,
			// ..data swapped to it by a rename, the old one removed.
			name: "configmap ..data symlink swap",
			setup: func(t *testing.T, dir, text string) string {
				rev := filepath.Join(dir, "..2026_01_01_00_00_00.0")
				require.NoError(t, os.Mkdir(rev, 0o755))
				require.NoError(t, os.WriteFile(filepath.Join(rev, "config.yaml"), []byte(text), 0o644))
				require.NoError(t, os.Symlink(filepath.Base(rev), filepath.Join(dir, "..data")))
				p := filepath.Join(dir, "config.yaml")
				require.NoError(t, os.Symlink(filepath.Join("..data", "config.yaml"), p))
				return p
			},
			write: func(t *testing.T, dir, text string) {
				old, err := os.Readlink(filepath.Join(dir, "..data"))
				require.NoError(t, err)
				rev := filepath.Join(dir, fmt.Sprintf("..2026_01_01_00_00_%02d.%d", revision.Add(1), revision.Load()))
				require.NoError(t, os.Mkdir(rev, 0o755))
				require.NoError(t, os.WriteFile(filepath.Join(rev, "config.yaml"), []byte(text), 0o644))
				tmp := filepath.Join(dir, "..data_tmp")
				require.NoError(t, os.Symlink(filepath.Base(rev), tmp))
				require.NoError(t, os.Rename(tmp, filepath.Join(dir, "..data")))
				require.NoError(t, os.RemoveAll(filepath.Join(dir, old)))
			},
		},
	}
}

// TestWatchPicksUpEveryWayOfWriting: through the file watch, a new config
// written in place, by an editor's rename, after the file briefly
// disappeared, or by a ConfigMap's ..data symlink swap is put in force; a
// half-written file keeps the old config serving, reports the error with
// its position and drops config_last_reload_successful to 0; the next good
// write is picked up and brings it back to 1.
func TestWatchPicksUpEveryWayOfWriting(t *testing.T) {
	for _, l := range configLayouts() {
		t.Run(l.name, func(t *testing.T) {
			dir := t.TempDir()
			td := startDaemonAt(t, l.setup(t, dir, respondConfig("gen-1")), false)
			// A write of several steps (remove then write, the ConfigMap
			// swap's mkdir, write, rename, remove) is one reload only if
			// the writer does not pause between steps for a whole
			// debounce; a loaded machine can stall it past WatchDebounce's
			// 150ms, and a reload of the unchanged file in between counts
			// as a success too. As in the storm test, a longer debounce.
			td.watchWith(500 * time.Millisecond)
			base := td.url("edge")
			reloaded := func() int { return td.logs.FilterMessage("config reloaded").Len() }
			failed := func() int { return td.logs.FilterMessage("reload failed; the previous config stays in force").Len() }
			// A config is in force a moment before its reload is counted,
			// sets the gauge, clears the last error and is logged, in that
			// order: the log is the last of them.
			goodWrites := 0
			waitBody := func(want string) {
				t.Helper()
				require.Eventually(t, func() bool { return bodyInForce(td.d) == want }, 5*time.Second, 5*time.Millisecond)
				_, body := td.get(base + "/")
				assert.Equal(t, want, body)
				goodWrites++
				require.Eventually(t, func() bool { return reloaded() >= goodWrites }, 5*time.Second, 5*time.Millisecond)
				assert.Equal(t, float64(1), td.metric("sekisho_config_last_reload_successful"))
			}

			l.write(t, dir, respondConfig("gen-2"))
			waitBody("gen-2")

			// A failed reload drops the gauge, then keeps its error for
			// /config, then is logged: wait for the log, the last of them.
			failedBefore := failed()
			l.write(t, dir, halfWritten(respondConfig("gen-3")))
			require.Eventually(t, func() bool {
				return failed() > failedBefore && td.metric("sekisho_config_last_reload_successful") == 0
			}, 5*time.Second, 10*time.Millisecond)
			_, body := td.get(base + "/")
			assert.Equal(t, "gen-2", body, "the old config keeps serving")
			_, cfgText := td.get(td.admin() + "/config")
			assert.Contains(t, cfgText, "# last reload failed")
			assert.Contains(t, cfgText, `listener "edge" has no routes`)
			assert.Regexp(t, positioned, cfgText)
			assert.NotEmpty(t, td.logs.FilterMessage("reload failed; the previous config stays in force").All())

			l.write(t, dir, respondConfig("gen-4"))
			waitBody("gen-4")
			_, cfgText = td.get(td.admin() + "/config")
			assert.NotContains(t, cfgText, "# last reload failed")
			assert.Equal(t, float64(2), td.metric("sekisho_config_reloads_total", "result", "success"), "one reload per good write")
		})
	}
}

// TestWatchReloadLatency measures the time from a write to the new config
// being in force, through the file watch: the debounce plus the reload.
func TestWatchReloadLatency(t *testing.T) {
	dir := t.TempDir()
	td := startDaemonAt(t, configLayouts()[0].setup(t, dir, respondConfig("gen-0")), true)
	td.watch()
	const rounds = 20
	took := make([]time.Duration, 0, rounds)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for i := 1; i <= rounds; i++ {
		want := fmt.Sprintf("gen-%d", i)
		start := time.Now()
		require.NoError(t, os.WriteFile(td.path, []byte(respondConfig(want)), 0o644))
		deadline := time.NewTimer(5 * time.Second)
		for bodyInForce(td.d) != want {
			select {
			case <-tick.C:
			case <-deadline.C:
				t.Fatalf("%s not in force 5s after it was written", want)
			}
		}
		deadline.Stop()
		took = append(took, time.Since(start))
	}
	slices.Sort(took)
	median := took[rounds/2]
	t.Logf("write to new config in force through the file watch: median %s over %d reloads (min %s, max %s; debounce %s)",
		median.Round(time.Millisecond), rounds, took[0].Round(time.Millisecond), took[rounds-1].Round(time.Millisecond), WatchDebounce)
	assert.GreaterOrEqual(t, median, WatchDebounce)
	assert.Less(t, median, WatchDebounce+time.Second)
}

// TestReloadStormAppliesTheLastWriteOnce: 30 writes within 100ms are one
// reload, which applies the last of them; writes to other files of the
// directory reload nothing. The debounce is longer than WatchDebounce here
// so that a writer the loaded machine stalls mid-storm stays one storm.
func TestReloadStormAppliesTheLastWriteOnce(t *testing.T) {
	const debounce = 500 * time.Millisecond
	dir := t.TempDir()
	td := startDaemonAt(t, configLayouts()[0].setup(t, dir, respondConfig("gen-0")), false)
	td.watchWith(debounce)
	start := time.Now()
	for i := 1; i <= 30; i++ {
		require.NoError(t, os.WriteFile(td.path, []byte(respondConfig(fmt.Sprintf("storm-%d", i))), 0o644))
	}
	t.Logf("30 writes in %s", time.Since(start).Round(time.Microsecond))
	require.Eventually(t, func() bool { return bodyInForce(td.d) == "storm-30" }, 5*time.Second, 5*time.Millisecond)
	// Other files of the directory are no reason to read the config again.
	for i := range 5 {
		require.NoError(t, os.WriteFile(filepath.Join(dir, "access.log"), []byte{byte(i)}, 0o644))
	}
	successes := func() float64 { return td.metric("sekisho_config_reloads_total", "result", "success") }
	reloaded := func() int { return td.logs.FilterMessage("config reloaded").Len() }
	// The storm's config is in force a moment before its reload is counted
	// and logged: wait for both before holding them.
	require.Eventually(t, func() bool { return successes() >= 1 && reloaded() >= 1 }, 5*time.Second, 5*time.Millisecond)
	assert.Never(t, func() bool { return successes() != 1 || reloaded() != 1 }, debounce+300*time.Millisecond, 20*time.Millisecond,
		"the storm is one reload, and the other files none")
	assert.Equal(t, float64(0), td.metric("sekisho_config_reloads_total", "result", "failure"), "no half-written file was read")
	assert.Len(t, td.logs.FilterMessage("config reloaded").All(), 1)
}

// TestIdenticalReloadIsANoOp: rewriting the config with the same meaning
// (comments, layout) reloads nothing: the Runtime in force is the same one.
func TestIdenticalReloadIsANoOp(t *testing.T) {
	td := startDaemon(t, respondConfig("same"))
	rt := td.d.Server().Runtime()
	stamp := td.metric("sekisho_config_last_reload_success_timestamp_seconds")
	same := "# the same config, written differently\n" + strings.ReplaceAll(respondConfig("same"), "log: {access: off}", "log:\n  access: \"off\"\n")
	require.NoError(t, os.WriteFile(td.path, []byte(same), 0o644))
	res, err := td.d.Reload()
	require.NoError(t, err)
	assert.False(t, res.Changed)
	assert.Equal(t, "config unchanged", res.Summary)
	code, ans := td.postReload()
	assert.Equal(t, http.StatusOK, code)
	assert.False(t, ans.Changed)
	assert.Same(t, rt, td.d.Server().Runtime(), "no new Runtime")
	assert.Equal(t, int64(1), rt.refs.Load())
	assert.Equal(t, float64(2), td.metric("sekisho_config_reloads_total", "result", "success"))
	assert.Equal(t, stamp, td.metric("sekisho_config_last_reload_success_timestamp_seconds"))
	assert.Empty(t, td.logs.FilterMessage("config reloaded").All())
}

// TestConcurrentPostReloadsAreSerialised: two POST /reload at once both
// answer 200, and exactly one of them applies the new config.
func TestConcurrentPostReloadsAreSerialised(t *testing.T) {
	td := startDaemon(t, respondConfig("gen-0"))
	for round := 1; round <= 5; round++ {
		require.NoError(t, os.WriteFile(td.path, []byte(respondConfig(fmt.Sprintf("gen-%d", round))), 0o644))
		var wg sync.WaitGroup
		codes, changed := make([]int, 2), make([]bool, 2)
		start := make(chan struct{})
		for i := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				resp, err := td.client.Post(td.admin()+"/reload", "text/plain", nil)
				if !assert.NoError(t, err) {
					return
				}
				defer resp.Body.Close()
				var ans reloadAnswer
				assert.NoError(t, json.NewDecoder(resp.Body).Decode(&ans))
				codes[i], changed[i] = resp.StatusCode, ans.Changed
			}()
		}
		close(start)
		wg.Wait()
		assert.Equal(t, []int{http.StatusOK, http.StatusOK}, codes)
		assert.True(t, changed[0] != changed[1], "one applies, the other finds it in force: %v", changed)
		assert.Equal(t, fmt.Sprintf("gen-%d", round), bodyInForce(td.d))
	}
	assert.Equal(t, float64(10), td.metric("sekisho_config_reloads_total", "result", "success"))
}

// TestFailedReloadKeepsTheOldConfig: each kind of bad input answers POST
// /reload 400 with the errors, keeps the old config serving, counts a
// failure, drops config_last_reload_successful to 0 and shows in /config;
// a good config afterwards clears it all.
func TestFailedReloadKeepsTheOldConfig(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer busy.Close()
	td := startDaemon(t, respondConfig("good"))
	base := td.url("edge")
	stamp := td.metric("sekisho_config_last_reload_success_timestamp_seconds")
	cases := []struct {
		name, text, want string
		positioned       bool
	}{
		{"empty file", "", "the config file is empty", true},
		{"not YAML", "listeners: [unclosed\n", "not valid YAML", true},
		{"half-written", halfWritten(respondConfig("next")), `listener "edge" has no routes`, true},
		{"valid YAML with errors", strings.ReplaceAll(respondConfig("next"), "respond: {status: 200, body: \"next\"}", "proxy: nowhere"),
			`pool "nowhere" is not defined`, true},
		{"address in use", strings.ReplaceAll(respondConfig("next"), "listen: 127.0.0.1:0", "listen: "+busy.Addr().String()),
			"address already in use", false},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			require.NoError(t, os.WriteFile(td.path, []byte(tc.text), 0o644))
			code, ans := td.postReload()
			assert.Equal(t, http.StatusBadRequest, code)
			assert.False(t, ans.OK)
			assert.Contains(t, ans.Error, tc.want)
			assert.NotEmpty(t, ans.Errors)
			if tc.positioned {
				assert.Regexp(t, positioned, ans.Errors[0])
			}
			_, body := td.get(base + "/")
			assert.Equal(t, "good", body)
			_, cfgText := td.get(td.admin() + "/config")
			assert.Contains(t, cfgText, "# last reload failed; this config is still in force:")
			assert.Contains(t, cfgText, tc.want)
			assert.Contains(t, cfgText, `body: good`)
			assert.Equal(t, float64(0), td.metric("sekisho_config_last_reload_successful"))
			assert.Equal(t, float64(i+1), td.metric("sekisho_config_reloads_total", "result", "failure"))
			assert.Equal(t, stamp, td.metric("sekisho_config_last_reload_success_timestamp_seconds"))
		})
	}
	require.NoError(t, os.WriteFile(td.path, []byte(respondConfig("better")), 0o644))
	code, ans := td.postReload()
	assert.Equal(t, http.StatusOK, code)
	assert.True(t, ans.Changed)
	assert.Contains(t, ans.Summary, "ok: 1 listener(s)")
	_, body := td.get(base + "/")
	assert.Equal(t, "better", body)
	_, cfgText := td.get(td.admin() + "/config")
	assert.NotContains(t, cfgText, "# last reload failed")
	assert.Equal(t, float64(1), td.metric("sekisho_config_last_reload_successful"))
}

// TestFailedApplyLeavesSharedStateAlone: an Apply that fails on a busy
// port fails before Compile, so a pool whose readiness probe it would have
// dropped keeps its unready endpoint unready and a pool it would have added
// never shows; an Apply whose Compile fails part-way leaves none of the
// pools and endpoints it met in the registry.
func TestFailedApplyLeavesSharedStateAlone(t *testing.T) {
	b := newBackend(t, "b")
	b.ready.Store(false)
	fresh := newBackend(t, "fresh")
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer busy.Close()
	conf := func(readiness, listeners, pools string) string {
		return fmt.Sprintf(edgePreamble+`    routes: [{name: all, pipeline: [{proxy: web}]}]
%spools:
  web: {endpoints: [%s]%s}
%s`, listeners, b.addr(), readiness, pools)
	}
	probed := ", readiness: {interval: 50ms}"
	td := startDaemon(t, conf(probed, "", ""))
	td.waitReady()
	srv := td.d.Server()
	in := srv.Runtime()
	registry := func() []string {
		var out []string
		for _, p := range td.d.Shared().Registry.Snapshot() {
			for _, e := range p.Endpoints {
				out = append(out, fmt.Sprintf("%s %s probed=%v ready=%v", p.Pool, e.Address, p.Probed, e.Ready))
			}
			if len(p.Endpoints) == 0 {
				out = append(out, p.Pool)
			}
		}
		return out
	}
	before := registry()
	require.Equal(t, []string{"web " + b.addr() + " probed=true ready=false"}, before)

	t.Run("busy port", func(t *testing.T) {
		text := conf("", fmt.Sprintf("  - {name: busy, listen: %q, routes: [{name: all, pipeline: [{proxy: aaa}]}]}\n", busy.Addr()),
			fmt.Sprintf("  aaa: {endpoints: [%s]}\n", fresh.addr()))
		cfg, err := config.Parse("busy.yaml", []byte(text), nil)
		require.NoError(t, err)
		require.ErrorContains(t, srv.Apply(cfg), "address already in use")
		assert.Same(t, in, srv.Runtime())
		assert.Equal(t, before, registry(), "still probed, still unready, no new pool")
		resp, _ := td.get(td.url("edge") + "/")
		assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	})
	t.Run("compile fails part-way", func(t *testing.T) {
		text := conf(probed, "  - {name: more, listen: "+freeAddr(t)+", routes: [{name: a, match: {path_prefix: /a}, pipeline: [{proxy: aaa}]}, {name: z, pipeline: [{proxy: zzz}]}]}\n",
			fmt.Sprintf("  aaa: {endpoints: [%s]}\n  zzz: {endpoints: [%s]}\n", fresh.addr(), fresh.addr()))
		cfg, err := config.Parse("bad.yaml", []byte(text), nil)
		require.NoError(t, err)
		cfg.Pools["zzz"].Balance = "bogus" // past validation, as a Compile-only failure would be
		require.ErrorContains(t, srv.Apply(cfg), "unknown balance")
		assert.Same(t, in, srv.Runtime())
		assert.Equal(t, before, registry(), "the pools and endpoints the failed Compile registered are gone")
		assert.Nil(t, srv.Addr("more"), "no listener of the failed config stays open")
	})
}

// countingBackend counts the connections it accepts.
type countingBackend struct {
	*httptest.Server
	conns atomic.Int64
}

func newCountingBackend(t *testing.T, name string) *countingBackend {
	b := &countingBackend{}
	b.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Echo-Name", name)
		io.WriteString(w, name)
	}))
	b.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			b.conns.Add(1)
		}
	}
	b.Start()
	t.Cleanup(b.Close)
	return b
}

// TestReloadKeepsWhatDidNotChange: across a reload that adds a pool,
// removes another and changes a shard set, unchanged endpoints keep their
// health state (the same registry entries, an ejection included), unchanged
// pools keep their Transport and its connections, an unchanged shard set
// keeps its ring, split buckets stay where they were; what went away is
// dropped from the registry, the transports and the ring cache.
func TestReloadKeepsWhatDidNotChange(t *testing.T) {
	web := newCountingBackend(t, "web")
	dead := freeAddr(t)
	s := [3]*countingBackend{newCountingBackend(t, "s0"), newCountingBackend(t, "s1"), newCountingBackend(t, "s2")}
	conf := func(shards, pools string) string {
		return fmt.Sprintf(edgePreamble+`    routes:
      - {name: web, match: {path_prefix: /web}, pipeline: [{proxy: web}]}
      - {name: flaky, match: {path_prefix: /flaky}, pipeline: [{proxy: flaky}]}
      - {name: kept, match: {path_prefix: /kept}, pipeline: [{shard: {key: header:X-User, shards: [s0, s1], partitions: 271, replication_factor: 20}}]}
      - {name: moved, match: {path_prefix: /moved}, pipeline: [{shard: {key: header:X-User, shards: [%s], partitions: 271, replication_factor: 20}}]}
      - name: exp
        match: {path_prefix: /exp}
        pipeline:
          - split:
              name: exp
              key: header:X-User
              arms:
                - {name: a, weight: 50, pipeline: [{proxy: s0}]}
                - {name: b, weight: 50, pipeline: [{proxy: s1}]}
pools:
  web: {endpoints: [%s], outlier: {consecutive_failures: 1, eject: 1m}}
  flaky: {endpoints: [%s, %s], retries: 0, outlier: {consecutive_failures: 1, eject: 1m, max_ejected_percent: 100}}
  s0: {endpoints: [%s]}
  s1: {endpoints: [%s]}
%s`, shards, web.Listener.Addr(), web.Listener.Addr(), dead, s[0].Listener.Addr(), s[1].Listener.Addr(), pools)
	}
	td := startDaemon(t, conf("s0, s1, s2", fmt.Sprintf("  s2: {endpoints: [%s]}\n", s[2].Listener.Addr())))
	base := td.url("edge")
	armOf := func() map[string]string {
		arms := map[string]string{}
		for i := range 40 {
			user := fmt.Sprintf("u%d", i)
			resp, _ := td.get(base+"/exp", "X-User", user)
			require.Equal(t, http.StatusOK, resp.StatusCode)
			arms[user] = resp.Header.Get("X-Echo-Name")
		}
		return arms
	}
	for range 4 {
		td.get(base + "/web")
		td.get(base + "/flaky") // the dead endpoint fails once and is ejected
	}
	for i := range 10 {
		resp, _ := td.get(base+"/moved", "X-User", fmt.Sprintf("u%d", i))
		require.Equal(t, http.StatusOK, resp.StatusCode)
	}
	arms := armOf()
	ejected := func() bool {
		for _, p := range td.d.Shared().Registry.Snapshot() {
			for _, e := range p.Endpoints {
				if e.Address == dead {
					return e.Ejected
				}
			}
		}
		return false
	}
	require.True(t, ejected())
	old := td.d.Server().Runtime()
	conns := web.conns.Load()

	rt := td.rewrite(conf("s0, s1", fmt.Sprintf("  added: {endpoints: [%s]}\n", web.Listener.Addr())))
	assert.True(t, ejected(), "an ejection outlives the reload")
	for name, p := range old.pools {
		if name == "s2" {
			continue
		}
		np := rt.pools[name]
		require.NotNil(t, np, name)
		assert.Same(t, p.Transport(), np.Transport(), "pool %s keeps its Transport", name)
		for i, tg := range p.Targets() {
			assert.Same(t, tg.EP, np.Targets()[i].EP, "pool %s endpoint %s keeps its state", name, tg.Addr)
		}
	}
	for range 10 {
		resp, _ := td.get(base + "/web")
		require.Equal(t, http.StatusOK, resp.StatusCode)
	}
	assert.Equal(t, conns, web.conns.Load(), "requests to the unchanged endpoint reuse its connections")
	assert.Equal(t, arms, armOf(), "split buckets stay where they were")

	ring := func(rt *Runtime, i int) *sharding.Ring { return rt.shards[i].(shardReport).s.Ring() }
	require.Len(t, rt.shards, 2)
	assert.Same(t, ring(old, 0), ring(rt, 0), "an unchanged shard set keeps its ring")
	assert.NotSame(t, ring(old, 1), ring(rt, 1), "a changed shard set gets a new ring")
	assert.Same(t, ring(rt, 0), ring(rt, 1), "equal shard sets share one ring")
	shared := td.d.Shared()
	shared.rings.mu.Lock()
	assert.Len(t, shared.rings.rings, 1, "the ring no Runtime uses any more is dropped")
	shared.rings.mu.Unlock()
	for _, p := range shared.Registry.Snapshot() {
		assert.NotEqual(t, "s2", p.Pool, "the removed pool leaves the registry")
	}
	shared.transports.mu.Lock()
	_, kept := shared.transports.entries["s2"]
	shared.transports.mu.Unlock()
	assert.False(t, kept, "the removed pool's Transport is dropped")
}

// TestReloadListeners: a listener whose address is new opens; a removed
// one refuses new connections at once while its in-flight request
// finishes, and a request that still arrives on it is served by the config
// that had it; a listener whose timeouts changed keeps its socket and its
// connection with a request in flight; a changed tls section applies to
// new handshakes while an open TLS connection carries on.
func TestReloadListeners(t *testing.T) {
	release := make(chan struct{})
	started := make(chan string, 4)
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		started <- r.URL.Path
		select {
		case <-release:
		case <-r.Context().Done():
		}
		io.WriteString(w, "slow done")
	}))
	t.Cleanup(slow.Close)
	defer close(release)
	certDir := t.TempDir()
	certFile := writeTestCert(t, certDir)
	side, more, secureAddr := freeAddr(t), freeAddr(t), freeAddr(t)
	conf := func(i int) string {
		text := fmt.Sprintf(edgePreamble+`    timeouts: {idle: %ds}
    routes:
      - {name: slow, match: {path_prefix: /slow}, pipeline: [{proxy: slow}]}
      - {name: all, pipeline: [{respond: {status: 200, body: "edge-%d"}}]}
  - name: secure
    listen: %s
    tls:
      certificates: [{cert_file: %s, key_file: %s}]
      min_version: "1.%d"
    routes: [{name: all, pipeline: [{respond: {status: 200, body: "secure-%d"}}]}]
`, 60+i, i, secureAddr, certFile, filepath.Join(certDir, "tls.key"), 2+i, i)
		if i == 0 {
			text += fmt.Sprintf(`  - name: side
    listen: %s
    routes:
      - {name: slow, match: {path_prefix: /slow}, pipeline: [{proxy: slow}]}
      - {name: all, pipeline: [{respond: {status: 200, body: "side-0"}}]}
`, side)
		} else {
			text += fmt.Sprintf(`  - name: more
    listen: %s
    routes: [{name: all, pipeline: [{respond: {status: 200, body: "more-1"}}]}]
`, more)
		}
		return text + fmt.Sprintf("pools:\n  slow: {endpoints: [%s]}\n", strings.TrimPrefix(slow.URL, "http://"))
	}
	td := startDaemon(t, conf(0))
	srv := td.d.Server()
	edge, secure := srv.Addr("edge").String(), srv.Addr("secure").String()
	tlsClient := func(maxVersion uint16) *http.Client {
		return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
			TLSClientConfig: &tls.Config{InsecureSkipVerify: true, MaxVersion: maxVersion}}}
	}
	tls12 := tlsClient(tls.VersionTLS12)
	defer tls12.CloseIdleConnections()
	resp, err := tls12.Get("https://" + secure + "/")
	require.NoError(t, err)
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	require.Equal(t, "HTTP/1.1", resp.Proto)

	type result struct {
		body string
		err  error
	}
	plain := &http.Client{Timeout: 10 * time.Second}
	defer plain.CloseIdleConnections()
	inFlight := func(url string) chan result {
		done := make(chan result, 1)
		go func() {
			resp, err := plain.Get(url)
			if err != nil {
				done <- result{err: err}
				return
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			done <- result{string(b), err}
		}()
		require.Equal(t, "/slow", <-started)
		return done
	}
	onSide := inFlight("http://" + side + "/slow")
	onEdge := inFlight("http://" + edge + "/slow")
	srv.mu.Lock()
	sideHandler := srv.listeners[side].handler
	srv.mu.Unlock()

	td.rewrite(conf(1))
	assert.Equal(t, edge, srv.Addr("edge").String(), "the edge socket is kept")
	_, body := td.get("http://" + more + "/")
	assert.Equal(t, "more-1", body, "the new listener opened")
	_, err = net.DialTimeout("tcp", side, time.Second)
	assert.Error(t, err, "the removed listener refuses new connections")
	rec := httptest.NewRecorder()
	sideHandler.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "http://"+side+"/", nil))
	assert.Equal(t, "side-0", rec.Body.String(), "a request still arriving on a removed listener is served by the config that had it")

	resp, err = tls12.Get("https://" + secure + "/")
	require.NoError(t, err, "an open TLS connection carries on")
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	assert.Equal(t, "secure-1", string(b))
	fresh12 := tlsClient(tls.VersionTLS12)
	_, err = fresh12.Get("https://" + secure + "/")
	assert.Error(t, err, "a new TLS 1.2 handshake meets min_version 1.3")
	fresh13 := tlsClient(tls.VersionTLS13)
	defer fresh13.CloseIdleConnections()
	resp, err = fresh13.Get("https://" + secure + "/")
	require.NoError(t, err)
	resp.Body.Close()

	release <- struct{}{}
	release <- struct{}{}
	for name, done := range map[string]chan result{"removed listener": onSide, "replaced server": onEdge} {
		r := <-done
		require.NoError(t, r.err, name)
		assert.Equal(t, "slow done", r.body, "the in-flight request on the %s finishes", name)
	}
	_, body = td.get("http://" + edge + "/")
	assert.Equal(t, "edge-1", body)
}

// TestReloadsLeaveGoroutinesAndHeapFlat: 200 reloads with traffic in
// between leave as many goroutines and about as much heap as before.
func TestReloadsLeaveGoroutinesAndHeapFlat(t *testing.T) {
	bs := steadyBackends(t)
	configs, _ := steadyConfigs(bs)
	dir := t.TempDir()
	td := startDaemonAt(t, configLayouts()[0].setup(t, dir, configs[0]), true)
	td.waitReady()
	base := td.url("edge")
	cycle := func(i int) {
		td.rewrite(configs[i%2])
		for _, p := range []string{"/web/x", "/web/extra", "/shard", "/split"} {
			resp, _ := td.get(base+p, "X-User", fmt.Sprintf("u%d", i%8))
			require.Equal(t, http.StatusOK, resp.StatusCode, p)
		}
	}
	// Warm up: idle connections to every endpoint and the label children
	// of both configs exist before the count.
	for i := 1; i <= 20; i++ {
		cycle(i)
	}
	settled := func() (int, uint64) {
		var ms runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&ms)
		return runtime.NumGoroutine(), ms.HeapAlloc
	}
	g0, h0 := settled()
	start := time.Now()
	for i := 1; i <= 200; i++ {
		cycle(i)
	}
	elapsed := time.Since(start)
	var g1 int
	var h1 uint64
	require.Eventually(t, func() bool {
		g1, h1 = settled()
		return g1 <= g0+3
	}, 10*time.Second, 50*time.Millisecond, "goroutines: %d before, %d after 200 reloads", g0, runtime.NumGoroutine())
	t.Logf("200 reloads in %s (%s each); goroutines %d -> %d; heap %d KiB -> %d KiB",
		elapsed.Round(time.Millisecond), (elapsed / 200).Round(time.Microsecond), g0, g1, h0>>10, h1>>10)
	assert.Less(t, h1, h0+16<<20, "the heap stays flat")
}

// TestDaemonLeavesNoGoroutine: a Daemon with a file watch, probes, a
// mirror, a TLS listener, an access log file, an upgraded connection and
// listeners that come and go, reloaded several times through the watch and
// directly, then shut down, leaves no goroutine behind; the shutdown cuts
// the upgraded connection when its grace period is over.
func TestDaemonLeavesNoGoroutine(t *testing.T) {
	leaks := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, leaks) })
	web, shadow := newBackend(t, "web"), newBackend(t, "shadow")
	up := newUpgradeBackend(t)
	dir := t.TempDir()
	certFile := writeTestCert(t, dir)
	side, secureAddr := freeAddr(t), freeAddr(t)
	conf := func(i int) string {
		text := fmt.Sprintf(`version: 1
admin: {listen: "127.0.0.1:0"}
log: {access: %q}
listeners:
  - name: edge
    listen: 127.0.0.1:0
    timeouts: {idle: %ds}
    routes:
      - {name: ws, match: {path_prefix: /ws}, upgrades: [echo], pipeline: [{proxy: up}]}
      - name: web
        pipeline:
          - mirror: {pool: shadow, timeout: 1s}
          - proxy: web
  - name: secure
    listen: %s
    tls:
      certificates: [{cert_file: %s, key_file: %s}]
      min_version: "1.%d"
    routes: [{name: all, pipeline: [{proxy: web}]}]
`, filepath.Join(dir, fmt.Sprintf("access-%d.log", i%2)), 60+i, secureAddr, certFile, filepath.Join(dir, "tls.key"), 2+i%2)
		if i%2 == 0 {
			text += fmt.Sprintf("  - name: side\n    listen: %s\n    routes: [{name: all, pipeline: [{proxy: web}]}]\n", side)
		}
		return text + fmt.Sprintf(`pools:
  web: {endpoints: [%s], readiness: {interval: 50ms, rise: 1}}
  shadow: {endpoints: [%s]}
  up: {endpoints: [%s]}
`, web.addr(), shadow.addr(), strings.TrimPrefix(up.URL, "http://"))
	}
	td := startDaemonAt(t, configLayouts()[0].setup(t, dir, conf(0)), false)
	td.watch()
	td.waitReady()
	edge := td.d.Server().Addr("edge").String()
	tlsClient := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	defer tlsClient.CloseIdleConnections()
	u := dialUpgrade(t, edge)
	traffic := func() {
		resp, _ := td.get("http://" + edge + "/")
		assert.Equal(t, http.StatusOK, resp.StatusCode)
		resp, err := tlsClient.Get("https://" + td.d.Server().Addr("secure").String() + "/")
		if assert.NoError(t, err) {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		u.echo("still here")
	}
	traffic()
	for i := 1; i <= 6; i++ {
		if i%3 == 0 {
			require.NoError(t, os.WriteFile(td.path, []byte(conf(i)), 0o644))
			require.Eventually(t, func() bool {
				return td.d.Config().Listeners[0].Timeouts.Idle.D() == time.Duration(60+i)*time.Second
			}, 5*time.Second, 5*time.Millisecond, "reload %d through the watch", i)
		} else {
			td.rewrite(conf(i))
		}
		traffic()
	}

	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := td.d.Shutdown(ctx)
	assert.ErrorIs(t, err, context.DeadlineExceeded, "the upgraded connection was cut at the end of the grace period")
	assert.Less(t, time.Since(start), 3*time.Second)
	require.NoError(t, u.c.SetReadDeadline(time.Now().Add(5*time.Second)))
	_, err = u.br.ReadByte()
	assert.ErrorIs(t, err, io.EOF, "the upgraded connection is closed")
	lines, err := os.ReadFile(filepath.Join(dir, "access-0.log"))
	require.NoError(t, err)
	assert.Contains(t, string(lines), `"route":"web"`, "the access log was flushed when its last Runtime closed")
}
