package config

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"sekisho/proxy/certs/certstest"
)

// TestTLSSettingErrors checks that every bad cipher_suites or
// curve_preferences entry is reported at its own FILE:LINE:COL.
func TestTLSSettingErrors(t *testing.T) {
	dir := t.TempDir()
	ca := certstest.NewCA(t)
	p := ca.Issue(t, dir, "x.test")
	path := filepath.Join(dir, "sekisho.yaml")
	text := fmt.Sprintf(`version: 1
listeners:
  - name: a
    listen: 127.0.0.1:0
    tls:
      certificates: [{cert_file: %[1]q, key_file: %[2]q}]
      cipher_suites:
        - TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        - TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA
        - TLS_AES_128_GCM_SHA256
        - TLS_RSA_WITH_AES_128_GCM_SHA256
        - TLS_NOPE
        - TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
      curve_preferences: [X25519, secp256r1, P-256, X25519]
    routes: [{name: all, pipeline: [{respond: {status: 200}}]}]
  - name: b
    listen: 127.0.0.2:0
    tls:
      certificates: [{cert_file: %[1]q, key_file: %[2]q}]
      min_version: "1.1"
      cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256]
      curve_preferences: [X25519MLKEM768]
    routes: [{name: all, pipeline: [{respond: {status: 200}}]}]
  - name: c
    listen: 127.0.0.3:0
    tls:
      certificates: [{cert_file: %[1]q, key_file: %[2]q}]
      min_version: "1.3"
      cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256]
      curve_preferences: [X25519MLKEM768]
    routes: [{name: all, pipeline: [{respond: {status: 200}}]}]
`, p.CertFile, p.KeyFile)
	require.NoError(t, os.WriteFile(path, []byte(text), 0o644))
	got := loadErrors(t, path)
	want := []string{
		`9:11: cipher_suites: TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA is not allowed: only ECDHE suites with AES-GCM or ChaCha20-Poly1305 are (no CBC, RC4, 3DES or RSA key exchange)`,
		`10:11: cipher_suites: TLS_AES_128_GCM_SHA256 is a TLS 1.3 suite, and TLS 1.3 suites are not configurable (all three are AEAD and always offered)`,
		`11:11: cipher_suites: TLS_RSA_WITH_AES_128_GCM_SHA256 is not allowed: only ECDHE suites with AES-GCM or ChaCha20-Poly1305 are (no CBC, RC4, 3DES or RSA key exchange)`,
		`12:11: cipher_suites: unknown cipher suite "TLS_NOPE" (want a crypto/tls name such as TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256)`,
		`13:11: cipher_suites: TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 is listed twice`,
		`14:35: curve_preferences: unknown curve "secp256r1" (want X25519MLKEM768, SecP256r1MLKEM768, SecP384r1MLKEM1024, X25519, P-256, P-384 or P-521)`,
		`14:53: curve_preferences: X25519 is listed twice`,
		`21:22: cipher_suites: TLS 1.0 and 1.1 have no AEAD suite, so with min_version "1.1" their clients could not connect: leave cipher_suites unset (the default then adds the CBC suites they need) or raise min_version to 1.2`,
		`22:26: curve_preferences: TLS 1.2 and older need one of X25519, P-256, P-384 or P-521 (the ML-KEM hybrids are TLS 1.3 only), and min_version "1.1" allows them`,
		`29:22: cipher_suites: has no effect with min_version "1.3": TLS 1.3 suites are not configurable`,
	}
	assert.Equal(t, want, got, "a hybrid-only curve list is fine when only TLS 1.3 is served")
}

// TestTLSConfigErrors: a missing or unreadable certificate, a key that is
// not the certificate's, and a CA file without certificates are config
// errors at validate time, each at the position of the file at fault.
func TestTLSConfigErrors(t *testing.T) {
	dir := t.TempDir()
	ca := certstest.NewCA(t)
	good := ca.Issue(t, dir, "good.test")
	other := ca.Issue(t, dir, "other.test")
	keyOnly := filepath.Join(dir, "key-only.pem") // a key where a CA bundle belongs
	keyPEM, err := os.ReadFile(good.KeyFile)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(keyOnly, keyPEM, 0o600))
	notPEM := filepath.Join(dir, "not-pem.txt")
	require.NoError(t, os.WriteFile(notPEM, []byte("no certificates here\n"), 0o644))
	missing := filepath.Join(dir, "missing.crt")
	missingKey := filepath.Join(dir, "missing.key")
	files := strings.NewReplacer("GOOD_CERT", good.CertFile, "GOOD_KEY", good.KeyFile, "OTHER_KEY", other.KeyFile,
		"MISSING_CERT", missing, "MISSING_KEY", missingKey, "A_DIR", dir, "KEY_ONLY", keyOnly, "NOT_PEM", notPEM)
	mismatch := fmt.Sprintf("key file %s for certificate file %s: private key does not match the certificate", other.KeyFile, good.CertFile)

	cases := []struct {
		name string
		text string
		want []string
	}{
		{
			name: "listener certificates",
			text: `version: 1
listeners:
  - name: edge
    listen: 127.0.0.1:0
    tls:
      certificates:
        - cert_file: MISSING_CERT
          key_file: GOOD_KEY
        - cert_file: A_DIR
          key_file: GOOD_KEY
        - cert_file: GOOD_CERT
          key_file: OTHER_KEY
        - cert_file: GOOD_CERT
          key_file: MISSING_KEY
    routes: [{name: all, pipeline: [{respond: {}}]}]
`,
			want: []string{
				"7:22: cert_file: reading certificate: open " + missing + ": no such file or directory",
				"9:22: cert_file: reading certificate: read " + dir + ": is a directory",
				"12:21: key_file: " + mismatch,
				"14:21: key_file: reading private key: open " + missingKey + ": no such file or directory",
			},
		},
		{
			name: "client CA without certificates",
			text: `version: 1
listeners:
  - name: edge
    listen: 127.0.0.1:0
    tls:
      certificates: [{cert_file: GOOD_CERT, key_file: GOOD_KEY}]
      client_ca_file: KEY_ONLY
    routes: [{name: all, pipeline: [{respond: {}}]}]
`,
			want: []string{"7:23: client_ca_file: CA file " + keyOnly + ": no PEM certificate"},
		},
		{
			name: "upstream tls",
			text: `version: 1
listeners:
  - name: edge
    listen: 127.0.0.1:0
    routes: [{name: all, pipeline: [{proxy: web}]}]
pools:
  web:
    endpoints: [https://127.0.0.1:9443]
    tls:
      ca_file: NOT_PEM
      cert_file: GOOD_CERT
      key_file: OTHER_KEY
`,
			want: []string{
				"10:16: ca_file: CA file " + notPEM + ": no PEM certificate",
				"12:17: key_file: " + mismatch,
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "sekisho.yaml")
			require.NoError(t, os.WriteFile(path, []byte(files.Replace(tc.text)), 0o644))
			assert.Equal(t, tc.want, loadErrors(t, path))
		})
	}
}
