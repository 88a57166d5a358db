// Package namedns creates, opens and removes named network namespaces: a file (usually under
// /var/run/netns) with a netns bind-mounted on it, as `ip netns add` makes, without shelling out. A netns
// is opened with a route netlink handle bound to it, so that its links are read and changed without
// moving a thread into it (the agent's ENI links and pod netns, the fabric, the harnesses).
package namedns

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

// Create makes a new netns and bind-mounts it at path; path must not exist. The calling goroutine's
// thread never changes netns: the netns is made on a throwaway locked thread that is never unlocked,
// so Go retires it instead of reusing it in the new netns.
func Create(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("create netns %s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return fmt.Errorf("create netns %s: %w", path, err)
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
		if err := unix.Mount(self, path, "none", unix.MS_BIND, ""); err != nil {
			errc <- fmt.Errorf("bind mount: %w", err)
			return
		}
		errc <- nil
	}()
	if err := <-errc; err != nil {
		_ = os.Remove(path)
		return fmt.Errorf("create netns %s: %w", path, err)
	}
	return nil
}

// Remove unmounts and removes a named netns; a missing one is success. The netns itself dies once
// nothing (an fd, a process, a socket) holds it any more.
func Remove(path string) error {
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount netns %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove netns %s: %w", path, err)
	}
	return nil
}

// Open opens the netns at path and a route netlink handle bound to it; the caller closes both. An error
// opening the netns wraps ns.GetNS's (ns.NSPathNotExistErr, ns.NSPathNotNSErr).
func Open(path string) (ns.NetNS, netlinksafe.Handle, error) {
	n, err := ns.GetNS(path)
	if err != nil {
		return nil, netlinksafe.Handle{}, fmt.Errorf("open netns %s: %w", path, err)
	}
	h, err := Handle(n)
	if err != nil {
		_ = n.Close()
		return nil, netlinksafe.Handle{}, err
	}
	return n, h, nil
}

// Handle opens a route netlink handle bound to the open netns n. NETLINK_ROUTE only: the default families
// include xfrm and netfilter, which the test VM's kernel does not load ("protocol not supported").
func Handle(n ns.NetNS) (netlinksafe.Handle, error) {
	h, err := netlinksafe.NewHandleAt(netns.NsHandle(int(n.Fd())), unix.NETLINK_ROUTE)
	if err != nil {
		return netlinksafe.Handle{}, fmt.Errorf("netlink handle in %s: %w", n.Path(), err)
	}
	return h, nil
}

// CreateOpen creates a named netns at path (Create) and opens it (Open); it is removed again when it
// cannot be opened.
func CreateOpen(path string) (ns.NetNS, netlinksafe.Handle, error) {
	if err := Create(path); err != nil {
		return nil, netlinksafe.Handle{}, err
	}
	n, h, err := Open(path)
	if err != nil {
		return nil, netlinksafe.Handle{}, errors.Join(err, Remove(path))
	}
	return n, h, nil
}
