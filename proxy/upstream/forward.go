package upstream

import (
	"context"
	"errors"
	"net"
	"net/http"

	"sekisho/http1"
	"sekisho/router"
)

// The direct path forwards the requests that make up most proxy traffic
// without httputil.ReverseProxy: a bodyless GET, HEAD or OPTIONS to an
// HTTP/1.1 pool whose answer is a plain one, over http1.Transport's
// Forward, which writes the request head with the same rewriting
// ReverseProxy and Pool.rewrite do and relays the answer from the upstream
// connection's buffer. Whatever answer is not plain is handed to
// ReverseProxy, already received, so that every unusual case runs through
// the one forwarder that handles it all.

// prepared is an answer the direct path received but does not forward
// itself: Pool.RoundTrip hands it to ReverseProxy instead of sending the
// request again.
type prepared struct {
	resp *http.Response
	t    *member // the target that answered
}

type preparedKey struct{}

// forward serves r on the direct path, with the retries of try.
func (p *Pool) forward(w http.ResponseWriter, r *http.Request, info *router.Info) {
	ctx := r.Context()
	fwd := p.forwardedFor(r, info)
	var a http1.Answer
	t, err := p.try(r, info, nil, func(t *member, tctx context.Context) (int, error) {
		var err error
		if a, err = p.direct.Forward(tctx, r, t.scheme, t.addr, &fwd); err != nil {
			return 0, err
		}
		if a.Response != nil {
			return a.Response.StatusCode, nil
		}
		return a.Status, nil
	}, func(t *member) {
		if a.Response != nil {
			discard(a.Response.Body)
		} else {
			a.Discard()
		}
		a = http1.Answer{}
		t.ep.End()
	})
	switch {
	case err != nil:
		p.errorHandler(w, r, err)
	case a.Response != nil:
		p.relayPrepared(w, r, a.Response, t)
	default:
		t.stick(w.Header(), r.Header)
		err := a.Relay(ctx, w)
		t.ep.End()
		if err != nil {
			var idle *http1.BodyIdleError
			if errors.As(err, &idle) {
				p.bodyTimeouts.Inc()
			}
			// The head has gone: the client's answer can only be cut, as
			// ReverseProxy cuts it.
			panic(http.ErrAbortHandler)
		}
	}
}

// relayPrepared lets ReverseProxy forward an answer the direct path has
// already received from target t.
func (p *Pool) relayPrepared(w http.ResponseWriter, r *http.Request, resp *http.Response, t *member) {
	ctx := context.WithValue(r.Context(), preparedKey{}, &prepared{resp: resp, t: t})
	p.proxy.ServeHTTP(w, r.WithContext(ctx))
}

// takePrepared returns the answer waiting for out, if any, with its body
// set to end the endpoint's in-flight count.
func (p *Pool) takePrepared(out *http.Request) (*http.Response, bool) {
	pr, ok := out.Context().Value(preparedKey{}).(*prepared)
	if !ok || pr.resp == nil {
		return nil, false
	}
	resp := pr.resp
	pr.resp = nil // a retry by ReverseProxy, were there one, must not reuse it
	resp.Body = p.wrapBody(resp.Body, pr.t)
	pr.t.stick(resp.Header, out.Header)
	return resp, true
}

// forwardedFor returns the forwarding headers the upstream gets for in:
// the one place that computes them, for the direct path (written by
// http1.Transport) and for ReverseProxy (set by setForwarded). The client's
// own Forwarded and X-Forwarded-* are never passed on: X-Forwarded-For is
// the chain the listener believed (router.Info.ForwardedFor: from the
// client to the peer, only what trusted proxies vouched for) or the peer
// alone; X-Forwarded-Proto is the listener's scheme, or a trusted peer's
// X-Forwarded-Proto; X-Forwarded-Host is the Host. Forwarded, when the
// pool sends it, says the same in RFC 7239's form; X-Real-IP, when the
// pool sets it, is the resolved client address.
func (p *Pool) forwardedFor(in *http.Request, info *router.Info) http1.Forwarded {
	var f http1.Forwarded
	peer := in.RemoteAddr
	if host, _, err := net.SplitHostPort(peer); err == nil {
		peer = host
	}
	trusted := info != nil && info.TrustedPeer
	f.For = peer
	if info != nil && info.ForwardedFor != "" {
		f.For = info.ForwardedFor
	}
	f.Host = in.Host
	switch {
	case in.TLS != nil:
		f.Proto = "https"
	case trusted && in.Header.Get("X-Forwarded-Proto") != "":
		f.Proto = in.Header.Get("X-Forwarded-Proto")
	default:
		f.Proto = "http"
	}
	if p.forwarded {
		f.RFC7239 = rfc7239(f.For, f.Host, f.Proto)
	}
	if p.setRealIP {
		f.RealIP = peer
		if info != nil && info.ClientIP != "" {
			f.RealIP = info.ClientIP
		}
	}
	return f
}

// setForwarded writes forwardedFor's headers on out, which ReverseProxy
// has already stripped of the client's Forwarded and X-Forwarded-*.
func (p *Pool) setForwarded(in, out *http.Request) {
	fwd := p.forwardedFor(in, router.InfoFrom(in))
	// One allocation holds the values; each header gets a slice of it
	// with no spare capacity, so an Add elsewhere copies instead of
	// writing over a neighbour.
	vals := []string{fwd.For, fwd.Host, fwd.Proto, fwd.RFC7239, fwd.RealIP}
	out.Header["X-Forwarded-For"] = vals[0:1:1]
	out.Header["X-Forwarded-Host"] = vals[1:2:2]
	out.Header["X-Forwarded-Proto"] = vals[2:3:3]
	if fwd.RFC7239 != "" {
		out.Header["Forwarded"] = vals[3:4:4]
	}
	if fwd.RealIP != "" {
		out.Header["X-Real-Ip"] = vals[4:5:5]
	}
}
