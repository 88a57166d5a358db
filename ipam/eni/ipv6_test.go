package eni

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/multinic/multinic/internal/testing/fakeec2"
	"github.com/multinic/multinic/ipam/allocator"
	"github.com/multinic/multinic/ipam/api"
)

// ipv6Config manages cards 1 (dual), 2 (ipv6) and 3 (ipv4, the default), each in its own subnet.
func (e *env) ipv6Config() Config {
	cfg := e.fastConfig(4)
	cfg.ManagedCards = []int{1, 2, 3}
	cfg.Cards[1] = CardConfig{SubnetID: fakeec2.CardSubnetID(1), Family: api.FamilyDual}
	cfg.Cards[2] = CardConfig{SubnetID: fakeec2.CardSubnetID(2), Family: api.FamilyIPv6}
	return cfg
}

func familyReq(p, card int, family string) api.AllocateRequest {
	r := podReq(p, card)
	r.Family = family
	return r
}

// subnetIPv6 is the IPv6 block fake-ec2 gave card's subnet.
func (e *env) subnetIPv6(card int) netip.Prefix {
	for _, sn := range e.srv.State().Subnets {
		if sn.ID == fakeec2.CardSubnetID(card) {
			return netip.MustParsePrefix(sn.IPv6CIDR)
		}
	}
	e.t.Fatalf("no subnet for card %d", card)
	return netip.Prefix{}
}

// TestIPv6Families: dual and ipv6 cards get one /80 per shared ENI at its CreateNetworkInterface (no extra
// call), an ipv6 card keeps no IPv4 address, an ipv4 card is as before; allocations take both addresses
// from one ENI (dual) or the IPv6 one alone; and the IPv6 pool never calls EC2 again, however many pods
// come and go.
func TestIPv6Families(t *testing.T) {
	e := newEnv(t, envOpts{})
	m := e.start(e.ipv6Config(), e.alloc)
	waitReady(t, m, 10*time.Second)
	eventually(t, 5*time.Second, "pools", func() bool {
		return e.alloc.Stats(1).Warm >= 4 && e.alloc.Stats(1).IPv6.Prefixes == 1 && e.alloc.Stats(2).IPv6.Prefixes == 1 &&
			e.alloc.Stats(3).Warm >= 4
	})
	for card, want := range map[int]string{1: api.FamilyDual, 2: api.FamilyIPv6, 3: api.FamilyIPv4, 5: api.FamilyIPv4} {
		if got := m.Family(card); got != want {
			t.Errorf("Family(%d) = %q, want %q", card, got, want)
		}
	}
	perCard := map[int]fakeec2.ENIState{}
	for _, x := range e.ours() {
		perCard[x.Card] = x
	}
	for card, wantPfx := range map[int]int{1: 1, 2: 1, 3: 0} {
		x := perCard[card]
		if len(x.IPv6Prefixes) != wantPfx {
			t.Errorf("card %d's ENI %s has IPv6 prefixes %v, want %d", card, x.ID, x.IPv6Prefixes, wantPfx)
		}
		for _, p := range x.IPv6Prefixes {
			pfx := netip.MustParsePrefix(p)
			if pfx.Bits() != 80 || !e.subnetIPv6(card).Contains(pfx.Addr()) {
				t.Errorf("card %d: prefix %s, want a /80 of %s", card, pfx, e.subnetIPv6(card))
			}
			if k := e.alloc.KnownIPv6(); !containsPrefix(k, card, x.ID, pfx) {
				t.Errorf("card %d: allocator's IPv6 prefixes %+v lack EC2's %s on %s", card, k, pfx, x.ID)
			}
		}
		info, ok := m.ENI(x.ID)
		if !ok || (wantPfx > 0 && info.IPv6SubnetCIDR != e.subnetIPv6(card)) || info.IPv6Gateway != netip.MustParseAddr("fe80:ec2::1") {
			t.Errorf("ENI(%s) = %+v, want the subnet's IPv6 block %s and gateway fe80:ec2::1", x.ID, info, e.subnetIPv6(card))
		}
	}
	if n := len(perCard[2].SecondaryIPs) + len(perCard[2].Prefixes); n != 0 {
		t.Errorf("ipv6 card's ENI holds %d IPv4 secondaries or prefixes, want none", n)
	}
	calls := m.Stats().EC2.Calls
	if n := calls["AssignIpv6Addresses"]["ok"]; n != 0 {
		t.Errorf("%d AssignIpv6Addresses: the /80 should come with CreateNetworkInterface", n)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d, err := allocWait(ctx, m, e.alloc, familyReq(1, 1, api.FamilyDual))
	if err != nil {
		t.Fatal(err)
	}
	if d.ENIID != perCard[1].ID || !d.Address.Is4() || !netip.MustParsePrefix(perCard[1].IPv6Prefixes[0]).Contains(d.IPv6) {
		t.Errorf("dual allocation %+v: want both addresses on %s, the IPv6 one in %v", d, perCard[1].ID, perCard[1].IPv6Prefixes)
	}

	// Churn on the ipv6 card: no EC2 call at all (once card 1 has refilled after the dual allocation).
	eventually(t, 5*time.Second, "card 1 refilled", func() bool { return e.alloc.Stats(1).Warm >= 4 })
	time.Sleep(300 * time.Millisecond)
	before := m.Stats().EC2.Calls
	const pods = 300
	seen := map[netip.Addr]bool{}
	for p := range pods {
		al, err := allocWait(ctx, m, e.alloc, familyReq(p, 2, api.FamilyIPv6))
		if err != nil {
			t.Fatal(err)
		}
		if al.Address.IsValid() || seen[al.IPv6] || !netip.MustParsePrefix(perCard[2].IPv6Prefixes[0]).Contains(al.IPv6) {
			t.Fatalf("ipv6 allocation %d: %+v (an IPv4 address, an address given twice, or outside the /80)", p, al)
		}
		seen[al.IPv6] = true
		if _, ok, err := e.alloc.Release(al.ContainerID, al.IfName); !ok || err != nil {
			t.Fatal(ok, err)
		}
	}
	time.Sleep(500 * time.Millisecond) // refill rounds
	after := m.Stats().EC2.Calls
	mutating := 0
	for _, a := range []string{"AssignIpv6Addresses", "AssignPrivateIpAddresses", "CreateNetworkInterface", "UnassignIpv6Addresses"} {
		mutating += after[a]["ok"] - before[a]["ok"]
	}
	t.Logf("ipv6 card: %d attachments, %d EC2 calls: %.4f per attachment", pods, mutating, float64(mutating)/pods)
	if mutating != 0 {
		t.Errorf("%d EC2 calls for %d IPv6 attachments after the first prefix, want 0", mutating, pods)
	}
	if st := e.alloc.Stats(2); st.Capacity != 0 || st.IPv6 != (allocator.IPv6Counts{Prefixes: 1}) {
		t.Errorf("ipv6 card's pool %+v: want no IPv4 address and one prefix", st)
	}
	for _, k := range []int{1, 2, 3} {
		checkNoLeak(t, e, e.alloc, k)
		checkNoLeak6(t, e, e.alloc, k)
	}
}

func containsPrefix(k []allocator.IPv6Prefix, card int, eniID string, p netip.Prefix) bool {
	for _, x := range k {
		if x.Card == card && x.ENIID == eniID && x.Prefix == p {
			return true
		}
	}
	return false
}

// checkNoLeak6 fails unless the allocator's IPv6 prefixes on card are exactly what EC2 holds there.
func checkNoLeak6(t testing.TB, e *env, a *allocator.Allocator, card int) {
	t.Helper()
	inEC2 := map[netip.Prefix]string{}
	for id, x := range e.ours() {
		if x.Card == card && x.Status == "in-use" && x.Tags[TagMode] == ModeShared {
			for _, p := range x.IPv6Prefixes {
				inEC2[netip.MustParsePrefix(p)] = id
			}
		}
	}
	known := map[netip.Prefix]string{}
	for _, p := range a.KnownIPv6() {
		if p.Card == card {
			known[p.Prefix] = p.ENIID
		}
	}
	for p, id := range inEC2 {
		if known[p] != id {
			t.Errorf("card %d: EC2 has %s on %s, allocator on %q", card, p, id, known[p])
		}
	}
	for p, id := range known {
		if inEC2[p] != id {
			t.Errorf("card %d: allocator has %s on %s, EC2 on %q", card, p, id, inEC2[p])
		}
	}
}

// TestIPv6Restart: a restarted manager keeps the prefixes and the allocations (same checkpoint) or finds
// the prefixes again in EC2 (lost checkpoint), and a card turned dual gets a /80 on the ENI it adopts.
func TestIPv6Restart(t *testing.T) {
	for _, lost := range []bool{false, true} {
		name := "same checkpoint"
		if lost {
			name = "lost checkpoint"
		}
		t.Run(name, func(t *testing.T) {
			e := newEnv(t, envOpts{})
			cfg := e.ipv6Config()
			m1 := e.start(cfg, e.alloc)
			waitReady(t, m1, 10*time.Second)
			eventually(t, 5*time.Second, "prefixes", func() bool { return e.alloc.Stats(2).IPv6.Prefixes == 1 && e.alloc.Stats(3).Warm >= 4 })
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			al, err := allocWait(ctx, m1, e.alloc, familyReq(1, 2, api.FamilyIPv6))
			if err != nil {
				t.Fatal(err)
			}
			m1.Stop()

			a2 := e.newAllocator(0)
			if lost {
				e.waitDescribed()
				a2 = newEnvAllocator(t)
			}
			cfg.Cards[3] = CardConfig{SubnetID: fakeec2.CardSubnetID(3), Family: api.FamilyDual}
			m2 := e.start(cfg, a2)
			waitReady(t, m2, 10*time.Second)
			eventually(t, 5*time.Second, "card 3's /80", func() bool { return a2.Stats(3).IPv6.Prefixes == 1 })
			calls := m2.Stats().EC2.Calls
			if n := calls["CreateNetworkInterface"]["ok"]; n != 0 {
				t.Errorf("restart created %d ENIs", n)
			}
			if n := calls["AssignIpv6Addresses"]["ok"]; n != 1 {
				t.Errorf("%d AssignIpv6Addresses, want 1: the ENI card 3 had as an ipv4 card gets a /80", n)
			}
			for _, k := range []int{1, 2, 3} {
				checkNoLeak6(t, e, a2, k)
			}
			next, err := allocWait(ctx, m2, a2, familyReq(2, 2, api.FamilyIPv6))
			if err != nil {
				t.Fatal(err)
			}
			if !lost {
				if got, ok := a2.Lookup(al.ContainerID, al.IfName); !ok || got.IPv6 != al.IPv6 {
					t.Errorf("allocation lost over restart: %+v %v", got, ok)
				}
				if next.IPv6 == al.IPv6 || next.IPv6.Less(al.IPv6) {
					t.Errorf("after restart %s was given, want one after %s", next.IPv6, al.IPv6)
				}
			}
			dual, err := allocWait(ctx, m2, a2, familyReq(3, 3, api.FamilyDual))
			if err != nil || !dual.Address.IsValid() || !dual.IPv6.IsValid() {
				t.Errorf("dual on the card turned dual: %+v %v", dual, err)
			}
		})
	}
}

// TestIPv6SubnetWithoutIPv6: a dual card whose subnet has no IPv6 block never becomes ready, and says
// why with EC2's error; an ipv4 card in the same kind of subnet is unaffected.
func TestIPv6SubnetWithoutIPv6(t *testing.T) {
	subnets, err := fakeec2.SubnetsPerCard(8)
	if err != nil {
		t.Fatal(err)
	}
	for k := range subnets {
		subnets[k].IPv4Only = true
	}
	e := newEnv(t, envOpts{subnets: subnets})
	cfg := e.ipv6Config()
	cfg.ManagedCards = []int{1, 3}
	m := e.start(cfg, e.alloc)
	eventually(t, 10*time.Second, "card 3 ready and card 1's error", func() bool {
		return m.Stats().Cards[1].Ready && m.LastError(1) != nil
	})
	msg := m.LastError(1).Error()
	if !strings.Contains(msg, "create ENI on card 1") || !strings.Contains(msg, "InvalidParameterValue") {
		t.Errorf("card 1's error %q: want the card, the action and EC2's code", msg)
	}
	t.Logf("card 1: %s", msg)
	if st := e.alloc.Stats(1); st.Capacity != 0 || st.IPv6.Prefixes != 0 {
		t.Errorf("card 1 pool %+v, want nothing", st)
	}
	if n := len(e.ours()); n != 1 {
		t.Errorf("%d ENIs of ours, want card 3's alone (no ENI left behind by the failed creates)", n)
	}
}

// TestIPv6Exclusive: on a dual card an exclusive ENI is created with one IPv6 address, which the pod gets
// with the ENI; on an ipv4 card without one.
func TestIPv6Exclusive(t *testing.T) {
	e := newEnv(t, envOpts{})
	m := e.start(e.ipv6Config(), e.alloc)
	waitReady(t, m, 10*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	r := familyReq(1, 1, api.FamilyDual)
	r.Exclusive = true
	al, err := allocWait(ctx, m, e.alloc, r)
	if err != nil {
		t.Fatal(err)
	}
	x, ok := e.eniState(al.ENIID)
	if !ok || x.Tags[TagMode] != ModeExclusive || x.PrimaryIP != al.Address.String() || len(x.IPv6Addresses) != 1 ||
		x.IPv6Addresses[0] != al.IPv6.String() || !e.subnetIPv6(1).Contains(al.IPv6) || len(x.IPv6Prefixes) != 0 {
		t.Errorf("dual exclusive allocation %+v on ENI %+v: want its primary and its one IPv6 address", al, x)
	}
	if info, _ := m.ENI(al.ENIID); info.IPv6SubnetCIDR != e.subnetIPv6(1) {
		t.Errorf("ENI(%s) = %+v", al.ENIID, info)
	}
	r4 := podReq(2, 3)
	r4.Exclusive = true
	al4, err := allocWait(ctx, m, e.alloc, r4)
	if err != nil {
		t.Fatal(err)
	}
	if x, _ := e.eniState(al4.ENIID); len(x.IPv6Addresses) != 0 || al4.IPv6.IsValid() {
		t.Errorf("ipv4 card's exclusive ENI %+v, allocation %+v: want no IPv6", x, al4)
	}
}
