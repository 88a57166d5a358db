package dra

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	kubefake "k8s.io/client-go/kubernetes/fake"

	"github.com/multinic/multinic/ipam/api"
)

// claimOf is a claim allocated on pool with devices, reserved for the pods.
func claimOf(name, uid, pool string, devices []string, pods ...types.UID) *resourceapi.ResourceClaim {
	c := &resourceapi.ResourceClaim{ObjectMeta: metav1.ObjectMeta{Namespace: "ml", Name: name, UID: types.UID(uid)}}
	c.Status.Allocation = &resourceapi.AllocationResult{}
	for _, d := range devices {
		c.Status.Allocation.Devices.Results = append(c.Status.Allocation.Devices.Results,
			resourceapi.DeviceRequestAllocationResult{Request: "cards", Driver: DriverName, Pool: pool, Device: d})
	}
	for _, p := range pods {
		c.Status.ReservedFor = append(c.Status.ReservedFor, resourceapi.ResourceClaimConsumerReference{Resource: "pods", Name: "x", UID: p})
	}
	return c
}

// podWith is pod ml/name (uid = name) with a claim from a template (its status names the claim made) and,
// when direct is set, a claim it names itself.
func podWith(name, fromTemplate, direct string) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ml", Name: name, UID: types.UID(name)}}
	if fromTemplate != "" {
		p.Spec.ResourceClaims = append(p.Spec.ResourceClaims, corev1.PodResourceClaim{Name: "cards", ResourceClaimTemplateName: new("tmpl")})
		p.Status.ResourceClaimStatuses = []corev1.PodResourceClaimStatus{{Name: "cards", ResourceClaimName: new(fromTemplate)}}
	}
	if direct != "" {
		p.Spec.ResourceClaims = append(p.Spec.ResourceClaims, corev1.PodResourceClaim{Name: "shared", ResourceClaimName: new(direct)})
	}
	return p
}

// ClaimCheck finds the claim of the attachment's pod that holds its card in its mode on this node (from a
// template or named by the pod), and refuses with code not-claimed, naming the card, whatever else.
func TestClaimCheck(t *testing.T) {
	ctx := context.Background()
	kube := kubefake.NewClientset(
		podWith("p1", "p1-cards", ""), claimOf("p1-cards", "u1", "n1", []string{"card-1", "card-3-exclusive"}, "p1"),
		podWith("p2", "", "direct"), claimOf("direct", "u2", "n1", []string{"card-2"}, "p2"),
		podWith("p3", "", "two-pods"), claimOf("two-pods", "u3", "n1", []string{"card-1"}, "p3", "p9"),
		podWith("p4", "p4-cards", ""), claimOf("p4-cards", "u4", "n2", []string{"card-1"}, "p4"),
		podWith("p5", "p5-cards", ""), claimOf("p5-cards", "u5", "n1", []string{"card-1"}, "p1"),
		podWith("p6", "", ""),
	)
	check := NewClaimCheck(kube, "n1")
	attach := func(pod string, card int, exclusive bool) api.AllocateRequest {
		return api.AllocateRequest{Card: card, Exclusive: exclusive, ContainerID: "sb-" + pod, IfName: "net1",
			PodRef: api.PodRef{PodNamespace: "ml", PodName: pod, PodUID: pod}}
	}
	for _, ok := range []struct {
		req  api.AllocateRequest
		want api.ReleaseRequest
	}{
		{attach("p1", 1, false), api.ReleaseRequest{ContainerID: "dra-u1", IfName: "card1"}},
		{attach("p1", 3, true), api.ReleaseRequest{ContainerID: "dra-u1", IfName: "card3"}},
		{attach("p2", 2, false), api.ReleaseRequest{ContainerID: "dra-u2", IfName: "card2"}},
	} {
		got, take, err := check.Reservation(ctx, ok.req)
		if err != nil || !take || got != ok.want {
			t.Errorf("%s card %d: %+v %v %v, want %+v", ok.req.PodName, ok.req.Card, got, take, err, ok.want)
		}
	}
	// The claim's own allocation (prepare's) is not checked.
	if _, take, err := check.Reservation(ctx, api.AllocateRequest{Card: 1, ContainerID: "dra-u1", IfName: "card1", Network: Network}); take || err != nil {
		t.Errorf("the claim's own allocation: take=%v err=%v, want neither", take, err)
	}
	for _, bad := range []struct {
		name string
		req  api.AllocateRequest
		want []string
	}{
		{"card not in the claim", attach("p1", 2, false), []string{"card 2", "device card-2 ", "p1-cards"}},
		{"other mode", attach("p1", 1, true), []string{"card 1", "card-1-exclusive"}},
		{"other mode, exclusive claimed", attach("p1", 3, false), []string{"card 3", "device card-3 "}},
		{"reserved for two pods", attach("p3", 1, false), []string{"card 1", "reserved for 2 pods"}},
		{"allocated on another node", attach("p4", 1, false), []string{"card 1", "p4-cards", "node n1"}},
		{"not reserved for the pod", attach("p5", 1, false), []string{"card 1", "not reserved for pod p5"}},
		{"pod without claims", attach("p6", 1, false), []string{"card 1", "no ResourceClaim", "DeviceClass multinic.io"}},
		{"pod of another uid", func() api.AllocateRequest { r := attach("p1", 1, false); r.PodUID = "old"; return r }(), []string{"card 1", "uid p1 now"}},
		{"no pod name", api.AllocateRequest{Card: 1, ContainerID: "sb", IfName: "net1"}, []string{"card 1", "K8S_POD_NAME"}},
	} {
		_, take, err := check.Reservation(ctx, bad.req)
		if take || !errors.Is(err, api.ErrNotClaimed) || api.CNICode(err) != api.CNICardNotClaimed {
			t.Errorf("%s: take=%v err=%v, want not-claimed", bad.name, take, err)
			continue
		}
		for _, w := range bad.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %q does not say %q", bad.name, err, w)
			}
		}
	}
	// The API server unreachable or the pod unknown: try again (CNI 11), not a refusal.
	if _, _, err := check.Reservation(ctx, attach("gone", 1, false)); !errors.Is(err, api.ErrTryAgain) {
		t.Errorf("unknown pod: %v, want try again", err)
	}
}

// ClaimCheck looks a pod's claims up once for all its cards' ADDs (Multus calls them in a row), while it
// keeps nothing that may still change: a pod whose claim is not allocated yet is looked up again.
func TestClaimCheckLooksUpOncePerPod(t *testing.T) {
	ctx := context.Background()
	pending := claimOf("p2-cards", "u2", "n1", nil)
	pending.Status.Allocation = nil
	kube := kubefake.NewClientset(
		podWith("p1", "p1-cards", ""), claimOf("p1-cards", "u1", "n1", []string{"card-1", "card-2", "card-3"}, "p1"),
		podWith("p2", "p2-cards", ""), pending,
	)
	check := NewClaimCheck(kube, "n1")
	for card := 1; card <= 3; card++ {
		r := api.AllocateRequest{Card: card, ContainerID: "sb", IfName: fmt.Sprintf("net%d", card), PodRef: api.PodRef{PodNamespace: "ml", PodName: "p1", PodUID: "p1"}}
		if _, take, err := check.Reservation(ctx, r); !take || err != nil {
			t.Fatalf("card %d: %v %v", card, take, err)
		}
	}
	if n := len(kube.Actions()); n != 2 {
		t.Errorf("%d API calls for 3 cards of one pod, want 2 (the pod, its claim): %v", n, kube.Actions())
	}
	kube.ClearActions()
	for range 2 {
		r := api.AllocateRequest{Card: 1, ContainerID: "sb2", IfName: "net1", PodRef: api.PodRef{PodNamespace: "ml", PodName: "p2", PodUID: "p2"}}
		if _, _, err := check.Reservation(ctx, r); !errors.Is(err, api.ErrNotClaimed) {
			t.Fatalf("unallocated claim: %v, want not-claimed", err)
		}
	}
	if n := len(kube.Actions()); n != 4 {
		t.Errorf("%d API calls for 2 ADDs of a pod whose claim is not allocated, want 4 (nothing kept)", n)
	}
}
