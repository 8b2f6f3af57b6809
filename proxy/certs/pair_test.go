package certs_test

import (
	"crypto/x509"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"sekisho/proxy/certs"
	"sekisho/proxy/certs/certstest"
)

func TestLoadPair(t *testing.T) {
	dir := t.TempDir()
	ca := certstest.NewCA(t)
	good := ca.Issue(t, dir, "api.example.com")
	other := ca.Issue(t, dir, "other.example.com")
	garbage := filepath.Join(dir, "garbage.pem")
	require.NoError(t, os.WriteFile(garbage, []byte("not a PEM file\n"), 0o644))
	missing := filepath.Join(dir, "missing.pem")

	tests := []struct {
		name  string
		pair  certs.Pair
		err   error    // nil means success
		names []string // files the error must name
	}{
		{name: "valid", pair: good},
		{name: "cert and key in one file", pair: combined(t, dir, good)},
		{name: "missing certificate", pair: certs.Pair{CertFile: missing, KeyFile: good.KeyFile},
			err: fs.ErrNotExist, names: []string{missing}},
		{name: "missing key", pair: certs.Pair{CertFile: good.CertFile, KeyFile: missing},
			err: fs.ErrNotExist, names: []string{missing}},
		{name: "unreadable certificate", pair: certs.Pair{CertFile: dir, KeyFile: good.KeyFile},
			names: []string{dir}},
		{name: "no PEM certificate", pair: certs.Pair{CertFile: garbage, KeyFile: good.KeyFile},
			err: certs.ErrNoCertificate, names: []string{garbage}},
		{name: "key file holds only a certificate", pair: certs.Pair{CertFile: good.CertFile, KeyFile: good.CertFile},
			err: certs.ErrNoPrivateKey, names: []string{good.CertFile}},
		{name: "certificate file holds only a key", pair: certs.Pair{CertFile: good.KeyFile, KeyFile: good.KeyFile},
			err: certs.ErrNoCertificate, names: []string{good.KeyFile}},
		{name: "key of another certificate", pair: certs.Pair{CertFile: good.CertFile, KeyFile: other.KeyFile},
			err: certs.ErrKeyMismatch, names: []string{good.CertFile, other.KeyFile}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cert, err := certs.LoadPair(tt.pair)
			if tt.err == nil && tt.names == nil {
				require.NoError(t, err)
				require.NotNil(t, cert.Leaf)
				assert.Equal(t, []string{"api.example.com"}, cert.Leaf.DNSNames)
				assert.Len(t, cert.Certificate, 1)
				assert.NotNil(t, cert.PrivateKey)
				return
			}
			require.Error(t, err)
			assert.Nil(t, cert)
			if tt.err != nil {
				assert.ErrorIs(t, err, tt.err)
			}
			for _, n := range tt.names {
				assert.Contains(t, err.Error(), n)
			}
		})
	}
}

// combined writes a file holding both the certificate and its key.
func combined(t *testing.T, dir string, p certs.Pair) certs.Pair {
	t.Helper()
	c, err := os.ReadFile(p.CertFile)
	require.NoError(t, err)
	k, err := os.ReadFile(p.KeyFile)
	require.NoError(t, err)
	path := filepath.Join(dir, "combined.pem")
	require.NoError(t, os.WriteFile(path, append(k, c...), 0o600))
	return certs.Pair{CertFile: path, KeyFile: path}
}

func TestLoadCAPool(t *testing.T) {
	dir := t.TempDir()
	ca := certstest.NewCA(t)
	caFile := ca.WriteCAFile(t, dir)
	leaf := ca.Issue(t, dir, "api.example.com")
	empty := filepath.Join(dir, "empty.pem")
	require.NoError(t, os.WriteFile(empty, nil, 0o644))
	bad := filepath.Join(dir, "bad.pem")
	require.NoError(t, os.WriteFile(bad, []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), 0o644))

	tests := []struct {
		name string
		file string
		err  error
		fail bool
	}{
		{name: "CA file", file: caFile},
		{name: "empty file", file: empty, err: certs.ErrNoCertificate, fail: true},
		{name: "key only", file: leaf.KeyFile, err: certs.ErrNoCertificate, fail: true},
		{name: "certificate that does not parse", file: bad, fail: true},
		{name: "missing file", file: filepath.Join(dir, "nope.pem"), err: fs.ErrNotExist, fail: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pool, err := certs.LoadCAPool(tt.file)
			if tt.fail {
				require.Error(t, err)
				assert.Nil(t, pool)
				assert.Contains(t, err.Error(), tt.file)
				if tt.err != nil {
					assert.ErrorIs(t, err, tt.err)
				}
				return
			}
			require.NoError(t, err)
			cert, err := certs.LoadPair(leaf)
			require.NoError(t, err)
			_, err = cert.Leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: "api.example.com"})
			assert.NoError(t, err, "the pool verifies what the CA signed")
		})
	}
}
