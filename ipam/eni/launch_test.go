package eni

import (
	"context"
	"maps"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"

	"github.com/multinic/multinic/internal/testing/fakeec2"
	"github.com/multinic/multinic/ipam/allocator"
)

// exampleLaunchTemplate is the README's launch template data for trn1.32xlarge: the primary on card 0 and
// a plain ENI with 8 secondary addresses at device index 1 of cards 1-7, tagged multinic.io/cluster=my-cluster.
const exampleLaunchTemplate = "../../manifests/examples/launch-template-trn1.json"

// launchEnv is an env whose instance was launched from the README's launch template data, plus extra.
func launchEnv(t *testing.T, extra ...fakeec2.LaunchNetworkInterface) (*env, string) {
	t.Helper()
	lt, err := fakeec2.LoadLaunchTemplateData(exampleLaunchTemplate)
	if err != nil {
		t.Fatal(err)
	}
	lt.NetworkInterfaces = append(lt.NetworkInterfaces, extra...)
	cluster := lt.TagSpecifications[0].Tags[0].Value
	if lt.TagSpecifications[0].Tags[0].Key != TagCluster {
		t.Fatalf("the example's first tag is %s, want %s", lt.TagSpecifications[0].Tags[0].Key, TagCluster)
	}
	return newEnv(t, envOpts{launch: lt}), cluster
}

// launchENIsByCard is the instance's launch ENIs (every ENI attached to it but the primary), by card and device.
func (e *env) launchENIs() map[[2]int]fakeec2.ENIState {
	out := map[[2]int]fakeec2.ENIState{}
	for _, x := range e.srv.State().ENIs {
		if x.InstanceID == e.inst && !x.Primary {
			out[[2]int{x.Card, x.Device}] = x
		}
	}
	return out
}

// mutatingCalls counts the mutating EC2 calls fake-ec2 got, by action.
func (e *env) mutatingCalls() map[string]int {
	out := map[string]int{}
	for action, byResult := range e.srv.State().Calls {
		for _, n := range byResult {
			if fakeec2.MutatingAction(action) {
				out[action] += n
			}
		}
	}
	return out
}

// TestLaunchENIs: the ENIs a launch template attached (tagged with the cluster, no node tag) are adopted
// and serve their cards' pools from their secondaries without one mutating EC2 call; a launch ENI that is
// EFA, on an unmanaged card, another cluster's or no_manage is left alone.
func TestLaunchENIs(t *testing.T) {
	e, cluster := launchEnv(t, fakeec2.LaunchNetworkInterface{NetworkCardIndex: 4, DeviceIndex: 0, InterfaceType: "efa", SubnetID: fakeec2.CardSubnetID(4)})
	otherCluster := e.foreignENI(2, 2, map[string]string{TagCluster: "other"})
	noManage := e.foreignENI(3, 2, map[string]string{TagCluster: cluster, TagNoManage: "true"})
	e.waitDescribed()
	before := e.launchENIs()
	calls0 := e.mutatingCalls()

	cfg := e.fastConfig(8)
	cfg.Cluster, cfg.ManagedCards = cluster, seq(1, 7) // card 7's launch ENI sits on a card not served
	m := e.start(cfg, e.alloc)
	waitReady(t, m, 30*time.Second)
	al, err := allocWait(context.Background(), m, e.alloc, podReq(1, 1))
	if err != nil {
		t.Fatal(err)
	}
	if want := before[[2]int{1, 1}]; al.ENIID != want.ID || !slices.Contains(want.SecondaryIPs, al.Address.String()) {
		t.Errorf("allocation %s on %s, want a secondary of the launch ENI %s %v", al.Address, al.ENIID, want.ID, want.SecondaryIPs)
	}
	for k := 1; k < 7; k++ {
		if got := e.alloc.Stats(k).Capacity; got != 8 {
			t.Errorf("card %d: capacity %d, want the launch ENI's 8 secondaries", k, got)
		}
	}
	if got := e.alloc.Stats(7).Capacity; got != 0 {
		t.Errorf("unmanaged card 7: capacity %d, want 0", got)
	}
	ctx := context.Background()
	if err := m.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := m.SweepOrphans(ctx); err != nil {
		t.Fatal(err)
	}
	if got := e.mutatingCalls(); !maps.Equal(got, calls0) {
		t.Errorf("mutating EC2 calls %v, want none beyond the test's own %v", got, calls0)
	}
	if n := len(e.ours()); n != 0 {
		t.Errorf("the agent made %d ENIs, want none", n)
	}
	after := e.launchENIs()
	if !reflect.DeepEqual(after, before) {
		t.Errorf("ENIs changed:\nbefore %+v\nafter  %+v", before, after)
	}
	for _, id := range []string{otherCluster, noManage, before[[2]int{4, 0}].ID, before[[2]int{7, 1}].ID} {
		if m.hasENI(id) {
			t.Errorf("%s adopted, want it left alone", id)
		}
	}
}

// TestLaunchENIsNeverDetached: on shrink the agent gives the launch ENI's surplus addresses back, as on any
// of its ENIs, but never detaches or deletes it, nor changes its DeleteOnTermination (false here, as the
// template said); an exclusive launch ENI (multinic.io/mode=exclusive) stays past the surplus delay.
func TestLaunchENIsNeverDetached(t *testing.T) {
	no := false
	e := newEnv(t, envOpts{launch: fakeec2.LaunchTemplateData{
		NetworkInterfaces: []fakeec2.LaunchNetworkInterface{{SubnetID: fakeec2.CardSubnetID(0)},
			{NetworkCardIndex: 1, DeviceIndex: 1, SubnetID: fakeec2.CardSubnetID(1), SecondaryPrivateIPAddressCount: 10, DeleteOnTermination: &no}},
		TagSpecifications: []fakeec2.LaunchTagSpecification{{ResourceType: "network-interface", Tags: []fakeec2.LaunchTag{{Key: TagCluster, Value: testCluster}}}},
	}})
	excl := e.foreignENI(2, 1, map[string]string{TagCluster: testCluster, TagMode: ModeExclusive})
	st, _ := e.eniState(excl)
	if _, err := e.ec2.UnassignPrivateIpAddresses(context.Background(), &ec2.UnassignPrivateIpAddressesInput{
		NetworkInterfaceId: aws.String(excl), PrivateIpAddresses: st.SecondaryIPs}); err != nil {
		t.Fatal(err) // an exclusive ENI hands its pod the primary address: no secondaries
	}
	e.waitDescribed() // attached before the agent starts, as by the launch
	cfg := e.fastConfig(3)
	cfg.ManagedCards, cfg.WarmTarget, cfg.MinFree, cfg.SurplusDelay = []int{1, 2}, ptr(2), ptr(1), 50*time.Millisecond
	m := e.start(cfg, e.alloc)
	waitReady(t, m, 30*time.Second)
	launch := e.launchENIs()[[2]int{1, 1}]
	eventually(t, 10*time.Second, "card 1's surplus given back", func() bool {
		x, _ := e.eniState(launch.ID)
		return len(x.SecondaryIPs) == 2 && e.alloc.Stats(1).Capacity == 2
	})
	eventually(t, 10*time.Second, "the exclusive launch ENI registered", func() bool {
		return slices.ContainsFunc(e.alloc.FreeExclusive(2), func(p allocator.PoolAddress) bool { return p.ENIID == excl })
	})
	time.Sleep(time.Second) // 20 surplus delays, 5 refill intervals
	for _, id := range []string{launch.ID, excl} {
		x, _ := e.eniState(id)
		if x.Status != "in-use" || x.InstanceID != e.inst || x.DeleteOnTermination {
			t.Errorf("%s: %s on %s, DeleteOnTermination %v: want it attached as launched", id, x.Status, x.InstanceID, x.DeleteOnTermination)
		}
	}
	if got := e.mutatingCalls(); got["DetachNetworkInterface"]+got["DeleteNetworkInterface"] != 0 {
		t.Errorf("mutating calls %v: want no detach or delete", got)
	}
}

// TestLaunchENIsRestart: a restarted agent adopts the launch ENIs again, with its checkpoint (the pod's
// address stays allocated) and without it (the addresses become the pool), still without a mutating call.
func TestLaunchENIsRestart(t *testing.T) {
	e, cluster := launchEnv(t)
	cfg := e.fastConfig(8)
	cfg.Cluster = cluster
	m := e.start(cfg, e.alloc)
	waitReady(t, m, 30*time.Second)
	al, err := allocWait(context.Background(), m, e.alloc, podReq(1, 1))
	if err != nil {
		t.Fatal(err)
	}
	m.Stop()
	calls0 := e.mutatingCalls()

	withCheckpoint := e.newAllocator(0)
	m = e.start(cfg, withCheckpoint)
	waitReady(t, m, 30*time.Second)
	if st := withCheckpoint.Stats(1); st.Capacity != 8 || st.Allocated != 1 || !m.hasENI(al.ENIID) {
		t.Errorf("after a restart: card 1 %+v, launch ENI adopted %v; want 8 addresses, the pod's allocated", st, m.hasENI(al.ENIID))
	}
	m.Stop()
	fresh := e.newAllocatorOn(newMemStore())
	m = e.start(cfg, fresh)
	waitReady(t, m, 30*time.Second)
	if st := fresh.Stats(1); st.Capacity < 7 || !m.hasENI(al.ENIID) {
		t.Errorf("after a restart without checkpoint: card 1 %+v, launch ENI adopted %v", st, m.hasENI(al.ENIID))
	}
	if got := e.mutatingCalls(); !maps.Equal(got, calls0) {
		t.Errorf("mutating EC2 calls %v after the restarts, want %v", got, calls0)
	}
}

// hasENI: the manager holds id as one of its ENIs.
func (m *Manager) hasENI(id string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.enis[id] != nil
}
