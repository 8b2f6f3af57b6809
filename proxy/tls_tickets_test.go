package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"sekisho/proxy/certs"
	"sekisho/proxy/certs/certstest"
)

// ticketServer serves TLS with a listener's TLS state as the daemon builds
// it (the state's Config handed out by dynamicTLS's GetConfigForClient):
// each connection gets one empty answer. It returns the address and the
// state's ticket keys.
func ticketServer(t *testing.T, ca *certstest.CA) (string, *ticketKeys) {
	t.Helper()
	store, err := certs.NewStore([]certs.Pair{ca.Issue(t, t.TempDir(), "tickets.test")})
	require.NoError(t, err)
	conf := certs.ServerConfig(store, 0, nil, nil)
	conf.CipherSuites = certs.DefaultCipherSuites(0)
	st := &tlsState{conf: conf, tickets: newTicketKeys(conf)}
	d := &dynamicTLS{}
	d.cur.Store(st)
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ln := tls.NewListener(raw, d.config())
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
					return
				}
				_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	return ln.Addr().String(), st.tickets
}

// TestSessionTicketKeyRotation shows what a rotation does to a ticket: it
// still resumes after one rotation (its key is kept to decrypt) and no
// longer after the next (its key is dropped), on TLS 1.2 and 1.3.
func TestSessionTicketKeyRotation(t *testing.T) {
	noLeaks(t)
	ca := certstest.NewCA(t)
	for _, v := range []struct {
		name string
		max  uint16
	}{{"TLS 1.2", tls.VersionTLS12}, {"TLS 1.3", tls.VersionTLS13}} {
		t.Run(v.name, func(t *testing.T) {
			addr, keys := ticketServer(t, ca)
			// The client keeps offering its first ticket: a resumed
			// handshake brings a fresh one, under the newest key.
			client := &tls.Config{ServerName: "tickets.test", RootCAs: ca.Pool(), MaxVersion: v.max, ClientSessionCache: &firstTicket{}}
			steps := []struct {
				rotations int
				resumed   bool
				why       string
			}{
				{0, false, "the first handshake gets a ticket"},
				{0, true, "the ticket resumes under the key that made it"},
				{1, true, "after one rotation the ticket's key still decrypts"},
				{1, false, "after two rotations the ticket's key is dropped"},
			}
			for _, s := range steps {
				for range s.rotations {
					keys.rotate()
				}
				st, err := handshake(addr, client)
				require.NoError(t, err, s.why)
				assert.Equal(t, s.resumed, st.DidResume, s.why)
			}
		})
	}
}

// TestTicketKeysRotateOnSchedule runs the rotation with a short period: the
// key changes, no more than ticketKeysKept keys are ever kept, and the
// goroutine ends with its context.
func TestTicketKeysRotateOnSchedule(t *testing.T) {
	noLeaks(t)
	conf := &tls.Config{}
	k := newTicketKeys(conf)
	snapshot := func() [][32]byte {
		k.mu.Lock()
		defer k.mu.Unlock()
		return append([][32]byte(nil), k.keys...)
	}
	first := snapshot()
	require.Len(t, first, 1)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { k.run(ctx, 5*time.Millisecond) })
	seen := map[[32]byte]bool{first[0]: true}
	require.Eventually(t, func() bool {
		keys := snapshot()
		assert.LessOrEqual(t, len(keys), ticketKeysKept)
		seen[keys[0]] = true
		return len(seen) > ticketKeysKept+1 && !slices.Contains(keys, first[0])
	}, 5*time.Second, time.Millisecond, "new random keys replace the first, which is dropped")
	cancel()
	wg.Wait()
}

// TestSessionTicketsPerListener shows that session ticket keys belong to
// one listener's TLS state: a ticket one listener issued does not resume on
// another listener serving the same certificate and name, nor on the same
// listener once its tls section has changed; it does resume where it was
// issued while nothing changed.
func TestSessionTicketsPerListener(t *testing.T) {
	noLeaks(t)
	dir := t.TempDir()
	ca := certstest.NewCA(t)
	p := ca.Issue(t, dir, "shared.test")
	other := ca.Issue(t, dir, "other.test")
	a, b := freeAddr(t), freeAddr(t)
	// more is a certificate listed after the first: a change of the tls
	// section that does not change what the client sees.
	conf := func(more string) string {
		return fmt.Sprintf(`
version: 1
admin: {listen: "127.0.0.1:0"}
log: {access: off}
listeners:
  - name: a
    listen: %[1]s
    tls:
      certificates: [{cert_file: %[3]q, key_file: %[4]q}%[5]s]
    routes: [{name: all, pipeline: [{respond: {status: 200, body: ok}}]}]
  - name: b
    listen: %[2]s
    tls:
      certificates: [{cert_file: %[3]q, key_file: %[4]q}]
    routes: [{name: all, pipeline: [{respond: {status: 200, body: ok}}]}]
`, a, b, p.CertFile, p.KeyFile, more)
	}
	td := startDaemon(t, conf(""))

	for _, v := range []struct {
		name string
		max  uint16
	}{{"TLS 1.2", tls.VersionTLS12}, {"TLS 1.3", tls.VersionTLS13}} {
		t.Run(v.name, func(t *testing.T) {
			client := &tls.Config{ServerName: "shared.test", RootCAs: ca.Pool(), MaxVersion: v.max, ClientSessionCache: &firstTicket{}}
			st, err := handshake(a, client)
			require.NoError(t, err)
			require.False(t, st.DidResume)

			st, err = handshake(b, client)
			require.NoError(t, err)
			assert.False(t, st.DidResume, "listener b does not take listener a's ticket")

			st, err = handshake(a, client)
			require.NoError(t, err)
			assert.True(t, st.DidResume, "listener a takes its own ticket")
		})
	}

	t.Run("a changed tls section starts new keys", func(t *testing.T) {
		client := &tls.Config{ServerName: "shared.test", RootCAs: ca.Pool(), ClientSessionCache: &firstTicket{}}
		_, err := handshake(a, client)
		require.NoError(t, err)
		st, err := handshake(a, client)
		require.NoError(t, err)
		require.True(t, st.DidResume)

		td.rewrite(conf(fmt.Sprintf(", {cert_file: %q, key_file: %q}", other.CertFile, other.KeyFile)))
		st, err = handshake(a, client)
		require.NoError(t, err)
		assert.False(t, st.DidResume, "a ticket from the replaced TLS state is not taken")
	})
}
