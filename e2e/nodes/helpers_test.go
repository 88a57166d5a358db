package nodes

import (
	"testing"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/multinic/multinic/internal/testing/fakeec2"
	"github.com/multinic/multinic/internal/testing/harness"
)

func subnetCIDR(t *testing.T, st fakeec2.State, id string) string {
	t.Helper()
	sn, ok := st.Subnet(id)
	if !ok {
		t.Fatalf("subnet %s not in fake-ec2", id)
	}
	return sn.CIDR
}

// rulesTo lists the IPv4 rules that look up table.
func rulesTo(t *testing.T, h netlinksafe.Handle, table int) []netlink.Rule {
	t.Helper()
	rules, err := h.RuleListFiltered(unix.AF_INET, &netlink.Rule{Table: table}, netlink.RT_FILTER_TABLE)
	if err != nil {
		t.Fatalf("list rules: %v", err)
	}
	return rules
}

// defaultRoute is the IPv4 default route of a table in the pod, or nil.
func defaultRoute(t *testing.T, pod *harness.Pod, table int) *netlink.Route {
	t.Helper()
	routes, err := pod.Handle().RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: table}, netlink.RT_FILTER_TABLE)
	if err != nil {
		t.Fatalf("list routes of table %d: %v", table, err)
	}
	for _, r := range routes {
		if r.Dst == nil || r.Dst.IP.IsUnspecified() {
			r := r
			return &r
		}
	}
	return nil
}

func linkIndex(t *testing.T, h netlinksafe.Handle, name string) int {
	t.Helper()
	l, err := h.LinkByName(name)
	if err != nil {
		t.Fatalf("find %s: %v", name, err)
	}
	return l.Attrs().Index
}
