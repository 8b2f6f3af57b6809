package certstest_test

import (
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"sekisho/proxy/certs"
	"sekisho/proxy/certs/certstest"
)

func TestCA(t *testing.T) {
	dir := t.TempDir()
	ca := certstest.NewCA(t)
	pool, err := certs.LoadCAPool(ca.WriteCAFile(t, dir))
	require.NoError(t, err)
	assert.True(t, ca.Certificate().IsCA)

	tests := []struct {
		name  string
		pair  certs.Pair
		usage x509.ExtKeyUsage
		dns   []string
		ips   []net.IP
	}{
		{name: "server", pair: ca.Issue(t, dir, "api.example.com", "127.0.0.1", "*.example.com"),
			usage: x509.ExtKeyUsageServerAuth, dns: []string{"api.example.com", "*.example.com"}, ips: []net.IP{net.ParseIP("127.0.0.1")}},
		{name: "same name again gets fresh files", pair: ca.Issue(t, dir, "api.example.com"),
			usage: x509.ExtKeyUsageServerAuth, dns: []string{"api.example.com"}},
		{name: "client", pair: ca.IssueClient(t, dir, "client-1"), usage: x509.ExtKeyUsageClientAuth},
	}
	seen := map[string]bool{}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.False(t, seen[tt.pair.CertFile], "file names are unique")
			seen[tt.pair.CertFile] = true
			assert.Equal(t, dir, filepath.Dir(tt.pair.CertFile))
			info, err := os.Stat(tt.pair.KeyFile)
			require.NoError(t, err)
			assert.Equal(t, os.FileMode(0o600), info.Mode().Perm(), "the key is private")

			cert, err := certs.LoadPair(tt.pair)
			require.NoError(t, err)
			assert.Equal(t, tt.dns, cert.Leaf.DNSNames)
			assert.Len(t, cert.Leaf.IPAddresses, len(tt.ips))
			for i, ip := range tt.ips {
				assert.True(t, ip.Equal(cert.Leaf.IPAddresses[i]))
			}
			for _, p := range []*x509.CertPool{pool, ca.Pool()} {
				_, err = cert.Leaf.Verify(x509.VerifyOptions{Roots: p, KeyUsages: []x509.ExtKeyUsage{tt.usage}})
				assert.NoError(t, err)
			}
			_, err = cert.Leaf.Verify(x509.VerifyOptions{Roots: certstest.NewCA(t).Pool(), KeyUsages: []x509.ExtKeyUsage{tt.usage}})
			assert.Error(t, err, "another CA does not vouch for it")
		})
	}
}
