// Package atomicfile replaces files so that a crash leaves the old content or the new, never a mix: a temp
// file in the same directory, fsync, rename over the target, fsync the directory. The agent's checkpoint,
// the plugin's release journal and the installed plugin binary are written this way.
package atomicfile

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// TempMarker is in the name of every temp file: "<name>" + TempMarker + random. A crash can leave one
// behind; its owner may remove "<name>.tmp-*".
const TempMarker = ".tmp-"

// WriteFile replaces path with data, mode perm.
func WriteFile(path string, data []byte, perm fs.FileMode) error {
	return Write(path, bytes.NewReader(data), perm, nil)
}

// Write replaces path with what src reads, mode perm (whatever the umask). beforeRename, when not nil
// (tests), runs between the temp file's fsync and the rename: the window a crash would hit.
func Write(path string, src io.Reader, perm fs.FileMode, beforeRename func() error) (retErr error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, filepath.Base(path)+TempMarker+"*")
	if err != nil {
		return fmt.Errorf("create temp file in %s: %w", dir, err)
	}
	tmp := f.Name()
	defer func() {
		if retErr != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err := f.Chmod(perm); err != nil {
		return fmt.Errorf("chmod %s: %w", tmp, err)
	}
	if _, err := io.Copy(f, src); err != nil {
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", tmp, err)
	}
	if beforeRename != nil {
		if err := beforeRename(); err != nil {
			return fmt.Errorf("replace %s: %w", path, err)
		}
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("rename %s to %s: %w", tmp, path, err)
	}
	// The rename is only durable once the directory entry is.
	return SyncDir(dir)
}

// SyncDir makes the directory's entries (renames, removals) durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open dir %s: %w", dir, err)
	}
	serr := d.Sync()
	cerr := d.Close()
	if err := errors.Join(serr, cerr); err != nil {
		return fmt.Errorf("sync dir %s: %w", dir, err)
	}
	return nil
}
