package certs

import (
	"crypto/tls"
	"crypto/x509"
)

// ServerConfig returns the tls.Config of a TLS-terminating listener:
// certificates from s by SNI, at least minVersion (zero means TLS 1.2), Go's
// default cipher suites (CipherSuites is left nil: Go orders them by
// security and the hardware's AES support), and ALPN nextProtos (empty means
// "h2", "http/1.1"). A non-nil clientCAs requires every client to present a
// certificate that verifies against it (mTLS). The config is new on each
// call and the caller's to adjust before use.
func ServerConfig(s *Store, minVersion uint16, clientCAs *x509.CertPool, nextProtos []string) *tls.Config {
	if minVersion == 0 {
		minVersion = tls.VersionTLS12
	}
	if len(nextProtos) == 0 {
		nextProtos = []string{"h2", "http/1.1"}
	}
	cfg := &tls.Config{
		GetCertificate: s.GetCertificate,
		MinVersion:     minVersion,
		NextProtos:     append([]string(nil), nextProtos...),
	}
	if clientCAs != nil {
		cfg.ClientCAs = clientCAs
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg
}

// ParseMinVersion turns the configuration's min_version ("1.0", "1.1",
// "1.2", "1.3") into a tls version number; "" means "1.2".
func ParseMinVersion(s string) (uint16, error) {
	switch s {
	case "", "1.2":
		return tls.VersionTLS12, nil
	case "1.0":
		return tls.VersionTLS10, nil
	case "1.1":
		return tls.VersionTLS11, nil
	case "1.3":
		return tls.VersionTLS13, nil
	}
	return 0, errorf("TLS version %q: want one of 1.0, 1.1, 1.2, 1.3", s)
}
