package api

import (
	"context"
	"fmt"
	"net/url"
)

// PathClaims is GET /v1/claims?namespace=NS&name=N&uid=U -> ClaimsResponse: the allocations the agent's DRA
// kubelet plugin prepared for the pod's ResourceClaims, as the NRI plugin attaches them. An agent without DRA
// answers CodeInvalid ("no endpoint").
const PathClaims = "/v1/claims"

// ClaimAttachment is one prepared device of a pod's claim: the allocation's own request (its key is the
// claim's, not the pod's: package dra's ClaimContainerID and ClaimIfName), and its lease, what the plugin
// needs to build the pod's interface, exactly as an idempotent Allocate of Request answers it.
type ClaimAttachment struct {
	// Claim is the ResourceClaim, "namespace/name"; Device the device's name in the driver's pool.
	Claim  string `json:"claim"`
	Device string `json:"device"`
	// Request is the prepared allocation as the agent holds it (card, key, mode, network, family).
	Request AllocateRequest `json:"request"`
	// Lease is the allocation as an AllocateResponse.
	Lease AllocateResponse `json:"lease"`
}

// ClaimsResponse is the body of GET /v1/claims.
type ClaimsResponse struct {
	Attachments []ClaimAttachment `json:"attachments"`
}

// Validate checks the pod of a claims request: the NRI plugin knows all three, and the agent needs the UID to
// tell this pod from an earlier one of the same name.
func (p PodRef) Validate() error {
	switch {
	case p.PodNamespace == "":
		return invalidf("\"namespace\" is required")
	case p.PodName == "":
		return invalidf("\"name\" is required")
	case p.PodUID == "":
		return invalidf("\"uid\" is required")
	}
	return nil
}

// ClaimsQuery is the query of GET /v1/claims for pod.
func ClaimsQuery(pod PodRef) url.Values {
	return url.Values{"namespace": {pod.PodNamespace}, "name": {pod.PodName}, "uid": {pod.PodUID}}
}

// PodOfClaimsQuery is the pod a GET /v1/claims query names; errors match ErrInvalid and name the key.
func PodOfClaimsQuery(q url.Values) (PodRef, error) {
	pod := PodRef{PodNamespace: q.Get("namespace"), PodName: q.Get("name"), PodUID: q.Get("uid")}
	return pod, pod.Validate()
}

// Claims returns the prepared claim devices of pod on this node (none: the pod has no multinic.io claim).
func (c *Client) Claims(ctx context.Context, pod PodRef) ([]ClaimAttachment, error) {
	var resp ClaimsResponse
	err := pod.Validate()
	if err == nil {
		err = c.do(ctx, c.timeoutFor(DefaultTimeout), methodGet, PathClaims+"?"+ClaimsQuery(pod).Encode(), nil, &resp)
	}
	if err != nil {
		return nil, fmt.Errorf("get the claims of pod %s: %w", pod.Describe(), err)
	}
	return resp.Attachments, nil
}
