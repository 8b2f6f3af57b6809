package proxy

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestHTTP2ProvokedResetIsClosed: a client that does not reset its streams
// itself but makes the server reset each one (CVE-2025-8671, "MadeYouReset":
// a WINDOW_UPDATE of 0, or a DATA frame, on a stream it has just opened) is
// a rapid reset all the same: each stream starts a request that is
// cancelled at once. It gets the same GOAWAY as a client that resets in
// bulk, and costs the upstream as few connections.
func TestHTTP2ProvokedResetIsClosed(t *testing.T) {
	up := newCountingUpstream(t)
	td := startDaemon(t, fmt.Sprintf(`
version: 1
admin: {listen: "127.0.0.1:0"}
log: {access: off}
listeners:
  - name: plain
    listen: 127.0.0.1:0
    routes: [{name: all, pipeline: [{proxy: up}]}]
pools:
  up:
    endpoints: [%s]
`, up.addr()))

	cases := []struct {
		name    string
		provoke func(stream uint32) []byte
	}{
		{name: "WINDOW_UPDATE of 0", provoke: func(stream uint32) []byte {
			return h2Frame(0x8, 0, stream, []byte{0, 0, 0, 0})
		}},
		{name: "DATA on a half-closed stream", provoke: func(stream uint32) []byte {
			return h2Frame(h2FrameData, 0, stream, []byte("x"))
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			conns := up.opened.Load()
			c := h2RawConn(t, tlsAddr(td, "plain"), nil)
			h2ResetFlood(t, c, "http", tc.provoke)
			t.Logf("%d upstream connections opened", up.opened.Load()-conns)
			assert.LessOrEqual(t, up.opened.Load()-conns, int64(2*h2ResetBurst), "upstream connections opened")
		})
	}
}

// When the guard ends a connection while the server is in the middle of a
// frame, and the server's next write does not reach that frame's end, the
// GOAWAY waits for the write that does: written inside the frame it would
// corrupt the stream, and the client would never read it.
func TestH2GuardGoAwayNeverInsideAFrame(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	defer client.Close()
	server, err := ln.Accept()
	require.NoError(t, err)
	defer server.Close()
	g := newH2Guard(server, time.Second, nil)

	data := h2Frame(h2FrameData, h2FlagEndStream, 1, []byte(strings.Repeat("d", 300)))
	next := h2Frame(h2FrameData, 0, 3, []byte("next"))
	_, err = g.Write(data[:100]) // the server is mid-frame...
	require.NoError(t, err)
	g.abort(h2CloseRapidReset) // ...when the guard ends the connection
	g.Write(data[100:200])     // a write that does not reach the frame's end
	g.Write(append(data[200:len(data):len(data)], next...))

	client.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, _ := io.ReadAll(client)
	require.GreaterOrEqual(t, len(got), len(data), "the frame under way went out")
	assert.Equal(t, data, got[:len(data)], "the frame under way went out whole, nothing inside it")
	rest := got[len(data):]
	require.Len(t, rest, h2FrameHeaderLen+8, "then the GOAWAY, and nothing else")
	assert.Equal(t, byte(h2FrameGoAway), rest[3])
	assert.Equal(t, uint32(h2ErrEnhanceYourCalm), binary.BigEndian.Uint32(rest[13:]))
}
