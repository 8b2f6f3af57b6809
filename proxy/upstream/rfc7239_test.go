package upstream

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestRFC7239(t *testing.T) {
	tests := []struct {
		name, chain, host, proto, want string
	}{
		{"one IPv4 hop", "192.0.2.60", "example.com", "http", "for=192.0.2.60;host=example.com;proto=http"},
		{"IPv6 quoted and bracketed", "2001:db8:cafe::17, 10.0.0.1", "example.com", "https",
			`for="[2001:db8:cafe::17]";host=example.com;proto=https, for=10.0.0.1`},
		{"IPv4-mapped IPv6 is IPv6", "::ffff:192.0.2.1", "h", "http", `for="[::ffff:192.0.2.1]";host=h;proto=http`},
		{"a host with a port is quoted", "192.0.2.60", "example.com:8080", "http", `for=192.0.2.60;host="example.com:8080";proto=http`},
		{"an IPv6 host is quoted", "192.0.2.60", "[2001:db8::1]:443", "https", `for=192.0.2.60;host="[2001:db8::1]:443";proto=https`},
		{"quotes and backslashes escaped", "192.0.2.60", `a"b\c`, "x y", `for=192.0.2.60;host="a\"b\\c";proto="x y"`},
		{"no host", "192.0.2.60", "", "http", "for=192.0.2.60;proto=http"},
		{"a peer that is no address is unknown", "@pipe", "h", "http", "for=unknown;host=h;proto=http"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, rfc7239(tt.chain, tt.host, tt.proto))
		})
	}
}
