package proxy

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// HTTP/2 connections are served by net/http, which offers no hook for what
// a client does at the frame level. An h2Guard sits between it and the
// client's connection (decrypted, for TLS) and reads the frame headers that
// pass, both ways, to end two abuses net/http lets run:
//
//   - rapid reset (CVE-2023-44487): a client that opens streams and resets
//     them at once makes the server start (and cancel) a request per stream,
//     at no cost to itself. Each stream reset by the client spends a token
//     of a bucket that refills at h2ResetRate a second and by one for each
//     answer the server completes; an empty bucket ends the connection.
//     A stream the server resets for the client's fault (CVE-2025-8671,
//     "MadeYouReset": a WINDOW_UPDATE of 0, DATA on a closed stream, a
//     flow-control breach) costs a token too, spent when the client opens
//     its next stream.
//   - a header block left open: a HEADERS frame whose block (with its
//     CONTINUATION frames) is not complete within the listener's
//     read_header ends the connection, where net/http would wait for the
//     idle timeout.
//
// Either way the guard writes a GOAWAY (ENHANCE_YOUR_CALM) at the next
// boundary between the server's frames, closes its side for writing, drops
// what the client still sends for a moment (so that the GOAWAY is not lost
// to a reset) and closes.

// HTTP/2 wire constants (RFC 9113 §4.1, §6).
const (
	h2FrameHeaderLen     = 9
	h2FrameData          = 0x0
	h2FrameHeaders       = 0x1
	h2FrameRSTStream     = 0x3
	h2RSTStreamLen       = 4
	h2FrameGoAway        = 0x7
	h2FrameContinuation  = 0x9
	h2FlagEndStream      = 0x1
	h2FlagEndHeaders     = 0x4
	h2ErrEnhanceYourCalm = 0xb
	h2ClientPreface      = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
)

const (
	// h2ResetRate is how many streams a second a client may reset, on
	// average, beyond the ones whose answers the server completed.
	h2ResetRate = 100
	// h2ResetBurst is how many a client may reset at once. Every stream
	// let through may cost an upstream connection (dialled for it, or
	// closed under its unread answer), so the bucket is kept small: a page
	// that drops its pending requests fits, a flood does not.
	h2ResetBurst = 100
	// h2AbortGrace bounds how long a connection the guard ends lives on
	// after the decision: the GOAWAY's write and the reads that drain the
	// client's last bytes.
	h2AbortGrace = time.Second
)

// Why the guard ended a connection; the reason label of
// sekisho_http2_connections_closed_total.
const (
	h2CloseRapidReset    = "rapid_reset"
	h2CloseHeaderTimeout = "header_timeout"
)

// h2ClosedCounter returns the onClose of the guards of listener's
// connections: it counts them in sekisho_http2_connections_closed_total.
func h2ClosedCounter(s *Server, listener string) func(string) {
	if s.shared == nil || s.shared.Metrics == nil {
		return nil
	}
	vec := s.shared.Metrics.HTTP2Closed
	return func(reason string) { vec.WithLabelValues(listener, reason).Inc() }
}

var errH2GuardClosed = errors.New("http2: connection closed by the frame guard")

// h2Guard is an HTTP/2 connection as net/http's server reads and writes it.
// Read is called by the server's one reader goroutine, Write by one writer
// at a time; abort may come from either or from the header block timer.
type h2Guard struct {
	net.Conn
	headerTimeout time.Duration
	onClose       func(reason string) // counts the connections the guard ends; may be nil

	// Read side: the reader goroutine's alone.
	in       frameScanner
	tokens   float64 // the reset bucket
	refilled time.Time
	credited int64 // completed answers already credited to the bucket
	charged  int64 // provoked resets already spent from the bucket
	timer    *time.Timer

	lastStream atomic.Uint32 // the highest stream a client's HEADERS opened
	blockSince atomic.Int64  // unix nanoseconds a header block began, 0 when none is open
	completed  atomic.Int64  // answers the server ended (END_STREAM), counted by the writer
	provoked   atomic.Int64  // streams the server reset for the client's fault, counted by the writer

	wmu      sync.Mutex
	out      frameScanner // under wmu
	rst      [h2RSTStreamLen]byte
	rstN     int  // under wmu: bytes of the server's RST_STREAM code gathered; -1 outside one
	goneAway bool // under wmu: the GOAWAY is written
	aborted  atomic.Bool
}

// newH2Guard watches c, whose client preface has been read already.
func newH2Guard(c net.Conn, headerTimeout time.Duration, onClose func(string)) *h2Guard {
	return &h2Guard{Conn: c, headerTimeout: headerTimeout, onClose: onClose, tokens: h2ResetBurst, refilled: time.Now(), rstN: -1}
}

// h2TLSGuard is the guard of a TLS connection: net/http's HTTP/2 server
// takes the connection state, and so Request.TLS, from ConnectionState.
type h2TLSGuard struct {
	*h2Guard
	state tls.ConnectionState
}

func (g *h2TLSGuard) ConnectionState() tls.ConnectionState { return g.state }

func (g *h2Guard) Read(p []byte) (int, error) {
	for {
		n, err := g.Conn.Read(p)
		if !g.aborted.Load() {
			g.scanIn(p[:n])
			if !g.aborted.Load() {
				return n, err
			}
		}
		// Ended: drop what the client still sends until it closes or the
		// grace period closes the connection.
		if err != nil {
			g.Conn.Close()
			return 0, err
		}
	}
}

// scanIn follows the client's frames through b.
func (g *h2Guard) scanIn(b []byte) {
	for len(b) > 0 {
		n, ev := g.in.step(b)
		b = b[n:]
		if ev&evHeader != 0 {
			switch typ, flags, stream := g.in.header(); typ {
			case h2FrameRSTStream:
				if !g.spendReset(1) {
					g.abort(h2CloseRapidReset)
					return
				}
			case h2FrameHeaders:
				if p := g.provoked.Load(); p > g.charged {
					n := p - g.charged
					g.charged = p
					if !g.spendReset(float64(n)) {
						g.abort(h2CloseRapidReset)
						return
					}
				}
				if stream > g.lastStream.Load() {
					g.lastStream.Store(stream)
				}
				if flags&h2FlagEndHeaders == 0 || g.in.left > 0 {
					g.startBlock()
				}
			}
		}
		if ev&evEnd != 0 {
			if typ, flags, _ := g.in.header(); (typ == h2FrameHeaders || typ == h2FrameContinuation) && flags&h2FlagEndHeaders != 0 {
				g.blockSince.Store(0)
			}
		}
	}
}

// spendReset takes a token for each of n reset streams, and reports
// whether there were enough.
func (g *h2Guard) spendReset(n float64) bool {
	now := time.Now()
	g.tokens += now.Sub(g.refilled).Seconds() * h2ResetRate
	g.refilled = now
	if done := g.completed.Load(); done > g.credited {
		g.tokens += float64(done - g.credited)
		g.credited = done
	}
	if g.tokens > h2ResetBurst {
		g.tokens = h2ResetBurst
	}
	if g.tokens < n {
		return false
	}
	g.tokens -= n
	return true
}

// startBlock starts the clock of a header block. Blocks do not interleave
// (RFC 9113 §6.10), so the timer, reset at each block's start, fires
// headerTimeout after the start of the latest one.
func (g *h2Guard) startBlock() {
	if g.headerTimeout <= 0 || g.blockSince.Load() != 0 {
		return
	}
	g.blockSince.Store(time.Now().UnixNano())
	if g.timer == nil {
		g.timer = time.AfterFunc(g.headerTimeout, g.checkBlock)
		return
	}
	g.timer.Reset(g.headerTimeout)
}

func (g *h2Guard) checkBlock() {
	since := g.blockSince.Load()
	if since != 0 && time.Since(time.Unix(0, since)) >= g.headerTimeout {
		g.abort(h2CloseHeaderTimeout)
	}
}

func (g *h2Guard) Write(p []byte) (int, error) {
	g.wmu.Lock()
	defer g.wmu.Unlock()
	if g.aborted.Load() {
		if g.goneAway {
			return 0, errH2GuardClosed
		}
		// Finish the frame under way, then say goodbye; a write that does
		// not reach the frame's end leaves the GOAWAY to the next one.
		cut := g.out.toBoundary(p)
		n, err := g.Conn.Write(p[:cut])
		g.scanOut(p[:n])
		if err != nil {
			return n, err
		}
		if !g.out.atBoundary() {
			return n, nil
		}
		g.goAwayLocked()
		return n, errH2GuardClosed
	}
	n, err := g.Conn.Write(p)
	g.scanOut(p[:n])
	if g.aborted.Load() && g.out.atBoundary() {
		g.goAwayLocked()
	}
	return n, err
}

// scanOut follows the server's frames through b, counting the answers it
// completes and the streams it resets for the client's fault.
func (g *h2Guard) scanOut(b []byte) {
	for len(b) > 0 {
		inRST := g.rstN >= 0 && !g.out.atBoundary()
		n, ev := g.out.step(b)
		if inRST {
			g.rstN += copy(g.rst[g.rstN:], b[:n])
		}
		b = b[n:]
		if ev&evHeader != 0 {
			typ, flags, stream := g.out.header()
			if stream != 0 && flags&h2FlagEndStream != 0 && (typ == h2FrameHeaders || typ == h2FrameData) {
				g.completed.Add(1)
			}
			if typ == h2FrameRSTStream && stream != 0 && g.out.left == h2RSTStreamLen {
				g.rstN = 0
			}
		}
		if ev&evEnd != 0 && g.rstN >= 0 {
			if g.rstN == h2RSTStreamLen && h2ClientFault(binary.BigEndian.Uint32(g.rst[:])) {
				g.provoked.Add(1)
			}
			g.rstN = -1
		}
	}
}

// h2ClientFault reports whether a server's RST_STREAM error code blames the
// client's frames, rather than the handler (INTERNAL_ERROR, an upstream
// that failed), a body left unread (NO_ERROR) or a cancel.
func h2ClientFault(code uint32) bool {
	switch code {
	case 0x1, 0x3, 0x5, 0x6, 0x7: // PROTOCOL_ERROR, FLOW_CONTROL_ERROR, STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM
		return true
	}
	return false
}

// abort ends the connection: the GOAWAY goes now if no write is under way
// and the server's frames are at a boundary, else with the write that
// reaches one; whatever happens to it, the connection closes within
// h2AbortGrace.
func (g *h2Guard) abort(reason string) {
	if !g.aborted.CompareAndSwap(false, true) {
		return
	}
	if g.onClose != nil {
		g.onClose(reason)
	}
	time.AfterFunc(h2AbortGrace, func() { g.Conn.Close() })
	if g.wmu.TryLock() {
		if !g.goneAway && g.out.atBoundary() {
			g.goAwayLocked()
		}
		g.wmu.Unlock()
	}
}

// goAwayLocked writes the GOAWAY and closes the writing side; g.wmu is
// held and the server's frames are at a boundary.
func (g *h2Guard) goAwayLocked() {
	g.goneAway = true
	var f [h2FrameHeaderLen + 8]byte
	f[2] = 8 // length
	f[3] = h2FrameGoAway
	binary.BigEndian.PutUint32(f[9:], g.lastStream.Load()&(1<<31-1))
	binary.BigEndian.PutUint32(f[13:], h2ErrEnhanceYourCalm)
	g.Conn.SetWriteDeadline(time.Now().Add(h2AbortGrace))
	if _, err := g.Conn.Write(f[:]); err != nil {
		return
	}
	if cw, ok := g.Conn.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
}

// Close closes the connection, but for one the guard has ended: that one
// closes when the client has read the GOAWAY and gone, or at the end of
// the grace period.
func (g *h2Guard) Close() error {
	if g.aborted.Load() {
		return nil
	}
	return g.Conn.Close()
}

// frameScanner follows frame boundaries through a byte stream that arrives
// in pieces of any size.
type frameScanner struct {
	hdr  [h2FrameHeaderLen]byte
	n    int    // bytes of hdr gathered; h2FrameHeaderLen while in a payload
	left uint32 // payload bytes still to come
}

// Events of step.
const (
	evHeader = 1 << iota // a frame header is complete: header() tells it
	evEnd                // a frame is complete
)

// step consumes b up to the next event, or all of it, and returns how many
// bytes it took and what happened.
func (s *frameScanner) step(b []byte) (int, int) {
	if s.n < h2FrameHeaderLen {
		k := copy(s.hdr[s.n:], b)
		s.n += k
		if s.n < h2FrameHeaderLen {
			return k, 0
		}
		s.left = uint32(s.hdr[0])<<16 | uint32(s.hdr[1])<<8 | uint32(s.hdr[2])
		if s.left == 0 {
			s.n = 0
			return k, evHeader | evEnd
		}
		return k, evHeader
	}
	k := len(b)
	if uint32(k) >= s.left {
		k = int(s.left)
	}
	s.left -= uint32(k)
	if s.left == 0 {
		s.n = 0
		return k, evEnd
	}
	return k, 0
}

// header returns the type, flags and stream of the last frame header.
func (s *frameScanner) header() (typ, flags byte, stream uint32) {
	return s.hdr[3], s.hdr[4], binary.BigEndian.Uint32(s.hdr[5:]) & (1<<31 - 1)
}

func (s *frameScanner) atBoundary() bool { return s.n == 0 }

// toBoundary returns how many bytes of b end the frame under way: 0 at a
// boundary, len(b) when b does not reach the end.
func (s *frameScanner) toBoundary(b []byte) int {
	if s.atBoundary() {
		return 0
	}
	if s.n < h2FrameHeaderLen {
		need := h2FrameHeaderLen - s.n
		if len(b) < need {
			return len(b)
		}
		// The length's bytes may be in b rather than gathered yet.
		var h [3]byte
		for i := range h {
			if i < s.n {
				h[i] = s.hdr[i]
			} else {
				h[i] = b[i-s.n]
			}
		}
		return min(len(b), need+(int(h[0])<<16|int(h[1])<<8|int(h[2])))
	}
	return min(len(b), int(s.left))
}

// h2HandOff carries a connection through the one door net/http's server
// opens to a net.Conn that is not a *tls.Conn: the TLSNextProto entry for
// HTTP/2 with prior knowledge takes a *tls.Conn that wraps a connection
// with this method, and serves what it returns.
type h2HandOff struct {
	net.Conn // nil: never used
	conn     net.Conn
}

func (h h2HandOff) UnencryptedNetConn() net.Conn { return h.conn }

// nextProtoH2 is net/http's TLSNextProto key for HTTP/2 with prior
// knowledge; the client preface has been read from the connection passed.
const nextProtoH2 = "unencrypted_http2"

// h2Entry is the handler of an HTTP/2 connection: it gives net/http's
// server the connection's base context and holds each stream's field
// section to the listener's max_header_bytes.
type h2Entry struct {
	ctx       context.Context
	next      http.Handler
	maxHeader int
}

// BaseContext is how net/http passes a connection's context to its HTTP/2
// server through TLSNextProto.
func (h h2Entry) BaseContext() context.Context { return h.ctx }

func (h h2Entry) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if h.maxHeader > 0 && h2FieldSectionSize(r) > h.maxHeader {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusRequestHeaderFieldsTooLarge)
		w.Write([]byte("Request Header Fields Too Large"))
		return
	}
	if r.Method == http.MethodOptions && r.RequestURI == "*" {
		// As net/http's server and the HTTP/1.x loop answer it.
		w.Header().Set("Content-Length", "0")
		return
	}
	h.next.ServeHTTP(w, r)
}

// h2FieldSectionSize is the size of r's field section as HTTP/2 counts it
// (RFC 9113 §6.5.2): each field's name and value and 32 bytes, pseudo
// fields included. Cookie fields that net/http joined count as one.
func h2FieldSectionSize(r *http.Request) int {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	n := len(":method") + len(r.Method) + len(":scheme") + len(scheme) + len(":authority") + len(r.Host) +
		len(":path") + len(r.RequestURI) + 4*32
	for k, vs := range r.Header {
		for _, v := range vs {
			n += len(k) + len(v) + 32
		}
	}
	return n
}

// h2HeaderHardBound is the header list size net/http's HTTP/2 server is
// told to decode (and advertises) for a listener whose max_header_bytes is
// max: past max a stream is answered 431 by h2Entry, which needs the
// block decoded; past the bound the connection ends, as RFC 9113 §10.5.1
// allows.
func h2HeaderHardBound(limit int) int {
	return max(4*limit, 64<<10)
}
