package upstream

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"strings"
	"sync"
	"time"

	"sekisho/proxy/balance"
	"sekisho/router"
)

// Sticky is cookie affinity: the first answer from a pool sets a cookie
// that names the endpoint which gave it, and later requests carrying the
// cookie go to that endpoint while it is available. The cookie's value is
// an opaque tag, an HMAC of the pool's name and the endpoint's address, so
// it neither shows the address nor lets a client name one: a value that is
// not the tag of one of the pool's endpoints is ignored.
type Sticky struct {
	// Cookie is the cookie's name; required (a pool with Sticky and no
	// Cookie is an error).
	Cookie string
	// TTL is the cookie's Max-Age. Default 0: a session cookie.
	TTL time.Duration
	// Secure and HTTPOnly set the cookie's attributes of those names.
	// Default false.
	Secure, HTTPOnly bool
	// SameSite is the cookie's SameSite attribute. Default
	// (http.SameSiteDefaultMode): none written.
	SameSite http.SameSite
	// Key is the HMAC key. Default nil: a random key made once per
	// process, so that cookies outlive reloads but not a restart. Replicas
	// of sekisho that share a key read each other's cookies.
	Key []byte
}

// stickyKeyLen is the length of the per-process key.
const stickyKeyLen = 32

// stickyTagLen is how much of the HMAC names an endpoint: 128 bits, far
// beyond guessing a tag.
const stickyTagLen = 16

var processStickyKey = sync.OnceValue(func() []byte {
	k := make([]byte, stickyKeyLen)
	rand.Read(k) // never fails (crypto/rand's contract since Go 1.24)
	return k
})

// sticky is a pool's compiled cookie affinity: every value precomputed,
// so that a request costs a scan of its Cookie header and a map lookup.
type sticky struct {
	name string
	// index maps a cookie value to its target.
	index map[string]int
	// setCookie holds, per target, the Set-Cookie value naming it as a
	// slice of length and capacity 1, shared by every answer: an Add
	// elsewhere copies it rather than writing into it.
	setCookie [][]string
}

func newSticky(s *Sticky, pool string, targets []balance.Target) *sticky {
	key := s.Key
	if len(key) == 0 {
		key = processStickyKey()
	}
	st := &sticky{name: s.Cookie, index: make(map[string]int, len(targets)), setCookie: make([][]string, len(targets))}
	for i, t := range targets {
		v := StickyValue(key, pool, t.Addr)
		st.index[v] = i
		c := http.Cookie{Name: s.Cookie, Value: v, Path: "/", Secure: s.Secure, HttpOnly: s.HTTPOnly, SameSite: s.SameSite}
		if s.TTL > 0 {
			c.MaxAge = max(int((s.TTL+time.Second-1)/time.Second), 1)
		}
		st.setCookie[i] = []string{c.String()}
	}
	return st
}

// StickyValue is the cookie value that names the endpoint at addr of
// pool under key: HMAC-SHA256 of "pool\x00addr", truncated to 128 bits,
// in unpadded base64url.
func StickyValue(key []byte, pool, addr string) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(pool))
	m.Write([]byte{0})
	m.Write([]byte(addr))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil)[:stickyTagLen])
}

// target returns the target the request's cookie names, or -1 when it
// carries none that names one of the pool's endpoints (absent, forged,
// stale or malformed). Of several cookies of the name, the first that
// names an endpoint counts. It does not allocate.
func (s *sticky) target(h http.Header) int {
	for _, line := range h["Cookie"] {
		for line != "" {
			var part string
			part, line, _ = strings.Cut(line, ";")
			k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
			if !ok || k != s.name {
				continue
			}
			if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
				v = v[1 : len(v)-1]
			}
			if i, ok := s.index[v]; ok {
				return i
			}
		}
	}
	return -1
}

// stick adds to h, the answer's header, the cookie that names target i,
// unless the request (whose header is req) already named it.
func (s *sticky) stick(h, req http.Header, i int) {
	if s.target(req) == i {
		return
	}
	if old, ok := h["Set-Cookie"]; ok {
		h["Set-Cookie"] = append(old, s.setCookie[i][0])
		return
	}
	h["Set-Cookie"] = s.setCookie[i]
}

// stick is the hook of both forwarding paths for the answers from t.
func (t *member) stick(h, req http.Header) {
	if s := t.set.sticky; s != nil {
		s.stick(h, req, t.index)
	}
}

// stickyPick returns the endpoint the request's cookie names, when this is
// the request's first attempt and that endpoint is available and not used
// by another attempt of the same logical request (scatter's hedges); -1
// otherwise, and the balance policy picks. A retry after a failure on that
// endpoint is thus an ordinary pick, and its answer sets a new cookie. In
// a tiered set the endpoint must also be of the preferred tier: a session
// that failed over to a backup comes back once a preferred endpoint is
// available again, as the rest of the traffic does.
func (pk *picker) stickyPick(r *http.Request, info *router.Info) int {
	s := pk.set.sticky
	if s == nil || len(pk.tried) > 0 {
		return -1
	}
	i := s.target(r.Header)
	if i < 0 {
		return -1
	}
	t := &pk.set.targets[i]
	if !t.EP.Available(pk.now) {
		return -1
	}
	if info != nil && info.Tried != nil && info.Tried.Has(t.Addr) {
		return -1
	}
	if pk.set.tiered {
		pk.rule = availableOnly
		if tier, _ := pk.preferredTier(); pk.set.all[i].priority != tier {
			return -1
		}
	}
	return i
}
