package config

import (
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
			err: `2:48: admin.public_listen: "127.0.0.1:9901" is also admin.listen; the public listener needs an address of its own`},
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
