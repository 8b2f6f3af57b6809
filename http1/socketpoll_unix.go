//go:build unix

package http1

import (
	"crypto/tls"
	"net"
	"syscall"
)

// socketPoll looks at a TCP socket without blocking and without consuming
// anything: a recv with MSG_PEEK|MSG_DONTWAIT on its descriptor. A read
// deadline in the past cannot do that: Go's poller then fails the read
// before it looks at the socket. A socketPoll serves one connection at a
// time, as the idle pool hands it out.
type socketPoll struct {
	raw   syscall.RawConn
	fn    func(fd uintptr) bool // peek, bound once: no closure per poll
	buf   [1]byte
	ready bool // a byte, an EOF or an error is waiting
}

// newSocketPoll returns a poll of conn's TCP socket (under TLS, of the
// socket beneath), or nil when there is none to poll.
func newSocketPoll(conn net.Conn) *socketPoll {
	if tc, ok := conn.(*tls.Conn); ok {
		conn = tc.NetConn()
	}
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return nil
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	p := &socketPoll{raw: raw}
	p.fn = p.peek
	return p
}

// quiet reports whether nothing (no byte, no EOF, no error) waits on the
// socket.
func (p *socketPoll) quiet() bool {
	p.ready = true
	if err := p.raw.Read(p.fn); err != nil {
		return false // closed
	}
	return !p.ready
}

func (p *socketPoll) peek(fd uintptr) bool {
	for {
		_, _, err := syscall.Recvfrom(int(fd), p.buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN || err == syscall.EWOULDBLOCK:
			p.ready = false
		default:
			p.ready = true // a byte, an EOF (0 bytes) or an error
		}
		return true // done: never wait for the descriptor to be readable
	}
}
