package certs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"

	"sekisho/internal/pathwatch"
)

// DefaultDebounce is the quiet time Watch waits for after the last change
// when its debounce argument is zero.
const DefaultDebounce = 200 * time.Millisecond

// Watch reloads the Store when its files change, until ctx is done.
//
// It watches directories rather than the files: an editor's
// rename-and-replace puts a new inode under the old name, and a Kubernetes
// Secret update swaps the "..data" symlink that the visible files point
// through, and neither is seen by a watch on the old file. Each file's path
// is resolved one component at a time, and the directory of every symlink
// on it is watched as well as the directory of the file it resolves to: a
// re-pointed directory symlink (git-sync's "current -> v2") is seen when the
// new symlink is renamed over the old one, whether or not the old target is
// still on disk. Every event resolves the paths again and moves the watches
// to the new chains. An event counts when a path now resolves to another
// file, or when it names one of the store's files, an entry on their
// chains or a Kubernetes "..*" entry; attribute-only changes do not. Events
// are debounced (debounce, zero or negative meaning DefaultDebounce) so that
// a cert and key written one after the other are read together.
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
	var paths []string
	for _, p := range s.pairs {
		for _, f := range []string{p.CertFile, p.KeyFile} {
			names[filepath.Base(f)] = true
			abs, err := filepath.Abs(f)
			if err != nil {
				return fmt.Errorf("certs: watching %s: %w", f, err)
			}
			// A missing directory would be waited for in its parent; at the
			// start it is a mistake to report, as the files were just read.
			if _, err := os.Stat(filepath.Dir(abs)); err != nil {
				return fmt.Errorf("certs: watching %s: %w", filepath.Dir(f), err)
			}
			paths = append(paths, abs)
		}
	}
	set, err := pathwatch.NewSet(w, paths...)
	if err != nil {
		return fmt.Errorf("certs: %w", err)
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
	var watchErr, followErr error
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return errors.New("certs: watcher closed")
			}
			if ev.Op == fsnotify.Chmod {
				continue
			}
			swapped, err := set.Follow()
			if err != nil {
				// Kept until the next report, replaced by each try: a
				// directory that stays unwatchable is one error.
				followErr = fmt.Errorf("certs: %w", err)
				quiet.Reset(debounce)
			}
			if swapped || set.Concerns(ev.Name) || relevant(ev, names) {
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
			err := errors.Join(watchErr, followErr, s.Reload())
			watchErr, followErr = nil, nil
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
