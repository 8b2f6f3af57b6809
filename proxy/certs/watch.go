package certs

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"
)

// DefaultDebounce is the quiet time Watch waits for after the last change
// when its debounce argument is zero.
const DefaultDebounce = 200 * time.Millisecond

// Watch reloads the Store when its files change, until ctx is done.
//
// It watches the directories of the files rather than the files: an editor's
// rename-and-replace puts a new inode under the old name, and a Kubernetes
// Secret update swaps the "..data" symlink that the visible files point
// through, and neither is seen by a watch on the old file. An event counts
// when it names one of the store's files or a Kubernetes "..*" entry;
// attribute-only changes do not. Events are debounced (debounce, zero or
// negative meaning DefaultDebounce) so that a cert and key written one after
// the other are read together.
//
// Once the watch is in place Watch reloads once, so that a change made after
// NewStore and before Watch is not missed; then after each quiet period it
// calls Reload and onReload (which may be nil) with Reload's error, joined
// with any error the watcher reported meanwhile. onReload runs on Watch's
// goroutine.
//
// Watch returns nil when ctx is done, after closing the watcher: no
// goroutine is left behind. It returns an error at once if a directory
// cannot be watched.
func (s *Store) Watch(ctx context.Context, debounce time.Duration, onReload func(err error)) error {
	if debounce <= 0 {
		debounce = DefaultDebounce
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("certs: watching: %w", err)
	}
	defer w.Close()

	names := make(map[string]bool)
	dirs := make(map[string]bool)
	for _, p := range s.pairs {
		for _, f := range []string{p.CertFile, p.KeyFile} {
			names[filepath.Base(f)] = true
			dir := filepath.Dir(f)
			if dirs[dir] {
				continue
			}
			if err := w.Add(dir); err != nil {
				return fmt.Errorf("certs: watching %s: %w", dir, err)
			}
			dirs[dir] = true
		}
	}

	report := func(err error) {
		if onReload != nil {
			onReload(err)
		}
	}
	report(s.Reload())

	quiet := time.NewTimer(debounce)
	quiet.Stop()
	defer quiet.Stop()
	var watchErr error
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return errors.New("certs: watcher closed")
			}
			if relevant(ev, names) {
				quiet.Reset(debounce)
			}
		case err, ok := <-w.Errors:
			if !ok {
				return errors.New("certs: watcher closed")
			}
			// Likely an overflow: events were lost, so reload anyway.
			watchErr = errors.Join(watchErr, fmt.Errorf("certs: watching: %w", err))
			quiet.Reset(debounce)
		case <-quiet.C:
			err := errors.Join(watchErr, s.Reload())
			watchErr = nil
			report(err)
		}
	}
}

func relevant(ev fsnotify.Event, names map[string]bool) bool {
	if ev.Op == fsnotify.Chmod {
		return false
	}
	base := filepath.Base(ev.Name)
	return names[base] || strings.HasPrefix(base, "..")
}
