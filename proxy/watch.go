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
)

// WatchDebounce is how long the config file must stay quiet after a change
// before it is read again: editors write in several steps, and a reload
// storm should apply its last write once.
const WatchDebounce = 150 * time.Millisecond

// ConfigWatch reloads a Daemon when its config file changes. It watches the
// file's directory rather than the file, so that an editor's write-and-rename
// and a Kubernetes ConfigMap's `..data` symlink swap (which never touch the
// file's own inode) are both seen, and a file that briefly disappears is
// picked up when it is back. When the path is a symlink, the directory of
// the file it resolves to is watched too, so that an edit in place of the
// target is seen. Other files of the directories are ignored.
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
	dir := filepath.Dir(path)
	if err := w.Add(dir); err != nil {
		w.Close()
		return nil, fmt.Errorf("watching %s: %w", dir, err)
	}
	ctx, cancel := context.WithCancel(ctx)
	cw := &ConfigWatch{w: w, cancel: cancel, debounce: debounce}
	t := &target{w: w, path: path, dir: dir, log: d.log}
	t.follow()
	cw.wg.Add(1)
	go func() {
		defer cw.wg.Done()
		cw.loop(ctx, d, t)
	}()
	return cw, nil
}

// target is the watched path and the file it resolves to.
type target struct {
	w       *fsnotify.Watcher
	log     *zap.Logger
	path    string // absolute, as configured
	dir     string // its directory, always watched
	real    string // what path resolves to now; "" while it does not exist
	realDir string // the real file's directory when it is watched too
}

// follow resolves the path again and moves the watch on the real file's
// directory. It reports whether the resolution changed: a symlink swap.
func (t *target) follow() bool {
	real, err := filepath.EvalSymlinks(t.path)
	if err != nil {
		real = ""
	}
	if real == t.real {
		return false
	}
	t.real = real
	dir := ""
	if real != "" && filepath.Dir(real) != t.dir {
		dir = filepath.Dir(real)
	}
	if dir != t.realDir {
		if t.realDir != "" {
			// Fails harmlessly when the directory is gone, as a replaced
			// ConfigMap revision is.
			t.w.Remove(t.realDir)
		}
		t.realDir = ""
		if dir != "" {
			if err := t.w.Add(dir); err != nil {
				t.log.Warn("cannot watch the config file's target directory; edits in place of the target need a reload",
					zap.String("dir", dir), zap.Error(err))
			} else {
				t.realDir = dir
			}
		}
	}
	return true
}

// concerns reports whether ev may have changed the config file.
func (t *target) concerns(ev fsnotify.Event) bool {
	if ev.Op == fsnotify.Chmod {
		return false
	}
	name := filepath.Clean(ev.Name)
	swapped := t.follow()
	return swapped || name == t.path || (t.real != "" && name == t.real)
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
