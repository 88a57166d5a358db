package dra

import (
	"context"
	"errors"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	kubefake "k8s.io/client-go/kubernetes/fake"

	"github.com/multinic/multinic/ipam/api"
)

// claimPod is pod "p" (uid "pod-uid") of namespace ns using the claims named, the first by name, the others
// made from templates (as the pod's status lists them); every claim is reserved for it.
func claimPod(claims ...*resourceapi.ResourceClaim) *corev1.Pod {
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "p", UID: "pod-uid"}}
	for i, c := range claims {
		c.Status.ReservedFor = append(c.Status.ReservedFor, resourceapi.ResourceClaimConsumerReference{Resource: "pods", Name: "p", UID: pod.UID})
		name := c.Name
		if i == 0 {
			pod.Spec.ResourceClaims = append(pod.Spec.ResourceClaims, corev1.PodResourceClaim{Name: "direct", ResourceClaimName: &name})
			continue
		}
		ref := "t" + c.Name
		tmpl := "template"
		pod.Spec.ResourceClaims = append(pod.Spec.ResourceClaims, corev1.PodResourceClaim{Name: ref, ResourceClaimTemplateName: &tmpl})
		pod.Status.ResourceClaimStatuses = append(pod.Status.ResourceClaimStatuses, corev1.PodResourceClaimStatus{Name: ref, ResourceClaimName: &name})
	}
	return pod
}

var thePod = api.PodRef{PodNamespace: "ns", PodName: "p", PodUID: "pod-uid"}

// TestAttachments: a pod's claims (by name and from a template) give one attachment per multinic.io device on this
// node, each with the prepared allocation's own request and lease; no address is taken for it, another
// driver's device is skipped, and every API call is one PolicyRules grants.
func TestAttachments(t *testing.T) {
	c1, c2 := claim("u1", "card-1", "gpu.example.com/gpu-0"), claim("u2", "card-2-exclusive", "card-3")
	kube := kubefake.NewClientset(claimPod(c1, c2), c1, c2)
	f := newFakeAllocations()
	p := newTestPlugin(f)
	withKube(p, kube)
	for _, c := range []*resourceapi.ResourceClaim{c1, c2} {
		if r := prepareOne(t, p, c); r.Err != nil {
			t.Fatal(r.Err)
		}
	}
	before, _ := f.List(context.Background())
	atts, err := p.Claims(context.Background(), thePod)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]struct {
		claim     string
		card      int
		exclusive bool
	}{"card-1": {"ns/c-u1", 1, false}, "card-2-exclusive": {"ns/c-u2", 2, true}, "card-3": {"ns/c-u2", 3, false}}
	if len(atts) != len(want) {
		t.Fatalf("attachments %+v, want %d", atts, len(want))
	}
	for _, a := range atts {
		w, ok := want[a.Device]
		prepared := f.of(types.UID(strings.TrimPrefix(w.claim, "ns/c-")))[ClaimIfName(w.card)]
		switch {
		case !ok || a.Claim != w.claim:
			t.Errorf("attachment %+v: not one of %v", a, want)
		case a.Request != prepared.AllocateRequest || a.Request.Card != w.card || a.Request.Exclusive != w.exclusive:
			t.Errorf("attachment %s: request %+v, want the prepared %+v", a.Device, a.Request, prepared.AllocateRequest)
		case a.Lease.Address != prepared.Address || a.Lease.Exclusive != w.exclusive:
			t.Errorf("attachment %s: lease %+v, want the prepared address %s", a.Device, a.Lease, prepared.Address)
		}
	}
	if after, _ := f.List(context.Background()); len(after) != len(before) {
		t.Errorf("Claims changed the allocations: %d before, %d after", len(before), len(after))
	}
	for _, a := range kube.Actions() {
		if a.GetVerb() == "get" && !allowed(a) {
			t.Errorf("call not granted by PolicyRules: %s %s/%s", a.GetVerb(), a.GetResource().Group, a.GetResource().Resource)
		}
	}
}

// TestAttachmentsNone: a pod without claims, a pod the API server does not know, and another pod of the same name
// (another UID) have no attachments.
func TestAttachmentsNone(t *testing.T) {
	c := claim("u1", "card-1")
	pod := claimPod(c)
	plain := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "plain", UID: "plain-uid"}}
	p := newTestPlugin(newFakeAllocations())
	withKube(p, kubefake.NewClientset(pod, plain, c))
	if r := prepareOne(t, p, c); r.Err != nil {
		t.Fatal(r.Err)
	}
	for _, ref := range []api.PodRef{
		{PodNamespace: "ns", PodName: "plain", PodUID: "plain-uid"},
		{PodNamespace: "ns", PodName: "gone", PodUID: "gone-uid"},
		{PodNamespace: "ns", PodName: "p", PodUID: "earlier-uid"},
	} {
		if atts, err := p.Claims(context.Background(), ref); err != nil || len(atts) != 0 {
			t.Errorf("Claims(%s) = %+v, %v; want none", ref.Describe(), atts, err)
		}
	}
}

// TestAttachmentsRefuses: what the kubelet would not start a pod with, or what one device cannot serve, is an
// error, never a partial answer: a claim not reserved for the pod or not prepared (try again), a claim reserved
// for two pods (invalid: one device is one address).
func TestAttachmentsRefuses(t *testing.T) {
	for name, tc := range map[string]struct {
		edit    func(c *resourceapi.ResourceClaim)
		prepare bool
		code    error
		want    string
	}{
		"not reserved": {func(c *resourceapi.ResourceClaim) { c.Status.ReservedFor = nil }, true, api.ErrTryAgain, "not reserved for the pod"},
		"not prepared": {func(*resourceapi.ResourceClaim) {}, false, api.ErrTryAgain, "not prepared on this node"},
		"two pods": {func(c *resourceapi.ResourceClaim) {
			c.Status.ReservedFor = append(c.Status.ReservedFor, resourceapi.ResourceClaimConsumerReference{Resource: "pods", Name: "q", UID: "other"})
		}, true, api.ErrInvalid, "reserved for 2 pods"},
	} {
		t.Run(name, func(t *testing.T) {
			c1, c2 := claim("u1", "card-1"), claim("u2", "card-2")
			pod := claimPod(c1, c2)
			tc.edit(c2)
			p := newTestPlugin(newFakeAllocations())
			withKube(p, kubefake.NewClientset(pod, c1, c2))
			for _, c := range []*resourceapi.ResourceClaim{c1, c2} {
				if tc.prepare || c == c1 {
					if r := prepareOne(t, p, c); r.Err != nil {
						t.Fatal(r.Err)
					}
				}
			}
			atts, err := p.Claims(context.Background(), thePod)
			if !errors.Is(err, tc.code) || !strings.Contains(err.Error(), tc.want) || atts != nil {
				t.Errorf("Claims() = %+v, %v; want %v saying %q", atts, err, tc.code, tc.want)
			}
		})
	}
}

// TestAttachmentsLeavesTakenOver: a device whose allocation the pod's Multus attachment of the card took over is
// left to that attachment; the claim's other devices are still attached.
func TestAttachmentsLeavesTakenOver(t *testing.T) {
	c := claim("u1", "card-1", "card-2")
	f := newFakeAllocations()
	p := newTestPlugin(f)
	withKube(p, kubefake.NewClientset(claimPod(c), c))
	if r := prepareOne(t, p, c); r.Err != nil {
		t.Fatal(r.Err)
	}
	// The takeover: the claim's card 2 allocation now belongs to the pod's CNI attachment net1.
	k := [2]string{ClaimContainerID(c.UID), ClaimIfName(2)}
	al := f.als[k]
	delete(f.als, k)
	al.ContainerID, al.IfName, al.PodRef = "sandbox", "net1", thePod
	f.als[[2]string{"sandbox", "net1"}] = al
	atts, err := p.Claims(context.Background(), thePod)
	if err != nil || len(atts) != 1 || atts[0].Device != "card-1" {
		t.Errorf("Claims() = %+v, %v; want card-1 only", atts, err)
	}
}
