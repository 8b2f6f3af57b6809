package http1

import (
	"bufio"
	"bytes"
	"context"
	"net/http"
	"slices"
	"testing"
)

// FuzzParseRequestHead checks the loop's request parser against net/http's:
// whatever the loop accepts, net/http accepts too and reads the same way
// (method, target, host, framing, header), so that the loop is never the
// more lenient of the two, the root of request smuggling.
//
// Where the loop departs from net/http on purpose the loop is stricter or
// acts after parsing, so no expectation here changes: an HTTP/1.1 request
// in absolute form without Host is refused (net/http serves it); a request
// with both Content-Length and chunked is read as net/http reads it, but
// its connection closes after the answer (serverConn.ambiguous, not
// r.Close); MaxHeaderBytes is exact, which readHead enforces before
// parse sees a head.
func FuzzParseRequestHead(f *testing.F) {
	for _, seed := range []string{
		"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET /a/b?c=d HTTP/1.1\r\nHost: example.com:8080\r\nX-A: 1\r\nX-A: 2\r\n\r\n",
		"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n",
		"POST /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n",
		"GET http://other/x HTTP/1.1\r\nHost: h\r\n\r\n",
		"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
		"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
		"CONNECT host:443 HTTP/1.1\r\nHost: host:443\r\n\r\n",
		"GET /%41 HTTP/1.1\nHost: h\n\n",
		"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
		"GET http://other/x HTTP/1.1\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nX_Forwarded_For: 1\r\n\r\n",
	} {
		f.Add([]byte(seed))
	}
	sc := &serverConn{srv: &Server{}, remote: "192.0.2.1:1234", header: http.Header{}}
	sc.base = (&http.Request{}).WithContext(context.Background())
	f.Fuzz(func(t *testing.T, raw []byte) {
		end := headEnd(raw)
		if end < 0 {
			return
		}
		head := raw[:end]
		r, status, msg := sc.parse(head)
		if r == nil {
			if status < 400 || status > 599 || msg == "" && status != http.StatusRequestHeaderFieldsTooLarge {
				t.Fatalf("refusal without a status or reason: %d %q", status, msg)
			}
			return
		}
		std, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(head)))
		if err != nil {
			t.Fatalf("the loop accepts what net/http refuses (%v):\n%q", err, head)
		}
		if std.Method != r.Method || std.RequestURI != r.RequestURI || std.Host != r.Host || std.Proto != r.Proto {
			t.Fatalf("request line read differently:\nloop %s %s %s host %q\nnet/http %s %s %s host %q",
				r.Method, r.RequestURI, r.Proto, r.Host, std.Method, std.RequestURI, std.Proto, std.Host)
		}
		if std.URL.String() != r.URL.String() {
			t.Fatalf("target read differently: loop %q, net/http %q", r.URL.String(), std.URL.String())
		}
		if std.ContentLength != r.ContentLength || !slices.Equal(std.TransferEncoding, r.TransferEncoding) {
			t.Fatalf("framing read differently: loop %d %v, net/http %d %v",
				r.ContentLength, r.TransferEncoding, std.ContentLength, std.TransferEncoding)
		}
		if std.Close != r.Close {
			t.Fatalf("keep-alive read differently: loop close=%v, net/http close=%v", r.Close, std.Close)
		}
		for k, vs := range std.Header {
			if k == "Transfer-Encoding" || k == "Content-Length" {
				continue // the framing, compared above
			}
			if !slices.Equal(vs, r.Header[k]) {
				t.Fatalf("header %q read differently: loop %q, net/http %q", k, r.Header[k], vs)
			}
		}
		if len(r.Header) > len(std.Header)+1 {
			t.Fatalf("the loop has headers net/http has not: %v against %v", r.Header, std.Header)
		}
	})
}

// FuzzParseResponseHead checks the direct path's answer parser against
// http.ReadResponse: an answer it takes as plain, ReadResponse reads with
// the same status, length, keep-alive and header values.
func FuzzParseResponseHead(f *testing.F) {
	for _, seed := range []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
		"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n",
		"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\nETag: \"x\"\r\n\r\n",
		"HTTP/1.1 200 OK\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"HTTP/1.1 500\r\nContent-Length: 1\r\nSet-Cookie: a\r\nSet-Cookie: b\r\n\r\nx",
	} {
		f.Add([]byte(seed), false)
	}
	f.Fuzz(func(t *testing.T, raw []byte, head bool) {
		h := &respHead{}
		plain, err := h.parse(bufio.NewReaderSize(bytes.NewReader(raw), 4096), head)
		if err != nil || !plain {
			return
		}
		method := http.MethodGet
		if head {
			method = http.MethodHead
		}
		std, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(raw)), &http.Request{Method: method})
		if err != nil {
			t.Fatalf("plain to the direct path, refused by ReadResponse (%v):\n%q", err, raw)
		}
		if std.StatusCode != h.status {
			t.Fatalf("status: direct %d, ReadResponse %d", h.status, std.StatusCode)
		}
		wantLength := std.ContentLength
		if head || std.StatusCode == http.StatusNoContent || std.StatusCode == http.StatusNotModified {
			wantLength = 0
		}
		if wantLength != h.length {
			t.Fatalf("length: direct %d, ReadResponse %d:\n%q", h.length, std.ContentLength, raw)
		}
		if std.Close == h.keepAlive {
			t.Fatalf("keep-alive: direct %v, ReadResponse close=%v:\n%q", h.keepAlive, std.Close, raw)
		}
		got := http.Header{}
		for i, k := range h.keys {
			got[k] = append(got[k], h.vals[i])
		}
		for k, vs := range std.Header {
			if !slices.Equal(vs, got[k]) {
				t.Fatalf("header %q: direct %q, ReadResponse %q", k, got[k], vs)
			}
		}
	})
}
