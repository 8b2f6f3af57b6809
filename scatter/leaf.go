package scatter

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"sekisho/router"
)

// errLeafTooLarge is an answer over max_leaf_body_bytes. The writer returns
// it from Write, so that a ReverseProxy copying the answer stops reading
// the upstream at once instead of draining it.
var errLeafTooLarge = errors.New("answer over max_leaf_body_bytes")

// leafWriter is the ResponseWriter a leaf answers into: status, header and a
// body capped at max bytes. It belongs to one attempt's goroutine until that
// goroutine hands the attempt to the gatherer.
type leafWriter struct {
	header http.Header
	status int
	body   []byte
	max    int64
	over   bool
}

func (w *leafWriter) Header() http.Header {
	if w.header == nil {
		w.header = make(http.Header)
	}
	return w.header
}

// WriteHeader keeps the first final status. Informational ones (a
// ReverseProxy relays 103 Early Hints) are not the leaf's answer.
func (w *leafWriter) WriteHeader(code int) {
	if w.status != 0 || (code >= 100 && code < 200) {
		return
	}
	w.status = code
	if cl := w.header.Get("Content-Length"); cl != "" {
		if n, err := strconv.ParseInt(cl, 10, 64); err == nil && n >= 0 {
			if n > w.max {
				w.over = true
			} else if w.body == nil {
				w.body = make([]byte, 0, n)
			}
		}
	}
}

func (w *leafWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if !w.over && int64(len(w.body))+int64(len(p)) > w.max {
		w.over = true
		w.body = nil
	}
	if w.over {
		return 0, errLeafTooLarge
	}
	w.body = append(w.body, p...)
	return len(p), nil
}

// Flush does nothing: the answer is used once complete. It exists so that a
// handler that flushes as it goes finds a Flusher.
func (w *leafWriter) Flush() {}

// attempt is one request to a leaf: the first one, or its hedge.
type attempt struct {
	leaf    int
	hedge   bool
	running bool // gatherer's view: launched and not yet received
	start   time.Time
	ctx     context.Context
	cancel  context.CancelFunc
	w       leafWriter
	// Set by the attempt's goroutine before it sends the attempt back.
	fail error // why the answer cannot be used; nil for a usable answer
	part part
}

// launch sends leaf i a request on a goroutine of its own; the goroutine
// sends the attempt back on c.results when the leaf's handler returned.
func (c *call) launch(i int, hedge bool) {
	l := &c.leaves[i]
	a := &l.attempts[l.launched]
	l.launched++
	l.running++
	c.inflight++

	ctx, cancel := context.WithCancel(c.ctx)
	info := c.info.Fork()
	// The first attempt and its hedge share Tried, so the pool sends the
	// hedge to a replica other than the one still working on the first.
	info.Tried = &l.tried
	ctx = router.ContextWithInfo(ctx, info)
	*a = attempt{
		leaf:    i,
		hedge:   hedge,
		running: true,
		start:   time.Now(),
		ctx:     ctx,
		cancel:  cancel,
		w:       leafWriter{max: c.s.maxLeafBody},
	}
	req := c.r.Clone(ctx)
	req.Header.Set(LeafHeader, c.s.leaves[i].name)
	setBody(req, c.body)
	go c.serve(a, c.s.leaves[i].handler, req)
}

// setBody gives req its own reader over the buffered body, which every
// attempt shares read-only.
func setBody(req *http.Request, body []byte) {
	req.TransferEncoding = nil
	if len(body) == 0 {
		req.Body = http.NoBody
		req.GetBody = nil
		req.ContentLength = 0
		return
	}
	req.Body = io.NopCloser(bytes.NewReader(body))
	req.GetBody = func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(body)), nil
	}
	req.ContentLength = int64(len(body))
}

func (c *call) serve(a *attempt, h http.Handler, req *http.Request) {
	a.fail = a.run(h, req)
	if a.fail == nil {
		var elems []elem
		if c.s.merger.kind == mergeArray {
			elems = getElems()
		}
		a.part, a.fail = c.s.merger.parse(a.w.body, elems)
		if a.fail != nil {
			putElems(elems)
		}
	}
	c.results <- a
}

// run calls the leaf's handler. A panic is the leaf's failure, not the
// process's: this goroutine is not one net/http recovers, and a
// ReverseProxy panics with http.ErrAbortHandler when the writer refuses an
// answer that is too large.
func (a *attempt) run(h http.Handler, req *http.Request) (err error) {
	defer func() {
		p := recover()
		switch {
		case p == nil:
		case a.w.over:
			err = fmt.Errorf("%w (%d bytes)", errLeafTooLarge, a.w.max)
		case p == http.ErrAbortHandler:
			err = errors.New("leaf handler aborted the answer")
		default:
			err = fmt.Errorf("leaf handler panicked: %v", p)
		}
	}()
	h.ServeHTTP(&a.w, req)
	switch {
	case a.w.over:
		return fmt.Errorf("%w (%d bytes)", errLeafTooLarge, a.w.max)
	case a.w.status != 0 && (a.w.status < 200 || a.w.status > 299):
		return fmt.Errorf("status %d", a.w.status)
	}
	return nil
}
