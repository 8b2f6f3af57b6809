package certs_test

import (
	"crypto/tls"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"sekisho/proxy/certs"
	"sekisho/proxy/certs/certstest"
)

// serveTLS runs a TLS server on a loopback port that completes each
// handshake and writes "ok"; it stops with the test.
func serveTLS(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	require.NoError(t, err)
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				tc := c.(*tls.Conn)
				_ = tc.SetDeadline(time.Now().Add(5 * time.Second))
				if tc.Handshake() == nil {
					_, _ = tc.Write([]byte("ok"))
				}
			})
		}
	})
	t.Cleanup(func() {
		_ = ln.Close()
		wg.Wait()
	})
	return ln.Addr().String()
}

// handshake connects and reads the server's "ok": in TLS 1.3 a client
// learns that the server refused its certificate only on its first read.
func handshake(addr string, cfg *tls.Config) (tls.ConnectionState, error) {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return tls.ConnectionState{}, err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		return tls.ConnectionState{}, err
	}
	if _, err := io.ReadFull(c, make([]byte, 2)); err != nil {
		return tls.ConnectionState{}, err
	}
	return c.ConnectionState(), nil
}

func clientCert(t *testing.T, p certs.Pair) []tls.Certificate {
	t.Helper()
	c, err := tls.LoadX509KeyPair(p.CertFile, p.KeyFile)
	require.NoError(t, err)
	return []tls.Certificate{c}
}

func TestHandshake(t *testing.T) {
	dir := t.TempDir()
	ca := certstest.NewCA(t)
	otherCA := certstest.NewCA(t)
	pairs := []certs.Pair{
		ca.Issue(t, dir, "default.test", "127.0.0.1"),
		ca.Issue(t, dir, "*.example.com"),
		ca.Issue(t, dir, "api.example.com"),
		ca.Issue(t, dir, "www.other.test"),
	}
	store, err := certs.NewStore(pairs)
	require.NoError(t, err)
	plain := serveTLS(t, certs.ServerConfig(store, 0, nil, nil))
	only13 := serveTLS(t, certs.ServerConfig(store, tls.VersionTLS13, nil, nil))
	mutual := serveTLS(t, certs.ServerConfig(store, 0, ca.Pool(), nil))

	client := func(serverName string) *tls.Config {
		return &tls.Config{RootCAs: ca.Pool(), ServerName: serverName}
	}
	with := func(cfg *tls.Config, change func(*tls.Config)) *tls.Config {
		change(cfg)
		return cfg
	}
	tests := []struct {
		name    string
		addr    string
		client  *tls.Config
		refused string // a part of the error when the handshake must fail
		pair    int    // the certificate expected
		version uint16 // 0: not checked
		proto   string
	}{
		{name: "SNI exact name", addr: plain, client: client("api.example.com"), pair: 2},
		{name: "SNI second exact name", addr: plain, client: client("www.other.test"), pair: 3},
		{name: "SNI wildcard", addr: plain, client: client("shop.example.com"), pair: 1},
		{name: "no SNI gets the default", addr: plain, client: client(""), pair: 0},
		{name: "TLS 1.1 refused", addr: plain, client: with(client("api.example.com"), func(c *tls.Config) {
			c.MinVersion, c.MaxVersion = tls.VersionTLS10, tls.VersionTLS11
		}), refused: "protocol version not supported"},
		{name: "TLS 1.2 accepted", addr: plain, client: with(client("api.example.com"), func(c *tls.Config) {
			c.MaxVersion = tls.VersionTLS12
		}), pair: 2, version: tls.VersionTLS12},
		{name: "TLS 1.3 accepted", addr: plain, client: client("api.example.com"), pair: 2, version: tls.VersionTLS13},
		{name: "TLS 1.2 refused by a 1.3 minimum", addr: only13, client: with(client("api.example.com"), func(c *tls.Config) {
			c.MaxVersion = tls.VersionTLS12
		}), refused: "protocol version not supported"},
		{name: "ALPN h2", addr: plain, client: with(client("api.example.com"), func(c *tls.Config) {
			c.NextProtos = []string{"h2", "http/1.1"}
		}), pair: 2, proto: "h2"},
		{name: "ALPN http/1.1", addr: plain, client: with(client("api.example.com"), func(c *tls.Config) {
			c.NextProtos = []string{"http/1.1"}
		}), pair: 2, proto: "http/1.1"},
		{name: "mTLS without a client certificate", addr: mutual, client: client("api.example.com"), refused: "certificate required"},
		{name: "mTLS 1.2 without a client certificate", addr: mutual, client: with(client("api.example.com"), func(c *tls.Config) {
			c.MaxVersion = tls.VersionTLS12
		}), refused: "handshake failure"},
		{name: "mTLS with a certificate of another CA", addr: mutual, client: with(client("api.example.com"), func(c *tls.Config) {
			c.Certificates = clientCert(t, otherCA.IssueClient(t, dir, "intruder"))
		}), refused: "unknown certificate authority"},
		{name: "mTLS with a signed client certificate", addr: mutual, client: with(client("api.example.com"), func(c *tls.Config) {
			c.Certificates = clientCert(t, ca.IssueClient(t, dir, "client-1"))
		}), pair: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			state, err := handshake(tt.addr, tt.client)
			if tt.refused != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.refused)
				return
			}
			require.NoError(t, err)
			require.NotEmpty(t, state.PeerCertificates)
			assert.Equal(t, serialOf(t, pairs[tt.pair]), state.PeerCertificates[0].SerialNumber.String())
			if tt.version != 0 {
				assert.Equal(t, tt.version, state.Version)
			}
			assert.Equal(t, tt.proto, state.NegotiatedProtocol)
		})
	}
}
