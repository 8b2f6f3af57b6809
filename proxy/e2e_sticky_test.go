package proxy

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"sekisho/proxy/upstream"
)

// The tests of this file prove cookie affinity (issue 16) end to end: a
// real daemon, real backends, clients that keep the cookies they are given
// as a browser does.

// stickyClient is one browser: it sends back the affinity cookie it was
// last given.
type stickyClient struct {
	td     *testDaemon
	cookie string // "SRV=value", or ""
}

// stickyAnswer is what a stickyClient saw of one answer.
type stickyAnswer struct {
	status int
	name   string // the backend that answered
	set    string // the SRV Set-Cookie's "SRV=value", or ""
	err    error
}

// do sends a request to url (a POST with a body, which takes the
// ReverseProxy path, when post), keeping any SRV cookie it is given. It
// never fails the test, so that worker goroutines may call it.
func (c *stickyClient) do(url string, post bool) stickyAnswer {
	req := mustRequest(http.MethodGet, url, nil)
	if post {
		req = mustRequest(http.MethodPost, url, strings.NewReader("body"))
	}
	if c.cookie != "" {
		req.Header.Set("Cookie", "theme=dark; "+c.cookie)
	}
	resp, err := c.td.client.Do(req)
	if err != nil {
		return stickyAnswer{err: err}
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return stickyAnswer{err: err}
	}
	a := stickyAnswer{status: resp.StatusCode, name: resp.Header.Get("X-Echo-Name")}
	for _, sc := range resp.Header.Values("Set-Cookie") {
		if strings.HasPrefix(sc, "SRV=") {
			a.set, _, _ = strings.Cut(sc, ";")
			c.cookie = a.set
		}
	}
	return a
}

// rounds has each client send n requests, one after the other, the
// clients at once; every fourth request is a POST. It returns the answers
// by client.
func rounds(t *testing.T, clients []*stickyClient, url string, n int) [][]stickyAnswer {
	t.Helper()
	out := make([][]stickyAnswer, len(clients))
	var wg sync.WaitGroup
	for i, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range n {
				out[i] = append(out[i], c.do(url, k%4 == 3))
			}
		}()
	}
	wg.Wait()
	for i, as := range out {
		for k, a := range as {
			require.NoError(t, a.err, "client %d, request %d", i, k)
			require.Equal(t, http.StatusOK, a.status, "client %d, request %d", i, k)
		}
	}
	return out
}

const stickyKey = "an-affinity-key-of-at-least-32-bytes"

func TestStickyCookieKeepsClientsAndMovesThemWhenTheirEndpointGoes(t *testing.T) {
	noLeaks(t)
	t.Setenv("STICKY_KEY", stickyKey)
	bs := []*backend{newBackend(t, "a"), newBackend(t, "b"), newBackend(t, "c"), newBackend(t, "d")}
	td := startPoolDaemon(t, fmt.Sprintf(edgePreamble+`    routes: [{name: all, pipeline: [{proxy: web}]}]
pools:
  web:
    endpoints: [%s, %s, %s, %s]
    sticky: {cookie: SRV, ttl: 1h, key: "${STICKY_KEY}"}
    {{PROBES}}
`, bs[0].addr(), bs[1].addr(), bs[2].addr(), bs[3].addr()))
	url := td.url("edge") + "/cart"
	waitServing(t, td, "web", 1, bs...)
	byName := map[string]*backend{}
	for _, b := range bs {
		byName[b.name] = b
	}

	clients := make([]*stickyClient, 50)
	for i := range clients {
		clients[i] = &stickyClient{td: td}
	}
	home := map[*stickyClient]string{}
	per := map[string]int{}
	for i, as := range rounds(t, clients, url, 20) {
		c, first := clients[i], as[0]
		require.NotEmpty(t, first.set, "client %d: the first answer sets the cookie", i)
		b := byName[first.name]
		assert.Equal(t, "SRV="+upstream.StickyValue([]byte(stickyKey), "web", b.addr()), first.set,
			"the value is the HMAC of the endpoint under the configured key")
		_, port, _ := strings.Cut(b.addr(), ":")
		assert.NotContains(t, first.set, port, "the cookie never shows the address")
		for k, a := range as[1:] {
			assert.Equal(t, first.name, a.name, "client %d, request %d: kept on its endpoint", i, k+1)
			assert.Empty(t, a.set, "client %d, request %d: no new cookie while the endpoint is kept", i, k+1)
		}
		home[c] = first.name
		per[first.name]++
	}
	t.Logf("clients per endpoint: %v", per)
	require.Len(t, per, 4, "the first answers are balanced over every endpoint: %v", per)

	gone := bs[1]
	gone.ready.Store(false)
	waitServing(t, td, "web", 0, gone)
	before := gone.hits.Load()
	moved := 0
	for i, as := range rounds(t, clients, url, 5) {
		c, first := clients[i], as[0]
		if home[c] != gone.name {
			for k, a := range as {
				assert.Equal(t, home[c], a.name, "client %d, request %d: its endpoint is still ready", i, k)
				assert.Empty(t, a.set, "client %d, request %d", i, k)
			}
			continue
		}
		moved++
		assert.NotEqual(t, gone.name, first.name, "client %d moves", i)
		assert.Equal(t, "SRV="+upstream.StickyValue([]byte(stickyKey), "web", byName[first.name].addr()), first.set,
			"client %d gets a cookie naming its new endpoint", i)
		for k, a := range as[1:] {
			assert.Equal(t, first.name, a.name, "client %d, request %d: kept on its new endpoint", i, k+1)
			assert.Empty(t, a.set, "client %d, request %d", i, k+1)
		}
	}
	assert.Equal(t, per[gone.name], moved)
	assert.Equal(t, before, gone.hits.Load(), "an unready endpoint gets no request, cookie or not")
}

// Without probes, an endpoint whose backend has closed is found on the
// request: the attempt on it is refused, the retry goes elsewhere, and the
// answer moves the client with a new cookie.
func TestStickyCookieMovesClientsOfAClosedBackend(t *testing.T) {
	noLeaks(t)
	bs := []*backend{newBackend(t, "a"), newBackend(t, "b"), newBackend(t, "c")}
	td := startDaemon(t, fmt.Sprintf(edgePreamble+`    routes: [{name: all, pipeline: [{proxy: web}]}]
pools:
  web:
    endpoints: [%s, %s, %s]
    balance: least_request
    sticky: {cookie: SRV}
`, bs[0].addr(), bs[1].addr(), bs[2].addr()))
	url := td.url("edge") + "/cart"
	clients := make([]*stickyClient, 30)
	for i := range clients {
		clients[i] = &stickyClient{td: td}
	}
	home := map[*stickyClient]string{}
	for i, as := range rounds(t, clients, url, 5) {
		for _, a := range as {
			assert.Equal(t, as[0].name, a.name, "client %d", i)
		}
		home[clients[i]] = as[0].name
	}
	gone := bs[2]
	homed := 0
	for _, n := range home {
		if n == gone.name {
			homed++
		}
	}
	require.NotZero(t, homed, "some clients were placed on %s: %v", gone.name, home)
	gone.CloseClientConnections()
	gone.Close()
	for i, as := range rounds(t, clients, url, 5) {
		c := clients[i]
		if home[c] != gone.name {
			for _, a := range as {
				assert.Equal(t, home[c], a.name, "client %d", i)
				assert.Empty(t, a.set, "client %d", i)
			}
			continue
		}
		assert.NotEqual(t, gone.name, as[0].name)
		assert.NotEmpty(t, as[0].set, "client %d: a new cookie on the move", i)
		for _, a := range as[1:] {
			assert.Equal(t, as[0].name, a.name, "client %d", i)
			assert.Empty(t, a.set, "client %d", i)
		}
	}
}

// A cookie the proxy did not set for one of the pool's endpoints is
// ignored: the request is balanced as if it had none, and its answer sets
// a fresh cookie. No such cookie reaches a host outside the pool.
func TestStickyForgedCookiesAreIgnored(t *testing.T) {
	noLeaks(t)
	t.Setenv("STICKY_KEY", stickyKey)
	a, b := newBackend(t, "a"), newBackend(t, "b")
	outside := newBackend(t, "outside")
	td := startDaemon(t, fmt.Sprintf(edgePreamble+`    routes: [{name: all, pipeline: [{proxy: web}]}]
pools:
  web:
    endpoints: [%s, %s]
    sticky: {cookie: SRV, key: "${STICKY_KEY}"}
  other:
    endpoints: [%s]
`, a.addr(), b.addr(), outside.addr()))
	url := td.url("edge") + "/cart"
	forged := map[string]string{
		"random":                       "SRV=q3JfW0mZk4p8yTn2L7xVbA",
		"empty":                        "SRV=",
		"malformed":                    `SRV="unterminated; x=1`,
		"raw address of an endpoint":   "SRV=" + a.addr(),
		"address outside the pool":     "SRV=" + outside.addr(),
		"http URL of an outside host":  "SRV=http://" + outside.addr(),
		"HMAC of an outside address":   "SRV=" + upstream.StickyValue([]byte(stickyKey), "web", outside.addr()),
		"outside address, guessed key": "SRV=" + upstream.StickyValue([]byte("sekisho"), "web", outside.addr()),
		"endpoint, guessed key":        "SRV=" + upstream.StickyValue([]byte(strings.Repeat("0", 32)), "web", a.addr()),
		"another pool's endpoint":      "SRV=" + upstream.StickyValue([]byte(stickyKey), "other", outside.addr()),
	}
	for name, cookie := range forged {
		t.Run(name, func(t *testing.T) {
			seen := map[string]bool{}
			for k := range 6 {
				c := &stickyClient{td: td, cookie: cookie}
				got := c.do(url, k%2 == 1)
				require.NoError(t, got.err)
				require.Equal(t, http.StatusOK, got.status)
				seen[got.name] = true
				want := a
				if got.name == "b" {
					want = b
				}
				assert.Equal(t, "SRV="+upstream.StickyValue([]byte(stickyKey), "web", want.addr()), got.set,
					"a fresh cookie naming the endpoint that answered")
			}
			assert.Len(t, seen, 2, "balanced as if there were no cookie: %v", seen)
		})
	}
	assert.Zero(t, outside.hits.Load(), "no cookie reaches a host outside the pool")
	// The defaults: a session cookie, HttpOnly, SameSite=Lax.
	resp, _ := td.get(url)
	v := upstream.StickyValue([]byte(stickyKey), "web", a.addr())
	if resp.Header.Get("X-Echo-Name") == "b" {
		v = upstream.StickyValue([]byte(stickyKey), "web", b.addr())
	}
	assert.Equal(t, []string{"SRV=" + v + "; Path=/; HttpOnly; SameSite=Lax"}, resp.Header.Values("Set-Cookie"))
	// The client's Cookie header goes upstream as it came.
	c := &stickyClient{td: td, cookie: "SRV=forged"}
	c.do(url, false)
	var last *http.Request
	for _, be := range []*backend{a, b} {
		if r := be.lastRequest(); r != nil && strings.Contains(r.Header.Get("Cookie"), "SRV=forged") {
			last = r
		}
	}
	require.NotNil(t, last)
	assert.Equal(t, "theme=dark; SRV=forged", last.Header.Get("Cookie"))
}
