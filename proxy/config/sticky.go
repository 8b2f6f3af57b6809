package config

import (
	"sekisho/router"
)

// Sticky is a pool's cookie affinity: the first answer sets a cookie that
// names the endpoint by an opaque value, and later requests with it go to
// that endpoint while it is available.
type Sticky struct {
	// Cookie is the cookie's name, a token; required.
	Cookie string `yaml:"cookie,omitempty"`
	// TTL is the cookie's Max-Age; default 0: a session cookie.
	TTL Duration `yaml:"ttl,omitempty"`
	// Secure marks the cookie Secure; default false.
	Secure bool `yaml:"secure,omitempty"`
	// HTTPOnly marks the cookie HttpOnly; default true.
	HTTPOnly *bool `yaml:"http_only,omitempty"`
	// SameSite is lax (default), strict or none (which needs secure).
	SameSite string `yaml:"same_site,omitempty"`
	// Key is the HMAC key that makes the cookie values, at least 32 bytes;
	// default "": a random key per process. Give it by environment
	// (`key: ${STICKY_KEY}`) so that GET /config does not show it.
	Key string `yaml:"key,omitempty"`
}

// MinStickyKey is the shortest sticky key accepted, in bytes.
const MinStickyKey = 32

func (s *Sticky) applyDefaults() {
	if s.HTTPOnly == nil {
		on := true
		s.HTTPOnly = &on
	}
	if s.SameSite == "" {
		s.SameSite = "lax"
	}
}

func (v *validation) sticky(s *Sticky, p string) {
	if s.Cookie == "" {
		v.at(p, "sticky: cookie (the cookie's name) is required")
	} else if !router.ValidToken(s.Cookie) {
		v.at(p+".cookie", "cookie: %q is not a cookie name (a token: no spaces, separators or control characters)", s.Cookie)
	}
	if s.TTL < 0 {
		v.at(p+".ttl", "ttl: must not be negative (0: a session cookie)")
	}
	switch s.SameSite {
	case "lax", "strict":
	case "none":
		if !s.Secure {
			v.at(p+".same_site", "same_site: none needs secure: true (browsers refuse it otherwise)")
		}
	default:
		v.at(p+".same_site", "same_site: want lax, strict or none, got %q", s.SameSite)
	}
	if s.Key != "" && len(s.Key) < MinStickyKey {
		v.at(p+".key", "key: %d bytes, want at least %d", len(s.Key), MinStickyKey)
	}
}
