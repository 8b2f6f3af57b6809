package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"sekisho/proxy/certs"
	"sekisho/proxy/proxyproto"
)

// tlsState is a TLS listener's certificates and settings. It is kept across
// reloads while the listener's tls section is unchanged; when the section
// changes, the new state is swapped in for new handshakes and the old one's
// certificate watch stops. Connections already open carry on.
type tlsState struct {
	sig      string
	store    *certs.Store
	conf     *tls.Config
	cancel   context.CancelFunc
	done     chan struct{}
	listener string
	mu       sync.Mutex      // guards expiry: the watch writes it, a reload reads it
	expiry   map[string]bool // the names the expiry metric has a series for
}

// tlsSignature is what decides whether a listener's TLS state is rebuilt.
func tlsSignature(t *TLSConfig) string {
	if t == nil {
		return ""
	}
	return fmt.Sprintf("%+v", *t)
}

// newTLSState loads the certificates of t and starts watching their files.
func (s *Server) newTLSState(listener string, t *TLSConfig) (*tlsState, error) {
	pairs := make([]certs.Pair, len(t.Certificates))
	for i, c := range t.Certificates {
		pairs[i] = certs.Pair{CertFile: c.CertFile, KeyFile: c.KeyFile}
	}
	store, err := certs.NewStore(pairs)
	if err != nil {
		return nil, err
	}
	minV, err := certs.ParseMinVersion(t.MinVersion)
	if err != nil {
		return nil, err
	}
	var clientCAs *x509.CertPool
	if t.ClientCAFile != "" {
		if clientCAs, err = certs.LoadCAPool(t.ClientCAFile); err != nil {
			return nil, err
		}
	}
	st := &tlsState{sig: tlsSignature(t), store: store, conf: certs.ServerConfig(store, minV, clientCAs, nil), done: make(chan struct{}), listener: listener}
	s.certMetrics(st)
	ctx, cancel := context.WithCancel(s.ctx)
	st.cancel = cancel
	go func() {
		defer close(st.done)
		err := store.Watch(ctx, 200*time.Millisecond, func(err error) {
			if err != nil {
				s.env.Metrics.CertReloadErrs.WithLabelValues(listener).Inc()
				s.log.Error("certificate rotation failed; the previous certificate stays in use", zap.String("listener", listener), zap.Error(err))
			} else {
				s.log.Info("certificates reloaded", zap.String("listener", listener))
			}
			s.certMetrics(st)
		})
		if err != nil {
			s.log.Error("cannot watch certificate files; rotation needs a reload", zap.String("listener", listener), zap.Error(err))
		}
	}()
	return st, nil
}

// certMetrics publishes the expiry of each certificate in use and drops the
// series of a name that a rotation took away, so that an expiry alert never
// fires for a certificate no longer served.
func (s *Server) certMetrics(st *tlsState) {
	st.mu.Lock()
	defer st.mu.Unlock()
	names := make(map[string]bool, len(st.expiry))
	for _, c := range st.store.Certificates() {
		s.env.Metrics.CertExpiry.WithLabelValues(st.listener, c.Name).Set(float64(c.NotAfter.Unix()))
		names[c.Name] = true
	}
	for name := range st.expiry {
		if !names[name] {
			s.env.Metrics.CertExpiry.DeleteLabelValues(st.listener, name)
		}
	}
	st.expiry = names
}

func (st *tlsState) stop() {
	st.cancel()
	<-st.done
}

// dynamicTLS serves each handshake with the listener's TLS state in force.
type dynamicTLS struct {
	cur atomic.Pointer[tlsState]
}

func (d *dynamicTLS) config() *tls.Config {
	return &tls.Config{
		NextProtos: []string{"h2", "http/1.1"},
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return d.cur.Load().conf, nil
		},
	}
}

// wrapListener adds PROXY protocol and TLS, as the listener asks.
func (s *Server) wrapListener(ln net.Listener, lc *ListenerConfig, bl *boundListener) net.Listener {
	if lc.ProxyProtocol {
		name := lc.Name
		ln = &proxyproto.Listener{
			Listener: ln,
			Trusted:  trustedPrefixes(lc.ClientIP.TrustedProxies),
			OnError: func(remote net.Addr, err error) {
				s.env.Metrics.ProxyProtoErrs.WithLabelValues(name).Inc()
				s.log.Warn("closed a connection for its PROXY protocol header", zap.String("listener", name), zap.Stringer("peer", remote), zap.Error(err))
			},
		}
	}
	if bl.tls != nil {
		ln = tls.NewListener(ln, bl.tls.config())
	}
	return ln
}

// buildUpstreamTLS is the client TLS config of a pool with https endpoints.
func buildUpstreamTLS(u *UpstreamTLS) (*tls.Config, error) {
	tc := &tls.Config{ServerName: u.ServerName, InsecureSkipVerify: u.InsecureSkipVerify, MinVersion: tls.VersionTLS12}
	if u.CAFile != "" {
		pool, err := certs.LoadCAPool(u.CAFile)
		if err != nil {
			return nil, err
		}
		tc.RootCAs = pool
	}
	if u.CertFile != "" || u.KeyFile != "" {
		cert, err := certs.LoadPair(certs.Pair{CertFile: u.CertFile, KeyFile: u.KeyFile})
		if err != nil {
			return nil, err
		}
		tc.Certificates = []tls.Certificate{*cert}
	}
	return tc, nil
}

// tls checks a listener's tls section, loading its files so that a missing
// or mismatched certificate is reported by validate, not at run time.
func (v *validation) tls(t *TLSConfig, p string) {
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
	if _, err := certs.ParseMinVersion(t.MinVersion); err != nil {
		v.at(p+".min_version", "min_version: %s", certsMessage(err))
	}
	if t.ClientCAFile != "" {
		if _, err := certs.LoadCAPool(t.ClientCAFile); err != nil {
			v.at(p+".client_ca_file", "client_ca_file: %s", certsMessage(err))
		}
	}
	if t.ForwardClientCert && t.ClientCAFile == "" {
		v.at(p+".forward_client_cert", "forward_client_cert needs client_ca_file: there is no verified client to forward")
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
	var pe *fs.PathError
	switch {
	case errors.Is(err, certs.ErrKeyMismatch), errors.Is(err, certs.ErrNoPrivateKey):
		field = "key_file"
	case errors.As(err, &pe):
		if pe.Path == keyFile && keyFile != certFile {
			field = "key_file"
		}
	case strings.HasPrefix(err.Error(), "certs: key file "):
		field = "key_file" // the key did not parse
	}
	v.at(p+"."+field, "%s: %s", field, certsMessage(err))
}

// certsMessage is a certs error without the package prefix: in a config
// error the field name already says what it is about.
func certsMessage(err error) string {
	return strings.TrimPrefix(err.Error(), "certs: ")
}

// clientCertSubject returns the verified client certificate's subject.
func clientCertSubject(cs *tls.ConnectionState) string {
	if cs == nil || len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return ""
	}
	return cs.VerifiedChains[0][0].Subject.String()
}
