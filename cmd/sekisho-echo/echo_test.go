package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// echoBody is the JSON every echoing path answers with.
type echoBody struct {
	Name       string            `json:"name"`
	Method     string            `json:"method"`
	Proto      string            `json:"proto"`
	Path       string            `json:"path"`
	Query      string            `json:"query"`
	Host       string            `json:"host"`
	RemoteAddr string            `json:"remote_addr"`
	Headers    map[string]string `json:"headers"`
	BodyBytes  int64             `json:"body_bytes"`
	Trailers   map[string]string `json:"trailers"`
	Error      string            `json:"error"`
}

type statsBody struct {
	Name      string `json:"name"`
	Requests  int64  `json:"requests"`
	Cancelled int64  `json:"cancelled"`
	InFlight  int64  `json:"in_flight"`
}

type searchBody struct {
	Results []struct {
		ID    string  `json:"id"`
		Score float64 `json:"score"`
		Leaf  string  `json:"leaf"`
	} `json:"results"`
}

// startEcho serves newServer(opts) on 127.0.0.1 with the same http.Server
// settings as the binary, so h2c prior knowledge works as it does in main.
func startEcho(t testing.TB, opts options) *httptest.Server {
	t.Helper()
	ts := httptest.NewUnstartedServer(nil)
	ts.Config = newHTTPServer(newServer(opts))
	ts.Start()
	t.Cleanup(ts.Close)
	return ts
}

// newClient returns a client that speaks HTTP/1.1, or cleartext HTTP/2 with
// prior knowledge when h2c is set.
func newClient(t testing.TB, h2c bool) *http.Client {
	t.Helper()
	var p http.Protocols
	if h2c {
		p.SetUnencryptedHTTP2(true)
	} else {
		p.SetHTTP1(true)
	}
	tr := &http.Transport{Protocols: &p}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

var protocols = []struct {
	name string
	h2c  bool
}{{"http1", false}, {"h2c", true}}

func do(t *testing.T, c *http.Client, method, url string, body io.Reader) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	require.NoError(t, err)
	resp, err := c.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, b
}

func stats(t *testing.T, c *http.Client, base string) statsBody {
	t.Helper()
	resp, b := do(t, c, http.MethodGet, base+"/_echo/stats", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	var s statsBody
	require.NoError(t, json.Unmarshal(b, &s))
	return s
}

func TestEcho(t *testing.T) {
	ts := startEcho(t, options{name: "leaf-a", ready: true})
	tests := []struct {
		name    string
		method  string
		target  string
		body    string
		headers http.Header
		want    echoBody
	}{
		{
			name:   "plain get",
			method: http.MethodGet,
			target: "/",
			want:   echoBody{Name: "leaf-a", Method: "GET", Path: "/"},
		},
		{
			name:   "post with body and query",
			method: http.MethodPost,
			target: "/a/b?x=1&y=%20z",
			body:   "hello world",
			want:   echoBody{Name: "leaf-a", Method: "POST", Path: "/a/b", Query: "x=1&y=%20z", BodyBytes: 11},
		},
		{
			name:    "headers needing escapes and repeated fields",
			method:  http.MethodPut,
			target:  "/h",
			headers: http.Header{"X-Quote": {`say "hi" \ bye`}, "X-Multi": {"a", "b"}},
			want: echoBody{Name: "leaf-a", Method: "PUT", Path: "/h",
				Headers: map[string]string{"X-Quote": `say "hi" \ bye`, "X-Multi": "a, b"}},
		},
	}
	for _, p := range protocols {
		for _, tt := range tests {
			t.Run(p.name+"/"+tt.name, func(t *testing.T) {
				c := newClient(t, p.h2c)
				req, err := http.NewRequest(tt.method, ts.URL+tt.target, strings.NewReader(tt.body))
				require.NoError(t, err)
				for k, vs := range tt.headers {
					req.Header[k] = vs
				}
				resp, err := c.Do(req)
				require.NoError(t, err)
				defer resp.Body.Close()
				raw, err := io.ReadAll(resp.Body)
				require.NoError(t, err)
				require.True(t, json.Valid(raw), "body is not JSON: %s", raw)

				var got echoBody
				require.NoError(t, json.Unmarshal(raw, &got))
				assert.Equal(t, http.StatusOK, resp.StatusCode)
				assert.Equal(t, "leaf-a", resp.Header.Get("X-Echo-Name"))
				assert.Equal(t, "application/json", resp.Header.Get("Content-Type"))
				assert.Equal(t, tt.want.Name, got.Name)
				assert.Equal(t, tt.want.Method, got.Method)
				assert.Equal(t, tt.want.Path, got.Path)
				assert.Equal(t, tt.want.Query, got.Query)
				assert.Equal(t, tt.want.BodyBytes, got.BodyBytes)
				assert.Equal(t, strings.TrimPrefix(ts.URL, "http://"), got.Host)
				assert.NotEmpty(t, got.RemoteAddr)
				assert.Equal(t, resp.Proto, got.Proto)
				assert.Equal(t, p.h2c, resp.ProtoMajor == 2, "protocol %s", resp.Proto)
				for k, v := range tt.want.Headers {
					assert.Equal(t, v, got.Headers[k], "header %s", k)
				}
			})
		}
	}
}

func TestReady(t *testing.T) {
	type step struct {
		method string
		target string
		file   string // "create" or "remove" before the request
		want   int
	}
	tests := []struct {
		name      string
		ready     bool
		readyFile bool
		steps     []step
	}{
		{
			name:  "switch",
			ready: true,
			steps: []step{
				{method: "GET", target: "/ready", want: 200},
				{method: "POST", target: "/ready?state=off", want: 503},
				{method: "GET", target: "/ready", want: 503},
				{method: "GET", target: "/healthz", want: 200},
				{method: "POST", target: "/ready?state=on", want: 200},
				{method: "GET", target: "/ready", want: 200},
				{method: "POST", target: "/ready?state=maybe", want: 400},
			},
		},
		{
			name:  "starts unready",
			ready: false,
			steps: []step{
				{method: "GET", target: "/ready", want: 503},
				{method: "POST", target: "/ready?state=on", want: 200},
			},
		},
		{
			name:      "ready file",
			ready:     true,
			readyFile: true,
			steps: []step{
				{method: "GET", target: "/ready", want: 503},
				{method: "GET", target: "/ready", file: "create", want: 200},
				{method: "POST", target: "/ready?state=off", want: 503},
				{method: "POST", target: "/ready?state=on", want: 200},
				{method: "GET", target: "/ready", file: "remove", want: 503},
				{method: "GET", target: "/healthz", want: 200},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := options{name: "r", ready: tt.ready}
			if tt.readyFile {
				opts.readyFile = filepath.Join(t.TempDir(), "ready")
			}
			ts := startEcho(t, opts)
			c := newClient(t, false)
			for i, st := range tt.steps {
				switch st.file {
				case "create":
					require.NoError(t, os.WriteFile(opts.readyFile, nil, 0o600))
				case "remove":
					require.NoError(t, os.Remove(opts.readyFile))
				}
				resp, body := do(t, c, st.method, ts.URL+st.target, nil)
				assert.Equal(t, st.want, resp.StatusCode, "step %d: %s %s: %s", i, st.method, st.target, body)
				assert.Equal(t, "r", resp.Header.Get("X-Echo-Name"))
			}
			assert.Zero(t, stats(t, c, ts.URL).Requests, "control paths must stay out of the counters")
		})
	}
}

func TestDelay(t *testing.T) {
	tests := []struct {
		name    string
		delay   time.Duration
		target  string
		atLeast time.Duration
		want    int
	}{
		{name: "flag delay", delay: 50 * time.Millisecond, target: "/", atLeast: 50 * time.Millisecond, want: 200},
		{name: "query adds to flag", delay: 30 * time.Millisecond, target: "/?delay=40ms", atLeast: 70 * time.Millisecond, want: 200},
		{name: "query alone", target: "/search?delay=60ms", atLeast: 60 * time.Millisecond, want: 200},
		{name: "bad delay", target: "/?delay=soon", want: 400},
		{name: "negative delay", target: "/?delay=-1s", want: 400},
		// A backend slowed by -delay must still pass its probes; a client
		// timeout far below the delay proves they are not delayed.
		{name: "control path ignores flag", delay: time.Hour, target: "/healthz", want: 200},
		{name: "ready ignores flag", delay: time.Hour, target: "/ready", want: 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := startEcho(t, options{name: "d", ready: true, delay: tt.delay})
			c := newClient(t, false)
			start := time.Now()
			resp, body := do(t, c, http.MethodGet, ts.URL+tt.target, nil)
			elapsed := time.Since(start)
			assert.Equal(t, tt.want, resp.StatusCode, "%s", body)
			assert.GreaterOrEqual(t, elapsed, tt.atLeast)
		})
	}
}

func TestCancellationCounted(t *testing.T) {
	for _, p := range protocols {
		for _, target := range []string{"/?delay=1h", "/stream?chunks=2&interval=1h"} {
			t.Run(p.name+target, func(t *testing.T) {
				ts := startEcho(t, options{name: "c", ready: true})
				c := newClient(t, p.h2c)

				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				req, err := http.NewRequestWithContext(ctx, http.MethodGet, ts.URL+target, nil)
				require.NoError(t, err)
				done := make(chan error, 1)
				go func() {
					resp, err := c.Do(req)
					if err == nil {
						_, err = io.ReadAll(resp.Body)
						resp.Body.Close()
					}
					done <- err
				}()

				require.Eventually(t, func() bool { return stats(t, c, ts.URL).InFlight == 1 },
					5*time.Second, 5*time.Millisecond, "request never reached the backend")
				cancel()
				select {
				case err := <-done:
					assert.ErrorIs(t, err, context.Canceled)
				case <-time.After(5 * time.Second):
					require.FailNow(t, "client did not return after cancel")
				}
				require.Eventually(t, func() bool {
					s := stats(t, c, ts.URL)
					return s.Cancelled == 1 && s.InFlight == 0
				}, 15*time.Second, 5*time.Millisecond, "cancellation not counted: %+v", stats(t, c, ts.URL))
				assert.Equal(t, int64(1), stats(t, c, ts.URL).Requests)
			})
		}
	}
}

func TestSearch(t *testing.T) {
	ts := startEcho(t, options{name: "leaf-0", ready: true})
	twin := startEcho(t, options{name: "leaf-0", ready: true})
	other := startEcho(t, options{name: "leaf-1", ready: true})
	c := newClient(t, false)

	search := func(t *testing.T, base, query string) (int, searchBody, []byte) {
		resp, b := do(t, c, http.MethodGet, base+"/search?"+query, nil)
		var sb searchBody
		if resp.StatusCode == http.StatusOK {
			require.NoError(t, json.Unmarshal(b, &sb), "%s", b)
		}
		return resp.StatusCode, sb, b
	}

	t.Run("shape", func(t *testing.T) {
		tests := []struct {
			query string
			want  int
		}{
			{query: "q=go", want: 5},
			{query: "q=go&n=3", want: 3},
			{query: "q=go&n=0", want: 0},
			{query: "n=12", want: 12},
		}
		for _, tt := range tests {
			t.Run(tt.query, func(t *testing.T) {
				code, sb, raw := search(t, ts.URL, tt.query)
				require.Equal(t, http.StatusOK, code)
				require.NotNil(t, sb.Results, "%s", raw)
				require.Len(t, sb.Results, tt.want)
				ids := map[string]bool{}
				for i, r := range sb.Results {
					assert.Equal(t, "leaf-0", r.Leaf)
					assert.Regexp(t, `^leaf-0-\d+$`, r.ID)
					assert.GreaterOrEqual(t, r.Score, 0.0)
					assert.Less(t, r.Score, 1.0)
					if i > 0 {
						assert.LessOrEqual(t, r.Score, sb.Results[i-1].Score, "results must be best-first")
					}
					ids[r.ID] = true
				}
				assert.Len(t, ids, tt.want, "ids must be distinct")
			})
		}
	})

	t.Run("deterministic", func(t *testing.T) {
		_, _, a := search(t, ts.URL, "q=kyoto&n=7")
		_, _, b := search(t, twin.URL, "q=kyoto&n=7")
		_, _, again := search(t, ts.URL, "q=kyoto&n=7")
		assert.Equal(t, string(a), string(b), "same name and query on another process")
		assert.Equal(t, string(a), string(again))

		_, otherQ, _ := search(t, ts.URL, "q=osaka&n=7")
		_, sameQ, _ := search(t, ts.URL, "q=kyoto&n=7")
		_, otherLeaf, _ := search(t, other.URL, "q=kyoto&n=7")
		assert.NotEqual(t, scores(sameQ), scores(otherQ), "query must change the scores")
		assert.NotEqual(t, scores(sameQ), scores(otherLeaf), "leaf name must change the scores")

		// A shorter page is a prefix of a longer one only if scores do not
		// depend on n: they must not, or leaves would disagree on merges.
		_, three, _ := search(t, ts.URL, "q=kyoto&n=3")
		for _, r := range three.Results {
			assert.Contains(t, scores(sameQ), r.Score)
		}
	})

	t.Run("bad n", func(t *testing.T) {
		for _, q := range []string{"n=-1", "n=x", "n=1001"} {
			code, _, _ := search(t, ts.URL, q)
			assert.Equal(t, http.StatusBadRequest, code, q)
		}
	})
}

func scores(sb searchBody) []float64 {
	out := make([]float64, 0, len(sb.Results))
	for _, r := range sb.Results {
		out = append(out, r.Score)
	}
	return out
}

func TestSearchScoreSpread(t *testing.T) {
	// Scores feed a merge's sort: if the hash clumped, merges would look
	// the same whatever the leaves said.
	var low, high int
	for i := range 1000 {
		s := searchScore("leaf", "q", i)
		require.GreaterOrEqual(t, s, 0.0)
		require.Less(t, s, 1.0)
		if s < 0.5 {
			low++
		} else {
			high++
		}
	}
	assert.InDelta(t, 500, low, 80)
	assert.InDelta(t, 500, high, 80)
}

func TestStatus(t *testing.T) {
	ts := startEcho(t, options{name: "s", ready: true})
	tests := []struct {
		path     string
		want     int
		wantBody bool
	}{
		{path: "/status/200", want: 200, wantBody: true},
		{path: "/status/404", want: 404, wantBody: true},
		{path: "/status/503", want: 503, wantBody: true},
		{path: "/status/204", want: 204},
		{path: "/status/abc", want: 400, wantBody: true},
		{path: "/status/99", want: 400, wantBody: true},
		{path: "/status/101", want: 400, wantBody: true},
		{path: "/status/600", want: 400, wantBody: true},
	}
	for _, p := range protocols {
		for _, tt := range tests {
			t.Run(p.name+tt.path, func(t *testing.T) {
				resp, body := do(t, newClient(t, p.h2c), http.MethodGet, ts.URL+tt.path, nil)
				assert.Equal(t, tt.want, resp.StatusCode)
				assert.Equal(t, "s", resp.Header.Get("X-Echo-Name"))
				if !tt.wantBody {
					assert.Empty(t, body)
					return
				}
				var got echoBody
				require.NoError(t, json.Unmarshal(body, &got), "%s", body)
				assert.Equal(t, "s", got.Name)
				if tt.want == 400 {
					assert.NotEmpty(t, got.Error)
				} else {
					assert.Equal(t, tt.path, got.Path)
				}
			})
		}
	}
}

func TestStream(t *testing.T) {
	ts := startEcho(t, options{name: "st", ready: true})
	for _, p := range protocols {
		t.Run(p.name+"/complete", func(t *testing.T) {
			resp, body := do(t, newClient(t, p.h2c), http.MethodGet, ts.URL+"/stream?chunks=4&interval=5ms", nil)
			require.Equal(t, http.StatusOK, resp.StatusCode)
			assert.Equal(t, "application/x-ndjson", resp.Header.Get("Content-Type"))
			lines := strings.Split(strings.TrimSpace(string(body)), "\n")
			require.Len(t, lines, 4)
			for i, line := range lines {
				var chunk struct {
					Name  string `json:"name"`
					Chunk int    `json:"chunk"`
				}
				require.NoError(t, json.Unmarshal([]byte(line), &chunk))
				assert.Equal(t, "st", chunk.Name)
				assert.Equal(t, i, chunk.Chunk)
			}
		})

		t.Run(p.name+"/abort", func(t *testing.T) {
			c := newClient(t, p.h2c)
			resp, err := c.Get(ts.URL + "/stream?chunks=3&abort=1")
			require.NoError(t, err, "headers and the first chunk arrive before the abort")
			defer resp.Body.Close()
			assert.Equal(t, http.StatusOK, resp.StatusCode)
			body, err := io.ReadAll(resp.Body)
			require.Error(t, err, "the response must die mid-body")
			if !p.h2c {
				assert.ErrorIs(t, err, io.ErrUnexpectedEOF)
			}
			assert.Contains(t, string(body), `"chunk":0`)
			assert.NotContains(t, string(body), `"chunk":1`)
		})
	}

	t.Run("bad parameters", func(t *testing.T) {
		c := newClient(t, false)
		for _, q := range []string{"chunks=-1", "chunks=x", "chunks=10001", "interval=fast", "interval=-1s"} {
			resp, _ := do(t, c, http.MethodGet, ts.URL+"/stream?"+q, nil)
			assert.Equal(t, http.StatusBadRequest, resp.StatusCode, q)
		}
	})
}

func TestUpgrade(t *testing.T) {
	ts := startEcho(t, options{name: "up", ready: true})
	c := newClient(t, false)

	t.Run("echoes bytes", func(t *testing.T) {
		conn, err := net.Dial("tcp", ts.Listener.Addr().String())
		require.NoError(t, err)
		defer conn.Close()
		require.NoError(t, conn.SetDeadline(time.Now().Add(10*time.Second)))

		// "early" rides in the same write as the request: bytes a client
		// sends before it has read the 101 must be echoed too.
		_, err = io.WriteString(conn, "GET /upgrade HTTP/1.1\r\nHost: echo\r\nConnection: keep-alive, Upgrade\r\nUpgrade: echo\r\n\r\nearly")
		require.NoError(t, err)
		br := bufio.NewReader(conn)
		resp, err := http.ReadResponse(br, nil)
		require.NoError(t, err)
		require.Equal(t, http.StatusSwitchingProtocols, resp.StatusCode)
		assert.Equal(t, "echo", resp.Header.Get("Upgrade"))
		assert.Equal(t, "up", resp.Header.Get("X-Echo-Name"))

		expect := func(want string) {
			got := make([]byte, len(want))
			_, err := io.ReadFull(br, got)
			require.NoError(t, err)
			assert.Equal(t, want, string(got))
		}
		expect("early")
		for _, msg := range []string{"ping", "a longer message\n", strings.Repeat("x", 64<<10)} {
			_, err := io.WriteString(conn, msg)
			require.NoError(t, err)
			expect(msg)
		}
		assert.Equal(t, int64(1), stats(t, c, ts.URL).InFlight, "the upgraded connection is still being served")
		require.NoError(t, conn.Close())
		require.Eventually(t, func() bool { return stats(t, c, ts.URL).InFlight == 0 },
			5*time.Second, 5*time.Millisecond, "handler did not end when the peer closed")
	})

	t.Run("refused without upgrade headers", func(t *testing.T) {
		for _, p := range protocols {
			resp, body := do(t, newClient(t, p.h2c), http.MethodGet, ts.URL+"/upgrade", nil)
			assert.Equal(t, http.StatusBadRequest, resp.StatusCode, "%s: %s", p.name, body)
		}
		req, err := http.NewRequest(http.MethodGet, ts.URL+"/upgrade", nil)
		require.NoError(t, err)
		req.Header.Set("Connection", "Upgrade")
		req.Header.Set("Upgrade", "websocket")
		resp, err := c.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		assert.Equal(t, http.StatusBadRequest, resp.StatusCode, "another protocol")
	})
}

func TestTrailers(t *testing.T) {
	ts := startEcho(t, options{name: "tr", ready: true})
	for _, p := range protocols {
		t.Run(p.name, func(t *testing.T) {
			req, err := http.NewRequest(http.MethodPost, ts.URL+"/trailers", strings.NewReader("12345"))
			require.NoError(t, err)
			// Unknown length makes HTTP/1.1 send chunked, the only framing
			// that carries trailers.
			req.ContentLength = -1
			req.Trailer = http.Header{"X-Client-Trailer": {"abc"}}
			resp, err := newClient(t, p.h2c).Do(req)
			require.NoError(t, err)
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			require.NoError(t, err)

			assert.Equal(t, http.StatusOK, resp.StatusCode)
			assert.Equal(t, "5", resp.Trailer.Get("X-Echo-Trailer"))
			assert.Equal(t, "0", resp.Trailer.Get("Grpc-Status"))
			var got echoBody
			require.NoError(t, json.Unmarshal(body, &got), "%s", body)
			assert.Equal(t, int64(5), got.BodyBytes)
			assert.Equal(t, map[string]string{"X-Client-Trailer": "abc"}, got.Trailers)
		})
	}
}

func TestTiny(t *testing.T) {
	ts := startEcho(t, options{name: "tiny-leaf", ready: false, tiny: true})
	c := newClient(t, false)
	for _, path := range []string{"/", "/search?q=x", "/ready", "/status/500"} {
		t.Run(path, func(t *testing.T) {
			resp, body := do(t, c, http.MethodGet, ts.URL+path, nil)
			assert.Equal(t, http.StatusOK, resp.StatusCode)
			assert.Equal(t, "tiny-leaf", resp.Header.Get("X-Echo-Name"))
			assert.Len(t, body, tinyBodySize)
			var v struct{ Name string }
			require.NoError(t, json.Unmarshal(body, &v), "%s", body)
			assert.Equal(t, "tiny-leaf", v.Name)
		})
	}
}

func TestRequestLog(t *testing.T) {
	var buf syncBuffer
	ts := startEcho(t, options{name: "l", ready: true, logger: log.New(&buf, "", 0)})
	c := newClient(t, false)
	do(t, c, http.MethodGet, ts.URL+"/status/418?x=1", nil)
	do(t, c, http.MethodGet, ts.URL+"/stream?chunks=2", nil)
	require.Eventually(t, func() bool {
		s := buf.String()
		return strings.Contains(s, "GET /status/418?x=1 418") && strings.Contains(s, "GET /stream?chunks=2 200")
	}, 5*time.Second, 5*time.Millisecond, "log: %s", buf.String())
}

func TestAppendJSONString(t *testing.T) {
	tests := []struct {
		in   string
		want string // what a JSON decoder reads back
	}{
		{in: "", want: ""},
		{in: "plain", want: "plain"},
		{in: `"quoted" \ back`, want: `"quoted" \ back`},
		{in: "tab\tnl\ncr\r", want: "tab\tnl\ncr\r"},
		{in: "nul\x00bell\x07esc\x1f", want: "nul\x00bell\x07esc\x1f"},
		{in: "日本語 関所", want: "日本語 関所"},
		{in: "bad\xffutf8", want: "bad\ufffdutf8"},
		{in: "sep\u2028and\u2029", want: "sep\u2028and\u2029"},
		{in: "<html>&", want: "<html>&"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			b := appendJSONString(nil, tt.in)
			require.True(t, json.Valid(b), "%s", b)
			var got string
			require.NoError(t, json.Unmarshal(b, &got))
			assert.Equal(t, tt.want, got)
			assert.NotContains(t, string(b), "\u2028", "raw line separator left in output")
		})
	}
}

func TestQueryParam(t *testing.T) {
	tests := []struct {
		raw, key string
		want     string
		ok       bool
	}{
		{raw: "", key: "q", ok: false},
		{raw: "q=a", key: "q", want: "a", ok: true},
		{raw: "x=1&q=a&q=b", key: "q", want: "a", ok: true},
		{raw: "q", key: "q", want: "", ok: true},
		{raw: "q=hello+world%21", key: "q", want: "hello world!", ok: true},
		{raw: "q=%zz&q=ok", key: "q", want: "ok", ok: true},
		{raw: "qq=a", key: "q", ok: false},
	}
	for _, tt := range tests {
		t.Run(tt.raw, func(t *testing.T) {
			got, ok := queryParam(tt.raw, tt.key)
			assert.Equal(t, tt.ok, ok)
			assert.Equal(t, tt.want, got)
		})
	}
}

func TestParseFlags(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		want    config
		wantErr bool
	}{
		{
			name: "defaults",
			want: config{listen: "127.0.0.1:9001", quiet: true, opts: options{ready: true}},
		},
		{
			name: "everything",
			args: []string{"-listen", "127.0.0.1:0", "-name", "n", "-delay", "20ms", "-ready=false",
				"-ready-file", "/tmp/r", "-quiet=false", "-tiny"},
			want: config{listen: "127.0.0.1:0", opts: options{name: "n", delay: 20 * time.Millisecond,
				readyFile: "/tmp/r", tiny: true}},
		},
		{name: "bad duration", args: []string{"-delay", "soon"}, wantErr: true},
		{name: "negative delay", args: []string{"-delay", "-1s"}, wantErr: true},
		{name: "stray argument", args: []string{"extra"}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseFlags(tt.args, io.Discard)
			if tt.wantErr {
				assert.Error(t, err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}

func TestRun(t *testing.T) {
	t.Run("serves until cancelled", func(t *testing.T) {
		var buf syncBuffer
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		code := make(chan int, 1)
		go func() { code <- run(ctx, []string{"-listen", "127.0.0.1:0", "-quiet=false"}, &buf) }()

		listening := regexp.MustCompile(`listening on (127\.0\.0\.1:\d+)`)
		var addr string
		require.Eventually(t, func() bool {
			m := listening.FindStringSubmatch(buf.String())
			if m != nil {
				addr = m[1]
			}
			return m != nil
		}, 5*time.Second, 5*time.Millisecond, "no start line: %s", buf.String())

		for _, p := range protocols {
			c := newClient(t, p.h2c)
			resp, _ := do(t, c, http.MethodGet, "http://"+addr+"/", nil)
			assert.Equal(t, addr, resp.Header.Get("X-Echo-Name"), "the name defaults to the listen address")
			assert.Equal(t, p.h2c, resp.ProtoMajor == 2)
			// An idle HTTP/2 client would hold Shutdown for the server's
			// GOAWAY timeout.
			c.CloseIdleConnections()
		}

		cancel()
		select {
		case c := <-code:
			assert.Equal(t, 0, c)
		case <-time.After(10 * time.Second):
			require.FailNow(t, "run did not stop")
		}
		assert.Contains(t, buf.String(), "stopped")
		assert.Contains(t, buf.String(), "GET / 200", "-quiet=false logs requests")
	})

	tests := []struct {
		name string
		args []string
		want int
	}{
		{name: "bad flag", args: []string{"-nope"}, want: 2},
		{name: "help", args: []string{"-h"}, want: 0},
		{name: "unusable address", args: []string{"-listen", "127.0.0.1:notaport"}, want: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, run(context.Background(), tt.args, io.Discard))
		})
	}
}

// syncBuffer is a bytes.Buffer that a server goroutine may write while the
// test reads it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// discardWriter is the cheapest possible ResponseWriter, so the handler
// benchmarks measure the handler and not a recorder.
type discardWriter struct{ h http.Header }

func (d *discardWriter) Header() http.Header         { return d.h }
func (d *discardWriter) Write(b []byte) (int, error) { return len(b), nil }
func (d *discardWriter) WriteHeader(int)             {}

// BenchmarkHandler measures the handler alone, with no network: the cost the
// backend adds to each request of an end-to-end proxy benchmark, full echo
// against -tiny.
func BenchmarkHandler(b *testing.B) {
	cases := []struct {
		name   string
		opts   options
		target string
	}{
		{name: "echo", opts: options{name: "bench-leaf", ready: true}, target: "/api/items?id=42"},
		{name: "tiny", opts: options{name: "bench-leaf", ready: true, tiny: true}, target: "/api/items?id=42"},
		{name: "search", opts: options{name: "bench-leaf", ready: true}, target: "/search?q=kyoto&n=10"},
	}
	for _, bc := range cases {
		b.Run(bc.name, func(b *testing.B) {
			s := newServer(bc.opts)
			req := httptest.NewRequest(http.MethodGet, bc.target, http.NoBody)
			req.Header.Set("User-Agent", "bench/1.0")
			req.Header.Set("Accept", "application/json")
			req.Header.Set("X-Request-Id", "0123456789abcdef")
			w := &discardWriter{h: http.Header{}}
			b.ReportAllocs()
			for b.Loop() {
				clear(w.h)
				s.ServeHTTP(w, req)
			}
		})
	}
}

// BenchmarkLoopback measures a keep-alive HTTP/1.1 round trip to the echo
// server over 127.0.0.1, full echo against -tiny: the floor under any proxy
// benchmark that uses this backend.
func BenchmarkLoopback(b *testing.B) {
	for _, tiny := range []bool{false, true} {
		name := "echo"
		if tiny {
			name = "tiny"
		}
		b.Run(name, func(b *testing.B) {
			ts := startEcho(b, options{name: "bench-leaf", ready: true, tiny: tiny})
			c := newClient(b, false)
			b.ReportAllocs()
			for b.Loop() {
				resp, err := c.Get(ts.URL + "/api/items")
				if err != nil {
					b.Fatal(err)
				}
				if _, err := io.Copy(io.Discard, resp.Body); err != nil {
					b.Fatal(err)
				}
				resp.Body.Close()
			}
		})
	}
}
