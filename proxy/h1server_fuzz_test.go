package proxy

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
	} {
		f.Add([]byte(seed))
	}
	sc := &serverConn{remote: "192.0.2.1:1234", header: http.Header{}}
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
