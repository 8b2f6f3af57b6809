package certs_test

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"sekisho/proxy/certs"
	"sekisho/proxy/certs/certstest"
)

// serialOf identifies the certificate a pair's files hold.
func serialOf(t testing.TB, p certs.Pair) string {
	t.Helper()
	c, err := certs.LoadPair(p)
	require.NoError(t, err)
	return c.Leaf.SerialNumber.String()
}

func TestGetCertificate(t *testing.T) {
	dir := t.TempDir()
	ca := certstest.NewCA(t)
	pairs := []certs.Pair{
		ca.Issue(t, dir, "default.test"),
		ca.Issue(t, dir, "*.example.com"),
		ca.Issue(t, dir, "api.example.com", "www.other.test"),
		ca.Sign(t, dir, &x509.Certificate{Subject: pkix.Name{CommonName: "legacy.test"}}),
		ca.Sign(t, dir, &x509.Certificate{Subject: pkix.Name{CommonName: "cn-ignored.test"}, DNSNames: []string{"san.test"}}),
		ca.Issue(t, dir, "default.test", "late.test"),
		ca.Issue(t, dir, "f*.partial.test"),
	}
	store, err := certs.NewStore(pairs)
	require.NoError(t, err)

	tests := []struct {
		serverName string
		want       int // index into pairs
	}{
		{"", 0},
		{"default.test", 0},
		{"api.example.com", 2}, // exact beats the earlier wildcard
		{"API.Example.COM", 2},
		{"api.example.com.", 2},
		{"www.other.test", 2},
		{"foo.example.com", 1},
		{"FOO.EXAMPLE.COM.", 1},
		{"example.com", 0},     // a wildcard needs one more label
		{"a.b.example.com", 0}, // and only one
		{".example.com", 0},
		{"legacy.test", 3}, // CN without SANs
		{"san.test", 4},
		{"cn-ignored.test", 0}, // CN is ignored once there are SANs
		{"late.test", 5},       // its other name went to the earlier pair
		{"fo.partial.test", 0}, // partial wildcards match nothing
		{"unknown.test", 0},
	}
	for _, tt := range tests {
		t.Run(tt.serverName, func(t *testing.T) {
			got, err := store.GetCertificate(&tls.ClientHelloInfo{ServerName: tt.serverName})
			require.NoError(t, err)
			assert.Equal(t, serialOf(t, pairs[tt.want]), got.Leaf.SerialNumber.String())
		})
	}
	t.Run("nil hello", func(t *testing.T) {
		got, err := store.GetCertificate(nil)
		require.NoError(t, err)
		assert.Equal(t, serialOf(t, pairs[0]), got.Leaf.SerialNumber.String())
	})
}

func TestCertificates(t *testing.T) {
	dir := t.TempDir()
	ca := certstest.NewCA(t)
	notAfter := time.Now().Add(72 * time.Hour).Truncate(time.Second).UTC()
	pairs := []certs.Pair{
		ca.Issue(t, dir, "b.test", "a.test"),
		ca.Sign(t, dir, &x509.Certificate{Subject: pkix.Name{CommonName: "legacy.test"}, NotAfter: notAfter}),
	}
	store, err := certs.NewStore(pairs)
	require.NoError(t, err)
	infos := store.Certificates()
	require.Len(t, infos, 2)
	assert.Equal(t, "b.test", infos[0].Name)
	assert.Equal(t, pairs[0].CertFile, infos[0].File)
	assert.WithinDuration(t, time.Now().Add(24*time.Hour), infos[0].NotAfter, time.Hour)
	assert.Equal(t, certs.Info{Name: "legacy.test", NotAfter: notAfter, File: pairs[1].CertFile}, infos[1])
	infos[0].Name = "changed"
	assert.Equal(t, "b.test", store.Certificates()[0].Name, "the caller's copy")
}

func TestNewStoreErrors(t *testing.T) {
	dir := t.TempDir()
	ca := certstest.NewCA(t)
	good := ca.Issue(t, dir, "good.test")
	missing := certs.Pair{CertFile: filepath.Join(dir, "a.crt"), KeyFile: filepath.Join(dir, "a.key")}
	mismatched := certs.Pair{CertFile: good.CertFile, KeyFile: ca.Issue(t, dir, "other.test").KeyFile}

	_, err := certs.NewStore(nil)
	assert.Error(t, err)

	_, err = certs.NewStore([]certs.Pair{good, missing, mismatched})
	require.Error(t, err)
	assert.ErrorIs(t, err, fs.ErrNotExist)
	assert.ErrorIs(t, err, certs.ErrKeyMismatch, "every failing pair is reported")
	assert.Contains(t, err.Error(), missing.CertFile)
	assert.Contains(t, err.Error(), mismatched.KeyFile)
}

// TestReloadPartial rotates two pairs at once, one of them badly: the good
// one is swapped in, the bad one keeps serving its previous certificate.
func TestReloadPartial(t *testing.T) {
	dir := t.TempDir()
	ca := certstest.NewCA(t)
	a := placed(t, dir, "a", ca.Issue(t, t.TempDir(), "a.test"))
	b := placed(t, dir, "b", ca.Issue(t, t.TempDir(), "b.test"))
	store, err := certs.NewStore([]certs.Pair{a, b})
	require.NoError(t, err)
	oldA := serialOf(t, a)

	newA := ca.Issue(t, t.TempDir(), "a.test")
	copyFile(t, newA.CertFile, a.CertFile) // the new cert with the old key
	newB := ca.Issue(t, t.TempDir(), "b.test")
	copyFile(t, newB.CertFile, b.CertFile)
	copyFile(t, newB.KeyFile, b.KeyFile)

	err = store.Reload()
	require.Error(t, err)
	assert.ErrorIs(t, err, certs.ErrKeyMismatch)
	assert.Contains(t, err.Error(), a.CertFile)
	assert.NotContains(t, err.Error(), b.CertFile)

	got, err := store.GetCertificate(&tls.ClientHelloInfo{ServerName: "a.test"})
	require.NoError(t, err)
	assert.Equal(t, oldA, got.Leaf.SerialNumber.String(), "the broken pair keeps its certificate")
	got, err = store.GetCertificate(&tls.ClientHelloInfo{ServerName: "b.test"})
	require.NoError(t, err)
	assert.Equal(t, serialOf(t, newB), got.Leaf.SerialNumber.String(), "the good pair is swapped in")

	copyFile(t, newA.KeyFile, a.KeyFile)
	require.NoError(t, store.Reload())
	got, err = store.GetCertificate(&tls.ClientHelloInfo{ServerName: "a.test"})
	require.NoError(t, err)
	assert.Equal(t, serialOf(t, newA), got.Leaf.SerialNumber.String(), "repaired on the next reload")
}

// placed copies a pair to dir/<name>.crt and dir/<name>.key, the fixed
// paths a rotation overwrites.
func placed(t testing.TB, dir, name string, p certs.Pair) certs.Pair {
	t.Helper()
	dst := certs.Pair{CertFile: filepath.Join(dir, name+".crt"), KeyFile: filepath.Join(dir, name+".key")}
	copyFile(t, p.CertFile, dst.CertFile)
	copyFile(t, p.KeyFile, dst.KeyFile)
	return dst
}

func copyFile(t testing.TB, from, to string) {
	t.Helper()
	data, err := os.ReadFile(from)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(to, data, 0o600))
}

// BenchmarkGetCertificate measures the per-handshake lookup, which must not
// allocate for a lower-case name.
func BenchmarkGetCertificate(b *testing.B) {
	dir := b.TempDir()
	ca := certstest.NewCA(b)
	var pairs []certs.Pair
	pairs = append(pairs, ca.Issue(b, dir, "default.test"), ca.Issue(b, dir, "*.example.com"))
	for _, n := range []string{"a", "b", "c", "d", "e", "f", "g", "h"} {
		pairs = append(pairs, ca.Issue(b, dir, n+".example.org"))
	}
	store, err := certs.NewStore(pairs)
	require.NoError(b, err)
	for _, name := range []string{"", "e.example.org", "api.example.com", "unknown.test", "E.Example.ORG."} {
		hello := &tls.ClientHelloInfo{ServerName: name}
		b.Run("sni="+name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := store.GetCertificate(hello); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
