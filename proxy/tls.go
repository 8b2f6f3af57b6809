package proxy

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"sekisho/proxy/certs"
	"sekisho/proxy/config"
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
	tickets  *ticketKeys
	cancel   context.CancelFunc
	wg       sync.WaitGroup // the certificate watch and the ticket key rotation
	listener string
	mu       sync.Mutex      // guards expiry: the watch writes it, a reload reads it
	expiry   map[string]bool // the names the expiry metric has a series for
}

// Session ticket keys.
//
// crypto/tls keeps automatic ticket keys in the Config a server was made
// with: here the outer Config that tls.NewListener holds and whose
// GetConfigForClient hands out the TLS state's (dynamicTLS.config). It
// rotates them lazily, on the first handshake a day after the last, and
// takes tickets for seven days. That Config belongs to the listener's
// server, not to its TLS state: a reload that replaced the TLS state (a
// changed tls section) went on taking tickets issued under the old one, a
// reload that replaced the server (changed timeouts) dropped them all, and
// nothing bounded the keys' lifetime but Go's defaults. So each TLS state
// owns its keys: random, set on its own Config with SetSessionTicketKeys
// (which crypto/tls prefers to the outer Config's), replaced every
// ticketKeyRotation by a goroutine that lives exactly as long as the state,
// and shared with nothing: two listeners, or two states of one listener,
// never take each other's tickets.
const (
	// ticketKeyRotation is how often a listener's session ticket key is
	// replaced by a new random one: twice a day, so that with the previous
	// key kept no key lives longer than a day.
	ticketKeyRotation = 12 * time.Hour
	// ticketKeysKept is how many keys decrypt tickets: the newest, which
	// also encrypts, and the one before it. A ticket therefore resumes for
	// at least one rotation period and at most two (12-24 h), after which
	// the client does a full handshake. (TLS 1.3 tickets still carry
	// crypto/tls's fixed 7-day lifetime hint; a client that offers one
	// later simply gets a full handshake.)
	ticketKeysKept = 2
)

// ticketKeys rotates the session ticket keys of one TLS state's Config.
type ticketKeys struct {
	conf *tls.Config
	mu   sync.Mutex // serialises rotations
	keys [][32]byte // newest first; at most ticketKeysKept
}

// newTicketKeys gives conf its first key, so that no handshake ever falls
// back to the outer Config's automatic keys.
func newTicketKeys(conf *tls.Config) *ticketKeys {
	k := &ticketKeys{conf: conf}
	k.rotate()
	return k
}

// rotate puts a new random key first and drops the oldest beyond
// ticketKeysKept. Tickets are encrypted with the new key from the next
// handshake on.
func (k *ticketKeys) rotate() {
	var key [32]byte
	rand.Read(key[:]) // never fails: since Go 1.24 it crashes the program rather than return an error
	k.mu.Lock()
	defer k.mu.Unlock()
	k.keys = append([][32]byte{key}, k.keys[:min(len(k.keys), ticketKeysKept-1)]...)
	k.conf.SetSessionTicketKeys(k.keys)
}

// run rotates the keys every period until ctx ends.
func (k *ticketKeys) run(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			k.rotate()
		}
	}
}

// tlsSignature is what decides whether a listener's TLS state is rebuilt.
func tlsSignature(t *config.TLS) string {
	if t == nil {
		return ""
	}
	return fmt.Sprintf("%+v", *t)
}

// newTLSState loads the certificates of t and starts watching their files.
func (s *Server) newTLSState(listener string, t *config.TLS) (*tlsState, error) {
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
	suites, curves, err := tlsPolicy(t, minV)
	if err != nil {
		return nil, err
	}
	conf := certs.ServerConfig(store, minV, clientCAs, nil)
	conf.CipherSuites, conf.CurvePreferences = suites, curves
	st := &tlsState{sig: tlsSignature(t), store: store, conf: conf, tickets: newTicketKeys(conf), listener: listener}
	s.certMetrics(st)
	loaded := store.Certificates()
	s.log.Info("certificates loaded", zap.String("listener", listener), zap.Strings("names", certNames(loaded)))
	ctx, cancel := context.WithCancel(s.ctx)
	st.cancel = cancel
	st.wg.Go(func() { st.tickets.run(ctx, ticketKeyRotation) })
	st.wg.Go(func() {
		first := true
		err := store.Watch(ctx, 200*time.Millisecond, func(err error) {
			// Watch reads the files once as soon as it watches them; that read
			// finding what was loaded above is no rotation, and says nothing.
			quiet := first && err == nil && slices.Equal(store.Certificates(), loaded)
			first = false
			switch {
			case err != nil:
				s.shared.Metrics.CertReloadErrs.WithLabelValues(listener).Inc()
				s.log.Error("certificate rotation failed; the previous certificate stays in use", zap.String("listener", listener), zap.Error(err))
			case !quiet:
				s.log.Info("certificates reloaded", zap.String("listener", listener), zap.Strings("names", certNames(store.Certificates())))
			}
			s.certMetrics(st)
		})
		if err != nil {
			s.log.Error("cannot watch certificate files; rotation needs a reload", zap.String("listener", listener), zap.Error(err))
		}
	})
	return st, nil
}

// certNames is the name of each certificate of infos.
func certNames(infos []certs.Info) []string {
	names := make([]string, len(infos))
	for i, c := range infos {
		names[i] = c.Name
	}
	return names
}

// tlsPolicy turns a tls section's cipher_suites and curve_preferences into
// crypto/tls ids: the suites default to certs.DefaultCipherSuites(minV) (the
// ECDHE AEAD suites, plus the CBC ones only TLS 1.0 and 1.1 need), the
// curves to Go's default (nil). Validate has reported any bad name already.
func tlsPolicy(t *config.TLS, minV uint16) ([]uint16, []tls.CurveID, error) {
	suites := certs.DefaultCipherSuites(minV)
	if len(t.CipherSuites) > 0 {
		suites = suites[:0]
		for _, name := range t.CipherSuites {
			id, err := certs.ParseCipherSuite(name)
			if err != nil {
				return nil, nil, err
			}
			suites = append(suites, id)
		}
	}
	var curves []tls.CurveID
	for _, name := range t.CurvePreferences {
		id, err := certs.ParseCurve(name)
		if err != nil {
			return nil, nil, err
		}
		curves = append(curves, id)
	}
	return suites, curves, nil
}

// certMetrics publishes the expiry of each certificate in use and drops the
// series of a name that a rotation took away, so that an expiry alert never
// fires for a certificate no longer served.
func (s *Server) certMetrics(st *tlsState) {
	st.mu.Lock()
	defer st.mu.Unlock()
	names := make(map[string]bool, len(st.expiry))
	for _, c := range st.store.Certificates() {
		s.shared.Metrics.CertExpiry.WithLabelValues(st.listener, c.Name).Set(float64(c.NotAfter.Unix()))
		names[c.Name] = true
	}
	for name := range st.expiry {
		if !names[name] {
			s.shared.Metrics.CertExpiry.DeleteLabelValues(st.listener, name)
		}
	}
	st.expiry = names
}

// stop ends the certificate watch and the ticket key rotation and waits
// for both.
func (st *tlsState) stop() {
	st.cancel()
	st.wg.Wait()
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
func (s *Server) wrapListener(ln net.Listener, lc *config.Listener, bl *boundListener) net.Listener {
	if lc.ProxyProtocol {
		name := lc.Name
		ln = &proxyproto.Listener{
			Listener: ln,
			Trusted:  trustedPrefixes(lc.ClientIP.TrustedProxies),
			OnError: func(remote net.Addr, err error) {
				s.shared.Metrics.ProxyProtoErrs.WithLabelValues(name).Inc()
				s.log.Warn("closed a connection for its PROXY protocol header", zap.String("listener", name), zap.Stringer("peer", remote), zap.Error(err))
			},
		}
	}
	if bl.tls != nil {
		ln = tls.NewListener(ln, bl.tls.config())
	}
	return ln
}

// clientCertSubject returns the verified client certificate's subject.
func clientCertSubject(cs *tls.ConnectionState) string {
	if cs == nil || len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return ""
	}
	return cs.VerifiedChains[0][0].Subject.String()
}
