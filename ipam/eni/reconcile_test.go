package eni

import (
	"context"
	"testing"
	"time"

	"github.com/multinic/multinic/internal/testing/fakeec2"
	"github.com/multinic/multinic/ipam/api"
)

func TestDeleteDetached(t *testing.T) {
	e := newEnv(t, envOpts{})
	ourTags := map[string]string{TagCluster: testCluster, TagNode: e.inst, TagCard: "1", TagMode: ModeShared}
	leftover := e.foreignENI(1, -1, ourTags)
	otherNode := e.foreignENI(1, -1, map[string]string{TagCluster: testCluster, TagNode: "i-other", TagCard: "1"})
	otherCluster := e.foreignENI(1, -1, map[string]string{TagCluster: "other", TagNode: e.inst, TagCard: "1"})
	noManage := e.foreignENI(1, -1, map[string]string{TagCluster: testCluster, TagNode: e.inst, TagCard: "1", TagNoManage: "true"})
	untagged := e.foreignENI(1, -1, nil)
	e.waitDescribed() // leftovers of an earlier agent are older than EC2's lag
	cfg := e.fastConfig(8)
	cfg.ManagedCards = []int{1}
	m := e.start(cfg, e.alloc)
	if _, ok := e.eniState(leftover); ok {
		t.Error("leftover ENI of this node not deleted")
	}
	for _, id := range []string{otherNode, otherCluster, noManage, untagged} {
		if _, ok := e.eniState(id); !ok {
			t.Errorf("ENI %s deleted, not ours", id)
		}
	}
	// A leftover made while running goes at the next pass.
	waitReady(t, m, 5*time.Second)
	late := e.foreignENI(1, -1, ourTags)
	e.waitDescribed()
	if err := m.DeleteDetached(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, ok := e.eniState(late); ok {
		t.Error("late leftover not deleted")
	}
}

// TestReconcileUnderLag: EC2's Describe lags behind its changes. Right after the manager gave surplus
// addresses back and assigned new ones, a reconcile must neither put the unassigned addresses back in
// the pool (a pod would get an address its ENI no longer has) nor drop the new ones, nor forget or
// delete an ENI it just created; its detached-ENI cleanup then must not delete that ENI.
func TestReconcileUnderLag(t *testing.T) {
	const lag = time.Second
	e := newEnv(t, envOpts{faults: fakeec2.Faults{Lag: fakeec2.Duration(lag)}})
	cfg := e.cardOneConfig()
	cfg.WarmTarget, cfg.MinFree, cfg.MaxBatch = ptr(2), ptr(1), 10
	cfg.SurplusDelay = -1 // surplus goes back at once
	m := e.start(cfg, e.alloc)
	waitReady(t, m, 10*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var als []api.Allocation
	for p := range 8 {
		al, err := allocWait(ctx, m, e.alloc, podReq(p, 1))
		if err != nil {
			t.Fatal(err)
		}
		als = append(als, al)
	}
	eventually(t, 5*time.Second, "refill", func() bool { return need(e.alloc, 1, 2, 1) == 0 })
	time.Sleep(lag + 100*time.Millisecond) // EC2's view has caught up
	for _, al := range als {
		if _, _, err := e.alloc.Release(al.ContainerID, al.IfName); err != nil {
			t.Fatal(err)
		}
	}
	m.Kick(1)
	eventually(t, 5*time.Second, "surplus unassigned", func() bool { return len(e.ec2Addresses(1)) <= 2 })
	// An exclusive ENI created now is missing from Describe for the lag.
	ex, err := allocWait(ctx, m, e.alloc, exclusiveReq(100, 1))
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Reconcile(ctx); err != nil { // Describe still lists what was unassigned, not the new ENI
		t.Fatal(err)
	}
	checkNoLeak(t, e, e.alloc, 1)
	if _, ok := m.ENI(ex.ENIID); !ok {
		t.Errorf("reconcile forgot exclusive ENI %s, created %s ago", ex.ENIID, lag)
	}
	if x, ok := e.eniState(ex.ENIID); !ok || x.Status != "in-use" {
		t.Errorf("exclusive ENI %s in use by a pod: %+v %v", ex.ENIID, x, ok)
	}
	// Every address the pool offers is on its ENI in EC2's true state.
	inEC2 := e.ec2Addresses(1)
	for p := range 4 {
		al, err := allocWait(ctx, m, e.alloc, podReq(200+p, 1))
		if err != nil {
			t.Fatal(err)
		}
		if inEC2 = e.ec2Addresses(1); inEC2[al.Address] != al.ENIID {
			t.Errorf("pod got %s on %s, which EC2 does not have there", al.Address, al.ENIID)
		}
	}
	time.Sleep(lag + 100*time.Millisecond)
	if err := m.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	checkNoLeak(t, e, e.alloc, 1)
}
