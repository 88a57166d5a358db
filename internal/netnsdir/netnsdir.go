// Package netnsdir decides what a recorded pod netns path says about its netns: positive evidence that it
// is gone only for a path directly in a directory the agent sees (where the runtime creates pod netns,
// mounted into the agent), and only while that directory is there. Anything else is no evidence.
package netnsdir

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
)

// Default are where runtimes create pod netns (containerd and CRI-O: /var/run/netns, which is /run/netns
// on most hosts). A recorded netns path elsewhere is not evidence either way.
var Default = []string{"/var/run/netns", "/run/netns"}

// Gone says whether the netns at path is positively gone: path is directly in one of dirs, that directory
// is there, and path is not. visible is false for a path outside dirs or in a directory that is not there.
func Gone(dirs []string, path string) (gone, visible bool) {
	p := filepath.Clean(path)
	dir := filepath.Dir(p)
	if !slices.ContainsFunc(dirs, func(d string) bool { return filepath.Clean(d) == dir }) {
		return false, false
	}
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return false, false // the directory itself is not there: no evidence about what was in it
	}
	_, err := os.Lstat(p)
	return errors.Is(err, fs.ErrNotExist), true
}
