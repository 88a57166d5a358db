// Package nettest holds helpers for tests that need root and throwaway network
// namespaces. Tests that need a link type the host kernel lacks (ipvlan, dummy,
// vlan) skip on the host and run in the test VM (`make test-vm`, e2e/vm/vmtest.sh).
package nettest

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"testing"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/multinic/multinic/internal/namedns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// InVMEnv is set to "1" by e2e/vm/vmtest.sh inside the test VM.
const InVMEnv = "MULTINIC_IN_VM"

// RequireRoot skips the test unless it runs as root.
func RequireRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("needs root: run as root or with `make test-vm`")
	}
}

// RequireLinkType skips the test (or fails it inside the test VM, which must have
// every link type) unless the kernel can create a link of this kind, e.g. "ipvlan".
// The probe runs in a throwaway netns.
func RequireLinkType(tb testing.TB, kind string) {
	tb.Helper()
	RequireRoot(tb)
	verdict, msg := decide(kind, probeLinkType(kind), os.Getenv(InVMEnv) == "1")
	switch verdict {
	case skip:
		tb.Skip(msg)
	case fail:
		tb.Fatal(msg)
	}
}

type verdict int

const (
	run verdict = iota
	skip
	fail
)

// decide turns the result of a link probe into what the test does.
func decide(kind string, probeErr error, inVM bool) (verdict, string) {
	switch {
	case probeErr == nil:
		return run, ""
	case !errors.Is(probeErr, unix.EOPNOTSUPP):
		return fail, fmt.Sprintf("probe %s link: %v", kind, probeErr)
	case inVM:
		return fail, fmt.Sprintf("kernel lacks %s inside the test VM: load its module in e2e/vm/vmtest.sh (%v)", kind, probeErr)
	default:
		return skip, fmt.Sprintf("kernel lacks %s: run `make test-vm` (%v)", kind, probeErr)
	}
}

// probeLinkType creates a link of this kind in a throwaway netns. An unknown kind
// fails with EOPNOTSUPP. Kinds that need a lower device get a veth end.
func probeLinkType(kind string) (retErr error) {
	probeNS, err := testutils.NewNS()
	if err != nil {
		return fmt.Errorf("create netns: %w", err)
	}
	defer func() {
		retErr = errors.Join(retErr, probeNS.Close(), testutils.UnmountNS(probeNS))
	}()
	return probeNS.Do(func(ns.NetNS) error {
		attrs := netlink.LinkAttrs{Name: "probe0"}
		switch kind {
		case "ipvlan", "macvlan", "vlan":
			lower := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "lower0"}, PeerName: "lower1"}
			if err := netlink.LinkAdd(lower); err != nil {
				return fmt.Errorf("create veth lower link: %w", err)
			}
			l, err := netlinksafe.LinkByName("lower0")
			if err != nil {
				return err
			}
			attrs.ParentIndex = l.Attrs().Index
		}
		var link netlink.Link
		switch kind {
		case "veth":
			link = &netlink.Veth{LinkAttrs: attrs, PeerName: "probe1"}
		case "ipvlan":
			link = &netlink.IPVlan{LinkAttrs: attrs, Mode: netlink.IPVLAN_MODE_L2}
		case "macvlan":
			link = &netlink.Macvlan{LinkAttrs: attrs, Mode: netlink.MACVLAN_MODE_BRIDGE}
		case "vlan":
			link = &netlink.Vlan{LinkAttrs: attrs, VlanId: 100}
		default:
			link = &netlink.GenericLink{LinkAttrs: attrs, LinkType: kind}
		}
		if err := netlink.LinkAdd(link); err != nil {
			return fmt.Errorf("create %s link: %w", kind, err)
		}
		return nil
	})
}

// NewNS returns a new network namespace, closed and unmounted when the test ends.
// It skips the test unless it runs as root.
func NewNS(tb testing.TB) ns.NetNS {
	tb.Helper()
	RequireRoot(tb)
	n, err := testutils.NewNS()
	if err != nil {
		tb.Fatalf("create netns: %v", err)
	}
	tb.Cleanup(func() {
		if err := n.Close(); err != nil {
			tb.Errorf("close netns %s: %v", n.Path(), err)
		}
		if err := testutils.UnmountNS(n); err != nil {
			tb.Errorf("remove netns %s: %v", n.Path(), err)
		}
	})
	return n
}

// Handle returns a route netlink handle bound to n (namedns.Handle), closed when the test ends.
func Handle(tb testing.TB, n ns.NetNS) netlinksafe.Handle {
	tb.Helper()
	h, err := namedns.Handle(n)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(h.Close)
	return h
}

// LinkNames lists the names of the links h sees, sorted: for checking that a test left a netns as it was.
func LinkNames(tb testing.TB, h netlinksafe.Handle) []string {
	tb.Helper()
	links, err := h.LinkList()
	if err != nil {
		tb.Fatalf("list links: %v", err)
	}
	names := make([]string, 0, len(links))
	for _, l := range links {
		names = append(names, l.Attrs().Name)
	}
	slices.Sort(names)
	return names
}
