package certs

import (
	"crypto/tls"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Store holds the certificates of one listener and picks one per handshake
// by SNI. Create it with NewStore; the zero Store is not usable.
//
// Names are each certificate's DNS SANs, or its subject CN when it has no
// SAN at all (as browsers no longer do, but old internal certificates need).
// A server name is matched case-insensitively and without its trailing dot:
// an exact name first, then a wildcard ("*.example.com" covers exactly one
// more label, as in TLS: "a.example.com", not "example.com" nor
// "a.b.example.com"). When two pairs claim a name, the earlier pair wins. A
// handshake without SNI, or whose name nothing matches, gets the first pair.
//
// A Store is safe for concurrent use. GetCertificate reads an immutable
// snapshot through an atomic pointer, so a Reload never holds up a
// handshake; Reloads are serialised among themselves.
type Store struct {
	pairs   []Pair
	current atomic.Pointer[snapshot]
	reload  sync.Mutex
}

// Info describes a certificate in a Store, for the expiry metric.
type Info struct {
	// Name is the certificate's first DNS SAN, or its subject CN when it
	// has none.
	Name string
	// NotAfter is the leaf's expiry.
	NotAfter time.Time
	// File is the pair's CertFile.
	File string
}

// snapshot is an immutable view of the loaded certificates: replaced whole,
// never modified.
type snapshot struct {
	certs    []*tls.Certificate // one per pair, in order
	exact    map[string]*tls.Certificate
	wildcard map[string]*tls.Certificate // keyed by the parent: "example.com" for "*.example.com"
	infos    []Info
}

// NewStore loads every pair; any failure is an error, and every failing pair
// is reported at once. There must be at least one pair; the first is the
// default certificate.
func NewStore(pairs []Pair) (*Store, error) {
	if len(pairs) == 0 {
		return nil, errors.New("certs: no certificate pairs")
	}
	certs := make([]*tls.Certificate, len(pairs))
	var errs []error
	for i, p := range pairs {
		c, err := LoadPair(p)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		certs[i] = c
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	s := &Store{pairs: append([]Pair(nil), pairs...)}
	s.current.Store(newSnapshot(s.pairs, certs))
	return s, nil
}

func newSnapshot(pairs []Pair, certs []*tls.Certificate) *snapshot {
	snap := &snapshot{
		certs:    certs,
		exact:    make(map[string]*tls.Certificate),
		wildcard: make(map[string]*tls.Certificate),
		infos:    make([]Info, len(certs)),
	}
	for i, c := range certs {
		names := c.Leaf.DNSNames
		if len(names) == 0 && c.Leaf.Subject.CommonName != "" {
			names = []string{c.Leaf.Subject.CommonName}
		}
		for _, n := range names {
			n = normalize(n)
			m := snap.exact
			if parent, ok := strings.CutPrefix(n, "*."); ok {
				n, m = parent, snap.wildcard
			}
			if n == "" || strings.Contains(n, "*") {
				continue // partial wildcards ("f*.example.com") match nothing in TLS
			}
			if _, taken := m[n]; !taken {
				m[n] = c
			}
		}
		snap.infos[i] = Info{NotAfter: c.Leaf.NotAfter, File: pairs[i].CertFile}
		if len(names) > 0 {
			snap.infos[i].Name = names[0]
		}
	}
	return snap
}

// normalize lower-cases name and drops one trailing dot, allocating only
// when there is an upper-case letter.
func normalize(name string) string {
	name = strings.TrimSuffix(name, ".")
	for i := 0; i < len(name); i++ {
		if c := name[i]; 'A' <= c && c <= 'Z' {
			return strings.ToLower(name)
		}
	}
	return name
}

// GetCertificate returns the certificate for a handshake, as
// tls.Config.GetCertificate. It never fails: a name nothing matches gets the
// default certificate, and the client decides whether to trust it.
func (s *Store) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	snap := s.current.Load()
	if hello == nil || hello.ServerName == "" {
		return snap.certs[0], nil
	}
	name := normalize(hello.ServerName)
	if c, ok := snap.exact[name]; ok {
		return c, nil
	}
	if i := strings.IndexByte(name, '.'); i > 0 {
		if c, ok := snap.wildcard[name[i+1:]]; ok {
			return c, nil
		}
	}
	return snap.certs[0], nil
}

// Reload reads every pair again. A pair that loads replaces its certificate;
// a pair that fails keeps the one it had, so a half-written rotation never
// takes a name offline, and its error (naming the file) is returned, joined
// with the others'. Handshakes see the new set as soon as Reload returns.
func (s *Store) Reload() error {
	s.reload.Lock()
	defer s.reload.Unlock()
	old := s.current.Load()
	certs := make([]*tls.Certificate, len(s.pairs))
	var errs []error
	for i, p := range s.pairs {
		c, err := LoadPair(p)
		if err != nil {
			errs = append(errs, err)
			c = old.certs[i]
		}
		certs[i] = c
	}
	s.current.Store(newSnapshot(s.pairs, certs))
	return errors.Join(errs...)
}

// Certificates describes the certificates in use, one per pair in order. The
// slice is the caller's.
func (s *Store) Certificates() []Info {
	return append([]Info(nil), s.current.Load().infos...)
}
