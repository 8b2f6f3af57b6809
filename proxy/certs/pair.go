// Package certs is the certificate store of a TLS-terminating listener:
// certificate and key files loaded and checked up front, chosen by SNI on
// each handshake without a lock, and reloaded in place when the files change
// on disk (editors' rename-and-replace, Kubernetes Secret symlink swaps).
//
// It also holds the TLS policy a listener may choose from (the cipher
// suites and curves that config validates). certs imports nothing of
// sekisho: listeners and configs are its callers' business.
package certs

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
)

// Errors that LoadPair and LoadCAPool wrap, to be checked with errors.Is. A
// missing or unreadable file is reported with the *fs.PathError of the read,
// so errors.Is(err, fs.ErrNotExist) holds for a missing one; every problem
// of a key file is wrapped in a *KeyFileError, and every error in an *Error.
var (
	// ErrNoCertificate means a file holds no PEM "CERTIFICATE" block.
	ErrNoCertificate = errors.New("no PEM certificate")
	// ErrNoPrivateKey means a key file holds no PEM private key block.
	ErrNoPrivateKey = errors.New("no PEM private key")
	// ErrKeyMismatch means the private key is not the one of the leaf
	// certificate's public key.
	ErrKeyMismatch = errors.New("private key does not match the certificate")
)

// Pair names the PEM files of one certificate: CertFile holds the leaf
// followed by any intermediates, KeyFile its private key (PKCS #8, PKCS #1
// or SEC 1; not encrypted). Both may name the same file.
type Pair struct {
	CertFile string
	KeyFile  string
}

// LoadPair reads and checks one pair: the certificate chain must parse and
// the key must match the leaf. The returned certificate has Leaf set. Every
// error names the file at fault.
func LoadPair(p Pair) (*tls.Certificate, error) {
	certPEM, err := os.ReadFile(p.CertFile)
	if err != nil {
		return nil, errorf("reading certificate: %w", err)
	}
	var chain [][]byte
	for rest := certPEM; len(rest) > 0; {
		var block *pem.Block
		if block, rest = pem.Decode(rest); block == nil {
			break
		}
		if block.Type == "CERTIFICATE" {
			chain = append(chain, block.Bytes)
		}
	}
	if len(chain) == 0 {
		return nil, errorf("certificate file %s: %w", p.CertFile, ErrNoCertificate)
	}
	leaf, err := x509.ParseCertificate(chain[0])
	if err != nil {
		return nil, errorf("certificate file %s: %w", p.CertFile, err)
	}

	keyPEM, err := os.ReadFile(p.KeyFile)
	if err != nil {
		return nil, errorf("reading private key: %w", &KeyFileError{File: p.KeyFile, Err: err})
	}
	key, err := parseKey(keyPEM)
	if err != nil {
		return nil, errorf("key file %s: %w", p.KeyFile, &KeyFileError{File: p.KeyFile, Err: err})
	}
	pub, ok := leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(key.Public()) {
		return nil, errorf("key file %s for certificate file %s: %w", p.KeyFile, p.CertFile, &KeyFileError{File: p.KeyFile, Err: ErrKeyMismatch})
	}
	return &tls.Certificate{Certificate: chain, PrivateKey: key, Leaf: leaf}, nil
}

// parseKey returns the first private key in keyPEM; other blocks (such as
// the "EC PARAMETERS" openssl writes first, or a certificate when cert and
// key share a file) are skipped.
func parseKey(keyPEM []byte) (crypto.Signer, error) {
	for rest := keyPEM; len(rest) > 0; {
		var block *pem.Block
		if block, rest = pem.Decode(rest); block == nil {
			break
		}
		var key any
		var err error
		switch block.Type {
		case "PRIVATE KEY":
			key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		case "EC PRIVATE KEY":
			key, err = x509.ParseECPrivateKey(block.Bytes)
		case "RSA PRIVATE KEY":
			key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
		default:
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("parsing %s: %w", block.Type, err)
		}
		switch k := key.(type) {
		case *ecdsa.PrivateKey, *rsa.PrivateKey, ed25519.PrivateKey:
			return k.(crypto.Signer), nil
		default:
			return nil, fmt.Errorf("unsupported private key type %T", key)
		}
	}
	return nil, ErrNoPrivateKey
}

// LoadCAPool reads a PEM bundle of CA certificates, for verifying clients
// (client_ca_file) or upstreams (ca_file). A file without any certificate,
// or with one that does not parse, is an error naming the file: an empty
// pool would silently refuse every peer.
func LoadCAPool(file string) (*x509.CertPool, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, errorf("reading CA file: %w", err)
	}
	pool := x509.NewCertPool()
	n := 0
	for rest := data; len(rest) > 0; {
		var block *pem.Block
		if block, rest = pem.Decode(rest); block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, errorf("CA file %s: %w", file, err)
		}
		pool.AddCert(cert)
		n++
	}
	if n == 0 {
		return nil, errorf("CA file %s: %w", file, ErrNoCertificate)
	}
	return pool, nil
}
