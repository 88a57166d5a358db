// Package journal keeps the releases the plugin's DEL could not hand to the agent (it was down) until they
// are delivered: one record per (containerID, ifName), naming the agent socket it was meant for, written
// and removed under the directory's lock (internal/statefile). Two parties replay it, each only the records
// of its own socket: the agent when it starts, before it serves its socket (so no plugin call is needed),
// and the plugin on ADD, DEL and CNI GC for the socket its configuration names (for an agent restarted without
// the journal directory in view). CHECK and STATUS only read, so they leave the journal alone.
package journal

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/multinic/multinic/internal/statefile"
	"github.com/multinic/multinic/ipam/api"
)

// DefaultDir is the journal's directory on a node, in the agent's state mount.
const DefaultDir = "/var/lib/multinic/pending-releases"

// version is the version of a record.
const version = 1

// lockTimeout bounds the wait for another process working on the journal.
const lockTimeout = 5 * time.Second

// lockName is the journal directory's lock file; its leading dot keeps it out of the records.
const lockName = ".lock"

// Record is one pending release.
type Record struct {
	Version     int       `json:"version"`
	ContainerID string    `json:"containerID"`
	IfName      string    `json:"ifName"`
	Card        int       `json:"card"`
	AgentSocket string    `json:"agentSocket,omitempty"`
	JournaledAt time.Time `json:"journaledAt"`
}

// Releaser is what a replay needs: the agent's client, or the agent's own backend.
type Releaser interface {
	Release(ctx context.Context, req api.ReleaseRequest) (api.ReleaseResponse, error)
}

var _ Releaser = &api.Client{}

// recordFile names the record of (containerID, ifName); both are free of '/' but may hold '_' and '.'.
func recordFile(dir, containerID, ifName string) string {
	sum := sha256.Sum256([]byte(containerID + "\x00" + ifName))
	return filepath.Join(dir, hex.EncodeToString(sum[:16])+".json")
}

// Add records a pending release durably (statefile.WriteFile). Recording the same (containerID, ifName)
// twice keeps one record.
func Add(dir string, rec Record) (retErr error) {
	rec.Version = version
	if rec.JournaledAt.IsZero() {
		rec.JournaledAt = time.Now().UTC()
	}
	data, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("journal release of %s/%s: %w", rec.ContainerID, rec.IfName, err)
	}
	l, err := lock(dir)
	if err != nil {
		return fmt.Errorf("journal release of %s/%s: %w", rec.ContainerID, rec.IfName, err)
	}
	defer func() { retErr = errors.Join(retErr, l.Unlock()) }()
	if err := statefile.WriteFile(recordFile(dir, rec.ContainerID, rec.IfName), data, 0o600); err != nil {
		return fmt.Errorf("journal release of %s/%s: %w", rec.ContainerID, rec.IfName, err)
	}
	return nil
}

// Pending says whether a release of (containerID, ifName) is pending.
func Pending(dir, containerID, ifName string) bool {
	_, err := os.Stat(recordFile(dir, containerID, ifName))
	return err == nil
}

// Replay hands every pending release in dir meant for the agent at socket to r and removes the records it
// applied; records of other sockets are left to their agent. A record without a socket is the default
// socket's. It stops at the first api.ErrUnavailable (the agent is still down) and returns it. A record the
// agent refuses as invalid can never succeed: it is removed and reported. A missing or empty dir is
// nothing to do. Releasing is idempotent, so a replay racing a DEL of the same attachment is harmless.
func Replay(ctx context.Context, dir, socket string, r Releaser) (released int, retErr error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("replay release journal %s: %w", dir, err)
	}
	if !hasRecords(entries) {
		return 0, nil
	}
	l, err := lock(dir)
	if err != nil {
		return 0, fmt.Errorf("replay release journal %s: %w", dir, err)
	}
	defer func() { retErr = errors.Join(retErr, l.Unlock()) }()
	// Read again under the lock.
	if entries, err = os.ReadDir(dir); err != nil {
		return 0, fmt.Errorf("replay release journal %s: %w", dir, err)
	}
	var errs []error
	removed := false
	for _, e := range entries {
		if !isRecord(e) {
			continue
		}
		path := filepath.Join(dir, e.Name())
		data, err := os.ReadFile(path)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		var rec Record
		if err := json.Unmarshal(data, &rec); err != nil || rec.Version != version {
			errs = append(errs, fmt.Errorf("release journal record %s: unreadable or unknown version, left in place", path))
			continue
		}
		if recSocket := cmp.Or(rec.AgentSocket, api.DefaultSocketPath); recSocket != socket {
			continue
		}
		_, err = r.Release(ctx, api.ReleaseRequest{ContainerID: rec.ContainerID, IfName: rec.IfName})
		switch {
		case errors.Is(err, api.ErrUnavailable):
			errs = append(errs, err)
			return released, fmt.Errorf("replay release journal %s: %w", dir, errors.Join(errs...))
		case errors.Is(err, api.ErrInvalid):
			errs = append(errs, fmt.Errorf("release journal record %s dropped: %w", path, err))
		case err != nil:
			errs = append(errs, err)
			continue
		default:
			released++
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
		removed = true
	}
	if removed {
		if err := statefile.SyncDir(dir); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return released, fmt.Errorf("replay release journal %s: %w", dir, err)
	}
	return released, nil
}

func isRecord(e fs.DirEntry) bool {
	return e.Type().IsRegular() && strings.HasSuffix(e.Name(), ".json") && !strings.HasPrefix(e.Name(), ".")
}

func hasRecords(entries []fs.DirEntry) bool {
	for _, e := range entries {
		if isRecord(e) {
			return true
		}
	}
	return false
}

// lock locks dir (made with mode 0700 when missing) against other processes working on the journal,
// waiting at most lockTimeout, and removes the temp files of a write a crash interrupted.
func lock(dir string) (*statefile.Lock, error) {
	return statefile.LockDir(dir, lockName, lockTimeout)
}
