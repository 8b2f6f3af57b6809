package proxy

import (
	"bufio"
	"io"
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

// scriptedUpstream answers each request on a connection with the next of
// answers (raw bytes, sent as they are; "" closes the connection) and keeps
// the request heads it saw.
type scriptedUpstream struct {
	ln      net.Listener
	answers func(head string) string
	mu      sync.Mutex
	heads   []string
	conns   int
}

func newScriptedUpstream(t *testing.T, answers func(head string) string) *scriptedUpstream {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	u := &scriptedUpstream{ln: ln, answers: answers}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
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
			u.mu.Lock()
			u.conns++
			u.mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				br := bufio.NewReader(c)
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
					a := u.answers(head.String())
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
			}()
		}
	}()
	return u
}

func (u *scriptedUpstream) addr() string { return u.ln.Addr().String() }

func (u *scriptedUpstream) lastHead() string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.heads[len(u.heads)-1]
}

func (u *scriptedUpstream) connCount() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.conns
}

// headerLines returns the header lines of a raw head, by lower-case name.
func headerLines(head string) map[string][]string {
	out := map[string][]string{}
	lines := strings.Split(strings.TrimSuffix(head, "\r\n\r\n"), "\r\n")
	for _, l := range lines[1:] {
		k, v, _ := strings.Cut(l, ":")
		out[strings.ToLower(k)] = append(out[strings.ToLower(k)], strings.TrimSpace(v))
	}
	return out
}
