package router

import (
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestRedirectLocation(t *testing.T) {
	tests := []struct {
		name   string
		stage  Redirect
		url    string
		tls    bool
		want   string
		status int
	}{
		{name: "http to https drops the port", stage: Redirect{Scheme: "https"}, url: "http://example.com:8080/a/b?x=1&y=2", want: "https://example.com/a/b?x=1&y=2", status: 302},
		{name: "http to https without port", stage: Redirect{Scheme: "https", Status: 301}, url: "http://example.com/", want: "https://example.com/", status: 301},
		{name: "scheme with explicit port", stage: Redirect{Scheme: "https", Port: "8443"}, url: "http://example.com:8080/a", want: "https://example.com:8443/a"},
		{name: "default port not written", stage: Redirect{Scheme: "https", Port: "443"}, url: "http://example.com/a", want: "https://example.com/a"},
		{name: "path only keeps scheme host and port", stage: Redirect{Path: "/new"}, url: "http://example.com:8080/old?q=1", want: "http://example.com:8080/new?q=1"},
		{name: "path over tls", stage: Redirect{Path: "/new"}, url: "https://example.com/old", tls: true, want: "https://example.com/new"},
		{name: "host drops the port", stage: Redirect{Host: "www.example.com", Status: 308}, url: "http://example.com:8080/p", want: "http://www.example.com/p", status: 308},
		{name: "host and port", stage: Redirect{Host: "www.example.com", Port: "81"}, url: "http://example.com/p", want: "http://www.example.com:81/p"},
		{name: "port only", stage: Redirect{Port: "9000"}, url: "http://example.com:8080/p", want: "http://example.com:9000/p"},
		{name: "drop query", stage: Redirect{Path: "/", DropQuery: true}, url: "http://example.com/a?secret=1", want: "http://example.com/"},
		{name: "escaped path kept", stage: Redirect{Scheme: "https"}, url: "http://example.com/a%2Fb%20c", want: "https://example.com/a%2Fb%20c"},
		{name: "ipv6 host keeps brackets", stage: Redirect{Scheme: "https"}, url: "http://[2001:db8::1]:8080/x", want: "https://[2001:db8::1]/x"},
		{name: "ipv6 target", stage: Redirect{Host: "[2001:db8::2]", Port: "8443", Scheme: "https"}, url: "http://a/x", want: "https://[2001:db8::2]:8443/x"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := Compose([]Stage{tt.stage})
			require.NoError(t, err)
			r := httptest.NewRequest("GET", tt.url, nil)
			if tt.tls {
				r.TLS = &tls.ConnectionState{}
			} else {
				r.TLS = nil
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, r)
			status := tt.status
			if status == 0 {
				status = http.StatusFound
			}
			assert.Equal(t, status, rec.Code)
			assert.Equal(t, tt.want, rec.Header().Get("Location"))
		})
	}
}

func TestRedirectOverHTTP(t *testing.T) {
	h, err := Redirect{Scheme: "https"}.Wrap(nil)
	require.NoError(t, err)
	srv := httptest.NewServer(h)
	defer srv.Close()
	client := &http.Client{
		Transport:     srv.Client().Transport,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	res, err := client.Get(srv.URL + "/login?next=%2Fhome")
	require.NoError(t, err)
	require.NoError(t, res.Body.Close())
	assert.Equal(t, http.StatusFound, res.StatusCode)
	assert.Equal(t, "https://127.0.0.1/login?next=%2Fhome", res.Header.Get("Location"))
}

func TestRedirectValidate(t *testing.T) {
	tests := []struct {
		name    string
		stage   Redirect
		wantErr []string
	}{
		{name: "https", stage: Redirect{Scheme: "https"}},
		{name: "drop query only", stage: Redirect{DropQuery: true}},
		{name: "loop", stage: Redirect{}, wantErr: []string{"URL requested"}},
		{name: "status", stage: Redirect{Scheme: "https", Status: 303}, wantErr: []string{"want 301, 302, 307 or 308"}},
		{name: "scheme", stage: Redirect{Scheme: "ftp"}, wantErr: []string{"want http or https"}},
		{name: "host with port", stage: Redirect{Host: "a.com:80"}, wantErr: []string{"without port"}},
		{name: "port", stage: Redirect{Port: "70000"}, wantErr: []string{"1..65535"}},
		{name: "path", stage: Redirect{Path: "new?x"}, wantErr: []string{"absolute path"}},
		{name: "every error", stage: Redirect{Scheme: "x", Port: "0", Path: "x"}, wantErr: []string{"scheme", "port", "path"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.stage.Validate()
			_, wrapErr := tt.stage.Wrap(nil)
			if len(tt.wantErr) == 0 {
				assert.NoError(t, err)
				assert.NoError(t, wrapErr)
				return
			}
			for _, want := range tt.wantErr {
				assert.ErrorContains(t, err, want)
			}
			assert.Error(t, wrapErr)
		})
	}
	_, err := Redirect{Scheme: "https"}.Wrap(named("next"))
	assert.ErrorContains(t, err, "ends the pipeline")
}
