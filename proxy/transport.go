package proxy

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"sekisho/http1"
	"sekisho/proxy/config"
)

// newTransport builds the one Transport a pool shares between its endpoints:
// keep-alive with a generous idle pool, bounded dial and header waits, and
// the pool's upstream protocol.
func newTransport(pc *config.Pool, tlsConf *tls.Config) *http.Transport {
	dialer := &net.Dialer{Timeout: pc.Timeouts.Connect.D(), KeepAlive: 30 * time.Second}
	t := &http.Transport{
		Proxy:                  nil, // never an environment proxy: endpoints are addressed directly
		DialContext:            dialer.DialContext,
		MaxIdleConns:           0,
		MaxIdleConnsPerHost:    pc.MaxIdlePerEndpoint,
		IdleConnTimeout:        pc.Timeouts.Idle.D(),
		ResponseHeaderTimeout:  pc.Timeouts.ResponseHeader.D(),
		TLSHandshakeTimeout:    pc.Timeouts.Connect.D() + 5*time.Second,
		ExpectContinueTimeout:  time.Second,
		MaxResponseHeaderBytes: 1 << 20,
		WriteBufferSize:        16 << 10,
		ReadBufferSize:         16 << 10,
		TLSClientConfig:        tlsConf,
		DisableCompression:     true, // pass Accept-Encoding and bodies through untouched
	}
	var protos http.Protocols
	switch pc.Protocol {
	case "h2c":
		protos.SetUnencryptedHTTP2(true)
	case "h2":
		protos.SetHTTP2(true)
	default:
		protos.SetHTTP1(true)
	}
	t.Protocols = &protos
	return t
}

// transportSignature is what decides whether a pool's Transport (and so its
// open connections) can be kept across a reload.
func transportSignature(pc *config.Pool) string {
	tlsSig := ""
	if pc.TLS != nil {
		tlsSig = fmt.Sprintf("%+v", *pc.TLS)
	}
	return fmt.Sprintf("%s|%v|%s|%d|%s", pc.Protocol, pc.Timeouts, tlsSig, pc.MaxIdlePerEndpoint, endpointSchemes(pc))
}

func endpointSchemes(pc *config.Pool) string {
	s := ""
	for _, e := range pc.Endpoints {
		if u, err := config.ParseEndpoint(e.Address); err == nil {
			s += u.Scheme[:1]
		}
	}
	return s
}

// transportCache keeps pools' Transports across Runtimes, keyed by pool name,
// so that a reload which leaves a pool's transport settings alone keeps its
// kept-alive connections. It is safe for concurrent use.
type transportCache struct {
	mu      sync.Mutex
	entries map[string]transportEntry
}

type transportEntry struct {
	sig string
	t   upstreamTransport
}

// upstreamTransport is a pool's RoundTripper: an *http.Transport, or an
// *http1.Transport in front of one.
type upstreamTransport interface {
	http.RoundTripper
	CloseIdleConnections()
}

// buildTransport returns the RoundTripper for a pool: for HTTP/1.1 pools an
// http1.Transport (which the direct path uses too) with a stock Transport
// behind it for everything it does not take; for h2 and h2c the stock
// Transport alone.
func buildTransport(pc *config.Pool) (upstreamTransport, error) {
	tc, err := upstreamTLSConfig(pc)
	if err != nil {
		return nil, err
	}
	t := newTransport(pc, tc)
	if pc.Protocol == "http1" {
		return newDirectTransport(t, pc.Timeouts.BodyIdle.D()), nil
	}
	return t, nil
}

// newDirectTransport returns an http1.Transport with the dialer, TLS and
// idle settings of fallback, which takes what it does not send itself;
// bodyIdle ends the bodies it reads that stall.
func newDirectTransport(fallback *http.Transport, bodyIdle time.Duration) *http1.Transport {
	return &http1.Transport{
		DialContext:           fallback.DialContext,
		TLSClientConfig:       fallback.TLSClientConfig,
		TLSHandshakeTimeout:   fallback.TLSHandshakeTimeout,
		MaxIdleConnsPerHost:   fallback.MaxIdleConnsPerHost,
		IdleConnTimeout:       fallback.IdleConnTimeout,
		ResponseHeaderTimeout: fallback.ResponseHeaderTimeout,
		BodyIdleTimeout:       bodyIdle,
		Fallback:              fallback,
	}
}

// get returns the cached Transport for pool when its signature matches, or
// builds a new one; commit, to be called once the config that asked for it
// is in force, caches it in place of the old one. A config that fails to
// compile thus leaves the cache and the old Transport's connections alone.
func (c *transportCache) get(pool string, pc *config.Pool) (t upstreamTransport, commit func(), err error) {
	sig := transportSignature(pc)
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.entries[pool]; ok && e.sig == sig {
		return e.t, func() {}, nil
	}
	if t, err = buildTransport(pc); err != nil {
		return nil, nil, err
	}
	return t, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.entries == nil {
			c.entries = map[string]transportEntry{}
		}
		if old, ok := c.entries[pool]; ok && old.t != t {
			// In-flight requests of the old Runtime may still use it; idle
			// connections are all it gives up now.
			old.t.CloseIdleConnections()
		}
		c.entries[pool] = transportEntry{sig: sig, t: t}
	}, nil
}

// retain drops the Transports of pools no longer configured.
func (c *transportCache) retain(pools map[string]*config.Pool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for name, e := range c.entries {
		if _, ok := pools[name]; !ok {
			e.t.CloseIdleConnections()
			delete(c.entries, name)
		}
	}
}

// closeAll closes every idle connection (shutdown).
func (c *transportCache) closeAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range c.entries {
		e.t.CloseIdleConnections()
	}
}
