package http1

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// writeAnswer runs handle against the loop's ResponseWriter for a request
// of method and proto, and returns the bytes it put on the wire.
func writeAnswer(t *testing.T, method string, minor int, handle func(w http.ResponseWriter)) (string, *respWriter) {
	t.Helper()
	var out bytes.Buffer
	sc := &serverConn{srv: &Server{}, bw: bufio.NewWriter(&out)}
	sc.w.sc = sc
	sc.w.header = http.Header{}
	r := &http.Request{Method: method, ProtoMajor: 1, ProtoMinor: minor, Header: http.Header{}, Body: http.NoBody}
	sc.w.reset(r)
	handle(&sc.w)
	sc.w.finish()
	return out.String(), &sc.w
}

func readAnswer(t *testing.T, raw, method string) (*http.Response, string) {
	t.Helper()
	resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(raw)), &http.Request{Method: method})
	require.NoError(t, err, raw)
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err, raw)
	return resp, string(body)
}

func TestRespWriterFraming(t *testing.T) {
	big := strings.Repeat("x", pendingMax+1)
	cases := []struct {
		name      string
		method    string
		http10    bool
		handle    func(w http.ResponseWriter)
		status    int
		body      string
		length    int64 // -1: chunked or to the close
		chunked   bool
		closeConn bool
	}{
		{name: "nothing written", handle: func(http.ResponseWriter) {}, status: 200, length: 0},
		{name: "short body gets a length", handle: func(w http.ResponseWriter) { io.WriteString(w, "hello") },
			status: 200, body: "hello", length: 5},
		{name: "long body goes chunked", handle: func(w http.ResponseWriter) { io.WriteString(w, big) },
			status: 200, body: big, length: -1, chunked: true},
		{name: "declared length", handle: func(w http.ResponseWriter) {
			w.Header().Set("Content-Length", "3")
			w.WriteHeader(201)
			io.WriteString(w, "abc")
		}, status: 201, body: "abc", length: 3},
		{name: "flush before the end goes chunked", handle: func(w http.ResponseWriter) {
			io.WriteString(w, "a")
			w.(http.Flusher).Flush()
			io.WriteString(w, "b")
		}, status: 200, body: "ab", length: -1, chunked: true},
		{name: "HTTP/1.0 long body ends with the close", http10: true, handle: func(w http.ResponseWriter) { io.WriteString(w, big) },
			status: 200, body: big, length: -1, closeConn: true},
		{name: "HEAD keeps the length, sends no body", method: http.MethodHead, handle: func(w http.ResponseWriter) {
			w.Header().Set("Content-Length", "1234")
		}, status: 200, length: 1234},
		{name: "204 has neither length nor body", handle: func(w http.ResponseWriter) {
			w.Header().Set("Content-Length", "9")
			w.WriteHeader(204)
		}, status: 204, length: 0},
		{name: "short of the declared length closes", handle: func(w http.ResponseWriter) {
			w.Header().Set("Content-Length", "10")
			io.WriteString(w, "abc")
		}, status: 200, length: 10, closeConn: true},
		{name: "Connection: close from the handler", handle: func(w http.ResponseWriter) {
			w.Header().Set("Connection", "close")
			io.WriteString(w, "x")
		}, status: 200, body: "x", length: 1, closeConn: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			method := c.method
			if method == "" {
				method = http.MethodGet
			}
			minor := 1
			if c.http10 {
				minor = 0
			}
			raw, w := writeAnswer(t, method, minor, c.handle)
			if c.status == 200 && c.length == 10 {
				// The body is short of its length: only the head is checked.
				assert.True(t, strings.HasPrefix(raw, "HTTP/1.1 200 OK\r\n"), raw)
				assert.Contains(t, raw, "Content-Length: 10\r\n")
				assert.True(t, w.closeAfter)
				return
			}
			resp, body := readAnswer(t, raw, method)
			assert.Equal(t, c.status, resp.StatusCode)
			assert.Equal(t, c.body, body)
			assert.Equal(t, c.length, resp.ContentLength)
			assert.Equal(t, c.chunked, len(resp.TransferEncoding) > 0, raw)
			assert.Equal(t, c.closeConn, w.closeAfter)
			assert.NotEmpty(t, resp.Header.Get("Date"))
		})
	}
}

// Declared trailers go after the body, never in the head, also when the
// answer is short enough to have waited for the handler's end.
func TestRespWriterTrailers(t *testing.T) {
	raw, _ := writeAnswer(t, http.MethodGet, 1, func(w http.ResponseWriter) {
		w.Header().Set("Trailer", "X-Sum")
		w.WriteHeader(200)
		io.WriteString(w, "abc")
		w.Header().Set("X-Sum", "5")
		w.Header().Set(http.TrailerPrefix+"X-Late", "7")
	})
	resp, body := readAnswer(t, raw, http.MethodGet)
	assert.Equal(t, "abc", body)
	assert.Equal(t, []string{"chunked"}, resp.TransferEncoding)
	assert.Empty(t, resp.Header.Get("X-Sum"), "a trailer is not a header")
	assert.Equal(t, "5", resp.Trailer.Get("X-Sum"))
	assert.Contains(t, raw, "\r\nX-Late: 7\r\n", "an undeclared trailer goes after the body too")
}

// A write past the declared length is refused, and an interim answer goes
// before the final one.
func TestRespWriterLimitsAndInterim(t *testing.T) {
	var err error
	raw, _ := writeAnswer(t, http.MethodGet, 1, func(w http.ResponseWriter) {
		w.Header().Set("Link", "</a.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		w.Header().Del("Link")
		w.Header().Set("Content-Length", "2")
		_, err = io.WriteString(w, "abc")
		io.WriteString(w, "ab")
	})
	assert.ErrorIs(t, err, http.ErrContentLength)
	assert.True(t, strings.HasPrefix(raw, "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\n"), raw)
	assert.True(t, strings.HasSuffix(raw, "\r\n\r\nab"), raw)
}
