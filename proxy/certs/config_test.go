package certs_test

import (
	"crypto/tls"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"sekisho/proxy/certs"
	"sekisho/proxy/certs/certstest"
)

func TestParseMinVersion(t *testing.T) {
	tests := []struct {
		in   string
		want uint16
		fail bool
	}{
		{in: "", want: tls.VersionTLS12},
		{in: "1.0", want: tls.VersionTLS10},
		{in: "1.1", want: tls.VersionTLS11},
		{in: "1.2", want: tls.VersionTLS12},
		{in: "1.3", want: tls.VersionTLS13},
		{in: "1.4", fail: true},
		{in: "TLS1.2", fail: true},
		{in: " 1.2", fail: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := certs.ParseMinVersion(tt.in)
			if tt.fail {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.in)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}

func TestServerConfig(t *testing.T) {
	ca := certstest.NewCA(t)
	store, err := certs.NewStore([]certs.Pair{ca.Issue(t, t.TempDir(), "api.example.com")})
	require.NoError(t, err)

	t.Run("defaults", func(t *testing.T) {
		cfg := certs.ServerConfig(store, 0, nil, nil)
		assert.Equal(t, uint16(tls.VersionTLS12), cfg.MinVersion)
		assert.Equal(t, []string{"h2", "http/1.1"}, cfg.NextProtos)
		assert.Nil(t, cfg.CipherSuites)
		assert.Equal(t, tls.NoClientCert, cfg.ClientAuth)
		assert.Nil(t, cfg.ClientCAs)
		assert.Empty(t, cfg.Certificates)
		require.NotNil(t, cfg.GetCertificate)
	})
	t.Run("explicit", func(t *testing.T) {
		protos := []string{"http/1.1"}
		pool := ca.Pool()
		cfg := certs.ServerConfig(store, tls.VersionTLS13, pool, protos)
		assert.Equal(t, uint16(tls.VersionTLS13), cfg.MinVersion)
		assert.Equal(t, []string{"http/1.1"}, cfg.NextProtos)
		assert.Equal(t, tls.RequireAndVerifyClientCert, cfg.ClientAuth)
		assert.Same(t, pool, cfg.ClientCAs)
		protos[0] = "changed"
		assert.Equal(t, []string{"http/1.1"}, cfg.NextProtos, "the config keeps its own copy")
	})
}
