// Package certstest makes throwaway certificates for tests: a CA generated
// at run time and leaf certificates it signs, written as PEM files into a
// test's directory. Keys are ECDSA P-256, which is fast to generate.
package certstest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"sekisho/proxy/certs"
)

// CA is a certificate authority that lives for one test. Its methods may be
// called from several goroutines.
type CA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// NewCA generates a self-signed CA valid from an hour ago for a day.
func NewCA(t testing.TB) *CA {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber:          serial(t),
		Subject:               pkix.Name{CommonName: "sekisho test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatalf("certstest: creating CA: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("certstest: parsing CA: %v", err)
	}
	return &CA{cert: cert, key: key}
}

// Certificate returns the CA's certificate.
func (ca *CA) Certificate() *x509.Certificate { return ca.cert }

// Pool returns a new pool holding only the CA, for a client's RootCAs or a
// server's ClientCAs.
func (ca *CA) Pool() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	return pool
}

// WriteCAFile writes the CA certificate as PEM into dir and returns its
// path.
func (ca *CA) WriteCAFile(t testing.TB, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "ca.crt")
	writePEM(t, path, "CERTIFICATE", ca.cert.Raw, 0o644)
	return path
}

// Issue signs a server certificate for names (DNS names, or IP addresses)
// with the first as its CN, writes it and its key into dir under fresh file
// names, and returns their paths.
func (ca *CA) Issue(t testing.TB, dir string, names ...string) certs.Pair {
	t.Helper()
	if len(names) == 0 {
		t.Fatalf("certstest: Issue needs at least one name")
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: names[0]},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	return ca.Sign(t, dir, tmpl)
}

// IssueClient signs a client certificate with subject CN cn, for mTLS, and
// writes it like Issue.
func (ca *CA) IssueClient(t testing.TB, dir, cn string) certs.Pair {
	t.Helper()
	return ca.Sign(t, dir, &x509.Certificate{
		Subject:     pkix.Name{CommonName: cn},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
}

// Sign signs tmpl with a new key and writes both like Issue, for the
// certificates Issue cannot express (a CN without SANs, a chosen expiry).
// Zero fields are filled in: SerialNumber random, NotBefore an hour ago,
// NotAfter a day from now, KeyUsage digital signature.
func (ca *CA) Sign(t testing.TB, dir string, tmpl *x509.Certificate) certs.Pair {
	t.Helper()
	c := *tmpl
	if c.SerialNumber == nil {
		c.SerialNumber = serial(t)
	}
	if c.NotBefore.IsZero() {
		c.NotBefore = time.Now().Add(-time.Hour)
	}
	if c.NotAfter.IsZero() {
		c.NotAfter = time.Now().Add(24 * time.Hour)
	}
	if c.KeyUsage == 0 {
		c.KeyUsage = x509.KeyUsageDigitalSignature
	}
	key := newKey(t)
	der, err := x509.CreateCertificate(rand.Reader, &c, ca.cert, key.Public(), ca.key)
	if err != nil {
		t.Fatalf("certstest: signing: %v", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatalf("certstest: encoding key: %v", err)
	}

	stem := fileStem(c.Subject.CommonName, c.DNSNames)
	f, err := os.CreateTemp(dir, stem+"-*.crt")
	if err != nil {
		t.Fatalf("certstest: %v", err)
	}
	if err := f.Close(); err != nil {
		t.Fatalf("certstest: %v", err)
	}
	p := certs.Pair{CertFile: f.Name(), KeyFile: strings.TrimSuffix(f.Name(), ".crt") + ".key"}
	writePEM(t, p.CertFile, "CERTIFICATE", der, 0o644)
	writePEM(t, p.KeyFile, "PRIVATE KEY", keyDER, 0o600)
	return p
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("certstest: generating key: %v", err)
	}
	return key
}

func serial(t testing.TB) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		t.Fatalf("certstest: serial: %v", err)
	}
	return n
}

func writePEM(t testing.TB, path, typ string, der []byte, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), mode); err != nil {
		t.Fatalf("certstest: %v", err)
	}
}

// fileStem makes a readable file name out of the certificate's first name.
func fileStem(cn string, dns []string) string {
	name := cn
	if len(dns) > 0 {
		name = dns[0]
	}
	if name == "" {
		name = "cert"
	}
	return strings.Map(func(r rune) rune {
		switch {
		case r == '*':
			return '_'
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '-':
			return r
		}
		return '_'
	}, name)
}
