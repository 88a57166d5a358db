package api

import (
	"context"
	"fmt"
	"net/url"
	"slices"
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

// PathClaimInterfaces is POST /v1/claims/interfaces ClaimInterfacesRequest -> ClaimInterfacesResponse: the NRI
// plugin tells the agent which interfaces it built in (or removed from) a pod for the pod's claim devices, and
// the agent writes them into the claims' status (networkData.interfaceName) in the background. An agent
// older than the call answers CodeInvalid ("no endpoint"); the plugin logs that and goes on.
const PathClaimInterfaces = "/v1/claims/interfaces"

// PodInterface is the interface IfName inside a pod of the pod's claim device on Card.
type PodInterface struct {
	Card   int    `json:"card"`
	IfName string `json:"ifName"`
}

// ClaimInterfacesRequest is the body of POST /v1/claims/interfaces: the pod's claim interfaces attached and
// detached since the last report (a Synchronize reports those already there again; that is harmless).
type ClaimInterfacesRequest struct {
	PodRef
	Attached []PodInterface `json:"attached,omitempty"`
	Detached []PodInterface `json:"detached,omitempty"`
}

// ClaimInterfacesResponse is the (empty) answer of POST /v1/claims/interfaces: the status is written later.
type ClaimInterfacesResponse struct{}

// Validate checks a claim interfaces report: the agent finds the claim devices by the pod's UID and the card;
// errors match ErrInvalid and name the key.
func (r ClaimInterfacesRequest) Validate() error {
	if r.PodUID == "" {
		return invalidf("\"podUID\" is required")
	}
	for _, i := range append(slices.Clone(r.Attached), r.Detached...) {
		switch {
		case i.Card < 0:
			return invalidf("\"card\" %d invalid: must be 0 or more", i.Card)
		case i.IfName == "":
			return invalidf("\"ifName\" is required (card %d)", i.Card)
		}
	}
	return nil
}

// ClaimInterfaces reports the pod's claim interfaces attached and detached (see PathClaimInterfaces).
func (c *Client) ClaimInterfaces(ctx context.Context, req ClaimInterfacesRequest) error {
	var resp ClaimInterfacesResponse
	err := req.Validate()
	if err == nil {
		err = c.do(ctx, c.timeoutFor(DefaultTimeout), methodPost, PathClaimInterfaces, req, &resp)
	}
	if err != nil {
		return fmt.Errorf("report the claim interfaces of pod %s: %w", req.Describe(), err)
	}
	return nil
}
