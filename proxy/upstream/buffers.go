package upstream

import "net/http/httputil"

// BufferPool lends ReverseProxy its 32 KiB copy buffers from a bounded
// free list (1024 buffers). A channel of slices rather than a sync.Pool:
// putting a slice into a sync.Pool boxes its header, an allocation per
// request. It is safe for concurrent use; one can serve every pool of the
// process (Options.Buffers).
type BufferPool struct{ free chan []byte }

var _ httputil.BufferPool = (*BufferPool)(nil)

// NewBufferPool returns an empty BufferPool.
func NewBufferPool() *BufferPool { return &BufferPool{free: make(chan []byte, 1024)} }

// Get returns a free buffer, or a new one.
func (b *BufferPool) Get() []byte {
	select {
	case buf := <-b.free:
		return buf
	default:
		return make([]byte, 32<<10)
	}
}

// Put keeps buf for a later Get, unless it is too small or the free list is
// full.
func (b *BufferPool) Put(buf []byte) {
	if cap(buf) < 32<<10 {
		return
	}
	select {
	case b.free <- buf[:32<<10]:
	default: // full: let the GC have it
	}
}
