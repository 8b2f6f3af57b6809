package scatter_test

import (
	"encoding/json"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"sekisho/router"
)

// testPool is a leaf the way the proxy builds one: replicas behind
// httputil.ReverseProxy. Like the proxy's pools it picks the first replica
// not yet in the request's router.Tried and records its pick there, so a
// hedge provably reaches another replica. The look and the record are one
// step under mu: a first attempt and its hedge that pick at the same moment
// still go to two replicas, whichever of them the scheduler runs first.
type testPool struct {
	replicas []*replica
	mu       sync.Mutex
}

type replica struct {
	srv   *httptest.Server
	addr  string
	proxy *httputil.ReverseProxy
	// picks counts requests the pool sent to the replica; hits those that
	// reached its handler; cancels those whose context ended before the
	// handler returned.
	picks, hits, cancels atomic.Int64
}

// newTestPool starts one replica per handler on 127.0.0.1. Everything is
// closed when the test ends.
func newTestPool(t testing.TB, handlers ...http.Handler) *testPool {
	t.Helper()
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	t.Cleanup(tr.CloseIdleConnections)
	p := &testPool{}
	for _, h := range handlers {
		rp := &replica{}
		rp.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			rp.hits.Add(1)
			h.ServeHTTP(w, r)
			if r.Context().Err() != nil {
				rp.cancels.Add(1)
			}
		}))
		t.Cleanup(rp.srv.Close)
		u, err := url.Parse(rp.srv.URL)
		require.NoError(t, err)
		rp.addr = u.Host
		rp.proxy = &httputil.ReverseProxy{
			Rewrite:   func(pr *httputil.ProxyRequest) { pr.SetURL(u) },
			Transport: tr,
			ErrorLog:  log.New(io.Discard, "", 0),
			ErrorHandler: func(w http.ResponseWriter, _ *http.Request, _ error) {
				w.WriteHeader(http.StatusBadGateway)
			},
		}
		p.replicas = append(p.replicas, rp)
	}
	return p
}

func (p *testPool) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var tried *router.Tried
	if info := router.InfoFrom(r); info != nil {
		tried = info.Tried
	}
	p.mu.Lock()
	pick := p.replicas[0]
	for _, rp := range p.replicas {
		if tried == nil || !tried.Has(rp.addr) {
			pick = rp
			break
		}
	}
	if tried != nil {
		tried.Add(pick.addr)
	}
	pick.picks.Add(1)
	p.mu.Unlock()
	pick.proxy.ServeHTTP(w, r)
}

// results answers {"results": [...]} with the given elements.
func results(elems ...any) http.Handler {
	body, err := json.Marshal(map[string]any{"results": elems})
	if err != nil {
		panic(err)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	})
}

// after answers with h once d has passed, or gives up when the request is
// cancelled first; it stands for a slow replica.
func after(d time.Duration, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
			h.ServeHTTP(w, r)
		case <-r.Context().Done():
		}
	})
}

func status(code int) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(code)
	})
}

func raw(body string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte(body))
	})
}

// withInfo serves h with a router.Info in the request, as the proxy does,
// and hands the Info to got once h returned.
func withInfo(h http.Handler, got chan<- *router.Info) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		info := &router.Info{Route: "search", Start: time.Now()}
		h.ServeHTTP(w, router.WithInfo(r, info))
		got <- info
	})
}

// serve starts the stage on 127.0.0.1 behind withInfo.
func serve(t testing.TB, h http.Handler) (*httptest.Server, chan *router.Info) {
	t.Helper()
	infos := make(chan *router.Info, 64)
	srv := httptest.NewServer(withInfo(h, infos))
	t.Cleanup(srv.Close)
	return srv, infos
}

// newClient returns a client whose connections close when the test ends.
func newClient(t testing.TB) *http.Client {
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// get fetches url and reads the whole answer, timing the round trip.
func get(t testing.TB, c *http.Client, url string) (*http.Response, []byte, time.Duration) {
	t.Helper()
	start := time.Now()
	resp, err := c.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, body, time.Since(start)
}

func nextInfo(t testing.TB, infos <-chan *router.Info) *router.Info {
	t.Helper()
	select {
	case info := <-infos:
		return info
	case <-time.After(5 * time.Second):
		require.FailNow(t, "the stage did not return")
		return nil
	}
}
