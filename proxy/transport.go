package proxy

import (
	"crypto/tls"
	"fmt"
	"sync"

	"sekisho/proxy/certs"
	"sekisho/proxy/config"
	"sekisho/proxy/upstream"
)

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
//
// It is the daemon's, not upstream's: it lives in the Shared as long as the
// process, its key is the pool's config section (transportSignature), and
// on a hit it loads no TLS file at all, which only a cache that sees the
// config, and may import proxy/certs, can do.
type transportCache struct {
	mu      sync.Mutex
	entries map[string]transportEntry
}

type transportEntry struct {
	sig string
	t   upstream.Transport
}

// buildTransport returns the Transport for a pool, with its TLS files
// loaded.
func buildTransport(pc *config.Pool) (upstream.Transport, error) {
	o := upstream.TransportOptions{Protocol: pc.Protocol, ConnectTimeout: pc.Timeouts.Connect.D(),
		ResponseHeaderTimeout: pc.Timeouts.ResponseHeader.D(), IdleTimeout: pc.Timeouts.Idle.D(),
		BodyIdleTimeout: pc.Timeouts.BodyIdle.D(), MaxIdlePerEndpoint: pc.MaxIdlePerEndpoint}
	if pc.TLS != nil {
		tc, err := upstreamTLS(pc.TLS)
		if err != nil {
			return nil, err
		}
		o.TLS = tc
	}
	return upstream.NewTransport(o), nil
}

// upstreamTLS loads the files of a pool's tls section.
func upstreamTLS(u *config.UpstreamTLS) (*upstream.TLSOptions, error) {
	o := &upstream.TLSOptions{ServerName: u.ServerName, InsecureSkipVerify: u.InsecureSkipVerify}
	if u.CAFile != "" {
		pool, err := certs.LoadCAPool(u.CAFile)
		if err != nil {
			return nil, err
		}
		o.RootCAs = pool
	}
	if u.CertFile != "" || u.KeyFile != "" {
		cert, err := certs.LoadPair(certs.Pair{CertFile: u.CertFile, KeyFile: u.KeyFile})
		if err != nil {
			return nil, err
		}
		o.Certificates = []tls.Certificate{*cert}
	}
	return o, nil
}

// get returns the cached Transport for pool when its signature matches, or
// builds a new one; commit, to be called once the config that asked for it
// is in force, caches it in place of the old one. A config that fails to
// compile thus leaves the cache and the old Transport's connections alone.
func (c *transportCache) get(pool string, pc *config.Pool) (t upstream.Transport, commit func(), err error) {
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
