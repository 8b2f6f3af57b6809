package router

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func named(name string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(name))
	})
}

func route(name string, m Match) Route {
	return Route{Name: name, Match: m, Handler: named(name)}
}

func TestTableMatch(t *testing.T) {
	table := NewTable([]Route{
		route("catch-all", Match{}),
		route("api", Match{PathPrefix: "/api"}),
		route("api-v2", Match{PathPrefix: "/api/v2"}),
		route("wild", Match{Host: "*.example.com"}),
		route("wild-deep", Match{Host: "*.eu.example.com"}),
		route("wild-api", Match{Host: "*.example.com", PathPrefix: "/api"}),
		route("exact", Match{Host: "API.example.com"}),
		route("exact-post", Match{Host: "api.example.com", PathPrefix: "/api", Methods: []string{"post"}}),
		route("canary", Match{PathPrefix: "/shop", Headers: map[string]string{"x-canary": "1"}}),
		route("any-debug", Match{PathPrefix: "/shop", Headers: map[string]string{"X-Debug": "*"}}),
		route("shop-first", Match{PathPrefix: "/shop"}),
		route("shop-second", Match{PathPrefix: "/shop"}),
		route("v6", Match{Host: "[::1]"}),
	})
	tests := []struct {
		name, method, host, target string
		header                     http.Header
		want                       string
	}{
		{name: "no host no prefix", host: "other.org", target: "/", want: "catch-all"},
		{name: "longest prefix wins", host: "other.org", target: "/api/v2/x", want: "api-v2"},
		{name: "plain string prefix as Envoy", host: "other.org", target: "/apix", want: "api"},
		{name: "prefix equal to path", host: "other.org", target: "/api", want: "api"},
		{name: "exact host beats wildcard and prefix", host: "api.example.com", target: "/api/v2", want: "exact"},
		{name: "exact host is case-insensitive", host: "Api.Example.COM", target: "/", want: "exact"},
		{name: "exact host ignores port", host: "api.example.com:8443", target: "/", want: "exact"},
		{name: "exact host ignores trailing dot", host: "api.example.com.", target: "/", want: "exact"},
		{name: "method filter", method: "POST", host: "api.example.com", target: "/api/x", want: "exact-post"},
		{name: "method filter excludes", method: "GET", host: "api.example.com", target: "/api/x", want: "exact"},
		{name: "wildcard with longer prefix", host: "www.example.com", target: "/api/x", want: "wild-api"},
		{name: "wildcard", host: "www.example.com", target: "/x", want: "wild"},
		{name: "wildcard any depth", host: "a.b.c.example.com:80", target: "/x", want: "wild"},
		{name: "longer wildcard first", host: "shop.eu.example.com", target: "/api", want: "wild-deep"},
		{name: "wildcard excludes apex", host: "example.com", target: "/x", want: "catch-all"},
		{name: "wildcard excludes lookalike", host: "badexample.com", target: "/x", want: "catch-all"},
		{name: "header exact value", host: "o", target: "/shop", header: http.Header{"X-Canary": {"0", "1"}}, want: "canary"},
		{name: "header wrong value", host: "o", target: "/shop", header: http.Header{"X-Canary": {"2"}}, want: "shop-first"},
		{name: "header any value", host: "o", target: "/shop", header: http.Header{"X-Debug": {""}}, want: "any-debug"},
		{name: "config order breaks ties", host: "o", target: "/shop/cart", want: "shop-first"},
		{name: "ipv6 literal host", host: "[::1]:8080", target: "/", want: "v6"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			method := tt.method
			if method == "" {
				method = http.MethodGet
			}
			r := httptest.NewRequest(method, "http://"+tt.host+tt.target, nil)
			for k, v := range tt.header {
				r.Header[k] = v
			}
			got := table.Match(r)
			require.NotNil(t, got)
			assert.Equal(t, tt.want, got.Name)
		})
	}
}

func TestTableNoMatch(t *testing.T) {
	table := NewTable([]Route{
		route("api", Match{Host: "api.example.com", PathPrefix: "/api/", Methods: []string{"GET"}}),
	})
	tests := []struct{ name, method, url string }{
		{"other host", "GET", "http://web.example.com/api/x"},
		{"segment boundary", "GET", "http://api.example.com/apix"},
		{"method", "DELETE", "http://api.example.com/api/x"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Nil(t, table.Match(httptest.NewRequest(tt.method, tt.url, nil)))
		})
	}
	assert.Nil(t, NewTable(nil).Match(httptest.NewRequest("GET", "/", nil)))
}

func TestTableEmptyPathMatchesRoot(t *testing.T) {
	table := NewTable([]Route{route("root", Match{PathPrefix: "/"})})
	r := httptest.NewRequest("GET", "/", nil)
	r.URL.Path = ""
	got := table.Match(r)
	require.NotNil(t, got)
	assert.Equal(t, "root", got.Name)
}

func TestTableCopiesRoutes(t *testing.T) {
	routes := []Route{route("a", Match{PathPrefix: "/a"})}
	table := NewTable(routes)
	routes[0].Name = "changed"
	routes[0].Match.PathPrefix = "/b"
	got := table.Match(httptest.NewRequest("GET", "/a", nil))
	require.NotNil(t, got)
	assert.Equal(t, "a", got.Name)
	assert.Equal(t, 1, table.Len())
}

func TestMatchValidate(t *testing.T) {
	tests := []struct {
		name    string
		m       Match
		wantErr string
	}{
		{name: "zero", m: Match{}},
		{name: "full", m: Match{Host: "*.example.com", PathPrefix: "/x", Methods: []string{"GET"}, Headers: map[string]string{"X-A": "*"}}},
		{name: "ipv6", m: Match{Host: "[2001:db8::1]"}},
		{name: "star", m: Match{Host: "*"}, wantErr: "leave host empty"},
		{name: "inner wildcard", m: Match{Host: "a.*.com"}, wantErr: "wildcard only as a leading"},
		{name: "port", m: Match{Host: "a.com:80"}, wantErr: "without port"},
		{name: "bad ipv6", m: Match{Host: "[1.2.3.4]"}, wantErr: "bracketed IPv6"},
		{name: "relative prefix", m: Match{PathPrefix: "api"}, wantErr: "must start with /"},
		{name: "method", m: Match{Methods: []string{"GE T"}}, wantErr: "not an HTTP method"},
		{name: "header", m: Match{Headers: map[string]string{"X A": "1"}}, wantErr: "not a header name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.m.Validate()
			if tt.wantErr == "" {
				assert.NoError(t, err)
				return
			}
			assert.ErrorContains(t, err, tt.wantErr)
		})
	}
	err := Match{Host: "*", PathPrefix: "x"}.Validate()
	assert.ErrorContains(t, err, "leave host empty")
	assert.ErrorContains(t, err, "must start with /", "every error at once")
}

func TestTableMatchDoesNotAllocate(t *testing.T) {
	table, r := benchTable()
	allocs := testing.AllocsPerRun(100, func() {
		if table.Match(r) == nil {
			t.Fatal("no route")
		}
	})
	assert.Zero(t, allocs)
}

// benchTable is ten routes of a typical edge config; the request matches the
// eighth in precedence order, so Match walks most of the table.
func benchTable() (*Table, *http.Request) {
	var routes []Route
	for i := range 4 {
		routes = append(routes, route(fmt.Sprintf("svc%d", i), Match{Host: fmt.Sprintf("svc%d.example.com", i), PathPrefix: "/v1"}))
	}
	routes = append(routes,
		route("wild-admin", Match{Host: "*.internal.example.com", PathPrefix: "/admin", Headers: map[string]string{"X-Admin": "*"}}),
		route("wild", Match{Host: "*.example.com", PathPrefix: "/static"}),
		route("search", Match{PathPrefix: "/search", Methods: []string{"GET", "HEAD"}}),
		route("users", Match{PathPrefix: "/users", Headers: map[string]string{"X-Canary": "1"}}),
		route("users-all", Match{PathPrefix: "/users"}),
		route("web", Match{PathPrefix: "/"}),
	)
	r := httptest.NewRequest("GET", "http://www.example.org:8080/users/42", nil)
	r.Header.Set("X-Canary", "0")
	return NewTable(routes), r
}

// BenchmarkTableMatch measures a lookup in a ten-route table that falls
// through eight routes to its match.
func BenchmarkTableMatch(b *testing.B) {
	table, r := benchTable()
	b.ReportAllocs()
	for b.Loop() {
		if table.Match(r) == nil {
			b.Fatal("no route")
		}
	}
}
