package fabric

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"

	"github.com/multinic/multinic/internal/namedns"
)

// NetNSDir is where named netns live, as with ip-netns(8).
const NetNSDir = "/var/run/netns"

var errNetNSExists = errors.New("netns exists")

func netnsPath(name string) string { return filepath.Join(NetNSDir, name) }

func netnsExists(name string) bool {
	_, err := os.Stat(netnsPath(name))
	return err == nil
}

// createNetNS makes a named netns under NetNSDir like `ip netns add` (see namedns.Create; unlike
// netns.NewNamed it leaves the caller's thread in its own netns).
func createNetNS(name string) error { return namedns.Create(netnsPath(name)) }

// deleteNetNS unmounts and removes a named netns; a missing one is success.
func deleteNetNS(name string) error { return namedns.Remove(netnsPath(name)) }

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
	return namedns.Open(netnsPath(name))
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
