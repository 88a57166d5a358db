package allocator

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/multinic/multinic/ipam/api"
	"github.com/multinic/multinic/ipam/store"
)

func TestAddAddresses(t *testing.T) {
	a, st, _ := newTest(t)
	seed(t, a, 1, 3)
	saves := st.Saves()
	// Known ones (on any card) are skipped, duplicates in one call count once.
	n, err := a.AddAddresses(1, "eni-b", addr(1, 0), addr(1, 3), addr(1, 3), addr(2, 0))
	if err != nil || n != 2 {
		t.Fatalf("added %d err %v, want 2", n, err)
	}
	if n, err := a.AddAddresses(2, "eni-c", addr(2, 0)); n != 0 || err != nil {
		t.Fatalf("re-add on another card: %d %v", n, err)
	}
	if st.Saves() != saves+1 {
		t.Errorf("%d saves, want one for the call that added", st.Saves()-saves)
	}
	for _, k := range a.Known() {
		if k.Address == addr(1, 0) && k.ENIID != eni(1) {
			t.Errorf("re-adding moved %s to %s", k.Address, k.ENIID)
		}
	}
	for _, bad := range []struct {
		card int
		eni  string
		addr netip.Addr
	}{{-1, "eni", addr(1, 9)}, {1, "", addr(1, 9)}, {1, "eni", netip.Addr{}}} {
		if _, err := a.AddAddresses(bad.card, bad.eni, bad.addr); !errors.Is(err, api.ErrInvalid) {
			t.Errorf("AddAddresses(%d, %q, %v): %v, want api.ErrInvalid", bad.card, bad.eni, bad.addr, err)
		}
	}
}

func TestWarmAndRemove(t *testing.T) {
	a, _, _ := newTest(t)
	addrs := seed(t, a, 3, 8)                                    // 10.3.0.1 .. 10.3.0.8
	mustAllocate(t, a, req(1, 3))                                // takes .1
	mustAllocate(t, a, req(2, 3))                                // takes .2
	if _, _, err := a.Release("sandbox-2", "net3"); err != nil { // .2 rests
		t.Fatal(err)
	}
	// Warm now: .3 .. .8. Held .1 and resting .2 are not warm.
	var got []netip.Addr
	for _, p := range a.Warm(3) {
		got = append(got, p.Address)
		if p.ENIID != eni(3) || p.Allocated || p.Card != 3 {
			t.Errorf("warm entry %+v", p)
		}
	}
	if want := addrs[2:]; !reflect.DeepEqual(got, want) {
		t.Errorf("Warm = %v, want %v", got, want)
	}
	if got := a.Warm(9); got != nil {
		t.Errorf("warm of unknown card: %v", got)
	}

	// Removing skips the held address and ones on another card or unknown.
	removed, err := a.RemoveAddresses(3, addrs[0], addrs[7], addrs[1], addr(4, 0), netip.MustParseAddr("192.0.2.1"))
	if err != nil {
		t.Fatal(err)
	}
	if want := []netip.Addr{addrs[7], addrs[1]}; !reflect.DeepEqual(removed, want) {
		t.Fatalf("removed %v, want %v", removed, want)
	}
	if al, ok := a.Lookup("sandbox-1", "net3"); !ok || al.Address != addrs[0] {
		t.Fatal("held address removed from under its pod")
	}
	if s := a.Stats(3); s.Counts != (Counts{Capacity: 6, Allocated: 1, Warm: 5}) {
		t.Errorf("stats after remove %+v", s.Counts)
	}
}

// TestWaiting: allocations blocked on card 5's empty pool count in its Stats until they return; an
// exclusive wait is not shared-pool demand.
func TestWaiting(t *testing.T) {
	a, _, _ := newTest(t)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, exclusive := range []bool{false, false, false, true} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = a.WaitForAddress(ctx, api.AllocateRequest{Card: 5, Exclusive: exclusive})
		}()
	}
	deadline := time.Now().Add(5 * time.Second)
	for a.Stats(5).Waiting != 3 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if got := a.Stats(5).Waiting; got != 3 {
		t.Errorf("card 5 with 3 shared waiters: Waiting = %d, want 3", got)
	}
	cancel()
	wg.Wait()
	if got := a.Stats(5).Waiting; got != 0 {
		t.Errorf("card 5 after the waiters gave up: Waiting = %d, want 0", got)
	}
}

func TestWaitForAddress(t *testing.T) {
	t.Run("wakes on add", func(t *testing.T) {
		a, _, _ := newTest(t)
		done := make(chan error, 1)
		go func() { done <- a.WaitForAddress(context.Background(), api.AllocateRequest{Card: 2, Exclusive: false}) }()
		select {
		case err := <-done:
			t.Fatalf("returned before any address: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
		seed(t, a, 3, 1) // another card: keeps waiting
		select {
		case err := <-done:
			t.Fatalf("woke for another card: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
		seed(t, a, 2, 1)
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("not woken by AddAddresses")
		}
	})
	t.Run("wakes on exclusive ENI", func(t *testing.T) {
		a, _, _ := newTest(t)
		seed(t, a, 2, 1) // shared addresses do not satisfy an exclusive wait
		done := make(chan error, 1)
		go func() { done <- a.WaitForAddress(context.Background(), api.AllocateRequest{Card: 2, Exclusive: true}) }()
		time.Sleep(30 * time.Millisecond)
		if err := a.AddExclusiveENI(2, "eni-x", netip.MustParseAddr("10.2.200.1")); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("not woken by AddExclusiveENI")
		}
	})
	t.Run("wakes when rest ends", func(t *testing.T) {
		st := store.NewMemory()
		a, err := New(st, WithCooldown(100*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		seed(t, a, 1, 1)
		mustAllocate(t, a, req(1, 1))
		if _, _, err := a.Release("sandbox-1", "net1"); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		if err := a.WaitForAddress(context.Background(), api.AllocateRequest{Card: 1, Exclusive: false}); err != nil {
			t.Fatal(err)
		}
		if waited := time.Since(start); waited < 80*time.Millisecond {
			t.Errorf("returned after %s, while the address still rested", waited)
		}
		mustAllocate(t, a, req(2, 1))
	})
	t.Run("context ends", func(t *testing.T) {
		a, _, _ := newTest(t)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
		defer cancel()
		if err := a.WaitForAddress(ctx, api.AllocateRequest{Card: 1, Exclusive: false}); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("wait: %v, want deadline exceeded", err)
		}
	})
}

// TestFreeExclusive: only the card's exclusive ENIs that are free and rested are listed; shared addresses,
// held ENIs, resting ENIs and other cards' are not.
func TestFreeExclusive(t *testing.T) {
	a, _, clk := newTest(t)
	seed(t, a, 1, 2) // shared addresses: never listed
	for i, id := range []string{"eni-a", "eni-b", "eni-c"} {
		if err := a.AddExclusiveENI(1, id, netip.MustParseAddr(fmt.Sprintf("10.1.200.%d", i+1))); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.AddExclusiveENI(2, "eni-other", netip.MustParseAddr("10.2.200.1")); err != nil {
		t.Fatal(err)
	}
	held, resting := req(1, 1), req(2, 1)
	held.Exclusive, resting.Exclusive = true, true
	h := mustAllocate(t, a, held)
	r := mustAllocate(t, a, resting)
	if _, _, err := a.Release(r.ContainerID, r.IfName); err != nil {
		t.Fatal(err)
	}
	ids := func() []string {
		var out []string
		for _, p := range a.FreeExclusive(1) {
			if !p.Exclusive || p.Allocated || p.Card != 1 {
				t.Errorf("listed %+v", p)
			}
			out = append(out, p.ENIID)
		}
		return out
	}
	var want []string
	for _, id := range []string{"eni-a", "eni-b", "eni-c"} {
		if id != h.ENIID && id != r.ENIID {
			want = append(want, id)
		}
	}
	if got := ids(); !reflect.DeepEqual(got, want) {
		t.Errorf("FreeExclusive(1) = %v, want %v (held %s, resting %s)", got, want, h.ENIID, r.ENIID)
	}
	clk.Step(DefaultCooldown)
	if got := ids(); !reflect.DeepEqual(got, want) {
		t.Errorf("after the cooldown, away: FreeExclusive(1) = %v, want %v", got, want)
	}
	if err := a.ConfirmHome(1, r.ENIID); err != nil {
		t.Fatal(err)
	}
	want = append(want, r.ENIID)
	slices.Sort(want)
	if got := ids(); !reflect.DeepEqual(got, want) {
		t.Errorf("after the cooldown and home: FreeExclusive(1) = %v, want %v", got, want)
	}
}
