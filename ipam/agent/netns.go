package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/multinic/multinic/ipam/store"
)

// netnsVersion is the format of NetnsFile this build writes and reads.
const netnsVersion = 1

// netnsRecords remembers the netns path (CNI_NETNS) of every allocation, for GC without an API server. The
// allocator's checkpoint has no field for it, so it lives in a file of its own, written the same crash-safe
// way (temp, fsync, rename, fsync dir) before the allocation is made: after a crash every allocation has its
// record, and a record without an allocation is pruned by GC once it is older than pruneAfter.
type netnsRecords struct {
	path string

	mu    sync.Mutex
	recs  map[gcKeyID]netnsRecord
	dirty bool // recs has drops not yet written; they are written with the next change or by flush
}

type gcKeyID struct{ ContainerID, IfName string }

type netnsRecord struct {
	Netns string    `json:"netns"`
	Since time.Time `json:"since"`
}

type netnsFile struct {
	Version int          `json:"version"`
	Records []netnsEntry `json:"records"`
}

type netnsEntry struct {
	ContainerID string    `json:"containerID"`
	IfName      string    `json:"ifName"`
	Netns       string    `json:"netns"`
	Since       time.Time `json:"since"`
}

func loadNetnsRecords(dir string) (*netnsRecords, error) {
	r := &netnsRecords{path: filepath.Join(dir, NetnsFile), recs: map[gcKeyID]netnsRecord{}}
	// The caller holds the state dir's lock: nobody else can be writing these.
	leftovers, err := filepath.Glob(r.path + ".tmp-*")
	if err != nil {
		return nil, fmt.Errorf("list temp files in %s: %w", dir, err)
	}
	for _, p := range leftovers {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("remove leftover %s: %w", p, err)
		}
	}
	data, err := os.ReadFile(r.path)
	if errors.Is(err, os.ErrNotExist) {
		return r, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read netns records %s: %w", r.path, err)
	}
	var f netnsFile
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("parse netns records %s: %w", r.path, err)
	}
	if f.Version != netnsVersion {
		return nil, fmt.Errorf("netns records %s: version %d, this build reads %d", r.path, f.Version, netnsVersion)
	}
	for _, e := range f.Records {
		r.recs[gcKeyID{e.ContainerID, e.IfName}] = netnsRecord{Netns: e.Netns, Since: e.Since}
	}
	return r, nil
}

// put records netns for (containerID, ifName) and persists it before returning. With keep (the pair already
// holds an allocation) an existing record is left alone: a repeated ADD must not rewrite it.
func (r *netnsRecords) put(containerID, ifName, netns string, keep bool) error {
	if netns == "" {
		return nil
	}
	k := gcKeyID{containerID, ifName}
	r.mu.Lock()
	defer r.mu.Unlock()
	cur, ok := r.recs[k]
	if ok && (keep || cur.Netns == netns) {
		return nil
	}
	r.recs[k] = netnsRecord{Netns: netns, Since: time.Now().UTC().Round(0)}
	if err := r.saveLocked(); err != nil {
		if ok {
			r.recs[k] = cur
		} else {
			delete(r.recs, k)
		}
		return err
	}
	return nil
}

func (r *netnsRecords) get(containerID, ifName string) (string, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	rec, ok := r.recs[gcKeyID{containerID, ifName}]
	return rec.Netns, ok
}

// drop forgets the record in memory; the file catches up with the next write or flush. A record left on
// disk by a crash is harmless: prune removes it.
func (r *netnsRecords) drop(containerID, ifName string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	k := gcKeyID{containerID, ifName}
	if _, ok := r.recs[k]; ok {
		delete(r.recs, k)
		r.dirty = true
	}
}

// prune drops records of no allocation (live says which pairs hold one) older than before, and writes the
// file when anything changed since the last write.
func (r *netnsRecords) prune(live func(containerID, ifName string) bool, before time.Time) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	for k, rec := range r.recs {
		if rec.Since.Before(before) && !live(k.ContainerID, k.IfName) {
			delete(r.recs, k)
			r.dirty = true
		}
	}
	if !r.dirty {
		return nil
	}
	return r.saveLocked()
}

func (r *netnsRecords) saveLocked() (retErr error) {
	f := netnsFile{Version: netnsVersion, Records: make([]netnsEntry, 0, len(r.recs))}
	for k, rec := range r.recs {
		f.Records = append(f.Records, netnsEntry{ContainerID: k.ContainerID, IfName: k.IfName, Netns: rec.Netns, Since: rec.Since})
	}
	data, err := json.Marshal(f)
	if err != nil {
		return fmt.Errorf("encode netns records: %w", err)
	}
	if err := store.WriteFile(r.path, data); err != nil {
		return fmt.Errorf("save netns records: %w", err)
	}
	r.dirty = false
	return nil
}
