package proxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Many clients with their own markers share a small upstream pool whose
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
	var lean atomic.Pointer[h1Transport] // the pool's, once the daemon runs
	var up *rawBackend
	var seed atomic.Uint64
	up = newRawBackend(t, func(c net.Conn, br *bufio.Reader) {
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
			tr := lean.Load()
			tr.mu.Lock()
			defer tr.mu.Unlock()
			for _, ic := range tr.idle["http://"+up.addr()] {
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
	td := startDaemon(t, fmt.Sprintf(edgePreamble+`    routes: [{name: all, pipeline: [{proxy: up}]}]
pools:
  up: {endpoints: [%s], retries: 0, max_idle_per_endpoint: 2, timeouts: {response_header: 2s, body_idle: 2s}}
`, up.addr()))
	lean.Store(td.d.Env().transports.entries["up"].t.(*h1Transport))
	base := td.url("edge")
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
		answered.Load(), failed.Load(), misbehaved.Load(), lateSent.Load(), up.conns.Load())
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
