package multus

import (
	"fmt"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/multinic/multinic/internal/namedns"
)

// createNetNS makes a named netns at path like `ip netns add` (named after the region's prefix, so that
// fabric.Cleanup removes what a killed run left) and opens it with a route netlink handle. Unshare runs
// on a goroutine whose locked thread is never unlocked, so the runtime destroys that thread instead of
// reusing it in the new netns.
func createNetNS(path string) (ns.NetNS, netlinksafe.Handle, error) {
	if err := namedns.Create(path); err != nil {
		return nil, netlinksafe.Handle{}, err
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
func deleteNetNS(path string) error { return namedns.Remove(path) }
