package dra

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/multinic/multinic/ipam/api"
)

// ClaimCheck decides a CNI attachment (a Multus NAD of a card) on a node whose cards the scheduler hands out
// through DRA: the card must be a device of a ResourceClaim of the attachment's pod, allocated on this node
// in the attachment's mode, and the attachment takes over the address the claim's prepare reserved instead
// of a second one. It asks the API server (the pod, then its claims): the pod's claims are decided by the
// scheduler, not by anything this node has seen. What it found for a pod is kept for claimsTTL, so the ADDs
// of one pod's cards (Multus calls them one after the other) cost one lookup, not one per card (client-go's
// default rate limit, 5/s after a burst of 10, would slow a 7-card pod): a claim allocated and reserved for
// the pod does not change while the pod lives. Make it with NewClaimCheck.
type ClaimCheck struct {
	kube kubernetes.Interface
	node string

	mu     sync.Mutex
	recent map[types.UID]podClaims
}

// claimsTTL is how long ClaimCheck keeps a pod's claims.
const claimsTTL = 30 * time.Second

type podClaims struct {
	pod    *corev1.Pod
	claims []*resourceapi.ResourceClaim
	at     time.Time
}

// NewClaimCheck checks attachments on node against the API server behind kube.
func NewClaimCheck(kube kubernetes.Interface, node string) *ClaimCheck {
	return &ClaimCheck{kube: kube, node: node, recent: map[types.UID]podClaims{}}
}

// Reservation implements backend.Claims. A claim's own allocation (prepare's key, network Network) is not
// checked. Refusals wrap api.ErrNotClaimed (CNI code 104) and name the card.
func (c *ClaimCheck) Reservation(ctx context.Context, req api.AllocateRequest) (api.ReleaseRequest, bool, error) {
	if strings.HasPrefix(req.ContainerID, claimPrefix) && req.Network == Network {
		return api.ReleaseRequest{}, false, nil
	}
	device := DeviceName(req.Card, modeOf(req.Exclusive))
	refuse := func(format string, args ...any) (api.ReleaseRequest, bool, error) {
		return api.ReleaseRequest{}, false, fmt.Errorf("card %d (device %s of %s): %s: %w", req.Card, device, DriverName,
			fmt.Sprintf(format, args...), api.ErrNotClaimed)
	}
	if req.PodName == "" {
		return refuse("the request names no pod (K8S_POD_NAME), so its ResourceClaims cannot be checked; DRA is on for node %s", c.node)
	}
	pc, err := c.lookup(ctx, req)
	if err != nil {
		return api.ReleaseRequest{}, false, fmt.Errorf("card %d: %w: %w", req.Card, api.ErrTryAgain, err)
	}
	pod := pc.pod
	if req.PodUID != "" && string(pod.UID) != req.PodUID {
		return refuse("pod %s/%s is uid %s now, not the request's %s", req.PodNamespace, req.PodName, pod.UID, req.PodUID)
	}
	var names []string
	for _, claim := range pc.claims {
		names = append(names, claim.Name)
		if !c.holds(claim, device) {
			continue
		}
		if !reservedFor(claim, pod.UID) {
			return refuse("ResourceClaim %s/%s holds it but is not reserved for pod %s", claim.Namespace, claim.Name, pod.Name)
		}
		if n := len(claim.Status.ReservedFor); n > 1 {
			// One device is one address (or one ENI): it cannot be the interface of two pods.
			return refuse("ResourceClaim %s/%s is reserved for %d pods; a %s device serves one pod", claim.Namespace, claim.Name, n, DriverName)
		}
		return api.ReleaseRequest{ContainerID: ClaimContainerID(claim.UID), IfName: ClaimIfName(req.Card)}, true, nil
	}
	if len(names) == 0 {
		return refuse("pod %s/%s has no ResourceClaim, and DRA is on for node %s: claim the card with DeviceClass %s", pod.Namespace, pod.Name, c.node, DriverName)
	}
	return refuse("no ResourceClaim of pod %s/%s (%s) holds it on node %s", pod.Namespace, pod.Name, strings.Join(names, ", "), c.node)
}

// lookup is req's pod and its claims: kept from an earlier lookup of the same pod UID within claimsTTL, or
// from the API server (kept then only when every claim is allocated and reserved for the pod: final).
func (c *ClaimCheck) lookup(ctx context.Context, req api.AllocateRequest) (podClaims, error) {
	now := time.Now()
	c.mu.Lock()
	for uid, pc := range c.recent {
		if now.Sub(pc.at) > claimsTTL {
			delete(c.recent, uid)
		}
	}
	pc, ok := c.recent[types.UID(req.PodUID)]
	c.mu.Unlock()
	if ok && req.PodUID != "" {
		return pc, nil
	}
	pod, err := c.kube.CoreV1().Pods(req.PodNamespace).Get(ctx, req.PodName, metav1.GetOptions{})
	if err != nil {
		return podClaims{}, fmt.Errorf("get pod %s/%s for its ResourceClaims: %w", req.PodNamespace, req.PodName, err)
	}
	pc = podClaims{pod: pod, at: now}
	final := true
	for _, name := range claimNames(pod) {
		claim, err := c.kube.ResourceV1().ResourceClaims(pod.Namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return podClaims{}, fmt.Errorf("get ResourceClaim %s/%s of pod %s: %w", pod.Namespace, name, pod.Name, err)
		}
		pc.claims = append(pc.claims, claim)
		final = final && claim.Status.Allocation != nil && reservedFor(claim, pod.UID)
	}
	if final && len(pc.claims) > 0 && string(pod.UID) == req.PodUID {
		c.mu.Lock()
		c.recent[pod.UID] = pc
		c.mu.Unlock()
	}
	return pc, nil
}

// claimNames are the names of pod's ResourceClaims: those it names, and those made for it from templates
// (pod status; a template's claim not made yet is not there).
func claimNames(pod *corev1.Pod) []string {
	var out []string
	for _, rc := range pod.Spec.ResourceClaims {
		if rc.ResourceClaimName != nil {
			out = append(out, *rc.ResourceClaimName)
			continue
		}
		for _, st := range pod.Status.ResourceClaimStatuses {
			if st.Name == rc.Name && st.ResourceClaimName != nil {
				out = append(out, *st.ResourceClaimName)
			}
		}
	}
	return out
}

// holds says whether claim's allocation has device of this driver in this node's pool.
func (c *ClaimCheck) holds(claim *resourceapi.ResourceClaim, device string) bool {
	if claim.Status.Allocation == nil {
		return false
	}
	return slices.ContainsFunc(claim.Status.Allocation.Devices.Results, func(r resourceapi.DeviceRequestAllocationResult) bool {
		return r.Driver == DriverName && r.Pool == c.node && r.Device == device
	})
}

func reservedFor(claim *resourceapi.ResourceClaim, uid types.UID) bool {
	return slices.ContainsFunc(claim.Status.ReservedFor, func(r resourceapi.ResourceClaimConsumerReference) bool {
		return r.Resource == "pods" && r.UID == uid
	})
}
