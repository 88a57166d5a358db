package fabric

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/multinic/multinic/internal/testing/fakeec2"
)

const subnetB6 = "2001:db8:ec2:2::/64"

// with6 gives an attachment its subnet's IPv6 block and the IPv6 EC2 assigned to it.
func with6(a fakeec2.Attachment, block string, addrs, prefixes []string) fakeec2.Attachment {
	a.SubnetIPv6CIDR, a.IPv6Addresses, a.IPv6Prefixes = block, addrs, prefixes
	return a
}

// bringUp6 plays the agent and plugin for IPv6: the link up, each address as a /128 (no DAD, no
// on-link /64) and a default route through the VPC router.
func bringUp6(tb testing.TB, nsName string, a fakeec2.Attachment, addrs ...string) {
	tb.Helper()
	h := nsHandle(tb, nsName)
	link := linkByMAC(tb, h, a.MAC)
	if link == nil {
		tb.Fatalf("no link with MAC %s in %s", a.MAC, nsName)
	}
	if err := h.LinkSetUp(link); err != nil {
		tb.Fatal(err)
	}
	for _, s := range addrs {
		addr := &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(netip.MustParseAddr(s), 128)), Flags: unix.IFA_F_NODAD}
		if err := h.AddrAdd(link, addr); err != nil {
			tb.Fatalf("add %s to %s: %v", s, link.Attrs().Name, err)
		}
	}
	def := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: ipNet(netip.MustParsePrefix("::/0")), Gw: IPv6Gateway.AsSlice()}
	if err := h.RouteReplace(def); err != nil {
		tb.Fatalf("default route via %s in %s: %v", IPv6Gateway, nsName, err)
	}
}

// dial6 opens a TCP connection from src in fromNS to dst in toNS (a listener there) and checks that the
// bytes arrive and the peer saw src. It retries until timeout: the router's neighbour entry may still
// be resolving.
func dial6(fromNS, src, toNS, dst string, timeout time.Duration) error {
	var l net.Listener
	err := ns.WithNetNSPath(netnsPath(toNS), func(ns.NetNS) error {
		var err error
		l, err = net.Listen("tcp6", net.JoinHostPort(dst, "0"))
		return err
	})
	if err != nil {
		return fmt.Errorf("listen on %s in %s: %w", dst, toNS, err)
	}
	defer l.Close()
	peer := make(chan string, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		b := make([]byte, 5)
		if _, err := c.Read(b); err == nil && string(b) == "hello" {
			peer <- c.RemoteAddr().(*net.TCPAddr).IP.String()
		}
	}()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 500 * time.Millisecond}
	deadline := time.Now().Add(timeout)
	for {
		var c net.Conn
		err = ns.WithNetNSPath(netnsPath(fromNS), func(ns.NetNS) error {
			var err error
			c, err = d.Dial("tcp6", l.Addr().String())
			return err
		})
		if err == nil {
			_, err = c.Write([]byte("hello"))
			c.Close()
		}
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("dial [%s] -> %s from %s: %w", src, l.Addr(), fromNS, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	select {
	case p := <-peer:
		if p != src {
			return fmt.Errorf("%s saw the connection from %s, want %s", dst, p, src)
		}
		return nil
	case <-time.After(timeout):
		return fmt.Errorf("%s: connection accepted but no data in %s", dst, timeout)
	}
}

// TestIPv6Routed: two nodes' ENIs on the same card (subnet) reach each other over IPv6 through the VPC
// router, for assigned addresses and addresses of an assigned /80, and only those: an address a node
// configures but EC2 did not assign is unreachable until SetIPv6 routes it. IPv4 on the same ENIs stays
// bridged.
func TestIPv6Routed(t *testing.T) {
	requireRoot(t)
	p := testPrefix(t)
	n1, n2 := p+"-n1", p+"-n2"
	f := newFabric(t, Config{Prefix: p, Nodes: map[string]string{"i-1": n1, "i-2": n2}})
	a1 := with6(eni("i-1", 1, 1, 0, subnetB, cidrB, "10.2.0.11"), subnetB6, []string{"2001:db8:ec2:2::11"}, nil)
	a2 := with6(eni("i-2", 2, 1, 0, subnetB, cidrB, "10.2.0.12"), subnetB6, []string{"2001:db8:ec2:2::12"}, []string{"2001:db8:ec2:2:12::/80"})
	attach(t, f, a1, a2)
	bringUp(t, n1, a1, a1.PrimaryIP)
	bringUp(t, n2, a2, a2.PrimaryIP)
	bringUp6(t, n1, a1, "2001:db8:ec2:2::11")
	// ::99 is on the node but not assigned to its ENI.
	bringUp6(t, n2, a2, "2001:db8:ec2:2::12", "2001:db8:ec2:2:12::7", "2001:db8:ec2:2::99")

	if err := dial6(n1, "2001:db8:ec2:2::11", n2, "2001:db8:ec2:2::12", 5*time.Second); err != nil {
		t.Fatalf("assigned address: %v", err)
	}
	if err := dial6(n1, "2001:db8:ec2:2::11", n2, "2001:db8:ec2:2:12::7", 3*time.Second); err != nil {
		t.Errorf("address in an assigned /80: %v", err)
	}
	if err := dial6(n1, "2001:db8:ec2:2::11", n2, "2001:db8:ec2:2::99", time.Second); err == nil {
		t.Error("reached an address EC2 did not assign")
	}
	if err := ping(n1, a1.PrimaryIP, a2.PrimaryIP, 3*time.Second); err != nil {
		t.Errorf("IPv4 on the same card: %v", err)
	}

	// The router answered neighbour discovery for the gateway with its bridge's MAC.
	neighs, err := nsHandle(t, n1).NeighList(linkByMAC(t, nsHandle(t, n1), a1.MAC).Attrs().Index, netlink.FAMILY_V6)
	if err != nil {
		t.Fatal(err)
	}
	br, err := nsHandle(t, f.NetNSName()).LinkByName(bridgeName(0))
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(neighs, func(n netlink.Neigh) bool { return n.IP.Equal(IPv6Gateway.AsSlice()) })
	if i < 0 || neighs[i].HardwareAddr.String() != br.Attrs().HardwareAddr.String() {
		t.Errorf("n1's neighbours %v: want %s at %s", neighs, IPv6Gateway, br.Attrs().HardwareAddr)
	}

	// EC2 assigns ::99 and gives the /80 back: the routes follow.
	a2 = with6(a2, subnetB6, []string{"2001:db8:ec2:2::12", "2001:db8:ec2:2::99"}, nil)
	if err := f.SetIPv6(a2); err != nil {
		t.Fatal(err)
	}
	if err := dial6(n1, "2001:db8:ec2:2::11", n2, "2001:db8:ec2:2::99", 3*time.Second); err != nil {
		t.Errorf("newly assigned address: %v", err)
	}
	if err := dial6(n1, "2001:db8:ec2:2::11", n2, "2001:db8:ec2:2:12::7", time.Second); err == nil {
		t.Error("reached an address of an unassigned /80")
	}
	if err := dial6(n2, "2001:db8:ec2:2::12", n1, "2001:db8:ec2:2::11", 3*time.Second); err != nil {
		t.Errorf("the other way: %v", err)
	}

	// Detach takes the routes with the link; the same ENI attached again is routed again.
	if err := f.Detach(a2); err != nil {
		t.Fatal(err)
	}
	routes, err := nsHandle(t, f.NetNSName()).RouteListFiltered(netlink.FAMILY_V6, &netlink.Route{Dst: ipNet(netip.MustParsePrefix("2001:db8:ec2:2::12/128"))}, netlink.RT_FILTER_DST)
	if err != nil || len(routes) != 0 {
		t.Errorf("routes to a detached ENI's address: %v %v", routes, err)
	}
	attach(t, f, a2)
	bringUp6(t, n2, a2, "2001:db8:ec2:2::12")
	if err := dial6(n1, "2001:db8:ec2:2::11", n2, "2001:db8:ec2:2::12", 5*time.Second); err != nil {
		t.Errorf("after re-attach: %v", err)
	}
}

func TestIPv6AttachmentValidation(t *testing.T) {
	a := eni("i-1", 1, 1, 0, subnetB, cidrB, "10.2.0.11")
	for name, bad := range map[string]fakeec2.Attachment{
		"IPv6 without a block":   with6(a, "", []string{"2001:db8:ec2:2::11"}, nil),
		"address outside block":  with6(a, subnetB6, []string{"2001:db8:ec2:3::11"}, nil),
		"prefix outside block":   with6(a, subnetB6, nil, []string{"2001:db8:ec2:3:1::/80"}),
		"prefix not a network":   with6(a, subnetB6, nil, []string{"2001:db8:ec2:2:1::1/80"}),
		"block not IPv6":         with6(a, "10.2.0.0/24", []string{"2001:db8:ec2:2::11"}, nil),
		"address not an address": with6(a, subnetB6, []string{"nope"}, nil),
	} {
		if _, err := parseAttachment(bad); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	good := with6(a, subnetB6, []string{"2001:db8:ec2:2::11"}, []string{"2001:db8:ec2:2:1::/80"})
	p, err := parseAttachment(good)
	if err != nil || !slices.Equal(p.ipv6, []netip.Prefix{netip.MustParsePrefix("2001:db8:ec2:2::11/128"), netip.MustParsePrefix("2001:db8:ec2:2:1::/80")}) {
		t.Fatalf("good attachment: %v %v", p.ipv6, err)
	}
	if got := eui64LinkLocal(p.mac).String(); got != "fe80::4f:1ff:fe01:0" {
		t.Fatalf("EUI-64 link-local of %s: %s", a.MAC, got)
	}
}
