//go:build e2e

package dra

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/multinic/multinic/dra"
	"github.com/multinic/multinic/e2e/cluster"
	"github.com/multinic/multinic/internal/testing/fakeec2"
	"github.com/multinic/multinic/internal/testing/harness"
)

const (
	instanceType = "trn1.32xlarge"
	waitTimeout  = 90 * time.Second
)

// pcieRoots are the fake PCIe roots of the cards the tests give one; card 2 has none (a veth's link).
var pcieRoots = map[int]string{1: "pci0000:10", 3: "pci0000:30", 4: "pci0000:30", 5: "pci0000:30", 6: "pci0000:30"}

// startRegion starts nodes agents with --dra against c, their Node objects first (the resourceslice
// controller owns each slice by its Node).
func startRegion(ctx context.Context, t *testing.T, c *cluster.Cluster, nodes int, cards []int, extra ...string) *harness.Region {
	t.Helper()
	for i := range nodes {
		name := fmt.Sprintf("node%d", i+1) // harness.Node.Name
		if _, err := c.CreateNode(ctx, name, map[string]string{"kubernetes.io/hostname": name}); err != nil {
			t.Fatal(err)
		}
	}
	return harness.NewRegion(t, harness.Config{
		InstanceType: instanceType, Nodes: nodes, ManagedCards: cards, PCIeRoots: pcieRoots,
		AgentArgs: append([]string{
			"--kubeconfig", c.Kubeconfig, "--dra", "--publish-nads=false", "--node-resources=false",
			"--publish-interval", "1s",
		}, extra...),
	})
}

// nodeSlices are the ResourceSlices of driver multinic.io on node.
func nodeSlices(ctx context.Context, c *cluster.Cluster, node string) ([]resourceapi.ResourceSlice, error) {
	l, err := c.Client.ResourceV1().ResourceSlices().List(ctx, metav1.ListOptions{
		FieldSelector: resourceapi.ResourceSliceSelectorDriver + "=" + dra.DriverName + "," + resourceapi.ResourceSliceSelectorNodeName + "=" + node,
	})
	if err != nil {
		return nil, err
	}
	return l.Items, nil
}

// waitDevices waits until node's slices hold exactly the devices named want and returns the slice.
func waitDevices(ctx context.Context, t *testing.T, c *cluster.Cluster, node string, want []string) resourceapi.ResourceSlice {
	t.Helper()
	slices.Sort(want)
	deadline := time.Now().Add(waitTimeout)
	var last string
	for {
		ss, err := nodeSlices(ctx, c, node)
		if err == nil && len(ss) == 1 {
			var names []string
			for _, d := range ss[0].Spec.Devices {
				names = append(names, d.Name)
			}
			slices.Sort(names)
			if slices.Equal(names, want) {
				return ss[0]
			}
			last = fmt.Sprintf("devices %v", names)
		} else {
			last = fmt.Sprintf("%d slices, error %v", len(ss), err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("node %s: no slice with devices %v after %s; last: %s", node, want, waitTimeout, last)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// TestResourceSlice: each agent with --dra publishes one ResourceSlice of driver multinic.io for its node
// through the real kube-apiserver, with a shared (consumable capacity) and an exclusive device per managed
// card, the card's index, subnet, mode, bandwidth from DescribeInstanceTypes and PCIe root from the node's
// sysfs (the fake fabric's), owned by the Node; the fields of consumable capacity come back as sent, so the
// API server serves DRAConsumableCapacity. A restarted agent keeps the same one slice.
func TestResourceSlice(t *testing.T) {
	tools := cluster.RequireE2EOf(t, e2eDRA)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c := cluster.Start(t, cluster.Options{Tools: tools})
	cards := []int{1, 2, 3}
	region := startRegion(ctx, t, c, 2, cards)
	it, _ := fakeec2.LookupInstanceType(instanceType)

	var want []string
	for _, k := range cards {
		want = append(want, dra.DeviceName(k, "ipvlan"), dra.DeviceName(k, "exclusive"))
	}
	for _, n := range region.Nodes() {
		s := waitDevices(ctx, t, c, n.Name, want)
		if n.Index == 0 {
			b, _ := json.Marshal(s.Spec.Devices[:2])
			t.Logf("slice %s of %s, card 1's devices: %s", s.Name, n.Name, b)
		}
		if s.Spec.Pool.Name != n.Name || s.Spec.NodeName == nil || *s.Spec.NodeName != n.Name {
			t.Errorf("%s: pool %q node %v, want both %s", s.Name, s.Spec.Pool.Name, s.Spec.NodeName, n.Name)
		}
		if len(s.OwnerReferences) != 1 || s.OwnerReferences[0].Kind != "Node" || s.OwnerReferences[0].Name != n.Name {
			t.Errorf("%s: owners %+v, want Node %s", s.Name, s.OwnerReferences, n.Name)
		}
		for _, d := range s.Spec.Devices {
			card := int(*d.Attributes[dra.AttrCard].IntValue)
			mode := *d.Attributes[dra.AttrMode].StringValue
			if d.Name != dra.DeviceName(card, mode) {
				t.Errorf("%s: device %s has card %d mode %s", n.Name, d.Name, card, mode)
			}
			if got := d.Attributes[dra.AttrSubnet].StringValue; got == nil || *got != fakeec2.CardSubnetID(card) {
				t.Errorf("%s/%s: subnet %v, want %s", n.Name, d.Name, got, fakeec2.CardSubnetID(card))
			}
			if got := d.Attributes[dra.AttrBaselineMbps].IntValue; got == nil || *got != int64(it.CardBaselineGbps*1000) {
				t.Errorf("%s/%s: baselineMbps %v, want %v", n.Name, d.Name, got, it.CardBaselineGbps*1000)
			}
			root, hasRoot := d.Attributes[dra.AttrPCIeRoot]
			switch want, ok := pcieRoots[card]; {
			case ok && (!hasRoot || *root.StringValue != want):
				t.Errorf("%s/%s: pcieRoot %v, want %s", n.Name, d.Name, root.StringValue, want)
			case !ok && hasRoot:
				t.Errorf("%s/%s: pcieRoot %s, but card %d's link has no PCI device", n.Name, d.Name, *root.StringValue, card)
			}
			shared := d.AllowMultipleAllocations != nil && *d.AllowMultipleAllocations
			if shared != (mode == "ipvlan") {
				t.Errorf("%s/%s: allowMultipleAllocations %v in mode %s", n.Name, d.Name, d.AllowMultipleAllocations, mode)
			}
			if mode == "ipvlan" {
				cp, ok := d.Capacity[dra.CapAddresses]
				if !ok || cp.Value.Value() < 1 || cp.RequestPolicy == nil || cp.RequestPolicy.Default == nil || cp.RequestPolicy.Default.Value() != 1 {
					t.Errorf("%s/%s: capacity %+v, want addresses with one per allocation (dropped by the API server?)", n.Name, d.Name, d.Capacity)
				}
			}
		}
	}

	// A restart: the new agent's controller adopts the slice (same name, no second one).
	n := region.Node(0)
	before, _ := nodeSlices(ctx, c, n.Name)
	if err := n.StopAgent(); err != nil {
		t.Fatal(err)
	}
	if err := n.StartAgent(); err != nil {
		t.Fatal(err)
	}
	if err := n.WaitReady(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second) // a few publish passes
	after := waitDevices(ctx, t, c, n.Name, want)
	if len(before) != 1 || before[0].Name != after.Name {
		t.Errorf("slice after restart %s, before %v", after.Name, names(before))
	}
}

func names(ss []resourceapi.ResourceSlice) []string {
	var out []string
	for _, s := range ss {
		out = append(out, s.Name)
	}
	return out
}
