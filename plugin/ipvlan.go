// Package plugin is the multinic CNI plugin: its verbs and the netlink work they do
// in the pod's network namespace.
package plugin

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"time"

	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/multinic/multinic/internal/nlretry"
)

// CreateIPVlanChild creates an ipvlan child of the link named parent (in the
// calling thread's netns, the host's) inside podNS, named ifName. mtu 0 keeps the
// parent's MTU. The child is created under a random temporary name and renamed
// inside podNS, so it never appears in either netns under a name someone else may
// be using or waiting for. It is left down and unaddressed (see ConfigureInterface);
// on error nothing is left behind.
func CreateIPVlanChild(parent string, podNS ns.NetNS, ifName string, mode netlink.IPVlanMode, mtu int) (*current.Interface, error) {
	iface, err := createIPVlanChild(parent, podNS, ifName, mode, mtu)
	if err != nil {
		return nil, fmt.Errorf("create ipvlan child of %q in %s: %w", parent, podNS.Path(), err)
	}
	return iface, nil
}

func createIPVlanChild(parent string, podNS ns.NetNS, ifName string, mode netlink.IPVlanMode, mtu int) (_ *current.Interface, retErr error) {
	if mtu < 0 {
		return nil, fmt.Errorf("mtu %d invalid: must be 0 (the parent's) or more", mtu)
	}
	p, err := netlinksafe.LinkByName(parent)
	if err != nil {
		return nil, fmt.Errorf("find parent: %w", err)
	}
	// The kernel accepts a child MTU above the parent's on create; packets it cannot send would be lost.
	if pmtu := p.Attrs().MTU; mtu > pmtu {
		return nil, fmt.Errorf("mtu %d invalid: must be at most the parent's %d", mtu, pmtu)
	}
	// Lives only until the rename below, in this pod's netns: a clash (two ADDs into one pod drawing the same
	// 32 bits) fails LinkAdd with EEXIST and leaves nothing behind.
	tmpName := fmt.Sprintf("mntmp%08x", rand.Uint32())
	child := &netlink.IPVlan{
		LinkAttrs: netlink.LinkAttrs{
			Name:        tmpName,
			MTU:         mtu,
			ParentIndex: p.Attrs().Index,
			Namespace:   netlink.NsFd(int(podNS.Fd())),
		},
		Mode: mode,
	}
	if err := netlink.LinkAdd(child); err != nil {
		return nil, fmt.Errorf("add link %q: %w", tmpName, err)
	}
	index := 0 // the child's index in podNS, once known
	defer func() {
		if retErr == nil {
			return
		}
		if delErr := podNS.Do(func(ns.NetNS) error { return deleteLink(index, tmpName) }); delErr != nil {
			retErr = errors.Join(retErr, fmt.Errorf("roll back: %w", delErr))
		}
	}()

	var iface *current.Interface
	err = podNS.Do(func(ns.NetNS) error {
		l, err := netlinksafe.LinkByName(tmpName)
		if err != nil {
			return fmt.Errorf("find link %q: %w", tmpName, err)
		}
		index = l.Attrs().Index
		if err := netlink.LinkSetName(l, ifName); err != nil {
			return fmt.Errorf("rename %q to %q: %w", tmpName, ifName, err)
		}
		// Read it back: the name is now ifName, and the MAC is the parent's.
		if l, err = netlink.LinkByIndex(index); err != nil {
			return fmt.Errorf("find link %q: %w", ifName, err)
		}
		a := l.Attrs()
		iface = &current.Interface{Name: a.Name, Mac: a.HardwareAddr.String(), Mtu: a.MTU, Sandbox: podNS.Path()}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return iface, nil
}

// deleteLink deletes the link with this index, or this name when the index is 0,
// from the calling thread's netns. A link already gone is not an error.
func deleteLink(index int, name string) error {
	var l netlink.Link
	var err error
	if index > 0 {
		l, err = netlink.LinkByIndex(index)
	} else {
		l, err = netlinksafe.LinkByName(name)
	}
	var notFound netlink.LinkNotFoundError
	if errors.As(err, &notFound) {
		return nil
	}
	if err != nil {
		return err
	}
	return netlink.LinkDel(l)
}

// ConfigureInterface adds addrs (IPv4, IPv6 or one of each) to the link ifName in podNS and sets it up. An
// IPv6 address gets IPv6Sysctls on the link first, and is added with IFA_F_NODAD (usable when this returns,
// never tentative: see IPv6Sysctls for why no DAD is right) and IFA_F_NOPREFIXROUTE (no on-link /64: the
// VPC routes IPv6, see Routing). On error the caller deletes the link, which takes the addresses with it.
func ConfigureInterface(podNS ns.NetNS, ifName string, addrs ...netip.Prefix) error {
	return inNetns(podNS, func(h netlinksafe.Handle) error { return configureInterface(h, podNS.Path(), ifName, 0, addrs...) })
}

// configureInterface is ConfigureInterface through h, in the calling thread's netns (the pod's, named
// where), with the link's MTU set first when mtu > 0 and the link has another.
func configureInterface(h netlinksafe.Handle, where, ifName string, mtu int, addrs ...netip.Prefix) error {
	err := func() error {
		if len(addrs) == 0 {
			return errors.New("no address")
		}
		l, err := h.LinkByName(ifName)
		if err != nil {
			return err
		}
		if mtu > 0 && l.Attrs().MTU != mtu {
			if err := h.LinkSetMTU(l, mtu); err != nil {
				return fmt.Errorf("set mtu %d: %w", mtu, err)
			}
		}
		has6 := slices.ContainsFunc(addrs, func(p netip.Prefix) bool { return p.Addr().Is6() })
		if has6 {
			if err := setIPv6Sysctls(ifName); err != nil {
				return err
			}
		}
		for _, p := range addrs {
			a := &netlink.Addr{IPNet: ipNet(p)}
			if p.Addr().Is6() {
				a.Flags = unix.IFA_F_NODAD | unix.IFA_F_NOPREFIXROUTE
			}
			if err := h.AddrAdd(l, a); err != nil {
				return fmt.Errorf("add address %s: %w", p, err)
			}
		}
		if err := h.LinkSetUp(l); err != nil {
			return fmt.Errorf("set up: %w", err)
		}
		if has6 {
			return settleIPv6(h, l)
		}
		return nil
	}()
	if err != nil {
		return fmt.Errorf("configure %q in %s: %w", ifName, where, err)
	}
	return nil
}

// inNetns runs f in n's netns with a route netlink handle opened there: one netns switch and one netlink
// socket for everything f does, where each package-level netlink call would open a socket of its own.
func inNetns(n ns.NetNS, f func(netlinksafe.Handle) error) error {
	return n.Do(func(ns.NetNS) error {
		h, err := netlinksafe.NewHandle(unix.NETLINK_ROUTE)
		if err != nil {
			return fmt.Errorf("netlink handle in %s: %w", n.Path(), err)
		}
		defer h.Close()
		return f(h)
	})
}

// SettleTimeout bounds ConfigureInterface's wait for the link's IPv6 addresses to leave tentative.
const SettleTimeout = 3 * time.Second

// settleIPv6 waits until no IPv6 address of l is tentative and, while l has carrier and makes one, its
// link-local exists, for at most SettleTimeout; one that failed DAD is an error. Ours never is (IFA_F_NODAD),
// but the kernel's link-local passes through its DAD work item even with accept_dad 0, so it is tentative
// for a moment after link up (for about a second when all.accept_dad overrides the link's 0). The kernel
// adds the link-local only once the link is operationally up, which linkwatch reports a few milliseconds
// after link up: a look before that sees nothing tentative, and the link-local turns up tentative after
// ADD returned. ip.SettleAddresses does the same with 50 ms between looks, which made a dual-stack ADD about
// 40 ms slower than an IPv4 one; this looks every 2 ms.
func settleIPv6(h netlinksafe.Handle, l netlink.Link) error {
	// addr_gen_mode 1 (none): the kernel makes no link-local to wait for.
	mode, err := readSysctl("ipv6", l.Attrs().Name, "addr_gen_mode")
	if err != nil {
		return fmt.Errorf("read addr_gen_mode: %w", err)
	}
	makesLinkLocal := mode != "1"
	deadline := time.Now().Add(SettleTimeout)
	for {
		addrs, err := nlretry.AddrList(h, l, netlink.FAMILY_V6)
		if err != nil {
			return fmt.Errorf("list addresses: %w", err)
		}
		tentative, linkLocal := false, false
		for _, a := range addrs {
			if a.Flags&unix.IFA_F_DADFAILED != 0 {
				return fmt.Errorf("address %s failed duplicate address detection", a.IPNet)
			}
			tentative = tentative || a.Flags&unix.IFA_F_TENTATIVE != 0
			linkLocal = linkLocal || a.IP.IsLinkLocalUnicast()
		}
		if !tentative && !linkLocal && makesLinkLocal {
			// Without carrier the link-local comes with the carrier, not now: nothing to wait for.
			cur, err := h.LinkByIndex(l.Attrs().Index)
			if err != nil {
				return fmt.Errorf("read link: %w", err)
			}
			tentative = cur.Attrs().RawFlags&unix.IFF_LOWER_UP != 0
		}
		if !tentative {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("addresses still tentative or the link-local missing after %s: %v", SettleTimeout, addrs)
		}
		time.Sleep(2 * time.Millisecond)
	}
}
