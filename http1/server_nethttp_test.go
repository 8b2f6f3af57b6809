package http1

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// serveHandler serves h on a Server over a real 127.0.0.1 listener.
func serveHandler(t *testing.T, h http.Handler) (*Server, string) {
	t.Helper()
	srv := &Server{Handler: h, MaxHeaderBytes: 64 << 10, IdleTimeout: 120 * time.Second}
	return srv, serve(t, srv)
}

// rawConn dials addr with a five-second deadline.
func rawConn(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(5 * time.Second))
	return c, bufio.NewReader(c)
}

// A short Write held back in pending goes out first when a later Write
// pushes the answer past pendingMax.
func TestServerHeldBackBytesGoFirst(t *testing.T) {
	big := strings.Repeat("B", pendingMax+10)
	_, addr := serveHandler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
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

// A handler that answers an Expect: 100-continue request without reading
// its body (with a Content-Length, so the head goes at once) gets its
// answer to the client, which sends no body before a 100 Continue.
func TestServerAnswersAnUnreadExpectContinue(t *testing.T) {
	_, addr := serveHandler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
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

// A chunk-size line ending in a bare LF is refused, as net/http refuses it
// since the request-smuggling fix for CVE-2025-22871.
func TestServerRefusesBareLFChunkSize(t *testing.T) {
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
			_, addr = serveHandler(t, h)
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

// What the handler wrote before Hijack (a WriteHeader(101), or a short
// body held back in pending) is flushed first, as net/http does.
func TestServerHijackSendsTheWrittenHead(t *testing.T) {
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
	_, loop := serveHandler(t, h)
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

// An Expect other than 100-continue, even on a bodyless request, is
// answered 417, as by net/http.
func TestServerUnknownExpectIs417(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "served") })
	ref := netHTTPServer(t, h)
	_, loop := serveHandler(t, h)
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

// A body written without a Content-Type gets a sniffed one, as from
// net/http.
func TestServerSniffsContentType(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "<html><body>hi</body></html>") })
	ref := netHTTPServer(t, h)
	_, loop := serveHandler(t, h)
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

// An idle upstream connection that received bytes, or was closed, is not
// taken again.
func TestConnUnsolicited(t *testing.T) {
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
	tr := newTestTransport(nil)
	c, err := tr.dial(context.Background(), connKey{"http", ln.Addr().String()})
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
