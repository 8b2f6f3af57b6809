// Package rawupstream is a test upstream that speaks raw bytes: every
// connection is handed to a script that reads request heads and writes
// exactly what the test wants, well-formed or not, early, late or never.
// Tests of the HTTP/1 codec, the pools and the daemon share it. It knows
// nothing of sekisho.
package rawupstream

import (
	"bufio"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// Server is an upstream on 127.0.0.1 whose every connection is handled by
// a script. Its listener and connections are closed, and its goroutines
// waited for, when the test ends.
type Server struct {
	ln    net.Listener
	conns atomic.Int64
}

// New starts a Server whose connections are each handled by handle, with a
// buffered reader over the connection.
func New(tb testing.TB, handle func(c net.Conn, br *bufio.Reader)) *Server {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("rawupstream: %v", err)
	}
	s := &Server{ln: ln}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var open []net.Conn
	tb.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range open {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.conns.Add(1)
			mu.Lock()
			open = append(open, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				handle(c, bufio.NewReader(c))
			}()
		}
	}()
	return s
}

// Addr returns the Server's host:port.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Conns returns how many connections the Server has accepted.
func (s *Server) Conns() int64 { return s.conns.Load() }

// Scripted is a Server that answers each request on a connection with
// answers(head): raw bytes sent as they are; "" closes the connection, and
// an answer that ends in "\x00close" is sent and then the connection
// closed. It keeps the request heads it saw.
type Scripted struct {
	*Server
	mu    sync.Mutex
	heads []string
}

// NewScripted starts a Scripted upstream.
func NewScripted(tb testing.TB, answers func(head string) string) *Scripted {
	tb.Helper()
	u := &Scripted{}
	u.Server = New(tb, func(c net.Conn, br *bufio.Reader) {
		for {
			var head strings.Builder
			for {
				line, err := br.ReadString('\n')
				if err != nil {
					return
				}
				head.WriteString(line)
				if line == "\r\n" {
					break
				}
			}
			u.mu.Lock()
			u.heads = append(u.heads, head.String())
			u.mu.Unlock()
			a := answers(head.String())
			if a == "" {
				return
			}
			if _, err := io.WriteString(c, a); err != nil {
				return
			}
			if strings.HasSuffix(a, "\x00close") {
				return
			}
		}
	})
	return u
}

// LastHead returns the last request head received.
func (u *Scripted) LastHead() string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.heads[len(u.heads)-1]
}

// HeaderLines returns the header lines of a raw head, by lower-case name.
func HeaderLines(head string) map[string][]string {
	out := map[string][]string{}
	lines := strings.Split(strings.TrimSuffix(head, "\r\n\r\n"), "\r\n")
	for _, l := range lines[1:] {
		k, v, _ := strings.Cut(l, ":")
		out[strings.ToLower(k)] = append(out[strings.ToLower(k)], strings.TrimSpace(v))
	}
	return out
}
