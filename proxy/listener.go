package proxy

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"sekisho/proxy/config"
	"sekisho/proxy/metrics"
)

// socket is one listening address. It outlives the http.Servers that serve
// it: a single accept loop hands connections to whichever server is attached,
// so a reload can replace a listener's server (new timeouts, TLS or PROXY
// protocol settings) while the socket and the connections already open stay
// where they are.
//
// The socket counts its open connections, whichever server serves them
// (the loop, the HTTP/2 server they were handed to, an upgrade tunnel, a
// server a reload retired), until they close. With max_connections open it
// stops accepting, as HAProxy's maxconn does: new connections wait in the
// kernel's backlog rather than being refused.
type socket struct {
	ln    net.Listener
	conns chan net.Conn
	quit  chan struct{} // closed by close, so that a backoff wait ends at once
	once  sync.Once
	done  chan struct{} // closed when the accept loop has ended

	limit atomic.Pointer[connLimit]
	open  atomic.Int64
	room  chan struct{} // a connection closed or the limit changed; capacity 1
}

// connLimit is a listener's max_connections with the metric children of
// its name.
type connLimit struct {
	max     int64 // 0: no limit
	open    prometheus.Gauge
	limited prometheus.Counter
}

func newConnLimit(lc *config.Listener, m *metrics.Metrics) *connLimit {
	return &connLimit{max: int64(lc.MaxConnections), open: m.Connections.WithLabelValues(lc.Name),
		limited: m.ConnsLimited.WithLabelValues(lc.Name)}
}

func listenSocket(addr string, lim *connLimit) (*socket, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	s := &socket{ln: ln, conns: make(chan net.Conn), quit: make(chan struct{}), done: make(chan struct{}),
		room: make(chan struct{}, 1)}
	s.limit.Store(lim)
	go s.acceptLoop()
	return s, nil
}

// setLimit puts a reloaded listener's limit in force; a connection already
// open keeps counting under the name it was accepted with.
func (s *socket) setLimit(lim *connLimit) {
	s.limit.Store(lim)
	s.signalRoom()
}

func (s *socket) signalRoom() {
	select {
	case s.room <- struct{}{}:
	default:
	}
}

// waitRoom returns once a connection may be accepted, or false when the
// socket closes first.
func (s *socket) waitRoom() bool {
	counted := false
	for {
		lim := s.limit.Load()
		if lim == nil || lim.max <= 0 || s.open.Load() < lim.max {
			return true
		}
		if !counted {
			counted = true
			lim.limited.Inc()
		}
		select {
		case <-s.room:
		case <-s.quit:
			return false
		}
	}
}

// counted wraps a new connection so that its Close gives its place back.
func (s *socket) counted(c net.Conn) net.Conn {
	s.open.Add(1)
	cc := &countedConn{Conn: c, s: s}
	if lim := s.limit.Load(); lim != nil {
		cc.gauge = lim.open
		cc.gauge.Inc()
	}
	return cc
}

// countedConn is a client connection the socket counts until it closes.
type countedConn struct {
	net.Conn
	s      *socket
	gauge  prometheus.Gauge // nil when counted before any limit was set
	closed atomic.Bool
}

func (c *countedConn) Close() error {
	err := c.Conn.Close()
	if c.closed.CompareAndSwap(false, true) {
		c.s.open.Add(-1)
		if c.gauge != nil {
			c.gauge.Dec()
		}
		c.s.signalRoom()
	}
	return err
}

// CloseWrite and ReadFrom keep what the TCP connection offers: the loop's
// lingering close and sendfile.
func (c *countedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

func (c *countedConn) ReadFrom(r io.Reader) (int64, error) {
	if rf, ok := c.Conn.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(struct{ io.Writer }{c.Conn}, r)
}

func (s *socket) acceptLoop() {
	defer close(s.done)
	var backoff time.Duration
	for {
		if !s.waitRoom() {
			return
		}
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
		s.conns <- s.counted(c) // close() drains this if no server takes it
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
