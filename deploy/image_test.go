package deploy_test

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestImage checks the Dockerfile and .dockerignore the manifests' image is
// built from: a numeric USER (so that runAsNonRoot can verify it), the
// VERSION build arg stamped into cmd/sekisho's version variable, and a
// build context without history, binaries, demo keys or bench output.
func TestImage(t *testing.T) {
	df, err := os.ReadFile("../Dockerfile")
	require.NoError(t, err)
	users := regexp.MustCompile(`(?m)^USER[ \t]+(\S+)`).FindAllStringSubmatch(string(df), -1)
	require.NotEmpty(t, users, "Dockerfile: no USER")
	last := users[len(users)-1][1]
	require.Regexp(t, `^[1-9][0-9]*(:[0-9]+)?$`, last, "Dockerfile: the final USER must be a numeric non-root uid")
	require.Regexp(t, `(?m)^ARG[ \t]+VERSION\b`, string(df), "Dockerfile: ARG VERSION")
	require.Contains(t, string(df), "-X main.version=${VERSION}", "Dockerfile: the version is stamped at build")

	// The variable the -X flag sets exists in package main of cmd/sekisho.
	main, err := os.ReadFile("../cmd/sekisho/main.go")
	require.NoError(t, err)
	require.Regexp(t, `(?m)^var version = "`, string(main), "cmd/sekisho: var version, set by -ldflags -X main.version")

	di, err := os.ReadFile("../.dockerignore")
	require.NoError(t, err)
	ignored := map[string]bool{}
	for _, line := range strings.Split(string(di), "\n") {
		if l := strings.TrimSpace(line); l != "" && !strings.HasPrefix(l, "#") {
			ignored[strings.TrimSuffix(strings.TrimPrefix(l, "/"), "/")] = true
		}
	}
	for _, p := range []string{".git", "bin", ".demo", "bench/.run", "bench/results-latest*"} {
		require.True(t, ignored[p], ".dockerignore: %s", p)
	}
}
