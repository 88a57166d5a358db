package namedns_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/multinic/multinic/internal/namedns"
	"github.com/multinic/multinic/internal/nettest"
)

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

func TestCreateRemove(t *testing.T) {
	nettest.RequireRoot(t)
	path := filepath.Join(t.TempDir(), "ns", "a")
	t.Cleanup(func() { _ = namedns.Remove(path) })

	// This thread's own entry, not /proc/self: the throwaway thread may be the process's main thread, which Go
	// wedges instead of destroying, and /proc/self names that thread.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	self := fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid())
	before := inode(t, self)
	if err := namedns.Create(path); err != nil {
		t.Fatal(err)
	}
	if got := inode(t, path); got == before {
		t.Fatalf("%s is not a new netns (inode %d)", path, got)
	}
	if inode(t, self) != before {
		t.Error("the calling thread was left in another netns")
	}
	if err := namedns.Create(path); err == nil {
		t.Error("Create over an existing netns succeeded")
	}
	if err := namedns.Remove(path); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("%s still exists after Remove (%v)", path, err)
	}
	if err := namedns.Remove(path); err != nil {
		t.Errorf("second Remove: %v", err)
	}
}

// TestCreateOpen: CreateOpen makes a netns and a handle bound to it: the handle sees that netns's links
// (only lo), not the caller's. Open of a missing path or of a file that is no netns fails with ns's typed
// errors, which callers tell apart (a gone pod netns).
func TestCreateOpen(t *testing.T) {
	nettest.RequireRoot(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "a")
	t.Cleanup(func() { _ = namedns.Remove(path) })
	n, h, err := namedns.CreateOpen(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := nettest.LinkNames(t, h); len(got) != 1 || got[0] != "lo" {
		t.Errorf("links through the handle: %v, want only the new netns's lo", got)
	}
	if n.Path() != path {
		t.Errorf("netns path %s, want %s", n.Path(), path)
	}
	h.Close()
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := namedns.CreateOpen(path); err == nil {
		t.Error("CreateOpen over an existing netns succeeded")
	}

	var notExist ns.NSPathNotExistErr
	if _, _, err := namedns.Open(filepath.Join(dir, "missing")); !errors.As(err, &notExist) {
		t.Errorf("Open of a missing path: %v, want ns.NSPathNotExistErr", err)
	}
	plain := filepath.Join(dir, "plain")
	if err := os.WriteFile(plain, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	var notNS ns.NSPathNotNSErr
	if _, _, err := namedns.Open(plain); !errors.As(err, &notNS) {
		t.Errorf("Open of a plain file: %v, want ns.NSPathNotNSErr", err)
	}
}
