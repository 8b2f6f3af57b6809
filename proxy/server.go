package proxy

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"sekisho/proxy/config"
	"sekisho/router"
)

// Server serves the listeners of the config in force. It holds the current
// Runtime behind an atomic pointer, so a request reads it without a lock,
// and swaps it on Apply without closing a socket that the new config still
// listens on. Each request holds a reference on the Runtime it started
// with; a Runtime that is no longer in force closes when its last request
// ends. Its methods are safe for concurrent use.
type Server struct {
	shared *Shared
	log    *zap.Logger
	rt     atomic.Pointer[Runtime]

	mu        sync.Mutex // serialises Apply and Shutdown
	listeners map[string]*boundListener
	// ctx ends when the Server stops for good. It is the parent of every
	// Runtime's probes, of the certificate watches and of every request,
	// so that cancelling it when Shutdown's grace period is over also ends
	// upgraded connections, which no http.Server keeps track of.
	ctx      context.Context
	cancel   context.CancelFunc
	draining atomic.Bool
	// retiring counts what Shutdown must wait for: every Runtime from the
	// moment Apply puts it in force until it has closed, every serve loop,
	// every replaced server until it has drained, every removed socket.
	// Only Apply adds to it, under mu, so Shutdown's Wait never races an Add.
	retiring sync.WaitGroup
}

// boundListener is a socket with the http.Server currently serving it.
type boundListener struct {
	name    string
	addr    string
	sock    *socket
	srv     *frontServer
	view    *view
	handler *listenerHandler
	sig     string
	tls     *dynamicTLS // nil for a plain listener
}

// forcedStopWait bounds how long Shutdown waits for requests it cancelled
// at the end of the grace period.
const forcedStopWait = 5 * time.Second

// reloadWarmLimit bounds how long a reload waits for the first resolution
// of a dns:// or dns+srv:// target the config in force did not have,
// before it puts the new config in force anyway (the pool then fills in
// when the answer comes). A target the config in force has is shared and
// costs no wait.
const reloadWarmLimit = 5 * time.Second

// errShuttingDown refuses an Apply once Shutdown has begun.
var errShuttingDown = errors.New("shutting down")

// NewServer returns a Server that has no config yet; Apply gives it one.
func NewServer(shared *Shared) *Server {
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{shared: shared, log: shared.Log, listeners: map[string]*boundListener{}, ctx: ctx, cancel: cancel}
}

// Runtime returns the Runtime in force, or nil before the first Apply and
// after Shutdown. It holds no reference: use it to inspect, not to serve.
func (s *Server) Runtime() *Runtime { return s.rt.Load() }

// Addr returns the bound address of the listener named name (useful when
// the config asks for port 0), or nil.
func (s *Server) Addr(name string) net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, l := range s.listeners {
		if l.name == name {
			return l.sock.ln.Addr()
		}
	}
	return nil
}

// Draining reports whether Shutdown has begun.
func (s *Server) Draining() bool { return s.draining.Load() }

// Apply compiles cfg, opens the sockets it adds, starts its probes and puts
// it in force. Sockets whose address is unchanged keep their connections;
// removed ones stop accepting and drain. The previous Runtime is closed once
// its last request ends. On any error nothing changes: the Runtime in force
// keeps serving and the shared state (endpoint health, transports, shard
// rings) is left as it was, as far as Compile allows.
func (s *Server) Apply(cfg *config.Config) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.draining.Load() {
		return errShuttingDown
	}
	c, err := s.claim(cfg)
	if err != nil {
		return err
	}
	cur := s.rt.Load()
	rt, err := Compile(cfg, s.shared)
	if err != nil {
		c.release()
		// Compile registered the endpoints it met before it failed.
		s.retain(cur)
		return fmt.Errorf("compiling config: %w", err)
	}
	rt.access = c.access
	s.retiring.Add(1) // done by closeRuntime
	rt.commit()
	rt.Start(s.ctx)
	if cur != nil {
		rt.warm(reloadWarmLimit)
	}

	// A listener the new config drops keeps serving the requests that
	// still arrive on its open connections with the Runtime that had it.
	removed := map[string]bool{}
	for addr, bl := range s.listeners {
		if !listensOn(cfg, addr) {
			removed[addr] = true
			if cur != nil && cur.acquire() {
				bl.handler.pinned.Store(cur)
			}
		}
	}
	old := s.rt.Swap(rt)
	for i := range cfg.Listeners {
		lc := &cfg.Listeners[i]
		sig := listenerSignature(lc)
		bl := s.listeners[lc.Listen]
		if bl != nil {
			bl.sock.setLimit(newConnLimit(lc, s.shared.Metrics)) // max_connections may change without a new server
		}
		switch {
		case bl == nil:
			bl = &boundListener{addr: lc.Listen, sock: c.sockets[lc.Listen]}
			s.listeners[lc.Listen] = bl
		case bl.sig == sig:
			s.setTLS(bl, c.tls[lc.Listen], lc.TLS != nil)
			continue
		default:
			// Settings of the http.Server changed: a new server takes the
			// socket, the old one finishes the connections it has.
			s.retireServer(bl)
		}
		bl.name = lc.Name
		s.setTLS(bl, c.tls[lc.Listen], lc.TLS != nil)
		s.serve(bl, lc, sig)
	}
	for addr := range removed {
		bl := s.listeners[addr]
		delete(s.listeners, addr)
		bl.sock.ln.Close() // refuse new connections at once
		s.retireServer(bl)
		s.setTLS(bl, nil, false)
		s.retiring.Add(1)
		go func() {
			defer s.retiring.Done()
			bl.sock.close()
		}()
	}
	if old != nil {
		s.releaseRuntime(old)
	}
	s.retain(rt)
	return nil
}

func listensOn(cfg *config.Config, addr string) bool {
	for i := range cfg.Listeners {
		if cfg.Listeners[i].Listen == addr {
			return true
		}
	}
	return false
}

// claim is what Apply takes before it compiles: everything that can fail
// on a busy port, a certificate or an access log file, so that such a
// failure happens before Compile has touched any shared state.
type claim struct {
	sockets map[string]*socket   // by address: the ones cfg adds
	tls     map[string]*tlsState // by address: new or changed tls sections
	access  *accessLog           // nil when off
}

func (s *Server) claim(cfg *config.Config) (*claim, error) {
	c := &claim{sockets: map[string]*socket{}, tls: map[string]*tlsState{}}
	for i := range cfg.Listeners {
		lc := &cfg.Listeners[i]
		bl := s.listeners[lc.Listen]
		if bl == nil {
			sock, err := listenSocket(lc.Listen, newConnLimit(lc, s.shared.Metrics))
			if err != nil {
				c.release()
				return nil, fmt.Errorf("listener %q: %w", lc.Name, err)
			}
			c.sockets[lc.Listen] = sock
		}
		// The TLS state carries the listener's name into its metrics, so a
		// rename rebuilds it too.
		if lc.TLS == nil || (bl != nil && bl.tls != nil && bl.name == lc.Name && bl.tls.cur.Load().sig == tlsSignature(lc.TLS)) {
			continue
		}
		st, err := s.newTLSState(lc.Name, lc.TLS)
		if err != nil {
			c.release()
			return nil, fmt.Errorf("listener %q: %w", lc.Name, err)
		}
		c.tls[lc.Listen] = st
	}
	access, err := s.accessFor(cfg.Log.Access)
	if err != nil {
		c.release()
		return nil, err
	}
	c.access = access
	return c, nil
}

// release gives back what an Apply that failed had claimed.
func (c *claim) release() {
	for _, sock := range c.sockets {
		sock.close()
	}
	for _, st := range c.tls {
		st.stop()
	}
	if c.access != nil {
		c.access.release()
	}
}

// retain drops the shared state that rt does not use: the health of
// endpoints and pools it does not have, the Transports of pools it does not
// have, the shard rings it does not use. Runtimes still draining hold what
// they use directly. rt nil keeps nothing.
func (s *Server) retain(rt *Runtime) {
	if rt == nil {
		rt = &Runtime{}
	}
	// Under the discovery lock: a discovered set applied between reading
	// the pools' endpoints and Retain would otherwise lose its new
	// endpoints' state.
	s.shared.discovery.mu.Lock()
	pools := map[string][]string{}
	for name, p := range rt.pools {
		addrs := make([]string, 0, len(p.Targets()))
		for _, t := range p.Targets() {
			addrs = append(addrs, t.Addr)
		}
		pools[name] = addrs
	}
	s.shared.Registry.Retain(pools)
	s.shared.discovery.mu.Unlock()
	var cfgPools map[string]*config.Pool
	if rt.cfg != nil {
		cfgPools = rt.cfg.Pools
	}
	s.shared.transports.retain(cfgPools)
	s.shared.rings.retain(rt)
}

// setTLS puts a new TLS state in force for bl's new handshakes (st nil with
// on keeps the current one) and stops the state it replaces.
func (s *Server) setTLS(bl *boundListener, st *tlsState, on bool) {
	if !on {
		if bl.tls != nil {
			old := bl.tls.cur.Load()
			old.stop()
			s.forgetCerts(old, nil)
			bl.tls = nil
		}
		return
	}
	if st == nil {
		return
	}
	if bl.tls == nil {
		bl.tls = &dynamicTLS{}
	}
	if old := bl.tls.cur.Swap(st); old != nil {
		old.stop()
		s.forgetCerts(old, st)
	}
}

// forgetCerts deletes the expiry series of old's certificates that cur (the
// state replacing it, or nil) does not serve, so that a removed certificate
// stops alerting.
func (s *Server) forgetCerts(old, cur *tlsState) {
	keep := map[string]bool{}
	if cur != nil && cur.listener == old.listener {
		cur.mu.Lock()
		for name := range cur.expiry {
			keep[name] = true
		}
		cur.mu.Unlock()
	}
	old.mu.Lock()
	defer old.mu.Unlock()
	for name := range old.expiry {
		if !keep[name] {
			s.shared.Metrics.CertExpiry.DeleteLabelValues(old.listener, name)
		}
	}
}

// listenerSignature covers the settings that live in the http.Server and
// its listener wrappers (the name labels their logs and metrics): when they
// change, a new server takes over the socket.
func listenerSignature(lc *config.Listener) string {
	return fmt.Sprintf("%s|%v|%d|%v|%v|%v", lc.Name, lc.Timeouts, lc.MaxHeaderBytes, lc.ProxyProtocol, lc.ClientIP.TrustedProxies, lc.TLS != nil)
}

func (s *Server) serve(bl *boundListener, lc *config.Listener, sig string) {
	h := &listenerHandler{s: s, addr: lc.Listen}
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetHTTP2(true)
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: lc.Timeouts.ReadHeader.D(),
		ReadTimeout:       lc.Timeouts.Read.D(),
		WriteTimeout:      lc.Timeouts.Write.D(),
		IdleTimeout:       lc.Timeouts.Idle.D(),
		MaxHeaderBytes:    h2HeaderHardBound(lc.MaxHeaderBytes), // it serves only HTTP/2; h2Entry answers 431 past max_header_bytes
		ErrorLog:          log.New(&serverLogWriter{s: s, listener: lc.Name}, "", 0),
		Protocols:         &protos,
		BaseContext:       func(net.Listener) context.Context { return s.ctx },
		// Each connection gets a slot for the Info of its request in flight.
		ConnContext: func(ctx context.Context, _ net.Conn) context.Context {
			return router.ContextWithSlot(ctx, &router.InfoSlot{})
		},
	}
	v := newView(bl.sock)
	ln := s.wrapListener(v, lc, bl)
	fs := newFrontServer(s, lc, h, srv, v.Addr())
	bl.srv, bl.view, bl.handler, bl.sig = fs, v, h, sig
	s.retiring.Add(1)
	go func() {
		defer s.retiring.Done()
		if err := fs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
			s.log.Error("listener stopped", zap.String("listener", lc.Name), zap.Error(err))
		}
	}()
}

// retireServer stops bl's current server from accepting and lets its
// connections finish in the background; upgraded connections run on until
// they end, or until Shutdown's grace period is over. A Runtime pinned to
// the server for a removed listener is released once it has drained.
func (s *Server) retireServer(bl *boundListener) {
	srv, h := bl.srv, bl.handler
	bl.view.Close()
	s.retiring.Add(1)
	go func() {
		defer s.retiring.Done()
		if err := srv.Shutdown(s.ctx); err != nil {
			srv.Close()
		}
		if pin := h.pinned.Load(); pin != nil {
			s.releaseRuntime(pin)
		}
	}()
}

// releaseRuntime drops one reference on rt; the last one closes it.
func (s *Server) releaseRuntime(rt *Runtime) {
	if rt.release() {
		s.closeRuntime(rt)
	}
}

// closeRuntime closes rt off the request path. Its retiring.Done balances
// the Add that Apply made when it put rt in force.
func (s *Server) closeRuntime(rt *Runtime) {
	go func() {
		defer s.retiring.Done()
		rt.Close()
		if rt.access != nil {
			rt.access.release()
		}
	}()
}

// acquire returns the Runtime in force with a reference held for one
// request, or nil after Shutdown. A Runtime whose last reference is gone
// refuses the reference; by then the pointer has moved on, so the loop
// reads it again.
func (s *Server) acquire() *Runtime {
	for {
		rt := s.rt.Load()
		if rt == nil || rt.acquire() {
			return rt
		}
	}
}

// Shutdown stops accepting on every listener (new connections are refused),
// lets in-flight requests finish until ctx ends, upgraded connections and
// the connections of replaced or removed listeners included, then cancels
// and closes what is left, stops every Runtime and waits for all goroutines
// the Server started. It returns an error when it had to cut requests.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.draining.Store(true)
	var wg sync.WaitGroup
	var errs []error
	var errMu sync.Mutex
	for addr, bl := range s.listeners {
		delete(s.listeners, addr)
		bl.sock.ln.Close()
		bl.view.Close()
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := bl.srv.Shutdown(ctx); err != nil {
				bl.srv.Close()
				errMu.Lock()
				errs = append(errs, fmt.Errorf("listener %q: %w", bl.name, err))
				errMu.Unlock()
			}
			bl.sock.close()
		}()
		s.setTLS(bl, nil, false)
	}
	wg.Wait()
	if rt := s.rt.Swap(nil); rt != nil {
		s.releaseRuntime(rt)
	}
	if err := s.waitRetiring(ctx); err != nil {
		errs = append(errs, err)
	}
	s.cancel()
	s.shared.transports.closeAll()
	return errors.Join(errs...)
}

// waitRetiring waits until every Runtime has closed and every replaced
// server has drained, that is until every request has ended. When ctx ends
// first, it cancels the requests left and waits a little for them.
func (s *Server) waitRetiring(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		s.retiring.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	s.cancel()
	t := time.NewTimer(forcedStopWait)
	defer t.Stop()
	select {
	case <-done:
		return fmt.Errorf("cut the requests still running at the end of the grace period: %w", ctx.Err())
	case <-t.C:
		return fmt.Errorf("requests still running %s after they were cancelled: %w", forcedStopWait, ctx.Err())
	}
}
