// Package statefile keeps state on disk for processes that crash or run side by side: an exclusive lock
// with a timeout (flock, which the kernel drops when its holder dies), and files replaced so that a crash
// leaves the old content or the new, never a mix (temp file in the same directory, fsync, rename, fsync the
// directory). A crash between the temp file and the rename leaves the temp file; LockDir removes such
// leftovers, since under the directory's lock nobody else can be writing them.
//
// Users: the agent's checkpoint (ipam/store), the release journal (ipam/journal), the agent's socket lock
// (ipam/server) and the installed plugin binary.
package statefile

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/gofrs/flock"
)

// TempMarker is in the name of every temp file: "<name>" + TempMarker + random.
const TempMarker = ".tmp-"

// ErrLockTimeout: another process held the lock until the deadline.
var ErrLockTimeout = errors.New("lock held by another process")

// lockPoll is how often a contended lock is tried again.
const lockPoll = 10 * time.Millisecond

// Lock is an exclusive flock on a file, held until Unlock or until the holding process exits.
type Lock struct {
	fl *flock.Flock
}

// LockFile takes an exclusive flock on path (created with mode 0600 when missing), trying again while
// another process holds it, for at most timeout; a timeout of 0 tries once. Two LockFile calls in one
// process exclude each other too (each opens its own descriptor).
func LockFile(path string, timeout time.Duration) (*Lock, error) {
	fl := flock.New(path, flock.SetPermissions(0o600))
	var ok bool
	var err error
	if timeout <= 0 {
		ok, err = fl.TryLock()
	} else {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		ok, err = fl.TryLockContext(ctx, lockPoll)
		cancel()
		if errors.Is(err, context.DeadlineExceeded) {
			ok, err = false, nil
		}
	}
	switch {
	case err != nil:
		return nil, fmt.Errorf("lock %s: %w", path, err)
	case !ok && timeout <= 0:
		return nil, fmt.Errorf("lock %s: %w", path, ErrLockTimeout)
	case !ok:
		return nil, fmt.Errorf("lock %s after %s: %w", path, timeout, ErrLockTimeout)
	}
	return &Lock{fl: fl}, nil
}

// LockDir creates dir (mode 0700) when missing, takes LockFile(dir/lockName, timeout), and removes the
// temp files a crashed Write left in dir. Every writer of dir must hold its lock.
func LockDir(dir, lockName string, timeout time.Duration) (*Lock, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create directory %s: %w", dir, err)
	}
	l, err := LockFile(filepath.Join(dir, lockName), timeout)
	if err != nil {
		return nil, err
	}
	if err := removeTemps(dir); err != nil {
		return nil, errors.Join(err, l.Unlock())
	}
	return l, nil
}

// Unlock releases the lock. Closing the descriptor would release it too; the explicit LOCK_UN lets a
// failure be reported instead of ignored.
func (l *Lock) Unlock() error {
	if err := l.fl.Unlock(); err != nil {
		return fmt.Errorf("unlock %s: %w", l.fl.Path(), err)
	}
	return nil
}

func removeTemps(dir string) error {
	leftovers, err := filepath.Glob(filepath.Join(dir, "*"+TempMarker+"*"))
	if err != nil {
		return fmt.Errorf("list temp files in %s: %w", dir, err)
	}
	for _, p := range leftovers {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove leftover %s: %w", p, err)
		}
	}
	return nil
}

// WriteFile replaces path with data, mode perm.
func WriteFile(path string, data []byte, perm fs.FileMode) error {
	return Write(path, bytes.NewReader(data), perm, nil)
}

// Write replaces path with what src reads, mode perm (whatever the umask). beforeRename, when not nil
// (tests), runs between the temp file's fsync and the rename: the window a crash would hit. On any error
// the temp file is gone and path is as it was.
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
