package proxyproto

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultHeaderTimeout is the time a peer has to deliver its header when
// Listener.HeaderTimeout is zero.
const DefaultHeaderTimeout = 5 * time.Second

// Listener wraps a net.Listener that L4 load balancers connect to and makes
// the connections it accepts report the client address that a PROXY header
// (version 1 or 2) carries.
//
// The rule for each connection, by its peer (the balancer's) address:
//
//   - A trusted peer may send a header. If it does, RemoteAddr and LocalAddr
//     report the addresses in it (the peer's own ones for LOCAL, UNKNOWN and
//     UNSPEC headers). If its first bytes are not a header the connection is
//     served as is, unless Required is set, in which case it is closed, as
//     it is when it sends nothing at all within HeaderTimeout.
//   - An untrusted peer is served as is if it sends no header. If it sends
//     one, the connection is closed: only a balancer may claim to speak for
//     someone else, so a header from anyone else is a spoofing attempt.
//   - Any peer whose header starts but is malformed, truncated or not
//     complete within HeaderTimeout is closed.
//
// A closed connection's Read returns an error wrapping ErrInvalidHeader,
// ErrUntrustedHeader or ErrHeaderRequired, and OnError is called once. A peer
// that sends nothing at all before closing, or before HeaderTimeout (when the
// header is optional), is not an error: its connection goes on, and its next
// Read sees the end of stream or waits under the caller's own deadline.
//
// Accept never reads: the header is parsed on the connection's own goroutine
// at its first Read, RemoteAddr or LocalAddr (net/http's per-connection
// goroutine calls RemoteAddr first), so a slow or silent peer cannot stall the
// connections accepted after it. An untrusted peer's RemoteAddr and LocalAddr
// never wait: there is nothing to learn from it, and its first Read makes the
// check.
//
// The fields must not change once Accept has been called. Accept is safe for
// concurrent use, as is each connection it returns (see Conn).
type Listener struct {
	net.Listener

	// Trusted are the networks of the peers allowed to send a PROXY header.
	// Empty means every peer is trusted: suitable only when the port is
	// reachable by the balancers alone. An IPv4-mapped IPv6 peer is matched
	// as IPv4; a peer whose address is not IP (a Unix socket) is trusted only
	// when Trusted is empty.
	Trusted []netip.Prefix

	// Required closes a trusted peer's connection that does not start with
	// a header. False (the default) serves it as is, which lets balancers
	// and direct clients share a port while a rollout is in progress.
	Required bool

	// HeaderTimeout bounds the time from the first Read, RemoteAddr or
	// LocalAddr to the end of the header, as a read deadline on the socket.
	// Zero or negative means DefaultHeaderTimeout. A caller's own earlier
	// read deadline still applies, and it is restored once the header is in.
	HeaderTimeout time.Duration

	// OnError is called once, with the peer's address, for each connection
	// closed for its header: to write a log line or count it. It runs on the
	// connection's goroutine and must not block. Nil means nothing is called.
	OnError func(remote net.Addr, err error)
}

// Accept waits for the next connection and returns it wrapped as a *Conn,
// without reading from it.
func (l *Listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &Conn{nc: c, l: l, trusted: l.trusts(c.RemoteAddr())}, nil
}

func (l *Listener) trusts(peer net.Addr) bool {
	if len(l.Trusted) == 0 {
		return true
	}
	var addr netip.Addr
	switch a := peer.(type) {
	case *net.TCPAddr:
		addr = a.AddrPort().Addr()
	default:
		ap, err := netip.ParseAddrPort(peer.String())
		if err != nil {
			return false
		}
		addr = ap.Addr()
	}
	addr = addr.Unmap()
	for _, p := range l.Trusted {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

func (l *Listener) headerTimeout() time.Duration {
	if l.HeaderTimeout <= 0 {
		return DefaultHeaderTimeout
	}
	return l.HeaderTimeout
}

// Conn is a connection accepted by a Listener. Its header is parsed once, on
// the first Read, RemoteAddr or LocalAddr of a trusted peer's connection (the
// first Read of an untrusted one); concurrent callers wait for that parse.
// Bytes that arrived with the header are returned by Read before anything
// else. Like any net.Conn it is safe for concurrent use; it must not be
// copied.
type Conn struct {
	nc      net.Conn
	l       *Listener
	trusted bool

	once     sync.Once
	src, dst net.Addr
	err      error

	// r holds the bytes read past the header until Read drains them;
	// buffered spares Read the lock once they are gone.
	rmu      sync.Mutex
	r        *bufio.Reader
	buffered atomic.Bool

	// The caller's read deadline is kept aside while the header deadline is
	// on the socket.
	dmu            sync.Mutex
	parsed         atomic.Bool
	readDeadline   time.Time
	headerDeadline time.Time

	closeOnce sync.Once
	closeErr  error
}

var _ net.Conn = (*Conn)(nil)

// Read reads data that follows the header. It returns the header's error if
// the connection was closed for its header.
func (c *Conn) Read(p []byte) (int, error) {
	c.once.Do(c.parse)
	if c.err != nil {
		return 0, c.err
	}
	if c.buffered.Load() {
		if n, ok := c.readBuffered(p); ok {
			return n, nil
		}
	}
	return c.nc.Read(p)
}

// readBuffered returns bytes left over from the header read. It never
// touches the socket, so holding rmu cannot block another reader for long.
func (c *Conn) readBuffered(p []byte) (int, bool) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if c.r == nil {
		return 0, false
	}
	n, _ := c.r.Read(p)
	if c.r.Buffered() == 0 {
		release(c.r)
		c.r = nil
		c.buffered.Store(false)
	}
	return n, true
}

// RemoteAddr returns the client address from the header when a trusted peer
// sent one, the peer's address otherwise. For a trusted peer's connection it
// waits for the header.
func (c *Conn) RemoteAddr() net.Addr {
	if c.trusted {
		c.once.Do(c.parse)
		if c.src != nil {
			return c.src
		}
	}
	return c.nc.RemoteAddr()
}

// LocalAddr returns the destination address from the header when a trusted
// peer sent one (the address the client dialled on the balancer), the
// socket's own address otherwise. For a trusted peer's connection it waits
// for the header.
func (c *Conn) LocalAddr() net.Addr {
	if c.trusted {
		c.once.Do(c.parse)
		if c.dst != nil {
			return c.dst
		}
	}
	return c.nc.LocalAddr()
}

// SetDeadline sets the read and write deadlines; see SetReadDeadline.
func (c *Conn) SetDeadline(t time.Time) error {
	if c.parsed.Load() {
		return c.nc.SetDeadline(t)
	}
	c.dmu.Lock()
	defer c.dmu.Unlock()
	if c.parsed.Load() {
		return c.nc.SetDeadline(t)
	}
	c.readDeadline = t
	if err := c.nc.SetWriteDeadline(t); err != nil {
		return err
	}
	return c.applyHeaderDeadline()
}

// SetReadDeadline sets the read deadline. While the header is being read the
// earlier of it and the header deadline is in force; the caller's deadline
// alone applies afterwards.
func (c *Conn) SetReadDeadline(t time.Time) error {
	if c.parsed.Load() {
		return c.nc.SetReadDeadline(t)
	}
	c.dmu.Lock()
	defer c.dmu.Unlock()
	if c.parsed.Load() {
		return c.nc.SetReadDeadline(t)
	}
	c.readDeadline = t
	return c.applyHeaderDeadline()
}

// applyHeaderDeadline puts the earlier of the caller's and the header's
// deadlines on the socket; before the header read starts, only the caller's.
// dmu must be held.
func (c *Conn) applyHeaderDeadline() error {
	d := c.readDeadline
	if !c.headerDeadline.IsZero() && (d.IsZero() || c.headerDeadline.Before(d)) {
		d = c.headerDeadline
	}
	return c.nc.SetReadDeadline(d)
}

// Write writes to the connection; it does not wait for the header.
func (c *Conn) Write(p []byte) (int, error) {
	return c.nc.Write(p)
}

// SetWriteDeadline sets the write deadline.
func (c *Conn) SetWriteDeadline(t time.Time) error {
	return c.nc.SetWriteDeadline(t)
}

// Close closes the connection. It may be called after the connection was
// closed for its header, and then returns nil.
func (c *Conn) Close() error {
	c.closeOnce.Do(func() { c.closeErr = c.nc.Close() })
	return c.closeErr
}

// CloseWrite shuts down the writing side of a TCP connection, which
// net/http's graceful close relies on. It returns errors.ErrUnsupported when
// the underlying connection has no such operation.
func (c *Conn) CloseWrite() error {
	if cw, ok := c.nc.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}

// NetConn returns the underlying connection, whose addresses are the
// balancer's.
func (c *Conn) NetConn() net.Conn {
	return c.nc
}

func (c *Conn) parse() {
	r := readers.Get().(*bufio.Reader)
	r.Reset(c.nc)

	c.dmu.Lock()
	c.headerDeadline = time.Now().Add(c.l.headerTimeout())
	_ = c.applyHeaderDeadline()
	c.dmu.Unlock()

	src, dst, err := c.readHeader(r)

	c.dmu.Lock()
	c.headerDeadline = time.Time{}
	_ = c.applyHeaderDeadline()
	c.parsed.Store(true)
	c.dmu.Unlock()

	if err != nil {
		release(r)
		c.err = err
		_ = c.Close()
		if c.l.OnError != nil && !errors.Is(err, net.ErrClosed) {
			c.l.OnError(c.nc.RemoteAddr(), err)
		}
		return
	}
	c.src, c.dst = src, dst
	if r.Buffered() == 0 {
		release(r)
		return
	}
	c.r = r
	c.buffered.Store(true)
}

func (c *Conn) readHeader(r *bufio.Reader) (src, dst net.Addr, err error) {
	version, seen, err := detect(r)
	switch {
	case err == nil && !c.trusted:
		return nil, nil, fmt.Errorf("%w: v%d header", ErrUntrustedHeader, version)
	case err == nil:
		return parseVersion(r, version)
	case errors.Is(err, ErrNoHeader):
		if c.trusted && c.l.Required {
			return nil, nil, ErrHeaderRequired
		}
		return nil, nil, nil
	case seen > 0:
		return nil, nil, truncated(err)
	case c.trusted && c.l.Required && errors.Is(err, os.ErrDeadlineExceeded):
		return nil, nil, fmt.Errorf("%w: nothing received: %w", ErrHeaderRequired, err)
	default:
		// Nothing arrived, so there is no header to judge. The error (end
		// of stream, reset, or a silence longer than the header timeout) is
		// the next Read's, under the caller's own deadline.
		return nil, nil, nil
	}
}

// readerSize holds any v1 line and the bytes a client sends right after the
// header; it bounds the memory each connection holds until those are read.
const readerSize = 512

var readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, readerSize) }}

func release(r *bufio.Reader) {
	r.Reset(nil)
	readers.Put(r)
}
