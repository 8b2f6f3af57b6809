package main

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"gopkg.in/yaml.v3"

	"sekisho/proxy/certs"
	"sekisho/proxy/certs/certstest"
	"sekisho/proxy/config"
)

// sidecarFlagNames are the flags that have an environment twin.
var sidecarFlagNames = []string{"listen", "upstream", "tls-cert", "tls-key", "client-ca", "readiness-path", "admin", "admin-public"}

// clearSidecarEnv makes sure the environment of the test run does not leak
// into the flags' defaults.
func clearSidecarEnv(t *testing.T) {
	for _, name := range sidecarFlagNames {
		t.Setenv(sidecarEnv(name), "")
		os.Unsetenv(sidecarEnv(name))
	}
}

// TestSidecarConfig checks the config the flags and the environment stand
// for, through --print-config, and the refusals of flags that do not fit.
func TestSidecarConfig(t *testing.T) {
	dir := t.TempDir()
	ca := certstest.NewCA(t)
	pair := ca.Issue(t, dir, "legacy.test")
	caFile := ca.WriteCAFile(t, dir)

	type want struct {
		listen, upstream, cert, key, clientCA, readiness, admin, adminPublic string
		expect                                                               []string
		forward                                                              bool
	}
	cases := []struct {
		name    string
		args    []string
		env     map[string]string
		code    int
		want    want
		wantErr string
	}{
		{
			name: "defaults",
			want: want{listen: ":8443", upstream: "127.0.0.1:8080", readiness: "/", expect: []string{"100-499"}, admin: "127.0.0.1:9901"},
		},
		{
			name: "flags",
			args: []string{"--listen", ":9443", "--upstream", "127.0.0.1:3000", "--tls-cert", pair.CertFile, "--tls-key", pair.KeyFile,
				"--client-ca", caFile, "--readiness-path", "/healthz", "--admin", "0.0.0.0:9901", "--admin-public", "0.0.0.0:9902"},
			want: want{listen: ":9443", upstream: "127.0.0.1:3000", cert: pair.CertFile, key: pair.KeyFile, clientCA: caFile,
				forward: true, readiness: "/healthz", expect: []string{"200-299"}, admin: "0.0.0.0:9901", adminPublic: "0.0.0.0:9902"},
		},
		{
			name: "environment alone",
			env: map[string]string{"SEKISHO_LISTEN": ":9443", "SEKISHO_UPSTREAM": "http://127.0.0.1:3000", "SEKISHO_TLS_CERT": pair.CertFile,
				"SEKISHO_TLS_KEY": pair.KeyFile, "SEKISHO_CLIENT_CA": caFile, "SEKISHO_READINESS_PATH": "/healthz", "SEKISHO_ADMIN": "0.0.0.0:9901",
				"SEKISHO_ADMIN_PUBLIC": ":9902"},
			want: want{listen: ":9443", upstream: "http://127.0.0.1:3000", cert: pair.CertFile, key: pair.KeyFile, clientCA: caFile,
				forward: true, readiness: "/healthz", expect: []string{"200-299"}, admin: "0.0.0.0:9901", adminPublic: ":9902"},
		},
		{
			name: "flags win over the environment",
			args: []string{"--upstream", "127.0.0.1:4000", "--admin", "127.0.0.1:9902"},
			env:  map[string]string{"SEKISHO_UPSTREAM": "127.0.0.1:3000", "SEKISHO_ADMIN": "0.0.0.0:9901", "SEKISHO_LISTEN": ":9443"},
			want: want{listen: ":9443", upstream: "127.0.0.1:4000", readiness: "/", expect: []string{"100-499"}, admin: "127.0.0.1:9902"},
		},
		{
			name: "public admin, off in the environment",
			args: []string{"--admin-public", ":9902"},
			env:  map[string]string{"SEKISHO_ADMIN_PUBLIC": "off"},
			want: want{listen: ":8443", upstream: "127.0.0.1:8080", readiness: "/", expect: []string{"100-499"}, admin: "127.0.0.1:9901",
				adminPublic: ":9902"},
		},
		{
			name: "public admin off",
			env:  map[string]string{"SEKISHO_ADMIN_PUBLIC": "off"},
			want: want{listen: ":8443", upstream: "127.0.0.1:8080", readiness: "/", expect: []string{"100-499"}, admin: "127.0.0.1:9901"},
		},
		{name: "public admin is the admin", args: []string{"--admin-public", "127.0.0.1:9901"}, code: 2,
			wantErr: "sekisho sidecar: --admin-public \"127.0.0.1:9901\" is also --admin \"127.0.0.1:9901\"; the read-only listener needs an address of its own\n"},
		{name: "public admin on all addresses of the admin's port", args: []string{"--admin-public", ":9901"}, code: 2,
			wantErr: "sekisho sidecar: --admin-public \":9901\" is also --admin \"127.0.0.1:9901\""},
		{name: "listen on the admin's port", args: []string{"--listen", ":9901"}, code: 2,
			wantErr: "sekisho sidecar: --listen \":9901\" is also --admin \"127.0.0.1:9901\"; each needs an address of its own\n"},
		{name: "listen on the public admin's address", args: []string{"--listen", ":9902", "--admin-public", ":9902"}, code: 2,
			wantErr: "sekisho sidecar: --listen \":9902\" is also --admin-public \":9902\"; each needs an address of its own\n"},
		{name: "public admin without a port", args: []string{"--admin-public", "9902"}, code: 2,
			wantErr: "sekisho sidecar: --admin-public \"9902\" is not host:port\n"},
		{name: "public admin on a bad port", args: []string{"--admin-public", ":99999"}, code: 1,
			wantErr: "sekisho sidecar: admin.public_listen: \":99999\": bad port \"99999\"\n"},
		{name: "cert without key", args: []string{"--tls-cert", pair.CertFile}, code: 2, wantErr: "sekisho sidecar: --tls-cert and --tls-key go together\n"},
		{name: "client CA without TLS", args: []string{"--client-ca", caFile}, code: 2, wantErr: "sekisho sidecar: --client-ca needs --tls-cert and --tls-key\n"},
		{name: "relative readiness path", args: []string{"--readiness-path", "healthz"}, code: 2,
			wantErr: "sekisho sidecar: --readiness-path \"healthz\" must start with /\n"},
		{name: "a stray argument", args: []string{"127.0.0.1:3000"}, code: 2, wantErr: "sekisho sidecar: unexpected argument \"127.0.0.1:3000\"\n"},
		{name: "key of another certificate", args: []string{"--tls-cert", pair.CertFile, "--tls-key", ca.Issue(t, dir, "other.test").KeyFile},
			code: 1, wantErr: "private key does not match the certificate"},
		{name: "bad upstream", args: []string{"--upstream", "ftp://127.0.0.1:21"}, code: 1,
			wantErr: "sekisho sidecar: endpoint: \"ftp://127.0.0.1:21\": scheme must be http or https\n" +
				"sekisho sidecar: (--print-config shows the config the flags stand for)\n"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			clearSidecarEnv(t)
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			var out, errOut bytes.Buffer
			code := run(append([]string{"sidecar", "--print-config"}, tc.args...), &out, &errOut)
			require.Equal(t, tc.code, code, errOut.String())
			if tc.code != 0 {
				assert.Contains(t, errOut.String(), tc.wantErr)
				return
			}
			assert.Empty(t, errOut.String())
			cfg, err := config.Parse("printed", out.Bytes(), func(string) (string, bool) { return "", false })
			require.NoError(t, err, out.String())
			require.Len(t, cfg.Listeners, 1)
			l := cfg.Listeners[0]
			assert.Equal(t, tc.want.listen, l.Listen)
			assert.Equal(t, tc.want.admin, cfg.Admin.Listen)
			assert.Equal(t, tc.want.adminPublic, cfg.Admin.PublicListen)
			if tc.want.cert == "" {
				assert.Nil(t, l.TLS)
			} else {
				require.NotNil(t, l.TLS)
				assert.Equal(t, []config.Cert{{CertFile: tc.want.cert, KeyFile: tc.want.key}}, l.TLS.Certificates)
				assert.Equal(t, tc.want.clientCA, l.TLS.ClientCAFile)
				assert.Equal(t, tc.want.forward, l.TLS.ForwardClientCert)
			}
			pool := cfg.Pools["local"]
			require.NotNil(t, pool)
			assert.Equal(t, []config.Endpoint{{Address: tc.want.upstream, Weight: 1}}, pool.Endpoints)
			require.NotNil(t, pool.Readiness)
			assert.Equal(t, tc.want.readiness, pool.Readiness.Path)
			assert.Equal(t, tc.want.expect, pool.Readiness.ExpectStatus)
			assert.True(t, pool.Readiness.GatesReadyz, "the pod is ready only when the service is")
		})
	}
}

// TestSidecarPrintConfigValidates: what --print-config prints is a config
// file that `sekisho validate` accepts.
func TestSidecarPrintConfigValidates(t *testing.T) {
	dir := t.TempDir()
	ca := certstest.NewCA(t)
	pair := ca.Issue(t, dir, "legacy.test")
	cmd := exec.Command(binPath, "sidecar", "--print-config", "--listen", ":8443", "--upstream", "127.0.0.1:8080",
		"--tls-cert", pair.CertFile, "--tls-key", pair.KeyFile, "--client-ca", ca.WriteCAFile(t, dir), "--readiness-path", "/healthz")
	cmd.Env = sidecarChildEnv(nil)
	printed, err := cmd.Output()
	require.NoError(t, err)
	path := filepath.Join(dir, "sidecar.yaml")
	require.NoError(t, os.WriteFile(path, printed, 0o644))

	out, err := exec.Command(binPath, "validate", "-config", path).CombinedOutput()
	require.NoError(t, err, string(out))
	assert.Equal(t, path+": ok: 1 listener(s), 1 route(s), 1 pool(s)\n", string(out))
}

// sidecarChildEnv is the environment of a child sekisho: this process's,
// without any SEKISHO_ variable, plus extra.
func sidecarChildEnv(extra map[string]string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "SEKISHO_") {
			env = append(env, kv)
		}
	}
	for k, v := range extra {
		env = append(env, k+"="+v)
	}
	return env
}

// lockedBuffer collects a child's output while it runs.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// sidecarProcess is the real binary running `sekisho sidecar`.
type sidecarProcess struct {
	cmd    *exec.Cmd
	logs   *lockedBuffer
	admin  string
	client *http.Client // for the admin server
	exited chan error
}

// startSidecar runs the binary with args and extra environment, and stops
// it (SIGKILL) at cleanup if the test has not stopped it.
func startSidecar(t *testing.T, admin string, args []string, env map[string]string) *sidecarProcess {
	t.Helper()
	p := &sidecarProcess{logs: &lockedBuffer{}, admin: admin, exited: make(chan error, 1),
		client: &http.Client{Transport: &http.Transport{}, Timeout: 2 * time.Second}}
	p.cmd = exec.Command(binPath, append([]string{"sidecar"}, args...)...)
	p.cmd.Env = sidecarChildEnv(env)
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	require.NoError(t, p.cmd.Start())
	go func() { p.exited <- p.cmd.Wait() }()
	t.Cleanup(func() {
		p.client.CloseIdleConnections()
		select {
		case <-p.exited:
		default:
			p.cmd.Process.Kill()
			<-p.exited
		}
		if t.Failed() {
			t.Logf("sekisho sidecar output:\n%s", p.logs.String())
		}
	})
	return p
}

// readyz returns the status of the admin /readyz, or 0 when it cannot be
// reached.
func (p *sidecarProcess) readyz() int {
	status, _ := p.readyzBody()
	return status
}

// readyzBody returns the status and body of the admin /readyz.
func (p *sidecarProcess) readyzBody() (int, string) {
	resp, err := p.client.Get("http://" + p.admin + "/readyz")
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// stop sends SIGTERM and waits for a clean exit.
func (p *sidecarProcess) stop(t *testing.T) {
	t.Helper()
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case err := <-p.exited:
		p.exited <- err // for the cleanup
		assert.NoError(t, err, "exit code 0 after SIGTERM")
	case <-time.After(10 * time.Second):
		t.Fatal("sekisho sidecar did not exit after SIGTERM")
	}
}

// legacyService is a plain-HTTP service bound to 127.0.0.1, as the legacy
// container of a pod is: it echoes what the sidecar told it.
func legacyService(t *testing.T) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			io.WriteString(w, "ok")
			return
		}
		fmt.Fprintf(w, "legacy %s proto=%s client=%q", r.URL.Path, r.Header.Get("X-Forwarded-Proto"), r.Header.Get("X-Client-Cert-Subject"))
	}))
	t.Cleanup(srv.Close)
	return srv
}

// TestSidecarEndToEnd runs the real binary as a TLS sidecar in front of a
// plain-HTTP service, configured once by flags (with mTLS) and once by the
// environment alone: it becomes ready, serves HTTPS, and exits 0 on
// SIGTERM.
func TestSidecarEndToEnd(t *testing.T) {
	opt := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, opt) })
	dir := t.TempDir()
	ca := certstest.NewCA(t)
	server := ca.Issue(t, dir, "legacy.pod.test")
	caFile := ca.WriteCAFile(t, dir)
	clientPair := ca.IssueClient(t, dir, "caller-1")
	clientCert, err := certs.LoadPair(clientPair)
	require.NoError(t, err)
	legacy := legacyService(t)
	upstream := strings.TrimPrefix(legacy.URL, "http://")

	cases := []struct {
		name       string
		flags      bool // configure by flags, else by the environment alone
		mtls       bool
		wantClient string
	}{
		{name: "flags with mTLS", flags: true, mtls: true, wantClient: "CN=caller-1"},
		{name: "environment alone", flags: false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			listen, admin := freePort(t), freePort(t)
			settings := map[string]string{"listen": listen, "upstream": upstream, "tls-cert": server.CertFile,
				"tls-key": server.KeyFile, "readiness-path": "/healthz", "admin": admin}
			if tc.mtls {
				settings["client-ca"] = caFile
			}
			var args []string
			env := map[string]string{}
			for name, v := range settings {
				if tc.flags {
					args = append(args, "--"+name, v)
				} else {
					env[sidecarEnv(name)] = v
				}
			}
			p := startSidecar(t, admin, args, env)
			require.Eventually(t, func() bool { return p.readyz() == http.StatusOK }, 15*time.Second, 25*time.Millisecond,
				"the sidecar becomes ready once the legacy service answers /healthz")

			conf := &tls.Config{RootCAs: ca.Pool(), ServerName: "legacy.pod.test"}
			if tc.mtls {
				conf.Certificates = []tls.Certificate{*clientCert}
			}
			tr := &http.Transport{TLSClientConfig: conf, ForceAttemptHTTP2: true}
			defer tr.CloseIdleConnections()
			client := &http.Client{Transport: tr, Timeout: 5 * time.Second}
			resp, err := client.Get("https://" + listen + "/orders/7")
			require.NoError(t, err)
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			require.NoError(t, err)
			assert.Equal(t, http.StatusOK, resp.StatusCode)
			assert.Equal(t, 2, resp.ProtoMajor, "HTTP/2 by ALPN")
			assert.Equal(t, fmt.Sprintf("legacy /orders/7 proto=https client=%q", tc.wantClient), string(body))

			plainTransport := &http.Transport{}
			defer plainTransport.CloseIdleConnections()
			plain, err := (&http.Client{Transport: plainTransport, Timeout: 5 * time.Second}).Get("http://" + listen + "/orders/7")
			require.NoError(t, err)
			plain.Body.Close()
			assert.Equal(t, http.StatusBadRequest, plain.StatusCode, "plain HTTP is not served on the TLS port")
			if tc.mtls {
				// Read before writing: in TLS 1.3 the refusal comes after the
				// client's handshake, as the first thing to read.
				c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", listen,
					&tls.Config{RootCAs: ca.Pool(), ServerName: "legacy.pod.test"})
				require.NoError(t, err)
				require.NoError(t, c.SetReadDeadline(time.Now().Add(5*time.Second)))
				_, err = c.Read(make([]byte, 1))
				c.Close()
				require.Error(t, err, "a client without a certificate is refused")
				assert.Contains(t, err.Error(), "certificate required")
			}
			tr.CloseIdleConnections() // nothing left for the drain to wait for
			p.stop(t)
		})
	}
}

// TestSidecarNotReadyWhileUpstreamFails: the pod is not ready while the
// legacy service fails its readiness path, even once the first probe round
// is done; it turns ready when the service does, and unready again when the
// service fails.
func TestSidecarNotReadyWhileUpstreamFails(t *testing.T) {
	opt := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, opt) })
	var healthy atomic.Bool
	legacy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" && !healthy.Load() {
			http.Error(w, "warming up", http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ok")
	}))
	t.Cleanup(legacy.Close)
	listen, admin := freePort(t), freePort(t)
	p := startSidecar(t, admin, []string{"--listen", listen, "--upstream", strings.TrimPrefix(legacy.URL, "http://"),
		"--readiness-path", "/healthz", "--admin", admin}, nil)
	notReady := func() bool {
		status, body := p.readyzBody()
		return status == http.StatusServiceUnavailable && strings.Contains(body, `pool "local" has no ready endpoint`)
	}
	require.Eventually(t, notReady, 15*time.Second, 25*time.Millisecond,
		"after the first probe round, /readyz still says 503 because the service is not ready")
	plain := &http.Transport{}
	defer plain.CloseIdleConnections()
	resp, err := (&http.Client{Transport: plain, Timeout: 5 * time.Second}).Get("http://" + listen + "/")
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode, "no ready endpoint")

	healthy.Store(true)
	require.Eventually(t, func() bool { return p.readyz() == http.StatusOK }, 10*time.Second, 25*time.Millisecond,
		"ready once the service is")
	healthy.Store(false)
	require.Eventually(t, notReady, 15*time.Second, 25*time.Millisecond, "unready again when the service fails")
	plain.CloseIdleConnections()
	p.stop(t)
}

// TestSidecarPublicAdmin runs the real binary with the full admin on
// loopback and --admin-public beside it, as a pod does: the public address
// serves /readyz, /healthz and /metrics, and refuses POST /reload and
// /config, which only the loopback admin serves.
func TestSidecarPublicAdmin(t *testing.T) {
	opt := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, opt) })
	legacy := legacyService(t)
	listen, admin, public := freePort(t), freePort(t), freePort(t)
	p := startSidecar(t, admin, []string{"--listen=" + listen, "--upstream=" + strings.TrimPrefix(legacy.URL, "http://"),
		"--readiness-path=/healthz", "--admin=" + admin}, map[string]string{"SEKISHO_ADMIN_PUBLIC": public})
	do := func(method, addr, path string) (int, string) {
		req, err := http.NewRequest(method, "http://"+addr+path, nil)
		require.NoError(t, err)
		resp, err := p.client.Do(req)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	require.Eventually(t, func() bool {
		status, _ := do(http.MethodGet, public, "/readyz")
		return status == http.StatusOK
	}, 15*time.Second, 25*time.Millisecond, "the public address answers /readyz once the service is ready")

	status, _ := do(http.MethodGet, public, "/healthz")
	assert.Equal(t, http.StatusOK, status)
	status, body := do(http.MethodGet, public, "/metrics")
	assert.Equal(t, http.StatusOK, status)
	assert.Contains(t, body, "sekisho_", "Prometheus scrapes the public address")
	for _, tc := range []struct{ method, path string }{
		{http.MethodPost, "/reload"},
		{http.MethodGet, "/config"},
		{http.MethodPost, "/readyz"},
	} {
		status, _ := do(tc.method, public, tc.path)
		assert.Contains(t, []int{http.StatusNotFound, http.StatusMethodNotAllowed}, status, "%s %s on the public address", tc.method, tc.path)
	}
	status, _ = do(http.MethodGet, admin, "/config")
	assert.Equal(t, http.StatusOK, status, "the loopback admin still serves everything")
	p.client.CloseIdleConnections()
	p.stop(t)
}

// podManifest is the part of a Kubernetes manifest that
// TestSidecarManifest checks.
type podManifest struct {
	Kind string       `yaml:"kind"`
	Spec manifestSpec `yaml:"spec"`
}

// manifestProbe is a container's httpGet probe.
type manifestProbe struct {
	HTTPGet struct {
		Path string `yaml:"path"`
		Port string `yaml:"port"`
	} `yaml:"httpGet"`
}

// manifestSpec is a Pod's, a Deployment's (its pod template's) or a
// Service's spec, as far as TestSidecarManifest reads them.
type manifestSpec struct {
	Template *struct {
		Spec manifestSpec `yaml:"spec"`
	} `yaml:"template"`
	Containers []struct {
		Name  string   `yaml:"name"`
		Args  []string `yaml:"args"`
		Ports []struct {
			Name          string `yaml:"name"`
			ContainerPort int    `yaml:"containerPort"`
		} `yaml:"ports"`
		ReadinessProbe manifestProbe `yaml:"readinessProbe"`
		LivenessProbe  manifestProbe `yaml:"livenessProbe"`
		VolumeMounts   []struct {
			Name      string `yaml:"name"`
			MountPath string `yaml:"mountPath"`
			SubPath   string `yaml:"subPath"`
		} `yaml:"volumeMounts"`
	} `yaml:"containers"`
	Volumes []struct {
		Name   string `yaml:"name"`
		Secret struct {
			SecretName string `yaml:"secretName"`
		} `yaml:"secret"`
	} `yaml:"volumes"`
	Ports []struct {
		TargetPort string `yaml:"targetPort"`
	} `yaml:"ports"`
}

// TestSidecarManifest checks deploy/sidecar/deployment.yaml against the binary:
// the sekisho container's args make a valid sidecar config once the
// Secret's files are in place, its ports and probes name what sekisho
// really listens on, the full admin stays on loopback while the read-only
// one is reachable from the kubelet, the upstream is the legacy
// container's loopback port, and the certificate comes from a
// whole-directory Secret mount, which rotation can reach.
func TestSidecarManifest(t *testing.T) {
	f, err := os.Open(filepath.Join("..", "..", "deploy", "sidecar", "deployment.yaml"))
	require.NoError(t, err)
	defer f.Close()
	dec := yaml.NewDecoder(f)
	docs := map[string]podManifest{}
	for i := 0; i < 10; i++ {
		var m podManifest
		err := dec.Decode(&m)
		if err == io.EOF {
			break
		}
		require.NoError(t, err)
		docs[m.Kind] = m
	}
	require.Contains(t, docs, "Deployment")
	require.Contains(t, docs, "Service")
	require.NotNil(t, docs["Deployment"].Spec.Template)
	pod := docs["Deployment"].Spec.Template.Spec
	containers := map[string]int{}
	for i, c := range pod.Containers {
		containers[c.Name] = i
	}
	require.Contains(t, containers, "sekisho")
	require.Contains(t, containers, "legacy")
	side, legacy := pod.Containers[containers["sekisho"]], pod.Containers[containers["legacy"]]
	require.NotEmpty(t, side.Args)
	require.Equal(t, "sidecar", side.Args[0])
	flags := map[string]string{}
	for _, a := range side.Args[1:] {
		name, value, ok := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		require.True(t, ok, "write flags as --name=value: %q", a)
		flags[name] = value
	}

	// The Secret's files, where the manifest mounts them.
	certDir := filepath.Dir(flags["tls-cert"])
	require.Equal(t, certDir, filepath.Dir(flags["tls-key"]))
	dir := t.TempDir()
	pair := certstest.NewCA(t).Issue(t, dir, "legacy.test")
	require.NoError(t, os.Rename(pair.CertFile, filepath.Join(dir, filepath.Base(flags["tls-cert"]))))
	require.NoError(t, os.Rename(pair.KeyFile, filepath.Join(dir, filepath.Base(flags["tls-key"]))))
	args := []string{"sidecar", "--print-config"}
	for _, a := range side.Args[1:] {
		args = append(args, strings.ReplaceAll(a, certDir+"/", dir+"/"))
	}
	clearSidecarEnv(t)
	var out, errOut bytes.Buffer
	require.Equal(t, 0, run(args, &out, &errOut), errOut.String())
	cfg, err := config.Parse("manifest", out.Bytes(), func(string) (string, bool) { return "", false })
	require.NoError(t, err)

	ports := map[string]string{}
	for _, p := range side.Ports {
		ports[p.Name] = fmt.Sprint(p.ContainerPort)
	}
	_, listenPort, err := net.SplitHostPort(cfg.Listeners[0].Listen)
	require.NoError(t, err)
	assert.Equal(t, ports["https"], listenPort, "the https container port is sekisho's listener")
	require.NotNil(t, cfg.Listeners[0].TLS)
	adminHost, _, err := net.SplitHostPort(cfg.Admin.Listen)
	require.NoError(t, err)
	assert.Equal(t, "127.0.0.1", adminHost, "the full admin API stays off the pod network")
	publicHost, publicPort, err := net.SplitHostPort(cfg.Admin.PublicListen)
	require.NoError(t, err, "a read-only admin listener for the kubelet")
	assert.Contains(t, []string{"", "0.0.0.0", "::"}, publicHost, "the kubelet probes the pod IP, not loopback")
	assert.Equal(t, ports["probes"], publicPort)
	assert.Equal(t, "probes", side.ReadinessProbe.HTTPGet.Port)
	assert.Equal(t, "/readyz", side.ReadinessProbe.HTTPGet.Path)
	assert.Equal(t, "probes", side.LivenessProbe.HTTPGet.Port)
	assert.Equal(t, "/healthz", side.LivenessProbe.HTTPGet.Path)

	upHost, upPort, err := net.SplitHostPort(cfg.Pools["local"].Endpoints[0].Address)
	require.NoError(t, err)
	assert.Equal(t, "127.0.0.1", upHost)
	legacyArgs := strings.Join(legacy.Args, " ")
	assert.Contains(t, legacyArgs, "127.0.0.1", "the legacy service is bound to loopback")
	assert.Contains(t, legacyArgs, upPort, "sekisho's upstream is the legacy service's port")

	var mounted bool
	for _, m := range side.VolumeMounts {
		if m.MountPath != certDir {
			continue
		}
		mounted = true
		assert.Empty(t, m.SubPath, "a subPath mount never sees a Secret update")
		var secret string
		for _, v := range pod.Volumes {
			if v.Name == m.Name {
				secret = v.Secret.SecretName
			}
		}
		assert.NotEmpty(t, secret, "the certificate directory is a Secret volume")
	}
	assert.True(t, mounted, "the certificate directory %s is mounted", certDir)
	svc := docs["Service"].Spec
	require.Len(t, svc.Ports, 1)
	assert.Equal(t, "https", svc.Ports[0].TargetPort, "the Service exposes the TLS port only")
}
