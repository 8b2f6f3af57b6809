package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"sekisho/proxy/certs"
	"sekisho/proxy/certs/certstest"
)

// tlsAddr is the host:port of a listener.
func tlsAddr(td *testDaemon, name string) string {
	addr := td.d.Server().Addr(name)
	require.NotNil(td.t, addr, "listener %q", name)
	return addr.String()
}

// startPlainAndTLS starts a daemon with two listeners that route everything
// to pool up: "plain" (cleartext, h2c with prior knowledge too) and
// "secure" (TLS, with a certificate for serverName from a fresh CA), each
// with listenerKeys added (indented as a listener's keys, or ""); up is
// poolKeys (its endpoints and the rest, indented as a pool's keys). It
// returns the daemon and a client TLS config that trusts the listener.
func startPlainAndTLS(t *testing.T, serverName, listenerKeys, poolKeys string) (*testDaemon, *tls.Config) {
	t.Helper()
	dir := t.TempDir()
	ca := certstest.NewCA(t)
	cert := ca.Issue(t, dir, serverName)
	td := startDaemon(t, fmt.Sprintf(`
version: 1
admin: {listen: "127.0.0.1:0"}
log: {access: off}
listeners:
  - name: plain
    listen: 127.0.0.1:0
%[1]s    routes: [{name: all, pipeline: [{proxy: up}]}]
  - name: secure
    listen: %[2]q
%[1]s    tls:
      certificates: [{cert_file: %[3]q, key_file: %[4]q}]
    routes: [{name: all, pipeline: [{proxy: up}]}]
pools:
  up:
%[5]s`, listenerKeys, freeAddr(t), cert.CertFile, cert.KeyFile, poolKeys))
	return td, &tls.Config{RootCAs: ca.Pool(), ServerName: serverName}
}

// tlsTransport is a client Transport with TLS config tc that speaks only
// HTTP/2 when h2 is set, else only HTTP/1.1; its connections close with the
// test. It takes a copy of tc: http.Transport writes its ALPN protocols into
// the config it is given, which would leak into the next Transport.
func tlsTransport(t *testing.T, tc *tls.Config, h2 bool) *http.Transport {
	var protos http.Protocols
	if h2 {
		protos.SetHTTP2(true)
	} else {
		protos.SetHTTP1(true)
	}
	tr := &http.Transport{TLSClientConfig: tc.Clone(), Protocols: &protos, ForceAttemptHTTP2: h2}
	t.Cleanup(tr.CloseIdleConnections)
	return tr
}

// tlsDo sends req with rt and returns the response with its body read.
func tlsDo(rt http.RoundTripper, req *http.Request) (*http.Response, string, error) {
	ctx, cancel := context.WithTimeout(req.Context(), 10*time.Second)
	defer cancel()
	resp, err := rt.RoundTrip(req.WithContext(ctx))
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp, string(b), err
}

func tlsGet(t *testing.T, rt http.RoundTripper, url string, headers ...string) (*http.Response, string, error) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	require.NoError(t, err)
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	return tlsDo(rt, req)
}

// tlsRefusal connects to addr with conf and returns why the server refused
// the connection, or nil when it has not refused it within 5s. It reads
// without writing: in TLS 1.3 the client's handshake ends before the server
// has checked the client certificate, and the server's alert is the first
// thing to read; a write could meet the closed connection first and hide
// the alert. Callers expect a refusal, which ends the wait when it comes;
// the wait is long so that an alert a loaded machine sends late is not
// taken for an accepted handshake.
func tlsRefusal(addr string, conf *tls.Config) error {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, conf)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		return err
	}
	_, err = c.Read(make([]byte, 1))
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		return nil // the server waits for a request: the handshake was accepted
	}
	return err
}

// tlsLeaf reads the leaf certificate of a pair.
func tlsLeaf(t *testing.T, p certs.Pair) *x509.Certificate {
	t.Helper()
	c, err := certs.LoadPair(p)
	require.NoError(t, err)
	return c.Leaf
}

func tlsClientCert(t *testing.T, p certs.Pair) []tls.Certificate {
	t.Helper()
	c, err := certs.LoadPair(p)
	require.NoError(t, err)
	return []tls.Certificate{*c}
}

// TestTLSListenerSNIVersionsHTTP2 drives a TLS listener through the real
// daemon: the certificate is chosen by SNI (exact before wildcard, the
// first as default), TLS 1.1 is refused unless min_version asks for it,
// and HTTP/2 is negotiated by ALPN and really served.
func TestTLSListenerSNIVersionsHTTP2(t *testing.T) {
	noLeaks(t)
	dir := t.TempDir()
	ca := certstest.NewCA(t)
	def := ca.Issue(t, dir, "default.test", "127.0.0.1")
	wild := ca.Issue(t, dir, "*.example.test")
	exactA := ca.Issue(t, dir, "a.example.test")
	exactB := ca.Issue(t, dir, "b.example.test")
	up := newBackend(t, "web")
	td := startDaemon(t, fmt.Sprintf(`
version: 1
admin: {listen: "127.0.0.1:0"}
log: {access: off}
listeners:
  - name: secure
    listen: 127.0.0.1:0
    tls:
      certificates:   # the wildcard is listed before the exact names, which still win
        - {cert_file: %q, key_file: %q}
        - {cert_file: %q, key_file: %q}
        - {cert_file: %q, key_file: %q}
        - {cert_file: %q, key_file: %q}
    routes: [{name: all, pipeline: [{proxy: web}]}]
  - name: legacy
    listen: %q
    tls:
      certificates: [{cert_file: %q, key_file: %q}]
      min_version: "1.1"
    routes: [{name: all, pipeline: [{proxy: web}]}]
pools:
  web: {endpoints: [%s]}
`, def.CertFile, def.KeyFile, wild.CertFile, wild.KeyFile, exactA.CertFile, exactA.KeyFile, exactB.CertFile, exactB.KeyFile,
		freeAddr(t), exactA.CertFile, exactA.KeyFile, up.addr()))
	addrs := map[string]string{"secure": tlsAddr(td, "secure"), "legacy": tlsAddr(td, "legacy")}

	cases := []struct {
		name     string
		listener string
		sni      string
		min, max uint16
		h2       bool
		insecure bool   // the served certificate does not cover the name asked for
		refused  string // part of the client's error when the handshake must fail
		wantCN   string
		version  uint16 // 0: not checked
	}{
		{name: "exact name", sni: "a.example.test", wantCN: "a.example.test"},
		{name: "second exact name", sni: "b.example.test", wantCN: "b.example.test"},
		{name: "wildcard", sni: "c.example.test", wantCN: "*.example.test"},
		{name: "unknown name gets the first", sni: "nothing.else.test", insecure: true, wantCN: "default.test"},
		{name: "no SNI gets the first", sni: "127.0.0.1", wantCN: "default.test"},
		{name: "TLS 1.1 refused by default", sni: "a.example.test", min: tls.VersionTLS10, max: tls.VersionTLS11,
			refused: "protocol version not supported"},
		{name: "TLS 1.2 accepted", sni: "a.example.test", max: tls.VersionTLS12, wantCN: "a.example.test", version: tls.VersionTLS12},
		{name: "TLS 1.3 accepted", sni: "a.example.test", min: tls.VersionTLS13, wantCN: "a.example.test", version: tls.VersionTLS13},
		{name: "TLS 1.1 accepted when min_version asks for it", listener: "legacy", sni: "a.example.test",
			min: tls.VersionTLS11, max: tls.VersionTLS11, wantCN: "a.example.test", version: tls.VersionTLS11},
		{name: "HTTP/2 negotiated and served", sni: "a.example.test", h2: true, wantCN: "a.example.test"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			listener := tc.listener
			if listener == "" {
				listener = "secure"
			}
			conf := &tls.Config{RootCAs: ca.Pool(), ServerName: tc.sni, MinVersion: tc.min, MaxVersion: tc.max, InsecureSkipVerify: tc.insecure}
			before := up.hits.Load()
			resp, body, err := tlsGet(t, tlsTransport(t, conf, tc.h2), "https://"+addrs[listener]+"/page")
			if tc.refused != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.refused)
				assert.Equal(t, before, up.hits.Load(), "nothing reaches the upstream")
				return
			}
			require.NoError(t, err)
			require.Equal(t, http.StatusOK, resp.StatusCode, body)
			assert.JSONEq(t, `{"name":"web","path":"/page"}`, body)
			require.NotNil(t, resp.TLS)
			assert.Equal(t, tc.wantCN, resp.TLS.PeerCertificates[0].Subject.CommonName)
			if tc.version != 0 {
				assert.Equal(t, tc.version, resp.TLS.Version)
			}
			if tc.h2 {
				assert.Equal(t, 2, resp.ProtoMajor, "served over HTTP/2")
				assert.Equal(t, "h2", resp.TLS.NegotiatedProtocol)
			} else {
				assert.Equal(t, 1, resp.ProtoMajor)
			}
			seen := up.lastRequest()
			require.NotNil(t, seen)
			assert.Equal(t, "https", seen.Header.Get("X-Forwarded-Proto"))
		})
	}

	t.Run("expiry metric per certificate", func(t *testing.T) {
		for _, p := range []certs.Pair{def, wild, exactA, exactB} {
			leaf := tlsLeaf(t, p)
			assert.Equal(t, float64(leaf.NotAfter.Unix()),
				td.metric("sekisho_tls_certificate_expiry_timestamp_seconds", "listener", "secure", "name", leaf.DNSNames[0]), leaf.DNSNames[0])
		}
	})
}

// TestTLSHandshakeFailuresAreCounted: a client that offers only TLS 1.0,
// one with no cipher suite in common, and one without the client
// certificate an mTLS listener requires each get a handshake failure, which
// is logged at debug level and counted; the listener serves on.
func TestTLSHandshakeFailuresAreCounted(t *testing.T) {
	noLeaks(t)
	dir := t.TempDir()
	ca := certstest.NewCA(t)
	server := ca.Issue(t, dir, "mtls.test")
	td, addr := oneTLSListener(t, "mtls", server.CertFile, server.KeyFile,
		fmt.Sprintf("      client_ca_file: %q\n", ca.WriteCAFile(t, dir)))
	url := "https://" + addr + "/"
	signed := tlsClientCert(t, ca.IssueClient(t, dir, "client-1"))

	cases := []struct {
		name    string
		conf    *tls.Config
		refused string
	}{
		{name: "TLS 1.0 only", refused: "protocol version not supported",
			conf: &tls.Config{MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS10, Certificates: signed}},
		{name: "no shared cipher suite", refused: "handshake failure",
			conf: &tls.Config{MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256}, Certificates: signed}},
		{name: "no client certificate", refused: "certificate required", conf: &tls.Config{}},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.conf.RootCAs, tc.conf.ServerName = ca.Pool(), "mtls.test"
			err := tlsRefusal(tlsAddr(td, "mtls"), tc.conf)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.refused)
			require.Eventually(t, func() bool {
				return td.metric("sekisho_tls_handshake_errors_total", "listener", "mtls") == float64(i+1)
			}, 5*time.Second, 20*time.Millisecond, "each failed handshake is counted once")
		})
	}
	t.Run("logged at debug level", func(t *testing.T) {
		// A failed handshake is counted, then logged: the count the cases
		// waited for may come a moment before the last log.
		require.Eventually(t, func() bool {
			return td.logs.FilterMessageSnippet("TLS handshake error").Len() >= len(cases)
		}, 5*time.Second, 20*time.Millisecond)
		entries := td.logs.FilterMessageSnippet("TLS handshake error").All()
		require.Len(t, entries, len(cases))
		for _, e := range entries {
			assert.Equal(t, zap.DebugLevel, e.Level)
			assert.Equal(t, "mtls", e.ContextMap()["listener"])
		}
	})
	t.Run("the listener serves on", func(t *testing.T) {
		conf := &tls.Config{RootCAs: ca.Pool(), ServerName: "mtls.test", Certificates: signed}
		resp, body, err := tlsGet(t, tlsTransport(t, conf, true), url)
		require.NoError(t, err)
		assert.Equal(t, http.StatusOK, resp.StatusCode, body)
	})
}

// TestMTLSClientCertSubject: an mTLS listener refuses a client without a
// certificate or with one of another CA and accepts a signed one; the
// verified subject goes upstream as X-Client-Cert-Subject only with
// forward_client_cert, and a client can never send that header itself.
func TestMTLSClientCertSubject(t *testing.T) {
	noLeaks(t)
	dir := t.TempDir()
	ca := certstest.NewCA(t)
	other := certstest.NewCA(t)
	server := ca.Issue(t, dir, "mtls.test")
	caFile := ca.WriteCAFile(t, dir)
	up := newBackend(t, "web")
	td := startDaemon(t, fmt.Sprintf(`
version: 1
admin: {listen: "127.0.0.1:0"}
log: {access: "{{ACCESS}}"}
listeners:
  - name: forward
    listen: 127.0.0.1:0
    tls:
      certificates: [{cert_file: %[1]q, key_file: %[2]q}]
      client_ca_file: %[3]q
      forward_client_cert: true
    routes: [{name: all, pipeline: [{proxy: web}]}]
  - name: keep
    listen: %[5]q
    tls:
      certificates: [{cert_file: %[1]q, key_file: %[2]q}]
      client_ca_file: %[3]q
    routes: [{name: all, pipeline: [{proxy: web}]}]
  - name: nomtls
    listen: %[6]q
    tls:
      certificates: [{cert_file: %[1]q, key_file: %[2]q}]
    routes: [{name: all, pipeline: [{proxy: web}]}]
pools:
  web: {endpoints: [%[4]s]}
`, server.CertFile, server.KeyFile, caFile, up.addr(), freeAddr(t), freeAddr(t)))
	signed := tlsClientCert(t, ca.IssueClient(t, dir, "client-1"))
	intruder := tlsClientCert(t, other.IssueClient(t, dir, "intruder"))

	cases := []struct {
		name        string
		listener    string
		cert        []tls.Certificate
		refused     string
		wantSubject string
	}{
		{name: "no certificate refused", listener: "forward", refused: "certificate required"},
		{name: "certificate of another CA refused", listener: "forward", cert: intruder, refused: "unknown certificate authority"},
		{name: "signed certificate forwarded", listener: "forward", cert: signed, wantSubject: "CN=client-1"},
		{name: "signed certificate not forwarded without forward_client_cert", listener: "keep", cert: signed},
		{name: "no mTLS, nothing to forward", listener: "nomtls"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			conf := &tls.Config{RootCAs: ca.Pool(), ServerName: "mtls.test", Certificates: tc.cert}
			if tc.refused != "" {
				before := up.hits.Load()
				err := tlsRefusal(tlsAddr(td, tc.listener), conf)
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.refused)
				assert.Equal(t, before, up.hits.Load())
				return
			}
			resp, body, err := tlsGet(t, tlsTransport(t, conf, false), "https://"+tlsAddr(td, tc.listener)+"/who",
				"X-Client-Cert-Subject", "CN=admin")
			require.NoError(t, err)
			require.Equal(t, http.StatusOK, resp.StatusCode, body)
			seen := up.lastRequest()
			require.NotNil(t, seen)
			assert.Equal(t, tc.wantSubject, seen.Header.Get("X-Client-Cert-Subject"), "the client's own header never passes")
			assert.Len(t, seen.Header.Values("X-Client-Cert-Subject"), len(strings.Fields(tc.wantSubject)))
		})
	}
	t.Run("the access log names the verified client", func(t *testing.T) {
		lines := td.accessLines(3)
		byListener := map[string]map[string]any{}
		for _, l := range lines {
			byListener[l["listener"].(string)] = l
		}
		assert.Equal(t, "CN=client-1", byListener["forward"]["client_cert"])
		assert.Equal(t, "CN=client-1", byListener["keep"]["client_cert"], "logged even when not forwarded")
		assert.NotContains(t, byListener["nomtls"], "client_cert")
	})
}

// secretVolume lays a directory out as kubelet does for a Secret volume:
// the files live in a versioned directory, "..data" links to it, and
// tls.crt and tls.key link through "..data"; publish swaps "..data" in one
// rename, as kubelet does on a Secret update.
// oneTLSListener starts a daemon with one TLS listener, name, serving
// certFile and keyFile (and the tls keys of extra, each a line indented by
// six spaces) in front of a backend; it returns the daemon and the
// listener's address.
func oneTLSListener(t *testing.T, name, certFile, keyFile, extra string) (*testDaemon, string) {
	t.Helper()
	up := newBackend(t, "web")
	td := startDaemon(t, fmt.Sprintf(`
version: 1
admin: {listen: "127.0.0.1:0"}
log: {access: off}
listeners:
  - name: %s
    listen: 127.0.0.1:0
    tls:
      certificates: [{cert_file: %q, key_file: %q}]
%s    routes: [{name: all, pipeline: [{proxy: web}]}]
pools:
  web: {endpoints: [%s]}
`, name, certFile, keyFile, extra, up.addr()))
	return td, tlsAddr(td, name)
}

// servedSerial returns the serial of the certificate a new handshake with
// addr gets, or the handshake's error.
func servedSerial(addr string, conf *tls.Config) string {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, conf)
	if err != nil {
		return err.Error()
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].SerialNumber.String()
}

type secretVolume struct {
	dir      string
	versions int
}

func (v *secretVolume) cert() string { return filepath.Join(v.dir, "tls.crt") }
func (v *secretVolume) key() string  { return filepath.Join(v.dir, "tls.key") }

func (v *secretVolume) publish(t *testing.T, certFile, keyFile string) {
	t.Helper()
	v.versions++
	version := fmt.Sprintf("..v%d", v.versions)
	require.NoError(t, os.Mkdir(filepath.Join(v.dir, version), 0o755))
	for src, name := range map[string]string{certFile: "tls.crt", keyFile: "tls.key"} {
		b, err := os.ReadFile(src)
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(v.dir, version, name), b, 0o600))
	}
	tmp := filepath.Join(v.dir, "..data_tmp")
	require.NoError(t, os.Symlink(version, tmp))
	require.NoError(t, os.Rename(tmp, filepath.Join(v.dir, "..data")))
	if v.versions == 1 {
		require.NoError(t, os.Symlink(filepath.Join("..data", "tls.crt"), v.cert()))
		require.NoError(t, os.Symlink(filepath.Join("..data", "tls.key"), v.key()))
	}
}

// TestTLSCertificateRotation: a Secret update (a symlink swap) is seen by
// the next handshake without a restart while an open connection carries on
// with the old certificate; a broken new pair keeps the current one, and is
// logged and counted.
func TestTLSCertificateRotation(t *testing.T) {
	noLeaks(t)
	src := t.TempDir()
	ca := certstest.NewCA(t)
	first := ca.Issue(t, src, "rotate.test")
	second := ca.Sign(t, src, &x509.Certificate{DNSNames: []string{"rotate.test"}, NotAfter: time.Now().Add(48 * time.Hour).Truncate(time.Second)})
	third := ca.Issue(t, src, "www.rotate.test", "rotate.test") // its first name, the metric's label, changes
	vol := &secretVolume{dir: t.TempDir()}
	vol.publish(t, first.CertFile, first.KeyFile)
	td, addr := oneTLSListener(t, "rot", vol.cert(), vol.key(), "")
	conf := &tls.Config{RootCAs: ca.Pool(), ServerName: "rotate.test", NextProtos: []string{"http/1.1"}}
	serialOf := func(p certs.Pair) string { return tlsLeaf(t, p).SerialNumber.String() }
	served := func() string { return servedSerial(addr, conf) }
	expiry := func() float64 {
		return td.metric("sekisho_tls_certificate_expiry_timestamp_seconds", "listener", "rot", "name", "rotate.test")
	}

	// An open keep-alive connection, made before any rotation.
	open, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, conf)
	require.NoError(t, err)
	defer open.Close()
	openReader := bufio.NewReader(open)
	roundTrip := func() int {
		t.Helper()
		require.NoError(t, open.SetDeadline(time.Now().Add(5*time.Second)))
		_, err := io.WriteString(open, "GET /kept HTTP/1.1\r\nHost: rotate.test\r\n\r\n")
		require.NoError(t, err)
		resp, err := http.ReadResponse(openReader, nil)
		require.NoError(t, err)
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	require.Equal(t, http.StatusOK, roundTrip())
	require.Equal(t, serialOf(first), open.ConnectionState().PeerCertificates[0].SerialNumber.String())
	assert.Equal(t, serialOf(first), served())
	assert.Equal(t, float64(tlsLeaf(t, first).NotAfter.Unix()), expiry())

	t.Run("the certificates are loaded at start, not reloaded", func(t *testing.T) {
		loaded := td.logs.FilterMessage("certificates loaded").FilterField(zap.String("listener", "rot")).All()
		require.Len(t, loaded, 1)
		assert.Equal(t, []any{"rotate.test"}, loaded[0].ContextMap()["names"])
		assert.Never(t, func() bool { return td.logs.FilterMessage("certificates reloaded").Len() > 0 },
			500*time.Millisecond, 20*time.Millisecond, "the watch's first read of the same files is no rotation")
	})
	t.Run("a symlink swap is seen by the next handshake", func(t *testing.T) {
		vol.publish(t, second.CertFile, second.KeyFile)
		require.Eventually(t, func() bool { return served() == serialOf(second) }, 5*time.Second, 20*time.Millisecond)
		require.Eventually(t, func() bool { return td.logs.FilterMessage("certificates reloaded").Len() > 0 }, 5*time.Second, 20*time.Millisecond)
		// The handshakes take the new pair, then the rotation is logged,
		// then the metrics follow.
		require.Eventually(t, func() bool { return expiry() == float64(tlsLeaf(t, second).NotAfter.Unix()) }, 5*time.Second, 20*time.Millisecond,
			"the expiry metric follows the rotation")
		assert.LessOrEqual(t, td.metric("sekisho_tls_certificate_reload_errors_total", "listener", "rot"), 0.0,
			"no reload error (an absent sample is -1)")
	})
	t.Run("an open connection carries on", func(t *testing.T) {
		assert.Equal(t, http.StatusOK, roundTrip())
		assert.Equal(t, serialOf(first), open.ConnectionState().PeerCertificates[0].SerialNumber.String())
	})
	t.Run("a broken pair keeps the current certificate", func(t *testing.T) {
		vol.publish(t, third.CertFile, first.KeyFile) // the key is not the certificate's
		// A failed rotation is counted, then logged: wait for both.
		require.Eventually(t, func() bool {
			return td.metric("sekisho_tls_certificate_reload_errors_total", "listener", "rot") >= 1 &&
				td.logs.FilterMessageSnippet("certificate rotation failed").Len() > 0
		}, 5*time.Second, 20*time.Millisecond)
		assert.Equal(t, serialOf(second), served())
		assert.Equal(t, float64(tlsLeaf(t, second).NotAfter.Unix()), expiry())
		failures := td.logs.FilterMessageSnippet("certificate rotation failed").All()
		require.NotEmpty(t, failures)
		assert.Equal(t, zap.ErrorLevel, failures[0].Level)
		assert.Contains(t, failures[0].ContextMap()["error"], "private key does not match the certificate")
	})
	t.Run("a good pair after a broken one is taken", func(t *testing.T) {
		vol.publish(t, third.CertFile, third.KeyFile)
		require.Eventually(t, func() bool { return served() == serialOf(third) }, 5*time.Second, 20*time.Millisecond)
		require.Eventually(t, func() bool {
			return td.metric("sekisho_tls_certificate_expiry_timestamp_seconds", "listener", "rot", "name", "www.rotate.test") ==
				float64(tlsLeaf(t, third).NotAfter.Unix())
		}, 5*time.Second, 20*time.Millisecond)
		// The new name's series is set before the old one's is dropped.
		require.Eventually(t, func() bool { return expiry() == -1 }, 5*time.Second, 20*time.Millisecond,
			"the series of a name no longer served is gone")
	})
}

// tlsUpstream is an HTTPS backend with a certificate of ca for
// "upstream.internal" that requires a client certificate of ca, and answers
// with the client's CN and the HTTP version it was spoken to in.
func tlsUpstream(t *testing.T, ca *certstest.CA, dir string) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "client=%s proto=%d", r.TLS.PeerCertificates[0].Subject.CommonName, r.ProtoMajor)
	}))
	srv.TLS = &tls.Config{
		Certificates: tlsClientCert(t, ca.Issue(t, dir, "upstream.internal")),
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    ca.Pool(),
	}
	srv.EnableHTTP2 = true
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshakes below are expected
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}

// TestUpstreamTLS: pools reach https endpoints verified against a private
// CA under a chosen server name, presenting a client certificate (upstream
// mTLS), over HTTP/1.1 or HTTP/2; a pool without the client certificate or
// without the CA is refused by the handshake and answers 502.
func TestUpstreamTLS(t *testing.T) {
	noLeaks(t)
	dir := t.TempDir()
	ca := certstest.NewCA(t)
	caFile := ca.WriteCAFile(t, dir)
	client := ca.IssueClient(t, dir, "sekisho-proxy")
	upstream := tlsUpstream(t, ca, dir)
	ep := upstream.URL // https://127.0.0.1:port
	td := startDaemon(t, fmt.Sprintf(edgePreamble+`    routes:
      - {name: mtls, match: {path_prefix: /mtls}, pipeline: [{proxy: mtls}]}
      - {name: h2, match: {path_prefix: /h2}, pipeline: [{proxy: h2}]}
      - {name: nocert, match: {path_prefix: /nocert}, pipeline: [{proxy: nocert}]}
      - {name: noca, match: {path_prefix: /noca}, pipeline: [{proxy: noca}]}
pools:
  mtls:
    endpoints: [%[1]s]
    tls: {ca_file: %[2]q, server_name: upstream.internal, cert_file: %[3]q, key_file: %[4]q}
  h2:
    endpoints: [%[1]s]
    protocol: h2
    tls: {ca_file: %[2]q, server_name: upstream.internal, cert_file: %[3]q, key_file: %[4]q}
  nocert:
    endpoints: [%[1]s]
    tls: {ca_file: %[2]q, server_name: upstream.internal}
  noca:
    endpoints: [%[1]s]
    tls: {server_name: upstream.internal, cert_file: %[3]q, key_file: %[4]q}
`, ep, caFile, client.CertFile, client.KeyFile))
	base := td.url("edge")
	cases := []struct {
		path   string
		status int
		body   string
	}{
		{path: "/mtls", status: http.StatusOK, body: "client=sekisho-proxy proto=1"},
		{path: "/h2", status: http.StatusOK, body: "client=sekisho-proxy proto=2"},
		{path: "/nocert", status: http.StatusBadGateway, body: "upstream unavailable\n"},
		{path: "/noca", status: http.StatusBadGateway, body: "upstream unavailable\n"},
	}
	for _, tc := range cases {
		t.Run(tc.path, func(t *testing.T) {
			resp, body := td.get(base + tc.path)
			assert.Equal(t, tc.status, resp.StatusCode)
			assert.Equal(t, tc.body, body)
		})
	}
	t.Run("the refusals are logged with their cause", func(t *testing.T) {
		var causes []string
		for _, e := range td.logs.FilterMessage("upstream request failed").All() {
			causes = append(causes, fmt.Sprint(e.ContextMap()["pool"], ": ", e.ContextMap()["error"]))
		}
		joined := strings.Join(causes, "\n")
		assert.Contains(t, joined, "nocert: ")
		assert.Contains(t, joined, "certificate required")
		assert.Contains(t, joined, "noca: ")
		assert.Contains(t, joined, "certificate signed by unknown authority")
	})
}

// grpcLike is a cleartext HTTP/2 (h2c) backend that behaves as a gRPC
// server does: it reads the whole request, answers with a body and then
// trailers, and echoes the request trailer it got in a response trailer.
type grpcLike struct {
	addr string
	mu   sync.Mutex
	seen *http.Request // the last request, its body read
}

func newGRPCLike(t *testing.T) *grpcLike {
	t.Helper()
	g := &grpcLike{}
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{Protocols: &protos, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		g.mu.Lock()
		g.seen = r.Clone(context.Background())
		g.mu.Unlock()
		w.Header().Set("Content-Type", "application/grpc")
		w.Header().Set("Trailer", "Grpc-Status, Grpc-Message, X-Echo-Checksum")
		w.WriteHeader(http.StatusOK)
		w.Write(append([]byte("echo:"), body...))
		w.Header().Set("Grpc-Status", "0")
		w.Header().Set("Grpc-Message", "done")
		w.Header().Set("X-Echo-Checksum", r.Trailer.Get("X-Checksum"))
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	g.addr = ln.Addr().String()
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(ln)
	}()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
	return g
}

func (g *grpcLike) last() *http.Request {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.seen
}

// TestH2CBackendTrailers proxies a gRPC-style exchange end to end to an h2c
// backend: the client speaks h2c with prior knowledge to a plain listener,
// or h2 over TLS (or HTTP/1.1 with chunked trailers); request and response
// trailers both arrive.
func TestH2CBackendTrailers(t *testing.T) {
	noLeaks(t)
	g := newGRPCLike(t)
	td, secure := startPlainAndTLS(t, "grpc.test", "", fmt.Sprintf("    endpoints: [%s]\n    protocol: h2c\n", g.addr))

	var h2c http.Protocols
	h2c.SetUnencryptedHTTP2(true)
	priorKnowledge := &http.Transport{Protocols: &h2c}
	t.Cleanup(priorKnowledge.CloseIdleConnections)
	cases := []struct {
		name  string
		url   string
		rt    http.RoundTripper
		proto int
	}{
		{name: "h2c prior knowledge", url: "http://" + tlsAddr(td, "plain"), rt: priorKnowledge, proto: 2},
		{name: "h2 over TLS", url: "https://" + tlsAddr(td, "secure"), proto: 2,
			rt: tlsTransport(t, secure, true)},
		{name: "HTTP/1.1 chunked over TLS", url: "https://" + tlsAddr(td, "secure"), proto: 1,
			rt: tlsTransport(t, secure, false)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// A body of unknown length, as a stream of gRPC messages is.
			req, err := http.NewRequest(http.MethodPost, tc.url+"/echo.Echo/Say", io.MultiReader(strings.NewReader("hello "), strings.NewReader(tc.name)))
			require.NoError(t, err)
			req.Header.Set("Content-Type", "application/grpc")
			req.Header.Set("TE", "trailers")
			req.Trailer = http.Header{"X-Checksum": {"c0ffee"}}
			resp, body, err := tlsDo(tc.rt, req)
			require.NoError(t, err)
			assert.Equal(t, http.StatusOK, resp.StatusCode)
			assert.Equal(t, tc.proto, resp.ProtoMajor)
			assert.Equal(t, "echo:hello "+tc.name, body)
			assert.Equal(t, "0", resp.Trailer.Get("Grpc-Status"), "response trailers arrive")
			assert.Equal(t, "done", resp.Trailer.Get("Grpc-Message"))
			assert.Equal(t, "c0ffee", resp.Trailer.Get("X-Echo-Checksum"), "request trailers reach the backend")
			seen := g.last()
			require.NotNil(t, seen)
			assert.Equal(t, 2, seen.ProtoMajor, "h2c to the backend")
			assert.Equal(t, "trailers", seen.Header.Get("Te"))
			assert.Equal(t, "c0ffee", seen.Trailer.Get("X-Checksum"))
		})
	}
}
