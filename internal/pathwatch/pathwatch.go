// Package pathwatch keeps an fsnotify watcher on every directory that
// decides what a path resolves to, so that a re-pointed symlink anywhere on
// the path is seen.
//
// A watch on a file's directory sees an editor's rename-and-replace, but
// inotify follows symlinks when a watch is added: with git-sync's
// `root/current -> worktree-A` and a file at `root/current/sekisho.yaml`, a
// watch on `root/current` watches worktree-A, and the atomic rename of a new
// `current` symlink in `root` is never seen while worktree-A stays on disk.
// Resolving the path one component at a time finds every symlink on it; a
// watch on each symlink's own directory sees the symlink being replaced.
package pathwatch

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/fsnotify/fsnotify"
)

// maxLinks bounds the symlinks followed in one resolution, as the kernel's
// ELOOP does.
const maxLinks = 40

// Chain is how a path resolves.
type Chain struct {
	// Real is the file the path resolves to, free of symlinks; "" when the
	// path does not resolve (a missing entry, a loop).
	Real string
	// Names are the entries whose replacement may change the resolution or
	// the file: the path itself, every symlink met on the way (as real
	// paths of their directory) and Real.
	Names []string
	// Dirs are the symlink-free directories that hold the Names, each once:
	// where a replaced entry shows up as an event.
	Dirs []string
}

// Resolve resolves the absolute path one component at a time. A path that
// does not resolve still gets the Dirs up to where it stops, so that the
// entry is seen when it appears.
func Resolve(path string) Chain {
	var c Chain
	seen := map[string]bool{}
	add := func(name string) {
		c.Names = append(c.Names, name)
		if dir := filepath.Dir(name); !seen[dir] {
			seen[dir] = true
			c.Dirs = append(c.Dirs, dir)
		}
	}
	path = filepath.Clean(path)
	c.Names = append(c.Names, path)
	cur := string(filepath.Separator)
	rest := strings.Split(strings.TrimPrefix(path, cur), string(filepath.Separator))
	for links := 0; len(rest) > 0; {
		part := rest[0]
		rest = rest[1:]
		switch part {
		case "", ".":
			continue
		case "..":
			cur = filepath.Dir(cur)
			continue
		}
		next := filepath.Join(cur, part)
		fi, err := os.Lstat(next)
		if err != nil {
			add(next) // its directory sees it appear
			return c
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			cur = next
			continue
		}
		add(next)
		if links++; links > maxLinks {
			return c
		}
		to, err := os.Readlink(next)
		if err != nil {
			return c
		}
		if filepath.IsAbs(to) {
			cur = string(filepath.Separator)
		}
		rest = append(strings.Split(to, string(filepath.Separator)), rest...)
	}
	c.Real = cur
	add(cur)
	return c
}

// Set keeps a watcher's directories on the chains of some paths: Follow
// adds the directories a new resolution needs and removes those no longer
// needed. A Set is not safe for concurrent use: its owner's event loop
// calls it.
type Set struct {
	w       *fsnotify.Watcher
	paths   []string
	chains  []Chain
	watched map[string]bool
	names   map[string]bool
}

// NewSet resolves the absolute paths and watches their chains' directories
// with w; it fails, naming the directory, when one cannot be watched.
func NewSet(w *fsnotify.Watcher, paths ...string) (*Set, error) {
	s := &Set{w: w, paths: paths, chains: make([]Chain, len(paths)), watched: map[string]bool{}}
	if _, err := s.Follow(); err != nil {
		return nil, err
	}
	return s, nil
}

// Follow resolves every path again and moves the watches to the new
// chains. It reports whether a path now resolves to another file (or to
// none, or to one again), and the directories it could not watch; those are
// tried again on the next Follow.
func (s *Set) Follow() (changed bool, err error) {
	want := map[string]bool{}
	s.names = map[string]bool{}
	for i, p := range s.paths {
		c := Resolve(p)
		if c.Real != s.chains[i].Real {
			changed = true
		}
		s.chains[i] = c
		for _, n := range c.Names {
			s.names[n] = true
		}
		for _, d := range c.Dirs {
			want[d] = true
		}
	}
	var errs []error
	for d := range want {
		// Added again even when watched: the kernel drops the watch of a
		// deleted directory, and one of the same name may be back.
		if e := s.w.Add(d); e != nil {
			errs = append(errs, fmt.Errorf("watching %s: %w", d, e))
			continue
		}
		s.watched[d] = true
	}
	for d := range s.watched {
		if !want[d] {
			// Fails harmlessly when the directory is gone, as an old
			// ConfigMap revision or worktree is.
			s.w.Remove(d)
			delete(s.watched, d)
		}
	}
	return changed, errors.Join(errs...)
}

// Concerns reports whether an event's name is one of the entries on the
// chains: a path, a symlink met resolving it, or a resolved file.
func (s *Set) Concerns(name string) bool {
	return s.names[filepath.Clean(name)]
}

// Real is what the i-th path resolved to at the last Follow; "" when it did
// not resolve.
func (s *Set) Real(i int) string { return s.chains[i].Real }
