package http1

import (
	"fmt"
	"net/http"
	"sekisho/internal/rawclient"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// RFC 9112's framing rules on the loop, where it is stricter than net/http
// on purpose, and Expect as net/http has it.
func TestServerFramingRules(t *testing.T) {
	u, _, addr := h1sSetup(t, nil)
	t.Run("Content-Length with chunked: chunked framing, then close", func(t *testing.T) {
		c := rawclient.Dial(t, addr)
		resp, body := c.Do(http.MethodPost, "POST /api/echo HTTP/1.1\r\nHost: edge.test\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
		require.Equal(t, http.StatusOK, resp.StatusCode)
		assert.Equal(t, "hello", body)
		assert.Equal(t, "5", resp.Header.Get("X-Got-Length"))
		assert.True(t, resp.Close, "the answer says Connection: close")
		c.AssertClosed(5 * time.Second)
	})
	t.Run("absolute form without Host is 400", func(t *testing.T) {
		c := rawclient.Dial(t, addr)
		resp, _ := c.Do(http.MethodGet, "GET http://edge.test/fixed HTTP/1.1\r\n\r\n")
		assert.Equal(t, http.StatusBadRequest, resp.StatusCode)
		c.AssertClosed(5 * time.Second)
	})
	t.Run("absolute form with Host is served", func(t *testing.T) {
		c := rawclient.Dial(t, addr)
		resp, body := c.Do(http.MethodGet, "GET http://edge.test/fixed HTTP/1.1\r\nHost: edge.test\r\n\r\n")
		assert.Equal(t, http.StatusOK, resp.StatusCode)
		assert.Equal(t, "fixed\n", body)
	})
	for _, tc := range []struct{ name, raw string }{
		{"100-continue on HTTP/1.0 is ignored", "GET /fixed HTTP/1.0\r\nConnection: keep-alive\r\nExpect: 100-continue\r\n\r\n"},
		{"100-continue on a bodyless request is ignored", "GET /fixed HTTP/1.1\r\nHost: edge.test\r\nExpect: 100-continue\r\n\r\n"},
		{"100-continue among other tokens is 100-continue", "GET /fixed HTTP/1.1\r\nHost: edge.test\r\nExpect: foo 100-continue\r\n\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := rawclient.Dial(t, addr)
			resp, body := c.Do(http.MethodGet, tc.raw)
			assert.Equal(t, http.StatusOK, resp.StatusCode)
			assert.Equal(t, "fixed\n", body)
			assertOpen(t, c)
		})
	}
	t.Run("another Expect is 417", func(t *testing.T) {
		c := rawclient.Dial(t, addr)
		resp, _ := c.Do(http.MethodGet, "GET /fixed HTTP/1.0\r\nExpect: something-else\r\n\r\n")
		assert.Equal(t, http.StatusExpectationFailed, resp.StatusCode)
	})
	t.Run("malformed chunked body is 400, then close", func(t *testing.T) {
		c := rawclient.Dial(t, addr)
		resp, _ := c.Do(http.MethodPost, "POST /api/echo HTTP/1.1\r\nHost: edge.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n")
		assert.Equal(t, http.StatusBadRequest, resp.StatusCode)
		assert.True(t, resp.Close)
		c.AssertClosed(5 * time.Second)
	})
	_ = u
}

// MaxHeaderBytes bounds the head (request line, header lines and the
// empty line) exactly: a head of that size is served, one byte more is 431,
// whether or not the head fits the connection's read buffer.
func TestServerMaxHeaderBytesIsExact(t *testing.T) {
	for _, limit := range []int{1024, 4096, 6000, 20000} {
		t.Run(fmt.Sprint(limit), func(t *testing.T) {
			_, _, addr := h1sSetup(t, func(s *Server) { s.MaxHeaderBytes = limit })
			head := func(n int) string {
				pre, post := "GET /fixed HTTP/1.1\r\nHost: edge.test\r\nX-Pad: ", "\r\n\r\n"
				return pre + strings.Repeat("p", n-len(pre)-len(post)) + post
			}
			require.Len(t, head(limit), limit)
			c := rawclient.Dial(t, addr)
			resp, _ := c.Do(http.MethodGet, head(limit))
			assert.Equal(t, http.StatusOK, resp.StatusCode, "a head of exactly max_header_bytes")
			c = rawclient.Dial(t, addr)
			resp, _ = c.Do(http.MethodGet, head(limit+1))
			assert.Equal(t, http.StatusRequestHeaderFieldsTooLarge, resp.StatusCode, "a head one byte over")
		})
	}
}
