package backend

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/multinic/multinic/ipam/api"
)

// fakeClaims holds claim reservations by pod UID and card: the key the pod's attachment takes over.
// Requests whose container is in own are a claim's own (prepare's): allocated as they are.
type fakeClaims struct {
	byPod map[string]map[int]api.ReleaseRequest
	own   map[string]bool
	calls int
}

func (f *fakeClaims) Reservation(_ context.Context, req api.AllocateRequest) (api.ReleaseRequest, bool, error) {
	f.calls++
	if f.own[req.ContainerID] {
		return api.ReleaseRequest{}, false, nil
	}
	res, ok := f.byPod[req.PodUID][req.Card]
	if !ok {
		return api.ReleaseRequest{}, false, fmt.Errorf("card %d: no claim of the pod holds it: %w", req.Card, api.ErrNotClaimed)
	}
	return res, true, nil
}

// fakeInterfaces records what the backend reports of claim devices' pod interfaces.
type fakeInterfaces struct {
	mu   sync.Mutex
	seen []string
}

func (f *fakeInterfaces) Attached(pod string, card int, ifName string) {
	f.add("attached", pod, card, ifName)
}
func (f *fakeInterfaces) Detached(pod string, card int, ifName string) {
	f.add("detached", pod, card, ifName)
}

func (f *fakeInterfaces) add(what, pod string, card int, ifName string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.seen = append(f.seen, fmt.Sprintf("%s %s card %d %s", what, pod, card, ifName))
}

// take returns what was reported since the last take.
func (f *fakeInterfaces) take() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := f.seen
	f.seen = nil
	return out
}

// With DRA on: the attachment takes over its claim's prepared address (no second address, one write), a
// second sandbox of the pod whose reservation is gone gets a new one, an unclaimed card is refused with
// CNI code 104 naming the card, and a failure after the takeover gives the address back to the claim.
// The takeover is reported as the pod's interface of its claim device on the card, and its DEL as gone;
// nothing else is reported attached.
func TestAllocateTakesOverClaim(t *testing.T) {
	ctx := context.Background()
	claims := &fakeClaims{own: map[string]bool{"dra-c1": true}, byPod: map[string]map[int]api.ReleaseRequest{
		"uid-p1": {1: {ContainerID: "dra-c1", IfName: "card1"}},
	}}
	ifs := &fakeInterfaces{}
	ta := newTestBackend(t, newFakePools(1, 2), map[int]int{1: 3, 2: 3}, func(c *Config) { c.Claims, c.Interfaces = claims, ifs })
	prepared, err := ta.Allocate(ctx, api.AllocateRequest{Card: 1, ContainerID: "dra-c1", IfName: "card1", Network: "multinic.io-dra"})
	if err != nil {
		t.Fatal(err)
	}

	r := req(1, "sandbox-1", "net1", "p1")
	r.Netns, r.Network = "/var/run/netns/cni-1", "multinic-card-1"
	got, err := ta.Allocate(ctx, r)
	if err != nil || got.Address != prepared.Address {
		t.Fatalf("attachment: %+v, %v; want the claim's %s", got.Address, err, prepared.Address)
	}
	if _, ok := ta.alloc.Lookup("dra-c1", "card1"); ok {
		t.Error("the claim's key still holds its allocation after the takeover")
	}
	if al, ok := ta.alloc.Lookup("sandbox-1", "net1"); !ok || al.Netns != r.Netns || al.PodUID != "uid-p1" {
		t.Errorf("the attachment's allocation: %+v %v", al, ok)
	}
	if s := ta.alloc.Stats(1); s.Allocated != 1 {
		t.Errorf("card 1: %d allocated, want 1 (the claim's address, not a second)", s.Allocated)
	}
	if got, want := ifs.take(), []string{"attached uid-p1 card 1 net1"}; !slices.Equal(got, want) {
		t.Errorf("reported %q after the takeover (and the claim's own prepare), want %q", got, want)
	}
	// ADD again: the same answer, without asking the claims again.
	calls := claims.calls
	if again, err := ta.Allocate(ctx, r); err != nil || again.Address != got.Address || claims.calls != calls {
		t.Errorf("ADD again: %s, %v, %d claim checks; want %s, none", again.Address, err, claims.calls-calls, got.Address)
	}

	// A new sandbox of the pod after the first's DEL: the claim still holds the card, its reservation is gone.
	if got := ifs.take(); len(got) != 0 {
		t.Errorf("ADD again reported %q, want nothing new", got)
	}
	if _, err := ta.Release(ctx, api.ReleaseRequest{ContainerID: "sandbox-1", IfName: "net1"}); err != nil {
		t.Fatal(err)
	}
	if got, want := ifs.take(), []string{"detached uid-p1 card 1 net1"}; !slices.Equal(got, want) {
		t.Errorf("reported %q after the DEL, want %q", got, want)
	}
	if again, err := ta.Allocate(ctx, req(1, "sandbox-2", "net1", "p1")); err != nil || !again.Address.IsValid() {
		t.Errorf("second sandbox: %+v, %v", again, err)
	}
	if got := ifs.take(); len(got) != 0 {
		t.Errorf("a new address (no takeover) reported %q, want nothing: the claim's status has no address of it", got)
	}

	// Card 2 is in no claim of the pod: refused, nothing taken, the pod told why.
	_, err = ta.Allocate(ctx, req(2, "sandbox-2", "net2", "p1"))
	if !errors.Is(err, api.ErrNotClaimed) || api.CNICode(err) != api.CNICardNotClaimed || !strings.Contains(err.Error(), "card 2") {
		t.Errorf("unclaimed card: %v (CNI %d), want CNI %d naming card 2", err, api.CNICode(err), api.CNICardNotClaimed)
	}
	if s := ta.alloc.Stats(2); s.Allocated != 0 {
		t.Errorf("card 2: %d allocated after a refusal", s.Allocated)
	}
	if got := gaugeValue(t, ta.Backend, "multinic_allocations_total", map[string]string{"result": "not_claimed"}); got != 1 {
		t.Errorf("multinic_allocations_total{result=not_claimed} = %v, want 1", got)
	}
	// Over the socket, as the plugin sees it.
	c := serve(t, ta.Backend)
	if _, err := c.Allocate(ctx, req(2, "sandbox-3", "net2", "p1")); !errors.Is(err, api.ErrNotClaimed) || api.CNICode(err) != api.CNICardNotClaimed {
		t.Errorf("over the socket: %v, want code not-claimed", err)
	}
}

// A takeover whose answer then fails (the ENI unknown) gives the address back to the claim, not to the pool.
func TestAllocateTakeoverRollsBackToClaim(t *testing.T) {
	ctx := context.Background()
	claims := &fakeClaims{own: map[string]bool{"dra-c1": true}, byPod: map[string]map[int]api.ReleaseRequest{
		"uid-p1": {1: {ContainerID: "dra-c1", IfName: "card1"}},
	}}
	fp := newFakePools(1)
	ifs := &fakeInterfaces{}
	ta := newTestBackend(t, fp, map[int]int{1: 2}, func(c *Config) { c.Claims, c.Interfaces = claims, ifs })
	prepared, err := ta.Allocate(ctx, api.AllocateRequest{Card: 1, ContainerID: "dra-c1", IfName: "card1", Network: "multinic.io-dra"})
	if err != nil {
		t.Fatal(err)
	}
	fp.mu.Lock()
	delete(fp.enis, eniOf(1))
	fp.mu.Unlock()
	if _, err := ta.Allocate(ctx, req(1, "sandbox-1", "net1", "p1")); err == nil {
		t.Fatal("allocate on an unknown ENI succeeded")
	}
	al, ok := ta.alloc.Lookup("dra-c1", "card1")
	if !ok || al.Address != prepared.Address || al.PodUID != "" || al.Network != "multinic.io-dra" {
		t.Errorf("the claim's allocation after the failed takeover: %+v %v, want %s back as the claim held it", al, ok, prepared.Address)
	}
	if n := len(ta.alloc.List()); n != 1 {
		t.Errorf("%d allocations, want the claim's only", n)
	}
	// The reservation went back to the claim before it was ever reported as the pod's interface.
	if got := ifs.take(); len(got) != 0 {
		t.Errorf("a rolled-back takeover reported %q, want nothing", got)
	}
}
