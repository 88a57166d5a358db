package faults

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/multinic/multinic/internal/testing/harness"
	"github.com/multinic/multinic/ipam/api"
	"github.com/multinic/multinic/netconf"
)

// The fail-closed cases of issue 11 that belong to the CNI GC verb, the journal and the socket: each drives
// the real plugin and agent, injects the wrong input, and checks that no live pod lost its address, that no
// address is held twice, and (in cleanup) that nothing leaked once the pods are gone.

// requireKept fails t unless every pod still holds, in the agent, the address its ADD returned on each of
// its attachments, and no address is held twice.
func requireKept(t *testing.T, node *harness.Node, pods ...*harness.Pod) {
	t.Helper()
	all, err := node.Allocations()
	if err != nil {
		t.Fatalf("list allocations: %v", err)
	}
	holders := map[string]string{}
	for _, a := range all {
		if prev, dup := holders[a.Address.String()]; dup {
			t.Errorf("address %s held twice: %s and %s/%s", a.Address, prev, a.ContainerID, a.IfName)
		}
		holders[a.Address.String()] = a.ContainerID + "/" + a.IfName
	}
	for _, p := range pods {
		for i, att := range p.Attachments {
			if i >= len(p.Results) {
				continue
			}
			want := p.Results[i].IPs[0].Address.IP.String()
			if got := holders[want]; got != p.ContainerID+"/"+att.IfName {
				t.Errorf("pod %s lost %s on %s: the agent has it held by %q", p.Name, want, att.IfName, got)
			}
		}
		if err := p.Check(); err != nil {
			t.Errorf("CHECK of live pod %s: %v", p.Name, err)
		}
	}
}

// TestCNIGCOtherNetwork (item 1): two networks on one card and mode, the published one and a hand-written
// one. The runtime's GC of each lists only its own network's attachments; neither may take the other's.
func TestCNIGCOtherNetwork(t *testing.T) {
	fc := newFaultCase(t, "cni-gc-other-network", netconf.ModeExclusive,
		"CNI GC of a second network on the same card and mode, each listing only its own attachments")
	byHand := exclusive
	byHand.Network = "multinic-card1-by-hand"
	for i := range rounds() {
		published := fc.newPod(t, fmt.Sprintf("pub%d", i))
		if _, err := published.Attach(exclusive); err != nil {
			t.Fatal(err)
		}
		hand := fc.newPod(t, fmt.Sprintf("hand%d", i))
		d, err := attachTimed(hand, byHand)
		fc.run.addResult(d, err)
		if err != nil {
			t.Fatal(err)
		}
		for _, gc := range []struct {
			att harness.Attachment
			pod *harness.Pod
		}{{byHand, hand}, {exclusive, published}} {
			gc.att.Valid = []types.GCAttachment{{ContainerID: gc.pod.ContainerID, IfName: gc.att.IfName}}
			if _, err := gc.pod.CNI("GC", gc.att, nil); err != nil {
				t.Errorf("GC of network %v: %v", gc.att.NetConf(fc.node.Socket)["name"], err)
			}
		}
		requireKept(t, fc.node, published, hand)
		fc.note("both pods kept their ENI through both networks' GC")
		fc.endRound(t, i, published, hand)
	}
	fc.finish(t)
}

// TestJournalReplayAtStart (item 7): the agent is killed (SIGKILL) and the runtime DELs a pod, so the plugin
// journals the release. The agent restarts and no plugin runs again: the agent itself must free the address
// before it answers, so its very first answer no longer lists it.
func TestJournalReplayAtStart(t *testing.T) {
	fc := newFaultCase(t, "journal-replay", netconf.ModeExclusive, "agent SIGKILLed, pod DELed (release journaled), agent started, no further CNI call")
	for i := range rounds() {
		live := fc.newPod(t, fmt.Sprintf("live%d", i))
		if _, err := live.Attach(exclusive); err != nil {
			t.Fatal(err)
		}
		gone := fc.newPod(t, fmt.Sprintf("gone%d", i))
		if _, err := gone.Attach(exclusive); err != nil {
			t.Fatal(err)
		}
		pid := fc.node.AgentPID()
		if pid == 0 {
			t.Fatal("agent not running")
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatalf("kill agent: %v", err)
		}
		// StopAgent reaps the dead agent (and says it had died by itself).
		if err := fc.node.StopAgent(); err == nil {
			t.Errorf("StopAgent after SIGKILL: no error, want one saying the agent had exited")
		}
		start := time.Now()
		err := gone.Del()
		fc.run.addResult(time.Since(start), err)
		if err != nil {
			t.Fatalf("DEL with the agent down: %v, want success (journaled)", err)
		}
		if j, err := journaled(map[string]bool{gone.ContainerID: true}); err != nil || len(j) != 1 {
			t.Fatalf("journal after DEL with the agent down: %v (%v), want the pod's record", j, err)
		}
		if err := fc.node.StartAgent(); err != nil {
			t.Fatal(err)
		}
		first, err := firstAnswer(fc.node)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range first {
			if a.ContainerID == gone.ContainerID {
				t.Errorf("the restarted agent's first answer lists the DELed pod's address %s", a.Address)
			}
		}
		if err := fc.node.WaitReady(); err != nil {
			t.Fatal(err)
		}
		if _, held, err := fc.node.Allocation(gone.ContainerID, exclusive.IfName); err != nil || held {
			t.Errorf("after the restart the agent still holds the DELed pod's address (err %v)", err)
		}
		if j, err := journaled(map[string]bool{gone.ContainerID: true}); err != nil || len(j) != 0 {
			t.Errorf("journal after the restart: %v (%v), want it empty", j, err)
		}
		requireKept(t, fc.node, live)
		fc.note("the ADD columns are the DEL under the fault (journaled, success); the restarted agent freed the journaled address before answering")
		fc.endRound(t, i, live, gone)
	}
	fc.finish(t)
}

// firstAnswer asks a starting agent for its allocations until it answers, and returns its first answer.
func firstAnswer(node *harness.Node) ([]api.Allocation, error) {
	deadline := time.Now().Add(waitTimeout() + 30*time.Second)
	for {
		all, err := node.Allocations()
		if err == nil {
			return all, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("the restarted agent never answered: %w", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestAllocationCap (the socket): a buggy local client allocates in a loop. The agent's --max-allocations
// stops it, an ADD beyond the cap gets CNI code 103, the live pod keeps its address, and once the client
// gives back what it took the next ADD works.
func TestAllocationCap(t *testing.T) {
	const maxAllocs = 3
	fc := newFaultCase(t, "allocation-cap", netconf.ModeExclusive,
		fmt.Sprintf("a local client allocating in a loop, --max-allocations %d", maxAllocs),
		"--max-allocations", fmt.Sprint(maxAllocs))
	for i := range rounds() {
		live := fc.newPod(t, fmt.Sprintf("live%d", i))
		if _, err := live.Attach(exclusive); err != nil {
			t.Fatal(err)
		}
		var taken []api.ReleaseRequest
		var refusal error
		for k := range 50 {
			ctx, cancel := context.WithTimeout(context.Background(), waitTimeout()+5*time.Second)
			req := api.AllocateRequest{Card: card, ContainerID: fmt.Sprintf("buggy-%d-%d", i, k), IfName: "net1",
				PodRef: api.PodRef{PodNamespace: "default", PodName: fmt.Sprintf("buggy-%d", k)}}
			_, err := fc.node.Client.Allocate(ctx, req)
			cancel()
			if err != nil {
				refusal = err
				break
			}
			taken = append(taken, api.ReleaseRequest{ContainerID: req.ContainerID, IfName: req.IfName})
		}
		if !errors.Is(refusal, api.ErrLimit) || len(taken) != maxAllocs-1 {
			t.Errorf("buggy client: %d allocations, then %v; want %d, then the limit", len(taken), refusal, maxAllocs-1)
		}
		next := fc.newPod(t, fmt.Sprintf("next%d", i))
		d, err := attachTimed(next, exclusive)
		fc.run.addResult(d, err)
		if code, msg := cniError(err); code != api.CNIAllocationLimit {
			t.Errorf("ADD beyond the cap: code %d (%s), want %d", code, msg, api.CNIAllocationLimit)
		}
		requireKept(t, fc.node, live)
		for _, r := range taken {
			if _, err := fc.node.Client.Release(context.Background(), r); err != nil {
				t.Errorf("release %s: %v", r.ContainerID, err)
			}
		}
		if err := next.Del(); err != nil {
			t.Errorf("DEL of the refused ADD: %v", err)
		}
		roundPods := []*harness.Pod{live, next, fc.recover(t, i, exclusive, "ADD once the client gave its addresses back")}
		requireKept(t, fc.node, live)
		fc.note("the cap stopped the client; the live pod kept its ENI")
		fc.endRound(t, i, roundPods...)
	}
	fc.finish(t)
}
