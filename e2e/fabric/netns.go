package fabric

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NetNSDir is where named netns live, as with ip-netns(8).
const NetNSDir = "/var/run/netns"

var errNetNSExists = errors.New("netns exists")

func netnsPath(name string) string { return filepath.Join(NetNSDir, name) }

func netnsExists(name string) bool {
	_, err := os.Stat(netnsPath(name))
	return err == nil
}

// createNetNS makes a named netns like `ip netns add`: an empty file under
// NetNSDir with the new namespace bind-mounted on it.
//
// Unshare switches the calling thread's netns, so it runs on a dedicated
// goroutine whose locked thread is never unlocked: the Go runtime then
// destroys that thread instead of handing it, in the new netns, to other code.
// (netns.NewNamed would leave the caller's thread in the new netns.)
// Unlike ip(8) we do not make NetNSDir a shared mount: nothing here needs the
// mount to propagate into other mount namespaces.
func createNetNS(name string) error {
	if err := os.MkdirAll(NetNSDir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", NetNSDir, err)
	}
	path := netnsPath(name)
	fd, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return err
	}
	_ = fd.Close()

	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked, see above
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("unshare: %w", err)
			return
		}
		self := fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid())
		if err := unix.Mount(self, path, "none", unix.MS_BIND, ""); err != nil {
			errc <- fmt.Errorf("bind mount %s: %w", path, err)
			return
		}
		errc <- nil
	}()
	if err := <-errc; err != nil {
		_ = os.Remove(path)
		return err
	}
	return nil
}

// deleteNetNS unmounts and removes a named netns; a missing one is success.
// The namespace itself dies once nothing (fd, process, socket) holds it.
func deleteNetNS(name string) error {
	path := netnsPath(name)
	// EINVAL: not a mount point (half-created); ENOENT: gone already.
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil &&
		!errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// netnsInode identifies the namespace mounted at a name (its nsfs inode).
func netnsInode(name string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(netnsPath(name), &st); err != nil {
		return 0, fmt.Errorf("stat netns %s: %w", name, err)
	}
	return st.Ino, nil
}

// createdNS is a netns a fabric created. The inode guards Close against
// unmounting a namespace that replaced ours under the same name (Cleanup and a
// new fabric ran while this one was still open).
type createdNS struct {
	name string
	ino  uint64
}

func (c createdNS) delete() error {
	if ino, err := netnsInode(c.name); err != nil || ino != c.ino {
		return nil // gone already, or no longer ours
	}
	return deleteNetNS(c.name)
}

// openNetNS opens a named netns and a route netlink handle bound to it.
func openNetNS(name string) (ns.NetNS, netlinksafe.Handle, error) {
	nsh, err := ns.GetNS(netnsPath(name))
	if err != nil {
		return nil, netlinksafe.Handle{}, err
	}
	// NETLINK_ROUTE explicitly: the default family list fails in the test VM.
	h, err := netlinksafe.NewHandleAt(netns.NsHandle(nsh.Fd()), unix.NETLINK_ROUTE)
	if err != nil {
		_ = nsh.Close()
		return nil, netlinksafe.Handle{}, fmt.Errorf("netlink handle: %w", err)
	}
	return nsh, h, nil
}

// Cleanup removes what a fabric with this prefix left behind when its process
// died without Close: every netns named "<prefix>" or "<prefix>-*" under
// NetNSDir, the fabric's links first so node ends in other netns vanish at once.
// It must not be called while a live fabric uses the prefix.
func Cleanup(prefix string) error {
	if err := validPrefix(prefix); err != nil {
		return fmt.Errorf("clean up fabric: %w", err)
	}
	names, err := leftoverNetNS(prefix)
	if err != nil {
		return fmt.Errorf("clean up fabric %s: %w", prefix, err)
	}
	var errs []error
	if fabric := FabricNetNSName(prefix); netnsExists(fabric) {
		errs = append(errs, deleteLinksIn(fabric))
	}
	for _, name := range names {
		if err := deleteNetNS(name); err != nil {
			errs = append(errs, fmt.Errorf("delete netns %s: %w", name, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("clean up fabric %s: %w", prefix, err)
	}
	return nil
}

// leftoverNetNS lists the netns names Cleanup(prefix) removes.
func leftoverNetNS(prefix string) ([]string, error) {
	entries, err := os.ReadDir(NetNSDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range entries {
		if e.Name() == prefix || strings.HasPrefix(e.Name(), prefix+"-") {
			names = append(names, e.Name())
		}
	}
	return names, nil
}

func deleteLinksIn(name string) error {
	nsh, h, err := openNetNS(name)
	if err != nil {
		// Not a netns (e.g. half-created): there are no links to delete.
		return nil
	}
	defer func() { _ = nsh.Close() }()
	defer h.Close()
	return deleteAllLinks(h)
}
