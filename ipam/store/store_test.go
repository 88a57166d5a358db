package store

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/multinic/multinic/internal/statefile"
	"github.com/multinic/multinic/ipam/api"
)

func sample() Checkpoint {
	at := time.Date(2025, 11, 25, 20, 0, 0, 123, time.UTC)
	return Checkpoint{
		Allocations: []api.Allocation{{
			AllocateRequest: api.AllocateRequest{Card: 3, ContainerID: "c1", IfName: "net1",
				PodRef: api.PodRef{PodNamespace: "ns", PodName: "p", PodUID: "u1"},
				Netns:  "/var/run/netns/cni-1", Network: "multinic-card-3"},
			Address: netip.MustParseAddr("10.0.3.10"), ENIID: "eni-3", AllocatedAt: at,
		}, {
			AllocateRequest: api.AllocateRequest{Card: 4, ContainerID: "c1", IfName: "net2",
				PodRef: api.PodRef{PodNamespace: "ns", PodName: "p", PodUID: "u1"}, Exclusive: true},
			Address: netip.MustParseAddr("10.0.4.4"), ENIID: "eni-4x", AllocatedAt: at,
		}},
		Addresses: []Address{
			{Card: 3, Address: netip.MustParseAddr("10.0.3.10"), ENIID: "eni-3"},
			{Card: 3, Address: netip.MustParseAddr("10.0.3.11"), ENIID: "eni-3", RestUntil: at.Add(30 * time.Second)},
			{Card: 4, Address: netip.MustParseAddr("10.0.4.4"), ENIID: "eni-4x", Exclusive: true},
		},
		Recent: &Recent{
			ENIs: []RecentENI{{ID: "eni-4x", At: at, Card: 4, Device: 2, AttachmentID: "eni-attach-1", MAC: "02:00:00:00:00:04",
				SubnetID: "subnet-4", Exclusive: true, Primary: netip.MustParseAddr("10.0.4.4")}, {ID: "eni-5", At: at, Card: 5}},
			Detached:   []RecentENI{{ID: "eni-6", At: at}},
			Assigned:   []RecentAddresses{{ENIID: "eni-3", At: at, Addresses: []netip.Addr{netip.MustParseAddr("10.0.3.11")}}},
			Unassigned: []RecentAddresses{{ENIID: "eni-3", At: at, Addresses: []netip.Addr{netip.MustParseAddr("10.0.3.12")}}},
		},
	}
}

// lockedStore returns a FileStore in a fresh directory with the lock held until the test ends.
func lockedStore(t *testing.T, dir string) *FileStore {
	t.Helper()
	s, err := NewFileStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Lock(time.Second); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Unlock(); err != nil && !errors.Is(err, ErrNotLocked) {
			t.Errorf("unlock: %v", err)
		}
	})
	return s
}

func TestRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name  string
		store func(t *testing.T) Store
	}{
		{"file", func(t *testing.T) Store { return lockedStore(t, filepath.Join(t.TempDir(), "state")) }},
		{"memory", func(t *testing.T) Store { return NewMemory() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := tc.store(t)
			if _, found, err := s.Load(); err != nil || found {
				t.Fatalf("empty store: found=%v err=%v, want nothing", found, err)
			}
			want := sample()
			if err := s.Save(want); err != nil {
				t.Fatal(err)
			}
			got, found, err := s.Load()
			if err != nil || !found {
				t.Fatalf("load: found=%v err=%v", found, err)
			}
			want.Version = Version
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("round trip:\n got %+v\nwant %+v", got, want)
			}
			// A second save replaces the first.
			want.Allocations = want.Allocations[:1]
			if err := s.Save(want); err != nil {
				t.Fatal(err)
			}
			if got, _, _ := s.Load(); len(got.Allocations) != 1 {
				t.Fatalf("after second save: %d allocations, want 1", len(got.Allocations))
			}
		})
	}
}

func TestSaveNeedsLock(t *testing.T) {
	s, err := NewFileStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Save(sample()); !errors.Is(err, ErrNotLocked) {
		t.Fatalf("save without lock: %v, want ErrNotLocked", err)
	}
	if err := s.Unlock(); !errors.Is(err, ErrNotLocked) {
		t.Fatalf("unlock without lock: %v, want ErrNotLocked", err)
	}
}

func TestCrashLeavesPreviousCheckpoint(t *testing.T) {
	dir := t.TempDir()
	s := lockedStore(t, dir)
	old := sample()
	if err := s.Save(old); err != nil {
		t.Fatal(err)
	}

	// Interrupted between write+fsync and rename: the checkpoint must be the old one and no temp left.
	s.beforeRename = func() error { return errors.New("power cut") }
	next := sample()
	next.Allocations = nil
	if err := s.Save(next); err == nil || !strings.Contains(err.Error(), "power cut") {
		t.Fatalf("interrupted save: %v", err)
	}
	s.beforeRename = nil
	if got, _, err := s.Load(); err != nil || len(got.Allocations) != 2 {
		t.Fatalf("after interrupted save: %d allocations, err %v; want the old 2", len(got.Allocations), err)
	}
	if temps := globTemps(t, dir); len(temps) != 0 {
		t.Fatalf("failed save left %v", temps)
	}

	// A real crash leaves a half-written temp file behind: it is ignored by Load and removed by the next
	// owner's Lock.
	half := filepath.Join(dir, tempPrefix+"12345")
	if err := os.WriteFile(half, []byte(`{"version":1,"allocations":[{"card":`), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, _, err := s.Load(); err != nil || len(got.Allocations) != 2 {
		t.Fatalf("with leftover temp: %d allocations, err %v", len(got.Allocations), err)
	}
	if err := s.Unlock(); err != nil {
		t.Fatal(err)
	}
	restarted := lockedStore(t, dir)
	if temps := globTemps(t, dir); len(temps) != 0 {
		t.Fatalf("lock did not clean leftovers: %v", temps)
	}
	got, found, err := restarted.Load()
	want := old
	want.Version = Version
	if err != nil || !found || !reflect.DeepEqual(got, want) {
		t.Fatalf("after restart: found=%v err=%v\n got %+v\nwant %+v", found, err, got, want)
	}
}

// tempPrefix starts the name of the checkpoint's temp files.
const tempPrefix = CheckpointFile + statefile.TempMarker

func globTemps(t *testing.T, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, tempPrefix+"*"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestLoadWithoutNetns: a checkpoint written before allocations had a netns and a network name loads, both
// unknown.
func TestLoadWithoutNetns(t *testing.T) {
	s := lockedStore(t, t.TempDir())
	old := `{"version":1,"allocations":[{"card":3,"containerID":"c1","ifName":"net1","podUID":"u1",` +
		`"address":"10.0.3.10","eniID":"eni-3","allocatedAt":"2025-11-25T20:00:00Z"}],` +
		`"addresses":[{"card":3,"address":"10.0.3.10","eniID":"eni-3"}]}`
	if err := os.WriteFile(s.Path(), []byte(old), 0o600); err != nil {
		t.Fatal(err)
	}
	got, found, err := s.Load()
	if err != nil || !found {
		t.Fatalf("load: found=%v err=%v", found, err)
	}
	want := api.Allocation{AllocateRequest: api.AllocateRequest{Card: 3, ContainerID: "c1", IfName: "net1",
		PodRef: api.PodRef{PodUID: "u1"}}, Address: netip.MustParseAddr("10.0.3.10"), ENIID: "eni-3", AllocatedAt: time.Date(2025, 11, 25, 20, 0, 0, 0, time.UTC)}
	if len(got.Allocations) != 1 || got.Allocations[0] != want {
		t.Fatalf("allocations %+v, want [%+v]", got.Allocations, want)
	}
}

// TestLoadRecordedCheckpoint: a checkpoint written by the agent before the allocation record was one type
// (recorded from main at 82bc98e through the real allocator and FileStore) loads field for field, and saving
// it again writes the same bytes: the format did not move in either direction.
func TestLoadRecordedCheckpoint(t *testing.T) {
	recorded, err := os.ReadFile(filepath.Join("testdata", "checkpoint-v1-main-82bc98e.json"))
	if err != nil {
		t.Fatal(err)
	}
	s := lockedStore(t, t.TempDir())
	if err := os.WriteFile(s.Path(), recorded, 0o600); err != nil {
		t.Fatal(err)
	}
	got, found, err := s.Load()
	if err != nil || !found {
		t.Fatalf("load: found=%v err=%v", found, err)
	}
	at := func(sec int) time.Time { return time.Date(2025, 11, 25, 12, 0, sec, 0, time.UTC) }
	ip := netip.MustParseAddr
	want := Checkpoint{
		Version: 1,
		Allocations: []api.Allocation{{
			AllocateRequest: api.AllocateRequest{Card: 1, ContainerID: "5f2c9e0a", IfName: "net1",
				PodRef: api.PodRef{PodNamespace: "ml", PodName: "trainer-0", PodUID: "6b1f0c2e-1111-4c7a-9d00-0123456789ab"},
				Netns:  "/var/run/netns/cni-5f2c9e0a", Network: "card1"},
			Address: ip("10.0.16.5"), ENIID: "eni-0a1", AllocatedAt: at(0),
		}, {
			// From a plugin older than pods, netns and networks in the request.
			AllocateRequest: api.AllocateRequest{Card: 1, ContainerID: "old-plugin", IfName: "net1"},
			Address:         ip("10.0.16.6"), ENIID: "eni-0a1", AllocatedAt: at(1),
		}, {
			AllocateRequest: api.AllocateRequest{Card: 3, ContainerID: "9e8d7c6b", IfName: "net3",
				PodRef: api.PodRef{PodNamespace: "ml", PodName: "trainer-1"}, Exclusive: true,
				Netns: "/var/run/netns/cni-9e8d7c6b", Network: "card3-exclusive"},
			Address: ip("10.0.48.9"), ENIID: "eni-0c3", AllocatedAt: at(2),
		}},
		Addresses: []Address{
			{Card: 1, Address: ip("10.0.16.5"), ENIID: "eni-0a1"},
			{Card: 1, Address: ip("10.0.16.6"), ENIID: "eni-0a1"},
			{Card: 1, Address: ip("10.0.16.7"), ENIID: "eni-0a1"},
			{Card: 3, Address: ip("10.0.48.9"), ENIID: "eni-0c3", Exclusive: true},
			{Card: 3, Address: ip("10.0.48.10"), ENIID: "eni-0c4", Exclusive: true, RestUntil: at(33),
				Away: true, AwayNetns: "/var/run/netns/cni-gone"},
		},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("loaded\n%+v\nwant\n%+v", got, want)
	}
	again := lockedStore(t, t.TempDir())
	if err := again.Save(got); err != nil {
		t.Fatal(err)
	}
	written, err := os.ReadFile(again.Path())
	if err != nil {
		t.Fatal(err)
	}
	if string(written) != string(recorded) {
		t.Fatalf("saved again:\n%s\nrecorded:\n%s", written, recorded)
	}
}

func TestLoadBadCheckpoint(t *testing.T) {
	for _, tc := range []struct {
		name    string
		content string
		want    error
	}{
		{"newer version", `{"version":2,"allocations":[],"shiny":true}`, ErrUnsupportedVersion},
		{"zero version", `{"version":0}`, ErrUnsupportedVersion},
		{"no version", `{"allocations":[]}`, ErrCorrupt},
		{"empty file", ``, ErrCorrupt},
		{"truncated", `{"version":1,"allocations":[{"card":3,"addr`, ErrCorrupt},
		{"garbage", "\x00\x00\x00\x00", ErrCorrupt},
		{"bad address", `{"version":1,"allocations":[{"card":1,"address":"10.0.0.300"}]}`, ErrCorrupt},
		{"wrong type", `{"version":"1"}`, ErrCorrupt},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := lockedStore(t, t.TempDir())
			if err := os.WriteFile(s.Path(), []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
			_, found, err := s.Load()
			if !errors.Is(err, tc.want) {
				t.Fatalf("load: %v, want %v", err, tc.want)
			}
			if found {
				t.Error("found = true on error")
			}
			if !strings.Contains(err.Error(), s.Path()) {
				t.Errorf("error %q does not name %s", err, s.Path())
			}
		})
	}
}

func TestLockContention(t *testing.T) {
	dir := t.TempDir()
	first, err := NewFileStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	second, err := NewFileStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := first.Lock(time.Second); err != nil {
		t.Fatal(err)
	}
	if err := first.Lock(time.Second); !errors.Is(err, ErrLocked) {
		t.Fatalf("second Lock on the same store: %v, want ErrLocked", err)
	}

	const timeout = 150 * time.Millisecond
	start := time.Now()
	err = second.Lock(timeout)
	if !errors.Is(err, ErrLockTimeout) {
		t.Fatalf("contended lock: %v, want ErrLockTimeout", err)
	}
	if waited := time.Since(start); waited < timeout {
		t.Fatalf("gave up after %s, before the %s timeout", waited, timeout)
	}
	if err := second.Save(sample()); !errors.Is(err, ErrNotLocked) {
		t.Fatalf("save by the loser: %v, want ErrNotLocked", err)
	}

	// Released while the second one waits: it gets the lock well before its deadline.
	go func() {
		time.Sleep(50 * time.Millisecond)
		if err := first.Unlock(); err != nil {
			t.Errorf("unlock: %v", err)
		}
	}()
	if err := second.Lock(5 * time.Second); err != nil {
		t.Fatalf("lock after unlock: %v", err)
	}
	if err := second.Save(sample()); err != nil {
		t.Fatalf("save by the new owner: %v", err)
	}
	if err := second.Unlock(); err != nil {
		t.Fatal(err)
	}
}

func TestModes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "state")
	s := lockedStore(t, dir)
	if err := s.Save(sample()); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		path string
		want os.FileMode
	}{
		{dir, os.ModeDir | 0o700},
		{filepath.Dir(dir), os.ModeDir | 0o700},
		{s.Path(), 0o600},
		{filepath.Join(dir, LockFile), 0o600},
	} {
		fi, err := os.Stat(tc.path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != tc.want {
			t.Errorf("%s: mode %v, want %v", tc.path, fi.Mode(), tc.want)
		}
	}
}

func TestMemoryFailSaves(t *testing.T) {
	m := NewMemory()
	if err := m.Save(sample()); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("disk full")
	m.FailSaves(boom)
	if err := m.Save(Checkpoint{}); !errors.Is(err, boom) {
		t.Fatalf("save: %v, want %v", err, boom)
	}
	got, _, _ := m.Load()
	if len(got.Allocations) != 2 || m.Saves() != 1 {
		t.Fatalf("failed save changed the checkpoint: %d allocations, %d saves", len(got.Allocations), m.Saves())
	}
}
