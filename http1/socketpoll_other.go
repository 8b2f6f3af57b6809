//go:build !unix

package http1

import "net"

// socketPoll is not available here: idle connections are taken again
// without a look at their socket, and a stray answer is caught only when
// it is already in the connection's buffer.
type socketPoll struct{}

func newSocketPoll(net.Conn) *socketPoll { return nil }

func (*socketPoll) quiet() bool { return true }
