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

// Routing is what ADD configures on the pod interface besides its address.
type Routing struct {
	IfName    string
	Address   netip.Addr
	PrefixLen int
	// Gateway is the subnet's router; invalid (zero) for ipvlan L3/L3S, where routes need a device only.
	Gateway netip.Addr
	// Table is the per-interface route table; 0 disables policy routing.
	Table int
	// Routes are extra destinations through the interface, added to the main table with the interface's
	// address as source (so the rule sends replies the same way).
	Routes []netip.Prefix
}

func (r Routing) subnet() netip.Prefix { return netip.PrefixFrom(r.Address, r.PrefixLen).Masked() }

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func netIP(a netip.Addr) net.IP {
	if !a.IsValid() {
		return nil
	}
	return net.IP(a.AsSlice())
}

// extraRoutes are the main-table routes of r.Routes.
func (r Routing) extraRoutes(index int) []netlink.Route {
	var routes []netlink.Route
	for _, dst := range r.Routes {
		routes = append(routes, netlink.Route{
			LinkIndex: index,
			Dst:       ipNet(dst),
			Gw:        netIP(r.Gateway),
			Src:       netIP(r.Address),
		})
	}
	return routes
}

// tableRoutes are the routes of the per-interface table: the subnet on the link, and the default route.
func (r Routing) tableRoutes(index int) []netlink.Route {
	routes := []netlink.Route{{
		LinkIndex: index,
		Dst:       ipNet(r.subnet()),
		Src:       netIP(r.Address),
		Scope:     netlink.SCOPE_LINK,
		Table:     r.Table,
	}}
	def := netlink.Route{
		LinkIndex: index,
		Dst:       ipNet(netip.PrefixFrom(netip.IPv4Unspecified(), 0)),
		Gw:        netIP(r.Gateway),
		Table:     r.Table,
	}
	if !r.Gateway.IsValid() {
		def.Scope = netlink.SCOPE_LINK
	}
	return append(routes, def)
}

func (r Routing) rule() *netlink.Rule {
	rule := netlink.NewRule()
	rule.Family = unix.AF_INET
	rule.Src = ipNet(netip.PrefixFrom(r.Address, 32))
	rule.Table = r.Table
	rule.Priority = RulePriority
	return rule
}

// AddRoutes adds r's extra routes (main table) and, with policy routing, the per-interface table's routes.
// Routes go away with the link.
func AddRoutes(podNS ns.NetNS, r Routing) error {
	err := podNS.Do(func(ns.NetNS) error {
		l, err := netlinksafe.LinkByName(r.IfName)
		if err != nil {
			return err
		}
		routes := r.extraRoutes(l.Attrs().Index)
		if r.Table > 0 {
			routes = append(routes, r.tableRoutes(l.Attrs().Index)...)
		}
		for _, rt := range routes {
			if err := netlink.RouteAdd(&rt); err != nil {
				return fmt.Errorf("add route %s: %w", rt.String(), err)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("add routes of %q in %s: %w", r.IfName, podNS.Path(), err)
	}
	return nil
}

// AddRule adds the rule `from <address> lookup <table>`. DeleteRules removes it.
func AddRule(podNS ns.NetNS, r Routing) error {
	err := podNS.Do(func(ns.NetNS) error { return netlink.RuleAdd(r.rule()) })
	if err != nil {
		return fmt.Errorf("add rule from %s lookup %d in %s: %w", r.Address, r.Table, podNS.Path(), err)
	}
	return nil
}

// DeleteRules removes every rule at RulePriority that looks up table, from the calling thread's netns.
// No rule is not an error.
func DeleteRules(table int) error {
	rules, err := netlinksafe.RuleListFiltered(unix.AF_INET, &netlink.Rule{Table: table}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return fmt.Errorf("list rules of table %d: %w", table, err)
	}
	var errs []error
	for _, rule := range rules {
		if rule.Priority != RulePriority || rule.Table != table {
			continue
		}
		if err := netlink.RuleDel(&rule); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("delete rule %s: %w", rule.String(), err))
		}
	}
	return errors.Join(errs...)
}

// sysctlPath is the /proc/sys file of a net.ipv4.conf.<ifName> setting.
func sysctlPath(ifName, key string) string {
	return filepath.Join("/proc/sys/net/ipv4/conf", ifName, key)
}

// SetRPFilter sets net.ipv4.conf.<ifName>.rp_filter to loose in podNS.
func SetRPFilter(podNS ns.NetNS, ifName string) error {
	err := podNS.Do(func(ns.NetNS) error {
		return os.WriteFile(sysctlPath(ifName, "rp_filter"), []byte(RPFilterLoose), 0o644)
	})
	if err != nil {
		return fmt.Errorf("set rp_filter of %q in %s: %w", ifName, podNS.Path(), err)
	}
	return nil
}

// readSysctl reads net.ipv4.conf.<ifName>.<key> in the calling thread's netns.
func readSysctl(ifName, key string) (string, error) {
	b, err := os.ReadFile(sysctlPath(ifName, key))
	return strings.TrimSpace(string(b)), err
}
