package plugin

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/multinic/multinic/internal/nlretry"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/multinic/multinic/internal/nettest"
)

// The IPv6 side of the test VPC (env_test.go has the IPv4 one): the card's subnet, the pod's address in it,
// the VPC router's link-local address and an address behind the router.
var (
	subnet6  = netip.MustParsePrefix("2001:db8:ec2:1::/64")
	podAddr6 = netip.MustParseAddr("2001:db8:ec2:1::5")
	gateway6 = netip.MustParseAddr("fe80:ec2::1")
	remote6  = netip.MustParseAddr("2001:db8:ff::1")
)

// disableIPv6 turns IPv6 off in n for every link and for links made later, as runtimes (and the e2e
// harness) may do in a pod: the plugin must turn it on for its own link.
func disableIPv6(t *testing.T, n ns.NetNS) {
	t.Helper()
	err := n.Do(func(ns.NetNS) error {
		for _, key := range []string{"all", "default"} {
			if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+key+"/disable_ipv6", []byte("1"), 0o644); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("disable IPv6 in %s: %v", n.Path(), err)
	}
}

// setUpVPC6 gives the vpc netns's link vpcIf the router's link-local address (no DAD: it is there before
// any pod asks, as EC2's), remote6 on lo, and the subnet on the link, so that it answers the pod.
func setUpVPC6(t *testing.T, vpc ns.NetNS, vpcIf string) {
	t.Helper()
	h := nettest.Handle(t, vpc)
	l, err := h.LinkByName(vpcIf)
	if err != nil {
		t.Fatal(err)
	}
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	for _, err := range []error{
		h.AddrAdd(l, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(gateway6, 64)), Flags: unix.IFA_F_NODAD}),
		h.AddrAdd(lo, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(remote6, 128)), Flags: unix.IFA_F_NODAD}),
		h.LinkSetUp(l),
		h.LinkSetUp(lo),
		h.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: ipNet(subnet6)}),
	} {
		if err != nil {
			t.Fatalf("set up IPv6 in the vpc netns: %v", err)
		}
	}
}

// dial connects from src in from to a listener on dst in to, once (no retry: the address must be usable
// at once).
func dial(t *testing.T, from ns.NetNS, src netip.Addr, to ns.NetNS, dst netip.Addr) error {
	t.Helper()
	var l net.Listener
	err := to.Do(func(ns.NetNS) error {
		var err error
		l, err = net.Listen("tcp", netip.AddrPortFrom(dst, 0).String())
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		if c, err := l.Accept(); err == nil {
			c.Close()
		}
	}()
	return from.Do(func(ns.NetNS) error {
		d := net.Dialer{Timeout: 3 * time.Second}
		if src.IsValid() {
			d.LocalAddr = &net.TCPAddr{IP: netIP(src)}
		}
		c, err := d.Dial("tcp", l.Addr().String())
		if err != nil {
			return err
		}
		return c.Close()
	})
}

// TestConfigureIPv6 configures a pod link (a veth end; its peer is the VPC) with an IPv6 address, or one of
// each family, in a pod netns whose IPv6 is off, and checks what ADD relies on: no tentative address (the
// address is usable when ADD returns: a single connection attempt must pass), no address or route of the
// kernel's own beyond the link-local, the policy routing of each family, and DeleteRules taking both
// families' rules.
func TestConfigureIPv6(t *testing.T) {
	for _, dual := range []bool{false, true} {
		t.Run(map[bool]string{false: "ipv6", true: "dual"}[dual], func(t *testing.T) {
			pod, vpc := nettest.NewNS(t), nettest.NewNS(t)
			disableIPv6(t, pod)
			h := nettest.Handle(t, pod)
			veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: podIfName}, PeerName: "vpc0",
				PeerNamespace: netlink.NsFd(int(vpc.Fd()))}
			if err := h.LinkAdd(veth); err != nil {
				t.Fatal(err)
			}
			setUpVPC6(t, vpc, "vpc0")
			table := RouteTableBase + card
			rs := []Routing{{IfName: podIfName, Address: podAddr6, PrefixLen: 64, Gateway: gateway6, Table: table,
				Routes: []netip.Prefix{netip.MustParsePrefix("2001:db8:100::/48")}}}
			if dual {
				v := nettest.Handle(t, vpc)
				vl, err := v.LinkByName("vpc0")
				if err != nil {
					t.Fatal(err)
				}
				if err := v.AddrAdd(vl, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(gatewayIP, 24))}); err != nil {
					t.Fatal(err)
				}
				rs = append([]Routing{{IfName: podIfName, Address: podAddr, PrefixLen: 24, Gateway: gatewayIP, Table: table}}, rs...)
			}
			var addrs []netip.Prefix
			for _, r := range rs {
				addrs = append(addrs, netip.PrefixFrom(r.Address, r.PrefixLen))
			}
			if err := ConfigureInterface(pod, podIfName, addrs...); err != nil {
				t.Fatal(err)
			}
			for _, r := range rs {
				if err := AddRoutes(pod, r); err != nil {
					t.Fatal(err)
				}
				if err := AddRule(pod, r); err != nil {
					t.Fatal(err)
				}
			}
			// At once, before anything had time to settle: one attempt from the IPv6 address.
			if err := dial(t, pod, podAddr6, vpc, remote6); err != nil {
				t.Errorf("connect from %s to %s right after configuring: %v", podAddr6, remote6, err)
			}

			l, err := h.LinkByName(podIfName)
			if err != nil {
				t.Fatal(err)
			}
			got6, err := nlretry.AddrList(h, l, netlink.FAMILY_V6)
			if err != nil {
				t.Fatal(err)
			}
			var global []string
			for _, a := range got6 {
				if a.Flags&(unix.IFA_F_TENTATIVE|unix.IFA_F_DADFAILED) != 0 {
					t.Errorf("address %s has flags %#x: tentative or failed DAD", a.IPNet, a.Flags)
				}
				if !a.IP.IsLinkLocalUnicast() {
					global = append(global, a.IPNet.String())
					if want := unix.IFA_F_NODAD | unix.IFA_F_NOPREFIXROUTE; a.Flags&want != want {
						t.Errorf("address %s flags %#x, want nodad and noprefixroute", a.IPNet, a.Flags)
					}
				}
			}
			if want := []string{"2001:db8:ec2:1::5/64"}; !slices.Equal(global, want) {
				t.Errorf("IPv6 addresses other than link-local = %v, want %v", global, want)
			}
			for _, s := range IPv6Sysctls {
				var v string
				if err := pod.Do(func(ns.NetNS) error { v, err = readSysctl("ipv6", podIfName, s.Key); return err }); err != nil || v != s.Value {
					t.Errorf("net.ipv6.conf.%s.%s = %q (%v), want %s", podIfName, s.Key, v, err, s.Value)
				}
			}

			// The per-card table, the main table (no on-link /64: the subnet through the router), the rule.
			wantTable := []string{"2001:db8:ec2:1::/64 via fe80:ec2::1 src 2001:db8:ec2:1::5", "::/0 via fe80:ec2::1"}
			if got := routeStringsOf(t, pod, netlink.FAMILY_V6, table, podIfName); !slices.Equal(got, wantTable) {
				t.Errorf("IPv6 table %d = %q, want %q", table, got, wantTable)
			}
			main := routeStringsOf(t, pod, netlink.FAMILY_V6, unix.RT_TABLE_MAIN, podIfName)
			for _, want := range []string{"2001:db8:ec2:1::/64 via fe80:ec2::1 src 2001:db8:ec2:1::5",
				"2001:db8:100::/48 via fe80:ec2::1 src 2001:db8:ec2:1::5"} {
				if !slices.Contains(main, want) {
					t.Errorf("main table = %q, want %q in it", main, want)
				}
			}
			if slices.ContainsFunc(main, func(s string) bool {
				return strings.HasPrefix(s, "2001:db8:ec2:1::/64") && !strings.Contains(s, " via ")
			}) {
				t.Errorf("main table = %q: an on-link route to the subnet", main)
			}
			rules6, err := h.RuleListFiltered(unix.AF_INET6, &netlink.Rule{Table: table}, netlink.RT_FILTER_TABLE)
			if err != nil {
				t.Fatal(err)
			}
			if len(rules6) != 1 || rules6[0].Src.String() != "2001:db8:ec2:1::5/128" || rules6[0].Priority != RulePriority {
				t.Errorf("IPv6 rules of table %d = %v, want from 2001:db8:ec2:1::5/128 priority %d", table, rules6, RulePriority)
			}
			if dual {
				if err := dial(t, pod, podAddr, vpc, gatewayIP); err != nil {
					t.Errorf("connect from %s to %s: %v", podAddr, gatewayIP, err)
				}
			}

			if err := DeleteRules(h, table); err != nil {
				t.Fatal(err)
			}
			for _, family := range []int{unix.AF_INET, unix.AF_INET6} {
				rules, err := h.RuleListFiltered(family, &netlink.Rule{Table: table}, netlink.RT_FILTER_TABLE)
				if err != nil || len(rules) != 0 {
					t.Errorf("rules of family %d after DeleteRules = %v (%v), want none", family, rules, err)
				}
			}
			// The rule was what sent the pod's IPv6 out of the link: the main table has no default route.
			if err := dial(t, pod, podAddr6, vpc, remote6); err == nil {
				t.Errorf("connect from %s to %s without the rule passed: the test cannot tell the rule's effect", podAddr6, remote6)
			}
		})
	}
}

// sendRA sends a router advertisement out of the link vpcIf in vpc, from the router's link-local address:
// a default router for 30 minutes, and subnet6 on-link and for autoconfiguration (SLAAC).
func sendRA(t *testing.T, vpc ns.NetNS, vpcIf string) {
	t.Helper()
	ra := []byte{134, 0, 0, 0, 64, 0, 0x07, 0x08, 0, 0, 0, 0, 0, 0, 0, 0}         // type, code, checksum, hop limit, flags, lifetime 1800 s, reachable, retrans
	pio := []byte{3, 4, 64, 0xc0, 0, 1, 0x51, 0x80, 0, 0, 0x38, 0x40, 0, 0, 0, 0} // prefix information: /64, L and A, valid 86400 s, preferred 14400 s
	pio = append(pio, subnet6.Addr().AsSlice()...)
	err := vpc.Do(func(ns.NetNS) error {
		l, err := netlinksafe.LinkByName(vpcIf)
		if err != nil {
			return err
		}
		idx := l.Attrs().Index
		fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_RAW, unix.IPPROTO_ICMPV6) // the kernel fills the checksum
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_MULTICAST_HOPS, 255); err != nil {
			return err
		}
		if err := unix.Bind(fd, &unix.SockaddrInet6{Addr: gateway6.As16(), ZoneId: uint32(idx)}); err != nil {
			return fmt.Errorf("bind %s: %w", gateway6, err)
		}
		allNodes := netip.MustParseAddr("ff02::1").As16()
		return unix.Sendto(fd, append(ra, pio...), 0, &unix.SockaddrInet6{Addr: allNodes, ZoneId: uint32(idx)})
	})
	if err != nil {
		t.Fatalf("send a router advertisement on %s: %v", vpcIf, err)
	}
}

// TestIPv6SysctlsIgnoreRouterAdvertisements: a router advertisement (default router, prefix for SLAAC)
// reaches the pod link and a control link with the kernel's defaults; the control link takes an address
// and a default route from it (so the advertisement works), the pod link, with IPv6Sysctls, takes neither.
func TestIPv6SysctlsIgnoreRouterAdvertisements(t *testing.T) {
	pod, vpc := nettest.NewNS(t), nettest.NewNS(t)
	h := nettest.Handle(t, pod)
	for _, pair := range [][2]string{{podIfName, "vpc0"}, {"ctl0", "vpc1"}} {
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: pair[0]}, PeerName: pair[1], PeerNamespace: netlink.NsFd(int(vpc.Fd()))}
		if err := h.LinkAdd(veth); err != nil {
			t.Fatal(err)
		}
	}
	setUpVPC6(t, vpc, "vpc0")
	v := nettest.Handle(t, vpc)
	vl, err := v.LinkByName("vpc1")
	if err != nil {
		t.Fatal(err)
	}
	if err := v.AddrAdd(vl, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(gateway6, 64)), Flags: unix.IFA_F_NODAD}); err != nil {
		t.Fatal(err)
	}
	if err := v.LinkSetUp(vl); err != nil {
		t.Fatal(err)
	}
	if err := ConfigureInterface(pod, podIfName, netip.PrefixFrom(podAddr6, 64)); err != nil {
		t.Fatal(err)
	}
	ctl, err := h.LinkByName("ctl0")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(ctl); err != nil {
		t.Fatal(err)
	}
	// What the kernel took from the advertisements, per link: global addresses and main-table default routes.
	learned := func(ifName string) (addrs, defaults []string) {
		l, err := h.LinkByName(ifName)
		if err != nil {
			t.Fatal(err)
		}
		as, err := nlretry.AddrList(h, l, netlink.FAMILY_V6)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range as {
			if !a.IP.IsLinkLocalUnicast() && !a.IP.Equal(netIP(podAddr6)) {
				addrs = append(addrs, a.IPNet.String())
			}
		}
		for _, r := range routeStringsOf(t, pod, netlink.FAMILY_V6, unix.RT_TABLE_MAIN, ifName) {
			if strings.HasPrefix(r, "::/0") {
				defaults = append(defaults, r)
			}
		}
		return addrs, defaults
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		sendRA(t, vpc, "vpc0")
		sendRA(t, vpc, "vpc1")
		time.Sleep(200 * time.Millisecond)
		if a, d := learned("ctl0"); len(a) > 0 && len(d) > 0 {
			t.Logf("control link took address %v and default route %v", a, d)
			break
		}
		if time.Now().After(deadline) {
			a, d := learned("ctl0")
			t.Fatalf("the control link took addresses %v and default routes %v from the advertisements: the test cannot tell what IPv6Sysctls do", a, d)
		}
	}
	if a, d := learned(podIfName); len(a) > 0 || len(d) > 0 {
		t.Errorf("the pod link took addresses %v and default routes %v from a router advertisement, want none", a, d)
	}
}
