package server

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/multinic/multinic/internal/statefile"
)

// maxSocketPath is sizeof(sockaddr_un.sun_path) less the terminating NUL on Linux.
const maxSocketPath = 107

// Listen opens the agent's socket at path, readable and writable by root only (mode 0600). It creates the
// parent directory with mode 0700 when missing. A socket file left behind by a dead agent is replaced; a
// socket another process still serves is refused. A lock file next to the socket (path + ".lock", held
// until the listener is closed) keeps two agents starting at once from replacing each other's socket.
// Closing the listener removes the socket file.
func Listen(path string) (net.Listener, error) {
	if len(path) > maxSocketPath {
		return nil, fmt.Errorf("listen on %s: socket path is %d bytes, at most %d fit", path, len(path), maxSocketPath)
	}
	dir := filepath.Dir(path)
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("create socket directory %s: %w", dir, err)
		}
		// MkdirAll's mode went through the umask; set it exactly.
		if err := os.Chmod(dir, 0o700); err != nil {
			return nil, fmt.Errorf("chmod socket directory %s: %w", dir, err)
		}
	}

	lock, err := lockSocket(path + ".lock")
	if err != nil {
		return nil, err
	}
	l, err := listenLocked(path)
	if err != nil {
		return nil, errors.Join(err, lock.Unlock())
	}
	return &lockedListener{Listener: l, lock: lock}, nil
}

func listenLocked(path string) (net.Listener, error) {
	if err := removeStale(path); err != nil {
		return nil, err
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	// Listen's mode went through the umask: set it exactly before anyone is served. Until then the socket is
	// as private as its directory (0700 when we made it).
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("chmod socket %s: %w", path, err)
	}
	return l, nil
}

// removeStale removes a socket file nobody answers on. Anything else at path is left alone and refused.
func removeStale(path string) error {
	fi, err := os.Lstat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return fmt.Errorf("check socket %s: %w", path, err)
	case fi.Mode().Type() != fs.ModeSocket:
		return fmt.Errorf("listen on %s: exists and is not a socket (%s), refusing to replace it", path, fi.Mode().Type())
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("listen on %s: another process is serving this socket, refusing to take it over", path)
	}
	// Only a refused connection proves the socket is dead; a timeout (full backlog) means someone is there.
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("check socket %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove stale socket %s: %w", path, err)
	}
	return nil
}

// lockSocket takes the socket's lock without waiting.
func lockSocket(path string) (*statefile.Lock, error) {
	l, err := statefile.LockFile(path, 0)
	if errors.Is(err, statefile.ErrLockTimeout) {
		return nil, fmt.Errorf("lock %s: another agent holds it, refusing to take over its socket", path)
	}
	return l, err
}

// lockedListener releases the socket lock once the listener (and with it the socket file) is gone.
type lockedListener struct {
	net.Listener
	lock *statefile.Lock
}

func (l *lockedListener) Close() error {
	err := l.Listener.Close()
	// The lock file stays: removing it would race with a new agent that already opened it. Unlocking twice
	// is nothing.
	return errors.Join(err, l.lock.Unlock())
}
