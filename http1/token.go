package http1

import (
	"net/textproto"
	"strings"
)

// The token grammar of RFC 9110 and the small value rules that go with it,
// shared by the server, the client and their users.

// ValidToken reports whether s is an RFC 9110 token, the syntax of header
// names and methods.
func ValidToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !TokenByte(s[i]) {
			return false
		}
	}
	return true
}

// TokenByte reports whether c may appear in a token (an RFC 9110 tchar).
func TokenByte(c byte) bool { return c < 0x80 && tokenBytes[c] }

var tokenBytes = func() (t [128]bool) {
	for c := range t {
		b := byte(c)
		t[c] = 'a' <= b && b <= 'z' || 'A' <= b && b <= 'Z' || '0' <= b && b <= '9' ||
			strings.IndexByte("!#$%&'*+-.^_`|~", b) >= 0
	}
	return t
}()

// HasToken reports whether the comma-separated values vs list token (case
// aside), as in a Connection or TE header.
func HasToken(vs []string, token string) bool {
	for _, v := range vs {
		for v != "" {
			var tok string
			tok, v, _ = strings.Cut(v, ",")
			if strings.EqualFold(strings.TrimSpace(tok), token) {
				return true
			}
		}
	}
	return false
}

// canonicalKey returns the canonical form of a header name (a slice of k
// itself when k is already canonical), or false when k is not a token.
func canonicalKey(k string) (string, bool) {
	upper := true
	canonical := true
	for i := 0; i < len(k); i++ {
		c := k[i]
		if !TokenByte(c) {
			return "", false
		}
		if upper && 'a' <= c && c <= 'z' || !upper && 'A' <= c && c <= 'Z' {
			canonical = false
		}
		upper = c == '-'
	}
	if canonical {
		return k, true
	}
	return textproto.CanonicalMIMEHeaderKey(k), true
}

// validValue reports whether v is a field value net/http would accept: no
// control bytes other than tab.
func validValue(v string) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

// parseLength parses a Content-Length value, or returns -1.
func parseLength(s string) int64 {
	if s == "" || len(s) > 18 {
		return -1
	}
	var n int64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return -1
		}
		n = n*10 + int64(c-'0')
	}
	return n
}

// asciiTable marks the letters, the digits and the bytes of extra.
func asciiTable(extra string) (t [128]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
		t[c-'a'+'A'] = true
	}
	for i := 0; i < len(extra); i++ {
		t[extra[i]] = true
	}
	return t
}
