package proxy

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
	"go.uber.org/zap"

	"sekisho/internal/pathwatch"
)

// WatchDebounce is how long the config file must stay quiet after a change
// before it is read again: editors write in several steps, and a reload
// storm should apply its last write once.
const WatchDebounce = 150 * time.Millisecond

// ConfigWatch reloads a Daemon when its config file changes. It watches
// directories rather than the file, so that an editor's write-and-rename
// and a Kubernetes ConfigMap's `..data` symlink swap (which never touch the
// file's own inode) are both seen, and a file that briefly disappears is
// picked up when it is back. The path is resolved one component at a time
// and the directory of every symlink on it is watched, as is the directory
// of the file it resolves to: a re-pointed parent directory (git-sync's
// `current -> worktree-SHA`) is seen when the new symlink is renamed over
// the old, whether or not the old target is still on disk. Every event in
// those directories resolves the path again and moves the watches to the
// new chain; events naming other files of the directories are ignored
// unless the resolution changed.
//
// Changes are debounced by WatchDebounce; errors of the reload it triggers
// are logged and counted by Daemon.Reload, and the next change tries again.
type ConfigWatch struct {
	w        *fsnotify.Watcher
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	debounce time.Duration
}

// WatchConfig starts watching d's config file until ctx ends or Close.
func WatchConfig(ctx context.Context, d *Daemon) (*ConfigWatch, error) {
	return watchConfig(ctx, d, WatchDebounce)
}

func watchConfig(ctx context.Context, d *Daemon, debounce time.Duration) (*ConfigWatch, error) {
	if d.opts.Path == "" {
		return nil, fmt.Errorf("no config file to watch")
	}
	path, err := filepath.Abs(d.opts.Path)
	if err != nil {
		return nil, err
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, err
	}
	set, err := pathwatch.NewSet(w, path)
	if err != nil {
		w.Close()
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	cw := &ConfigWatch{w: w, cancel: cancel, debounce: debounce}
	t := &target{set: set, log: d.log}
	cw.wg.Add(1)
	go func() {
		defer cw.wg.Done()
		cw.loop(ctx, d, t)
	}()
	return cw, nil
}

// target is the watched path and the chain of symlinks it resolves through.
type target struct {
	set    *pathwatch.Set
	log    *zap.Logger
	failed string // the last error of Follow, logged once
}

// concerns reports whether ev may have changed the config file: it names
// an entry of the chain, or the path resolves to another file now.
func (t *target) concerns(ev fsnotify.Event) bool {
	if ev.Op == fsnotify.Chmod {
		return false
	}
	swapped, err := t.set.Follow()
	if err != nil && err.Error() != t.failed {
		t.log.Warn("cannot watch a directory on the config file's path; a change there needs a reload",
			zap.Error(err))
	}
	t.failed = ""
	if err != nil {
		t.failed = err.Error()
	}
	return swapped || t.set.Concerns(ev.Name)
}

func (cw *ConfigWatch) loop(ctx context.Context, d *Daemon, t *target) {
	// The first check runs once the watch is in place: a write that landed
	// between the Daemon's load and this watch is not missed (a file equal
	// to the config in force costs one comparison).
	timer := time.NewTimer(cw.debounce)
	defer timer.Stop()
	first := true
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-cw.w.Events:
			if !ok {
				return
			}
			if t.concerns(ev) {
				timer.Reset(cw.debounce)
			}
		case err, ok := <-cw.w.Errors:
			if !ok {
				return
			}
			d.log.Warn("config watch error", zap.Error(err))
			if errors.Is(err, fsnotify.ErrEventOverflow) {
				// Events were lost: read the file again to be sure.
				timer.Reset(cw.debounce)
			}
		case <-timer.C:
			if first {
				first = false
				d.catchUp()
				continue
			}
			d.Reload()
		}
	}
}

// Close stops the watch and waits for it.
func (cw *ConfigWatch) Close() {
	cw.cancel()
	cw.w.Close()
	cw.wg.Wait()
}
