package nodes

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/multinic/multinic/internal/nlretry"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/multinic/multinic/internal/nettest"
	"github.com/multinic/multinic/internal/testing/fabric"
	"github.com/multinic/multinic/internal/testing/fakeec2"
	"github.com/multinic/multinic/internal/testing/harness"
	"github.com/multinic/multinic/netconf"
	"github.com/multinic/multinic/plugin"
)

// TestAttachLifecycle runs ADD, CHECK and DEL of the real plugin against the real agent on one node, per
// mode, and compares the pod's interface with the agent's allocation and with fake-ec2's ENI.
func TestAttachLifecycle(t *testing.T) {
	nettest.RequireRoot(t)
	region := harness.NewRegion(t, harness.Config{Nodes: 1})
	node := region.Node(0)

	tests := []struct {
		name   string
		att    harness.Attachment
		ipvlan netlink.IPVlanMode // for ipvlan modes
	}{
		{name: "exclusive", att: harness.Attachment{Card: 1, Mode: netconf.ModeExclusive}},
		{name: "ipvlan-l2", att: harness.Attachment{Card: 1, Mode: netconf.ModeIPVlan, IPVlanMode: "l2"}, ipvlan: netlink.IPVLAN_MODE_L2},
		{name: "ipvlan-l3", att: harness.Attachment{Card: 2, Mode: netconf.ModeIPVlan, IPVlanMode: "l3"}, ipvlan: netlink.IPVLAN_MODE_L3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			exclusive := tc.att.Mode == netconf.ModeExclusive
			if !exclusive {
				nettest.RequireLinkType(t, "ipvlan")
			}
			pod := node.AddPod(t, "p-"+tc.name, []harness.Attachment{tc.att})
			const ifName = "net1"
			table := plugin.RouteTableBase + tc.att.Card

			// The agent's record, the result and the pod's link agree.
			alloc, ok, err := node.Allocation(pod.ContainerID, ifName)
			if err != nil || !ok {
				t.Fatalf("agent allocation of %s/%s: ok=%t err=%v", pod.ContainerID[:12], ifName, ok, err)
			}
			if alloc.Card != tc.att.Card || alloc.Exclusive != exclusive || alloc.PodName != pod.Name {
				t.Errorf("allocation = card %d exclusive %t pod %q, want card %d exclusive %t pod %q",
					alloc.Card, alloc.Exclusive, alloc.PodName, tc.att.Card, exclusive, pod.Name)
			}
			if got := pod.Addr(ifName); got != alloc.Address {
				t.Errorf("ADD result address %s, agent allocated %s", got, alloc.Address)
			}

			// fake-ec2: the address is on that ENI, attached to this node on this card.
			eni, ok := region.State().ENI(alloc.ENIID)
			if !ok {
				t.Fatalf("ENI %s of the allocation is not in fake-ec2", alloc.ENIID)
			}
			if eni.InstanceID != node.InstanceID || eni.Card != tc.att.Card || eni.SubnetID != fakeec2.CardSubnetID(tc.att.Card) {
				t.Errorf("ENI %s is on %s card %d subnet %s, want %s card %d subnet %s", eni.ID, eni.InstanceID, eni.Card,
					eni.SubnetID, node.InstanceID, tc.att.Card, fakeec2.CardSubnetID(tc.att.Card))
			}
			if exclusive {
				if eni.PrimaryIP != alloc.Address.String() {
					t.Errorf("exclusive: ENI %s primary address %s, want the allocated %s", eni.ID, eni.PrimaryIP, alloc.Address)
				}
			} else if !slices.Contains(eni.SecondaryIPs, alloc.Address.String()) {
				t.Errorf("ENI %s secondary addresses %v lack the allocated %s", eni.ID, eni.SecondaryIPs, alloc.Address)
			}
			subnet := netip.MustParsePrefix(subnetCIDR(t, region.State(), eni.SubnetID))

			h := pod.Handle()
			link, err := h.LinkByName(ifName)
			if err != nil {
				t.Fatalf("pod link %s: %v", ifName, err)
			}
			if got := link.Attrs().HardwareAddr.String(); !strings.EqualFold(got, eni.MAC) {
				t.Errorf("%s MAC %s, want the ENI's %s", ifName, got, eni.MAC)
			}
			if r := pod.Result(ifName); r == nil || len(r.Interfaces) != 1 || !strings.EqualFold(r.Interfaces[0].Mac, eni.MAC) || r.Interfaces[0].Sandbox != pod.NetNSPath {
				t.Errorf("ADD result interfaces %+v, want one with MAC %s and sandbox %s", r.Interfaces, eni.MAC, pod.NetNSPath)
			}
			if exclusive {
				if link.Type() == "ipvlan" {
					t.Errorf("exclusive: %s is an ipvlan, want the ENI's own link", ifName)
				}
			} else if ipv, ok := link.(*netlink.IPVlan); !ok || ipv.Mode != tc.ipvlan {
				t.Errorf("%s is %s (%+v), want ipvlan mode %v", ifName, link.Type(), link, tc.ipvlan)
			}
			addrs, err := nlretry.AddrList(h, link, netlink.FAMILY_V4)
			if err != nil {
				t.Fatal(err)
			}
			want := netip.PrefixFrom(alloc.Address, subnet.Bits()).String()
			if len(addrs) != 1 || addrs[0].IPNet.String() != want {
				t.Errorf("%s addresses %v, want only %s", ifName, addrs, want)
			}

			// Policy routing: the rule and the per-interface table's default route.
			if rules := rulesTo(t, pod.Handle(), table); len(rules) != 1 || rules[0].Src == nil ||
				rules[0].Src.String() != alloc.Address.String()+"/32" || rules[0].Priority != plugin.RulePriority {
				t.Errorf("rules to table %d: %v, want one `from %s lookup %d` at priority %d", table, rules, alloc.Address, table, plugin.RulePriority)
			}
			def := defaultRoute(t, pod, table)
			switch {
			case def == nil:
				t.Errorf("table %d has no default route", table)
			case def.LinkIndex != link.Attrs().Index:
				t.Errorf("table %d default route leaves via index %d, want %s (%d)", table, def.LinkIndex, ifName, link.Attrs().Index)
			case tc.ipvlan == netlink.IPVLAN_MODE_L3 && def.Gw != nil:
				t.Errorf("l3: table %d default route via %s, want a device route", table, def.Gw)
			case tc.ipvlan != netlink.IPVLAN_MODE_L3 && (def.Gw == nil || def.Gw.String() != harness.Gateway(subnet).String()):
				t.Errorf("table %d default route via %v, want the subnet gateway %s", table, def.Gw, harness.Gateway(subnet))
			}
			if err := pod.Check(); err != nil {
				t.Errorf("CHECK after ADD: %v", err)
			}
			// eth0 keeps the pod's default route in the main table.
			if def := defaultRoute(t, pod, unix.RT_TABLE_MAIN); def == nil || def.LinkIndex != linkIndex(t, h, harness.PrimaryIfName) {
				t.Errorf("main table default route %v, want via %s", def, harness.PrimaryIfName)
			}

			// DEL: the agent lets go, nothing is left in the pod or the node.
			if err := pod.Del(); err != nil {
				t.Fatalf("DEL: %v", err)
			}
			if _, ok, err := node.Allocation(pod.ContainerID, ifName); err != nil || ok {
				t.Errorf("after DEL the agent still holds %s/%s (err %v)", pod.ContainerID[:12], ifName, err)
			}
			if _, err := h.LinkByName(ifName); err == nil {
				t.Errorf("after DEL %s is still in the pod", ifName)
			}
			if rules := rulesTo(t, h, table); len(rules) != 0 {
				t.Errorf("after DEL rules to table %d remain: %v", table, rules)
			}
			nodeLinks, err := node.Handle().LinkList()
			if err != nil {
				t.Fatal(err)
			}
			for _, l := range nodeLinks {
				if l.Type() == "ipvlan" {
					t.Errorf("after DEL an ipvlan %s is left in the node netns", l.Attrs().Name)
				}
			}
			if exclusive {
				name := fabric.NodeLinkName(eni.Card, eni.Device)
				l, err := node.Handle().LinkByName(name)
				switch {
				case err != nil:
					t.Errorf("after DEL the ENI link %s is not back in the node netns: %v", name, err)
				case !strings.EqualFold(l.Attrs().HardwareAddr.String(), eni.MAC) || l.Attrs().Alias != "":
					t.Errorf("after DEL %s has MAC %s alias %q, want %s and no alias", name, l.Attrs().HardwareAddr, l.Attrs().Alias, eni.MAC)
				}
			}
			// DEL again succeeds and changes nothing.
			if err := pod.Del(); err != nil {
				t.Errorf("second DEL: %v", err)
			}
		})
	}
}
