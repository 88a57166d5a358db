//go:build e2e

package realnode

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"

	"github.com/multinic/multinic/dra"
	"github.com/multinic/multinic/e2e/cluster"
	"github.com/multinic/multinic/ipam/api"
)

// draRuns are the functions of draCases (cases.go), by name: the agents rolled out with the component
// manifests/dra (--dra) and Multus thin; the cards are handed out by the real kube-scheduler from the
// agents' ResourceSlices, prepared by the agents' kubelet plugins, and attached by Multus NADs naming the
// claimed cards (exclusive: this host's kernel has no ipvlan).
var draRuns = map[string]func(context.Context, *testing.T, *Env){
	"gpu-aligned": testDRAAligned,
	"not-claimed": testDRANotClaimed,
}

// gpuDriver is the test DRA driver standing for GPUs (the test publishes its ResourceSlices); its
// DeviceClass and the aligned claim template are manifests/examples/dra-claim-gpu-aligned-4-cards.yaml.
const (
	gpuDriver      = cluster.GPUDriver
	alignedExample = "dra-claim-gpu-aligned-4-cards.yaml"
	alignedClaim   = "multinic-gpu-aligned-4-cards"
)

// alignedCards are the cards on gpu-0's PCIe root (PCIeRoots): what an aligned claim must get.
var alignedCards = []int{3, 4, 5, 6}

// testDRA turns DRA on (the DaemonSet rolled out with manifests/dra, as a user's overlay would), waits for
// the agents' slices, publishes the test GPU driver's and applies the aligned example, then runs draCases.
func testDRA(ctx context.Context, t *testing.T, e *Env, image string) {
	if e.kind != "" {
		t.Skip("kind: the DRA cases read the local nodes' fake sysfs (PCIe roots), which kind nodes do not have")
	}
	installAgent(ctx, t, e, image, allCards, "dra")
	waitDRASlices(ctx, t, e)
	for _, n := range e.Nodes {
		publishGPUs(ctx, t, e, n)
	}
	example, err := filepath.Abs(filepath.Join("..", "..", "manifests", "examples", alignedExample))
	if err != nil {
		t.Fatal(err)
	}
	if out, err := e.Kubectl(ctx, nil, "apply", "-f", example); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	t.Cleanup(func() {
		if out, err := e.Kubectl(ctx, nil, "delete", "--ignore-not-found", "-f", example); err != nil {
			t.Errorf("%v\n%s", err, out)
		}
	})
	if err := e.InstallMultus(ctx, MultusThin); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := e.UninstallMultus(ctx); err != nil {
			t.Error(err)
		}
	})
	for _, name := range draCases {
		t.Run(name, func(t *testing.T) {
			run, ok := draRuns[name]
			if !ok {
				t.Fatalf("case %s has no function in draRuns", name)
			}
			run(ctx, t, e)
		})
	}
}

// waitDRASlices waits until every node's ResourceSlice of multinic.io has both devices of every managed
// card, the cards of PCIeRoots with their root.
func waitDRASlices(ctx context.Context, t *testing.T, e *Env) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		var missing []string
		list, err := e.Client.ResourceV1().ResourceSlices().List(ctx, metav1.ListOptions{FieldSelector: "spec.driver=" + dra.DriverName})
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range e.Nodes {
			devs := map[string]resourceapi.Device{}
			for _, s := range list.Items {
				if s.Spec.NodeName != nil && *s.Spec.NodeName == n.Name {
					for _, d := range s.Spec.Devices {
						devs[d.Name] = d
					}
				}
			}
			for _, c := range allCards {
				for _, mode := range []string{"ipvlan", "exclusive"} {
					name := dra.DeviceName(c, mode)
					d, ok := devs[name]
					root := d.Attributes[dra.AttrPCIeRoot].StringValue
					switch {
					case !ok:
						missing = append(missing, n.Name+"/"+name)
					case PCIeRoots[c] != "" && (root == nil || *root != PCIeRoots[c]):
						missing = append(missing, fmt.Sprintf("%s/%s pcieRoot %v, want %s", n.Name, name, root, PCIeRoots[c]))
					}
				}
			}
		}
		if len(missing) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the agents' ResourceSlices after 2m lack %v", missing)
		}
		time.Sleep(time.Second)
	}
}

// publishGPUs publishes node's GPUs as the test driver's pool, gpu-0 on the root of cards 3-6 and gpu-1 on
// card 1's, and serves the test driver's kubelet plugin on the node (the kubelet prepares every driver of a
// claim before the pod starts). Both go when t ends.
func publishGPUs(ctx context.Context, t *testing.T, e *Env, n *Node) {
	t.Helper()
	name, err := cluster.PublishGPUs(ctx, e.Client, n.Name, PCIeRoots[alignedCards[0]], PCIeRoots[1])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := e.Client.ResourceV1().ResourceSlices().Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			t.Error(err)
		}
	})
	// The plugin runs in the test process; its sockets are in the node's kubelet folder (the kubelet sees
	// the host path too: its mount namespace keeps the host's /tmp).
	registry := n.HostPath("/var/lib/kubelet/plugins_registry")
	data := n.HostPath("/var/lib/kubelet/plugins/" + gpuDriver)
	for _, d := range []string{registry, data} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			t.Fatal(err)
		}
	}
	h, err := kubeletplugin.Start(ctx, gpuPlugin{logf: e.logf}, kubeletplugin.DriverName(gpuDriver), kubeletplugin.KubeClient(e.Client),
		kubeletplugin.NodeName(n.Name), kubeletplugin.HealthService(false),
		kubeletplugin.RegistrarDirectoryPath(registry), kubeletplugin.PluginDataDirectoryPath(data))
	if err != nil {
		t.Fatalf("node %s: start the test GPU driver's kubelet plugin: %v", n.Name, err)
	}
	t.Cleanup(h.Stop)
}

// gpuPlugin is the test GPU driver's kubelet plugin: it prepares the GPUs of a claim without doing
// anything (no CDI devices), so that the kubelet starts the pod.
type gpuPlugin struct{ logf func(string, ...any) }

func (gpuPlugin) PrepareResourceClaims(_ context.Context, claims []*resourceapi.ResourceClaim) (map[types.UID]kubeletplugin.PrepareResult, error) {
	out := map[types.UID]kubeletplugin.PrepareResult{}
	for _, c := range claims {
		var res kubeletplugin.PrepareResult
		if c.Status.Allocation != nil {
			for _, r := range c.Status.Allocation.Devices.Results {
				if r.Driver == gpuDriver {
					res.Devices = append(res.Devices, kubeletplugin.Device{Requests: []string{r.Request}, PoolName: r.Pool, DeviceName: r.Device})
				}
			}
		}
		out[c.UID] = res
	}
	return out, nil
}

func (gpuPlugin) UnprepareResourceClaims(_ context.Context, claims []kubeletplugin.NamespacedObject) (map[types.UID]error, error) {
	out := map[types.UID]error{}
	for _, c := range claims {
		out[c.UID] = nil
	}
	return out, nil
}

func (p gpuPlugin) HandleError(_ context.Context, err error, msg string) {
	p.logf("test GPU driver's kubelet plugin: %s: %v", msg, err)
}

func (gpuPlugin) WatchHealthStatus(context.Context, chan<- kubeletplugin.DeviceHealthReport) error {
	return kubeletplugin.ErrHealthNotSupported
}

// claimPod is a pod with one claim from template and the exclusive NADs of cards in Multus' annotation.
func claimPod(name, node, template string, cards ...int) testPod {
	p := testPod{Name: name, Node: node, ClaimTemplate: template}
	for _, c := range cards {
		p.Atts = append(p.Atts, attachment{Card: c})
	}
	return p
}

// agentAllocations is what the node's agent holds (GET /v1/allocations on its socket, from inside the node).
func (e *Env) agentAllocations(ctx context.Context, t *testing.T, n *Node) []api.Allocation {
	t.Helper()
	// Retried: a restarted agent is Ready (its cards are) a moment before it serves its socket.
	deadline := time.Now().Add(30 * time.Second)
	var out []byte
	var err error
	for {
		out, err = n.Exec(ctx, "curl", "-sS", "--fail-with-body", "--max-time", "10", "--unix-socket", api.DefaultSocketPath, "http://agent"+api.PathAllocations)
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("node %s: allocations: %v: %s", n.Name, err, out)
	}
	var l api.ListResponse
	if err := json.Unmarshal(out, &l); err != nil {
		t.Fatalf("node %s: allocations %s: %v", n.Name, out, err)
	}
	return l.Allocations
}

// checkClaimedPod checks a running claim pod against its claim, its node's agent and what the container
// sees: the scheduler gave it gpu-0 and exclusive cards 3-6 of its node (the cards on the GPU's root); it
// has exactly those cards' interfaces (and eth0, lo); the agent holds exactly one exclusive allocation per
// card for the pod, at the address inside (the claim's reservation taken over, none left under the claim,
// no second address); the claim's status.devices says each card's address, MAC and interface name as the
// container sees them (the name written by the agent after the takeover). It returns the pod's address per
// interface.
func (e *Env) checkClaimedPod(ctx context.Context, t *testing.T, p testPod) map[string]netip.Addr {
	t.Helper()
	addrs := e.checkPod(ctx, t, p)
	pod, err := e.Client.CoreV1().Pods("default").Get(ctx, p.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ifNames := map[string]string{} // device -> the pod's interface of it (its Multus attachment's)
	for i, a := range p.Atts {
		ifNames[dra.DeviceName(a.Card, "exclusive")] = p.ifName(i)
	}
	claim := e.podClaimWithIfNames(ctx, t, p.Name, ifNames)
	var gpus []string
	claimed := map[int]string{} // card -> device
	for _, r := range claim.Status.Allocation.Devices.Results {
		if r.Pool != pod.Spec.NodeName {
			t.Errorf("claim %s: device %s/%s of %s not in the pod's node's pool %s", claim.Name, r.Pool, r.Device, r.Driver, pod.Spec.NodeName)
		}
		switch r.Driver {
		case gpuDriver:
			gpus = append(gpus, r.Device)
		case dra.DriverName:
			card, ok := dra.ParseDeviceName(r.Device)
			if !ok || !strings.HasSuffix(r.Device, "-exclusive") {
				t.Errorf("claim %s: device %s, want card-N-exclusive", claim.Name, r.Device)
			}
			claimed[card] = r.Device
		}
	}
	cards := slices.Sorted(maps.Keys(claimed))
	if !slices.Equal(gpus, []string{"gpu-0"}) || !slices.Equal(cards, alignedCards) {
		t.Errorf("claim %s of pod %s: GPUs %v, cards %v; want gpu-0 and cards %v on its PCIe root", claim.Name, p.Name, gpus, cards, alignedCards)
	}
	ifaces := e.podIfaces(ctx, t, p.Name)
	var names []string
	for name := range ifaces {
		names = append(names, name)
	}
	want := []string{"eth0", "lo"}
	for i := range p.Atts {
		want = append(want, p.ifName(i))
	}
	if slices.Sort(names); !slices.Equal(names, slices.Sorted(slices.Values(want))) {
		t.Errorf("pod %s has interfaces %v, want exactly %v", p.Name, names, want)
	}
	// The agent: one exclusive allocation per claimed card, the pod's, at the address inside; nothing left
	// under the claim's own key.
	n := e.node(pod.Spec.NodeName)
	byCard := map[int][]api.Allocation{}
	for _, al := range e.agentAllocations(ctx, t, n) {
		if al.ContainerID == dra.ClaimContainerID(claim.UID) {
			t.Errorf("node %s: the claim's reservation on card %d (%s) was not taken over by the pod", n.Name, al.Card, al.Address)
		}
		if al.PodUID == string(pod.UID) {
			byCard[al.Card] = append(byCard[al.Card], al)
		}
	}
	status := map[string]resourceapi.AllocatedDeviceStatus{}
	for _, d := range claim.Status.Devices {
		status[d.Device] = d
	}
	for i, a := range p.Atts {
		ifName := p.ifName(i)
		als := byCard[a.Card]
		if len(als) != 1 || !als[0].Exclusive || als[0].Address != addrs[ifName] {
			t.Errorf("node %s: pod %s's allocations on card %d %+v, want one exclusive at %s", n.Name, p.Name, a.Card, als, addrs[ifName])
		}
		st, ok := status[claimed[a.Card]]
		in := ifaces[ifName]
		if !ok || st.NetworkData == nil || in == nil || len(in.Addrs) != 1 || st.NetworkData.InterfaceName != ifName ||
			!slices.Equal(st.NetworkData.IPs, []string{in.Addrs[0].String()}) || !strings.EqualFold(st.NetworkData.HardwareAddress, in.MAC) {
			t.Errorf("claim %s status of %s: %+v; pod %s %s: %+v", claim.Name, claimed[a.Card], st.NetworkData, p.Name, ifName, in)
		}
	}
	if len(byCard) != len(p.Atts) {
		t.Errorf("node %s: pod %s holds cards %v, want only its claim's %v", n.Name, p.Name, byCard, cards)
	}
	return addrs
}

// testDRAAligned: "1 GPU + the exclusive cards on its PCIe root" (the example template) is allocated
// aligned by the real scheduler on both nodes, the pods run with exactly those cards and reach each other
// over every one; a third such claim cannot be aligned (both gpu-0 roots' cards are taken, gpu-1's root
// has one card) and stays Pending with the scheduler's reason, never double-booking; an agent restart
// loses nothing; deleting the first pod (and so its claim) frees its cards and the third pod gets them.
func testDRAAligned(ctx context.Context, t *testing.T, e *Env) {
	a := claimPod("gpu-a", e.Nodes[0].Name, alignedClaim, alignedCards...)
	b := claimPod("gpu-b", e.Nodes[1].Name, alignedClaim, alignedCards...)
	e.deleteAtEnd(ctx, t, "gpu-a", "gpu-b", "gpu-c")
	e.runPod(ctx, t, a)
	e.runPod(ctx, t, b)
	addrA, addrB := e.checkClaimedPod(ctx, t, a), e.checkClaimedPod(ctx, t, b)
	for i := range a.Atts {
		ifName := a.ifName(i)
		if err := e.ping(ctx, a.Name, ifName, addrB[ifName]); err != nil {
			t.Error(err)
		}
		if err := e.ping(ctx, b.Name, ifName, addrA[ifName]); err != nil {
			t.Error(err)
		}
	}

	c := claimPod("gpu-c", "", alignedClaim, alignedCards...)
	e.apply(ctx, t, c)
	t.Logf("pod %s: %s", c.Name, e.waitPending(ctx, t, c.Name, "cannot allocate all claims"))

	// An agent restart between prepare and unprepare loses nothing: same allocations, same addresses.
	n1 := e.Nodes[0]
	before, inside := e.agentAllocations(ctx, t, n1), e.addrsOf(ctx, t, a.Name)
	e.restartAgent(ctx, t, n1)
	if after := e.agentAllocations(ctx, t, n1); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("node %s allocations after the agent restart:\n%+v\nbefore:\n%+v", n1.Name, after, before)
	}
	e.sameAddrs(ctx, t, a.Name, inside, "the agent restart")

	// The first pod goes, its claim with it (made from a template): the cards are free, the third pod
	// gets them on that node, aligned again.
	claimA := e.podClaim(ctx, t, a.Name)
	e.deletePod(ctx, t, a.Name)
	e.waitClaimGone(ctx, t, claimA.Name)
	e.waitReady(ctx, t, c.Name, "once gpu-a's claim is gone")
	c.Node = n1.Name
	e.checkClaimedPod(ctx, t, c)
	e.deletePod(ctx, t, c.Name)
	e.deletePod(ctx, t, b.Name)
	e.checkFreed(ctx, t)
	e.waitNoClaims(ctx, t)
}

// testDRANotClaimed: with DRA on, a NAD attachment to a card the pod's claim does not hold is refused with
// the CNI error naming the card (code 104), the pod does not start, and nothing leaks once it goes.
func testDRANotClaimed(ctx context.Context, t *testing.T, e *Env) {
	tmpl := `apiVersion: resource.k8s.io/v1
kind: ResourceClaimTemplate
metadata: {name: card-2-exclusive, namespace: default}
spec:
  spec:
    devices:
      requests:
      - name: card-2
        exactly:
          deviceClassName: multinic.io
          selectors:
          - cel: {expression: 'device.attributes["multinic.io"].card == 2 && device.attributes["multinic.io"].mode == "exclusive"'}
`
	if out, err := e.Kubectl(ctx, strings.NewReader(tmpl), "apply", "-f", "-"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	defer e.Kubectl(ctx, nil, "delete", "resourceclaimtemplate", "card-2-exclusive", "--ignore-not-found")
	p := claimPod("not-claimed", e.Nodes[0].Name, "card-2-exclusive", 2, 5)
	e.deleteAtEnd(ctx, t, p.Name)
	e.apply(ctx, t, p)
	want := []string{"card 5 (device card-5-exclusive of multinic.io)", "no ResourceClaim of pod default/not-claimed"}
	deadline := time.Now().Add(2 * time.Minute)
	var events string
	for {
		var err error
		events, err = e.Kubectl(ctx, nil, "get", "events", "--field-selector", "involvedObject.name="+p.Name+",reason=FailedCreatePodSandBox",
			"-o", "jsonpath={.items[*].message}")
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(events, want[0]) && strings.Contains(events, want[1]) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pod %s: no FailedCreatePodSandBox event with %q after 2m: %q\n%s", p.Name, want, events, e.describePod(ctx, p.Name))
		}
		time.Sleep(time.Second)
	}
	t.Logf("pod %s refused: %s", p.Name, events[:min(len(events), 600)])
	pod, err := e.Client.CoreV1().Pods("default").Get(ctx, p.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if podReady(pod) || pod.Status.Phase != corev1.PodPending {
		t.Errorf("pod %s is %s (ready %v), want Pending: its sandbox cannot be made", p.Name, pod.Status.Phase, podReady(pod))
	}
	// Card 5 is never given; card 2 at most once (the claim's, or the pod's between Multus' ADD and its rollback).
	for _, al := range e.agentAllocations(ctx, t, e.Nodes[0]) {
		if al.Card == 5 {
			t.Errorf("node %s holds card 5 for %s: %+v", e.Nodes[0].Name, al.Describe(), al)
		}
	}
	e.deletePod(ctx, t, p.Name)
	e.checkFreed(ctx, t)
	e.waitNoClaims(ctx, t)
}

// deleteAtEnd deletes the pods (those still there) when t ends, so that a failed case leaves no pod and
// no claim to the next.
func (e *Env) deleteAtEnd(ctx context.Context, t *testing.T, pods ...string) {
	t.Cleanup(func() {
		args := append([]string{"delete", "pod", "--ignore-not-found", "--wait=true", "--timeout=2m"}, pods...)
		if out, err := e.Kubectl(ctx, nil, args...); err != nil {
			t.Errorf("%v\n%s", err, out)
		}
	})
}

// restartAgent deletes the agent pod on n and waits until the DaemonSet's new one there is Ready.
func (e *Env) restartAgent(ctx context.Context, t *testing.T, n *Node) {
	t.Helper()
	sel := "app.kubernetes.io/name=multinic-agent"
	pods, err := e.Client.CoreV1().Pods("kube-system").List(ctx, metav1.ListOptions{LabelSelector: sel, FieldSelector: "spec.nodeName=" + n.Name})
	if err != nil || len(pods.Items) != 1 {
		t.Fatalf("agent pods on %s: %v %v", n.Name, pods, err)
	}
	old := pods.Items[0].Name
	if out, err := e.Kubectl(ctx, nil, "-n", "kube-system", "delete", "pod", old, "--wait=true", "--timeout=2m"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		pods, err := e.Client.CoreV1().Pods("kube-system").List(ctx, metav1.ListOptions{LabelSelector: sel, FieldSelector: "spec.nodeName=" + n.Name})
		if err != nil {
			t.Fatal(err)
		}
		if len(pods.Items) == 1 && pods.Items[0].Name != old && podReady(&pods.Items[0]) {
			t.Logf("node %s: agent %s replaced by %s", n.Name, old, pods.Items[0].Name)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("node %s: no new Ready agent pod 2m after deleting %s\n%s", n.Name, old, e.describe(ctx, "kube-system", sel))
		}
		time.Sleep(time.Second)
	}
}

// waitClaimGone waits until the claim is deleted (the resourceclaim controller deletes a template's claim
// once its pod is gone and the kubelet has unprepared it).
func (e *Env) waitClaimGone(ctx context.Context, t *testing.T, name string) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		_, err := e.Client.ResourceV1().ResourceClaims("default").Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("claim %s still there 2m after its pod went", name)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// waitNoClaims waits until no ResourceClaim is left in the namespace and no agent holds any allocation
// under a claim's key (unprepare freed them).
func (e *Env) waitNoClaims(ctx context.Context, t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		claims, err := e.Client.ResourceV1().ResourceClaims("default").List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var left []string
		for _, c := range claims.Items {
			left = append(left, "claim "+c.Name)
		}
		for _, n := range e.Nodes {
			for _, al := range e.agentAllocations(ctx, t, n) {
				left = append(left, fmt.Sprintf("%s: %s %s card %d", n.Name, al.ContainerID, al.IfName, al.Card))
			}
		}
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("2m after the pods went: %v", left)
		}
		time.Sleep(time.Second)
	}
}
