package router

import (
	"fmt"
	"net"
	"net/http"
	"net/textproto"
	"net/url"
	"strings"
)

// Key extracts a request key: the value that hash balancing, the shard stage
// and split bucket a request by. A Key is a list of sources; the first source
// present in the request wins. The zero Key has no source and finds nothing.
//
// Sources: client_ip, header:NAME, cookie:NAME, query:NAME, path, host.
//
// A Key is immutable and safe for concurrent use. Value does not allocate
// except for a query value that needs unescaping.
type Key struct {
	sources []source
	spec    string
}

type sourceKind uint8

const (
	srcClientIP sourceKind = iota + 1
	srcHeader
	srcCookie
	srcQuery
	srcPath
	srcHost
)

type source struct {
	kind sourceKind
	name string // canonical header name, cookie or query parameter name
}

// ParseKey compiles key specs such as "header:X-User-ID" or "client_ip". An
// empty list, an unknown source or a source without its name is an error.
func ParseKey(specs ...string) (Key, error) {
	if len(specs) == 0 {
		return Key{}, fmt.Errorf("empty key: want one of client_ip, header:NAME, cookie:NAME, query:NAME, path, host")
	}
	k := Key{spec: strings.Join(specs, ",")}
	for _, s := range specs {
		src, err := parseSource(s)
		if err != nil {
			return Key{}, err
		}
		k.sources = append(k.sources, src)
	}
	return k, nil
}

// MustParseKey is ParseKey for keys known to be valid; it panics otherwise.
func MustParseKey(specs ...string) Key {
	k, err := ParseKey(specs...)
	if err != nil {
		panic(err)
	}
	return k
}

func parseSource(s string) (source, error) {
	kind, name, hasName := strings.Cut(strings.TrimSpace(s), ":")
	switch kind {
	case "client_ip", "path", "host":
		if hasName {
			return source{}, fmt.Errorf("key %q: %s takes no name", s, kind)
		}
		return source{kind: map[string]sourceKind{"client_ip": srcClientIP, "path": srcPath, "host": srcHost}[kind]}, nil
	case "header", "cookie", "query":
		if name == "" {
			return source{}, fmt.Errorf("key %q: %s needs a name, as in %s:NAME", s, kind, kind)
		}
		switch kind {
		case "header":
			if strings.ContainsAny(name, " \t:") {
				return source{}, fmt.Errorf("key %q: %q is not a header name", s, name)
			}
			return source{kind: srcHeader, name: textproto.CanonicalMIMEHeaderKey(name)}, nil
		case "cookie":
			return source{kind: srcCookie, name: name}, nil
		default:
			return source{kind: srcQuery, name: name}, nil
		}
	default:
		return source{}, fmt.Errorf("key %q: unknown source %q (want client_ip, header:NAME, cookie:NAME, query:NAME, path or host)", s, kind)
	}
}

// String returns the key's specs joined by commas.
func (k Key) String() string { return k.spec }

// IsZero reports whether k has no source.
func (k Key) IsZero() bool { return len(k.sources) == 0 }

// Value returns the value of the first source present in r. An empty header,
// cookie or query value counts as absent.
func (k Key) Value(r *http.Request) (string, bool) {
	for i := range k.sources {
		if v, ok := k.sources[i].value(r); ok {
			return v, true
		}
	}
	return "", false
}

func (s *source) value(r *http.Request) (string, bool) {
	switch s.kind {
	case srcClientIP:
		v := ClientIP(r)
		return v, v != ""
	case srcHeader:
		if vs := r.Header[s.name]; len(vs) > 0 && vs[0] != "" {
			return vs[0], true
		}
	case srcCookie:
		return cookieValue(r.Header["Cookie"], s.name)
	case srcQuery:
		return queryValue(r.URL.RawQuery, s.name)
	case srcPath:
		return r.URL.Path, true
	case srcHost:
		return r.Host, r.Host != ""
	}
	return "", false
}

// ClientIP returns the client address of r: the one the listener resolved
// (see ClientIPResolver), or the host part of r.RemoteAddr when r carries no
// Info.
func ClientIP(r *http.Request) string {
	if info := InfoFrom(r); info != nil && info.ClientIP != "" {
		return info.ClientIP
	}
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		return host
	}
	return r.RemoteAddr
}

// cookieValue finds name in Cookie header lines without building the cookie
// list that http.Request.Cookie would allocate.
func cookieValue(lines []string, name string) (string, bool) {
	for _, line := range lines {
		for line != "" {
			var part string
			part, line, _ = strings.Cut(line, ";")
			part = strings.TrimSpace(part)
			k, v, ok := strings.Cut(part, "=")
			if !ok || k != name {
				continue
			}
			if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
				v = v[1 : len(v)-1]
			}
			if v != "" {
				return v, true
			}
		}
	}
	return "", false
}

// queryValue finds name in a raw query without parsing the whole query into a
// map; only a value with escapes allocates.
func queryValue(raw, name string) (string, bool) {
	for raw != "" {
		var part string
		part, raw, _ = strings.Cut(raw, "&")
		k, v, _ := strings.Cut(part, "=")
		if strings.ContainsAny(k, "%+") {
			uk, err := url.QueryUnescape(k)
			if err != nil {
				continue
			}
			k = uk
		}
		if k != name || v == "" {
			continue
		}
		if strings.ContainsAny(v, "%+") {
			uv, err := url.QueryUnescape(v)
			if err != nil || uv == "" {
				continue
			}
			return uv, true
		}
		return v, true
	}
	return "", false
}
