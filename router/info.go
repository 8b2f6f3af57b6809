package router

import (
	"context"
	"net/http"
	"sync"
	"time"
)

// Info is what the pipeline learns about one request as it runs: the client
// address resolved by the listener, the route, and what each stage chose. The
// access log is written from it.
//
// An Info belongs to the goroutine serving its request. A stage that runs
// branches concurrently (scatter, mirror) gives each branch its own Info with
// Fork and folds what it needs back in after the branches end.
type Info struct {
	Listener string
	Route    string
	ClientIP string // the resolved client address, without port
	// TrustedPeer is true when the connection's peer is a trusted proxy, so
	// that its forwarding headers may be passed on.
	TrustedPeer bool
	// ForwardedFor is the X-Forwarded-For chain from the client to the
	// peer that a trusted peer vouched for (see
	// ClientIPResolver.ResolveChain); "" when it is the peer alone.
	ForwardedFor string
	RequestID    string
	Start        time.Time

	Pool     string // the pool that served the request, if any
	Upstream string // the endpoint address that served it, if any
	Shard    string // set by the shard stage
	Overflow bool   // the shard stage sent the request past its owner
	Arm      string // set by split as "experiment=arm"; nested splits join with ","
	Leaves   string // set by scatter: "leaf:result:ms,..."

	// ClientCert is the verified client certificate's subject on an mTLS
	// listener.
	ClientCert string

	// Tried, when not nil, lists the endpoints already used for this logical
	// request; a pool avoids them while it has others. Retries and scatter's
	// hedges share one Tried between attempts.
	Tried *Tried
}

type infoKey struct{}

// WithInfo returns r carrying info in its context.
func WithInfo(r *http.Request, info *Info) *http.Request {
	return r.WithContext(context.WithValue(r.Context(), infoKey{}, info))
}

// ContextWithInfo returns ctx carrying info.
func ContextWithInfo(ctx context.Context, info *Info) context.Context {
	return context.WithValue(ctx, infoKey{}, info)
}

// InfoFrom returns the Info of r, or nil when r carries none (a request built
// outside the server, as in tests of a single stage).
func InfoFrom(r *http.Request) *Info {
	switch v := r.Context().Value(infoKey{}).(type) {
	case *Info:
		return v
	case *InfoSlot:
		return v.info
	}
	return nil
}

// InfoSlot holds the Info of the request in flight on one HTTP/1
// connection. A server puts a slot in each connection's context once and
// fills it per request, so that carrying the Info costs no context and no
// request copy per request. HTTP/1 serves a connection's requests one at a
// time, which is what makes this safe; HTTP/2 requests use WithInfo.
type InfoSlot struct{ info *Info }

// ContextWithSlot returns ctx carrying slot.
func ContextWithSlot(ctx context.Context, slot *InfoSlot) context.Context {
	return context.WithValue(ctx, infoKey{}, slot)
}

// SlotFrom returns the slot in r's context, or nil.
func SlotFrom(r *http.Request) *InfoSlot {
	slot, _ := r.Context().Value(infoKey{}).(*InfoSlot)
	return slot
}

// Set puts info in the slot; nil empties it.
func (s *InfoSlot) Set(info *Info) { s.info = info }

// Fork returns a copy of info for a concurrent branch of the same request.
// The copy shares nothing mutable with info except Tried, which the caller
// sets as it needs.
func (info *Info) Fork() *Info {
	if info == nil {
		return &Info{Start: time.Now()}
	}
	c := *info
	c.Tried = nil
	return &c
}

// Tried is a set of endpoint addresses used by the attempts of one logical
// request. It is safe for concurrent use.
type Tried struct {
	mu    sync.Mutex
	addrs []string
}

// Add records addr.
func (t *Tried) Add(addr string) {
	t.mu.Lock()
	t.addrs = append(t.addrs, addr)
	t.mu.Unlock()
}

// Has reports whether addr was recorded.
func (t *Tried) Has(addr string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, a := range t.addrs {
		if a == addr {
			return true
		}
	}
	return false
}

// Len reports how many addresses were recorded.
func (t *Tried) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.addrs)
}
