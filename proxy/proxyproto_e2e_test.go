package proxy

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// proxyV1 is the text header an L4 balancer sends for a TCP client.
func proxyV1(src, dst netip.AddrPort) []byte {
	proto := "TCP4"
	if src.Addr().Is6() {
		proto = "TCP6"
	}
	return fmt.Appendf(nil, "PROXY %s %s %s %d %d\r\n", proto, src.Addr(), dst.Addr(), src.Port(), dst.Port())
}

// proxyV2 is the binary header of a PROXY command over TCP, written by hand
// from the specification: signature, version 2 and command PROXY, family,
// length, then source and destination addresses and ports.
func proxyV2(src, dst netip.AddrPort) []byte {
	b := []byte("\r\n\r\n\x00\r\nQUIT\n")
	b = append(b, 0x21) // version 2, PROXY
	if src.Addr().Is4() {
		b = append(b, 0x11) // TCP over IPv4
		b = binary.BigEndian.AppendUint16(b, 12)
	} else {
		b = append(b, 0x21) // TCP over IPv6
		b = binary.BigEndian.AppendUint16(b, 36)
	}
	b = append(b, src.Addr().AsSlice()...)
	b = append(b, dst.Addr().AsSlice()...)
	b = binary.BigEndian.AppendUint16(b, src.Port())
	return binary.BigEndian.AppendUint16(b, dst.Port())
}

// rawGet opens a connection to addr, writes prefix and then a GET of path,
// and reads the answer. It never fails the test.
func rawGet(addr string, prefix []byte, path string) outcome {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return outcome{err: err}
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	msg := append(append([]byte{}, prefix...), "GET "+path+" HTTP/1.1\r\nHost: sekisho.test\r\nConnection: close\r\n\r\n"...)
	if _, err := conn.Write(msg); err != nil {
		return outcome{err: err}
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return outcome{err: err}
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return outcome{status: resp.StatusCode, err: err}
	}
	return outcome{status: resp.StatusCode, name: resp.Header.Get("X-Echo-Name")}
}

func TestProxyProtocolEndToEnd(t *testing.T) {
	noLeaks(t)
	bs := map[string]*backend{}
	for _, n := range []string{"a", "b", "c"} {
		bs[n] = newBackend(t, n)
	}
	td := startPoolDaemon(t, fmt.Sprintf(`
version: 1
admin: {listen: "127.0.0.1:0"}
log: {access: "{{ACCESS}}"}
listeners:
  - name: pp
    listen: 127.0.0.1:0
    proxy_protocol: true
    client_ip: {trusted_proxies: [127.0.0.1/32]}
    routes: [{name: all, pipeline: [{proxy: web}]}]
  - name: xff
    listen: 127.0.0.2:0 # two listeners may not share 127.0.0.1:0
    client_ip: {trusted_proxies: [127.0.0.0/8]}
    routes: [{name: all, pipeline: [{proxy: web}]}]
pools:
  web:
    endpoints: [%s, %s, %s]
    balance: ip_hash
`, bs["a"].addr(), bs["b"].addr(), bs["c"].addr()))
	ppAddr := td.d.Server().Addr("pp").String()
	xffBase := td.url("xff")
	dst := netip.MustParseAddrPort("192.0.2.1:443")

	cases := []struct {
		name   string
		header func(src, dst netip.AddrPort) []byte
		src    string
	}{
		{"v1 IPv4", proxyV1, "203.0.113.7:56324"},
		{"v1 IPv6", proxyV1, "[2001:db8::7]:40000"},
		{"v2 IPv4", proxyV2, "198.51.100.9:4242"},
		{"v2 IPv6", proxyV2, "[2001:db8:1::9]:8080"},
	}
	for i, tc := range cases {
		t.Run(tc.name+" carries the client address", func(t *testing.T) {
			src := netip.MustParseAddrPort(tc.src)
			dstPort := dst
			if src.Addr().Is6() {
				dstPort = netip.MustParseAddrPort("[2001:db8::1]:443")
			}
			path := fmt.Sprintf("/client/%d", i)
			o := rawGet(ppAddr, tc.header(src, dstPort), path)
			require.NoError(t, o.err)
			require.Equal(t, http.StatusOK, o.status)
			seen := bs[o.name].lastRequest()
			require.NotNil(t, seen)
			assert.Equal(t, path, seen.URL.Path)
			assert.Equal(t, src.Addr().String(), seen.Header.Get("X-Forwarded-For"),
				"the PROXY source is the client, and the balancer's own address is not passed on")
			var line map[string]any
			for _, l := range td.accessLines(i + 1) {
				if l["path"] == path {
					line = l
				}
			}
			require.NotNil(t, line, "no access log line for %s", path)
			assert.Equal(t, src.Addr().String(), line["client_ip"])
			assert.Equal(t, "pp", line["listener"])
		})
	}

	t.Run("ip_hash places a PROXY client as it places the same address from X-Forwarded-For", func(t *testing.T) {
		viaPP := map[string]int{}
		for i := 0; i < 30; i++ {
			ip := netip.AddrFrom4([4]byte{203, 0, 113, byte(10 + i)})
			o := rawGet(ppAddr, proxyV2(netip.AddrPortFrom(ip, 50000), dst), "/hash")
			require.NoError(t, o.err)
			require.Equal(t, http.StatusOK, o.status)
			again := rawGet(ppAddr, proxyV1(netip.AddrPortFrom(ip, 50001), dst), "/hash")
			require.NoError(t, again.err)
			assert.Equal(t, o.name, again.name, "client %s moved between two connections", ip)
			resp, _ := td.get(xffBase+"/hash", "X-Forwarded-For", ip.String())
			assert.Equal(t, o.name, resp.Header.Get("X-Echo-Name"), "client %s", ip)
			viaPP[o.name]++
		}
		assert.Len(t, viaPP, 3, "30 clients spread over every endpoint: %v", viaPP)
	})

	malformed := []struct {
		name   string
		header []byte
	}{
		{"v1 with a bad address", []byte("PROXY TCP4 203.0.113.300 192.0.2.1 56324 443\r\n")},
		{"v1 without CRLF", []byte("PROXY TCP4 203.0.113.7 192.0.2.1 56324 443\n")},
		{"v2 of an unknown version", append([]byte("\r\n\r\n\x00\r\nQUIT\n"), 0x31, 0x11, 0, 12, 203, 0, 113, 7, 192, 0, 2, 1, 0xdc, 0x04, 0x01, 0xbb)},
		{"v2 whose length is shorter than its addresses", append([]byte("\r\n\r\n\x00\r\nQUIT\n"), 0x21, 0x11, 0, 4, 203, 0, 113, 7)},
	}
	for _, tc := range malformed {
		t.Run(tc.name+" closes the connection", func(t *testing.T) {
			before := td.metric("sekisho_proxy_protocol_errors_total", "listener", "pp")
			hits := bs["a"].hits.Load() + bs["b"].hits.Load() + bs["c"].hits.Load()
			o := rawGet(ppAddr, tc.header, "/bad")
			assert.Error(t, o.err, "a response came back: %d", o.status)
			assert.Zero(t, o.status)
			assert.Equal(t, hits, bs["a"].hits.Load()+bs["b"].hits.Load()+bs["c"].hits.Load())
			want := max(before, 0) + 1 // the series is absent (-1) before the first error
			require.Eventually(t, func() bool {
				return metricNow(td, "sekisho_proxy_protocol_errors_total", "listener", "pp") == want
			}, 5*time.Second, 10*time.Millisecond)
		})
	}
}
