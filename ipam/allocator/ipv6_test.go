package allocator

import (
	"context"
	"errors"
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/multinic/multinic/ipam/api"
	"github.com/multinic/multinic/ipam/store"
)

// pfx6 is card's k-th /80: 2001:db8:ec2:<card>:<k>::/80.
func pfx6(card, k int) netip.Prefix {
	a := [16]byte{0x20, 0x01, 0x0d, 0xb8, 0x0e, 0xc2, 0, byte(card), 0, byte(k)}
	return netip.PrefixFrom(netip.AddrFrom16(a), 80)
}

func reqFamily(p, card int, family string) api.AllocateRequest {
	r := req(p, card)
	r.Family = family
	return r
}

func TestIPv6Only(t *testing.T) {
	a, _, _ := newTest(t)
	// No prefix yet: the pool is empty, and nothing is held.
	_, err := a.Allocate(reqFamily(1, 1, api.FamilyIPv6))
	var pe *PoolEmptyError
	if !errors.As(err, &pe) || pe.Family != api.FamilyIPv6 || !errors.Is(err, api.ErrTryAgain) {
		t.Fatalf("ipv6 without a prefix: %v, want PoolEmptyError for ipv6", err)
	}
	if n, err := a.AddIPv6Prefixes(1, eni(1), pfx6(1, 0)); n != 1 || err != nil {
		t.Fatalf("add prefix: %d, %v", n, err)
	}
	var got []netip.Addr
	for p := range 3 {
		al := mustAllocate(t, a, reqFamily(p, 1, api.FamilyIPv6))
		if al.Address.IsValid() || al.ENIID != eni(1) || !pfx6(1, 0).Contains(al.IPv6) {
			t.Fatalf("ipv6 allocation %+v: want no IPv4 address, an IPv6 one of %s on %s", al, pfx6(1, 0), eni(1))
		}
		got = append(got, al.IPv6)
	}
	// In order, from the prefix's second address (its first is left out).
	want := []netip.Addr{netip.MustParseAddr("2001:db8:ec2:1::1"), netip.MustParseAddr("2001:db8:ec2:1::2"), netip.MustParseAddr("2001:db8:ec2:1::3")}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("addresses %v, want %v", got, want)
	}
	checkInvariants(t, a)
	// A released address is never given out again, and needs no rest: the next pod gets a new one at once.
	if _, ok, err := a.Release("sandbox-1", "net1"); !ok || err != nil {
		t.Fatalf("release: %v %v", ok, err)
	}
	if al := mustAllocate(t, a, reqFamily(9, 1, api.FamilyIPv6)); al.IPv6 != netip.MustParseAddr("2001:db8:ec2:1::4") {
		t.Errorf("after a release got %s, want the next unused address ::4", al.IPv6)
	}
	// Idempotent again; the same interface with another family is another allocation: refused.
	if al := mustAllocate(t, a, reqFamily(0, 1, api.FamilyIPv6)); al.IPv6 != got[0] {
		t.Errorf("again: %s, want %s", al.IPv6, got[0])
	}
	if _, err := a.Allocate(reqFamily(0, 1, api.FamilyDual)); !errors.Is(err, api.ErrInterfaceTaken) {
		t.Errorf("same interface, family dual: %v, want ErrInterfaceTaken", err)
	}
	// One address per family per card per pod: the pod's second interface on the card is refused.
	second := reqFamily(0, 1, api.FamilyIPv6)
	second.IfName = "net9"
	if _, err := a.Allocate(second); !errors.Is(err, api.ErrCardTaken) {
		t.Errorf("second interface on the card: %v, want ErrCardTaken", err)
	}
	if st := a.Stats(1); st.IPv6 != (IPv6Counts{Prefixes: 1, Allocated: 3}) || st.Allocated != 0 {
		t.Errorf("stats %+v", st)
	}
	checkInvariants(t, a)
}

func TestDualStack(t *testing.T) {
	a, _, _ := newTest(t)
	v4 := seed(t, a, 1, 2) // on eni(1), which has no prefix yet
	if _, err := a.AddAddresses(1, "eni-b", addr(1, 10)); err != nil {
		t.Fatal(err)
	}
	// Neither without the other: IPv4 is free but no ENI has a prefix.
	before := snapshot(a)
	if _, err := a.Allocate(reqFamily(1, 1, api.FamilyDual)); !errors.Is(err, ErrPoolEmpty) {
		t.Fatalf("dual without a prefix: %v, want ErrPoolEmpty", err)
	}
	if after := snapshot(a); !reflect.DeepEqual(after, before) {
		t.Errorf("a refused dual allocation changed the pool:\n%+v\n%+v", before, after)
	}
	// The prefix is on eni-b: the IPv4 address comes from eni-b too, though eni(1)'s are lower.
	if _, err := a.AddIPv6Prefixes(1, "eni-b", pfx6(1, 7)); err != nil {
		t.Fatal(err)
	}
	al := mustAllocate(t, a, reqFamily(1, 1, api.FamilyDual))
	if al.ENIID != "eni-b" || al.Address != addr(1, 10) || !pfx6(1, 7).Contains(al.IPv6) {
		t.Errorf("dual allocation %+v: want both addresses on eni-b", al)
	}
	// eni-b has no IPv4 address left: the next dual pod waits though eni(1) has two.
	if _, err := a.Allocate(reqFamily(2, 1, api.FamilyDual)); !errors.Is(err, ErrPoolEmpty) {
		t.Errorf("dual with IPv4 left only on an ENI without a prefix: %v, want ErrPoolEmpty", err)
	}
	if st := a.Stats(1); st.Waiting != 0 || st.Warm != len(v4) {
		t.Errorf("stats %+v", st)
	}
	// Release gives back both; the IPv4 address rests as usual.
	rel, ok, err := a.Release("sandbox-1", "net1")
	if !ok || err != nil || rel.IPv6 != al.IPv6 {
		t.Fatalf("release %+v %v %v", rel, ok, err)
	}
	if st := a.Stats(1); st.Cooling != 1 || st.IPv6.Allocated != 0 {
		t.Errorf("after release: %+v", st)
	}
	checkInvariants(t, a)
}

func TestWaitForIPv6Prefix(t *testing.T) {
	a, _, _ := newTest(t)
	done := make(chan error, 1)
	go func() { done <- a.WaitForAddress(context.Background(), reqFamily(1, 3, api.FamilyIPv6)) }()
	select {
	case err := <-done:
		t.Fatalf("returned before a prefix came: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	if st := a.Stats(3); st.Waiting != 0 {
		t.Errorf("an IPv6 wait counts as IPv4 demand: %+v", st)
	}
	if _, err := a.AddIPv6Prefixes(3, eni(3), pfx6(3, 0)); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("not woken by AddIPv6Prefixes")
	}
}

func TestIPv6PrefixesInventory(t *testing.T) {
	a, _, _ := newTest(t)
	if _, err := a.AddIPv6Prefixes(1, eni(1), pfx6(1, 0), pfx6(1, 1)); err != nil {
		t.Fatal(err)
	}
	// Again: nothing added. Overlapping another ENI's or card's: a conflict, nothing added.
	if n, err := a.AddIPv6Prefixes(1, eni(1), pfx6(1, 0)); n != 0 || err != nil {
		t.Errorf("again: %d %v", n, err)
	}
	if _, err := a.AddIPv6Prefixes(2, eni(2), netip.MustParsePrefix("2001:db8:ec2:1::/64")); !errors.Is(err, ErrConflict) {
		t.Errorf("overlap: %v, want ErrConflict", err)
	}
	for _, bad := range []netip.Prefix{netip.MustParsePrefix("10.0.0.0/28"), netip.MustParsePrefix("2001:db8::1/80"), {}} {
		if _, err := a.AddIPv6Prefixes(1, eni(1), bad); !errors.Is(err, api.ErrInvalid) {
			t.Errorf("add %v: %v, want ErrInvalid", bad, err)
		}
	}
	al := mustAllocate(t, a, reqFamily(1, 1, api.FamilyIPv6))
	// A held prefix is never removed.
	removed, err := a.RemoveIPv6Prefixes(1, pfx6(1, 0), pfx6(1, 1), pfx6(1, 9))
	if err != nil || !reflect.DeepEqual(removed, []netip.Prefix{pfx6(1, 1)}) {
		t.Errorf("remove: %v %v, want only the free %s", removed, err, pfx6(1, 1))
	}
	if !pfx6(1, 0).Contains(al.IPv6) {
		t.Errorf("allocated from %s, want the lowest prefix", al.IPv6)
	}
	if k := a.KnownIPv6(); len(k) != 1 || k[0].Allocated != 1 || k[0].Next != al.IPv6.Next() {
		t.Errorf("known %+v", k)
	}
	checkInvariants(t, a)
}

func TestIPv6PersistFailureRollsBack(t *testing.T) {
	boom := errors.New("disk on fire")
	for _, tc := range []struct {
		name string
		op   func(a *Allocator) error
	}{
		{"allocate ipv6", func(a *Allocator) error { _, err := a.Allocate(reqFamily(9, 1, api.FamilyIPv6)); return err }},
		{"allocate dual", func(a *Allocator) error { _, err := a.Allocate(reqFamily(9, 1, api.FamilyDual)); return err }},
		{"release dual", func(a *Allocator) error { _, _, err := a.Release("sandbox-1", "net1"); return err }},
		{"add prefix", func(a *Allocator) error { _, err := a.AddIPv6Prefixes(1, eni(1), pfx6(1, 5)); return err }},
		{"remove prefix", func(a *Allocator) error { _, err := a.RemoveIPv6Prefixes(1, pfx6(1, 1)); return err }},
		{"reconcile", func(a *Allocator) error {
			_, err := a.ReconcileIPv6([]EC2Prefix{{Card: 1, ENIID: eni(1), Prefix: pfx6(1, 0)}, {Card: 1, ENIID: eni(1), Prefix: pfx6(1, 3)}})
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, st, _ := newTest(t)
			seed(t, a, 1, 4)
			if _, err := a.AddIPv6Prefixes(1, eni(1), pfx6(1, 0), pfx6(1, 1)); err != nil {
				t.Fatal(err)
			}
			mustAllocate(t, a, reqFamily(1, 1, api.FamilyDual))
			before, before6 := snapshot(a), a.KnownIPv6()
			cpBefore, _, _ := st.Load()
			st.FailSaves(boom)
			if err := tc.op(a); !errors.Is(err, boom) {
				t.Fatalf("op: %v, want %v", err, boom)
			}
			if after, after6 := snapshot(a), a.KnownIPv6(); !reflect.DeepEqual(after, before) || !reflect.DeepEqual(after6, before6) {
				t.Errorf("memory changed by a failed op:\nbefore %+v %+v\n after %+v %+v", before, before6, after, after6)
			}
			if cpAfter, _, _ := st.Load(); !reflect.DeepEqual(cpAfter, cpBefore) {
				t.Error("checkpoint changed by a failed op")
			}
			st.FailSaves(nil)
			if err := tc.op(a); err != nil {
				t.Fatalf("op after recovery: %v", err)
			}
			checkInvariants(t, a)
		})
	}
}

// A restarted allocator has the prefixes, their cursors and the IPv6 allocations: an address given out
// before the restart is not given out again after it.
func TestIPv6Restore(t *testing.T) {
	st := store.NewMemory()
	a, err := New(st)
	if err != nil {
		t.Fatal(err)
	}
	seed(t, a, 1, 2)
	if _, err := a.AddIPv6Prefixes(1, eni(1), pfx6(1, 0)); err != nil {
		t.Fatal(err)
	}
	if _, err := a.AddIPv6Prefixes(2, eni(2), pfx6(2, 0)); err != nil {
		t.Fatal(err)
	}
	d := mustAllocate(t, a, reqFamily(1, 1, api.FamilyDual))
	v6 := mustAllocate(t, a, reqFamily(1, 2, api.FamilyIPv6))
	gone := mustAllocate(t, a, reqFamily(2, 2, api.FamilyIPv6))
	if _, _, err := a.Release("sandbox-2", "net2"); err != nil {
		t.Fatal(err)
	}
	b, err := New(st)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(b.List(), a.List()) || !reflect.DeepEqual(b.KnownIPv6(), a.KnownIPv6()) {
		t.Fatalf("restored\n%+v %+v\nwant\n%+v %+v", b.List(), b.KnownIPv6(), a.List(), a.KnownIPv6())
	}
	checkInvariants(t, b)
	if al := mustAllocate(t, b, reqFamily(3, 2, api.FamilyIPv6)); al.IPv6 == gone.IPv6 || al.IPv6 == v6.IPv6 {
		t.Errorf("after the restart %s was given out again", al.IPv6)
	}
	if _, ok, err := b.Release(d.ContainerID, d.IfName); !ok || err != nil {
		t.Errorf("release the restored dual allocation: %v %v", ok, err)
	}

	// A checkpoint whose allocation's IPv6 address is in no prefix of its ENI is refused.
	cp, _, _ := st.Load()
	cp.IPv6Prefixes = cp.IPv6Prefixes[1:] // card 1's prefix gone, its allocation not
	bad := store.NewMemory()
	cp.Allocations = append(cp.Allocations, api.Allocation{AllocateRequest: reqFamily(7, 1, api.FamilyIPv6), ENIID: eni(1),
		IPv6: netip.MustParseAddr("2001:db8:ec2:1::99")})
	if err := bad.Save(cp); err != nil {
		t.Fatal(err)
	}
	if _, err := New(bad); !errors.Is(err, store.ErrCorrupt) {
		t.Errorf("restore with an IPv6 address outside its prefixes: %v, want ErrCorrupt", err)
	}
}

func TestCompareIPv6(t *testing.T) {
	held := api.Allocation{AllocateRequest: reqFamily(1, 1, api.FamilyIPv6), ENIID: "eni-a", IPv6: netip.MustParseAddr("2001:db8:ec2:1::1")}
	known := []IPv6Prefix{
		{Card: 1, ENIID: "eni-a", Prefix: pfx6(1, 0), Allocated: 1}, // held, gone from EC2: kept, its allocation lost
		{Card: 1, ENIID: "eni-a", Prefix: pfx6(1, 1)},               // free, gone from EC2: stale
		{Card: 1, ENIID: "eni-a", Prefix: pfx6(1, 2)},               // free, in EC2: kept
		{Card: 1, ENIID: "eni-a", Prefix: pfx6(1, 3)},               // free, EC2 has it on another ENI: stale
	}
	ec2 := []EC2Prefix{
		{Card: 1, ENIID: "eni-a", Prefix: pfx6(1, 2)},
		{Card: 1, ENIID: "eni-b", Prefix: pfx6(1, 3)},
		{Card: 1, ENIID: "eni-b", Prefix: pfx6(1, 4)}, // unknown: added
	}
	d := CompareIPv6(known, []api.Allocation{held}, ec2)
	if len(d.Lost) != 1 || d.Lost[0].IPv6 != held.IPv6 {
		t.Errorf("lost %+v", d.Lost)
	}
	if len(d.Stale) != 2 || d.Stale[0].Prefix != pfx6(1, 1) || d.Stale[1].Prefix != pfx6(1, 3) {
		t.Errorf("stale %+v", d.Stale)
	}
	if len(d.Unknown) != 1 || d.Unknown[0].Prefix != pfx6(1, 4) {
		t.Errorf("unknown %+v", d.Unknown)
	}
}

func TestReconcileIPv6(t *testing.T) {
	a, _, _ := newTest(t)
	if _, err := a.AddIPv6Prefixes(1, eni(1), pfx6(1, 0), pfx6(1, 1)); err != nil {
		t.Fatal(err)
	}
	al := mustAllocate(t, a, reqFamily(1, 1, api.FamilyIPv6))
	// EC2 lists nothing at all: the held prefix stays (when in doubt, keep), the free one goes.
	d, err := a.ReconcileIPv6(nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Lost) != 1 || len(d.Stale) != 1 || d.Stale[0].Prefix != pfx6(1, 1) {
		t.Errorf("diff %+v", d)
	}
	if k := a.KnownIPv6(); len(k) != 1 || k[0].Prefix != pfx6(1, 0) {
		t.Errorf("known after reconcile %+v", k)
	}
	if _, ok := a.Lookup(al.ContainerID, al.IfName); !ok {
		t.Error("reconcile released a lost allocation")
	}
	// EC2 has an unknown one (an earlier process's, its checkpoint lost): added, and allocations take from
	// it, in its upper half, away from the addresses an earlier process gave out from its start.
	if d, err = a.ReconcileIPv6([]EC2Prefix{{Card: 1, ENIID: eni(1), Prefix: pfx6(1, 0)}, {Card: 2, ENIID: eni(2), Prefix: pfx6(2, 0)}}); err != nil || len(d.Unknown) != 1 {
		t.Fatalf("diff %+v %v", d, err)
	}
	upper := netip.PrefixFrom(pfx6(2, 0).Addr(), 81).Addr().As16()
	upper[10] |= 0x80 // 2001:db8:ec2:2:0:8000::/81
	got := mustAllocate(t, a, reqFamily(1, 2, api.FamilyIPv6))
	if !pfx6(2, 0).Contains(got.IPv6) || got.ENIID != eni(2) || !netip.PrefixFrom(netip.AddrFrom16(upper), 81).Contains(got.IPv6) {
		t.Errorf("allocation from a reconciled prefix: %+v, want one in the upper half of %s", got, pfx6(2, 0))
	}
	checkInvariants(t, a)
}

// TestExclusiveIPv6: an ipv6 or dual exclusive allocation gets a whole ENI that has an IPv6 address, and
// that address; ENIs without one serve ipv4 only. The ENI's primary stands for it in the record.
func TestExclusiveIPv6(t *testing.T) {
	a, st, _ := newTest(t)
	if err := a.AddExclusiveENI(1, "eni-old", netip.MustParseAddr("10.1.9.1")); err != nil {
		t.Fatal(err)
	}
	x := func(p int, family string) api.AllocateRequest {
		r := reqFamily(p, 1, family)
		r.Exclusive = true
		return r
	}
	if _, err := a.Allocate(x(1, api.FamilyDual)); !errors.Is(err, ErrPoolEmpty) {
		t.Fatalf("dual exclusive with only an ENI without IPv6: %v, want ErrPoolEmpty", err)
	}
	v6 := netip.MustParseAddr("2001:db8:ec2:1::77")
	if err := a.AddExclusiveENI(1, "eni-new", netip.MustParseAddr("10.1.9.2"), v6); err != nil {
		t.Fatal(err)
	}
	if err := a.AddExclusiveENI(1, "eni-bad", netip.MustParseAddr("10.1.9.3"), netip.MustParseAddr("10.1.9.4")); !errors.Is(err, api.ErrInvalid) {
		t.Errorf("an IPv4 address as the ENI's IPv6 one: %v", err)
	}
	al := mustAllocate(t, a, x(1, api.FamilyDual))
	if al.ENIID != "eni-new" || al.Address != netip.MustParseAddr("10.1.9.2") || al.IPv6 != v6 {
		t.Errorf("dual exclusive %+v", al)
	}
	if old := mustAllocate(t, a, x(2, api.FamilyIPv4)); old.ENIID != "eni-old" || old.IPv6.IsValid() {
		t.Errorf("ipv4 exclusive %+v", old)
	}
	b, err := New(st)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := b.Lookup(al.ContainerID, al.IfName); got != al {
		t.Errorf("restored %+v, want %+v", got, al)
	}
	if _, ok, err := b.Release(al.ContainerID, al.IfName); !ok || err != nil {
		t.Fatal(ok, err)
	}
	if k := b.AwayExclusive(1); len(k) != 1 || k[0].IPv6 != v6 {
		t.Errorf("released ENI %+v: away, with its IPv6 address", k)
	}
	checkInvariants(t, b)
}

// TestAdoptIPv6Prefixes: a prefix adopted without a checkpoint gives out addresses from a random point of
// its upper half, a fresh one from its start.
func TestAdoptIPv6Prefixes(t *testing.T) {
	a, _, _ := newTest(t)
	if _, err := a.AdoptIPv6Prefixes(1, eni(1), pfx6(1, 0)); err != nil {
		t.Fatal(err)
	}
	if _, err := a.AddIPv6Prefixes(2, eni(2), pfx6(2, 0)); err != nil {
		t.Fatal(err)
	}
	lower := netip.PrefixFrom(pfx6(1, 0).Addr(), 81)
	adopted := mustAllocate(t, a, reqFamily(1, 1, api.FamilyIPv6))
	if !pfx6(1, 0).Contains(adopted.IPv6) || lower.Contains(adopted.IPv6) {
		t.Errorf("adopted prefix gave %s, want one in the upper half of %s", adopted.IPv6, pfx6(1, 0))
	}
	if fresh := mustAllocate(t, a, reqFamily(1, 2, api.FamilyIPv6)); fresh.IPv6 != netip.MustParseAddr("2001:db8:ec2:2::1") {
		t.Errorf("fresh prefix gave %s, want its second address", fresh.IPv6)
	}
}

// TestRestoreUnknownPosition: a checkpoint that lists a prefix without its position (--recover's) starts
// it in its upper half, away from every address given out from its start.
func TestRestoreUnknownPosition(t *testing.T) {
	st := store.NewMemory()
	held := netip.MustParseAddr("2001:db8:ec2:1::5")
	if err := st.Save(store.Checkpoint{
		IPv6Prefixes: []store.IPv6Prefix{{Card: 1, ENIID: eni(1), Prefix: pfx6(1, 0)}},
		Allocations:  []api.Allocation{{AllocateRequest: reqFamily(1, 1, api.FamilyIPv6), ENIID: eni(1), IPv6: held}},
	}); err != nil {
		t.Fatal(err)
	}
	a, err := New(st)
	if err != nil {
		t.Fatal(err)
	}
	al := mustAllocate(t, a, reqFamily(2, 1, api.FamilyIPv6))
	if !pfx6(1, 0).Contains(al.IPv6) || netip.PrefixFrom(pfx6(1, 0).Addr(), 81).Contains(al.IPv6) {
		t.Errorf("got %s, want one in the upper half of %s", al.IPv6, pfx6(1, 0))
	}
	checkInvariants(t, a)
}
