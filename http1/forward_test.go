package http1

import (
	"bufio"
	"io"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestRespHeadParse(t *testing.T) {
	cases := []struct {
		name   string
		raw    string
		head   bool
		plain  bool
		status int
		length int64
		keep   bool
	}{
		{name: "plain", raw: "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", plain: true, status: 200, length: 3, keep: true},
		{name: "no reason", raw: "HTTP/1.1 404\r\nContent-Length: 0\r\n\r\n", plain: true, status: 404, length: 0, keep: true},
		{name: "close", raw: "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx", plain: true, status: 200, length: 1},
		{name: "HEAD", raw: "HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n", head: true, plain: true, status: 200, length: 0, keep: true},
		{name: "304", raw: "HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n", plain: true, status: 304, length: 0, keep: true},
		{name: "chunked", raw: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"},
		{name: "no length", raw: "HTTP/1.1 200 OK\r\n\r\n"},
		{name: "two lengths", raw: "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx"},
		{name: "bad length", raw: "HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\nx"},
		{name: "HTTP/1.0", raw: "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx"},
		{name: "interim", raw: "HTTP/1.1 100 Continue\r\n\r\n"},
		{name: "event stream", raw: "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: 1\r\n\r\nx"},
		{name: "bad name", raw: "HTTP/1.1 200 OK\r\nBad Name: x\r\nContent-Length: 1\r\n\r\nx"},
		{name: "control byte", raw: "HTTP/1.1 200 OK\r\nX: a\x01b\r\nContent-Length: 1\r\n\r\nx"},
		{name: "204 with a body", raw: "HTTP/1.1 204 No Content\r\nContent-Length: 1\r\n\r\nx"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			br := bufio.NewReaderSize(strings.NewReader(c.raw), 4096)
			h := &respHead{}
			plain, err := h.parse(br, c.head)
			require.NoError(t, err)
			require.Equal(t, c.plain, plain)
			if !plain {
				rest, _ := io.ReadAll(br)
				assert.Equal(t, c.raw, string(rest), "what is not plain stays in the reader")
				return
			}
			assert.Equal(t, c.status, h.status)
			assert.Equal(t, c.length, h.length)
			assert.Equal(t, c.keep, h.keepAlive)
		})
	}
}

func TestCanonicalKey(t *testing.T) {
	for in, want := range map[string]string{
		"content-type": "Content-Type", "Content-Type": "Content-Type", "X-ECHO-name": "X-Echo-Name", "etag": "Etag",
	} {
		got, ok := canonicalKey(in)
		assert.True(t, ok)
		assert.Equal(t, want, got, in)
	}
	for _, bad := range []string{"a b", "a:b", "é", "a\tb"} {
		_, ok := canonicalKey(bad)
		assert.False(t, ok, bad)
	}
}
