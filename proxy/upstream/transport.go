package upstream

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/http"
	"time"

	"sekisho/http1"
)

// Transport is a pool's RoundTripper, as NewTransport builds it: an
// *http1.Transport in front of an *http.Transport for HTTP/1.1 pools, the
// *http.Transport alone for h2 and h2c. One Transport may outlive the pools
// that use it (a reload that leaves its settings alone keeps it and its
// connections).
type Transport interface {
	http.RoundTripper
	CloseIdleConnections()
}

// The protocols a pool may speak to its endpoints (TransportOptions.Protocol).
const (
	ProtocolHTTP1 = "http1"
	ProtocolH2C   = "h2c"
	ProtocolH2    = "h2"
)

// TransportOptions configure NewTransport. The zero value of each field is
// its default, named in its comment.
type TransportOptions struct {
	// Protocol is ProtocolHTTP1, ProtocolH2C (HTTP/2 with prior knowledge)
	// or ProtocolH2 (HTTP/2 over TLS). Default "": ProtocolHTTP1.
	Protocol string
	// ConnectTimeout bounds a dial; the TLS handshake gets 5s more.
	// Default 0: no limit.
	ConnectTimeout time.Duration
	// ResponseHeaderTimeout bounds the wait for an answer's head once the
	// request is sent. Default 0: no limit.
	ResponseHeaderTimeout time.Duration
	// IdleTimeout closes a kept-alive connection idle for this long.
	// Default 0: no limit.
	IdleTimeout time.Duration
	// BodyIdleTimeout ends an answer's body that the HTTP/1.1 direct
	// transport reads when it sends nothing for this long. Default 0: no
	// limit.
	BodyIdleTimeout time.Duration
	// MaxIdlePerEndpoint bounds kept-alive connections per endpoint.
	// Default 0: net/http's (2).
	MaxIdlePerEndpoint int
	// TLS is the client side of https endpoints. Default nil: Go's
	// defaults.
	TLS *TLSOptions
}

// TLSOptions are the client TLS settings of a pool with https endpoints,
// with its files already loaded. TLS 1.2 is the least version offered.
type TLSOptions struct {
	// ServerName is the name verified and sent in SNI. Default "": the
	// endpoint's host.
	ServerName string
	// InsecureSkipVerify accepts any certificate. Default false.
	InsecureSkipVerify bool
	// RootCAs verify the endpoints' certificates. Default nil: the
	// system's roots.
	RootCAs *x509.CertPool
	// Certificates are offered to endpoints that ask for a client
	// certificate (mTLS). Default none.
	Certificates []tls.Certificate
}

// config returns the crypto/tls client config of o; nil for nil.
func (o *TLSOptions) config() *tls.Config {
	if o == nil {
		return nil
	}
	return &tls.Config{ServerName: o.ServerName, InsecureSkipVerify: o.InsecureSkipVerify, MinVersion: tls.VersionTLS12,
		RootCAs: o.RootCAs, Certificates: o.Certificates}
}

// NewTransport returns the one Transport a pool shares between its
// endpoints: keep-alive with a generous idle pool, bounded dial and header
// waits, and the pool's protocol. For HTTP/1.1 it is an *http1.Transport,
// which the direct path uses too, with an *http.Transport behind it for
// what it does not send itself.
func NewTransport(o TransportOptions) Transport {
	dialer := &net.Dialer{Timeout: o.ConnectTimeout, KeepAlive: 30 * time.Second}
	t := &http.Transport{
		Proxy:                  nil, // never an environment proxy: endpoints are addressed directly
		DialContext:            dialer.DialContext,
		MaxIdleConns:           0,
		MaxIdleConnsPerHost:    o.MaxIdlePerEndpoint,
		IdleConnTimeout:        o.IdleTimeout,
		ResponseHeaderTimeout:  o.ResponseHeaderTimeout,
		TLSHandshakeTimeout:    o.ConnectTimeout + 5*time.Second,
		ExpectContinueTimeout:  time.Second,
		MaxResponseHeaderBytes: 1 << 20,
		WriteBufferSize:        16 << 10,
		ReadBufferSize:         16 << 10,
		TLSClientConfig:        o.TLS.config(),
		DisableCompression:     true, // pass Accept-Encoding and bodies through untouched
	}
	var protos http.Protocols
	switch o.Protocol {
	case ProtocolH2C:
		protos.SetUnencryptedHTTP2(true)
	case ProtocolH2:
		protos.SetHTTP2(true)
	default:
		protos.SetHTTP1(true)
	}
	t.Protocols = &protos
	if o.Protocol == ProtocolH2C || o.Protocol == ProtocolH2 {
		return t
	}
	return &http1.Transport{
		DialContext:           t.DialContext,
		TLSClientConfig:       t.TLSClientConfig,
		TLSHandshakeTimeout:   t.TLSHandshakeTimeout,
		MaxIdleConnsPerHost:   t.MaxIdleConnsPerHost,
		IdleConnTimeout:       t.IdleConnTimeout,
		ResponseHeaderTimeout: t.ResponseHeaderTimeout,
		BodyIdleTimeout:       o.BodyIdleTimeout,
		Fallback:              t,
	}
}
