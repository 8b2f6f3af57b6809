package upstream

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sekisho/health"
	"sekisho/http1"
	"sekisho/internal/rawupstream"
	"sekisho/proxy/metrics"
	"sekisho/router"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// directPool serves a pool of one endpoint, up, with no retries, behind
// an http1.Server on 127.0.0.1 that does what a listener does for the pool:
// it gives each request its router.Info (without which a request goes the
// ReverseProxy way) and passes on one X-Request-Id.
func directPool(t *testing.T, up string) *testFront {
	return directPoolWith(t, up, Options{}, nil)
}

// directPoolWith is directPool with the pool's forwarding options taken
// from o, and the client address resolved by res, as a listener does.
func directPoolWith(t *testing.T, up string, o Options, res *router.ClientIPResolver) *testFront {
	reg := health.NewRegistry(nil)
	p, err := New(Options{Name: "up", Endpoints: []Endpoint{{Addr: up}}, Registry: reg, Metrics: metrics.New(),
		Transport: NewTransport(TransportOptions{MaxIdlePerEndpoint: 256}), Forwarded: o.Forwarded, SetRealIP: o.SetRealIP})
	require.NoError(t, err)
	p.Commit()
	srv := &http1.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(r.Header["X-Request-Id"]) == 0 {
			r.Header.Set("X-Request-Id", "test")
		}
		info := &router.Info{}
		info.ClientIP, info.ForwardedFor, info.TrustedPeer = res.ResolveChain(r)
		p.ServeHTTP(w, router.WithInfo(r, info))
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(ln)
	}()
	tr := &http.Transport{}
	t.Cleanup(func() {
		tr.CloseIdleConnections()
		srv.Close()
		<-done
		p.Transport().CloseIdleConnections()
	})
	return &testFront{t: t, addr: ln.Addr().String(), client: &http.Client{Transport: tr, Timeout: 10 * time.Second}}
}

// testFront is a client of directPool's server.
type testFront struct {
	t      *testing.T
	addr   string
	client *http.Client
}

// url returns the server's base URL; the listener name is the one the
// same tests used when they ran through the daemon.
func (td *testFront) url(string) string { return "http://" + td.addr }

func (td *testFront) do(req *http.Request) (*http.Response, string) {
	td.t.Helper()
	resp, err := td.client.Do(req)
	require.NoError(td.t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(td.t, err)
	return resp, string(b)
}

func (td *testFront) get(url string) (*http.Response, string) {
	td.t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	require.NoError(td.t, err)
	return td.do(req)
}

// The direct path rewrites the request head as ReverseProxy with the
// pool's rewrite does.
func TestDirectPathRewritesTheRequestHead(t *testing.T) {
	up := rawupstream.NewScripted(t, func(string) string {
		return "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
	})
	td := directPool(t, up.Addr())
	req, err := http.NewRequest(http.MethodGet, td.url("edge")+"/a/b%2Fc?q=1&r", nil)
	require.NoError(t, err)
	req.Host = "shop.example.com"
	req.Header.Set("Connection", "X-Hop, keep-alive")
	req.Header.Set("X-Hop", "drop me")
	req.Header.Set("Keep-Alive", "timeout=5")
	req.Header.Set("Proxy-Authorization", "Basic eA==")
	req.Header.Set("Te", "trailers, deflate")
	req.Header.Set("Forwarded", "for=6.6.6.6")
	req.Header.Set("X-Forwarded-For", "6.6.6.6")
	req.Header.Add("X-Multi", "one")
	req.Header.Add("X-Multi", "two")
	resp, body := td.do(req)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, "ok", body)

	head := up.LastHead()
	assert.True(t, strings.HasPrefix(head, "GET /a/b%2Fc?q=1&r HTTP/1.1\r\n"), head)
	h := rawupstream.HeaderLines(head)
	assert.Equal(t, []string{"shop.example.com"}, h["host"])
	for _, gone := range []string{"connection", "x-hop", "keep-alive", "proxy-authorization", "forwarded"} {
		assert.NotContains(t, h, gone)
	}
	assert.Equal(t, []string{"trailers"}, h["te"])
	assert.Equal(t, []string{"127.0.0.1"}, h["x-forwarded-for"])
	assert.Equal(t, []string{"shop.example.com"}, h["x-forwarded-host"])
	assert.Equal(t, []string{"http"}, h["x-forwarded-proto"])
	assert.Equal(t, []string{"one", "two"}, h["x-multi"])
	assert.Len(t, h["x-request-id"], 1)

	// The target goes upstream byte for byte, sub-delimiters and escapes
	// as the client wrote them.
	c, err := net.Dial("tcp", strings.TrimPrefix(td.url("edge"), "http://"))
	require.NoError(t, err)
	defer c.Close()
	for _, target := range []string{"/x!y'(z)*", "/a%2fb%41?q=%7e!", "/p;q=1?", "/~user/./..//"} {
		_, err = io.WriteString(c, "GET "+target+" HTTP/1.1\r\nHost: h\r\n\r\n")
		require.NoError(t, err)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		require.NoError(t, err)
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		assert.True(t, strings.HasPrefix(up.LastHead(), "GET "+target+" HTTP/1.1\r\n"), "%s: %s", target, up.LastHead())
	}
}

// The direct path and ReverseProxy send the same forwarding headers, byte
// for byte, for every way a client can present itself and every pool
// setting: the values are computed in one place (Pool.forwardedFor).
func TestForwardingHeadersSameOnBothPaths(t *testing.T) {
	up := rawupstream.NewScripted(t, func(string) string {
		return "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
	})
	trusted := &router.ClientIPResolver{Trusted: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}
	clients := []struct {
		name string
		res  *router.ClientIPResolver
		hdr  map[string]string
		// what the upstream gets, without and with forwarded: rfc7239
		xff, fwd string
	}{
		{name: "untrusted client's claims are replaced", res: nil,
			hdr: map[string]string{"X-Forwarded-For": "6.6.6.6", "Forwarded": "for=6.6.6.6;proto=https", "X-Forwarded-Proto": "https"},
			xff: "127.0.0.1", fwd: `for=127.0.0.1;host="shop.example.com:8080";proto=http`},
		{name: "trusted proxy's X-Forwarded-For", res: trusted,
			hdr: map[string]string{"X-Forwarded-For": "6.6.6.6, 203.0.113.9, 127.0.0.2", "X-Forwarded-Proto": "https"},
			xff: "203.0.113.9, 127.0.0.2, 127.0.0.1", fwd: `for=203.0.113.9;host="shop.example.com:8080";proto=https, for=127.0.0.2, for=127.0.0.1`},
		{name: "trusted proxy's Forwarded", res: trusted,
			hdr: map[string]string{"Forwarded": `for="[2001:db8::7]:4711";proto=https, for=127.0.0.2`},
			xff: "2001:db8::7, 127.0.0.2, 127.0.0.1", fwd: `for="[2001:db8::7]";host="shop.example.com:8080";proto=http, for=127.0.0.2, for=127.0.0.1`},
	}
	for _, forwarded := range []bool{false, true} {
		for _, realIP := range []bool{false, true} {
			for _, c := range clients {
				name := fmt.Sprintf("%s/forwarded=%v/set_real_ip=%v", c.name, forwarded, realIP)
				t.Run(name, func(t *testing.T) {
					td := directPoolWith(t, up.Addr(), Options{Forwarded: forwarded, SetRealIP: realIP}, c.res)
					heads := map[string]map[string][]string{}
					for _, method := range []string{http.MethodGet, http.MethodPost} {
						var body io.Reader
						if method == http.MethodPost {
							body = strings.NewReader("z") // ReverseProxy's way
						}
						req, err := http.NewRequest(method, td.url("edge")+"/x", body)
						require.NoError(t, err)
						req.Host = "shop.example.com:8080"
						for k, v := range c.hdr {
							req.Header.Set(k, v)
						}
						// As a headers stage may have set it.
						req.Header.Set("X-Real-Ip", "198.51.100.1")
						resp, _ := td.do(req)
						require.Equal(t, http.StatusOK, resp.StatusCode)
						h := rawupstream.HeaderLines(up.LastHead())
						delete(h, "content-length") // the POST's body
						heads[method] = h
					}
					assert.Equal(t, heads[http.MethodGet], heads[http.MethodPost], "the direct path and ReverseProxy send different headers")
					got := heads[http.MethodGet]
					assert.Equal(t, []string{c.xff}, got["x-forwarded-for"])
					assert.Equal(t, []string{"shop.example.com:8080"}, got["x-forwarded-host"])
					if forwarded {
						assert.Equal(t, []string{c.fwd}, got["forwarded"])
					} else {
						assert.NotContains(t, got, "forwarded")
					}
					client, _, _ := strings.Cut(c.xff, ", ")
					if realIP {
						assert.Equal(t, []string{client}, got["x-real-ip"])
					} else {
						assert.Equal(t, []string{"198.51.100.1"}, got["x-real-ip"], "an X-Real-IP set after entry passes when the pool sets none")
					}
				})
			}
		}
	}
}

// Every shape of answer arrives whole: the plain ones on the direct path,
// the others handed to ReverseProxy after the head was read.
func TestDirectPathAnswers(t *testing.T) {
	big := strings.Repeat("v", 20<<10) // a head larger than the read buffer
	answers := map[string]string{
		"/plain": "HTTP/1.1 200 OK\r\nConnection: X-Bar\r\nX-Bar: hop\r\nKeep-Alive: timeout=5\r\n" +
			"Set-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 5\r\n\r\nhello",
		"/chunked":   "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\nX-Sum: 5\r\n\r\n",
		"/interim":   "HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlate",
		"/close":     "HTTP/1.0 200 OK\r\n\r\nuntil the end\x00close",
		"/bighead":   "HTTP/1.1 200 OK\r\nX-Big: " + big + "\r\nContent-Length: 3\r\n\r\nbig",
		"/nocontent": "HTTP/1.1 204 No Content\r\n\r\n",
		"/status":    "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy",
		"/obsfold":   "HTTP/1.1 200 OK\r\nX-Fold: a\r\n b\r\nContent-Length: 4\r\n\r\nfold",
	}
	up := rawupstream.NewScripted(t, func(head string) string {
		path := strings.Fields(head)[1]
		if strings.HasPrefix(head, "HEAD ") {
			return "HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"
		}
		return answers[path]
	})
	td := directPool(t, up.Addr())

	t.Run("plain: hop-by-hop headers dropped, repeated ones kept", func(t *testing.T) {
		resp, body := td.get(td.url("edge") + "/plain")
		require.Equal(t, http.StatusOK, resp.StatusCode)
		assert.Equal(t, "hello", body)
		assert.Empty(t, resp.Header.Get("X-Bar"))
		assert.Empty(t, resp.Header.Get("Keep-Alive"))
		assert.Equal(t, []string{"a=1", "b=2"}, resp.Header.Values("Set-Cookie"))
	})
	t.Run("chunked with a trailer", func(t *testing.T) {
		resp, body := td.get(td.url("edge") + "/chunked")
		require.Equal(t, http.StatusOK, resp.StatusCode)
		assert.Equal(t, "abcde", body)
		assert.Equal(t, "5", resp.Trailer.Get("X-Sum"))
	})
	t.Run("an interim answer is skipped", func(t *testing.T) {
		resp, body := td.get(td.url("edge") + "/interim")
		require.Equal(t, http.StatusOK, resp.StatusCode)
		assert.Equal(t, "late", body)
	})
	t.Run("a body read to the close", func(t *testing.T) {
		resp, body := td.get(td.url("edge") + "/close")
		require.Equal(t, http.StatusOK, resp.StatusCode)
		assert.Equal(t, "until the end\x00close", body)
	})
	t.Run("a head larger than the read buffer", func(t *testing.T) {
		resp, body := td.get(td.url("edge") + "/bighead")
		require.Equal(t, http.StatusOK, resp.StatusCode)
		assert.Equal(t, "big", body)
		assert.Len(t, resp.Header.Get("X-Big"), len(big))
	})
	t.Run("a folded header line goes the ReverseProxy way", func(t *testing.T) {
		resp, body := td.get(td.url("edge") + "/obsfold")
		require.Equal(t, http.StatusOK, resp.StatusCode)
		assert.Equal(t, "fold", body)
		assert.Equal(t, "a b", resp.Header.Get("X-Fold"))
	})
	t.Run("204 and an upstream's 503 pass through", func(t *testing.T) {
		resp, body := td.get(td.url("edge") + "/nocontent")
		assert.Equal(t, http.StatusNoContent, resp.StatusCode)
		assert.Empty(t, body)
		resp, body = td.get(td.url("edge") + "/status")
		assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
		assert.Equal(t, "busy", body)
	})
	t.Run("HEAD keeps the length and sends no body", func(t *testing.T) {
		req, err := http.NewRequest(http.MethodHead, td.url("edge")+"/plain", nil)
		require.NoError(t, err)
		resp, body := td.do(req)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		assert.Equal(t, int64(1234), resp.ContentLength)
		assert.Empty(t, body)
	})
}

// Plain answers keep their upstream connection; a stream of requests uses
// one connection per concurrent client.
func TestDirectPathReusesUpstreamConnections(t *testing.T) {
	up := rawupstream.NewScripted(t, func(string) string {
		return "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
	})
	td := directPool(t, up.Addr())
	for i := 0; i < 50; i++ {
		resp, body := td.get(td.url("edge") + "/")
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.Equal(t, "ok", body)
	}
	assert.EqualValues(t, 1, up.Conns())
}

// A body cut short by the upstream aborts the client's connection rather
// than leaving it waiting for bytes that will never come, and the next
// request gets a fresh upstream connection.
func TestDirectPathTruncatedBody(t *testing.T) {
	up := rawupstream.NewScripted(t, func(head string) string {
		if strings.Contains(head, "GET /cut ") {
			return "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten..\x00close"
		}
		return "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
	})
	td := directPool(t, up.Addr())
	resp, err := http.Get(td.url("edge") + "/cut")
	if err == nil { // the head may or may not have left before the abort
		_, err = io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	assert.Error(t, err, "the client sees the answer end early")
	resp, body := td.get(td.url("edge") + "/next")
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, "ok", body)
}

// an upstream head whose lines end in a bare LF (which
// http.ReadResponse, and so ReverseProxy, accepts) is never recognised as
// complete by the direct path's parser, which waits for "\r\n\r\n".
func TestDirectPathBareLFAnswerHead(t *testing.T) {
	up := rawupstream.NewScripted(t, func(string) string {
		return "HTTP/1.1 200 OK\nContent-Length: 2\n\nok"
	})
	td := directPool(t, up.Addr())
	td.client.Timeout = 3 * time.Second
	resp, err := td.client.Get(td.url("edge") + "/x")
	if err != nil {
		t.Fatalf("GET through the direct path: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(body) != "ok" {
		t.Fatalf("got %d %q, want 200 \"ok\"", resp.StatusCode, body)
	}
}

// the pooled upstream connection is not watched while idle, so bytes
// the upstream sends on it between requests (here the 408 some servers
// send before closing an idle connection) are read as the answer to the
// next request, which goes to a different client.
func TestDirectPathIdleConnectionsAnswerIsNotTheNextOnes(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					line, err := br.ReadString('\n')
					if err != nil {
						return
					}
					if line == "\r\n" {
						break
					}
				}
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
				// What some servers send when they close an idle
				// connection; here at once, in the same or the next read.
				io.WriteString(c, "HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
			}()
		}
	}()
	td := directPool(t, ln.Addr().String())
	resp, body := td.get(td.url("edge") + "/first")
	if resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("first: %d %q", resp.StatusCode, body)
	}
	td.client.CloseIdleConnections() // a new client connection, another client
	resp, body = td.get(td.url("edge") + "/second")
	if resp.StatusCode != 200 {
		t.Fatalf("second request got %d %q: the upstream's unsolicited answer on the idle connection", resp.StatusCode, body)
	}
}

// an HTTP/1.0 request without Host goes upstream with an empty
// Host on the direct path; through ReverseProxy (same request with a body)
// the Host is the endpoint's address, as http.Transport fills it in.
func TestDirectPathHostOfAnHTTP10Request(t *testing.T) {
	up := rawupstream.NewScripted(t, func(string) string { return "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" })
	td := directPool(t, up.Addr())
	hostOf := func(raw string) []string {
		c, br := rawConn(t, strings.TrimPrefix(td.url("edge"), "http://"))
		io.WriteString(c, raw)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		io.ReadAll(resp.Body)
		return rawupstream.HeaderLines(up.LastHead())["host"]
	}
	viaProxy := hostOf("POST /x HTTP/1.0\r\nContent-Length: 1\r\n\r\nz")
	direct := hostOf("GET /x HTTP/1.0\r\n\r\n")
	t.Logf("ReverseProxy: %q, direct: %q", viaProxy, direct)
	if len(direct) != 1 || direct[0] != up.Addr() {
		t.Errorf("direct path sent Host %q, ReverseProxy sends %q", direct, viaProxy)
	}
}

func rawConn(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(5 * time.Second))
	return c, bufio.NewReader(c)
}
