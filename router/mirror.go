package router

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/prometheus/client_golang/prometheus"
)

// MirrorHeader marks a request as a mirror copy, so a shadow can tell copies
// from its own traffic.
const MirrorHeader = "X-Sekisho-Mirror"

// Defaults of a Mirror's zero fields.
const (
	DefaultMirrorMaxBodyBytes = 64 << 10
	DefaultMirrorMaxInFlight  = 100
	DefaultMirrorTimeout      = 10 * time.Second
)

// Mirror results, the values of the result label of Mirror.Requests. Each
// request chosen for mirroring ends in exactly one of them.
const (
	MirrorSent        = "sent"         // the shadow answered with a status below 500
	MirrorError       = "error"        // the shadow answered 5xx, timed out or panicked
	MirrorDropped     = "dropped"      // MaxInFlight copies were already running
	MirrorSkippedBody = "skipped_body" // the body was over MaxBodyBytes or not read to its end
)

// Mirror configures a mirror stage: it sends a copy of a share of the
// requests to a shadow pool, fire and forget.
//
// The client's response never waits for the copy and never changes because
// of it. A request's body streams to the primary as it arrives, and is kept
// on the side up to MaxBodyBytes; the copy leaves only after the primary's
// handler returned with the whole body read, so a request whose body was
// larger (or not read to its end) is not mirrored. A request without a body
// is copied at once. The copy is taken as the request reaches the mirror
// stage: edits by later stages do not reach it. Protocol upgrades
// (WebSocket) are never mirrored.
type Mirror struct {
	// Pool names the shadow pool in metrics; it is required.
	Pool string
	// Handler is the shadow pool. Its response is discarded.
	Handler http.Handler
	// Percent is the share of requests copied, 0..100, with a resolution of
	// a millionth of a percent. Zero copies nothing.
	Percent float64
	// Key makes the choice deterministic: a request is copied when its key's
	// hash falls in the Percent share, so the same user is always (or never)
	// mirrored. Zero, or a request without the key, chooses at random.
	Key Key
	// MaxBodyBytes is the largest body copied. Zero means
	// DefaultMirrorMaxBodyBytes (64 KiB).
	MaxBodyBytes int64
	// MaxInFlight bounds the copies running at once; one more is dropped.
	// Zero means DefaultMirrorMaxInFlight (100).
	MaxInFlight int
	// Timeout is each copy's own deadline. Zero means DefaultMirrorTimeout
	// (10s).
	Timeout time.Duration
	// Requests counts chosen requests by result (see MirrorSent and the
	// others); it must have the labels pool and result. Nil counts nothing.
	Requests *prometheus.CounterVec
}

// MirrorStage is a compiled Mirror. It is not terminal. Copies run on
// goroutines it owns, under a context of their own: a client that goes away
// does not cancel its copy, Close does.
//
// A MirrorStage is safe for concurrent use. Close it once it serves no more
// requests; a request that reaches it after Close is not mirrored.
type MirrorStage struct {
	pool      string
	handler   http.Handler
	threshold uint64 // a request is chosen when its draw is below this
	key       Key
	maxBody   int64
	maxFlight int64
	timeout   time.Duration
	salt      xxhash.Digest

	sent, failed, dropped, skipped prometheus.Counter

	ctx    context.Context
	cancel context.CancelFunc
	// state is the number of running copies, with closedBit set once Close
	// began; whoever brings it to closedBit alone closes done.
	state atomic.Int64
	done  chan struct{}
}

const closedBit = int64(1) << 62

// mirrorScale is the resolution of Percent: 1/1 000 000 of a percent.
const mirrorScale = 100_000_000

// NewMirror validates m, reporting every problem at once (each a
// FieldError), applies defaults
// and compiles it. It starts nothing.
func NewMirror(m Mirror) (*MirrorStage, error) {
	var errs []error
	if err := validLabelName(m.Pool); err != nil {
		errs = append(errs, FieldErrorf("pool", "pool: %v", err))
	}
	if m.Handler == nil {
		errs = append(errs, FieldErrorf("pool", "no shadow handler"))
	}
	if math.IsNaN(m.Percent) || m.Percent < 0 || m.Percent > 100 {
		errs = append(errs, FieldErrorf("percent", "percent %v: want 0..100", m.Percent))
	}
	if m.MaxBodyBytes < 0 {
		errs = append(errs, FieldErrorf("max_body_bytes", "max_body_bytes %d: want >= 0", m.MaxBodyBytes))
	}
	if m.MaxInFlight < 0 {
		errs = append(errs, FieldErrorf("max_in_flight", "max_in_flight %d: want >= 0", m.MaxInFlight))
	}
	if m.Timeout < 0 {
		errs = append(errs, FieldErrorf("timeout", "timeout %v: want >= 0", m.Timeout))
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("mirror %q: %w", m.Pool, errors.Join(errs...))
	}
	if m.MaxBodyBytes == 0 {
		m.MaxBodyBytes = DefaultMirrorMaxBodyBytes
	}
	if m.MaxInFlight == 0 {
		m.MaxInFlight = DefaultMirrorMaxInFlight
	}
	if m.Timeout == 0 {
		m.Timeout = DefaultMirrorTimeout
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &MirrorStage{
		pool:      m.Pool,
		handler:   m.Handler,
		threshold: uint64(math.Round(m.Percent * mirrorScale / 100)),
		key:       m.Key,
		maxBody:   m.MaxBodyBytes,
		maxFlight: int64(m.MaxInFlight),
		timeout:   m.Timeout,
		ctx:       ctx,
		cancel:    cancel,
		done:      make(chan struct{}),
	}
	s.salt.Reset()
	_, _ = s.salt.WriteString("mirror\x00")
	_, _ = s.salt.WriteString(m.Pool)
	_, _ = s.salt.WriteString("\x00")
	if m.Requests != nil {
		for _, c := range []struct {
			dst    *prometheus.Counter
			result string
		}{{&s.sent, MirrorSent}, {&s.failed, MirrorError}, {&s.dropped, MirrorDropped}, {&s.skipped, MirrorSkippedBody}} {
			counter, err := m.Requests.GetMetricWith(prometheus.Labels{"pool": m.Pool, "result": c.result})
			if err != nil {
				cancel()
				return nil, fmt.Errorf("mirror %q: requests counter: %w", m.Pool, err)
			}
			*c.dst = counter
		}
	}
	return s, nil
}

// Wrap returns the handler that mirrors in front of next.
func (s *MirrorStage) Wrap(next http.Handler) (http.Handler, error) {
	if next == nil {
		return nil, fmt.Errorf("mirror %q: a mirror stage needs a stage after it", s.pool)
	}
	return &mirrorHandler{s: s, next: next}, nil
}

// Close cancels the copies in flight and waits for their goroutines to end.
// It is safe to call more than once.
func (s *MirrorStage) Close() {
	for {
		v := s.state.Load()
		if v&closedBit != 0 {
			break
		}
		if s.state.CompareAndSwap(v, v|closedBit) {
			if v == 0 {
				close(s.done)
			}
			break
		}
	}
	s.cancel()
	<-s.done
}

// InFlight reports the number of copies running now.
func (s *MirrorStage) InFlight() int {
	return int(s.state.Load() &^ closedBit)
}

// acquire takes a slot for a copy; false when the stage is full or closed.
func (s *MirrorStage) acquire() (ok, closed bool) {
	for {
		v := s.state.Load()
		if v&closedBit != 0 {
			return false, true
		}
		if v >= s.maxFlight {
			return false, false
		}
		if s.state.CompareAndSwap(v, v+1) {
			return true, false
		}
	}
}

func (s *MirrorStage) release() {
	if s.state.Add(-1) == closedBit {
		close(s.done)
	}
}

// chosen decides whether r is copied.
func (s *MirrorStage) chosen(r *http.Request) bool {
	if s.threshold == 0 {
		return false
	}
	if s.threshold >= mirrorScale {
		return true
	}
	if k, ok := s.key.Value(r); ok {
		d := s.salt
		_, _ = d.WriteString(k)
		return d.Sum64()%mirrorScale < s.threshold
	}
	return rand.Uint64N(mirrorScale) < s.threshold
}

func incr(c prometheus.Counter) {
	if c != nil {
		c.Inc()
	}
}

type mirrorHandler struct {
	s    *MirrorStage
	next http.Handler
}

func (h *mirrorHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s := h.s
	if !s.chosen(r) || r.Header["Upgrade"] != nil || r.Method == http.MethodConnect {
		h.next.ServeHTTP(w, r)
		return
	}
	if s.state.Load()&closedBit != 0 {
		h.next.ServeHTTP(w, r)
		return
	}
	if r.ContentLength > s.maxBody {
		incr(s.skipped)
		h.next.ServeHTTP(w, r)
		return
	}
	shadow, info := s.copyRequest(r)
	if r.Body == nil || r.Body == http.NoBody {
		s.send(shadow, info, nil)
		h.next.ServeHTTP(w, r)
		return
	}

	tee := &teeBody{ReadCloser: r.Body, max: s.maxBody}
	if r.ContentLength > 0 {
		tee.buf.Grow(int(r.ContentLength))
	}
	primary := r.WithContext(r.Context())
	primary.Body = tee
	h.next.ServeHTTP(w, primary)
	body, complete := tee.result()
	if !complete {
		incr(s.skipped)
		return
	}
	s.send(shadow, info, body)
}

// copyRequest clones r and forks its Info for the shadow, before later
// stages edit them. The shadow's context is set when it starts.
func (s *MirrorStage) copyRequest(r *http.Request) (*http.Request, *Info) {
	c := r.Clone(context.Background())
	c.Header[MirrorHeader] = []string{"1"}
	c.RequestURI = ""
	c.Body = http.NoBody
	c.GetBody = nil
	c.ContentLength = 0
	return c, InfoFrom(r).Fork()
}

// send starts the copy unless MaxInFlight copies are running. It never
// blocks.
func (s *MirrorStage) send(shadow *http.Request, info *Info, body []byte) {
	ok, closed := s.acquire()
	if closed {
		return
	}
	if !ok {
		incr(s.dropped)
		return
	}
	if len(body) > 0 {
		shadow.ContentLength = int64(len(body))
		shadow.Body = io.NopCloser(bytes.NewReader(body))
		shadow.GetBody = func() (io.ReadCloser, error) {
			return io.NopCloser(bytes.NewReader(body)), nil
		}
	}
	go s.run(shadow, info)
}

func (s *MirrorStage) run(shadow *http.Request, info *Info) {
	defer s.release()
	ctx, cancel := context.WithTimeout(s.ctx, s.timeout)
	defer cancel()
	shadow = shadow.WithContext(ContextWithInfo(ctx, info))

	dw := &discardWriter{header: make(http.Header)}
	ok := func() (ok bool) {
		defer func() {
			if recover() != nil {
				ok = false
			}
		}()
		s.handler.ServeHTTP(dw, shadow)
		return dw.status() < 500 && ctx.Err() == nil
	}()
	if ok {
		incr(s.sent)
	} else {
		incr(s.failed)
	}
}

// teeBody keeps what the primary reads, up to max bytes. It locks because
// an http.Transport may still read a request body on its own goroutine after
// RoundTrip returned (when the upstream answered early).
type teeBody struct {
	io.ReadCloser
	max  int64
	mu   sync.Mutex
	buf  bytes.Buffer
	over bool
	eof  bool
}

// result returns the body and whether it was read to its end within max.
// Once the end was read the buffer no longer changes.
func (t *teeBody) result() ([]byte, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.over || !t.eof {
		return nil, false
	}
	return t.buf.Bytes(), true
}

func (t *teeBody) Read(p []byte) (int, error) {
	n, err := t.ReadCloser.Read(p)
	t.mu.Lock()
	defer t.mu.Unlock()
	if n > 0 && !t.over {
		if int64(t.buf.Len()+n) > t.max {
			t.over = true
			t.buf = bytes.Buffer{}
		} else {
			t.buf.Write(p[:n])
		}
	}
	if err == io.EOF {
		t.eof = true
	}
	return n, err
}

// discardWriter is the shadow's ResponseWriter: it keeps the status and
// throws the rest away.
type discardWriter struct {
	header http.Header
	code   int
}

func (d *discardWriter) Header() http.Header { return d.header }

func (d *discardWriter) WriteHeader(code int) {
	if d.code == 0 && code >= 200 {
		d.code = code
	}
}

func (d *discardWriter) Write(b []byte) (int, error) {
	if d.code == 0 {
		d.code = http.StatusOK
	}
	return len(b), nil
}

// Flush lets handlers that flush (a streaming proxy) run unchanged.
func (d *discardWriter) Flush() {}

func (d *discardWriter) status() int {
	if d.code == 0 {
		return http.StatusOK
	}
	return d.code
}

var (
	_ Stage        = (*MirrorStage)(nil)
	_ http.Flusher = (*discardWriter)(nil)
)
