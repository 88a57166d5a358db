package dra

import (
	"context"
	"fmt"
	"slices"
	"strings"

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
// of a second one. It asks the API server each time (the pod, then its claims): the pod's claims are
// decided by the scheduler, not by anything this node has seen.
type ClaimCheck struct {
	Kube     kubernetes.Interface
	NodeName string
}

// Reservation implements backend.Claims. A claim's own allocation (prepare's key, network Network) is not
// checked. Refusals wrap api.ErrNotClaimed (CNI code 104) and name the card.
func (c ClaimCheck) Reservation(ctx context.Context, req api.AllocateRequest) (api.ReleaseRequest, bool, error) {
	if strings.HasPrefix(req.ContainerID, claimPrefix) && req.Network == Network {
		return api.ReleaseRequest{}, false, nil
	}
	device := DeviceName(req.Card, modeOf(req.Exclusive))
	refuse := func(format string, args ...any) (api.ReleaseRequest, bool, error) {
		return api.ReleaseRequest{}, false, fmt.Errorf("card %d (device %s of %s): %s: %w", req.Card, device, DriverName,
			fmt.Sprintf(format, args...), api.ErrNotClaimed)
	}
	if req.PodName == "" {
		return refuse("the request names no pod (K8S_POD_NAME), so its ResourceClaims cannot be checked; DRA is on for node %s", c.NodeName)
	}
	pod, err := c.Kube.CoreV1().Pods(req.PodNamespace).Get(ctx, req.PodName, metav1.GetOptions{})
	if err != nil {
		return api.ReleaseRequest{}, false, fmt.Errorf("card %d: get pod %s/%s for its ResourceClaims: %w: %w", req.Card, req.PodNamespace, req.PodName, api.ErrTryAgain, err)
	}
	if req.PodUID != "" && string(pod.UID) != req.PodUID {
		return refuse("pod %s/%s is uid %s now, not the request's %s", req.PodNamespace, req.PodName, pod.UID, req.PodUID)
	}
	names := claimNames(pod)
	for _, name := range names {
		claim, err := c.Kube.ResourceV1().ResourceClaims(pod.Namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return api.ReleaseRequest{}, false, fmt.Errorf("card %d: get ResourceClaim %s/%s of pod %s: %w: %w", req.Card, pod.Namespace, name, pod.Name, api.ErrTryAgain, err)
		}
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
		return refuse("pod %s/%s has no ResourceClaim, and DRA is on for node %s: claim the card with DeviceClass %s", pod.Namespace, pod.Name, c.NodeName, DriverName)
	}
	return refuse("no ResourceClaim of pod %s/%s (%s) holds it on node %s", pod.Namespace, pod.Name, strings.Join(names, ", "), c.NodeName)
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
func (c ClaimCheck) holds(claim *resourceapi.ResourceClaim, device string) bool {
	if claim.Status.Allocation == nil {
		return false
	}
	return slices.ContainsFunc(claim.Status.Allocation.Devices.Results, func(r resourceapi.DeviceRequestAllocationResult) bool {
		return r.Driver == DriverName && r.Pool == c.NodeName && r.Device == device
	})
}

func reservedFor(claim *resourceapi.ResourceClaim, uid types.UID) bool {
	return slices.ContainsFunc(claim.Status.ReservedFor, func(r resourceapi.ResourceClaimConsumerReference) bool {
		return r.Resource == "pods" && r.UID == uid
	})
}
