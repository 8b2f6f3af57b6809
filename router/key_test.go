package router

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseKeyErrors(t *testing.T) {
	tests := []struct {
		name    string
		specs   []string
		wantErr string
	}{
		{name: "empty list", specs: nil, wantErr: "empty key"},
		{name: "unknown source", specs: []string{"ip"}, wantErr: `unknown source "ip"`},
		{name: "header without name", specs: []string{"header:"}, wantErr: "needs a name"},
		{name: "cookie without name", specs: []string{"cookie"}, wantErr: "needs a name"},
		{name: "query without name", specs: []string{"query:"}, wantErr: "needs a name"},
		{name: "client_ip with name", specs: []string{"client_ip:x"}, wantErr: "takes no name"},
		{name: "bad header name", specs: []string{"header:X User"}, wantErr: "not a header name"},
		{name: "error in a later source", specs: []string{"path", "nope"}, wantErr: "unknown source"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, err := ParseKey(tt.specs...)
			assert.ErrorContains(t, err, tt.wantErr)
			assert.True(t, k.IsZero())
		})
	}
	assert.Panics(t, func() { MustParseKey("nope") })
}

func TestKeyValue(t *testing.T) {
	req := func(target string, header http.Header) *http.Request {
		r := httptest.NewRequest("GET", target, nil)
		r.RemoteAddr = "192.0.2.7:51000"
		for k, v := range header {
			r.Header[k] = v
		}
		return r
	}
	tests := []struct {
		name   string
		specs  []string
		r      *http.Request
		want   string
		wantOK bool
	}{
		{name: "client_ip from peer", specs: []string{"client_ip"}, r: req("/", nil), want: "192.0.2.7", wantOK: true},
		{name: "header canonicalized", specs: []string{"header:x-user-id"}, r: req("/", http.Header{"X-User-Id": {"u1", "u2"}}), want: "u1", wantOK: true},
		{name: "header absent", specs: []string{"header:X-User-ID"}, r: req("/", nil)},
		{name: "header empty is absent", specs: []string{"header:X-User-ID"}, r: req("/", http.Header{"X-User-Id": {""}})},
		{name: "cookie", specs: []string{"cookie:uid"}, r: req("/", http.Header{"Cookie": {"a=1; uid=42; b=2"}}), want: "42", wantOK: true},
		{name: "query", specs: []string{"query:user"}, r: req("/x?a=1&user=bob", nil), want: "bob", wantOK: true},
		{name: "path", specs: []string{"path"}, r: req("/users/42?x=1", nil), want: "/users/42", wantOK: true},
		{name: "host", specs: []string{"host"}, r: req("http://api.example.com:8080/", nil), want: "api.example.com:8080", wantOK: true},
		{name: "first present wins", specs: []string{"cookie:uid", "header:X-User", "client_ip"}, r: req("/", http.Header{"X-User": {"hdr"}}), want: "hdr", wantOK: true},
		{name: "first source preferred", specs: []string{"cookie:uid", "header:X-User"}, r: req("/", http.Header{"X-User": {"hdr"}, "Cookie": {"uid=c"}}), want: "c", wantOK: true},
		{name: "falls through to client_ip", specs: []string{"cookie:uid", "query:u", "client_ip"}, r: req("/?u=", nil), want: "192.0.2.7", wantOK: true},
		{name: "none present", specs: []string{"cookie:uid", "query:u"}, r: req("/", nil)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, err := ParseKey(tt.specs...)
			require.NoError(t, err)
			got, ok := k.Value(tt.r)
			assert.Equal(t, tt.wantOK, ok)
			assert.Equal(t, tt.want, got)
		})
	}
}

func TestKeyZeroAndString(t *testing.T) {
	var zero Key
	assert.True(t, zero.IsZero())
	_, ok := zero.Value(httptest.NewRequest("GET", "/", nil))
	assert.False(t, ok)

	k := MustParseKey("cookie:uid", " client_ip ")
	assert.False(t, k.IsZero())
	assert.Equal(t, "cookie:uid, client_ip ", k.String())
	v, ok := k.Value(httptest.NewRequest("GET", "/", nil))
	assert.True(t, ok, "client_ip after trimming the spec")
	assert.Equal(t, "192.0.2.1", v)
}

func TestClientIPPrefersInfo(t *testing.T) {
	r := httptest.NewRequest("GET", "/", nil)
	r.RemoteAddr = "10.0.0.1:1234"
	assert.Equal(t, "10.0.0.1", ClientIP(r))
	r = WithInfo(r, &Info{ClientIP: "203.0.113.9"})
	assert.Equal(t, "203.0.113.9", ClientIP(r))
	r = WithInfo(r, &Info{})
	assert.Equal(t, "10.0.0.1", ClientIP(r), "an Info without an address falls back to the peer")
	r.RemoteAddr = "no-port"
	assert.Equal(t, "no-port", ClientIP(r))
}

func TestCookieValue(t *testing.T) {
	tests := []struct {
		name   string
		lines  []string
		want   string
		wantOK bool
	}{
		{name: "only cookie", lines: []string{"uid=42"}, want: "42", wantOK: true},
		{name: "among others", lines: []string{"a=1;uid=42;b=2"}, want: "42", wantOK: true},
		{name: "spaces around pairs", lines: []string{"  a=1 ;   uid=42  ; b=2"}, want: "42", wantOK: true},
		{name: "quoted", lines: []string{`uid="42"`}, want: "42", wantOK: true},
		{name: "lone quote kept", lines: []string{`uid="`}, want: `"`, wantOK: true},
		{name: "empty quoted is absent", lines: []string{`uid=""`}},
		{name: "empty value is absent", lines: []string{"uid="}},
		{name: "empty then set", lines: []string{"uid=; uid=7"}, want: "7", wantOK: true},
		{name: "name is a suffix of another", lines: []string{"xuid=1; uid=2"}, want: "2", wantOK: true},
		{name: "name is a prefix of another", lines: []string{"uidx=1"}},
		{name: "names are case-sensitive", lines: []string{"UID=1"}},
		{name: "pair without =", lines: []string{"uid; a=1"}},
		{name: "value with =", lines: []string{"uid=a=b"}, want: "a=b", wantOK: true},
		{name: "trailing semicolon", lines: []string{"a=1; uid=9;"}, want: "9", wantOK: true},
		{name: "second header line", lines: []string{"a=1", "uid=3"}, want: "3", wantOK: true},
		{name: "first line wins", lines: []string{"uid=1", "uid=2"}, want: "1", wantOK: true},
		{name: "no lines", lines: nil},
		{name: "empty line", lines: []string{""}},
		{name: "only separators", lines: []string{" ; ;; "}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := cookieValue(tt.lines, "uid")
			assert.Equal(t, tt.wantOK, ok)
			assert.Equal(t, tt.want, got)
		})
	}
}

func TestQueryValue(t *testing.T) {
	tests := []struct {
		name   string
		raw    string
		want   string
		wantOK bool
	}{
		{name: "plain", raw: "user=bob", want: "bob", wantOK: true},
		{name: "among others", raw: "a=1&user=bob&b=2", want: "bob", wantOK: true},
		{name: "percent escape", raw: "user=b%C3%B6b%20x", want: "böb x", wantOK: true},
		{name: "plus is space", raw: "user=a+b", want: "a b", wantOK: true},
		{name: "escaped name", raw: "us%65r=bob", want: "bob", wantOK: true},
		{name: "bad escape skipped", raw: "user=%zz&user=ok", want: "ok", wantOK: true},
		{name: "bad escape in name skipped", raw: "us%zzer=x&user=ok", want: "ok", wantOK: true},
		{name: "empty value absent", raw: "user=&user=2", want: "2", wantOK: true},
		{name: "lone percent is absent", raw: "user=%", wantOK: false},
		{name: "name without value", raw: "user", wantOK: false},
		{name: "first wins", raw: "user=1&user=2", want: "1", wantOK: true},
		{name: "prefix name", raw: "username=x", wantOK: false},
		{name: "semicolon is no separator", raw: "a=1;user=2", wantOK: false},
		{name: "empty query", raw: "", wantOK: false},
		{name: "empty pairs", raw: "&&user=z&", want: "z", wantOK: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := queryValue(tt.raw, "user")
			assert.Equal(t, tt.wantOK, ok)
			assert.Equal(t, tt.want, got)
		})
	}
}

func TestKeyValueDoesNotAllocate(t *testing.T) {
	r := httptest.NewRequest("GET", "/p?a=1&user=bob&z=9", nil)
	r.Header.Set("X-User-Id", "u-123")
	r.Header.Set("Cookie", "session=abc; uid=u-42; theme=dark")
	r.RemoteAddr = "192.0.2.1:4000"
	tests := []struct {
		name string
		key  Key
	}{
		{"header", MustParseKey("header:X-User-ID")},
		{"cookie", MustParseKey("cookie:uid")},
		{"query", MustParseKey("query:user")},
		{"client_ip", MustParseKey("client_ip")},
		{"fallthrough", MustParseKey("cookie:missing", "query:missing", "header:X-User-ID")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			allocs := testing.AllocsPerRun(200, func() {
				if _, ok := tt.key.Value(r); !ok {
					t.Fatal("key absent")
				}
			})
			assert.Zero(t, allocs)
		})
	}
}

// BenchmarkKeyValue measures key extraction for a three-source key whose
// last source is present, the worst case of a typical config.
func BenchmarkKeyValue(b *testing.B) {
	k := MustParseKey("cookie:uid", "query:user", "header:X-User-ID")
	r := httptest.NewRequest("GET", "/p?a=1&z=9", nil)
	r.Header.Set("X-User-Id", "u-123")
	r.Header.Set("Cookie", "session=abc; theme=dark")
	b.ReportAllocs()
	for b.Loop() {
		if _, ok := k.Value(r); !ok {
			b.Fatal("key absent")
		}
	}
}
