package namedns

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"

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
	t.Cleanup(func() { _ = Remove(path) })

	// This thread's own entry, not /proc/self: the throwaway thread may be the process's main thread, which Go
	// wedges instead of destroying, and /proc/self names that thread.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	self := fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid())
	before := inode(t, self)
	if err := Create(path); err != nil {
		t.Fatal(err)
	}
	if got := inode(t, path); got == before {
		t.Fatalf("%s is not a new netns (inode %d)", path, got)
	}
	if inode(t, self) != before {
		t.Error("the calling thread was left in another netns")
	}
	if err := Create(path); err == nil {
		t.Error("Create over an existing netns succeeded")
	}
	if err := Remove(path); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("%s still exists after Remove (%v)", path, err)
	}
	if err := Remove(path); err != nil {
		t.Errorf("second Remove: %v", err)
	}
}
