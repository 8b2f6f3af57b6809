package router

import (
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestRespond(t *testing.T) {
	tests := []struct {
		name       string
		stage      Respond
		method     string
		wantStatus int
		wantBody   string
		wantHeader http.Header
	}{
		{
			name:       "defaults",
			stage:      Respond{Body: "ok\n"},
			wantStatus: 200,
			wantBody:   "ok\n",
			wantHeader: http.Header{"Content-Type": {"text/plain; charset=utf-8"}, "Content-Length": {"3"}},
		},
		{
			name:       "status headers and own content type",
			stage:      Respond{Status: 503, Body: `{"down":true}`, Headers: map[string]string{"content-type": "application/json", "retry-after": "30"}},
			wantStatus: 503,
			wantBody:   `{"down":true}`,
			wantHeader: http.Header{"Content-Type": {"application/json"}, "Retry-After": {"30"}, "Content-Length": {"13"}},
		},
		{
			name:       "empty body",
			stage:      Respond{Status: 404},
			wantStatus: 404,
			wantHeader: http.Header{"Content-Length": {"0"}},
		},
		{
			name:       "head gets headers only",
			stage:      Respond{Body: "hello"},
			method:     http.MethodHead,
			wantStatus: 200,
			wantHeader: http.Header{"Content-Length": {"5"}},
		},
		{
			name:       "no content",
			stage:      Respond{Status: 204, Headers: map[string]string{"X-A": "1"}},
			wantStatus: 204,
			wantHeader: http.Header{"X-A": {"1"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := Compose([]Stage{tt.stage})
			require.NoError(t, err)
			srv := httptest.NewServer(h)
			defer srv.Close()
			method := tt.method
			if method == "" {
				method = http.MethodGet
			}
			req, err := http.NewRequest(method, srv.URL+"/any", nil)
			require.NoError(t, err)
			res, err := srv.Client().Do(req)
			require.NoError(t, err)
			body, err := io.ReadAll(res.Body)
			require.NoError(t, err)
			require.NoError(t, res.Body.Close())

			assert.Equal(t, tt.wantStatus, res.StatusCode)
			assert.Equal(t, tt.wantBody, string(body))
			for k, v := range tt.wantHeader {
				assert.Equal(t, v, res.Header.Values(k), k)
			}
		})
	}
}

func TestRespondValuesSurviveOuterAdd(t *testing.T) {
	h, err := Respond{Headers: map[string]string{"Vary": "Accept"}}.Wrap(nil)
	require.NoError(t, err)
	outer, err := Headers{Response: HeaderOps{Add: map[string]string{"Vary": "X-Arm"}}}.Wrap(h)
	require.NoError(t, err)
	for range 2 {
		rec := httptest.NewRecorder()
		outer.ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
		assert.Equal(t, []string{"Accept", "X-Arm"}, rec.Header().Values("Vary"))
	}
}

func TestRespondValidate(t *testing.T) {
	tests := []struct {
		name    string
		stage   Respond
		wantErr []string
	}{
		{name: "zero", stage: Respond{}},
		{name: "599", stage: Respond{Status: 599}},
		{name: "1xx", stage: Respond{Status: 101}, wantErr: []string{"want 200..599"}},
		{name: "600", stage: Respond{Status: 600}, wantErr: []string{"want 200..599"}},
		{name: "negative", stage: Respond{Status: -1}, wantErr: []string{"want 200..599"}},
		{name: "body on 304", stage: Respond{Status: 304, Body: "x"}, wantErr: []string{"no body"}},
		{name: "content-length", stage: Respond{Headers: map[string]string{"content-length": "9"}}, wantErr: []string{"computed from the body"}},
		{name: "bad header", stage: Respond{Headers: map[string]string{"X A": "1", "X-B": "a\nb"}}, wantErr: []string{"not a header name", "CR, LF"}},
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
	_, err := Respond{}.Wrap(named("next"))
	assert.ErrorContains(t, err, "ends the pipeline")
}

// BenchmarkRespond measures the respond stage answering with a short body.
func BenchmarkRespond(b *testing.B) {
	h, err := Respond{Body: "ok\n", Headers: map[string]string{"Cache-Control": "no-store"}}.Wrap(nil)
	require.NoError(b, err)
	r := httptest.NewRequest("GET", "/", nil)
	w := &discardWriter{header: make(http.Header)}
	b.ReportAllocs()
	for b.Loop() {
		h.ServeHTTP(w, r)
	}
}
