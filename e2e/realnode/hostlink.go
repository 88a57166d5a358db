package realnode

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/multinic/multinic/internal/testing/fabric"
)

// createHostLink connects the host to the fabric's router (the VPC's) with a veth and routes each node's
// primary address through it.
func createHostLink(nodeIPs []netip.Addr) (retErr error) {
	fabricNS, err := ns.GetNS(filepath.Join(fabric.NetNSDir, fabric.FabricNetNSName(Prefix)))
	if err != nil {
		return fmt.Errorf("host link: %w", err)
	}
	defer fabricNS.Close()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: hostLinkName}, PeerName: hostLinkPeer,
		PeerNamespace: netlink.NsFd(int(fabricNS.Fd()))}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("host link: add veth %s: %w", hostLinkName, err)
	}
	defer func() {
		if retErr != nil {
			retErr = errors.Join(retErr, deleteHostLink())
		}
	}()
	if err := addrUp(hostLinkName, hostLinkAddr); err != nil {
		return err
	}
	if err := fabricNS.Do(func(ns.NetNS) error { return addrUp(hostLinkPeer, routerLinkAdr) }); err != nil {
		return err
	}
	host, err := netlinksafe.LinkByName(hostLinkName)
	if err != nil {
		return fmt.Errorf("host link: %w", err)
	}
	gw := netip.MustParsePrefix(routerLinkAdr).Addr()
	for _, ip := range nodeIPs {
		rt := &netlink.Route{LinkIndex: host.Attrs().Index, Dst: &net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(32, 32)}, Gw: gw.AsSlice()}
		if err := netlink.RouteAdd(rt); err != nil {
			return fmt.Errorf("host link: route %s via %s: %w", ip, gw, err)
		}
	}
	return nil
}

// addrUp gives the link in the current netns an address and sets it up.
func addrUp(name, cidr string) error {
	l, err := netlinksafe.LinkByName(name)
	if err != nil {
		return fmt.Errorf("host link: %w", err)
	}
	a, err := netlink.ParseAddr(cidr)
	if err != nil {
		return err
	}
	if err := netlink.AddrAdd(l, a); err != nil {
		return fmt.Errorf("host link: address %s on %s: %w", cidr, name, err)
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return fmt.Errorf("host link: set %s up: %w", name, err)
	}
	return nil
}

// deleteHostLink removes the host's veth (its peer and routes go with it); a missing link is success.
func deleteHostLink() error {
	l, err := netlinksafe.LinkByName(hostLinkName)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("find %s: %w", hostLinkName, err)
	}
	if err := netlink.LinkDel(l); err != nil {
		return fmt.Errorf("delete %s: %w", hostLinkName, err)
	}
	return nil
}
