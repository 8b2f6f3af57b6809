package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var binPath string

// TestMain builds the real binary once: the signal and exit-code tests run
// it as a process.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "sekisho-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binPath = filepath.Join(dir, "sekisho")
	out, err := exec.Command("go", "build", "-race", "-o", binPath, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "building sekisho: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func TestValidate(t *testing.T) {
	broken := filepath.Join("..", "..", "testdata", "broken", "many-errors.yaml")
	var out, errOut bytes.Buffer
	code := run([]string{"validate", "-config", broken}, &out, &errOut)
	assert.Equal(t, 1, code)
	lines := strings.Split(strings.TrimSpace(errOut.String()), "\n")
	require.Len(t, lines, 5, errOut.String())
	assert.Equal(t, broken+":1:10: version: want 1, got 2", lines[0])

	dir := t.TempDir()
	good := filepath.Join(dir, "ok.yaml")
	require.NoError(t, os.WriteFile(good, []byte(`
version: 1
listeners:
  - name: edge
    listen: 127.0.0.1:0
    routes: [{name: all, pipeline: [{proxy: web}]}]
pools:
  web: {endpoints: [127.0.0.1:9001]}
`), 0o644))
	out.Reset()
	assert.Equal(t, 0, run([]string{"validate", "-config", good}, &out, &errOut))
	assert.Equal(t, good+": ok: 1 listener(s), 1 route(s), 1 pool(s)\n", out.String())

	t.Setenv("SEKISHO_CONFIG", good)
	out.Reset()
	assert.Equal(t, 0, run([]string{"validate"}, &out, &errOut), "SEKISHO_CONFIG stands for -config")
}

func TestRunRefusesBrokenConfig(t *testing.T) {
	cmd := exec.Command(binPath, "run", "-config", filepath.Join("..", "..", "testdata", "broken", "undefined-pool.yaml"))
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee)
	assert.Equal(t, 1, ee.ExitCode())
	assert.Contains(t, string(out), `undefined-pool.yaml:8:20: pool "nowhere" is not defined under pools`)
}

// freePort reserves an address for a listener the child process opens.
func freePort(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	return ln.Addr().String()
}

// TestGracefulDrainOnSIGTERM: a slow request in flight when SIGTERM
// arrives completes; new connections are refused at once; /readyz would
// have said 503; the process exits 0.
func TestGracefulDrainOnSIGTERM(t *testing.T) {
	started := make(chan struct{}, 1)
	release := make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		started <- struct{}{}
		<-release
		io.WriteString(w, "finished")
	}))
	defer up.Close()
	listen, admin := freePort(t), freePort(t)
	cfg := filepath.Join(t.TempDir(), "c.yaml")
	require.NoError(t, os.WriteFile(cfg, []byte(fmt.Sprintf(`
version: 1
admin: {listen: %q}
log: {access: off}
shutdown_grace: 10s
listeners:
  - name: edge
    listen: %q
    routes: [{name: all, pipeline: [{proxy: up}]}]
pools:
  up: {endpoints: [%s]}
`, admin, listen, strings.TrimPrefix(up.URL, "http://"))), 0o644))
	cmd := exec.Command(binPath, "run", "-config", cfg)
	stderr, _ := cmd.StderrPipe()
	require.NoError(t, cmd.Start())
	go io.Copy(io.Discard, bufio.NewReader(stderr))
	defer cmd.Process.Kill()
	require.Eventually(t, func() bool {
		resp, err := http.Get("http://" + admin + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, 10*time.Second, 20*time.Millisecond)

	type result struct {
		body string
		err  error
	}
	done := make(chan result, 1)
	go func() {
		resp, err := http.Get("http://" + listen + "/slow")
		if err != nil {
			done <- result{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		done <- result{string(b), err}
	}()
	<-started
	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	require.Eventually(t, func() bool {
		c, err := net.DialTimeout("tcp", listen, 200*time.Millisecond)
		if err != nil {
			return true
		}
		c.Close()
		return false
	}, 5*time.Second, 10*time.Millisecond, "new connections are refused while draining")
	close(release)
	r := <-done
	require.NoError(t, r.err)
	assert.Equal(t, "finished", r.body, "the in-flight request completes")
	waitErr := make(chan error, 1)
	go func() { waitErr <- cmd.Wait() }()
	select {
	case err := <-waitErr:
		assert.NoError(t, err, "exit code 0")
	case <-time.After(10 * time.Second):
		t.Fatal("sekisho did not exit after draining")
	}
}
