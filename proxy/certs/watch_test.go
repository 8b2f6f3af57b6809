package certs_test

import (
	"context"
	"crypto/tls"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"sekisho/proxy/certs"
	"sekisho/proxy/certs/certstest"
)

// reloads records the errors Watch hands to onReload.
type reloads struct {
	mu   sync.Mutex
	errs []error
}

func (r *reloads) record(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs = append(r.errs, err)
}

func (r *reloads) all() []error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]error(nil), r.errs...)
}

// watch runs store.Watch until the end of the test and returns once the
// watch is in place (Watch's first reload has been reported).
func watch(t *testing.T, store *certs.Store) *reloads {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	rl := &reloads{}
	done := make(chan error, 1)
	go func() { done <- store.Watch(ctx, 20*time.Millisecond, rl.record) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			assert.NoError(t, err, "Watch ends cleanly with its context")
		case <-time.After(5 * time.Second):
			t.Error("Watch did not return after its context ended")
		}
	})
	require.Eventually(t, func() bool { return len(rl.all()) > 0 }, 5*time.Second, 5*time.Millisecond, "the initial reload")
	require.NoError(t, rl.all()[0])
	return rl
}

// servedSerial handshakes with SNI name and returns the serial served.
func servedSerial(t *testing.T, addr, name string, ca *certstest.CA) string {
	t.Helper()
	state, err := handshake(addr, &tls.Config{RootCAs: ca.Pool(), ServerName: name})
	if err != nil {
		return "handshake: " + err.Error()
	}
	return state.PeerCertificates[0].SerialNumber.String()
}

// publish lays out a Kubernetes Secret volume revision the way the kubelet's
// atomic writer does: the files go into a new "..<version>" directory, a
// "..data_tmp" symlink to it is renamed over "..data", and the visible
// tls.crt and tls.key are symlinks through "..data".
func publish(t *testing.T, root, version string, p certs.Pair) {
	t.Helper()
	require.NoError(t, os.Mkdir(filepath.Join(root, version), 0o755))
	copyFile(t, p.CertFile, filepath.Join(root, version, "tls.crt"))
	copyFile(t, p.KeyFile, filepath.Join(root, version, "tls.key"))
	require.NoError(t, os.Symlink(version, filepath.Join(root, "..data_tmp")))
	require.NoError(t, os.Rename(filepath.Join(root, "..data_tmp"), filepath.Join(root, "..data")))
	for _, f := range []string{"tls.crt", "tls.key"} {
		link := filepath.Join(root, f)
		if _, err := os.Lstat(link); os.IsNotExist(err) {
			require.NoError(t, os.Symlink(filepath.Join("..data", f), link))
		}
	}
}

func TestWatchKubernetesSecretSwap(t *testing.T) {
	ca := certstest.NewCA(t)
	root := t.TempDir()
	first := ca.Issue(t, t.TempDir(), "svc.test")
	publish(t, root, "..2026_01_01", first)
	store, err := certs.NewStore([]certs.Pair{{CertFile: filepath.Join(root, "tls.crt"), KeyFile: filepath.Join(root, "tls.key")}})
	require.NoError(t, err)
	addr := serveTLS(t, certs.ServerConfig(store, 0, nil, nil))
	rl := watch(t, store)
	require.Equal(t, serialOf(t, first), servedSerial(t, addr, "svc.test", ca))

	second := ca.Issue(t, t.TempDir(), "svc.test")
	publish(t, root, "..2026_01_02", second)
	require.NoError(t, os.RemoveAll(filepath.Join(root, "..2026_01_01")))

	want := serialOf(t, second)
	require.Eventually(t, func() bool { return servedSerial(t, addr, "svc.test", ca) == want },
		5*time.Second, 20*time.Millisecond, "a new handshake gets the rotated certificate")
	for _, err := range rl.all() {
		assert.NoError(t, err, "an atomic swap never shows a half-written pair")
	}
	cert, err := certs.LoadPair(second)
	require.NoError(t, err)
	assert.Equal(t, cert.Leaf.NotAfter, store.Certificates()[0].NotAfter)
}

func TestWatchRenameAndReplace(t *testing.T) {
	ca := certstest.NewCA(t)
	dir := t.TempDir()
	pair := placed(t, dir, "tls", ca.Issue(t, t.TempDir(), "svc.test"))
	store, err := certs.NewStore([]certs.Pair{pair})
	require.NoError(t, err)
	addr := serveTLS(t, certs.ServerConfig(store, 0, nil, nil))
	rl := watch(t, store)

	next := ca.Issue(t, t.TempDir(), "svc.test")
	replace(t, next.KeyFile, pair.KeyFile)
	replace(t, next.CertFile, pair.CertFile)

	want := serialOf(t, next)
	require.Eventually(t, func() bool {
		errs := rl.all()
		return errs[len(errs)-1] == nil && servedSerial(t, addr, "svc.test", ca) == want
	}, 5*time.Second, 20*time.Millisecond, "a new handshake gets the replaced certificate")
}

// replace writes from's content beside to and renames it over to, as
// editors and most deployment tools do.
func replace(t *testing.T, from, to string) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(to), "."+filepath.Base(to)+".tmp")
	copyFile(t, from, tmp)
	require.NoError(t, os.Rename(tmp, to))
}

func TestWatchBrokenRotation(t *testing.T) {
	ca := certstest.NewCA(t)
	dir := t.TempDir()
	pair := placed(t, dir, "tls", ca.Issue(t, t.TempDir(), "svc.test"))
	store, err := certs.NewStore([]certs.Pair{pair})
	require.NoError(t, err)
	addr := serveTLS(t, certs.ServerConfig(store, 0, nil, nil))
	rl := watch(t, store)
	old := serialOf(t, pair)

	replace(t, ca.Issue(t, t.TempDir(), "svc.test").CertFile, pair.CertFile) // the key stays the old one

	require.Eventually(t, func() bool {
		errs := rl.all()
		return errs[len(errs)-1] != nil
	}, 5*time.Second, 10*time.Millisecond, "the failed reload is reported")
	errs := rl.all()
	err = errs[len(errs)-1]
	assert.ErrorIs(t, err, certs.ErrKeyMismatch)
	assert.Contains(t, err.Error(), pair.CertFile)
	assert.Equal(t, old, servedSerial(t, addr, "svc.test", ca), "the old certificate is still served")
}

func TestWatchUnwatchableDirectory(t *testing.T) {
	ca := certstest.NewCA(t)
	dir := t.TempDir()
	store, err := certs.NewStore([]certs.Pair{ca.Issue(t, dir, "svc.test")})
	require.NoError(t, err)
	require.NoError(t, os.RemoveAll(dir))
	err = store.Watch(context.Background(), 0, nil)
	require.Error(t, err)
	assert.Contains(t, err.Error(), dir)
}
