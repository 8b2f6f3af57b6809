package proxy

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"sekisho/proxy/certs"
	"sekisho/proxy/certs/certstest"
)

// rsaPair writes a self-signed RSA certificate for name into dir (certstest
// issues ECDSA only, and the ECDHE_RSA suites need an RSA key) and returns
// it with a pool that trusts it.
func rsaPair(t *testing.T, dir, name string) (certs.Pair, *x509.CertPool) {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: name},
		DNSNames:     []string{name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	require.NoError(t, err)
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	p := certs.Pair{CertFile: filepath.Join(dir, name+".crt"), KeyFile: filepath.Join(dir, name+".key")}
	require.NoError(t, os.WriteFile(p.CertFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644))
	require.NoError(t, os.WriteFile(p.KeyFile, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}), 0o600))
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return p, pool
}

// handshake dials addr with conf, sends one request and reads the answer to
// its end, so that a TLS 1.3 session ticket (sent after the handshake) is
// read into the client's cache too.
func handshake(addr string, conf *tls.Config) (tls.ConnectionState, error) {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, conf)
	if err != nil {
		return tls.ConnectionState{}, err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		return tls.ConnectionState{}, err
	}
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"); err != nil {
		return tls.ConnectionState{}, err
	}
	if _, err := io.ReadAll(c); err != nil {
		return tls.ConnectionState{}, err
	}
	return c.ConnectionState(), nil
}

// firstTicket is a client session cache that keeps the first ticket it is
// given and offers it ever after, so that a test can present one ticket
// again after the server has rotated its keys (a real cache would take the
// fresh ticket each resumed handshake brings).
type firstTicket struct {
	mu sync.Mutex
	cs *tls.ClientSessionState
}

func (f *firstTicket) Get(string) (*tls.ClientSessionState, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.cs, f.cs != nil
}

func (f *firstTicket) Put(_ string, cs *tls.ClientSessionState) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cs == nil && cs != nil {
		f.cs = cs
	}
}

// TestTLSDefaultCipherPolicy offers every TLS 1.2 suite crypto/tls knows,
// one at a time, to a listener with an ECDSA certificate and to one with an
// RSA certificate: only the ECDHE AEAD suites of the certificate's key type
// are accepted (no CBC, RC4, 3DES or RSA key exchange).
func TestTLSDefaultCipherPolicy(t *testing.T) {
	noLeaks(t)
	dir := t.TempDir()
	ca := certstest.NewCA(t)
	ec := ca.Issue(t, dir, "ec.test")
	rsaCert, rsaRoots := rsaPair(t, dir, "rsa.test")
	td := startDaemon(t, fmt.Sprintf(`
version: 1
admin: {listen: "127.0.0.1:0"}
log: {access: off}
listeners:
  - name: ec
    listen: 127.0.0.1:0
    tls: {certificates: [{cert_file: %q, key_file: %q}]}
    routes: [{name: all, pipeline: [{respond: {status: 200, body: ok}}]}]
  - name: rsa
    listen: %s
    tls: {certificates: [{cert_file: %q, key_file: %q}]}
    routes: [{name: all, pipeline: [{respond: {status: 200, body: ok}}]}]
`, ec.CertFile, ec.KeyFile, freeAddr(t), rsaCert.CertFile, rsaCert.KeyFile))

	// The default: ECDHE with AES-GCM or ChaCha20-Poly1305, for each key type.
	accepted := map[uint16]string{
		tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256:       "ec",
		tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384:       "ec",
		tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256: "ec",
		tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256:         "rsa",
		tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384:         "rsa",
		tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256:   "rsa",
	}
	listeners := []struct {
		name, sni string
		roots     *x509.CertPool
	}{{"ec", "ec.test", ca.Pool()}, {"rsa", "rsa.test", rsaRoots}}
	tried := 0
	for _, cs := range append(tls.CipherSuites(), tls.InsecureCipherSuites()...) {
		if !slices.Contains(cs.SupportedVersions, tls.VersionTLS12) {
			continue // TLS 1.3 suites: not configurable, always offered
		}
		tried++
		for _, l := range listeners {
			t.Run(l.name+"/"+cs.Name, func(t *testing.T) {
				st, err := handshake(tlsAddr(td, l.name), &tls.Config{
					ServerName: l.sni, RootCAs: l.roots, MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{cs.ID},
				})
				if accepted[cs.ID] != l.name {
					require.Error(t, err, "a client offering only %s is refused", cs.Name)
					return
				}
				require.NoError(t, err)
				assert.Equal(t, cs.ID, st.CipherSuite)
				assert.Equal(t, uint16(tls.VersionTLS12), st.Version)
			})
		}
	}
	assert.GreaterOrEqual(t, tried, 20, "every TLS 1.2 suite crypto/tls knows was tried")
	t.Run("TLS 1.3 is served", func(t *testing.T) {
		st, err := handshake(tlsAddr(td, "ec"), &tls.Config{ServerName: "ec.test", RootCAs: ca.Pool()})
		require.NoError(t, err)
		assert.Equal(t, uint16(tls.VersionTLS13), st.Version)
	})
}

// TestTLSCipherSuitesAndCurvesSettings shows cipher_suites and
// curve_preferences in force: a client offering only what the listener does
// not list is refused, on TLS 1.2 and 1.3 alike.
func TestTLSCipherSuitesAndCurvesSettings(t *testing.T) {
	noLeaks(t)
	dir := t.TempDir()
	ca := certstest.NewCA(t)
	p := ca.Issue(t, dir, "picky.test")
	td := startDaemon(t, fmt.Sprintf(`
version: 1
admin: {listen: "127.0.0.1:0"}
log: {access: off}
listeners:
  - name: picky
    listen: 127.0.0.1:0
    tls:
      certificates: [{cert_file: %[1]q, key_file: %[2]q}]
      cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384]
      curve_preferences: [P-384]
    routes: [{name: all, pipeline: [{respond: {status: 200, body: ok}}]}]
  - name: plain
    listen: %[3]s
    tls:
      certificates: [{cert_file: %[1]q, key_file: %[2]q}]
    routes: [{name: all, pipeline: [{respond: {status: 200, body: ok}}]}]
`, p.CertFile, p.KeyFile, freeAddr(t)))

	cases := []struct {
		name     string
		listener string
		max      uint16
		suites   []uint16
		curves   []tls.CurveID
		refused  bool
		suite    uint16 // the suite negotiated, when not refused (0: not checked)
		curve    tls.CurveID
	}{
		{name: "1.2 listed suite", listener: "picky", max: tls.VersionTLS12,
			suites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384}, suite: tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, curve: tls.CurveP384},
		{name: "1.2 default suite not listed", listener: "picky", max: tls.VersionTLS12,
			suites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256}, refused: true},
		{name: "1.2 curve not listed", listener: "picky", max: tls.VersionTLS12,
			curves: []tls.CurveID{tls.X25519, tls.CurveP256}, refused: true},
		{name: "1.3 curve not listed", listener: "picky", curves: []tls.CurveID{tls.X25519MLKEM768, tls.X25519}, refused: true},
		{name: "1.3 listed curve", listener: "picky", curves: []tls.CurveID{tls.CurveP384}, curve: tls.CurveP384},
		{name: "1.3 default client", listener: "picky", curve: tls.CurveP384},
		{name: "default listener takes P-521", listener: "plain", curves: []tls.CurveID{tls.CurveP521}, curve: tls.CurveP521},
		{name: "default listener 1.2 takes AES-128-GCM", listener: "plain", max: tls.VersionTLS12,
			suites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256}, suite: tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			st, err := handshake(tlsAddr(td, tc.listener), &tls.Config{
				ServerName: "picky.test", RootCAs: ca.Pool(), MaxVersion: tc.max, CipherSuites: tc.suites, CurvePreferences: tc.curves,
			})
			if tc.refused {
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
			if tc.suite != 0 {
				assert.Equal(t, tc.suite, st.CipherSuite)
			}
			if tc.curve != 0 {
				assert.Equal(t, tc.curve, st.CurveID)
			}
		})
	}
}
