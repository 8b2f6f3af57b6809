package proxy

// The per-request entry: every request of every listener, HTTP/1.x or
// HTTP/2, starts in listenerHandler.ServeHTTP, which cleans the inbound
// request, resolves the client, runs the matched route's pipeline and
// records what the client got.

import (
	"bufio"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"go.uber.org/zap"

	"sekisho/http1"
	"sekisho/proxy/upstream"
	"sekisho/router"
)

// listenerHandler is the http.Handler of one http.Server of a listener
// address.
type listenerHandler struct {
	s    *Server
	addr string
	// pinned is the Runtime that serves this handler's requests once a
	// reload has removed its listener, until its connections have drained.
	pinned atomic.Pointer[Runtime]
}

// runtime returns the Runtime for one request, with a reference held.
func (h *listenerHandler) runtime() *Runtime {
	if p := h.pinned.Load(); p != nil && p.acquire() {
		return p
	}
	return h.s.acquire()
}

func (h *listenerHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rt := h.runtime()
	if rt == nil {
		w.Header().Set("Connection", "close")
		http.Error(w, "shutting down", http.StatusServiceUnavailable)
		return
	}
	defer h.s.releaseRuntime(rt)
	lr := rt.listeners[h.addr]
	if lr == nil {
		// The listener was removed by a reload and is draining.
		w.Header().Set("Connection", "close")
		http.Error(w, "listener removed", http.StatusServiceUnavailable)
		return
	}
	// Before anything reads the request: what the client said about its
	// own connection goes, so that nothing sekisho adds can be removed by it.
	lr.inbound.sanitize(r)
	st := reqStates.Get().(*reqState)
	*st = reqState{}
	defer reqStates.Put(st) // runs last, after the access log line
	info := &st.info
	info.Listener, info.Start = lr.name, start
	info.ClientIP, info.ForwardedFor, info.TrustedPeer = lr.clientIP.ResolveChain(r)
	info.RequestID = requestID(r)
	// A client may not speak for a certificate it did not present, nor
	// pass its request off as a mirror copy.
	if len(r.Header["X-Client-Cert-Subject"]) > 0 {
		delete(r.Header, "X-Client-Cert-Subject")
	}
	if len(r.Header[router.MirrorHeader]) > 0 {
		delete(r.Header, router.MirrorHeader)
	}
	if r.TLS != nil && lr.cfg.TLS != nil && lr.cfg.TLS.ClientCAFile != "" {
		info.ClientCert = clientCertSubject(r.TLS)
		if info.ClientCert != "" && lr.cfg.TLS.ForwardClientCert {
			r.Header.Set("X-Client-Cert-Subject", info.ClientCert)
		}
	}
	if slot := router.SlotFrom(r); slot != nil && r.ProtoMajor == 1 {
		slot.Set(info)
		defer slot.Set(nil)
	} else {
		r = router.WithInfo(r, info)
	}
	sw := &st.sw
	sw.ResponseWriter = w

	entry := lr.notFound
	if route := lr.table.Match(r); route != nil {
		entry = route.Handler.(*routeEntry)
	}
	if len(r.Header["Upgrade"]) > 0 {
		entry.upgrades.apply(r.Header)
	}
	info.Route = entry.name
	defer func() {
		if p := recover(); p != nil {
			if p == http.ErrAbortHandler {
				// The upstream died mid-response; net/http aborts the
				// client connection quietly when the panic goes on.
				if sw.status == 0 {
					sw.status = http.StatusBadGateway
				}
				finish(rt, entry, info, r, sw, start, noteAborted)
				panic(p)
			}
			h.s.shared.Metrics.Panics.Inc()
			h.s.log.Error("panic serving request", zap.Any("panic", p), zap.String("route", entry.name),
				zap.String("request_id", info.RequestID), zap.ByteString("stack", debug.Stack()))
			if !sw.wroteHeader {
				http.Error(sw, "internal error", http.StatusInternalServerError)
			}
			finish(rt, entry, info, r, sw, start, "panic")
		}
	}()
	if entry.limits != nil {
		entry.limits.serve(sw, r, entry.handler)
	} else {
		entry.handler.ServeHTTP(sw, r)
	}
	finish(rt, entry, info, r, sw, start, "")
}

// reqState is what the request path needs per request, in one allocation
// that is reused: nothing keeps it past ServeHTTP (a stage that works on
// after the answer, mirror, forks the Info).
type reqState struct {
	info router.Info
	sw   statusWriter
}

var reqStates = sync.Pool{New: func() any { return new(reqState) }}

// finish counts the request and writes its access log line, with what the
// client got: on the HTTP/1.x loop the answer is completed (or, aborted,
// flushed short of its end) first, so that the status and the body bytes
// are those that reached the connection. An answer none of which reached
// the client is recorded as 499 when the client could not be written to
// (gone, or stalled past the write timeout) and as 502 when the upstream
// failed first; a cut answer says so.
func finish(rt *Runtime, entry *routeEntry, info *router.Info, r *http.Request, sw *statusWriter, start time.Time, note string) {
	status, bytes, cut := sw.status, sw.bytes, note == noteAborted
	if status == 0 {
		status = http.StatusOK
	}
	if rw, ok := sw.ResponseWriter.(http1.Finisher); ok {
		if cut {
			rw.Abort()
		} else {
			rw.Complete()
		}
		if head, n, wasCut := rw.Delivered(); wasCut {
			cut, bytes = true, n
			werr := rw.Err()
			switch {
			case head:
			case werr != nil:
				status = upstream.StatusClientClosed // the client could not be written to
			default:
				status = http.StatusBadGateway // aborted before a byte went out
			}
			if werr != nil {
				note = "client write failed: " + werr.Error()
			}
		}
	}
	elapsed := time.Since(start)
	entry.requests.Inc(status)
	entry.duration.Observe(elapsed.Seconds())
	if a := rt.access; a != nil {
		a.write(info, r, status, bytes, elapsed, note, cut)
	}
}

// noteAborted is the access log's note for an answer aborted half-way.
const noteAborted = "upstream aborted the response"

// requestID keeps a sane X-Request-Id from the client or mints one, and
// puts it on the request so that it travels upstream and back.
func requestID(r *http.Request) string {
	if vs := r.Header["X-Request-Id"]; len(vs) > 0 && validRequestID(vs[0]) {
		return vs[0]
	}
	// The header's value slice and the id's bytes share one allocation.
	box := new(idBox)
	n := len(strconv.AppendUint(box.buf[:0], rand.Uint64(), 36))
	box.vals[0] = unsafe.String(&box.buf[0], n)
	r.Header["X-Request-Id"] = box.vals[:]
	return box.vals[0]
}

// idBox holds a minted request id: base 36 of 64 random bits fits in 13
// bytes, which are never written again once the id is made.
type idBox struct {
	vals [1]string
	buf  [13]byte
}

func validRequestID(s string) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c >= 0x7f {
			return false
		}
	}
	return true
}

// statusWriter records the status and size of the answer. It passes
// Flush, Hijack (upgrades) and Unwrap through, so that
// http.ResponseController and ReverseProxy see the real connection.
type statusWriter struct {
	http.ResponseWriter
	status      int
	bytes       int64
	wroteHeader bool
}

func (w *statusWriter) WriteHeader(code int) {
	if !w.wroteHeader {
		if code >= 200 || code == http.StatusSwitchingProtocols {
			w.status, w.wroteHeader = code, true
		}
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if !w.wroteHeader {
		w.status, w.wroteHeader = http.StatusOK, true
	}
	n, err := w.ResponseWriter.Write(b)
	w.bytes += int64(n)
	return n, err
}

func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (w *statusWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return http.NewResponseController(w.ResponseWriter).Hijack()
}

var _ upstream.ClientGoneRecorder = (*statusWriter)(nil)

// RecordClientGone records an answer never sent because the client left
// (upstream.StatusClientClosed).
func (w *statusWriter) RecordClientGone() { w.status = upstream.StatusClientClosed }

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// ReadFrom lets io.Copy reach the connection's own ReadFrom (sendfile).
func (w *statusWriter) ReadFrom(r io.Reader) (int64, error) {
	if !w.wroteHeader {
		w.status, w.wroteHeader = http.StatusOK, true
	}
	n, err := io.Copy(w.ResponseWriter, r)
	w.bytes += n
	return n, err
}

// serverLogWriter carries net/http's own log lines (those of its HTTP/2
// side) into the process log at debug level. TLS handshakes are the
// HTTP/1.x loop's, which counts their failures (front.go).
type serverLogWriter struct {
	s        *Server
	listener string
}

func (w *serverLogWriter) Write(b []byte) (int, error) {
	msg := string(b)
	if len(msg) > 0 && msg[len(msg)-1] == '\n' {
		msg = msg[:len(msg)-1]
	}
	w.s.log.Debug(msg, zap.String("listener", w.listener))
	return len(b), nil
}
