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
// parent's MTU. It is left down and unaddressed (see ConfigureInterface); on error
// nothing is left behind.
func CreateIPVlanChild(parent string, podNS ns.NetNS, ifName string, mode netlink.IPVlanMode, mtu int) (*current.Interface, error) {
	h, err := openHandle(podNS)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	return createIPVlanChild(h, parent, podNS, ifName, mode, mtu)
}

// createIPVlanChild is CreateIPVlanChild with h, a route netlink handle opened in podNS (openHandle).
//
// The child is created straight into podNS (IFLA_NET_NS_FD): the kernel allocates and registers the device
// in the target netns (rtnl_newlink_create, rtnl_create_link), so it never appears in the host's, and
// register_netdevice refuses a name podNS already has (EEXIST). It gets its final name at once when it can:
// a rename costs the kernel a synchronize_rcu (dev_change_name), about 20 ms of a 1-vCPU VM's ADD. But
// kernels without "rtnetlink: Lookup device in target netns when creating link" (2025; the test VM's 6.1
// among them) also look the name up in the netns of the socket that asks, the host's, before creating
// (rtnl_newlink), and refuse a name a host link has (EEXIST, NLM_F_EXCL: the host's link is left alone). On EEXIST the child is made again under a random temporary
// name, unique in both netns, and renamed in podNS; a name podNS has fails that rename with EEXIST, and
// the temporary child is deleted.
func createIPVlanChild(h netlinksafe.Handle, parent string, podNS ns.NetNS, ifName string, mode netlink.IPVlanMode, mtu int) (_ *current.Interface, retErr error) {
	defer func() {
		if retErr != nil {
			retErr = fmt.Errorf("create ipvlan child of %q in %s: %w", parent, podNS.Path(), retErr)
		}
	}()
	if mtu < 0 {
		return nil, fmt.Errorf("mtu %d invalid: must be 0 (the parent's) or more", mtu)
	}
	// In the calling thread's netns, the host's: the kernel looks the parent's index up in the netns of
	// the socket that asks.
	host, err := netlinksafe.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink handle: %w", err)
	}
	defer host.Close()
	p, err := host.LinkByName(parent)
	if err != nil {
		return nil, fmt.Errorf("find parent: %w", err)
	}
	// The kernel accepts a child MTU above the parent's on create; packets it cannot send would be lost.
	if pmtu := p.Attrs().MTU; mtu > pmtu {
		return nil, fmt.Errorf("mtu %d invalid: must be at most the parent's %d", mtu, pmtu)
	}
	add := func(name string) error {
		child := &netlink.IPVlan{
			LinkAttrs: netlink.LinkAttrs{
				Name:        name,
				MTU:         mtu,
				ParentIndex: p.Attrs().Index,
				Namespace:   netlink.NsFd(int(podNS.Fd())),
			},
			Mode: mode,
		}
		// child.Index is not read after this: the library fills it from a look-up of the name in the host's
		// netns.
		if err := host.LinkAdd(child); err != nil {
			return fmt.Errorf("add link %q: %w", name, err)
		}
		return nil
	}
	name := ifName
	err = add(name)
	if errors.Is(err, unix.EEXIST) {
		// A clash of the temporary name (two ADDs into one pod drawing the same 32 bits) fails with EEXIST
		// and leaves nothing behind.
		name = fmt.Sprintf("mntmp%08x", rand.Uint32())
		err = add(name)
	}
	if err != nil {
		return nil, err
	}
	index := 0 // the child's index in podNS, once known
	defer func() {
		if retErr == nil {
			return
		}
		if delErr := deleteLink(h, index, name); delErr != nil {
			retErr = errors.Join(retErr, fmt.Errorf("roll back: %w", delErr))
		}
	}()

	// Read it back in podNS: the name is ifName, and the MAC is the parent's.
	l, err := h.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("find link %q: %w", name, err)
	}
	if name != ifName {
		index = l.Attrs().Index
		if err := h.LinkSetName(l, ifName); err != nil {
			return nil, fmt.Errorf("rename %q to %q: %w", name, ifName, err)
		}
		if l, err = h.LinkByIndex(index); err != nil {
			return nil, fmt.Errorf("find link %q: %w", ifName, err)
		}
	}
	a := l.Attrs()
	return &current.Interface{Name: a.Name, Mac: a.HardwareAddr.String(), Mtu: a.MTU, Sandbox: podNS.Path()}, nil
}

// deleteLink deletes, through h, the link with this index, or this name when the index is 0. A link
// already gone is not an error.
func deleteLink(h netlinksafe.Handle, index int, name string) error {
	var l netlink.Link
	var err error
	if index > 0 {
		l, err = h.LinkByIndex(index)
	} else {
		l, err = h.LinkByName(name)
	}
	if errors.As(err, &netlink.LinkNotFoundError{}) {
		return nil
	}
	if err != nil {
		return err
	}
	return h.LinkDel(l)
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

// openHandle opens a route netlink handle in n's netns. The socket stays in that netns whichever thread
// uses it, so netlink through it needs no netns switch (only /proc/sys writes do).
func openHandle(n ns.NetNS) (netlinksafe.Handle, error) {
	var h netlinksafe.Handle
	err := n.Do(func(ns.NetNS) error {
		var err error
		h, err = netlinksafe.NewHandle(unix.NETLINK_ROUTE)
		return err
	})
	if err != nil {
		return netlinksafe.Handle{}, fmt.Errorf("netlink handle in %s: %w", n.Path(), err)
	}
	return h, nil
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
