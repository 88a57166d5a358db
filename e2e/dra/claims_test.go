//go:build e2e

package dra

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"

	"github.com/multinic/multinic/dra"
	"github.com/multinic/multinic/e2e/cluster"
	"github.com/multinic/multinic/ipam/api"
	"github.com/multinic/multinic/manifests"
)

// gpuDriver is the test DRA driver standing for GPUs: the test publishes its ResourceSlice.
const gpuDriver = cluster.GPUDriver

// startScheduling starts kube-scheduler and kube-controller-manager (its resourceclaim controller makes the
// pods' claims from their templates) against c.
func startScheduling(ctx context.Context, t *testing.T, c *cluster.Cluster) {
	t.Helper()
	scheduler, err1 := cluster.FindNodeTool(cluster.KubeScheduler)
	kcm, err2 := cluster.FindNodeTool(cluster.KubeControllerManager)
	if err := errors.Join(err1, err2); err != nil {
		t.Fatal(err) // make e2e-dra builds them
	}
	if err := c.StartControllers(ctx, cluster.Controllers{Scheduler: scheduler, ControllerManager: kcm}, "10.244.0.0/16"); err != nil {
		t.Fatalf("start controllers: %v", err)
	}
}

// makeSchedulable gives a Node object (no kubelet behind it) the allocatable the scheduler needs.
func makeSchedulable(ctx context.Context, t *testing.T, c *cluster.Cluster, name string) {
	t.Helper()
	rl := corev1.ResourceList{corev1.ResourcePods: resource.MustParse("110"), corev1.ResourceCPU: resource.MustParse("8"),
		corev1.ResourceMemory: resource.MustParse("16Gi")}
	// The node lifecycle controller writes the status too: retry on a conflict.
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		n, err := c.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		n.Status.Capacity, n.Status.Allocatable = rl, rl
		_, err = c.Client.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

// applyExamples applies the DeviceClass of manifests/dra and manifests/examples/dra-*.yaml as they are: the
// API server validates them (CEL selectors compiled, constraints checked).
func applyExamples(ctx context.Context, t *testing.T, c *cluster.Cluster) {
	t.Helper()
	files, err := fs.Glob(manifests.Files, "examples/dra-*.yaml")
	if err != nil || len(files) < 3 {
		t.Fatalf("examples: %v %v", files, err)
	}
	files = append([]string{"dra/deviceclass.yaml"}, files...)
	for _, f := range files {
		data, err := fs.ReadFile(manifests.Files, f)
		if err != nil {
			t.Fatal(err)
		}
		objs, err := c.Apply(ctx, data, cluster.ApplyOptions{})
		if err != nil {
			t.Fatalf("apply %s: %v", f, err)
		}
		for _, o := range objs {
			t.Logf("applied %s %s/%s", o.GetKind(), o.GetNamespace(), o.GetName())
		}
	}
}

// publishGPUs publishes node's GPUs as the test driver's pool: gpu-<i> on PCIe root roots[i].
func publishGPUs(ctx context.Context, t *testing.T, c *cluster.Cluster, node string, roots ...string) {
	t.Helper()
	if _, err := cluster.PublishGPUs(ctx, c.Client, node, roots...); err != nil {
		t.Fatal(err)
	}
}

// claimPod creates a pod with one claim from template; it tolerates every taint (its node has no kubelet,
// and the node lifecycle controller taints it unreachable).
func claimPod(ctx context.Context, t *testing.T, c *cluster.Cluster, name, template string) {
	t.Helper()
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: corev1.PodSpec{
			Containers: []corev1.Container{{Name: "c", Image: "busybox", Resources: corev1.ResourceRequirements{
				Claims: []corev1.ResourceClaim{{Name: "cards"}},
			}}},
			ResourceClaims: []corev1.PodResourceClaim{{Name: "cards", ResourceClaimTemplateName: new(template)}},
			Tolerations:    []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
		},
	}
	if _, err := c.Client.CoreV1().Pods("default").Create(ctx, p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// allocated waits for pod's claim to be allocated and returns the devices per request.
func allocated(ctx context.Context, t *testing.T, c *cluster.Cluster, pod string) (string, map[string][]resourceapi.DeviceRequestAllocationResult) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		p, err := c.Client.CoreV1().Pods("default").Get(ctx, pod, metav1.GetOptions{})
		if err == nil && len(p.Status.ResourceClaimStatuses) == 1 && p.Status.ResourceClaimStatuses[0].ResourceClaimName != nil {
			name := *p.Status.ResourceClaimStatuses[0].ResourceClaimName
			cl, err := c.Client.ResourceV1().ResourceClaims("default").Get(ctx, name, metav1.GetOptions{})
			if err == nil && cl.Status.Allocation != nil && p.Spec.NodeName != "" {
				out := map[string][]resourceapi.DeviceRequestAllocationResult{}
				for _, r := range cl.Status.Allocation.Devices.Results {
					out[r.Request] = append(out[r.Request], r)
				}
				return name, out
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("pod %s: no allocated claim after %s (%v); pod status %+v", pod, waitTimeout, err, podConditions(ctx, c, pod))
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func podConditions(ctx context.Context, c *cluster.Cluster, pod string) []corev1.PodCondition {
	p, err := c.Client.CoreV1().Pods("default").Get(ctx, pod, metav1.GetOptions{})
	if err != nil {
		return nil
	}
	return p.Status.Conditions
}

// cardOf is the card of a multinic.io device name (card-N or card-N-exclusive).
func cardOf(t *testing.T, r resourceapi.DeviceRequestAllocationResult) int {
	t.Helper()
	var card int
	if r.Driver != dra.DriverName {
		t.Fatalf("device %s/%s of driver %s, want %s", r.Pool, r.Device, r.Driver, dra.DriverName)
	}
	if _, err := fmt.Sscanf(r.Device, "card-%d", &card); err != nil {
		t.Fatalf("device %s: %v", r.Device, err)
	}
	return card
}

// TestExampleClaims: the DeviceClass and the example ResourceClaimTemplates of manifests/examples, applied
// unchanged to the real kube-apiserver, and allocated by the real kube-scheduler from the agent's
// ResourceSlice and a test driver's GPUs: any 2 distinct cards get two cards; cards 1 and 3 get exactly
// those; a GPU with 5 cards on its root, while all are free, stays Pending (no root has 5), and is allocated
// without the matchAttribute; a GPU with 4 cards gets the GPU and the 4 cards on its PCIe root, exclusive; a second such claim,
// which cannot be aligned (the other GPU's root has one card, the first claim holds the exclusive cards of
// this root), stays Pending with the scheduler's reason, and is allocated once the first claim is gone. Then
// the agent's kubelet plugin prepares the allocated claims (subtest kubelet-plugin).
func TestExampleClaims(t *testing.T) {
	tools := cluster.RequireE2EOf(t, e2eDRA)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	c := cluster.Start(t, cluster.Options{Tools: tools})
	startScheduling(ctx, t, c)
	cards := []int{1, 2, 3, 4, 5, 6}
	region := startRegion(ctx, t, c, 1, cards)
	var want []string
	for _, k := range cards {
		want = append(want, dra.DeviceName(k, "ipvlan"), dra.DeviceName(k, "exclusive"))
	}
	waitDevices(ctx, t, c, "node1", want)
	makeSchedulable(ctx, t, c, "node1")
	applyExamples(ctx, t, c)
	// gpu-0 shares pci0000:30 with cards 3-6, gpu-1 pci0000:10 with card 1 only (pcieRoots).
	publishGPUs(ctx, t, c, "node1", "pci0000:30", "pci0000:10")

	t.Run("any-2-distinct-cards", func(t *testing.T) {
		claimPod(ctx, t, c, "any2", "multinic-any-2-cards")
		_, res := allocated(ctx, t, c, "any2")
		got := res["cards"]
		if len(got) != 2 || cardOf(t, got[0]) == cardOf(t, got[1]) {
			t.Fatalf("allocation %+v, want 2 distinct cards", got)
		}
		for _, r := range got {
			if strings.HasSuffix(r.Device, "-exclusive") || r.ShareID == nil {
				t.Errorf("device %s share %v: want a share of a shared card", r.Device, r.ShareID)
			}
		}
		t.Logf("any 2 cards: %s, %s", got[0].Device, got[1].Device)
	})
	t.Run("cards-1-and-3", func(t *testing.T) {
		claimPod(ctx, t, c, "one-three", "multinic-cards-1-and-3")
		_, res := allocated(ctx, t, c, "one-three")
		if len(res["card-1"]) != 1 || res["card-1"][0].Device != "card-1" || len(res["card-3"]) != 1 || res["card-3"][0].Device != "card-3" {
			t.Fatalf("allocation %+v, want card-1 and card-3", res)
		}
	})
	// Alignment as the only blocker: every GPU and every exclusive card is free (any2 and one-three hold
	// shared devices, which are others), but no PCIe root has 5 cards (gpu-0's has 4, gpu-1's 1, card 2 has
	// none), so "1 GPU + 5 exclusive cards on its root" stays Pending with the scheduler's reason, while the
	// same claim without the matchAttribute is allocated. Both go before the next case, which needs gpu-0
	// and cards 3-6.
	t.Run("cannot-align", func(t *testing.T) {
		claimPod(ctx, t, c, "gpu-5-aligned", fiveCardsTemplate(ctx, t, c, true))
		reason := waitUnschedulable(ctx, t, c, "gpu-5-aligned")
		t.Logf("gpu-5-aligned Pending, scheduler: %s", reason)
		if !strings.Contains(reason, "cannot allocate all claims") {
			t.Errorf("scheduler's reason %q does not say the claim cannot be allocated", reason)
		}
		if p, cl := podClaim(ctx, t, c, "gpu-5-aligned"); p.Spec.NodeName != "" || cl == nil || cl.Status.Allocation != nil {
			t.Errorf("gpu-5-aligned: node %q, claim %v: want unbound with its claim made and unallocated", p.Spec.NodeName, cl)
		}

		claimPod(ctx, t, c, "gpu-5-any", fiveCardsTemplate(ctx, t, c, false))
		_, res := allocated(ctx, t, c, "gpu-5-any")
		cards := map[int]bool{}
		for _, r := range res["cards"] {
			if !strings.HasSuffix(r.Device, "-exclusive") {
				t.Errorf("device %s: want exclusive", r.Device)
			}
			cards[cardOf(t, r)] = true
		}
		if len(res["gpu"]) != 1 || res["gpu"][0].Driver != gpuDriver || len(res["cards"]) != 5 || len(cards) != 5 {
			t.Fatalf("allocation without matchAttribute %+v, want a GPU and 5 distinct cards", res)
		}
		deletePods(ctx, t, c, "gpu-5-aligned", "gpu-5-any")
	})
	t.Run("gpu-aligned", func(t *testing.T) {
		claimPod(ctx, t, c, "gpu-a", "multinic-gpu-aligned-4-cards")
		_, res := allocated(ctx, t, c, "gpu-a")
		if len(res["gpu"]) != 1 || res["gpu"][0].Driver != gpuDriver || res["gpu"][0].Device != "gpu-0" {
			t.Fatalf("gpu allocation %+v, want gpu-0 (the GPU with 4 cards on its root)", res["gpu"])
		}
		var got []int
		for _, r := range res["cards"] {
			if !strings.HasSuffix(r.Device, "-exclusive") {
				t.Errorf("device %s: want exclusive", r.Device)
			}
			got = append(got, cardOf(t, r))
		}
		slices.Sort(got)
		if !slices.Equal(got, []int{3, 4, 5, 6}) {
			t.Fatalf("cards %v, want 3-6 (on gpu-0's root pci0000:30)", got)
		}

		// A second aligned claim: gpu-1's root has card 1 only, and the cards of gpu-0's root are held
		// exclusively: the scheduler cannot allocate it and says why.
		claimPod(ctx, t, c, "gpu-b", "multinic-gpu-aligned-4-cards")
		reason := waitUnschedulable(ctx, t, c, "gpu-b")
		t.Logf("gpu-b Pending, scheduler: %s", reason)
		if !strings.Contains(reason, "cannot allocate all claims") {
			t.Errorf("scheduler's reason %q does not say the claim cannot be allocated", reason)
		}

		// The first pod and so its claim go: the second gets the same aligned devices.
		if err := c.Client.CoreV1().Pods("default").Delete(ctx, "gpu-a", metav1.DeleteOptions{GracePeriodSeconds: new(int64(0))}); err != nil {
			t.Fatal(err)
		}
		_, res = allocated(ctx, t, c, "gpu-b")
		got = got[:0]
		for _, r := range res["cards"] {
			got = append(got, cardOf(t, r))
		}
		slices.Sort(got)
		if res["gpu"][0].Device != "gpu-0" || !slices.Equal(got, []int{3, 4, 5, 6}) {
			t.Fatalf("after gpu-a's claim went, gpu-b got %+v", res)
		}
	})

	// The test plays the kubelet (no kubelet runs here; e2e/realnode has real ones): NodePrepareResources
	// through the agent's kubelet plugin reserves each allocated claim's cards with the allocator and writes
	// each device's address and MAC into the claim's status, again after an agent restart with the same
	// addresses, and NodeUnprepareResources frees them and takes the status entries away.
	t.Run("kubelet-plugin", func(t *testing.T) {
		n := region.Node(0)
		k := newKubelet(t, c, n)
		var claims []*resourceapi.ResourceClaim
		for _, pod := range []string{"any2", "one-three", "gpu-b"} {
			name, _ := allocated(ctx, t, c, pod)
			claims = append(claims, k.claim(ctx, name))
		}
		before := map[string]map[int]api.Allocation{}
		for _, cl := range claims {
			before[cl.Name] = checkPrepared(t, n, cl, k.prepare(ctx, cl))
			checkStatus(ctx, t, c, region, cl, before[cl.Name])
		}
		// An exclusive ENI is one allocation's, among all the agent holds.
		all, err := n.Allocations()
		if err != nil {
			t.Fatal(err)
		}
		holders := map[string][]string{}
		for _, al := range all {
			holders[al.ENIID] = append(holders[al.ENIID], fmt.Sprintf("%s/%s exclusive=%t", al.ContainerID, al.IfName, al.Exclusive))
		}
		for _, al := range all {
			if al.Exclusive && len(holders[al.ENIID]) != 1 {
				t.Errorf("card %d: exclusive ENI %s given more than once: %v", al.Card, al.ENIID, holders[al.ENIID])
			}
		}
		// The agent's own guard: a claim whose allocation the test wrote, gpu-b's card-3-exclusive (as if
		// the scheduler and the agent disagreed), is refused, naming the card and its holder, and gets nothing.
		rogue := rogueClaim(ctx, t, c, "card-3-exclusive")
		msg := k.prepareError(ctx, rogue)
		if want := fmt.Sprintf("card 3's exclusive ENI %s is held by claim %s", before[claims[2].Name][3].ENIID, claims[2].UID); !strings.Contains(msg, want) {
			t.Errorf("NodePrepareResources of a second claim of card-3-exclusive: %q, want an error with %q", msg, want)
		}
		if now, err := n.Allocations(); err != nil || len(now) != len(all) || len(claimAllocations(t, n, rogue)) != 0 {
			t.Errorf("after the refusal the agent holds %d allocations (%v), before %d; want the same, none of the rogue claim", len(now), err, len(all))
		}
		if err := c.Client.ResourceV1().ResourceClaims("default").Delete(ctx, rogue.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}

		if err := n.StopAgent(); err != nil {
			t.Fatal(err)
		}
		if err := n.StartAgent(); err != nil {
			t.Fatal(err)
		}
		if err := n.WaitReady(); err != nil {
			t.Fatal(err)
		}
		k = newKubelet(t, c, n)
		for _, cl := range claims {
			after := checkPrepared(t, n, cl, k.prepare(ctx, cl))
			for card, al := range before[cl.Name] {
				if after[card].Address != al.Address || after[card].ENIID != al.ENIID {
					t.Errorf("claim %s card %d: %s on %s before the restart, %s on %s after", cl.Name, card,
						al.Address, al.ENIID, after[card].Address, after[card].ENIID)
				}
			}
		}

		// The NRI plugin's report of a pod's claim interfaces (POST /v1/claims/interfaces on the agent's
		// socket, as it sends it after RunPodSandbox and after the detach): the agent writes each device's
		// interfaceName into the claim's status in the background, addresses and MACs kept.
		one := claims[1] // pod one-three's: card-1 and card-3
		pod, err := c.Client.CoreV1().Pods("default").Get(ctx, "one-three", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		report := api.ClaimInterfacesRequest{PodRef: api.PodRef{PodNamespace: "default", PodName: pod.Name, PodUID: string(pod.UID)},
			Attached: []api.PodInterface{{Card: 1, IfName: "card1"}, {Card: 3, IfName: "card3"}}}
		if err := n.Client.ClaimInterfaces(ctx, report); err != nil {
			t.Fatal(err)
		}
		waitIfNames(ctx, t, c, one, map[int]string{1: "card1", 3: "card3"})
		checkStatus(ctx, t, c, region, one, before[one.Name])
		report.Attached, report.Detached = nil, report.Attached
		if err := n.Client.ClaimInterfaces(ctx, report); err != nil {
			t.Fatal(err)
		}
		waitIfNames(ctx, t, c, one, map[int]string{1: "", 3: ""})

		for _, cl := range claims {
			k.unprepare(ctx, cl)
			if left := claimAllocations(t, n, cl); len(left) != 0 {
				t.Errorf("claim %s: %d allocations left after NodeUnprepareResources", cl.Name, len(left))
			}
			checkStatus(ctx, t, c, region, cl, nil)
			k.unprepare(ctx, cl) // again: nothing to do, no error
		}
	})
}

// rogueClaim makes a ResourceClaim that no scheduler allocated: its status says node1's device of
// multinic.io, whoever else holds it.
func rogueClaim(ctx context.Context, t *testing.T, c *cluster.Cluster, device string) *resourceapi.ResourceClaim {
	t.Helper()
	claims := c.Client.ResourceV1().ResourceClaims("default")
	cl, err := claims.Create(ctx, &resourceapi.ResourceClaim{ObjectMeta: metav1.ObjectMeta{Name: "rogue", Namespace: "default"},
		Spec: resourceapi.ResourceClaimSpec{Devices: resourceapi.DeviceClaim{Requests: []resourceapi.DeviceRequest{
			{Name: "card", Exactly: &resourceapi.ExactDeviceRequest{DeviceClassName: dra.DriverName}}}}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cl.Status.Allocation = &resourceapi.AllocationResult{Devices: resourceapi.DeviceAllocationResult{Results: []resourceapi.DeviceRequestAllocationResult{
		{Request: "card", Driver: dra.DriverName, Pool: "node1", Device: device}}}}
	if cl, err = claims.UpdateStatus(ctx, cl, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	return cl
}

// fiveCardsTemplate makes a ResourceClaimTemplate from the example multinic-gpu-aligned-4-cards asking for 5
// cards instead of 4, with its matchAttribute constraint (aligned) or without it, and returns its name.
func fiveCardsTemplate(ctx context.Context, t *testing.T, c *cluster.Cluster, aligned bool) string {
	t.Helper()
	tmpls := c.Client.ResourceV1().ResourceClaimTemplates("default")
	ex, err := tmpls.Get(ctx, "multinic-gpu-aligned-4-cards", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	name, spec := "test-gpu-any-5-cards", ex.Spec.Spec.DeepCopy()
	if aligned {
		name = "test-gpu-aligned-5-cards"
	}
	n := 0
	for _, r := range spec.Devices.Requests {
		if r.Name == "cards" {
			r.Exactly.Count, n = 5, n+1
		}
	}
	spec.Devices.Constraints = slices.DeleteFunc(spec.Devices.Constraints, func(cn resourceapi.DeviceConstraint) bool {
		if cn.MatchAttribute != nil {
			n++
		}
		return !aligned && cn.MatchAttribute != nil
	})
	if n != 2 {
		t.Fatalf("example template %+v: want one request \"cards\" and one matchAttribute", ex.Spec.Spec)
	}
	tmpl := &resourceapi.ResourceClaimTemplate{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: resourceapi.ResourceClaimTemplateSpec{Spec: *spec}}
	if _, err := tmpls.Create(ctx, tmpl, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return name
}

// podClaim is pod and the ResourceClaim made for it from its template (nil: none yet).
func podClaim(ctx context.Context, t *testing.T, c *cluster.Cluster, pod string) (*corev1.Pod, *resourceapi.ResourceClaim) {
	t.Helper()
	p, err := c.Client.CoreV1().Pods("default").Get(ctx, pod, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range p.Status.ResourceClaimStatuses {
		if st.ResourceClaimName != nil {
			cl, err := c.Client.ResourceV1().ResourceClaims("default").Get(ctx, *st.ResourceClaimName, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			return p, cl
		}
	}
	return p, nil
}

// deletePods deletes pods and waits until no ResourceClaim made for them is left (the devices are free).
func deletePods(ctx context.Context, t *testing.T, c *cluster.Cluster, pods ...string) {
	t.Helper()
	for _, pod := range pods {
		if err := c.Client.CoreV1().Pods("default").Delete(ctx, pod, metav1.DeleteOptions{GracePeriodSeconds: new(int64(0))}); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(waitTimeout)
	for {
		claims, err := c.Client.ResourceV1().ResourceClaims("default").List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var left []string
		for _, cl := range claims.Items {
			for _, o := range cl.OwnerReferences {
				if o.Kind == "Pod" && slices.Contains(pods, o.Name) {
					left = append(left, cl.Name)
				}
			}
		}
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("claims %v of deleted pods %v still there after %s", left, pods, waitTimeout)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// waitUnschedulable waits for the scheduler to mark pod unschedulable and returns its message.
func waitUnschedulable(ctx context.Context, t *testing.T, c *cluster.Cluster, pod string) string {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		for _, cd := range podConditions(ctx, c, pod) {
			if cd.Type == corev1.PodScheduled && cd.Status == corev1.ConditionFalse && cd.Reason == corev1.PodReasonUnschedulable {
				return cd.Message
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("pod %s not marked unschedulable after %s: %+v", pod, waitTimeout, podConditions(ctx, c, pod))
		}
		time.Sleep(250 * time.Millisecond)
	}
}
