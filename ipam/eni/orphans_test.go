package eni

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/multinic/multinic/internal/testing/fakeec2"
)

// TestSweepOrphans: ENIs this cluster's agents created and tagged for a node that died before attaching
// them are deleted by any agent's sweep once older than OrphanAge; two agents sweeping at once delete
// each orphan once between them. Young ENIs, attached ones, other clusters', no_manage and EFA ENIs are
// never touched; an ENI without a creation tag counts from when the sweeping agent first saw it.
func TestSweepOrphans(t *testing.T) {
	const age = 400 * time.Millisecond
	e := newEnv(t, envOpts{typ: "trn1.32xlarge"})
	cfg := e.cardOneConfig()
	cfg.OrphanAge, cfg.OrphanSweepInterval = age, -1
	m1 := e.start(cfg, e.alloc)
	waitReady(t, m1, 5*time.Second)
	cfg2 := cfg // a second agent: on another card of the same instance, so the two share no ENI
	cfg2.ManagedCards, cfg2.Cards = []int{2}, map[int]CardConfig{2: {SubnetID: fakeec2.CardSubnetID(2)}}
	m2 := e.start(cfg2, e.newAllocatorOn(newMemStore()))
	waitReady(t, m2, 5*time.Second)

	old := time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)
	young := time.Now().Add(time.Hour).UTC().Format(time.RFC3339) // young whatever the machine's pace
	tags := func(extra map[string]string) map[string]string {
		t := map[string]string{TagCluster: testCluster, TagManaged: "true", TagNode: "i-0dead00000000000", TagCard: "1"}
		for k, v := range extra {
			t[k] = v
		}
		return t
	}
	orphan := []string{
		e.foreignENI(1, -1, tags(map[string]string{TagCreatedAt: old})),
		e.foreignENI(1, -1, tags(map[string]string{TagCreatedAt: old, TagMode: ModeExclusive})),
	}
	untagged := e.foreignENI(1, -1, tags(nil)) // an older agent's: no creation time
	keep := map[string]string{
		e.foreignENI(1, -1, tags(map[string]string{TagCreatedAt: young})):                                                    "young",
		e.foreignENI(1, 5, tags(map[string]string{TagCreatedAt: old})):                                                       "attached",
		e.foreignENI(1, -1, map[string]string{TagCluster: "other", TagManaged: "true", TagCard: "1", TagCreatedAt: old}):     "other cluster",
		e.foreignENI(1, -1, tags(map[string]string{TagCreatedAt: old, TagNoManage: "true"})):                                 "no_manage",
		e.foreignENI(1, -1, map[string]string{TagCard: "1"}):                                                                 "untagged",
		e.foreignENI(1, -1, map[string]string{TagCluster: testCluster, TagManaged: "true", TagCard: "1", TagCreatedAt: old}): "no node tag: a launch template's, left by an instance without DeleteOnTermination",
	}
	out, err := e.ec2.CreateNetworkInterface(context.Background(), &ec2.CreateNetworkInterfaceInput{
		SubnetId: aws.String(fakeec2.CardSubnetID(1)), InterfaceType: types.NetworkInterfaceCreationTypeEfa,
		TagSpecifications: []types.TagSpecification{{ResourceType: types.ResourceTypeNetworkInterface,
			Tags: []types.Tag{{Key: aws.String(TagCluster), Value: aws.String(testCluster)}, {Key: aws.String(TagManaged), Value: aws.String("true")},
				{Key: aws.String(TagCard), Value: aws.String("1")}, {Key: aws.String(TagCreatedAt), Value: aws.String(old)}}}}})
	if err != nil {
		t.Fatal(err)
	}
	keep[aws.ToString(out.NetworkInterface.NetworkInterfaceId)] = "efa"
	e.waitDescribed() // a dead node's orphans are older than EC2's lag

	ctx := context.Background()
	var wg sync.WaitGroup
	var total atomic.Int64
	for _, m := range []*Manager{m1, m2} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n, err := m.SweepOrphans(ctx)
			if err != nil {
				t.Errorf("sweep: %v", err)
			}
			total.Add(int64(n))
		}()
	}
	wg.Wait()
	if total.Load() != int64(len(orphan)) {
		t.Errorf("two sweeps deleted %d, want %d", total.Load(), len(orphan))
	}
	for _, id := range orphan {
		if _, ok := e.eniState(id); ok {
			t.Errorf("orphan %s not deleted", id)
		}
	}
	if _, ok := e.eniState(untagged); !ok {
		t.Fatal("an orphan without a creation tag deleted on first sight")
	}
	time.Sleep(age)
	if _, err := m1.SweepOrphans(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := e.eniState(untagged); ok {
		t.Errorf("orphan %s without a creation tag, seen for %s, not deleted", untagged, age)
	}
	for id, why := range keep {
		if _, ok := e.eniState(id); !ok {
			t.Errorf("%s ENI %s deleted", why, id)
		}
	}
	// The agents' own ENIs are attached and theirs: untouched.
	for id, x := range e.ours() {
		if x.Status != "in-use" {
			t.Errorf("agent's ENI %s: %s", id, x.Status)
		}
	}
}
