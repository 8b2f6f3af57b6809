package proxy

import (
	"crypto/tls"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"sekisho/proxy/certs"
	"sekisho/proxy/certs/certstest"
)

// gitSync lays a directory out as git-sync does: each revision is a
// worktree directory under root, and root/current links to one; publish
// re-points current by renaming a new symlink over it, as git-sync does,
// and keeps the old worktree on disk.
type gitSync struct {
	root string
}

func (g *gitSync) current() string { return filepath.Join(g.root, "current") }

// worktree creates root/name with the given files (name to content).
func (g *gitSync) worktree(t *testing.T, name string, files map[string][]byte) {
	t.Helper()
	dir := filepath.Join(g.root, name)
	require.NoError(t, os.Mkdir(dir, 0o755))
	for f, b := range files {
		require.NoError(t, os.WriteFile(filepath.Join(dir, f), b, 0o600))
	}
}

func (g *gitSync) publish(t *testing.T, name string) {
	t.Helper()
	tmp := filepath.Join(g.root, "current.tmp")
	require.NoError(t, os.Symlink(name, tmp))
	require.NoError(t, os.Rename(tmp, g.current()))
}

// TestGitSyncConfigSwap: a config reached through root/current ->
// worktree-A is in force within 2 s of current being re-pointed to
// worktree-B by an atomic rename, with worktree-A still on disk; and again
// back to a worktree the watch followed away from.
func TestGitSyncConfigSwap(t *testing.T) {
	noLeaks(t)
	g := &gitSync{root: t.TempDir()}
	for _, rev := range []string{"worktree-A", "worktree-B", "worktree-C"} {
		g.worktree(t, rev, map[string][]byte{"sekisho.yaml": []byte(respondConfig(rev))})
	}
	g.publish(t, "worktree-A")
	td := startDaemonAt(t, filepath.Join(g.current(), "sekisho.yaml"), false)
	td.watch()
	base := td.url("edge")
	_, body := td.get(base + "/")
	require.Equal(t, "worktree-A", body)

	for _, rev := range []string{"worktree-B", "worktree-C", "worktree-A"} {
		g.publish(t, rev)
		require.Eventually(t, func() bool { return bodyInForce(td.d) == rev }, 2*time.Second, 10*time.Millisecond,
			"current -> %s in force within 2s", rev)
		_, body := td.get(base + "/")
		assert.Equal(t, rev, body)
	}
	_, err := os.Stat(filepath.Join(g.root, "worktree-B", "sekisho.yaml"))
	assert.NoError(t, err, "the old worktrees stayed on disk")
}

// TestGitSyncCertificateSwap: a TLS listener whose cert_file and key_file
// are under certs/current -> v1 serves the certificate of v2 to a new
// handshake within 2 s of current being re-pointed, with v1 still on disk.
func TestGitSyncCertificateSwap(t *testing.T) {
	noLeaks(t)
	src := t.TempDir()
	ca := certstest.NewCA(t)
	g := &gitSync{root: t.TempDir()}
	pairs := map[string]certs.Pair{}
	for _, rev := range []string{"v1", "v2"} {
		p := ca.Issue(t, src, "gitsync.test")
		pairs[rev] = p
		crt, err := os.ReadFile(p.CertFile)
		require.NoError(t, err)
		key, err := os.ReadFile(p.KeyFile)
		require.NoError(t, err)
		g.worktree(t, rev, map[string][]byte{"tls.crt": crt, "tls.key": key})
	}
	g.publish(t, "v1")
	td, addr := oneTLSListener(t, "git", filepath.Join(g.current(), "tls.crt"), filepath.Join(g.current(), "tls.key"), "")
	conf := &tls.Config{RootCAs: ca.Pool(), ServerName: "gitsync.test", NextProtos: []string{"http/1.1"}}
	served := func() string { return servedSerial(addr, conf) }
	serialOf := func(rev string) string { return tlsLeaf(t, pairs[rev]).SerialNumber.String() }
	require.NotEqual(t, serialOf("v1"), serialOf("v2"))
	require.Equal(t, serialOf("v1"), served())
	// No wait for the watch: it resolves the paths before its first read
	// of the files, so a swap made before it is in place is read then.
	g.publish(t, "v2")
	require.Eventually(t, func() bool { return served() == serialOf("v2") }, 2*time.Second, 20*time.Millisecond,
		"current -> v2 served within 2s")
	_, err := os.Stat(filepath.Join(g.root, "v1", "tls.crt"))
	assert.NoError(t, err, "v1 stayed on disk")

	g.publish(t, "v1")
	require.Eventually(t, func() bool { return served() == serialOf("v1") }, 2*time.Second, 20*time.Millisecond,
		"current -> v1 served again within 2s")
	assert.LessOrEqual(t, td.metric("sekisho_tls_certificate_reload_errors_total", "listener", "git"), 0.0,
		"no reload error (an absent sample is -1)")
}
