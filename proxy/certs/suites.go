package certs

import (
	"crypto/tls"
	"errors"
	"slices"
)

// Errors that ParseCipherSuite and ParseCurve wrap, to be checked with
// errors.Is.
var (
	// ErrUnknownCipherSuite means a name crypto/tls does not know.
	ErrUnknownCipherSuite = errors.New("unknown cipher suite")
	// ErrTLS13CipherSuite means a TLS 1.3 suite was named: crypto/tls
	// always offers all three and they cannot be chosen.
	ErrTLS13CipherSuite = errors.New("is a TLS 1.3 suite, and TLS 1.3 suites are not configurable (all three are AEAD and always offered)")
	// ErrWeakCipherSuite means a known TLS 1.0-1.2 suite that is not
	// ECDHE with an AEAD: CBC (LUCKY13-prone), RC4, 3DES, or RSA key
	// exchange (no forward secrecy).
	ErrWeakCipherSuite = errors.New("is not allowed: only ECDHE suites with AES-GCM or ChaCha20-Poly1305 are")
	// ErrUnknownCurve means a key exchange name that is not one of
	// CurveNames.
	ErrUnknownCurve = errors.New("unknown curve")
)

// aeadSuites are the TLS 1.2 suites a listener may offer: ECDHE key
// exchange (forward secrecy) with an AEAD cipher. They are also the default.
var aeadSuites = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}

// legacySuites are the only suites TLS 1.0 and 1.1 have that crypto/tls
// still offers by default. They are added to the default when min_version
// asks for those versions, and never otherwise: CBC with HMAC-SHA1 is what
// testssl.sh flags as potentially LUCKY13.
var legacySuites = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA,
	tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA,
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA,
	tls.TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA,
}

// DefaultCipherSuites returns the TLS 1.0-1.2 suites a listener offers when
// its config names none: the ECDHE AEAD suites (AES-128-GCM, AES-256-GCM,
// ChaCha20-Poly1305, for ECDSA and RSA certificates), plus, only when
// minVersion is below TLS 1.2 (which has no AEAD suite), the ECDHE
// CBC-SHA1 suites that TLS 1.0 and 1.1 clients need. The order does not
// matter: crypto/tls orders suites itself, by the hardware's AES support.
// The slice is the caller's.
func DefaultCipherSuites(minVersion uint16) []uint16 {
	if minVersion != 0 && minVersion < tls.VersionTLS12 {
		return slices.Concat(aeadSuites, legacySuites)
	}
	return slices.Clone(aeadSuites)
}

// AllowedCipherSuite reports whether id may be named in cipher_suites:
// ECDHE with an AEAD, on TLS 1.2.
func AllowedCipherSuite(id uint16) bool {
	return slices.Contains(aeadSuites, id)
}

// ParseCipherSuite returns the id of a TLS 1.2 suite named as crypto/tls
// names it (the IANA name, such as "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256").
// An unknown name, a TLS 1.3 suite, or a suite that is not ECDHE with an
// AEAD is an error.
func ParseCipherSuite(name string) (uint16, error) {
	for _, list := range [][]*tls.CipherSuite{tls.CipherSuites(), tls.InsecureCipherSuites()} {
		for _, cs := range list {
			if cs.Name != name {
				continue
			}
			switch {
			case slices.Equal(cs.SupportedVersions, []uint16{tls.VersionTLS13}):
				return 0, errorf("%s %w", name, ErrTLS13CipherSuite)
			case !AllowedCipherSuite(cs.ID):
				return 0, errorf("%s %w", name, ErrWeakCipherSuite)
			}
			return cs.ID, nil
		}
	}
	return 0, errorf("%w %q", ErrUnknownCipherSuite, name)
}

// curves maps the names curve_preferences accepts (the IANA TLS Supported
// Groups names, with the NIST curves as P-256 rather than secp256r1) to
// crypto/tls's ids: every key exchange Go 1.26 implements.
var curves = []struct {
	name string
	id   tls.CurveID
}{
	{"X25519MLKEM768", tls.X25519MLKEM768},
	{"SecP256r1MLKEM768", tls.SecP256r1MLKEM768},
	{"SecP384r1MLKEM1024", tls.SecP384r1MLKEM1024},
	{"X25519", tls.X25519},
	{"P-256", tls.CurveP256},
	{"P-384", tls.CurveP384},
	{"P-521", tls.CurveP521},
}

// CurveNames lists the names ParseCurve accepts.
func CurveNames() []string {
	names := make([]string, len(curves))
	for i, c := range curves {
		names[i] = c.name
	}
	return names
}

// ParseCurve returns the id of a key exchange named in curve_preferences.
func ParseCurve(name string) (tls.CurveID, error) {
	for _, c := range curves {
		if c.name == name {
			return c.id, nil
		}
	}
	return 0, errorf("%w %q", ErrUnknownCurve, name)
}

// HybridCurve reports whether id is a post-quantum hybrid (ML-KEM) key
// exchange, which only TLS 1.3 can use.
func HybridCurve(id tls.CurveID) bool {
	switch id {
	case tls.X25519MLKEM768, tls.SecP256r1MLKEM768, tls.SecP384r1MLKEM1024:
		return true
	}
	return false
}
