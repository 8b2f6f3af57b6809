package upstream

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"sekisho/health"
	"sekisho/http1"
	"sekisho/proxy/balance"
	"sekisho/proxy/metrics"
	"sekisho/router"
)

var testStickyKey = []byte("0123456789abcdef0123456789abcdef")

// stickyTestPool is a pool of n endpoints (not listening) with cookie
// affinity under testStickyKey.
func stickyTestPool(t *testing.T, policy string, n int) *Pool {
	reg := health.NewRegistry(nil)
	p := &Pool{name: "web"}
	set := &members{all: make([]member, n)}
	for i := 0; i < n; i++ {
		addr := fmt.Sprintf("127.0.0.1:%d", 9000+i)
		ep := reg.Endpoint("web", addr)
		set.targets = append(set.targets, balance.Target{Addr: addr, Weight: 1, EP: ep})
		set.all[i] = member{set: set, index: i, addr: addr, ep: ep}
	}
	var err error
	p.policy, err = balance.New(policy, router.MustParseKey("header:X-User"), 0)
	require.NoError(t, err)
	set.sticky = newSticky(&Sticky{Cookie: "srv", Key: testStickyKey}, "web", set.targets)
	p.set.Store(set)
	return p
}

func TestStickyCookieNamesOnlyThePoolsEndpoints(t *testing.T) {
	p := stickyTestPool(t, balance.RoundRobin, 3)
	v1 := StickyValue(testStickyKey, "web", "127.0.0.1:9001")
	tests := []struct {
		name   string
		cookie []string
		want   int
	}{
		{"absent", nil, -1},
		{"alone", []string{"srv=" + v1}, 1},
		{"among others", []string{"a=1; srv=" + v1 + "; b=2"}, 1},
		{"spaces", []string{"a=1;   srv=" + v1 + "  ;b"}, 1},
		{"quoted", []string{`srv="` + v1 + `"`}, 1},
		{"second header line (HTTP/2)", []string{"a=1", "srv=" + v1}, 1},
		{"first one naming an endpoint wins", []string{"srv=junk; srv=" + v1}, 1},
		{"other name", []string{"srvx=" + v1}, -1},
		{"name only", []string{"srv"}, -1},
		{"empty", []string{"srv="}, -1},
		{"random", []string{"srv=AAAAAAAAAAAAAAAAAAAAAA"}, -1},
		{"raw address", []string{"srv=127.0.0.1:9001"}, -1},
		{"address outside the pool", []string{"srv=" + StickyValue(testStickyKey, "web", "10.0.0.1:80")}, -1},
		{"same address, other pool", []string{"srv=" + StickyValue(testStickyKey, "api", "127.0.0.1:9001")}, -1},
		{"guessed key", []string{"srv=" + StickyValue([]byte("guess"), "web", "127.0.0.1:9001")}, -1},
		{"truncated", []string{"srv=" + v1[:10]}, -1},
		{"lower case name", []string{"SRV=" + v1}, -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := http.Header{}
			if tt.cookie != nil {
				h["Cookie"] = tt.cookie
			}
			assert.Equal(t, tt.want, p.set.Load().sticky.target(h))
		})
	}
}

func TestStickyValueIsOpaque(t *testing.T) {
	v := StickyValue(testStickyKey, "web", "127.0.0.1:9001")
	assert.Len(t, v, 22)
	assert.NotContains(t, v, "127")
	assert.NotEqual(t, v, StickyValue(testStickyKey, "web", "127.0.0.1:9002"))
	assert.Equal(t, v, StickyValue(testStickyKey, "web", "127.0.0.1:9001"), "the same key names an endpoint the same way everywhere")
	// The per-process key is made once: a reload keeps the values.
	p1 := newSticky(&Sticky{Cookie: "srv"}, "web", []balance.Target{{Addr: "127.0.0.1:9001"}})
	p2 := newSticky(&Sticky{Cookie: "srv"}, "web", []balance.Target{{Addr: "127.0.0.1:9001"}})
	assert.Equal(t, p1.setCookie[0], p2.setCookie[0])
	assert.NotContains(t, p1.setCookie[0][0], v)
}

func TestStickySetCookieAttributes(t *testing.T) {
	targets := []balance.Target{{Addr: "127.0.0.1:9001"}}
	v := StickyValue(testStickyKey, "web", "127.0.0.1:9001")
	tests := []struct {
		s    Sticky
		want string
	}{
		{Sticky{Cookie: "srv"}, "srv=" + v + "; Path=/"},
		{Sticky{Cookie: "srv", TTL: time.Hour, Secure: true, HTTPOnly: true, SameSite: http.SameSiteNoneMode},
			"srv=" + v + "; Path=/; Max-Age=3600; HttpOnly; Secure; SameSite=None"},
		{Sticky{Cookie: "srv", TTL: 1500 * time.Millisecond, HTTPOnly: true, SameSite: http.SameSiteLaxMode},
			"srv=" + v + "; Path=/; Max-Age=2; HttpOnly; SameSite=Lax"},
		{Sticky{Cookie: "srv", SameSite: http.SameSiteStrictMode}, "srv=" + v + "; Path=/; SameSite=Strict"},
	}
	for _, tt := range tests {
		tt.s.Key = testStickyKey
		assert.Equal(t, []string{tt.want}, newSticky(&tt.s, "web", targets).setCookie[0])
	}
}

func TestStickyPickIsTheFirstChoice(t *testing.T) {
	for _, policy := range []string{balance.RoundRobin, balance.LeastRequest, balance.Random, balance.IPHash, balance.Hash} {
		t.Run(policy, func(t *testing.T) {
			p := stickyTestPool(t, policy, 4)
			req := httptest.NewRequest(http.MethodGet, "http://x/", nil)
			req.RemoteAddr = "192.0.2.1:1234"
			req.Header.Set("X-User", "u1")
			req.Header.Set("Cookie", "srv="+StickyValue(testStickyKey, "web", "127.0.0.1:9002"))
			for range 20 {
				pk := p.picker()
				assert.Equal(t, 2, pk.pick(req, nil))
				// A retry after a failure there is an ordinary pick.
				pk.exclude(2)
				assert.NotEqual(t, 2, pk.pick(req, nil))
				pk.release()
			}
			// Another attempt of the same request (a hedge) used it already.
			tried := &router.Tried{}
			tried.Add("127.0.0.1:9002")
			info := &router.Info{ClientIP: "192.0.2.1", Tried: tried}
			pk := p.picker()
			assert.NotEqual(t, 2, pk.pick(req, info))
			pk.release()
		})
	}
}

func TestStickyPickSkipsAnUnavailableEndpoint(t *testing.T) {
	p := stickyTestPool(t, balance.RoundRobin, 3)
	req := httptest.NewRequest(http.MethodGet, "http://x/", nil)
	req.Header.Set("Cookie", "srv="+StickyValue(testStickyKey, "web", "127.0.0.1:9001"))
	pk := p.picker()
	assert.Equal(t, 1, pk.pick(req, nil))
	pk.release()
	ep := p.Targets()[1].EP
	ep.Group().SetOutlier(health.Outlier{ConsecutiveFailures: 1, Eject: time.Minute, MaxEjectedPercent: 100})
	ep.ObserveResult(false)
	require.True(t, ep.Ejected(time.Now()))
	for range 10 {
		pk := p.picker()
		assert.NotEqual(t, 1, pk.pick(req, nil))
		pk.release()
	}
}

func TestStickyPickDoesNotAllocate(t *testing.T) {
	p := stickyTestPool(t, balance.RoundRobin, 4)
	req := httptest.NewRequest(http.MethodGet, "http://x/", nil)
	req.Header.Set("Cookie", "a=b; srv="+StickyValue(testStickyKey, "web", "127.0.0.1:9003")+"; c=d")
	limit := 0.0
	if raceEnabled() {
		limit = 1
	}
	h := http.Header{}
	allocs := testing.AllocsPerRun(1000, func() {
		pk := p.picker()
		if pk.pick(req, nil) != 3 {
			panic("not the cookie's endpoint")
		}
		pk.release()
		p.set.Load().all[3].stick(h, req.Header) // named already: nothing to set
		clear(h)
		p.set.Load().all[2].stick(h, req.Header) // a move: the precomputed value
	})
	assert.LessOrEqual(t, allocs, limit)
	assert.Equal(t, p.set.Load().sticky.setCookie[2], h["Set-Cookie"])
}

// The answer carries the cookie on both forwarding paths, and only when
// the request's cookie did not name the endpoint that answered.
func TestStickySetCookieOnBothPaths(t *testing.T) {
	reg := health.NewRegistry(nil)
	var eps []Endpoint
	for i := range 3 {
		name := fmt.Sprintf("b%d", i)
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body)
			w.Header().Set("Set-Cookie", "app=1")
			io.WriteString(w, name)
		}))
		t.Cleanup(srv.Close)
		eps = append(eps, Endpoint{Addr: strings.TrimPrefix(srv.URL, "http://")})
	}
	p, err := New(Options{Name: "web", Endpoints: eps, Registry: reg, Metrics: metrics.New(),
		Transport: NewTransport(TransportOptions{MaxIdlePerEndpoint: 8}),
		Sticky:    &Sticky{Cookie: "srv", Key: testStickyKey, HTTPOnly: true}})
	require.NoError(t, err)
	p.Commit()
	srv := &http1.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.ServeHTTP(w, router.WithInfo(r, &router.Info{}))
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(ln)
	}()
	client := &http.Client{Transport: &http.Transport{}}
	t.Cleanup(func() {
		client.CloseIdleConnections()
		srv.Close()
		<-done
		p.Transport().CloseIdleConnections()
	})
	do := func(method, cookie string) (string, []string) {
		var body io.Reader
		if method == http.MethodPost {
			body = strings.NewReader("x") // a body: the ReverseProxy path
		}
		req, err := http.NewRequest(method, "http://"+ln.Addr().String()+"/", body)
		require.NoError(t, err)
		if cookie != "" {
			req.Header.Set("Cookie", cookie)
		}
		resp, err := client.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return string(b), resp.Header.Values("Set-Cookie")
	}
	for _, method := range []string{http.MethodGet, http.MethodPost} {
		t.Run(method, func(t *testing.T) {
			name, set := do(method, "")
			require.Len(t, set, 2, "the backend's cookie and the pool's")
			assert.Contains(t, set, "app=1")
			var mine string
			for _, c := range set {
				if strings.HasPrefix(c, "srv=") {
					mine = c
				}
			}
			require.NotEmpty(t, mine)
			assert.Contains(t, mine, "HttpOnly")
			value, _, _ := strings.Cut(mine, ";")
			for range 10 {
				got, set := do(method, "a=b; "+value)
				assert.Equal(t, name, got)
				assert.Equal(t, []string{"app=1"}, set, "no new cookie while the endpoint is kept")
			}
			got, set := do(method, "srv=forged")
			assert.NotEmpty(t, got)
			assert.Len(t, set, 2, "a forged cookie gets a fresh one")
		})
	}
}
