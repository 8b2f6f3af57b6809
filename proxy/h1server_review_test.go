package proxy

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"sekisho/proxy/config"
)

// frontOnly serves h on a frontServer over a real 127.0.0.1 listener.
func frontOnly(t *testing.T, lc config.Listener, h http.Handler) (*frontServer, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{log: zap.NewNop(), ctx: ctx, cancel: cancel}
	if lc.MaxHeaderBytes == 0 {
		lc.MaxHeaderBytes = 64 << 10
	}
	if lc.Timeouts.Idle == 0 {
		lc.Timeouts.Idle = config.Duration(120 * time.Second)
	}
	fs := newFrontServer(s, &lc, h, &http.Server{Handler: h}, ln.Addr())
	done := make(chan struct{})
	go func() { defer close(done); fs.Serve(ln) }()
	t.Cleanup(func() {
		fs.Close()
		fs.hand.Close()
		cancel()
		<-done
	})
	return fs, ln.Addr().String()
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

// a short Write held back in pending is dropped when a later Write
// pushes the answer past pendingMax.
func TestH1ServerHeldBackBytesGoFirst(t *testing.T) {
	big := strings.Repeat("B", pendingMax+10)
	_, addr := frontOnly(t, config.Listener{}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "small-")
		io.WriteString(w, big)
	}))
	c, br := rawConn(t, addr)
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if want := "small-" + big; string(body) != want {
		t.Fatalf("body: got %d bytes starting %q, want %d bytes starting %q", len(body), body[:10], len(want), want[:10])
	}
}

// a handler that answers an Expect: 100-continue request without
// reading its body (with a Content-Length, so the head goes at once) leaves
// the answer unflushed while the loop waits for a body the client will not
// send before it gets a 100 Continue.
func TestH1ServerAnswersAnUnreadExpectContinue(t *testing.T) {
	_, addr := frontOnly(t, config.Listener{}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "6")
		w.WriteHeader(http.StatusRequestEntityTooLarge)
		io.WriteString(w, "nope!\n")
	}))
	c, br := rawConn(t, addr)
	io.WriteString(c, "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\nExpect: 100-continue\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("no answer within 2s to a request whose body was never asked for: %v", err)
	}
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("status %d", resp.StatusCode)
	}
}

// an upstream head whose lines end in a bare LF (which
// http.ReadResponse, and so ReverseProxy, accepts) is never recognised as
// complete by the direct path's parser, which waits for "\r\n\r\n".
func TestDirectPathBareLFAnswerHead(t *testing.T) {
	up := newScriptedUpstream(t, func(string) string {
		return "HTTP/1.1 200 OK\nContent-Length: 2\n\nok"
	})
	td := directDaemon(t, up.addr())
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

// chunk-size lines ending in a bare LF are accepted; net/http rejects
// them since the request-smuggling fix for CVE-2025-22871.
func TestH1ServerRefusesBareLFChunkSize(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			w.WriteHeader(400)
			io.WriteString(w, "err: "+err.Error())
			return
		}
		io.WriteString(w, "read "+string(b))
	})
	raw := "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n"
	// net/http, for reference.
	ref := netHTTPServer(t, h)
	for name, addr := range map[string]string{"net/http": ref, "loop": ""} {
		if addr == "" {
			_, addr = frontOnly(t, config.Listener{}, h)
		}
		c, br := rawConn(t, addr)
		io.WriteString(c, raw)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		b, _ := io.ReadAll(resp.Body)
		t.Logf("%s: %d %q", name, resp.StatusCode, b)
		if resp.StatusCode != 400 {
			t.Errorf("%s: a chunk-size line ending in a bare LF was accepted: %q", name, b)
		}
	}
}

func netHTTPServer(t *testing.T, h http.Handler) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// what the handler wrote before Hijack (a WriteHeader(101), or a short
// body held back in pending) is dropped instead of flushed as net/http does.
func TestH1ServerHijackSendsTheWrittenHead(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "Upgrade")
		w.Header().Set("Upgrade", "echo")
		w.WriteHeader(http.StatusSwitchingProtocols)
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		brw.WriteString("after-upgrade")
		brw.Flush()
	})
	ref := netHTTPServer(t, h)
	_, loop := frontOnly(t, config.Listener{}, h)
	for _, tc := range []struct{ name, addr string }{{"net/http", ref}, {"loop", loop}} {
		c, br := rawConn(t, tc.addr)
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		all, _ := io.ReadAll(br)
		t.Logf("%s: %q", tc.name, all)
		if !strings.HasPrefix(string(all), "HTTP/1.1 101 ") {
			t.Errorf("%s: the 101 written before Hijack never reached the client: %q", tc.name, all)
		}
	}
}

// an Expect other than 100-continue on a bodyless request is served
// instead of answered 417 (net/http, and docs/config.md, say 417).
func TestH1ServerUnknownExpectIs417(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "served") })
	ref := netHTTPServer(t, h)
	_, loop := frontOnly(t, config.Listener{}, h)
	for _, tc := range []struct{ name, addr string }{{"net/http", ref}, {"loop", loop}} {
		c, br := rawConn(t, tc.addr)
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\nExpect: something-else\r\n\r\n")
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		t.Logf("%s: %d", tc.name, resp.StatusCode)
		if resp.StatusCode != http.StatusExpectationFailed {
			t.Errorf("%s: status %d, want 417", tc.name, resp.StatusCode)
		}
	}
}

// net/http sniffs a Content-Type for a body written without
// one; the loop sends none.
func TestH1ServerSniffsContentType(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "<html><body>hi</body></html>") })
	ref := netHTTPServer(t, h)
	_, loop := frontOnly(t, config.Listener{}, h)
	for _, tc := range []struct{ name, addr string }{{"net/http", ref}, {"loop", loop}} {
		c, br := rawConn(t, tc.addr)
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		t.Logf("%s: Content-Type %q", tc.name, resp.Header.Get("Content-Type"))
		if resp.Header.Get("Content-Type") != "text/html; charset=utf-8" {
			t.Errorf("%s: Content-Type %q, want the sniffed text/html; charset=utf-8", tc.name, resp.Header.Get("Content-Type"))
		}
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
	td := directDaemon(t, ln.Addr().String())
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
	up := newScriptedUpstream(t, func(string) string { return "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" })
	td := directDaemon(t, up.addr())
	hostOf := func(raw string) []string {
		c, br := rawConn(t, strings.TrimPrefix(td.url("edge"), "http://"))
		io.WriteString(c, raw)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		io.ReadAll(resp.Body)
		return headerLines(up.lastHead())["host"]
	}
	viaProxy := hostOf("POST /x HTTP/1.0\r\nContent-Length: 1\r\n\r\nz")
	direct := hostOf("GET /x HTTP/1.0\r\n\r\n")
	t.Logf("ReverseProxy: %q, direct: %q", viaProxy, direct)
	if len(direct) != 1 || direct[0] != up.addr() {
		t.Errorf("direct path sent Host %q, ReverseProxy sends %q", direct, viaProxy)
	}
}

// An idle upstream connection that received bytes, or was closed, is not
// taken again.
func TestH1ConnUnsolicited(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	tr := newTestH1(nil, nil)
	c, err := tr.dial(context.Background(), "http://"+ln.Addr().String(), "http", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.conn.Close()
	up := <-accepted
	defer up.Close()
	if c.unsolicited() {
		t.Fatal("a quiet connection counts as unsolicited")
	}
	io.WriteString(up, "HTTP/1.1 408 Request Timeout\r\n\r\n")
	deadline := time.Now().Add(5 * time.Second)
	for !c.unsolicited() {
		if time.Now().After(deadline) {
			t.Fatal("bytes sent on an idle connection not seen")
		}
	}
}
