package dra

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	kubefake "k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"

	"github.com/multinic/multinic/ipam/api"
)

// preparedForPod is claim u1 (cards 1 and 2 exclusive, beside another driver's entry) reserved for pod
// "pod-uid", prepared by a plugin whose status writer runs until the test ends.
func preparedForPod(t *testing.T) (*Plugin, *kubefake.Clientset, *resourceapi.ResourceClaim) {
	t.Helper()
	c := claim("u1", "card-1", "card-2-exclusive")
	c.Status.ReservedFor = []resourceapi.ResourceClaimConsumerReference{{Resource: "pods", Name: "p", UID: "pod-uid"}}
	c.Status.Devices = []resourceapi.AllocatedDeviceStatus{{Driver: "gpu.example.com", Pool: "node1", Device: "gpu-0"}}
	kube := kubefake.NewClientset(c)
	p := newTestPlugin(newFakeAllocations())
	withKube(p, kube)
	p.cfg.Statuses = newStatuses(kube, p.log, 10*time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go p.cfg.Statuses.Run(ctx)
	if r := prepareOne(t, p, c); r.Err != nil {
		t.Fatal(r.Err)
	}
	return p, kube, c
}

// statusOf is the claim's status.devices by device name.
func statusOf(t *testing.T, kube *kubefake.Clientset, c *resourceapi.ResourceClaim) map[string]resourceapi.AllocatedDeviceStatus {
	t.Helper()
	got, err := kube.ResourceV1().ResourceClaims(c.Namespace).Get(context.Background(), c.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]resourceapi.AllocatedDeviceStatus{}
	for _, d := range got.Status.Devices {
		out[d.Device] = d
	}
	return out
}

// ifNames is each device's interfaceName ("-" for an entry without network data), or why the status is not
// as prepare wrote it: another driver's entry gone, a device's address or MAC changed.
func ifNames(t *testing.T, kube *kubefake.Clientset, c *resourceapi.ResourceClaim) string {
	t.Helper()
	st := statusOf(t, kube, c)
	if _, ok := st["gpu-0"]; !ok || len(st) != 3 {
		return fmt.Sprintf("entries %v, want gpu-0's kept beside ours", st)
	}
	out := ""
	for _, dev := range []string{"card-1", "card-2-exclusive"} {
		card := map[string]int{"card-1": 1, "card-2-exclusive": 2}[dev]
		nd := st[dev].NetworkData
		if nd == nil || len(nd.IPs) != 1 || nd.IPs[0] != fmt.Sprintf("10.0.%d.%d/24", card, card) || nd.HardwareAddress != fmt.Sprintf("02:00:00:00:00:%02x", card) {
			return fmt.Sprintf("%s: network data %+v, want prepare's address and MAC", dev, nd)
		}
		out += fmt.Sprintf("%s=%q ", dev, nd.InterfaceName)
	}
	return out
}

// waitIfNames waits until ifNames is want (the writer works in the background).
func waitIfNames(t *testing.T, kube *kubefake.Clientset, c *resourceapi.ResourceClaim, want string) {
	t.Helper()
	var got string
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if got = ifNames(t, kube, c); got == want {
			return
		}
	}
	t.Fatalf("status %s, want %s", got, want)
}

// TestStatusesInterfaceName: an attachment's interface lands on its own device's entry only, with prepare's
// addresses and MAC kept and another driver's entry untouched, from either path (the backend's Attached, the
// NRI plugin's report); a detach clears it, but only of the name it noted; another pod's report and a report
// after unprepare change nothing.
func TestStatusesInterfaceName(t *testing.T) {
	p, kube, c := preparedForPod(t)
	s := p.cfg.Statuses
	waitIfNames(t, kube, c, `card-1="" card-2-exclusive="" `)

	s.Attached("pod-uid", 2, "net2") // a Multus ADD took card 2's reservation over
	s.Attached("other-pod", 1, "net1")
	waitIfNames(t, kube, c, `card-1="" card-2-exclusive="net2" `)

	// The NRI plugin's reports, through the kubelet plugin's endpoint.
	nri := func(attached, detached []api.PodInterface) {
		t.Helper()
		req := api.ClaimInterfacesRequest{PodRef: api.PodRef{PodUID: "pod-uid"}, Attached: attached, Detached: detached}
		if err := p.ClaimInterfaces(context.Background(), req); err != nil {
			t.Fatal(err)
		}
	}
	nri([]api.PodInterface{{Card: 1, IfName: "card1"}}, nil)
	waitIfNames(t, kube, c, `card-1="card1" card-2-exclusive="net2" `)

	// A prepare again (the kubelet restarted) keeps the names.
	if r := prepareOne(t, p, c); r.Err != nil {
		t.Fatal(r.Err)
	}
	if got, want := ifNames(t, kube, c), `card-1="card1" card-2-exclusive="net2" `; got != want {
		t.Errorf("after a second prepare: %s, want %s", got, want)
	}

	s.Detached("pod-uid", 2, "net7") // not the name noted: a DEL of another interface on the card
	s.Detached("pod-uid", 2, "net2")
	waitIfNames(t, kube, c, `card-1="card1" card-2-exclusive="" `)
	nri(nil, []api.PodInterface{{Card: 1, IfName: "card1"}})
	waitIfNames(t, kube, c, `card-1="" card-2-exclusive="" `)

	if _, err := p.UnprepareResourceClaims(context.Background(), []kubeletplugin.NamespacedObject{
		{NamespacedName: types.NamespacedName{Namespace: c.Namespace, Name: c.Name}, UID: c.UID}}); err != nil {
		t.Fatal(err)
	}
	s.Attached("pod-uid", 1, "card1")
	time.Sleep(100 * time.Millisecond) // time for a write that must not happen
	if st := statusOf(t, kube, c); len(st) != 1 {
		t.Errorf("status after unprepare and a late report: %v, want gpu-0's entry only", st)
	}
}

// TestStatusesRetry: writes the API server refuses are made again until one goes through, while Attached
// returns at once.
func TestStatusesRetry(t *testing.T) {
	p, kube, c := preparedForPod(t)
	var fail, calls atomic.Int32
	kube.PrependReactor("patch", "resourceclaims", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if a.GetSubresource() != "status" {
			return false, nil, nil
		}
		calls.Add(1)
		if fail.Add(-1) >= 0 {
			return true, nil, errors.New("etcdserver: request timed out")
		}
		return false, nil, nil
	})
	fail.Store(3)
	start := time.Now()
	p.cfg.Statuses.Attached("pod-uid", 1, "card1")
	if d := time.Since(start); d > 10*time.Millisecond {
		t.Errorf("Attached took %s: it must not wait for the API server", d)
	}
	waitIfNames(t, kube, c, `card-1="card1" card-2-exclusive="" `)
	if n := calls.Load(); n != 4 {
		t.Errorf("%d writes, want 4 (3 refused, then the one that went through)", n)
	}
}
