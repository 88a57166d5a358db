//go:build e2e

package dra

import (
	"context"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	drapb "k8s.io/kubelet/pkg/apis/dra/v1"

	"github.com/multinic/multinic/dra"
	"github.com/multinic/multinic/e2e/cluster"
	"github.com/multinic/multinic/internal/testing/harness"
	"github.com/multinic/multinic/ipam/api"
)

// kubelet plays the kubelet's side of the DRA gRPC API against a node's agent: the same calls, on the same
// socket (<plugin dir>/dra.sock) the kubelet learns from the plugin's registration.
type kubelet struct {
	t    *testing.T
	c    *cluster.Cluster
	conn *grpc.ClientConn
	api  drapb.DRAPluginClient
}

func newKubelet(t *testing.T, c *cluster.Cluster, n *harness.Node) *kubelet {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+n.DRAPluginDir()+"/dra.sock", grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &kubelet{t: t, c: c, conn: conn, api: drapb.NewDRAPluginClient(conn)}
}

func (k *kubelet) claim(ctx context.Context, name string) *resourceapi.ResourceClaim {
	k.t.Helper()
	cl, err := k.c.Client.ResourceV1().ResourceClaims("default").Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		k.t.Fatal(err)
	}
	return cl
}

// call calls NodePrepareResources for claim and returns its answer for the claim.
func (k *kubelet) call(ctx context.Context, cl *resourceapi.ResourceClaim) *drapb.NodePrepareResourceResponse {
	k.t.Helper()
	resp, err := k.api.NodePrepareResources(ctx, &drapb.NodePrepareResourcesRequest{Claims: []*drapb.Claim{
		{Namespace: cl.Namespace, Name: cl.Name, Uid: string(cl.UID)}}})
	if err != nil {
		k.t.Fatalf("NodePrepareResources %s: %v", cl.Name, err)
	}
	r := resp.Claims[string(cl.UID)]
	if r == nil {
		k.t.Fatalf("NodePrepareResources %s: no answer for the claim: %+v", cl.Name, resp)
	}
	return r
}

// prepare calls NodePrepareResources for claim and fails the test on any error; it returns the devices.
func (k *kubelet) prepare(ctx context.Context, cl *resourceapi.ResourceClaim) []*drapb.Device {
	k.t.Helper()
	r := k.call(ctx, cl)
	if r.Error != "" {
		k.t.Fatalf("NodePrepareResources %s: %+v", cl.Name, r)
	}
	return r.Devices
}

// prepareError calls NodePrepareResources for claim, wants it to fail the claim, and returns its error.
func (k *kubelet) prepareError(ctx context.Context, cl *resourceapi.ResourceClaim) string {
	k.t.Helper()
	r := k.call(ctx, cl)
	if r.Error == "" || len(r.Devices) != 0 {
		k.t.Errorf("NodePrepareResources %s: %+v, want an error and no devices", cl.Name, r)
	}
	return r.Error
}

func (k *kubelet) unprepare(ctx context.Context, cl *resourceapi.ResourceClaim) {
	k.t.Helper()
	resp, err := k.api.NodeUnprepareResources(ctx, &drapb.NodeUnprepareResourcesRequest{Claims: []*drapb.Claim{
		{Namespace: cl.Namespace, Name: cl.Name, Uid: string(cl.UID)}}})
	if err != nil {
		k.t.Fatalf("NodeUnprepareResources %s: %v", cl.Name, err)
	}
	if r := resp.Claims[string(cl.UID)]; r == nil || r.Error != "" {
		k.t.Fatalf("NodeUnprepareResources %s: %+v", cl.Name, r)
	}
}

// claimAllocations are the agent's allocations of claim, by card.
func claimAllocations(t *testing.T, n *harness.Node, cl *resourceapi.ResourceClaim) map[int]api.Allocation {
	t.Helper()
	als, err := n.Allocations()
	if err != nil {
		t.Fatal(err)
	}
	out := map[int]api.Allocation{}
	for _, al := range als {
		if al.ContainerID == dra.ClaimContainerID(cl.UID) {
			out[al.Card] = al
		}
	}
	return out
}

// checkPrepared: the devices the plugin answered are the claim's allocated multinic.io devices, and the agent
// holds one allocation per device, of the device's card and mode.
func checkPrepared(t *testing.T, n *harness.Node, cl *resourceapi.ResourceClaim, devs []*drapb.Device) map[int]api.Allocation {
	t.Helper()
	var want, got []string
	cards := map[int]bool{} // card -> exclusive
	for _, r := range cl.Status.Allocation.Devices.Results {
		if r.Driver == dra.DriverName {
			want = append(want, r.Request+"/"+r.Device)
			card, _ := dra.ParseDeviceName(r.Device)
			cards[card] = r.Device == dra.DeviceName(card, "exclusive")
		}
	}
	for _, d := range devs {
		got = append(got, d.RequestNames[0]+"/"+d.DeviceName)
	}
	slices.Sort(want)
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("claim %s: prepared %v, allocated %v", cl.Name, got, want)
	}
	als := claimAllocations(t, n, cl)
	if !slices.Equal(slices.Sorted(maps.Keys(als)), slices.Sorted(maps.Keys(cards))) {
		t.Errorf("claim %s: agent holds cards %v, want %v", cl.Name, slices.Sorted(maps.Keys(als)), slices.Sorted(maps.Keys(cards)))
	}
	for card, al := range als {
		if al.Exclusive != cards[card] || !al.Address.IsValid() || al.Network != dra.Network {
			t.Errorf("claim %s card %d: allocation %+v, want exclusive=%v", cl.Name, card, al, cards[card])
		}
	}
	return als
}

// checkStatus: the claim's status.devices, as the real API server stored it, has one entry per prepared
// device with the allocation's address and the ENI's MAC (fake-ec2's record of the ENI); with none, no entry
// of ours is left.
func checkStatus(ctx context.Context, t *testing.T, c *cluster.Cluster, region *harness.Region, cl *resourceapi.ResourceClaim, als map[int]api.Allocation) {
	t.Helper()
	got, err := c.Client.ResourceV1().ResourceClaims(cl.Namespace).Get(ctx, cl.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ours := map[int]resourceapi.AllocatedDeviceStatus{}
	for _, d := range got.Status.Devices {
		if d.Driver == dra.DriverName {
			card, _ := dra.ParseDeviceName(d.Device)
			ours[card] = d
		}
	}
	if len(ours) != len(als) {
		t.Errorf("claim %s: %d status entries of %s, want %d: %+v", cl.Name, len(ours), dra.DriverName, len(als), got.Status.Devices)
	}
	st := region.State()
	for card, al := range als {
		d := ours[card]
		eni, _ := st.ENI(al.ENIID)
		if d.NetworkData == nil || len(d.NetworkData.IPs) == 0 || !strings.HasPrefix(d.NetworkData.IPs[0], al.Address.String()+"/") ||
			d.NetworkData.HardwareAddress != eni.MAC || eni.MAC == "" {
			t.Errorf("claim %s card %d: status %+v, want %s/<prefix> and MAC %q", cl.Name, card, d.NetworkData, al.Address, eni.MAC)
		}
	}
	if len(als) > 0 && len(ours) > 0 {
		for _, d := range ours {
			t.Logf("claim %s: status of %s: ips %v mac %s", cl.Name, d.Device, d.NetworkData.IPs, d.NetworkData.HardwareAddress)
			break
		}
	}
}

// waitIfNames waits until the claim's status names want's interface (by card; "": none) on each of our
// devices; the agent writes them in the background.
func waitIfNames(ctx context.Context, t *testing.T, c *cluster.Cluster, cl *resourceapi.ResourceClaim, want map[int]string) {
	t.Helper()
	var got map[int]string
	for deadline := time.Now().Add(waitTimeout); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		cur, err := c.Client.ResourceV1().ResourceClaims(cl.Namespace).Get(ctx, cl.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		got = map[int]string{}
		for _, d := range cur.Status.Devices {
			if card, ok := dra.ParseDeviceName(d.Device); ok && d.Driver == dra.DriverName && d.NetworkData != nil {
				got[card] = d.NetworkData.InterfaceName
			}
		}
		if maps.Equal(got, want) {
			t.Logf("claim %s: interfaceName by card %v", cl.Name, got)
			return
		}
	}
	t.Errorf("claim %s: interfaceName by card %v, want %v", cl.Name, got, want)
}
