package config

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// admin.public_listen is off by default, takes host:port like listen, and a
// bad value is reported at its position.
func TestAdminPublicListen(t *testing.T) {
	const rest = "\nlisteners: [{name: edge, listen: 127.0.0.1:0, routes: [{name: all, pipeline: [{respond: {status: 200}}]}]}]\n"
	for _, tc := range []struct {
		name, admin string
		want        string // the PublicListen decoded, when err is ""
		err         string // the error after the file name, "" for none
	}{
		{name: "absent is off", admin: "{listen: 127.0.0.1:9901}", want: ""},
		{name: "off", admin: "{public_listen: \"off\"}", want: "off"},
		{name: "all addresses", admin: "{public_listen: \":9902\"}", want: ":9902"},
		{name: "an IP", admin: "{public_listen: 10.1.2.3:9902}", want: "10.1.2.3:9902"},
		{name: "two ephemeral ports", admin: "{listen: 127.0.0.1:0, public_listen: 127.0.0.1:0}", want: "127.0.0.1:0"},
		{name: "no port", admin: "{public_listen: 10.1.2.3}",
			err: `2:24: admin.public_listen: "10.1.2.3" is not host:port`},
		{name: "a host name", admin: "{public_listen: pod.example:9902}",
			err: `2:24: admin.public_listen: "pod.example:9902": listen on an IP address, localhost or all addresses (:PORT)`},
		{name: "bad port", admin: "{public_listen: \":99999\"}",
			err: `2:24: admin.public_listen: ":99999": bad port "99999"`},
		{name: "same as listen", admin: "{listen: 127.0.0.1:9901, public_listen: 127.0.0.1:9901}",
			err: `2:48: admin.public_listen: "127.0.0.1:9901" clashes with "127.0.0.1:9901" of admin.listen (at 2:17): the same address; each listener needs an address of its own`},
		{name: "all addresses over listen", admin: "{listen: 127.0.0.1:9901, public_listen: \":9901\"}",
			err: `2:48: admin.public_listen: ":9901" clashes with "127.0.0.1:9901" of admin.listen (at 2:17): port 9901 on all addresses includes the other; each listener needs an address of its own`},
		{name: "beside listen on another IP", admin: "{listen: 127.0.0.1:9901, public_listen: 10.1.2.3:9901}", want: "10.1.2.3:9901"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "admin.yaml")
			require.NoError(t, os.WriteFile(path, []byte("version: 1\nadmin: "+tc.admin+rest), 0o644))
			cfg, err := Load(path)
			if tc.err == "" {
				require.NoError(t, err)
				assert.Equal(t, tc.want, cfg.Admin.PublicListen)
				return
			}
			var ce Errors
			require.ErrorAs(t, err, &ce)
			require.Len(t, ce, 1, "%v", err)
			assert.Equal(t, tc.err, strings.TrimPrefix(ce[0].Error(), path+":"))
		})
	}
}

// ListenClash tells which two addresses cannot both be bound: one port
// (not 0) on the same IP, localhost and loopback, or all addresses on
// either side.
func TestListenClash(t *testing.T) {
	for _, tc := range []struct {
		a, b  string
		clash bool
	}{
		{"127.0.0.1:80", "127.0.0.1:80", true},
		{"127.0.0.1:80", "127.0.0.1:81", false},
		{"127.0.0.1:80", "127.0.0.2:80", false},
		{":80", "127.0.0.1:80", true},
		{"0.0.0.0:80", "10.1.2.3:80", true},
		{"[::]:80", "127.0.0.1:80", true},
		{"[::ffff:127.0.0.1]:80", "127.0.0.1:80", true},
		{"localhost:80", "127.0.0.1:80", true},
		{"localhost:80", "[::1]:80", true},
		{"localhost:80", "10.1.2.3:80", false},
		{"[::1]:80", "127.0.0.1:80", false},
		{"127.0.0.1:0", "127.0.0.1:0", false},
		{":0", ":0", false},
		{"127.0.0.1:080", "127.0.0.1:80", true},
		{"nonsense", "127.0.0.1:80", false},
	} {
		assert.Equal(t, tc.clash, ListenClash(tc.a, tc.b), "%s beside %s", tc.a, tc.b)
		assert.Equal(t, tc.clash, ListenClash(tc.b, tc.a), "%s beside %s", tc.b, tc.a)
	}
}

// Listeners clash with each other and with the admin listeners; the error
// is at the later one and names the first.
func TestListenersClash(t *testing.T) {
	const listener = "  - {name: %s, listen: %q, routes: [{name: all, pipeline: [{respond: {status: 200}}]}]}\n"
	for _, tc := range []struct {
		name, admin string
		listens     []string
		err         string
	}{
		{name: "two listeners, one address", admin: "{listen: \"off\"}", listens: []string{"127.0.0.1:8080", "127.0.0.1:8080"},
			err: `5:24: listen: "127.0.0.1:8080" clashes with "127.0.0.1:8080" of listener "l0" (at 4:24): the same address; each listener needs an address of its own`},
		{name: "a listener on all addresses", admin: "{listen: \"off\"}", listens: []string{"127.0.0.1:8080", ":8080"},
			err: `5:24: listen: ":8080" clashes with "127.0.0.1:8080" of listener "l0" (at 4:24): port 8080 on all addresses includes the other; each listener needs an address of its own`},
		{name: "a listener on the admin port", admin: "{listen: 127.0.0.1:9901}", listens: []string{":9901"},
			err: `4:24: listen: ":9901" clashes with "127.0.0.1:9901" of admin.listen (at 2:17): port 9901 on all addresses includes the other; each listener needs an address of its own`},
		{name: "ephemeral ports", admin: "{listen: 127.0.0.1:0}", listens: []string{"127.0.0.1:0", "127.0.0.1:0"}},
		{name: "two IPs", admin: "{listen: 127.0.0.1:9901}", listens: []string{"127.0.0.1:8080", "127.0.0.2:8080"}},
		{name: "the default admin port", admin: "{}", listens: []string{":9901"},
			err: `4:24: listen: ":9901" clashes with "127.0.0.1:9901" of admin.listen (the default): port 9901 on all addresses includes the other; each listener needs an address of its own`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b strings.Builder
			b.WriteString("version: 1\nadmin: " + tc.admin + "\nlisteners:\n")
			for i, l := range tc.listens {
				fmt.Fprintf(&b, listener, fmt.Sprintf("l%d", i), l)
			}
			path := filepath.Join(t.TempDir(), "listen.yaml")
			require.NoError(t, os.WriteFile(path, []byte(b.String()), 0o644))
			_, err := Load(path)
			if tc.err == "" {
				require.NoError(t, err)
				return
			}
			var ce Errors
			require.ErrorAs(t, err, &ce)
			require.Len(t, ce, 1, "%v", err)
			assert.Equal(t, tc.err, strings.TrimPrefix(ce[0].Error(), path+":"))
		})
	}
}
