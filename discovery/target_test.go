package discovery

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseTarget(t *testing.T) {
	good := []struct {
		in   string
		want Target
	}{
		{"dns://web.shop.svc.cluster.local:8080", Target{Kind: KindAddr, Name: "web.shop.svc.cluster.local.", Port: 8080}},
		{"dns://Web.Example.:80", Target{Kind: KindAddr, Name: "web.example.", Port: 80}},
		{"dns://10.0.0.1:80", Target{Kind: KindAddr, Name: "10.0.0.1", Port: 80}},
		{"dns://[::1]:80", Target{Kind: KindAddr, Name: "::1", Port: 80}},
		{"dns+srv://_http._tcp.users-0.shop.svc.cluster.local", Target{Kind: KindSRV, Name: "_http._tcp.users-0.shop.svc.cluster.local."}},
	}
	for _, tc := range good {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseTarget(tc.in)
			require.NoError(t, err)
			tc.want.raw = tc.in
			assert.Equal(t, tc.want, got)
			assert.Equal(t, tc.in, got.String())
			assert.True(t, IsTarget(tc.in))
		})
	}
	for _, in := range []string{
		"web:80", "dns://web", "dns://web:0", "dns://web:70000", "dns://:80",
		"dns+srv://", "dns+srv://_http._tcp.web:80", "dns+srv://a/b", "http://web:80",
	} {
		t.Run(in, func(t *testing.T) {
			_, err := ParseTarget(in)
			assert.ErrorIs(t, err, ErrBadTarget)
		})
	}
}
