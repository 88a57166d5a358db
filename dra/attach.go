package dra

import (
	"context"
	"fmt"
	"slices"

	resourceapi "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/multinic/multinic/ipam/api"
)

// Claims are the prepared devices of pod's ResourceClaims on this node, for the NRI plugin to attach
// (ipam/server.Claimer). It reads the pod and its claims from the API server each time, so it holds no state
// that a restart could lose: a claim counts only when it is allocated and reserved for this very pod (by
// UID). Each device's lease is what Allocate answers for the prepared allocation's own request, unchanged
// (idempotent: no new address, and Unprepare still frees it). A pod the API server does not know (a static
// pod, whose spec cannot name claims) has none.
func (p *Plugin) Claims(ctx context.Context, pod api.PodRef) ([]api.ClaimAttachment, error) {
	if p.cfg.Kube == nil {
		return nil, fmt.Errorf("claims of pod %s: %w: no API client", pod.Describe(), api.ErrInternal)
	}
	obj, err := p.cfg.Kube.CoreV1().Pods(pod.PodNamespace).Get(ctx, pod.PodName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("claims of pod %s: %w: %w", pod.Describe(), api.ErrTryAgain, err)
	}
	if string(obj.UID) != pod.PodUID {
		return nil, nil // another pod of that name now: this one's claims are not to be read from it
	}
	names := claimNames(obj)
	held, err := p.cfg.Allocations.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("claims of pod %s: %w", pod.Describe(), err)
	}
	var out []api.ClaimAttachment
	for _, name := range names {
		c, err := p.cfg.Kube.ResourceV1().ResourceClaims(pod.PodNamespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return nil, fmt.Errorf("claims of pod %s: claim %s: %w: %w", pod.Describe(), name, api.ErrTryAgain, err)
		}
		atts, err := p.claimAttachments(ctx, c, obj.UID, held)
		if err != nil {
			return nil, fmt.Errorf("claims of pod %s: %w", pod.Describe(), err)
		}
		out = append(out, atts...)
	}
	return out, nil
}

// claimAttachments are claim's devices on this node with their prepared allocations. The claim must be
// reserved for pod, and for pod alone (one device is one address, as ClaimCheck says). A device whose allocation the pod holds under another key (a Multus attachment of the
// card took the claim's allocation over) is left to that attachment; one that is not there at all is an
// error: the kubelet prepares a claim before it starts the pod.
func (p *Plugin) claimAttachments(ctx context.Context, c *resourceapi.ResourceClaim, pod types.UID, held []api.Allocation) ([]api.ClaimAttachment, error) {
	name := c.Namespace + "/" + c.Name
	if !reservedFor(c, pod) {
		return nil, fmt.Errorf("claim %s is not reserved for the pod: %w", name, api.ErrTryAgain)
	}
	if n := len(c.Status.ReservedFor); n > 1 {
		return nil, fmt.Errorf("claim %s is reserved for %d pods; a %s device serves one pod: %w", name, n, DriverName, api.ErrInvalid)
	}
	devs, err := p.claimDevices(c)
	if err != nil {
		return nil, err
	}
	var out []api.ClaimAttachment
	for _, d := range devs {
		key := [2]string{ClaimContainerID(c.UID), ClaimIfName(d.card)}
		i := slices.IndexFunc(held, func(al api.Allocation) bool { return al.ContainerID == key[0] && al.IfName == key[1] })
		if i < 0 {
			if slices.ContainsFunc(held, func(al api.Allocation) bool { return al.PodUID == string(pod) && al.Card == d.card }) {
				continue
			}
			return nil, fmt.Errorf("claim %s: device %s is not prepared on this node: %w", name, d.result.Device, api.ErrTryAgain)
		}
		lease, err := p.cfg.Allocations.Allocate(ctx, held[i].AllocateRequest)
		if err != nil {
			return nil, fmt.Errorf("claim %s: device %s: %w", name, d.result.Device, err)
		}
		out = append(out, api.ClaimAttachment{Claim: name, Device: d.result.Device, Request: held[i].AllocateRequest, Lease: lease})
	}
	return out, nil
}
