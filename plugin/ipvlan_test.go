package plugin

import (
	"errors"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/multinic/multinic/internal/nlretry"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/multinic/multinic/internal/nettest"
)

const (
	parentName = "eth1"
	parentMTU  = 9001
)

var parentMAC = net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x10, 0x01}

// newParent makes a throwaway "host" netns holding an up veth pair whose end
// parentName stands in for an ENI (MAC, jumbo MTU), and an empty pod netns.
func newParent(t *testing.T) (hostNS, podNS ns.NetNS) {
	t.Helper()
	hostNS, podNS = nettest.NewNS(t), nettest.NewNS(t)
	h := nettest.Handle(t, hostNS)
	veth := &netlink.Veth{
		LinkAttrs: netlink.LinkAttrs{Name: parentName, HardwareAddr: parentMAC, MTU: parentMTU},
		PeerName:  parentName + "-peer",
	}
	if err := h.LinkAdd(veth); err != nil {
		t.Fatalf("add parent veth: %v", err)
	}
	for _, name := range []string{parentName, parentName + "-peer"} {
		if err := h.LinkSetUp(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}}); err != nil {
			t.Fatalf("set %s up: %v", name, err)
		}
	}
	return hostNS, podNS
}

func TestCreateIPVlanChild(t *testing.T) {
	nettest.RequireLinkType(t, "ipvlan")
	tests := []struct {
		name    string
		mode    netlink.IPVlanMode
		mtu     int
		wantMTU int
	}{
		{name: "l2 parent mtu", mode: netlink.IPVLAN_MODE_L2, mtu: 0, wantMTU: parentMTU},
		{name: "l2 mtu 1500", mode: netlink.IPVLAN_MODE_L2, mtu: 1500, wantMTU: 1500},
		{name: "l3", mode: netlink.IPVLAN_MODE_L3, mtu: 1500, wantMTU: 1500},
	}
	for _, tt := range tests {
		// With a host link of the child's name, older kernels refuse the name (looked up in the host's netns
		// too) and the child is made under a temporary name and renamed; the host's link stays as it was.
		for _, hostNet1 := range []bool{false, true} {
			name := tt.name
			if hostNet1 {
				name += " host has net1"
			}
			t.Run(name, func(t *testing.T) { testCreateIPVlanChild(t, tt.mode, tt.mtu, tt.wantMTU, hostNet1) })
		}
	}
}

// testCreateIPVlanChild makes the child net1 (mode, mtu) in a fresh pod netns, configures it, and checks
// it and the host netns, which holds a bridge named net1 when hostNet1.
func testCreateIPVlanChild(t *testing.T, mode netlink.IPVlanMode, mtu, wantMTU int, hostNet1 bool) {
	hostNS, podNS := newParent(t)
	var hostIndex int
	if hostNet1 {
		hh := nettest.Handle(t, hostNS)
		if err := hh.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "net1"}}); err != nil {
			t.Fatalf("add the host's net1: %v", err)
		}
		l, err := hh.LinkByName("net1")
		if err != nil {
			t.Fatal(err)
		}
		hostIndex = l.Attrs().Index
	}
	hostLinks := linkNames(t, hostNS)
	addr := netip.MustParsePrefix("10.1.0.5/24")

	var iface *current.Interface
	err := hostNS.Do(func(ns.NetNS) error {
		var err error
		iface, err = CreateIPVlanChild(parentName, podNS, "net1", mode, mtu)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	want := current.Interface{Name: "net1", Mac: parentMAC.String(), Mtu: wantMTU, Sandbox: podNS.Path()}
	if *iface != want {
		t.Errorf("interface = %+v, want %+v", *iface, want)
	}
	if err := ConfigureInterface(podNS, "net1", addr); err != nil {
		t.Fatal(err)
	}

	h := nettest.Handle(t, podNS)
	l, err := h.LinkByName("net1")
	if err != nil {
		t.Fatalf("child not in pod netns: %v", err)
	}
	ipvl, ok := l.(*netlink.IPVlan)
	if !ok || l.Type() != "ipvlan" {
		t.Fatalf("child is %T (type %q), want ipvlan", l, l.Type())
	}
	if ipvl.Mode != mode {
		t.Errorf("mode = %v, want %v", ipvl.Mode, mode)
	}
	if got := l.Attrs().MTU; got != wantMTU {
		t.Errorf("mtu = %d, want %d", got, wantMTU)
	}
	if got := l.Attrs().HardwareAddr; got.String() != parentMAC.String() {
		t.Errorf("mac = %s, want the parent's %s", got, parentMAC)
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("flags = %v, want up", l.Attrs().Flags)
	}
	addrs, err := nlretry.AddrList(h, l, netlink.FAMILY_V4)
	if err != nil {
		t.Fatalf("list addresses: %v", err)
	}
	if !slices.ContainsFunc(addrs, func(a netlink.Addr) bool { return a.IPNet.String() == addr.String() }) {
		t.Errorf("addresses = %v, want %s", addrs, addr)
	}
	// The child takes the parent's carrier (lower up), asynchronously; ipvlan
	// reports operstate unknown rather than up.
	deadline := time.Now().Add(5 * time.Second)
	for l.Attrs().RawFlags&unix.IFF_LOWER_UP == 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		if l, err = h.LinkByName("net1"); err != nil {
			t.Fatal(err)
		}
	}
	if l.Attrs().RawFlags&unix.IFF_LOWER_UP == 0 {
		t.Errorf("raw flags = %#x, want lower up (the parent has carrier)", l.Attrs().RawFlags)
	}
	if got := l.Attrs().OperState; got != netlink.OperUp && got != netlink.OperUnknown {
		t.Errorf("operstate = %v, want up or unknown", got)
	}
	if got := linkNames(t, hostNS); !slices.Equal(got, hostLinks) {
		t.Errorf("host netns links = %v, want unchanged %v", got, hostLinks)
	}
	if l, err := nettest.Handle(t, hostNS).LinkByName("net1"); hostNet1 && (err != nil || l.Type() != "bridge" || l.Attrs().Index != hostIndex) {
		t.Errorf("the host's net1 = %v (err %v), want the bridge of index %d", l, err, hostIndex)
	}
}

// TestCreateIPVlanChildFailure checks that a failed create leaves both netns as
// they were, including a name taken in the pod netns: the kernel refuses the create itself (EEXIST).
func TestCreateIPVlanChildFailure(t *testing.T) {
	nettest.RequireLinkType(t, "ipvlan")
	tests := []struct {
		name      string
		parent    string
		ifName    string
		mtu       int
		hostTaken bool // the host netns has a link named taken0 too
		wantErr   func(error) bool
	}{
		{
			name: "ifname taken in pod netns", parent: parentName, ifName: "taken0",
			wantErr: func(err error) bool { return errors.Is(err, unix.EEXIST) },
		},
		{
			// Refused by name in the host's netns first on older kernels: the child made under a temporary
			// name fails its rename instead, and is deleted.
			name: "ifname taken in pod and host netns", parent: parentName, ifName: "taken0", hostTaken: true,
			wantErr: func(err error) bool { return errors.Is(err, unix.EEXIST) },
		},
		{
			name: "mtu above parent", parent: parentName, ifName: "net1", mtu: parentMTU + 1,
			wantErr: func(err error) bool { return strings.Contains(err.Error(), "must be at most the parent's 9001") },
		},
		{
			name: "no parent", parent: "nosuch0", ifName: "net1",
			wantErr: func(err error) bool { return errors.As(err, &netlink.LinkNotFoundError{}) },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hostNS, podNS := newParent(t)
			if err := nettest.Handle(t, podNS).LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "taken0"}}); err != nil {
				t.Fatalf("add taken0: %v", err)
			}
			if tt.hostTaken {
				if err := nettest.Handle(t, hostNS).LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "taken0"}}); err != nil {
					t.Fatalf("add the host's taken0: %v", err)
				}
			}
			hostLinks, podLinks := linkNames(t, hostNS), linkNames(t, podNS)

			err := hostNS.Do(func(ns.NetNS) error {
				_, err := CreateIPVlanChild(tt.parent, podNS, tt.ifName, netlink.IPVLAN_MODE_L2, tt.mtu)
				return err
			})
			if err == nil || !tt.wantErr(err) {
				t.Fatalf("error = %v, want a %s error", err, tt.name)
			}
			if prefix := `create ipvlan child of "` + tt.parent + `" in ` + podNS.Path() + ": "; !strings.HasPrefix(err.Error(), prefix) {
				t.Errorf("error = %q, want prefix %q", err, prefix)
			}
			if got := linkNames(t, podNS); !slices.Equal(got, podLinks) {
				t.Errorf("pod netns links = %v, want %v", got, podLinks)
			}
			if got := linkNames(t, hostNS); !slices.Equal(got, hostLinks) {
				t.Errorf("host netns links = %v, want %v", got, hostLinks)
			}
		})
	}
}

// TestConfigureInterfaceNoLink needs no ipvlan: it runs wherever there is root.
func TestConfigureInterfaceNoLink(t *testing.T) {
	podNS := nettest.NewNS(t)
	err := ConfigureInterface(podNS, "net1", netip.MustParsePrefix("10.1.0.5/24"))
	if !errors.As(err, &netlink.LinkNotFoundError{}) {
		t.Fatalf("error = %v, want link not found", err)
	}
	if want := `configure "net1" in ` + podNS.Path() + ": "; !strings.HasPrefix(err.Error(), want) {
		t.Errorf("error = %q, want prefix %q", err, want)
	}
}

// linkNames lists the links of n, sorted.
func linkNames(t *testing.T, n ns.NetNS) []string { return nettest.LinkNames(t, nettest.Handle(t, n)) }

// TestIPVlanIPv6Siblings: ipvlan children share their parent's MAC, so what keeps IPv6 sound without DAD
// (IPv6Sysctls) is checked here: two children of one parent in two pods get distinct link-local addresses
// (the kernel puts each child's dev_id into its EUI-64) that differ from the parent's, nothing is tentative,
// and ipvlan itself refuses a global address a sibling already has.
func TestIPVlanIPv6Siblings(t *testing.T) {
	nettest.RequireLinkType(t, "ipvlan")
	hostNS, podA := newParent(t)
	podB, podC := nettest.NewNS(t), nettest.NewNS(t)
	for _, c := range []struct {
		pod  ns.NetNS
		addr string
	}{{podA, "2001:db8:ec2:1::5/64"}, {podB, "2001:db8:ec2:1::6/64"}} {
		err := hostNS.Do(func(ns.NetNS) error {
			_, err := CreateIPVlanChild(parentName, c.pod, "net1", netlink.IPVLAN_MODE_L2, 0)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := ConfigureInterface(c.pod, "net1", netip.MustParsePrefix(c.addr)); err != nil {
			t.Fatal(err)
		}
	}
	linkLocal := func(n ns.NetNS, ifName string) string {
		t.Helper()
		h := nettest.Handle(t, n)
		l, err := h.LinkByName(ifName)
		if err != nil {
			t.Fatal(err)
		}
		addrs, err := nlretry.AddrList(h, l, netlink.FAMILY_V6)
		if err != nil {
			t.Fatal(err)
		}
		var ll string
		for _, a := range addrs {
			if a.Flags&(unix.IFA_F_TENTATIVE|unix.IFA_F_DADFAILED) != 0 && ifName == "net1" {
				t.Errorf("%s in %s: address %s flags %#x, tentative or failed DAD", ifName, n.Path(), a.IPNet, a.Flags)
			}
			if a.IP.IsLinkLocalUnicast() {
				ll = a.IP.String()
			}
		}
		return ll
	}
	llA, llB, llParent := linkLocal(podA, "net1"), linkLocal(podB, "net1"), linkLocal(hostNS, parentName)
	t.Logf("link-local: parent %s, child A %s, child B %s", llParent, llA, llB)
	if llA == "" || llB == "" || llA == llB || llA == llParent || llB == llParent {
		t.Errorf("link-local addresses: parent %q, child A %q, child B %q: want three distinct", llParent, llA, llB)
	}

	// A third child may not take A's address: ipvlan refuses it, DAD or not.
	err := hostNS.Do(func(ns.NetNS) error {
		_, err := CreateIPVlanChild(parentName, podC, "net1", netlink.IPVLAN_MODE_L2, 0)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	err = ConfigureInterface(podC, "net1", netip.MustParsePrefix("2001:db8:ec2:1::5/64"))
	if !errors.Is(err, unix.EADDRINUSE) {
		t.Errorf("configure a sibling with A's address: error = %v, want EADDRINUSE", err)
	}
}
