package config

import (
	"crypto/tls"
	"errors"
	"fmt"
	"strings"

	"sekisho/proxy/certs"
)

// tls checks a listener's tls section, loading its files so that a missing
// or mismatched certificate is reported by validate, not at run time.
func (v *validation) tls(t *TLS, p string) {
	if len(t.Certificates) == 0 {
		v.at(p, "tls: at least one certificate is needed")
	}
	for i, c := range t.Certificates {
		cp := fmt.Sprintf("%s.certificates[%d]", p, i)
		switch {
		case c.CertFile == "":
			v.at(cp, "cert_file is missing")
		case c.KeyFile == "":
			v.at(cp, "key_file is missing")
		default:
			v.pair(cp, c.CertFile, c.KeyFile)
		}
	}
	minV, err := certs.ParseMinVersion(t.MinVersion)
	if err != nil {
		v.at(p+".min_version", "min_version: %s", certsMessage(err))
	}
	v.cipherSuites(t, p, minV)
	v.curves(t, p, minV)
	if t.ClientCAFile != "" {
		if _, err := certs.LoadCAPool(t.ClientCAFile); err != nil {
			v.at(p+".client_ca_file", "client_ca_file: %s", certsMessage(err))
		}
	}
	if t.ForwardClientCert && t.ClientCAFile == "" {
		v.at(p+".forward_client_cert", "forward_client_cert needs client_ca_file: there is no verified client to forward")
	}
}

// cipherSuites checks cipher_suites: each name known, TLS 1.2, ECDHE with
// an AEAD, and listed once; and the list useful for min_version (minV 0:
// min_version is bad and already reported).
func (v *validation) cipherSuites(t *TLS, p string, minV uint16) {
	if len(t.CipherSuites) == 0 {
		return
	}
	switch {
	case minV == tls.VersionTLS13:
		v.at(p+".cipher_suites", "cipher_suites: has no effect with min_version %q: TLS 1.3 suites are not configurable", t.MinVersion)
		return
	case minV != 0 && minV < tls.VersionTLS12:
		v.at(p+".cipher_suites", "cipher_suites: TLS 1.0 and 1.1 have no AEAD suite, so with min_version %q their clients could not connect: "+
			"leave cipher_suites unset (the default then adds the CBC suites they need) or raise min_version to 1.2", t.MinVersion)
		return
	}
	seen := map[uint16]bool{}
	for i, name := range t.CipherSuites {
		ip := fmt.Sprintf("%s.cipher_suites[%d]", p, i)
		id, err := certs.ParseCipherSuite(name)
		switch {
		case errors.Is(err, certs.ErrUnknownCipherSuite):
			v.at(ip, "cipher_suites: %s (want a crypto/tls name such as TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256)", certsMessage(err))
		case errors.Is(err, certs.ErrWeakCipherSuite):
			v.at(ip, "cipher_suites: %s (no CBC, RC4, 3DES or RSA key exchange)", certsMessage(err))
		case err != nil:
			v.at(ip, "cipher_suites: %s", certsMessage(err))
		case seen[id]:
			v.at(ip, "cipher_suites: %s is listed twice", name)
		}
		seen[id] = true
	}
}

// curves checks curve_preferences: each name known and listed once, and a
// classical curve among them while TLS 1.2 or older is allowed (minV 0:
// min_version is bad and already reported).
func (v *validation) curves(t *TLS, p string, minV uint16) {
	if len(t.CurvePreferences) == 0 {
		return
	}
	seen := map[tls.CurveID]bool{}
	classical := false
	for i, name := range t.CurvePreferences {
		id, err := certs.ParseCurve(name)
		switch {
		case err != nil:
			names := certs.CurveNames()
			v.at(fmt.Sprintf("%s.curve_preferences[%d]", p, i), "curve_preferences: %s (want %s or %s)",
				certsMessage(err), strings.Join(names[:len(names)-1], ", "), names[len(names)-1])
			continue
		case seen[id]:
			v.at(fmt.Sprintf("%s.curve_preferences[%d]", p, i), "curve_preferences: %s is listed twice", name)
		}
		seen[id] = true
		classical = classical || !certs.HybridCurve(id)
	}
	if !classical && len(seen) > 0 && minV != 0 && minV < tls.VersionTLS13 {
		v.at(p+".curve_preferences", "curve_preferences: TLS 1.2 and older need one of X25519, P-256, P-384 or P-521 "+
			"(the ML-KEM hybrids are TLS 1.3 only), and min_version %q allows them", t.MinVersion)
	}
}

// upstreamTLS checks a pool's tls section.
func (v *validation) upstreamTLS(u *UpstreamTLS, p string) {
	if u.CAFile != "" {
		if _, err := certs.LoadCAPool(u.CAFile); err != nil {
			v.at(p+".ca_file", "ca_file: %s", certsMessage(err))
		}
	}
	if (u.CertFile == "") != (u.KeyFile == "") {
		v.at(p, "tls: cert_file and key_file go together")
	} else if u.CertFile != "" {
		v.pair(p, u.CertFile, u.KeyFile)
	}
}

// pair loads a certificate and its key and reports a failure at the field
// that names the file at fault: the key file when the certificate was read
// but the key is missing, unreadable or not the certificate's own.
func (v *validation) pair(p, certFile, keyFile string) {
	_, err := certs.LoadPair(certs.Pair{CertFile: certFile, KeyFile: keyFile})
	if err == nil {
		return
	}
	field := "cert_file"
	if kfe := (*certs.KeyFileError)(nil); errors.As(err, &kfe) {
		field = "key_file"
	}
	v.at(p+"."+field, "%s: %s", field, certsMessage(err))
}

// certsMessage is a certs error without the package prefix: in a config
// error the field name already says what it is about.
func certsMessage(err error) string {
	if ce := (*certs.Error)(nil); errors.As(err, &ce) {
		return ce.Err.Error()
	}
	return err.Error()
}
