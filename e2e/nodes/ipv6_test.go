package nodes

import (
	"net/netip"
	"testing"

	"github.com/multinic/multinic/internal/nettest"
	"github.com/multinic/multinic/internal/testing/harness"
	"github.com/multinic/multinic/netconf"
)

// TestTwoNodesIPv6 is issue 14 below Kubernetes: agents serving cards 1 and 2 with family dual (card 1)
// and ipv6 (card 2), pod a on node 1 and pod b on node 2 attached to both through the real plugin, per mode
// (exclusive on the host, ipvlan L2 in the VM). Each address is EC2's on the card's ENI, CHECK passes, a
// and b reach each other over IPv6 on each card (through fake-ec2's VPC router, the pods' gateway
// fe80:ec2::1) and over IPv4 on the dual card, and the packets cross the pods' netN.
func TestTwoNodesIPv6(t *testing.T) {
	for _, mode := range []string{netconf.ModeExclusive, netconf.ModeIPVlan} {
		t.Run(mode, func(t *testing.T) {
			if mode == netconf.ModeIPVlan {
				nettest.RequireLinkType(t, "ipvlan")
			}
			nettest.RequireRoot(t)
			region := harness.NewRegion(t, harness.Config{Nodes: 2, AgentArgs: []string{"--family", "ipv4,1=dual,2=ipv6"}})
			atts := []harness.Attachment{
				{Card: 1, Mode: mode, Family: netconf.FamilyDual},
				{Card: 2, Mode: mode, Family: netconf.FamilyIPv6},
			}
			a := region.Node(0).AddPod(t, "a", atts)
			b := region.Node(1).AddPod(t, "b", atts)
			if err := a.Check(); err != nil {
				t.Errorf("CHECK a: %v", err)
			}
			if err := b.Check(); err != nil {
				t.Errorf("CHECK b: %v", err)
			}
			st := region.State()
			for _, p := range []*harness.Pod{a, b} {
				for _, att := range p.Attachments {
					v4, v6 := p.Addr(att.IfName), p.Addr6(att.IfName)
					t.Logf("%s (%s) %s card %d: %v %v", p.Name, p.Node.Name, att.IfName, att.Card, v4, v6)
					if v4.IsValid() != (att.Family == netconf.FamilyDual) || !v6.IsValid() {
						t.Errorf("%s %s: addresses %v %v, want family %s's", p.Name, att.IfName, v4, v6, att.Family)
					}
					eniOK := false
					for _, e := range st.ENIs {
						if e.InstanceID != p.Node.InstanceID || e.Card != att.Card {
							continue
						}
						for _, s := range append(append([]string{}, e.IPv6Addresses...), e.IPv6Prefixes...) {
							if pfx, err := netip.ParsePrefix(s); err == nil && pfx.Contains(v6) || s == v6.String() {
								eniOK = true
							}
						}
					}
					if !eniOK {
						t.Errorf("%s %s: %s is on no card-%d ENI of %s in fake-ec2", p.Name, att.IfName, v6, att.Card, p.Node.InstanceID)
					}
				}
			}
			port := 7300
			for _, ifName := range []string{"net1", "net2"} {
				for _, dir := range [][2]*harness.Pod{{a, b}, {b, a}} {
					from, to := dir[0], dir[1]
					txBefore, rxBefore := stats(t, from, ifName), stats(t, to, ifName)
					tcpEcho(t, from, from.Addr6(ifName), to, to.Addr6(ifName), port)
					port++
					tx := stats(t, from, ifName).TxPackets - txBefore.TxPackets
					rx := stats(t, to, ifName).RxPackets - rxBefore.RxPackets
					if tx < 4 || rx < 4 {
						t.Errorf("%s -> %s over %s (IPv6): tx +%d rx +%d, want >= 4 each", from.Name, to.Name, ifName, tx, rx)
					}
				}
			}
			tcpEcho(t, a, a.Addr("net1"), b, b.Addr("net1"), port)
			if err := a.Del(); err != nil {
				t.Errorf("DEL a: %v", err)
			}
			if err := b.Del(); err != nil {
				t.Errorf("DEL b: %v", err)
			}
			for _, n := range region.Nodes() {
				if allocs, err := n.Allocations(); err != nil || len(allocs) != 0 {
					t.Errorf("%s after DEL: allocations %v (%v), want none", n.Name, allocs, err)
				}
			}
		})
	}
}
