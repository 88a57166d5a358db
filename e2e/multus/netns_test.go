package multus

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// createNetNS makes a named netns at path like `ip netns add` (named after the region's prefix, so that
// fabric.Cleanup removes what a killed run left) and opens it with a route netlink handle. Unshare runs
// on a goroutine whose locked thread is never unlocked, so the runtime destroys that thread instead of
// reusing it in the new netns.
func createNetNS(path string) (ns.NetNS, netlinksafe.Handle, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, netlinksafe.Handle{}, fmt.Errorf("create netns %s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return nil, netlinksafe.Handle{}, fmt.Errorf("create netns %s: %w", path, err)
	}
	_ = f.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked, see above
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("unshare: %w", err)
			return
		}
		self := fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid())
		errc <- unix.Mount(self, path, "none", unix.MS_BIND, "")
	}()
	if err := <-errc; err != nil {
		_ = os.Remove(path)
		return nil, netlinksafe.Handle{}, fmt.Errorf("create netns %s: %w", path, err)
	}
	nsh, err := ns.GetNS(path)
	if err != nil {
		_ = deleteNetNS(path)
		return nil, netlinksafe.Handle{}, fmt.Errorf("open netns %s: %w", path, err)
	}
	h, err := netlinksafe.NewHandleAt(netns.NsHandle(nsh.Fd()), unix.NETLINK_ROUTE)
	if err != nil {
		_ = nsh.Close()
		_ = deleteNetNS(path)
		return nil, netlinksafe.Handle{}, fmt.Errorf("netlink handle in %s: %w", path, err)
	}
	return nsh, h, nil
}

// deleteNetNS unmounts and removes a named netns; a missing one is success.
func deleteNetNS(path string) error {
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount netns %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove netns %s: %w", path, err)
	}
	return nil
}
