package faults

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/multinic/multinic/e2e/harness"
	"github.com/multinic/multinic/internal/nettest"
	"github.com/multinic/multinic/ipam/api"
	"github.com/multinic/multinic/ipam/store"
	"github.com/multinic/multinic/plugin"
)

// The fail-closed cases of issue 11 that belong to the ENI manager and recovery: each drives the real
// plugin and agent, takes away what the agent knows, and checks that no live pod lost its address or ENI,
// that no address is held twice, and (in cleanup) that nothing leaked once the pods are gone.

// heldBy indexes the agent's allocations by address, failing t on an address held twice.
func heldBy(t *testing.T, node *harness.Node) map[string]api.Allocation {
	t.Helper()
	all, err := node.Allocations()
	if err != nil {
		t.Fatalf("list allocations: %v", err)
	}
	out := map[string]api.Allocation{}
	for _, a := range all {
		if prev, dup := out[a.Address.String()]; dup {
			t.Errorf("address %s held twice: %s/%s and %s/%s", a.Address, prev.ContainerID, prev.IfName, a.ContainerID, a.IfName)
		}
		out[a.Address.String()] = a
	}
	return out
}

// TestRecoverCheckpoint (item 5): the agent's checkpoint is deleted under running pods. Started with
// --recover, the agent rebuilds it from EC2 and the pod netns: every pod keeps its address and its ENI,
// and the next pod gets another address (exclusive: another ENI). The recovered allocations are freed by
// GC once their netns is gone (the DEL's container ID is not knowable from a netns). The ipvlan case
// needs the test VM (make test-vm).
func TestRecoverCheckpoint(t *testing.T) {
	t.Run("exclusive", func(t *testing.T) { runRecover(t, exclusive, "recover-checkpoint") })
	t.Run("ipvlan", func(t *testing.T) {
		nettest.RequireLinkType(t, "ipvlan")
		runRecover(t, shared, "recover-checkpoint-ipvlan")
	})
}

func runRecover(t *testing.T, att harness.Attachment, fault string) {
	nettest.RequireRoot(t)
	region := harness.NewRegion(t, regionConfig("--gc-interval", "1s"))
	node := region.Node(0)
	w := newWatch(t, region, node)
	run := newRun(t, fault, att.Mode, "checkpoint deleted under 2 running pods, agent restarted with --recover")
	var notes []string
	for i := range rounds() {
		pods := []*harness.Pod{w.newPod(t, fmt.Sprintf("a%d", i)), w.newPod(t, fmt.Sprintf("b%d", i))}
		before := map[string]api.Allocation{}
		for _, p := range pods {
			if _, err := p.Attach(att); err != nil {
				t.Fatal(err)
			}
			al, ok, err := node.Allocation(p.ContainerID, att.IfName)
			if err != nil || !ok {
				t.Fatalf("allocation of %s: %v %v", p.Name, ok, err)
			}
			before[p.Name] = al
		}
		if err := node.StopAgent(); err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(filepath.Join(node.StateDir, store.CheckpointFile)); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		err := node.StartAgentWith("--recover")
		if err == nil {
			err = node.WaitReady()
		}
		run.addResult(time.Since(start), err)
		if err != nil {
			b, _ := os.ReadFile(node.AgentLog())
			t.Fatalf("agent with --recover: %v\n%s", err, b[max(0, len(b)-3000):])
		}
		held := heldBy(t, node)
		for _, p := range pods {
			want := before[p.Name]
			got, ok := held[want.Address.String()]
			if !ok || got.ENIID != want.ENIID || got.Netns != p.NetNSPath || got.IfName != att.IfName || got.Exclusive != want.Exclusive {
				t.Errorf("pod %s: after recovery %s is held as %+v (%v), want ENI %s in netns %s", p.Name, want.Address, got, ok, want.ENIID, p.NetNSPath)
			}
		}
		next := w.recover(t, run, i, att, "ADD of a new pod after recovery")
		heldBy(t, node)
		if al, ok, err := node.Allocation(next.ContainerID, att.IfName); err != nil || !ok {
			t.Errorf("new pod's allocation: %v %v", ok, err)
		} else {
			for _, p := range pods {
				if b := before[p.Name]; al.Address == b.Address || (att.Mode == plugin.ModeExclusive && al.ENIID == b.ENIID) {
					t.Errorf("new pod got %s on %s, which pod %s holds", al.Address, al.ENIID, p.Name)
				}
			}
		}
		notes = append(notes, "both pods kept their ENI and address; the next pod got another")
		w.endRound(t, i, append(pods, next)...)
	}
	l, details := w.cleanup(t)
	run.finish(l, details, strings.Join(dedup(notes), "; "))
}
