// Package fabric is the fake "VPC fabric" behind fake-ec2: it turns ENI
// attachments into real links.
//
// The fabric owns one network namespace, "<prefix>-vpc", holding one Linux
// bridge per subnet. Attaching an ENI creates a veth pair: the fabric end
// ("v" + the ENI's MAC in hex) is enslaved to the subnet's bridge, the node end
// appears in the instance's netns with exactly the ENI's MAC and the name
// NodeLinkName(card, device), e.g. "ens0d0", "ens3d1". The name is never "eth0"
// so it cannot clash with a link the node netns already has; the agent matches
// links by MAC anyway.
//
// Links are created directly in their namespaces through netlink handles bound
// to those namespaces, so the host netns is never touched and no thread ever
// switches netns except the throwaway one that creates a new netns.
//
// With a rate limit for the ENI's card, the fabric end also carries a tbf
// (traffic to the ENI) and redirects its ingress to an ifb "i" + MAC hex with
// its own tbf (traffic from the ENI); see applyRateLimit.
//
// Every link the fabric made is reachable from its fabric end, even after the
// node end was moved into a pod (ENI-move mode): deleting the fabric end deletes
// both, so Detach and Close need no record of where the node end went.
//
// IPv4 is bridged: ENIs of one subnet share its bridge. IPv6 is routed, as the
// VPC routes it: the fabric netns is the VPC's IPv6 router (forwarding on), each
// bridge of a subnet with an IPv6 block carries the router's link-local address
// IPv6Gateway (fe80:ec2::1, the address the AWS VPC CNI uses as EC2's IPv6
// gateway) so the router answers neighbour discovery for it, and every IPv6
// address or /80 prefix EC2 assigned to an attached ENI is routed out of that
// ENI's fabric end to the ENI's MAC (a permanent neighbour entry: the VPC knows
// the MAC and does not ask). An address nobody was assigned has no route. A
// node or pod sends IPv6 to IPv6Gateway (its address as a /128, not the /64
// on-link); see SetIPv6.
package fabric

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/multinic/multinic/internal/testing/fakeec2"
)

// DefaultMTU is the MTU of every fabric link unless Config.MTU says otherwise (EC2's jumbo MTU).
const DefaultMTU = 9001

// IPv6Gateway is the VPC router's IPv6 address on every subnet with an IPv6 block: link-local, the same on
// every link. EC2 answers at fe80:ec2::1 on every subnet (the AWS VPC CNI's networkutils.GetIPv6Gateway);
// the router's MAC-derived link-local that EC2 also advertises is not modelled.
var IPv6Gateway = netip.MustParseAddr("fe80:ec2::1")

var _ fakeec2.IPv6Router = (*Fabric)(nil)

var _ fakeec2.LinkMaker = (*Fabric)(nil)

// ErrUnknownInstance is returned by Attach for an instance that has no node netns.
var ErrUnknownInstance = errors.New("unknown instance")

// Config describes a fabric. It is pure data; New applies it.
type Config struct {
	// Prefix names everything the fabric creates on the host: the fabric netns is
	// "<Prefix>-vpc". Node netns names should start with "<Prefix>-" too, so that
	// Cleanup(Prefix) finds them after a crash. Letters, digits, '-', '_', '.'; at most 32.
	Prefix string
	// Nodes maps an instance ID to the name of its netns under /var/run/netns.
	// A missing netns is created by New and removed by Close; an existing one is
	// left in place and only the fabric's links are removed from it.
	Nodes map[string]string
	// RatePerCard is the default per-card rate limit in bit/s, both directions; 0 = none.
	RatePerCard uint64
	// CardRates overrides RatePerCard for some cards (bit/s, 0 = no limit for that card).
	CardRates map[int]uint64
	// MTU of the node links, fabric links and bridges; 0 = DefaultMTU.
	MTU int
	// SysfsDir, when set, holds a fake sysfs per node (SysfsRoot) that gives the ENI links of the cards in
	// PCIeRoots a PCI device below that card's PCIe root ("pci0000:10"), as a real instance's sysfs does.
	SysfsDir  string
	PCIeRoots map[int]string
}

// Fabric makes fake-ec2's ENI attachments real links. Safe for concurrent use.
type Fabric struct {
	mu      sync.Mutex
	cfg     Config
	nsName  string // the fabric netns
	netns   ns.NetNS
	h       netlinksafe.Handle
	created []createdNS // netns this fabric created, fabric netns first
	nodes   map[string]*node
	bridges map[string]string // subnet ID -> bridge name
	closed  bool
}

// node is one instance's netns as the fabric holds it open.
type node struct {
	name  string
	netns ns.NetNS
	h     netlinksafe.Handle
}

// New creates the fabric netns and every node netns that does not exist yet.
// A leftover fabric netns with the same prefix is an error: call Cleanup first.
func New(cfg Config) (_ *Fabric, retErr error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if cfg.MTU == 0 {
		cfg.MTU = DefaultMTU
	}
	f := &Fabric{
		cfg:     cfg,
		nsName:  FabricNetNSName(cfg.Prefix),
		nodes:   map[string]*node{},
		bridges: map[string]string{},
	}
	defer func() {
		if retErr != nil {
			_ = f.Close()
		}
	}()

	if netnsExists(f.nsName) {
		return nil, fmt.Errorf("create fabric netns %s: %w (leftover of a crashed run? call Cleanup)", f.nsName, errNetNSExists)
	}
	if err := f.createNetNS(f.nsName); err != nil {
		return nil, fmt.Errorf("create fabric netns %s: %w", f.nsName, err)
	}
	var err error
	if f.netns, f.h, err = openNetNS(f.nsName); err != nil {
		return nil, fmt.Errorf("open fabric netns %s: %w", f.nsName, err)
	}
	// The fabric netns routes IPv6 (see the package doc); IPv4 stays bridged.
	if err := f.netns.Do(func(ns.NetNS) error {
		return os.WriteFile("/proc/sys/net/ipv6/conf/all/forwarding", []byte("1"), 0o644)
	}); err != nil {
		return nil, fmt.Errorf("turn on IPv6 forwarding in %s: %w", f.nsName, err)
	}
	for id, name := range cfg.Nodes {
		if err := f.addNode(id, name); err != nil {
			return nil, err
		}
	}
	return f, nil
}

// NetNSName is the name of the fabric's own netns under /var/run/netns.
func (f *Fabric) NetNSName() string { return f.nsName }

// AddNode registers an instance launched after New, creating its netns if missing.
func (f *Fabric) AddNode(instanceID, netnsName string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return fmt.Errorf("add node %s: fabric closed", instanceID)
	}
	return f.addNode(instanceID, netnsName)
}

func (f *Fabric) addNode(instanceID, netnsName string) error {
	if _, ok := f.nodes[instanceID]; ok {
		return fmt.Errorf("add node %s: already registered", instanceID)
	}
	if err := validNetNSName(netnsName); err != nil {
		return fmt.Errorf("add node %s: %w", instanceID, err)
	}
	if !netnsExists(netnsName) {
		if err := f.createNetNS(netnsName); err != nil {
			return fmt.Errorf("create netns %s for %s: %w", netnsName, instanceID, err)
		}
	}
	nsh, h, err := openNetNS(netnsName)
	if err != nil {
		return fmt.Errorf("open netns %s for %s: %w", netnsName, instanceID, err)
	}
	// A booted instance has lo up; tools run in the node (iperf3, probes) expect it.
	lo, err := h.LinkByName("lo")
	if err == nil {
		err = h.LinkSetUp(lo)
	}
	if err != nil {
		h.Close()
		_ = nsh.Close()
		return fmt.Errorf("set lo up in %s for %s: %w", netnsName, instanceID, err)
	}
	f.nodes[instanceID] = &node{name: netnsName, netns: nsh, h: h}
	return nil
}

// Attach makes the ENI appear in the instance's netns. See the package doc for names.
func (f *Fabric) Attach(a fakeec2.Attachment) (retErr error) {
	p, err := parseAttachment(a)
	if err != nil {
		return fmt.Errorf("attach %s to %s: %w", a.ENIID, a.InstanceID, err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return fmt.Errorf("attach %s to %s: fabric closed", a.ENIID, a.InstanceID)
	}
	n, ok := f.nodes[a.InstanceID]
	if !ok {
		return fmt.Errorf("attach %s to %s: %w", a.ENIID, a.InstanceID, ErrUnknownInstance)
	}
	br, err := f.ensureBridge(a.SubnetID, a.SubnetIPv6CIDR != "")
	if err != nil {
		return fmt.Errorf("attach %s to %s: %w", a.ENIID, a.InstanceID, err)
	}

	fabName := FabricLinkName(p.mac)
	if _, err := f.h.LinkByName(fabName); err == nil {
		return fmt.Errorf("attach %s to %s: link %s already exists", a.ENIID, a.InstanceID, fabName)
	}
	veth := &netlink.Veth{
		LinkAttrs: netlink.LinkAttrs{
			Name:        fabName,
			MTU:         f.cfg.MTU,
			MasterIndex: br.Attrs().Index,
		},
		PeerName:         NodeLinkName(a.NetworkCard, a.DeviceIndex),
		PeerHardwareAddr: p.mac,
		PeerNamespace:    netlink.NsFd(int(n.netns.Fd())),
	}
	if err := f.h.LinkAdd(veth); err != nil {
		return fmt.Errorf("create link %s for %s in %s: %w", veth.PeerName, a.ENIID, n.name, err)
	}
	defer func() {
		if retErr != nil {
			_ = f.deleteENILinks(p.mac)
		}
	}()
	fab, err := f.h.LinkByName(fabName)
	if err != nil {
		return fmt.Errorf("find link %s for %s: %w", fabName, a.ENIID, err)
	}
	// The alias says whose link this is when someone looks at the fabric with ip(8).
	if err := f.h.LinkSetAlias(fab, a.ENIID+" "+a.InstanceID); err != nil {
		return fmt.Errorf("set alias on %s for %s: %w", fabName, a.ENIID, err)
	}
	if rate := f.cfg.rateFor(a.NetworkCard); rate > 0 {
		if err := applyRateLimit(f.h, fab, IfbLinkName(p.mac), rate, f.cfg.MTU); err != nil {
			return fmt.Errorf("rate limit card %d for %s on %s: %w", a.NetworkCard, a.ENIID, a.InstanceID, err)
		}
	}
	if err := f.h.LinkSetUp(fab); err != nil {
		return fmt.Errorf("set %s up for %s: %w", fabName, a.ENIID, err)
	}
	if a.SubnetIPv6CIDR != "" {
		if err := f.routeIPv6(fab, p); err != nil {
			return fmt.Errorf("attach %s to %s: %w", a.ENIID, a.InstanceID, err)
		}
	}
	if a.Primary {
		if err := configurePrimary(n.h, veth.PeerName, p.addr); err != nil {
			return fmt.Errorf("configure primary %s on %s: %w", a.ENIID, a.InstanceID, err)
		}
	}
	if err := f.writeSysfs(n.name, a.NetworkCard, a.DeviceIndex); err != nil {
		return fmt.Errorf("attach %s to %s: %w", a.ENIID, a.InstanceID, err)
	}
	return nil
}

// SetIPv6 routes exactly a's IPv6 addresses and /80 prefixes to its ENI: to the ENI's MAC out of its fabric
// end. Called by fake-ec2 after every IPv6 change of an attached ENI.
func (f *Fabric) SetIPv6(a fakeec2.Attachment) error {
	p, err := parseAttachment(a)
	if err != nil {
		return fmt.Errorf("route IPv6 of %s: %w", a.ENIID, err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return fmt.Errorf("route IPv6 of %s: fabric closed", a.ENIID)
	}
	fab, err := f.h.LinkByName(FabricLinkName(p.mac))
	if err != nil {
		return fmt.Errorf("route IPv6 of %s: find link %s: %w", a.ENIID, FabricLinkName(p.mac), err)
	}
	if err := f.routeIPv6(fab, p); err != nil {
		return fmt.Errorf("route IPv6 of %s: %w", a.ENIID, err)
	}
	return nil
}

// routeIPv6 makes the IPv6 routes out of fab exactly p's addresses and prefixes, via a next hop whose
// neighbour entry is the ENI's MAC for good. Routes and entry go with the link.
func (f *Fabric) routeIPv6(fab netlink.Link, p parsedAttachment) error {
	idx, nh := fab.Attrs().Index, eui64LinkLocal(p.mac)
	err := f.h.NeighSet(&netlink.Neigh{LinkIndex: idx, Family: netlink.FAMILY_V6, State: netlink.NUD_PERMANENT,
		IP: nh, HardwareAddr: p.mac})
	if err != nil {
		return fmt.Errorf("neighbour %s on %s: %w", nh, fab.Attrs().Name, err)
	}
	want := map[netip.Prefix]bool{}
	for _, x := range p.ipv6 {
		want[x] = true
	}
	have, err := f.h.RouteListFiltered(netlink.FAMILY_V6, &netlink.Route{LinkIndex: idx}, netlink.RT_FILTER_OIF)
	if err != nil {
		return fmt.Errorf("list routes of %s: %w", fab.Attrs().Name, err)
	}
	for _, r := range have {
		dst, ok := netipPrefix(r.Dst)
		if !r.Gw.Equal(nh) || !ok {
			continue // the kernel's own, not one of ours
		}
		if want[dst] {
			delete(want, dst)
			continue
		}
		if err := f.h.RouteDel(&r); err != nil {
			return fmt.Errorf("delete route %s on %s: %w", dst, fab.Attrs().Name, err)
		}
	}
	for dst := range want {
		r := netlink.Route{LinkIndex: idx, Dst: ipNet(dst), Gw: nh}
		if err := f.h.RouteReplace(&r); err != nil {
			return fmt.Errorf("route %s via %s on %s: %w", dst, nh, fab.Attrs().Name, err)
		}
	}
	return nil
}

// Detach deletes the ENI's veth pair wherever its node end is; already gone is success.
func (f *Fabric) Detach(a fakeec2.Attachment) error {
	mac, err := net.ParseMAC(a.MAC)
	if err != nil {
		return fmt.Errorf("detach %s from %s: parse mac %q: %w", a.ENIID, a.InstanceID, a.MAC, err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil // Close removed every link already.
	}
	if err := f.deleteENILinks(mac); err != nil {
		return fmt.Errorf("detach %s from %s: %w", a.ENIID, a.InstanceID, err)
	}
	if n, ok := f.nodes[a.InstanceID]; ok {
		if err := f.removeSysfs(n.name, a.NetworkCard, a.DeviceIndex); err != nil {
			return fmt.Errorf("detach %s from %s: %w", a.ENIID, a.InstanceID, err)
		}
	}
	return nil
}

// Close removes every link, bridge and netns the fabric created. Node netns that
// existed before New are kept, minus the fabric's links. Idempotent.
func (f *Fabric) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil
	}
	f.closed = true
	var errs []error
	// Delete links explicitly rather than relying on netns teardown: that is
	// asynchronous, and node netns we did not create are not torn down at all.
	if f.h.Handle != nil {
		errs = append(errs, deleteAllLinks(f.h))
		f.h.Close()
	}
	if f.netns != nil {
		errs = append(errs, f.netns.Close())
	}
	for _, n := range f.nodes {
		n.h.Close()
		errs = append(errs, n.netns.Close())
	}
	// Open handles pin a netns; every one is closed before the bind mounts go.
	for _, c := range f.created {
		if err := c.delete(); err != nil {
			errs = append(errs, fmt.Errorf("delete netns %s: %w", c.name, err))
		}
	}
	return errors.Join(errs...)
}

// createNetNS creates a netns and remembers it, with its identity, for Close.
func (f *Fabric) createNetNS(name string) error {
	if err := createNetNS(name); err != nil {
		return err
	}
	ino, err := netnsInode(name)
	if err != nil {
		_ = deleteNetNS(name)
		return err
	}
	f.created = append(f.created, createdNS{name: name, ino: ino})
	return nil
}

// ensureBridge returns the subnet's bridge, creating it on first use; with ipv6 the VPC router answers
// on it at IPv6Gateway.
func (f *Fabric) ensureBridge(subnetID string, ipv6 bool) (netlink.Link, error) {
	if name, ok := f.bridges[subnetID]; ok {
		br, err := f.h.LinkByName(name)
		if err != nil {
			return nil, fmt.Errorf("find bridge %s for %s: %w", name, subnetID, err)
		}
		return br, nil
	}
	n := len(f.bridges)
	name := bridgeName(n)
	// A MAC of its own: a bridge otherwise takes its lowest port's, which changes as ENIs come and go and
	// would leave nodes with a stale neighbour entry for the router.
	mac := net.HardwareAddr{0x02, 0xec, 0x2f, 0, byte(n >> 8), byte(n)}
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: f.cfg.MTU, HardwareAddr: mac}}
	if err := f.h.LinkAdd(br); err != nil {
		return nil, fmt.Errorf("create bridge %s for %s: %w", name, subnetID, err)
	}
	link, err := f.h.LinkByName(name)
	if err == nil {
		err = f.h.LinkSetAlias(link, subnetID)
	}
	if err == nil && ipv6 {
		// No DAD: the address is the router's at once, as EC2's is there before any instance asks.
		err = f.h.AddrAdd(link, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(IPv6Gateway, 64)), Flags: unix.IFA_F_NODAD})
	}
	if err == nil {
		err = f.h.LinkSetUp(link)
	}
	if err != nil {
		_ = f.h.LinkDel(br)
		return nil, fmt.Errorf("set up bridge %s for %s: %w", name, subnetID, err)
	}
	f.bridges[subnetID] = name
	return link, nil
}

// deleteENILinks deletes an ENI's fabric end (and so its peer) and its ifb.
func (f *Fabric) deleteENILinks(mac net.HardwareAddr) error {
	return errors.Join(f.deleteLink(FabricLinkName(mac)), f.deleteLink(IfbLinkName(mac)))
}

// deleteLink deletes a fabric link; a missing link is success.
func (f *Fabric) deleteLink(name string) error {
	link, err := f.h.LinkByName(name)
	if err != nil {
		var notFound netlink.LinkNotFoundError
		if errors.As(err, &notFound) {
			return nil
		}
		return fmt.Errorf("find link %s: %w", name, err)
	}
	if err := f.h.LinkDel(link); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete link %s: %w", name, err)
	}
	return nil
}

// configurePrimary does what DHCP does for eth0 at boot: link up, primary address on.
func configurePrimary(h netlinksafe.Handle, name string, addr *net.IPNet) error {
	link, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("find link %s: %w", name, err)
	}
	if err := h.LinkSetUp(link); err != nil {
		return fmt.Errorf("set %s up: %w", name, err)
	}
	if err := h.AddrAdd(link, &netlink.Addr{IPNet: addr}); err != nil {
		return fmt.Errorf("add address %s to %s: %w", addr, name, err)
	}
	return nil
}

// deleteAllLinks deletes every link but lo from a fabric netns: veth ends, ifbs and bridges.
func deleteAllLinks(h netlinksafe.Handle) error {
	links, err := h.LinkList()
	if err != nil {
		return fmt.Errorf("list fabric links: %w", err)
	}
	var errs []error
	// Veths first so their peers vanish from node netns before bridges go.
	for _, pass := range []string{"veth", "ifb", "bridge"} {
		for _, l := range links {
			if l.Type() != pass {
				continue
			}
			// ENODEV: a veth that went with its peer already.
			if err := h.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
				errs = append(errs, fmt.Errorf("delete link %s: %w", l.Attrs().Name, err))
			}
		}
	}
	return errors.Join(errs...)
}

// eui64LinkLocal is the link-local address a MAC gives an interface (RFC 4291, modified EUI-64).
func eui64LinkLocal(mac net.HardwareAddr) net.IP {
	return net.IP{0xfe, 0x80, 0, 0, 0, 0, 0, 0, mac[0] ^ 2, mac[1], mac[2], 0xff, 0xfe, mac[3], mac[4], mac[5]}
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func netipPrefix(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	bits, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), bits), ok
}
