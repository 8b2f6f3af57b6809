package pathwatch

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestResolve: the chain names every symlink on the path, in parent
// directories too, and the directories that hold them; a path that does
// not resolve still names the directory where it stops.
func TestResolve(t *testing.T) {
	root, err := filepath.EvalSymlinks(t.TempDir())
	require.NoError(t, err)
	for _, d := range []string{"wt-a", "wt-b", "secret/..v1"} {
		require.NoError(t, os.MkdirAll(filepath.Join(root, d), 0o755))
	}
	require.NoError(t, os.WriteFile(filepath.Join(root, "wt-a", "sekisho.yaml"), nil, 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(root, "secret/..v1", "tls.crt"), nil, 0o644))
	require.NoError(t, os.Symlink("wt-a", filepath.Join(root, "current")))
	require.NoError(t, os.Symlink("..v1", filepath.Join(root, "secret", "..data")))
	require.NoError(t, os.Symlink("..data/tls.crt", filepath.Join(root, "secret", "tls.crt")))
	require.NoError(t, os.Symlink(filepath.Join(root, "secret"), filepath.Join(root, "abs")))

	tests := []struct {
		name, path, real string
		names, dirs      []string
	}{
		{
			name: "plain file", path: "wt-a/sekisho.yaml", real: "wt-a/sekisho.yaml",
			names: []string{"wt-a/sekisho.yaml", "wt-a/sekisho.yaml"}, dirs: []string{"wt-a"},
		},
		{
			name: "re-pointable parent directory", path: "current/sekisho.yaml", real: "wt-a/sekisho.yaml",
			names: []string{"current/sekisho.yaml", "current", "wt-a/sekisho.yaml"}, dirs: []string{"", "wt-a"},
		},
		{
			name: "kubernetes ..data", path: "secret/tls.crt", real: "secret/..v1/tls.crt",
			names: []string{"secret/tls.crt", "secret/tls.crt", "secret/..data", "secret/..v1/tls.crt"}, dirs: []string{"secret", "secret/..v1"},
		},
		{
			name: "absolute link then ..data", path: "abs/tls.crt", real: "secret/..v1/tls.crt",
			names: []string{"abs/tls.crt", "abs", "secret/tls.crt", "secret/..data", "secret/..v1/tls.crt"}, dirs: []string{"", "secret", "secret/..v1"},
		},
		{
			name: "missing file", path: "current/gone.yaml", real: "",
			names: []string{"current/gone.yaml", "current", "wt-a/gone.yaml"}, dirs: []string{"", "wt-a"},
		},
	}
	abs := func(rel []string) []string {
		out := make([]string, len(rel))
		for i, r := range rel {
			out[i] = filepath.Join(root, r)
		}
		return out
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := Resolve(filepath.Join(root, tc.path))
			want := ""
			if tc.real != "" {
				want = filepath.Join(root, tc.real)
			}
			assert.Equal(t, want, c.Real)
			assert.Equal(t, abs(tc.names), c.Names)
			assert.Equal(t, abs(tc.dirs), c.Dirs)
		})
	}

	t.Run("a loop does not resolve", func(t *testing.T) {
		require.NoError(t, os.Symlink("loop", filepath.Join(root, "loop")))
		assert.Empty(t, Resolve(filepath.Join(root, "loop")).Real)
	})
}
