package allocator

import (
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/multinic/multinic/ipam/api"
	"github.com/multinic/multinic/ipam/store"
)

func TestAllocateRules(t *testing.T) {
	first := req(1, 2) // pod 1 holds card 2 on sandbox-1/net2 in every case
	for _, tc := range []struct {
		name    string
		req     api.AllocateRequest
		wantErr error
		// wantSame: the answer is first's allocation again.
		wantSame bool
	}{
		{name: "same interface again is idempotent", req: first, wantSame: true},
		{name: "same pod other interface same card", req: func() api.AllocateRequest {
			r := first
			r.IfName = "net9"
			return r
		}(), wantErr: api.ErrCardTaken},
		{name: "same pod other sandbox same card", req: func() api.AllocateRequest {
			r := first
			r.ContainerID = "sandbox-new"
			return r
		}(), wantErr: api.ErrCardTaken},
		{name: "same pod by namespace/name when uid missing", req: func() api.AllocateRequest {
			r := first
			r.IfName, r.PodUID = "net9", ""
			return r
		}(), wantErr: api.ErrCardTaken},
		{name: "recreated pod same name new uid", req: func() api.AllocateRequest {
			r := first
			r.ContainerID, r.PodUID = "sandbox-new", "uid-new"
			return r
		}()},
		{name: "same pod other card", req: req(1, 3)},
		{name: "other pod same card", req: req(2, 2)},
		{name: "same interface asks another card", req: func() api.AllocateRequest {
			r := first
			r.Card = 3
			return r
		}(), wantErr: api.ErrInterfaceTaken},
		{name: "same interface asks exclusive", req: func() api.AllocateRequest {
			r := first
			r.Exclusive = true
			return r
		}(), wantErr: api.ErrInterfaceTaken},
		{name: "same interface other pod", req: func() api.AllocateRequest {
			r := first
			r.PodUID = "uid-other"
			return r
		}(), wantErr: api.ErrInterfaceTaken},
		{name: "card with no pool", req: req(1, 7), wantErr: ErrPoolEmpty},
		{name: "exclusive with no ENI", req: func() api.AllocateRequest {
			r := req(2, 2)
			r.Exclusive = true
			return r
		}(), wantErr: ErrPoolEmpty},
		{name: "negative card", req: req(1, -1), wantErr: api.ErrInvalid},
		{name: "no container", req: api.AllocateRequest{Card: 2, IfName: "net2"}, wantErr: api.ErrInvalid},
		{name: "no ifname", req: api.AllocateRequest{Card: 2, ContainerID: "c"}, wantErr: api.ErrInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, st, _ := newTest(t)
			seed(t, a, 2, 4)
			seed(t, a, 3, 4)
			held := mustAllocate(t, a, first)
			saves := st.Saves()

			got, err := a.Allocate(tc.req)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("allocate: %v, want %v", err, tc.wantErr)
			}
			switch {
			case err != nil:
				if got != (api.Allocation{}) {
					t.Errorf("error with an allocation: %+v", got)
				}
				if st.Saves() != saves {
					t.Error("refused request was persisted")
				}
			case tc.wantSame:
				if got != held {
					t.Errorf("again: %+v, want %+v", got, held)
				}
				if st.Saves() != saves {
					t.Error("idempotent allocate wrote state")
				}
			default:
				if got.Address == held.Address {
					t.Errorf("second allocation got held address %s", got.Address)
				}
				if got.Card != tc.req.Card || got.ENIID != eni(tc.req.Card) {
					t.Errorf("got card %d ENI %s, want card %d ENI %s", got.Card, got.ENIID, tc.req.Card, eni(tc.req.Card))
				}
				if st.Saves() != saves+1 {
					t.Errorf("allocation not persisted: %d saves, want %d", st.Saves(), saves+1)
				}
			}
			checkInvariants(t, a)
		})
	}
}

// A repeated Allocate records a network name the allocation lacks (made by an older plugin) and keeps the
// one it has; another network's name for the same (container, interface) is api.ErrInterfaceTaken.
func TestAllocateAgainNetwork(t *testing.T) {
	a, st, _ := newTest(t)
	seed(t, a, 2, 2)
	first := mustAllocate(t, a, req(1, 2))
	r := req(1, 2)
	r.Network = "card-2"
	got := mustAllocate(t, a, r)
	if got.Network != "card-2" || got.Address != first.Address {
		t.Fatalf("again with a network: %+v, want %s with network card-2", got, first.Address)
	}
	r.Network = "other"
	if _, err := a.Allocate(r); !errors.Is(err, api.ErrInterfaceTaken) {
		t.Errorf("again with another network: %v, want api.ErrInterfaceTaken", err)
	}
	r.Network = ""
	if got := mustAllocate(t, a, r); got.Network != "card-2" {
		t.Errorf("again without a network: network %q, want card-2 kept", got.Network)
	}
	restored, err := New(st)
	if err != nil {
		t.Fatal(err)
	}
	if al, _ := restored.Lookup("sandbox-1", "net2"); al.Network != "card-2" {
		t.Errorf("restored network %q, want card-2", al.Network)
	}
}

// A repeated Allocate records a netns the allocation lacks and keeps the one it has, writing only to
// record one.
func TestAllocateAgainNetns(t *testing.T) {
	a, st, _ := newTest(t)
	seed(t, a, 2, 2)
	first := mustAllocate(t, a, req(1, 2))
	for _, step := range []struct {
		name, netns, want string
		writes            int
	}{
		{"none known, none given", "", "", 0},
		{"none known", "/var/run/netns/a", "/var/run/netns/a", 1},
		{"another", "/var/run/netns/b", "/var/run/netns/a", 0},
		{"none given", "", "/var/run/netns/a", 0},
	} {
		saves := st.Saves()
		r := req(1, 2)
		r.Netns = step.netns
		want := first
		want.Netns = step.want
		if got := mustAllocate(t, a, r); got != want {
			t.Errorf("%s: got %+v, want %+v", step.name, got, want)
		}
		if n := st.Saves() - saves; n != step.writes {
			t.Errorf("%s: %d writes, want %d", step.name, n, step.writes)
		}
	}
	restored, err := New(st)
	if err != nil {
		t.Fatal(err)
	}
	if al, _ := restored.Lookup("sandbox-1", "net2"); al.Netns != "/var/run/netns/a" {
		t.Errorf("restored netns %q, want /var/run/netns/a", al.Netns)
	}
}

func TestCardTakenMessage(t *testing.T) {
	a, _, _ := newTest(t)
	seed(t, a, 5, 2)
	held := mustAllocate(t, a, req(1, 5))
	r := req(1, 5)
	r.IfName = "net-extra"
	_, err := a.Allocate(r)
	var cte *CardTakenError
	if !errors.As(err, &cte) || !errors.Is(err, api.ErrCardTaken) {
		t.Fatalf("allocate: %v, want a *CardTakenError", err)
	}
	msg := err.Error()
	for _, want := range []string{"team/pod-1", "card 5", "sandbox-1", "interface net5", held.Address.String()} {
		if !strings.Contains(msg, want) {
			t.Errorf("message %q lacks %q", msg, want)
		}
	}
	if cte.Existing != held {
		t.Errorf("existing %+v, want %+v", cte.Existing, held)
	}
}

func TestPoolEmptyMessage(t *testing.T) {
	a, _, clk := newTest(t)
	seed(t, a, 6, 1)
	mustAllocate(t, a, req(1, 6))
	if _, _, err := a.Release("sandbox-1", "net6"); err != nil {
		t.Fatal(err)
	}
	_, err := a.Allocate(req(2, 6))
	var pe *PoolEmptyError
	if !errors.As(err, &pe) || !errors.Is(err, ErrPoolEmpty) {
		t.Fatalf("allocate: %v, want *PoolEmptyError", err)
	}
	if pe.Card != 6 || pe.Cooling != 1 || !pe.NextReady.Equal(clk.Now().Add(DefaultCooldown)) {
		t.Errorf("got %+v, want card 6, 1 cooling, ready at %s", pe, clk.Now().Add(DefaultCooldown))
	}
	if !strings.Contains(err.Error(), "card 6") {
		t.Errorf("message %q does not name card 6", err)
	}
}

func TestCooldown(t *testing.T) {
	a, _, clk := newTest(t, WithCooldown(30*time.Second))
	addrs := seed(t, a, 1, 2)

	// The lowest never-used address goes first.
	al := mustAllocate(t, a, req(1, 1))
	if al.Address != addrs[0] {
		t.Fatalf("first allocation %s, want %s", al.Address, addrs[0])
	}
	if _, ok, err := a.Release("sandbox-1", "net1"); !ok || err != nil {
		t.Fatalf("release: ok=%v err=%v", ok, err)
	}
	// A warm address exists: the resting one is not reused.
	if got := mustAllocate(t, a, req(2, 1)); got.Address != addrs[1] {
		t.Fatalf("second allocation %s, want the never-used %s", got.Address, addrs[1])
	}
	// Only the resting one is left: nothing to give until it has rested.
	for _, step := range []struct {
		advance time.Duration
		wantErr error
	}{
		{0, ErrPoolEmpty},
		{29 * time.Second, ErrPoolEmpty},
		{999 * time.Millisecond, ErrPoolEmpty},
		{time.Millisecond, nil},
	} {
		clk.Step(step.advance)
		got, err := a.Allocate(req(3, 1))
		if !errors.Is(err, step.wantErr) {
			t.Fatalf("after +%s: %v, want %v", step.advance, err, step.wantErr)
		}
		if err == nil && got.Address != addrs[0] {
			t.Fatalf("rested allocation %s, want %s", got.Address, addrs[0])
		}
	}

	// Among free addresses, the one that rested longest is reused first.
	for _, id := range []string{"sandbox-2", "sandbox-3"} { // releases addrs[1], then addrs[0]
		if _, _, err := a.Release(id, "net1"); err != nil {
			t.Fatal(err)
		}
		clk.Step(time.Second)
	}
	clk.Step(time.Minute)
	if got := mustAllocate(t, a, req(4, 1)); got.Address != addrs[1] {
		t.Fatalf("after both rested: %s, want the earlier released %s", got.Address, addrs[1])
	}
}

func TestZeroCooldown(t *testing.T) {
	a, _, _ := newTest(t, WithCooldown(0))
	addrs := seed(t, a, 1, 1)
	mustAllocate(t, a, req(1, 1))
	if _, _, err := a.Release("sandbox-1", "net1"); err != nil {
		t.Fatal(err)
	}
	if got := mustAllocate(t, a, req(2, 1)); got.Address != addrs[0] {
		t.Fatalf("got %s, want immediate reuse of %s", got.Address, addrs[0])
	}
}

func TestRelease(t *testing.T) {
	a, st, clk := newTest(t)
	seed(t, a, 1, 2)
	held := mustAllocate(t, a, req(1, 1))
	clk.Step(time.Second)

	got, ok, err := a.Release("sandbox-1", "net1")
	if err != nil || !ok || got != held {
		t.Fatalf("release: %+v ok=%v err=%v, want %+v", got, ok, err, held)
	}
	if _, found := a.Lookup("sandbox-1", "net1"); found {
		t.Error("lookup finds a released allocation")
	}
	saves := st.Saves()
	for range 2 { // twice more, and a never-known one: harmless and writes nothing
		if got, ok, err := a.Release("sandbox-1", "net1"); err != nil || ok || got != (api.Allocation{}) {
			t.Fatalf("release again: %+v ok=%v err=%v", got, ok, err)
		}
	}
	if _, ok, err := a.Release("nope", "eth0"); ok || err != nil {
		t.Fatalf("release unknown: ok=%v err=%v", ok, err)
	}
	if st.Saves() != saves {
		t.Error("no-op release wrote state")
	}
	if s := a.Stats(1); s.Counts != (Counts{Capacity: 2, Warm: 1, Cooling: 1}) {
		t.Errorf("stats %+v", s)
	}
}

// A DRA claim's reservation (no pod) goes to the pod's attachment under the same address, crash-safe; the
// rules of Allocate hold for the new holder, and the old key holds nothing afterwards.
func TestTransfer(t *testing.T) {
	a, st, _ := newTest(t)
	seed(t, a, 1, 3)
	claim := api.AllocateRequest{Card: 1, ContainerID: "dra-claim-1", IfName: "card1", Network: "multinic.io-dra"}
	held := mustAllocate(t, a, claim)
	pod := req(1, 1)
	pod.Netns, pod.Network = "/var/run/netns/cni-1", "multinic-card-1"

	for _, bad := range []struct {
		name string
		r    func() api.AllocateRequest
		want error
	}{
		{"other card", func() api.AllocateRequest { r := req(1, 2); return r }, api.ErrInterfaceTaken},
		{"exclusive", func() api.AllocateRequest { r := pod; r.Exclusive = true; return r }, api.ErrInterfaceTaken},
		{"ipv6", func() api.AllocateRequest { r := pod; r.Family = api.FamilyIPv6; return r }, api.ErrInterfaceTaken},
		{"invalid", func() api.AllocateRequest { r := pod; r.IfName = ""; return r }, api.ErrInvalid},
	} {
		if _, ok, err := a.Transfer(claim.ContainerID, claim.IfName, bad.r()); ok || !errors.Is(err, bad.want) {
			t.Errorf("%s: ok=%v err=%v, want %v", bad.name, ok, err, bad.want)
		}
	}
	// The pod already holds card 1 under another interface: one address per pod per card.
	other := mustAllocate(t, a, api.AllocateRequest{Card: 1, ContainerID: pod.ContainerID, IfName: "net9", PodRef: pod.PodRef})
	if _, ok, err := a.Transfer(claim.ContainerID, claim.IfName, pod); ok || !errors.Is(err, api.ErrCardTaken) {
		t.Errorf("pod holds the card: ok=%v err=%v, want ErrCardTaken", ok, err)
	}
	if _, _, err := a.Release(other.ContainerID, other.IfName); err != nil {
		t.Fatal(err)
	}

	saves := st.Saves()
	got, ok, err := a.Transfer(claim.ContainerID, claim.IfName, pod)
	if err != nil || !ok || got.Address != held.Address || got.ENIID != held.ENIID || got.AllocateRequest != pod || !got.AllocatedAt.Equal(held.AllocatedAt) {
		t.Fatalf("transfer: %+v ok=%v err=%v, want %s under %+v", got, ok, err, held.Address, pod)
	}
	if st.Saves() != saves+1 {
		t.Errorf("%d checkpoint writes, want 1", st.Saves()-saves)
	}
	if _, found := a.Lookup(claim.ContainerID, claim.IfName); found {
		t.Error("the claim's key still holds an allocation")
	}
	if _, ok, err := a.Transfer(claim.ContainerID, claim.IfName, req(2, 1)); ok || err != nil {
		t.Errorf("transfer of a key that holds nothing: ok=%v err=%v, want false, nil", ok, err)
	}
	if s := a.Stats(1); s.Allocated != 1 {
		t.Errorf("stats %+v: want 1 allocated (one address, not two)", s)
	}
	checkInvariants(t, a)
	// A restart finds the pod holding the address.
	b, err := New(st)
	if err != nil {
		t.Fatal(err)
	}
	if al, ok := b.Lookup(pod.ContainerID, pod.IfName); !ok || al.Address != held.Address || al.Netns != pod.Netns {
		t.Errorf("after restart: %+v %v", al, ok)
	}
}

func TestReleaseIf(t *testing.T) {
	a, _, _ := newTest(t)
	for c := range 3 {
		seed(t, a, c, 4)
		for p := range 3 {
			mustAllocate(t, a, req(p, c))
		}
	}
	got, err := a.ReleaseIf(func(al api.Allocation) bool { return al.PodUID == "uid-1" })
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 {
		t.Fatalf("released %d, want pod 1's 3", len(got))
	}
	for _, al := range got {
		if al.PodUID != "uid-1" {
			t.Errorf("released %+v", al)
		}
	}
	if n := len(a.List()); n != 6 {
		t.Errorf("%d left, want 6", n)
	}
	if got, err := a.ReleaseIf(func(api.Allocation) bool { return false }); got != nil || err != nil {
		t.Errorf("no match: %v %v", got, err)
	}
}

func TestLookupAndList(t *testing.T) {
	a, _, _ := newTest(t)
	seed(t, a, 2, 3)
	seed(t, a, 1, 3)
	x := mustAllocate(t, a, req(1, 2))
	y := mustAllocate(t, a, req(1, 1))
	if got, ok := a.Lookup("sandbox-1", "net2"); !ok || got != x {
		t.Errorf("lookup: %+v %v", got, ok)
	}
	if _, ok := a.Lookup("sandbox-1", "net3"); ok {
		t.Error("lookup of unknown interface found something")
	}
	if got := a.List(); !reflect.DeepEqual(got, []api.Allocation{y, x}) {
		t.Errorf("list not by card: %+v", got)
	}
	if got := a.Cards(); !reflect.DeepEqual(got, []int{1, 2}) {
		t.Errorf("cards %v", got)
	}
}

// Every state-changing operation, made to fail at the write, must leave memory and the checkpoint as
// they were.
func TestPersistFailureRollsBack(t *testing.T) {
	boom := errors.New("disk on fire")
	for _, tc := range []struct {
		name string
		op   func(a *Allocator) error
	}{
		{"allocate", func(a *Allocator) error { _, err := a.Allocate(req(9, 1)); return err }},
		{"allocate again with a netns", func(a *Allocator) error {
			r := req(1, 1)
			r.Netns = "/var/run/netns/late"
			_, err := a.Allocate(r)
			return err
		}},
		{"allocate exclusive", func(a *Allocator) error {
			r := req(9, 1)
			r.Exclusive = true
			_, err := a.Allocate(r)
			return err
		}},
		{"release", func(a *Allocator) error { _, _, err := a.Release("sandbox-1", "net1"); return err }},
		{"transfer", func(a *Allocator) error { _, _, err := a.Transfer("sandbox-1", "net1", req(9, 1)); return err }},
		{"release if", func(a *Allocator) error {
			_, err := a.ReleaseIf(func(api.Allocation) bool { return true })
			return err
		}},
		{"add addresses", func(a *Allocator) error {
			_, err := a.AddAddresses(1, "eni-new", addr(1, 100), addr(1, 101))
			return err
		}},
		{"add exclusive ENI", func(a *Allocator) error {
			return a.AddExclusiveENI(1, "eni-x2", netip.MustParseAddr("10.1.9.2"))
		}},
		{"remove addresses", func(a *Allocator) error {
			_, err := a.RemoveAddresses(1, addr(1, 2), addr(1, 3))
			return err
		}},
		{"reconcile", func(a *Allocator) error {
			_, err := a.Reconcile([]EC2Address{{Card: 1, ENIID: eni(1), Address: addr(1, 50)}})
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, st, clk := newTest(t)
			seed(t, a, 1, 4)
			if err := a.AddExclusiveENI(1, "eni-x1", netip.MustParseAddr("10.1.9.1")); err != nil {
				t.Fatal(err)
			}
			mustAllocate(t, a, req(1, 1))
			mustAllocate(t, a, req(2, 1))
			if _, _, err := a.Release("sandbox-2", "net1"); err != nil {
				t.Fatal(err)
			}
			clk.Step(time.Second)
			before := snapshot(a)
			cpBefore, _, _ := st.Load()

			st.FailSaves(boom)
			if err := tc.op(a); !errors.Is(err, boom) {
				t.Fatalf("op: %v, want %v", err, boom)
			}
			if after := snapshot(a); !reflect.DeepEqual(after, before) {
				t.Errorf("memory changed by a failed op:\nbefore %+v\n after %+v", before, after)
			}
			if cpAfter, _, _ := st.Load(); !reflect.DeepEqual(cpAfter, cpBefore) {
				t.Error("checkpoint changed by a failed op")
			}
			checkInvariants(t, a)

			// Once the disk is back the same op succeeds: nothing was half-taken.
			st.FailSaves(nil)
			if err := tc.op(a); err != nil {
				t.Fatalf("op after recovery: %v", err)
			}
			checkInvariants(t, a)
		})
	}
}

// A new allocator on the same store after a "crash" has exactly the old allocations (netns included),
// pools and cooldowns, for both store implementations.
func TestRestore(t *testing.T) {
	for _, tc := range []struct {
		name string
		st   func(t *testing.T) store.Store
	}{
		{"memory", func(t *testing.T) store.Store { return store.NewMemory() }},
		{"file", func(t *testing.T) store.Store {
			fs, err := store.NewFileStore(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			if err := fs.Lock(time.Second); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { fs.Unlock() })
			return fs
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := tc.st(t)
			clk := newClock()
			a, err := New(st, WithClock(clk.Now))
			if err != nil {
				t.Fatal(err)
			}
			for c := range 3 {
				seed(t, a, c, 5)
				if err := a.AddExclusiveENI(c, fmt.Sprintf("eni-x%d", c), addr(c, 200)); err != nil {
					t.Fatal(err)
				}
				for p := range 3 {
					r := req(p, c)
					r.Netns = fmt.Sprintf("/var/run/netns/cni-%d", p)
					mustAllocate(t, a, r)
					clk.Step(time.Second)
				}
				x := req(7, c)
				x.Exclusive = true
				mustAllocate(t, a, x)
			}
			if _, _, err := a.Release("sandbox-1", "net1"); err != nil {
				t.Fatal(err)
			}
			if _, _, err := a.Release("sandbox-7", "net2"); err != nil { // an exclusive ENI rests too
				t.Fatal(err)
			}
			want := snapshot(a)
			wantStats := a.Stats(1)

			b, err := New(st, WithClock(clk.Now))
			if err != nil {
				t.Fatal(err)
			}
			if got := snapshot(b); !reflect.DeepEqual(got, want) {
				t.Fatalf("restored state differs:\n got %+v\nwant %+v", got, want)
			}
			if got := b.Stats(1); got != wantStats {
				t.Errorf("stats %+v, want %+v", got, wantStats)
			}
			// The cooldown survives: the released address is not handed out before its time.
			r := req(1, 1)
			r.ContainerID = "sandbox-1b"
			got := mustAllocate(t, b, r)
			if got.Address == addr(1, 1) {
				t.Errorf("restored allocator reused resting %s", got.Address)
			}
			if err := b.AddExclusiveENI(2, "eni-x2", addr(2, 200)); err != nil {
				t.Errorf("re-adding a restored exclusive ENI: %v", err)
			}
			checkInvariants(t, b)
		})
	}
}

func TestRestoreRejectsBrokenCheckpoint(t *testing.T) {
	a1 := netip.MustParseAddr("10.0.0.1")
	pool := []store.Address{{Card: 1, Address: a1, ENIID: "eni-1"}}
	alloc := func(cid, uid string) api.Allocation {
		return api.Allocation{AllocateRequest: api.AllocateRequest{Card: 1, ContainerID: cid, IfName: "net1",
			PodRef: api.PodRef{PodUID: uid}}, Address: a1, ENIID: "eni-1"}
	}
	for _, tc := range []struct {
		name string
		cp   store.Checkpoint
	}{
		{"address held twice", store.Checkpoint{Addresses: pool,
			Allocations: []api.Allocation{alloc("c1", "u1"), alloc("c2", "u2")}}},
		{"allocation outside pool", store.Checkpoint{Allocations: []api.Allocation{alloc("c1", "u1")}}},
		{"address listed twice", store.Checkpoint{Addresses: append(pool, pool...)}},
		{"allocation on wrong ENI", store.Checkpoint{Addresses: pool, Allocations: []api.Allocation{func() api.Allocation {
			al := alloc("c1", "u1")
			al.ENIID = "eni-2"
			return al
		}()}}},
		{"pool entry without ENI", store.Checkpoint{Addresses: []store.Address{{Card: 1, Address: a1}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := store.NewMemory()
			if err := st.Save(tc.cp); err != nil {
				t.Fatal(err)
			}
			if _, err := New(st); !errors.Is(err, store.ErrCorrupt) {
				t.Fatalf("new: %v, want ErrCorrupt", err)
			}
		})
	}
}

// 64 goroutines over 8 cards: 32 pods, two goroutines per pod racing for every card through different
// interfaces. Exactly one of them wins each (pod, card); no address is given twice; releasing everything
// leaves nothing held.
func TestConcurrentAllocate(t *testing.T) {
	const cards, pods = 8, 32
	a, _, _ := newTest(t)
	capacity := 0
	for c := range cards {
		seed(t, a, c, pods+3)
		capacity += pods + 3
	}

	type result struct {
		al  api.Allocation
		err error
	}
	results := make(chan result, 2*pods*cards*2)
	var wg sync.WaitGroup
	for g := range 2 * pods {
		wg.Go(func() {
			p := g / 2
			for c := range cards {
				r := req(p, c)
				r.IfName = fmt.Sprintf("net%d-%d", c, g%2)
				al, err := a.Allocate(r)
				results <- result{al, err}
				if err == nil { // a retried ADD gets the same answer
					again, err := a.Allocate(r)
					if err != nil || again != al {
						t.Errorf("retry %+v: %+v %v", r, again, err)
					}
				}
			}
		})
	}
	wg.Wait()
	close(results)

	won := map[[2]int]int{}
	seen := map[netip.Addr]bool{}
	for res := range results {
		switch {
		case res.err == nil:
			if seen[res.al.Address] {
				t.Errorf("%s given twice", res.al.Address)
			}
			seen[res.al.Address] = true
			var p int
			fmt.Sscanf(res.al.PodUID, "uid-%d", &p)
			won[[2]int{p, res.al.Card}]++
		case !errors.Is(res.err, api.ErrCardTaken):
			t.Errorf("unexpected error: %v", res.err)
		}
	}
	for p := range pods {
		for c := range cards {
			if n := won[[2]int{p, c}]; n != 1 {
				t.Errorf("pod %d card %d: %d allocations, want 1", p, c, n)
			}
		}
	}
	checkInvariants(t, a)
	if n := len(a.List()); n != pods*cards {
		t.Fatalf("%d allocations, want %d", n, pods*cards)
	}

	for _, al := range a.List() {
		wg.Go(func() {
			if _, ok, err := a.Release(al.ContainerID, al.IfName); !ok || err != nil {
				t.Errorf("release %s/%s: ok=%v err=%v", al.ContainerID, al.IfName, ok, err)
			}
		})
	}
	wg.Wait()
	total := Counts{}
	for c := range cards {
		s := a.Stats(c)
		total.Capacity += s.Capacity
		total.Allocated += s.Allocated
		total.Warm += s.Warm
		total.Cooling += s.Cooling
	}
	want := Counts{Capacity: capacity, Allocated: 0, Warm: capacity - pods*cards, Cooling: pods * cards}
	if total != want || len(a.List()) != 0 {
		t.Fatalf("after releasing all: %+v (%d allocations), want %+v", total, len(a.List()), want)
	}
}

func TestExclusive(t *testing.T) {
	a, st, clk := newTest(t)
	seed(t, a, 4, 2)
	primary := netip.MustParseAddr("10.4.100.1")
	if err := a.AddExclusiveENI(4, "eni-x", primary); err != nil {
		t.Fatal(err)
	}
	if err := a.AddExclusiveENI(4, "eni-x", primary); err != nil {
		t.Fatalf("adding the same ENI again: %v", err)
	}
	for _, bad := range []struct {
		card int
		eni  string
		addr netip.Addr
	}{
		{4, "eni-y", primary},      // address already known
		{4, "eni-x", addr(4, 150)}, // ENI already known with another address
		{4, eni(4), addr(4, 151)},  // ENI serves the shared pool
		{4, "eni-z", addr(4, 0)},   // a shared address
	} {
		if err := a.AddExclusiveENI(bad.card, bad.eni, bad.addr); !errors.Is(err, ErrConflict) {
			t.Errorf("AddExclusiveENI(%d, %s, %s): %v, want ErrConflict", bad.card, bad.eni, bad.addr, err)
		}
	}

	x := req(1, 4)
	x.Exclusive, x.Netns = true, "/var/run/netns/pod-1"
	got := mustAllocate(t, a, x)
	if got.Address != primary || got.ENIID != "eni-x" || !got.Exclusive {
		t.Fatalf("exclusive allocation %+v", got)
	}
	// One address per (pod, card) holds across modes.
	other := api.AllocateRequest{Card: 4, ContainerID: "sandbox-1", IfName: "net-b", PodRef: api.PodRef{PodUID: "uid-1"}}
	if _, err := a.Allocate(other); !errors.Is(err, api.ErrCardTaken) {
		t.Errorf("shared after exclusive on the same card: %v, want api.ErrCardTaken", err)
	}
	// Shared requests never get the exclusive ENI, and exclusive ones never a shared address.
	y := req(2, 4)
	y.Exclusive = true
	if _, err := a.Allocate(y); !errors.Is(err, ErrPoolEmpty) || !strings.Contains(err.Error(), "exclusive ENI") {
		t.Errorf("second exclusive: %v, want ErrPoolEmpty naming the exclusive pool", err)
	}
	if s := a.Stats(4); s.Exclusive != (Counts{Capacity: 1, Allocated: 1}) || s.Counts != (Counts{Capacity: 2, Warm: 2}) {
		t.Errorf("stats %+v", s)
	}
	// Held, the ENI cannot be removed; released, it is away (its link was in the pod) until the ENI
	// manager confirms its link home, rests, then serves the next exclusive pod.
	if rm, err := a.RemoveAddresses(4, primary); len(rm) != 0 || err != nil {
		t.Errorf("removed a held ENI: %v %v", rm, err)
	}
	if err := a.SetAway(4, "eni-x", true); !errors.Is(err, api.ErrInvalid) {
		t.Errorf("SetAway on a held ENI: %v, want api.ErrInvalid", err)
	}
	if _, ok, err := a.Release("sandbox-1", "net4"); !ok || err != nil {
		t.Fatal(ok, err)
	}
	if s := a.Stats(4).Exclusive; s != (Counts{Capacity: 1, Away: 1}) {
		t.Errorf("released exclusive ENI: stats %+v, want away", s)
	}
	if away := a.AwayExclusive(4); len(away) != 1 || away[0].ENIID != "eni-x" || away[0].AwayNetns != x.Netns {
		t.Errorf("AwayExclusive = %+v, want eni-x with netns %q", away, x.Netns)
	}
	clk.Step(DefaultCooldown)
	if _, err := a.Allocate(y); !errors.Is(err, ErrPoolEmpty) {
		t.Errorf("exclusive ENI reused while away: %v", err)
	}
	// The away state survives a restart.
	b, err := New(st, WithClock(clk.Now))
	if err != nil {
		t.Fatal(err)
	}
	if s := b.Stats(4).Exclusive; s.Away != 1 {
		t.Errorf("after restart: stats %+v, want away", s)
	}
	if err := a.ConfirmHome(4, "eni-x"); err != nil {
		t.Fatal(err)
	}
	if got := mustAllocate(t, a, y); got.ENIID != "eni-x" {
		t.Errorf("after rest: %+v", got)
	}
}

func TestConcurrentWithFileStore(t *testing.T) {
	fs, err := store.NewFileStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if err := fs.Lock(time.Second); err != nil {
		t.Fatal(err)
	}
	defer fs.Unlock()
	a, err := New(fs, WithCooldown(0))
	if err != nil {
		t.Fatal(err)
	}
	seed(t, a, 1, 16)
	seed(t, a, 2, 16)
	var wg sync.WaitGroup
	for p := range 16 {
		wg.Go(func() {
			for c := 1; c <= 2; c++ {
				if _, err := a.Allocate(req(p, c)); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	b, err := New(fs)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(snapshot(b), snapshot(a)) {
		t.Fatal("disk state differs from memory after concurrent allocations")
	}
	checkInvariants(t, b)
}

// WithMaxAllocations refuses a new allocation beyond the cap with api.ErrLimit; a repeated allocation and one
// made after a release still go through.
func TestMaxAllocations(t *testing.T) {
	a, _, _ := newTest(t, WithMaxAllocations(2))
	seed(t, a, 1, 4)
	mustAllocate(t, a, req(1, 1))
	mustAllocate(t, a, req(2, 1))
	if _, err := a.Allocate(req(3, 1)); !errors.Is(err, api.ErrLimit) {
		t.Fatalf("third allocation = %v, want api.ErrLimit", err)
	}
	mustAllocate(t, a, req(2, 1)) // the same again is not a new one
	r := req(1, 1)
	if _, _, err := a.Release(r.ContainerID, r.IfName); err != nil {
		t.Fatal(err)
	}
	mustAllocate(t, a, req(3, 1))
}
