package plugin

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Policy routing. Each multinic interface of a pod gets its own route table, RouteTableBase + card: a pod
// holds at most one address per card, so the ids never collide between its interfaces, and they stay clear
// of the kernel's tables (253-255) and of the low ids people pick by hand. The rule
// `from <address> lookup <table>` sits at RulePriority, before the main table (32766), so replies and
// connections bound to the interface's address leave through it, while the pod's default route (eth0, main
// table) stays as it is.
const (
	RouteTableBase = 1000
	RulePriority   = 1000
)

// RPFilterLoose is the rp_filter the pod interface gets: with several interfaces, strict reverse path
// filtering would drop packets arriving on an interface that is not the main table's way back.
const RPFilterLoose = "2"

// Routing is what ADD configures on the pod interface besides its address, for one address family: a
// dual-stack interface has one Routing per family, with the same table id (the kernel keeps a table per
// family, so the one card-numbered id serves both without a collision).
//
// IPv6 is routed, not bridged, as the VPC routes it: the address gets no on-link /64 (IFA_F_NOPREFIXROUTE),
// and the subnet is reached through the VPC router like any other destination, so the pod never sends
// neighbour solicitations for its peers, only for the router (Gateway, a link-local address).
type Routing struct {
	IfName    string
	Address   netip.Addr
	PrefixLen int
	// Gateway is the subnet's router (IPv4: its .1; IPv6: the VPC router's link-local fe80:ec2::1); invalid
	// (zero) for ipvlan L3/L3S, where routes need a device only.
	Gateway netip.Addr
	// Table is the per-interface route table; 0 disables policy routing.
	Table int
	// Routes are extra destinations (of Address's family) through the interface, added to the main table
	// with the interface's address as source (so the rule sends replies the same way).
	Routes []netip.Prefix
}

func (r Routing) subnet() netip.Prefix { return netip.PrefixFrom(r.Address, r.PrefixLen).Masked() }

// family is the netlink family of r's address.
func (r Routing) family() int {
	if r.Address.Is6() {
		return netlink.FAMILY_V6
	}
	return netlink.FAMILY_V4
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func netIP(a netip.Addr) net.IP {
	if !a.IsValid() {
		return nil
	}
	return net.IP(a.AsSlice())
}

// via is a route through the gateway, or on the link when there is none (L3).
func (r Routing) via(index int, dst netip.Prefix, table int) netlink.Route {
	rt := netlink.Route{LinkIndex: index, Dst: ipNet(dst), Gw: netIP(r.Gateway), Table: table}
	if !r.Gateway.IsValid() {
		rt.Scope = netlink.SCOPE_LINK
	}
	return rt
}

// mainRoutes are r's routes in the main table: the extra routes and, for IPv6, the subnet through the
// router (for IPv4 the kernel adds the subnet's on-link route with the address).
func (r Routing) mainRoutes(index int) []netlink.Route {
	var routes []netlink.Route
	if r.Address.Is6() {
		rt := r.via(index, r.subnet(), 0)
		rt.Src = netIP(r.Address)
		routes = append(routes, rt)
	}
	for _, dst := range r.Routes {
		rt := r.via(index, dst, 0)
		rt.Src = netIP(r.Address)
		rt.Scope = netlink.SCOPE_UNIVERSE
		routes = append(routes, rt)
	}
	return routes
}

// tableRoutes are the routes of the per-interface table: the subnet (IPv4 on the link, IPv6 through the
// router), and the default route.
func (r Routing) tableRoutes(index int) []netlink.Route {
	sub := netlink.Route{
		LinkIndex: index,
		Dst:       ipNet(r.subnet()),
		Src:       netIP(r.Address),
		Scope:     netlink.SCOPE_LINK,
		Table:     r.Table,
	}
	if r.Address.Is6() {
		sub = r.via(index, r.subnet(), r.Table)
		sub.Src = netIP(r.Address)
	}
	unspec := netip.IPv4Unspecified()
	if r.Address.Is6() {
		unspec = netip.IPv6Unspecified()
	}
	return []netlink.Route{sub, r.via(index, netip.PrefixFrom(unspec, 0), r.Table)}
}

func (r Routing) rule() *netlink.Rule {
	rule := netlink.NewRule()
	rule.Family = r.family()
	rule.Src = ipNet(netip.PrefixFrom(r.Address, r.Address.BitLen()))
	rule.Table = r.Table
	rule.Priority = RulePriority
	return rule
}

// AddRoutes adds r's extra routes (main table) and, with policy routing, the per-interface table's routes.
// Routes go away with the link.
func AddRoutes(podNS ns.NetNS, r Routing) error {
	return inNetns(podNS, func(h netlinksafe.Handle) error { return addRoutes(h, podNS.Path(), r) })
}

// addRoutes is AddRoutes through h, in the calling thread's netns (the pod's, named where).
func addRoutes(h netlinksafe.Handle, where string, r Routing) error {
	err := func() error {
		l, err := h.LinkByName(r.IfName)
		if err != nil {
			return err
		}
		routes := r.mainRoutes(l.Attrs().Index)
		if r.Table > 0 {
			routes = append(routes, r.tableRoutes(l.Attrs().Index)...)
		}
		for _, rt := range routes {
			if err := h.RouteAdd(&rt); err != nil {
				return fmt.Errorf("add route %s: %w", rt.String(), err)
			}
		}
		return nil
	}()
	if err != nil {
		return fmt.Errorf("add routes of %q in %s: %w", r.IfName, where, err)
	}
	return nil
}

// AddRule adds the rule `from <address> lookup <table>`. DeleteRules removes it.
func AddRule(podNS ns.NetNS, r Routing) error {
	return inNetns(podNS, func(h netlinksafe.Handle) error { return addRule(h, podNS.Path(), r) })
}

// addRule is AddRule through h, in the calling thread's netns (the pod's, named where).
func addRule(h netlinksafe.Handle, where string, r Routing) error {
	if err := h.RuleAdd(r.rule()); err != nil {
		return fmt.Errorf("add rule from %s lookup %d in %s: %w", r.Address, r.Table, where, err)
	}
	return nil
}

// DeleteRules removes every rule (IPv4 and IPv6) at RulePriority that looks up table, through h (in its
// netns). No rule is not an error.
func DeleteRules(h netlinksafe.Handle, table int) error {
	var errs []error
	for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rules, err := h.RuleListFiltered(family, &netlink.Rule{Table: table}, netlink.RT_FILTER_TABLE)
		if err != nil {
			errs = append(errs, fmt.Errorf("list rules of table %d: %w", table, err))
			continue
		}
		for _, rule := range rules {
			if rule.Priority != RulePriority || rule.Table != table {
				continue
			}
			if err := h.RuleDel(&rule); err != nil && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("delete rule %s: %w", rule.String(), err))
			}
		}
	}
	return errors.Join(errs...)
}

// sysctlPath is the /proc/sys file of a net.<ipv4|ipv6>.conf.<ifName> setting.
func sysctlPath(family, ifName, key string) string {
	return filepath.Join("/proc/sys/net", family, "conf", ifName, key)
}

// setRPFilter sets net.ipv4.conf.<ifName>.rp_filter to loose in the calling thread's netns (the pod's,
// named where).
func setRPFilter(where, ifName string) error {
	if err := os.WriteFile(sysctlPath("ipv4", ifName, "rp_filter"), []byte(RPFilterLoose), 0o644); err != nil {
		return fmt.Errorf("set rp_filter of %q in %s: %w", ifName, where, err)
	}
	return nil
}

// IPv6Sysctls are the net.ipv6.conf.<ifName> settings of a pod interface that carries IPv6, written in the
// pod netns before its addresses, in this order:
//   - disable_ipv6 0: a link created in or moved into the pod takes the netns's default, which runtimes (and
//     our test harness) may set to 1; the kernel then refuses IPv6 addresses.
//   - accept_ra 0, autoconf 0: the addresses and routes are the agent's; a router advertisement must not add
//     others (SLAAC addresses EC2 never assigned, which the VPC would drop) or a default route.
//   - accept_dad 0: the global address is added with IFA_F_NODAD anyway (see ConfigureInterface); this also
//     makes the kernel's own link-local usable at once instead of tentative for a second. DAD cannot find a
//     duplicate on a VPC, which forwards no neighbour solicitation between ENIs; uniqueness comes from EC2
//     (one address, one ENI) and the agent (one address, one pod). ipvlan children share their parent's MAC,
//     but the kernel gives each a distinct dev_id, which goes into its EUI-64 link-local (fe80::..:<dev_id>:..),
//     so siblings' link-locals differ too; and ipvlan itself refuses an address a sibling already has.
var IPv6Sysctls = []struct{ Key, Value string }{
	{"disable_ipv6", "0"}, {"accept_ra", "0"}, {"autoconf", "0"}, {"accept_dad", "0"},
}

// setIPv6Sysctls writes IPv6Sysctls for ifName in the calling thread's netns (the pod's).
func setIPv6Sysctls(ifName string) error {
	for _, s := range IPv6Sysctls {
		if err := os.WriteFile(sysctlPath("ipv6", ifName, s.Key), []byte(s.Value), 0o644); err != nil {
			return fmt.Errorf("set net.ipv6.conf.%s.%s=%s: %w", ifName, s.Key, s.Value, err)
		}
	}
	return nil
}

// readSysctl reads net.<family>.conf.<ifName>.<key> in the calling thread's netns.
func readSysctl(family, ifName, key string) (string, error) {
	b, err := os.ReadFile(sysctlPath(family, ifName, key))
	return strings.TrimSpace(string(b)), err
}
