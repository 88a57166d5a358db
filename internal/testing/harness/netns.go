package harness

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"

	"github.com/multinic/multinic/internal/testing/fabric"
)

// shareNetNSDir makes /var/run/netns a shared mount point of its own, as `ip netns add` and
// containernetworking's testutils.NewNS do, before the region mounts anything under it. Otherwise the first
// testutils.NewNS (e.g. nettest's link probe) bind-mounts the folder onto itself recursively, which copies
// the region's netns mounts: the copies are unmounted at teardown, the originals underneath are not, and
// removing the netns files fails with EBUSY (seen in the test VM, which boots with a plain /run).
func shareNetNSDir() error {
	if err := os.MkdirAll(fabric.NetNSDir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", fabric.NetNSDir, err)
	}
	err := unix.Mount("", fabric.NetNSDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.EINVAL) { // EINVAL: not a mount point yet
		return fmt.Errorf("make %s shared: %w", fabric.NetNSDir, err)
	}
	if err := unix.Mount(fabric.NetNSDir, fabric.NetNSDir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind mount %s on itself: %w", fabric.NetNSDir, err)
	}
	if err := unix.Mount("", fabric.NetNSDir, "none", unix.MS_SHARED|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("make %s shared: %w", fabric.NetNSDir, err)
	}
	return nil
}

// writeSysctl writes /proc/sys/<key> (key like "net/ipv4/ip_forward") inside n. A key the kernel lacks is
// an error unless optional.
func writeSysctl(n ns.NetNS, key, value string, optional bool) error {
	err := n.Do(func(ns.NetNS) error {
		return os.WriteFile(filepath.Join("/proc/sys", key), []byte(value), 0o644)
	})
	if err != nil && !(optional && errors.Is(err, os.ErrNotExist)) {
		return fmt.Errorf("sysctl %s=%s in %s: %w", key, value, n.Path(), err)
	}
	return nil
}
