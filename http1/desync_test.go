package http1

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"sekisho/internal/rawupstream"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Many clients with their own markers share a small idle pool of a
// Transport, on its direct path (forwarder), whose
// backend misbehaves at random: late extra answers, bytes past a body, cut
// bodies, HEAD, 204 and 304 answers followed by a body. Every answer a
// client gets carries its own request's marker, or is an error, or the
// connection is cut: never another client's answer.
//
// The backend sends its late bytes only while the proxy holds the
// connection idle (see late), and its late extra answers are 502s, so that
// a client can get another client's marker only through a connection kept
// after it went wrong.
func TestResponseDesyncStress(t *testing.T) {
	const clients, requests = 32, 30
	const unsolicited = "HTTP/1.1 502 Bad Gateway\r\nX-Marker: unsolicited\r\nContent-Length: 11\r\n\r\nunsolicited"
	var misbehaved, lateSent atomic.Int64
	tr := &Transport{MaxIdleConnsPerHost: 2, ResponseHeaderTimeout: 2 * time.Second, BodyIdleTimeout: 2 * time.Second}
	t.Cleanup(tr.CloseIdleConnections)
	var up *rawupstream.Server
	var seed atomic.Uint64
	up = rawupstream.New(t, func(c net.Conn, br *bufio.Reader) {
		rng := rand.New(rand.NewPCG(seed.Add(1), 13))
		write := func(s string) error {
			_, err := io.WriteString(c, s)
			return err
		}
		// late writes s after a pause while the proxy holds the
		// connection idle: under the idle pool's lock, so that the bytes
		// are on the proxy's socket before anyone can take it again. Bytes
		// that arrive after the next request was written are that
		// request's answer for any proxy (Go's Transport too); those are
		// not what this test is about, so none are sent while the
		// connection is in use.
		late := func(s string) {
			c.SetReadDeadline(time.Now().Add(time.Duration(rng.IntN(20)) * time.Millisecond))
			_, err := br.Peek(1)
			c.SetReadDeadline(time.Time{})
			if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
				return // the next request came first
			}
			tr.mu.Lock()
			defer tr.mu.Unlock()
			for _, ic := range tr.idle[connKey{"http", up.Addr()}] {
				if ic.conn.LocalAddr().String() == c.RemoteAddr().String() {
					write(s) // the misbehaviour under test: bytes after the answer
					lateSent.Add(1)
					return
				}
			}
		}
		for {
			method, marker, want, err := readMarked(br)
			if err != nil {
				return
			}

			head := fmt.Sprintf("X-Marker: %s\r\nSet-Cookie: who=%s\r\n", marker, marker)
			roll := rng.IntN(8)
			if roll < 5 {
				misbehaved.Add(1)
			}
			switch {
			case want == "204":
				write("HTTP/1.1 204 No Content\r\n" + head + "\r\n")
				if roll < 5 {
					late(marker)
				}
			case want == "304":
				write("HTTP/1.1 304 Not Modified\r\n" + head + "Content-Length: 6\r\n\r\n")
				if roll < 5 {
					late(unsolicited)
				}
			case method == http.MethodHead:
				write(fmt.Sprintf("HTTP/1.1 200 OK\r\n%sContent-Length: %d\r\n\r\n", head, len(marker)))
				if roll < 5 {
					late(unsolicited)
				}
			case roll == 0: // a late extra answer
				write(fmt.Sprintf("HTTP/1.1 200 OK\r\n%sContent-Length: %d\r\n\r\n%s", head, len(marker), marker))
				late(unsolicited)
			case roll == 1: // bytes past the body, at once
				write(fmt.Sprintf("HTTP/1.1 200 OK\r\n%sContent-Length: %d\r\n\r\n%sjunk", head, len(marker), marker))
			case roll == 2: // bytes past the body, late
				write(fmt.Sprintf("HTTP/1.1 200 OK\r\n%sContent-Length: %d\r\n\r\n%s", head, len(marker), marker))
				late("junk" + marker)
			case roll == 3: // a cut body
				write(fmt.Sprintf("HTTP/1.1 200 OK\r\n%sContent-Length: %d\r\n\r\n%s", head, len(marker)+10, marker))
				return
			case roll == 4: // a cut chunked body
				write(fmt.Sprintf("HTTP/1.1 200 OK\r\n%sTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n", head, len(marker), marker))
				return
			default:
				write(fmt.Sprintf("HTTP/1.1 200 OK\r\n%sContent-Length: %d\r\n\r\n%s", head, len(marker), marker))
			}
		}
	})
	base := "http://" + serve(t, &Server{Handler: forwarder(tr, up.Addr())})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var answered, failed, wrong atomic.Int64
	var wrongMu sync.Mutex
	var wrongs []string
	var wg sync.WaitGroup
	for cl := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tr := &http.Transport{MaxIdleConnsPerHost: 1}
			defer tr.CloseIdleConnections()
			client := &http.Client{Transport: tr, Timeout: 5 * time.Second}
			rng := rand.New(rand.NewPCG(uint64(cl), 7))
			for i := range requests {
				marker := fmt.Sprintf("m%02d-%02d", cl, i)
				method, want := http.MethodGet, ""
				switch rng.IntN(10) {
				case 0:
					method = http.MethodHead
				case 1:
					want = "204"
				case 2:
					want = "304"
				}
				req, _ := http.NewRequestWithContext(ctx, method, base+"/m/"+marker, nil)
				req.Header.Set("Cookie", "who="+marker)
				if want != "" {
					req.Header.Set("X-Want", want)
				}
				resp, err := client.Do(req)
				if err != nil {
					failed.Add(1)
					continue
				}
				body, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil || resp.StatusCode >= 500 {
					failed.Add(1)
					continue
				}
				answered.Add(1)
				ok := resp.Header.Get("X-Marker") == marker && resp.Header.Get("Set-Cookie") == "who="+marker
				if method == http.MethodGet && want == "" {
					ok = ok && string(body) == marker
				}
				if !ok {
					wrong.Add(1)
					wrongMu.Lock()
					wrongs = append(wrongs, fmt.Sprintf("%s %s got %d marker %q cookie %q body %q", method, marker,
						resp.StatusCode, resp.Header.Get("X-Marker"), resp.Header.Get("Set-Cookie"), body))
					wrongMu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	require.NoError(t, ctx.Err(), "the clients finished in time")
	t.Logf("%d answers with their own marker, %d errors or cut answers, %d misbehaving upstream answers (%d late writes on idle connections), %d upstream connections",
		answered.Load(), failed.Load(), misbehaved.Load(), lateSent.Load(), up.Conns())
	assert.Zero(t, wrong.Load(), "answers that were another request's: %v", wrongs)
	assert.Greater(t, answered.Load(), int64(clients*requests/4), "most requests got their answer")
}

// readMarked reads a request head and returns its method, the marker of
// its path (/m/MARKER) and its X-Want header.
func readMarked(br *bufio.Reader) (method, marker, want string, err error) {
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return "", "", "", err
		}
		if line == "\r\n" {
			return method, marker, want, nil
		}
		if method == "" {
			f := strings.Fields(line)
			if len(f) >= 2 {
				method, marker = f[0], strings.TrimPrefix(f[1], "/m/")
			}
			continue
		}
		if k, v, ok := strings.Cut(line, ":"); ok && strings.EqualFold(k, "X-Want") {
			want = strings.TrimSpace(v)
		}
	}
}

// forwarder is a proxy's direct path in miniature: Forward, then Relay for
// a plain answer and a plain copy of any other.
func forwarder(tr *Transport, addr string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a, err := tr.Forward(r.Context(), r, "http", addr, &Forwarded{For: "127.0.0.1", Host: r.Host, Proto: "http"})
		if err != nil {
			w.WriteHeader(http.StatusBadGateway)
			return
		}
		if a.Response == nil {
			if err := a.Relay(r.Context(), w); err != nil {
				panic(http.ErrAbortHandler)
			}
			return
		}
		resp := a.Response
		defer resp.Body.Close()
		for k, vs := range resp.Header {
			w.Header()[k] = vs
		}
		w.WriteHeader(resp.StatusCode)
		if _, err := io.Copy(w, resp.Body); err != nil {
			panic(http.ErrAbortHandler)
		}
	})
}
