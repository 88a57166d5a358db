package eni

import (
	"context"
	"encoding/json"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/multinic/multinic/internal/testing/fakeec2"
	"github.com/multinic/multinic/ipam/api"
	"github.com/multinic/multinic/ipam/store"
)

// TestRecentRoundTrip: the memory of recent EC2 changes, saved with the checkpoint (JSON) and loaded by
// the next process, comes back as it was, the ENIs marked as the earlier process's; what is older than the
// settle time is not saved, and a burst of changes is saved at most maxRecent entries of each kind.
func TestRecentRoundTrip(t *testing.T) {
	a := func(s string) netip.Addr { return netip.MustParseAddr(s) }
	r := newRecent(time.Hour)
	r.assign("eni-1", a("10.0.1.5"), a("10.0.1.6"))
	r.assign("eni-1", a("10.0.1.7"))
	r.unassign("eni-1", a("10.0.1.6"))
	r.create(store.RecentENI{ID: "eni-1", Card: 1, MAC: "02:00:00:00:00:01", SubnetID: "subnet-1", Primary: a("10.0.1.4")})
	r.attached("eni-1", 2, "eni-attach-1")
	r.create(store.RecentENI{ID: "eni-2", Card: 1})
	r.create(store.RecentENI{ID: "eni-3", Card: 1})
	r.detach("eni-3")

	b, err := json.Marshal(r.snapshot())
	if err != nil {
		t.Fatal(err)
	}
	var saved store.Recent
	if err := json.Unmarshal(b, &saved); err != nil {
		t.Fatal(err)
	}
	if len(saved.Assigned) != 2 || len(saved.Unassigned) != 1 {
		t.Errorf("saved %d assign and %d unassign calls, want 2 and 1 (one entry per call): %s", len(saved.Assigned), len(saved.Unassigned), b)
	}
	next := newRecent(time.Hour)
	next.load(&saved)
	v := next.view()
	for _, ad := range []string{"10.0.1.5", "10.0.1.7"} {
		if as, ok := v.assigned[a(ad)]; !ok || as.eniID != "eni-1" {
			t.Errorf("assigned %s: %+v %v, want on eni-1", ad, as, ok)
		}
	}
	if as, ok := v.unassigned[a("10.0.1.6")]; !ok || as.eniID != "eni-1" || len(v.assigned) != 2 {
		t.Errorf("unassigned 10.0.1.6: %+v %v; assigned %v", as, ok, v.assigned)
	}
	c := v.created["eni-1"]
	if !c.inherited || c.rec.Device != 2 || c.rec.AttachmentID != "eni-attach-1" || c.rec.MAC != "02:00:00:00:00:01" ||
		c.rec.Primary != a("10.0.1.4") || c.rec.SubnetID != "subnet-1" {
		t.Errorf("created eni-1 loaded as %+v", c)
	}
	if c := v.created["eni-2"]; !c.inherited || c.rec.AttachmentID != "" {
		t.Errorf("created, never attached eni-2 loaded as %+v", c)
	}
	if _, ok := v.detached["eni-3"]; !ok || len(v.created) != 2 {
		t.Errorf("detached eni-3 not remembered as such: %v, created %v", v.detached, v.created)
	}

	// Kept between checkpoint writes while nothing changes; a change shows in the next one.
	if s1, s2 := r.snapshot(), r.snapshot(); s1 != s2 {
		t.Error("snapshot made again with no change in between")
	}
	r.assign("eni-2", a("10.0.2.5"))
	if s := r.snapshot(); len(s.Assigned) != 3 || s.Assigned[0].ENIID != "eni-2" {
		t.Errorf("snapshot after an assign: %+v, want it first of 3 calls", s.Assigned)
	}

	// Older than the settle time: neither saved nor loaded.
	short := newRecent(time.Millisecond)
	short.assign("eni-1", a("10.0.1.5"))
	time.Sleep(5 * time.Millisecond)
	if s := short.snapshot(); s != nil {
		t.Errorf("expired memory saved: %+v", s)
	}
	old := newRecent(time.Millisecond)
	old.load(&saved)
	if v := old.view(); len(v.assigned)+len(v.unassigned)+len(v.created)+len(v.detached) != 0 {
		t.Errorf("expired memory loaded: %+v", v)
	}

	// Bounded: the newest maxRecent calls.
	burst := newRecent(time.Hour)
	ip := a("10.1.0.0")
	for range maxRecent + 10 {
		ip = ip.Next()
		burst.assign("eni-1", ip)
		time.Sleep(time.Microsecond) // one call, one time
	}
	s := burst.snapshot()
	if len(s.Assigned) != maxRecent || s.Assigned[0].Addresses[0] != ip {
		t.Errorf("a burst of %d calls saved as %d entries, newest %v; want %d, newest %s", maxRecent+10, len(s.Assigned),
			s.Assigned[0].Addresses, maxRecent, ip)
	}
}

// TestRestartWithinLag: the agent restarts before EC2's Describe shows what it just did. Its memory of
// those changes comes back with the checkpoint: the new process adopts the ENIs it made (and makes none),
// keeps every allocation and assigned address, does not take back into the pool the addresses it gave
// back, and deletes an ENI the old process created but never attached.
func TestRestartWithinLag(t *testing.T) {
	const lag = 5 * time.Second
	e := newEnv(t, envOpts{faults: fakeec2.Faults{Lag: fakeec2.Duration(lag)}})
	cfg := e.cardOneConfig()
	cfg.WarmTarget, cfg.MinFree = ptr(2), ptr(1)
	cfg.SurplusDelay = -1 // surplus goes back at once
	m1 := e.start(cfg, e.alloc)
	waitReady(t, m1, 10*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var held, churn []api.Allocation
	for p, r := range []api.AllocateRequest{podReq(1, 1), exclusiveReq(2, 1), podReq(3, 1), podReq(4, 1), podReq(5, 1), podReq(6, 1)} {
		al, err := allocWait(ctx, m1, e.alloc, r)
		if err != nil {
			t.Fatal(err)
		}
		if p < 2 {
			held = append(held, al)
		} else {
			churn = append(churn, al)
		}
	}
	eventually(t, 5*time.Second, "refill", func() bool { return need(e.alloc, 1, 2, 1) == 0 })
	before := e.ec2Addresses(1)
	for _, al := range churn {
		if _, _, err := e.alloc.Release(al.ContainerID, al.IfName); err != nil {
			t.Fatal(err)
		}
	}
	m1.Kick(1)
	eventually(t, 5*time.Second, "surplus unassigned", func() bool { return len(e.ec2Addresses(1)) < len(before) })
	after := e.ec2Addresses(1)
	var unassigned []netip.Addr
	for a := range before {
		if _, ok := after[a]; !ok {
			unassigned = append(unassigned, a)
		}
	}
	// The old process created this one and died before attaching it.
	orphan := e.foreignENI(1, -1, map[string]string{TagCluster: testCluster, TagNode: e.inst, TagCard: "1", TagMode: ModeExclusive})
	m1.recent.create(store.RecentENI{ID: orphan, Card: 1})
	m1.saveRecent()
	m1.Stop()
	enis := e.ours()
	if e.srv.State().DescribedAt.IsZero() {
		t.Fatalf("the steps before the restart took longer than fake-ec2's %s lag: the restart would not be within it", lag)
	}

	a2 := e.newAllocator(0)
	m2 := e.start(cfg, a2)
	waitReady(t, m2, 10*time.Second)
	if n := m2.Stats().EC2.Calls["CreateNetworkInterface"]["ok"]; n != 0 {
		t.Errorf("restart within the lag created %d ENIs", n)
	}
	for id, x := range enis {
		if _, ok := m2.ENI(id); !ok && x.Status == "in-use" {
			t.Errorf("ENI %s not adopted", id)
		}
	}
	for _, al := range held {
		if got, ok := a2.Lookup(al.ContainerID, al.IfName); !ok || got.Address != al.Address || got.ENIID != al.ENIID {
			t.Errorf("allocation %s on %s lost over the restart: %+v %v", al.Address, al.ENIID, got, ok)
		}
	}
	for _, p := range a2.Known() {
		if slices.Contains(unassigned, p.Address) {
			t.Errorf("address %s given back to EC2 before the restart is in the pool again", p.Address)
		}
	}
	if _, ok := e.eniState(orphan); ok {
		t.Errorf("ENI %s the old process created and never attached not deleted", orphan)
	}
	e.waitDescribed()
	if err := m2.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	checkNoLeak(t, e, a2, 1)
}
