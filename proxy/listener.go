package proxy

import (
	"errors"
	"net"
	"sync"
	"time"
)

// socket is one listening address. It outlives the http.Servers that serve
// it: a single accept loop hands connections to whichever server is attached,
// so a reload can replace a listener's server (new timeouts, TLS or PROXY
// protocol settings) while the socket and the connections already open stay
// where they are.
type socket struct {
	ln    net.Listener
	conns chan net.Conn
	quit  chan struct{} // closed by close, so that a backoff wait ends at once
	once  sync.Once
	done  chan struct{} // closed when the accept loop has ended
}

func listenSocket(addr string) (*socket, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	s := &socket{ln: ln, conns: make(chan net.Conn), quit: make(chan struct{}), done: make(chan struct{})}
	go s.acceptLoop()
	return s, nil
}

func (s *socket) acceptLoop() {
	defer close(s.done)
	var backoff time.Duration
	for {
		c, err := s.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// EMFILE and friends: wait a little rather than spin, as net/http does.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
			case <-s.quit:
				t.Stop()
				return
			}
			continue
		}
		backoff = 0
		s.conns <- c // close() drains this if no server takes it
	}
}

// close stops accepting and waits for the accept loop.
func (s *socket) close() {
	s.ln.Close()
	s.once.Do(func() { close(s.quit) })
	// Free the loop if it is blocked handing over a connection nobody takes.
	for {
		select {
		case c := <-s.conns:
			c.Close()
		case <-s.done:
			return
		}
	}
}

// view is one http.Server's net.Listener over a socket. Closing a view
// detaches that server only; the socket keeps accepting for the next.
type view struct {
	s      *socket
	closed chan struct{}
	once   sync.Once
}

func newView(s *socket) *view { return &view{s: s, closed: make(chan struct{})} }

func (v *view) Accept() (net.Conn, error) {
	select {
	case <-v.closed:
		return nil, net.ErrClosed
	default:
	}
	select {
	case c := <-v.s.conns:
		return c, nil
	case <-v.closed:
		return nil, net.ErrClosed
	case <-v.s.done:
		return nil, net.ErrClosed
	}
}

func (v *view) Close() error {
	v.once.Do(func() { close(v.closed) })
	return nil
}

func (v *view) Addr() net.Addr { return v.s.ln.Addr() }
