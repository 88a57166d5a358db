package store

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/multinic/multinic/internal/statefile"
)

const (
	// CheckpointFile is the checkpoint's name inside the store directory.
	CheckpointFile = "checkpoint.json"
	// LockFile is the flock target inside the store directory; it is never removed, so every agent locks the
	// same inode.
	LockFile = "lock"

	dirMode  = 0o700
	fileMode = 0o600
)

// FileStore is a Store in one directory. Save needs the lock (Lock); Load does not, so tools can read a
// live agent's state.
type FileStore struct {
	dir string

	mu   sync.Mutex
	lock *statefile.Lock // non-nil while the flock is held

	// beforeRename, when set (tests only), runs after the temp file is written and synced and before it
	// replaces the checkpoint: the window a crash would hit.
	beforeRename func() error
}

// NewFileStore returns a store in dir, creating it (mode 0700) when missing. It does not take the lock.
func NewFileStore(dir string) (*FileStore, error) {
	if dir == "" {
		return nil, errors.New("create store: empty directory")
	}
	if err := os.MkdirAll(dir, dirMode); err != nil {
		return nil, fmt.Errorf("create store dir %s: %w", dir, err)
	}
	return &FileStore{dir: dir}, nil
}

// Dir returns the store's directory.
func (s *FileStore) Dir() string { return s.dir }

// Path returns the checkpoint's path.
func (s *FileStore) Path() string { return filepath.Join(s.dir, CheckpointFile) }

// Lock takes the exclusive flock, waiting up to timeout for another holder to let go, and removes the temp
// files an interrupted Save left behind (statefile.LockDir).
func (s *FileStore) Lock(timeout time.Duration) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lock != nil {
		return fmt.Errorf("lock %s: %w", filepath.Join(s.dir, LockFile), ErrLocked)
	}
	l, err := statefile.LockDir(s.dir, LockFile, timeout)
	if err != nil {
		return err
	}
	s.lock = l
	return nil
}

// Unlock releases the flock, reporting a failure.
func (s *FileStore) Unlock() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lock == nil {
		return fmt.Errorf("unlock %s: %w", filepath.Join(s.dir, LockFile), ErrNotLocked)
	}
	l := s.lock
	s.lock = nil
	return l.Unlock()
}

// Load reads the checkpoint. A missing file is (zero, false, nil); an unreadable, empty or unparsable one
// is an error wrapping ErrCorrupt and naming the path; a newer version wraps ErrUnsupportedVersion.
func (s *FileStore) Load() (Checkpoint, bool, error) {
	path := s.Path()
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return Checkpoint{}, false, nil
	}
	if err != nil {
		return Checkpoint{}, false, fmt.Errorf("read checkpoint %s: %w", path, err)
	}
	cp, err := decode(data)
	if err != nil {
		return Checkpoint{}, false, fmt.Errorf("load checkpoint %s: %w", path, err)
	}
	return cp, true, nil
}

// decode checks the version before the body so a newer format is reported as such, not as corruption.
func decode(data []byte) (Checkpoint, error) {
	var head struct {
		Version *int `json:"version"`
	}
	if err := json.Unmarshal(data, &head); err != nil {
		return Checkpoint{}, fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	if head.Version == nil {
		return Checkpoint{}, fmt.Errorf("%w: no \"version\"", ErrCorrupt)
	}
	if v := *head.Version; v != Version {
		return Checkpoint{}, fmt.Errorf("%w: version %d, this build reads %d", ErrUnsupportedVersion, v, Version)
	}
	var cp Checkpoint
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&cp); err != nil {
		return Checkpoint{}, fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	return cp, nil
}

// Save writes cp (stamped with Version) durably: temp file, fsync, rename, fsync the directory.
func (s *FileStore) Save(cp Checkpoint) (retErr error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	path := s.Path()
	if s.lock == nil {
		return fmt.Errorf("save checkpoint %s: %w", path, ErrNotLocked)
	}
	cp.Version = Version
	// Compact: the whole checkpoint is encoded on every change, and indenting it was about a third of the
	// agent's CPU under churn (`jq . checkpoint.json` reads it).
	data, err := json.Marshal(cp)
	if err != nil {
		return fmt.Errorf("encode checkpoint %s: %w", path, err)
	}
	data = append(data, '\n')

	return statefile.Write(path, bytes.NewReader(data), fileMode, s.beforeRename)
}
