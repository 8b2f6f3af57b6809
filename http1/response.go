package http1

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// The loop's writing side: the ResponseWriter and the answer's framing.

// respWriter is the http.ResponseWriter of the loop, reused per request.
// It holds an answer without a Content-Length back while it is short, so
// that it can go with one; a longer one goes chunked (HTTP/1.1) or until
// the close (HTTP/1.0).
type respWriter struct {
	sc          *serverConn
	req         *http.Request
	header      http.Header
	status      int
	wroteHeader bool
	headSent    bool
	length      int64 // declared Content-Length, or -1
	written     int64
	chunked     bool
	noBody      bool // HEAD, 204, 304: bytes written are dropped
	closeAfter  bool
	hijacked    bool
	pending     []byte
	done        bool  // completed or aborted: nothing more goes out
	aborted     bool  // ended short of its framing on purpose
	err         error // the first failed write to the client
	bodyStart   int64 // the connection's byte offset where the body begins
	framing     int64 // chunk sizes and line ends among the body's bytes
}

var (
	_ http.ResponseWriter = (*respWriter)(nil)
	_ http.Flusher        = (*respWriter)(nil)
	_ http.Hijacker       = (*respWriter)(nil)
	_ Finisher            = (*respWriter)(nil)
)

func (w *respWriter) reset(r *http.Request) {
	clear(w.header)
	*w = respWriter{sc: w.sc, req: r, header: w.header, length: -1, pending: w.pending[:0], bodyStart: -1}
}

func (w *respWriter) Header() http.Header { return w.header }

func (w *respWriter) WriteHeader(code int) {
	if w.hijacked || w.wroteHeader {
		return
	}
	if code < 100 || code > 999 {
		panic(fmt.Sprintf("invalid WriteHeader code %v", code))
	}
	if code < 200 && code != http.StatusSwitchingProtocols {
		w.interim(code)
		return
	}
	w.wroteHeader, w.status = true, code
	if cl := w.header["Content-Length"]; len(cl) > 0 {
		if w.length = parseLength(strings.TrimSpace(cl[0])); w.length < 0 {
			delete(w.header, "Content-Length")
		}
	}
	switch {
	case code == http.StatusNoContent || code == http.StatusSwitchingProtocols:
		delete(w.header, "Content-Length")
		w.length = -1
		w.noBody = true
	case code == http.StatusNotModified || w.req.Method == http.MethodHead:
		w.noBody = true
	}
}

// interim sends a 1xx answer with the header as it stands.
func (w *respWriter) interim(code int) {
	if w.req.ProtoMinor == 0 {
		return
	}
	sc := w.sc
	sc.wmu.Lock()
	defer sc.wmu.Unlock()
	if w.headSent {
		return
	}
	if code == http.StatusContinue {
		if sc.continued {
			return
		}
		sc.continued = true
	}
	sc.bw.WriteString(statusLine(code))
	w.writeFields(false)
	sc.bw.WriteString("\r\n")
	sc.bw.Flush()
}

func (w *respWriter) Write(p []byte) (int, error) {
	if w.hijacked {
		return 0, http.ErrHijacked
	}
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if w.noBody {
		if w.req.Method == http.MethodHead {
			w.written += int64(len(p))
			return len(p), nil
		}
		return 0, http.ErrBodyNotAllowed
	}
	if w.length >= 0 && w.written+int64(len(p)) > w.length {
		return 0, http.ErrContentLength
	}
	w.written += int64(len(p))
	if !w.headSent {
		if w.length < 0 && len(w.pending)+len(p) <= pendingMax {
			w.pending = append(w.pending, p...)
			return len(p), nil
		}
		w.sniff(p)
		w.sendHead()
		if len(w.pending) > 0 {
			w.writeBody(w.pending)
			w.pending = w.pending[:0]
		}
	}
	return w.writeBody(p)
}

// sniff sets the Content-Type from the body's first bytes when the handler
// set none, as net/http does.
func (w *respWriter) sniff(p []byte) {
	if w.noBody || w.status == http.StatusSwitchingProtocols {
		return
	}
	if _, ok := w.header["Content-Type"]; ok || len(w.header["Content-Encoding"]) > 0 || len(w.header["Transfer-Encoding"]) > 0 {
		return
	}
	if len(w.pending) > 0 {
		p = w.pending
	}
	if len(p) == 0 {
		return
	}
	w.header.Set("Content-Type", http.DetectContentType(p[:min(len(p), 512)]))
}

func (w *respWriter) writeBody(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	bw := w.sc.bw
	if !w.chunked {
		n, err := bw.Write(p)
		w.failed(err)
		return n, err
	}
	n, framing, err := writeChunk(bw, w.sc.scratch[:], p)
	w.framing += framing
	w.failed(err)
	return n, err
}

// failed records the first failed write to the client; a write that missed
// the listener's write deadline is counted.
func (w *respWriter) failed(err error) {
	if err == nil || w.err != nil {
		return
	}
	w.err = err
	w.closeAfter = true
	var ne net.Error
	if f := w.sc.srv.OnWriteTimeout; f != nil && errors.As(err, &ne) && ne.Timeout() {
		f()
	}
}

// sendHead writes the status line and header; a body whose length is
// still unknown goes chunked, or until the close for HTTP/1.0.
func (w *respWriter) sendHead() {
	sc := w.sc
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	sc.wmu.Lock()
	w.headSent = true // no 100 Continue may follow
	sc.wmu.Unlock()
	streaming := w.length < 0
	r := w.req
	if r.Close || sc.srv.shutting.Load() || HasToken(w.header["Connection"], "close") {
		w.closeAfter = true
	}
	if streaming && !w.noBody {
		if r.ProtoMinor >= 1 {
			w.chunked = true
		} else {
			w.closeAfter = true // the close ends the body
		}
	}
	bw := sc.bw
	bw.WriteString(statusLine(w.status))
	upgrade := w.status == http.StatusSwitchingProtocols
	w.writeFields(!upgrade) // a 101 keeps its Connection: Upgrade
	if _, ok := w.header["Date"]; !ok {
		bw.WriteString("Date: ")
		bw.Write(httpDateNow())
		bw.WriteString("\r\n")
	}
	switch {
	case w.chunked:
		bw.WriteString("Transfer-Encoding: chunked\r\n")
	case w.length >= 0 && w.status != http.StatusNoContent:
		bw.WriteString("Content-Length: ")
		bw.Write(strconv.AppendInt(sc.scratch[:0], w.length, 10))
		bw.WriteString("\r\n")
	}
	switch {
	case upgrade:
	case w.closeAfter:
		bw.WriteString("Connection: close\r\n")
	case r.ProtoMinor == 0:
		bw.WriteString("Connection: keep-alive\r\n")
	}
	bw.WriteString("\r\n")
	w.bodyStart = sc.wire + int64(bw.Buffered())
}

// writeFields writes the header's fields but the ones the framing owns
// (those too when all is false). Line breaks in values become spaces, as
// net/http does.
func (w *respWriter) writeFields(skipFraming bool) {
	bw := w.sc.bw
	// Values set for declared trailers go at the end, not in the head.
	trailers := w.header["Trailer"]
	for k, vs := range w.header {
		if skipFraming {
			switch k {
			case "Content-Length", "Transfer-Encoding", "Connection":
				continue
			}
			if strings.HasPrefix(k, http.TrailerPrefix) || len(trailers) > 0 && k != "Trailer" && HasToken(trailers, k) {
				continue
			}
		}
		if !ValidToken(k) {
			continue
		}
		for _, v := range vs {
			writeField(bw, k, v)
		}
	}
}

// Flush sends what is held back and the buffer.
func (w *respWriter) Flush() {
	if w.hijacked {
		return
	}
	if !w.headSent {
		w.sniff(nil)
		w.sendHead()
		if len(w.pending) > 0 {
			w.writeBody(w.pending)
			w.pending = w.pending[:0]
		}
	}
	w.failed(w.sc.bw.Flush())
}

// Complete ends the request after the handler returned: what is left of
// the request body is drained (or the connection marked to close) and the
// answer is finished and flushed. It runs once, from a handler before it
// records what the client got (Finisher), or from the loop.
func (w *respWriter) Complete() {
	if w.done {
		return
	}
	w.done = true
	if b := w.sc.body; b != nil && !b.finish() {
		w.closeAfter = true
	}
	w.finish()
}

// Abort ends an answer that failed half-way: what was already given goes
// out, but never the end of its framing (no final chunk, no padding to its
// length), and the connection is closed after it.
func (w *respWriter) Abort() {
	if w.done {
		return
	}
	w.done, w.aborted, w.closeAfter = true, true, true
	if w.headSent && !w.hijacked {
		w.failed(w.sc.bw.Flush())
	}
}

// Delivered reports what the client was sent of an answer that was cut
// (aborted, or a write to the client failed): whether its whole head went
// out, and how many body bytes after it. It is meant for after Complete or
// Abort; an answer that was not cut reports cut false.
func (w *respWriter) Delivered() (head bool, body int64, cut bool) {
	if !w.aborted && w.err == nil {
		return true, w.written, false
	}
	if w.bodyStart < 0 || w.sc.wire < w.bodyStart {
		return false, 0, true
	}
	body = min(max(w.sc.wire-w.bodyStart-w.framing, 0), w.written)
	return true, body, true
}

// Err returns the first write to the client that failed, or nil.
func (w *respWriter) Err() error { return w.err }

// finish completes the answer after the handler returned.
func (w *respWriter) finish() {
	if w.hijacked {
		return
	}
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	bw := w.sc.bw
	if !w.headSent {
		if w.length < 0 && !w.wantsTrailers() {
			switch {
			case !w.noBody:
				w.length = int64(len(w.pending))
			case w.req.Method == http.MethodHead && w.written > 0:
				w.length = w.written
			}
		}
		w.sniff(nil)
		w.sendHead()
		if len(w.pending) > 0 {
			w.writeBody(w.pending)
		}
	}
	switch {
	case w.chunked:
		writeLastChunk(bw, w.header)
	case w.length >= 0 && w.written < w.length && !w.noBody:
		w.closeAfter = true // short of its length: the client must not wait
	}
	w.failed(bw.Flush())
	w.pending = w.pending[:0]
}

// wantsTrailers reports whether the handler announced trailers or set
// some with http.TrailerPrefix.
func (w *respWriter) wantsTrailers() bool {
	if len(w.header["Trailer"]) > 0 {
		return w.req.ProtoMinor >= 1
	}
	for k := range w.header {
		if strings.HasPrefix(k, http.TrailerPrefix) {
			return w.req.ProtoMinor >= 1
		}
	}
	return false
}

// Hijack hands the connection to the handler (an upgrade): the loop lets
// go of it, and Shutdown no longer waits for it.
func (w *respWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if w.hijacked {
		return nil, nil, http.ErrHijacked
	}
	sc := w.sc
	if w.wroteHeader && !w.headSent {
		// What the handler wrote before taking the connection goes first,
		// as net/http sends it.
		w.sendHead()
		if len(w.pending) > 0 && !w.noBody {
			w.writeBody(w.pending)
			w.pending = w.pending[:0]
		}
	}
	if w.headSent {
		sc.bw.Flush()
	}
	w.hijacked = true
	sc.hijack = true
	sc.unwatch() // the connection is the handler's alone now
	sc.c.SetDeadline(time.Time{})
	sc.srv.forget(sc)
	return sc.c, bufio.NewReadWriter(sc.br, sc.bw), nil
}

// SetReadDeadline and SetWriteDeadline serve http.ResponseController.
func (w *respWriter) SetReadDeadline(t time.Time) error { return w.sc.c.SetReadDeadline(t) }

func (w *respWriter) SetWriteDeadline(t time.Time) error { return w.sc.c.SetWriteDeadline(t) }

// EnableFullDuplex serves http.ResponseController: the loop always lets a
// handler read the body while it writes the answer.
func (w *respWriter) EnableFullDuplex() error { return nil }
