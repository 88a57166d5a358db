package allocator

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	testingclock "k8s.io/utils/clock/testing"

	"github.com/multinic/multinic/ipam/api"
	"github.com/multinic/multinic/ipam/store"
)

// newClock is a settable clock shared by the allocator and the test.
func newClock() *testingclock.FakeClock {
	return testingclock.NewFakeClock(time.Date(2025, 11, 25, 12, 0, 0, 0, time.UTC))
}

// newTest returns an allocator on a fresh memory store with a fake clock and the default cooldown.
func newTest(t testing.TB, opts ...Option) (*Allocator, *store.Memory, *testingclock.FakeClock) {
	t.Helper()
	st := store.NewMemory()
	clk := newClock()
	a, err := New(st, append([]Option{WithClock(clk.Now)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return a, st, clk
}

// addr returns 10.<card>.<i/250>.<i%250+1>: distinct per card and index.
func addr(card, i int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, byte(card), byte(i / 250), byte(i%250 + 1)})
}

func eni(card int) string { return fmt.Sprintf("eni-%02d", card) }

// seed gives the card n warm addresses on one ENI.
func seed(t testing.TB, a *Allocator, card, n int) []netip.Addr {
	t.Helper()
	addrs := make([]netip.Addr, n)
	for i := range addrs {
		addrs[i] = addr(card, i)
	}
	if added, err := a.AddAddresses(card, eni(card), addrs...); err != nil || added != n {
		t.Fatalf("seed card %d: added %d, err %v", card, added, err)
	}
	return addrs
}

// req is pod p's request for card on interface net<card>, sandbox "sandbox-<p>".
func req(p, card int) api.AllocateRequest {
	return api.AllocateRequest{
		Card: card, ContainerID: fmt.Sprintf("sandbox-%d", p), IfName: fmt.Sprintf("net%d", card),
		PodRef: api.PodRef{PodNamespace: "team", PodName: fmt.Sprintf("pod-%d", p), PodUID: fmt.Sprintf("uid-%d", p)},
	}
}

func mustAllocate(t testing.TB, a *Allocator, r api.AllocateRequest) api.Allocation {
	t.Helper()
	al, err := a.Allocate(r)
	if err != nil {
		t.Fatal(err)
	}
	return al
}

// state is everything observable, for before/after comparisons.
type state struct {
	Allocs []api.Allocation
	Known  []PoolAddress
}

func snapshot(a *Allocator) state { return state{a.List(), a.Known()} }

// checkInvariants fails the test if an address is held twice or a pod holds a card twice, and checks
// that List and Known agree.
func checkInvariants(t testing.TB, a *Allocator) {
	t.Helper()
	byAddr := map[netip.Addr]api.Allocation{}
	type podCard struct {
		uid  string
		card int
	}
	byPod := map[podCard]api.Allocation{}
	byIPv6 := map[netip.Addr]api.Allocation{}
	for _, al := range a.List() {
		if al.IPv6.IsValid() {
			if prev, dup := byIPv6[al.IPv6]; dup {
				t.Errorf("%s held by %s/%s and %s/%s", al.IPv6, prev.ContainerID, prev.IfName, al.ContainerID, al.IfName)
			}
			byIPv6[al.IPv6] = al
		}
		if !al.Address.IsValid() {
			if !al.IPv6.IsValid() {
				t.Errorf("%s/%s holds no address", al.ContainerID, al.IfName)
			}
		} else if prev, dup := byAddr[al.Address]; dup {
			t.Errorf("%s held by %s/%s and %s/%s", al.Address, prev.ContainerID, prev.IfName, al.ContainerID, al.IfName)
		}
		if al.Address.IsValid() {
			byAddr[al.Address] = al
		}
		pc := podCard{al.PodUID, al.Card}
		if prev, dup := byPod[pc]; dup {
			t.Errorf("pod %s holds card %d twice: %s and %s", al.PodUID, al.Card, prev.Address, al.Address)
		}
		byPod[pc] = al
	}
	held := 0
	for _, k := range a.Known() {
		if k.Allocated {
			held++
			if _, ok := byAddr[k.Address]; !ok {
				t.Errorf("%s marked allocated but no allocation holds it", k.Address)
			}
		}
	}
	if held != len(byAddr) {
		t.Errorf("%d addresses marked allocated, %d allocations", held, len(byAddr))
	}
	held6 := 0
	for _, p := range a.KnownIPv6() {
		held6 += p.Allocated
	}
	if held6 != len(byIPv6) {
		t.Errorf("%d IPv6 addresses marked allocated, %d allocations hold one", held6, len(byIPv6))
	}
}
