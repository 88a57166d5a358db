// Package api is the wire protocol between the multinic CNI plugin (the client: one short-lived process per
// CNI call) and the node agent (the server, package ipam/server), spoken as HTTP/1.1 with JSON bodies over a
// root-only unix socket. It holds the request and response types, the error codes and the client, and
// nothing of the server: the plugin links this package only.
//
// Endpoints (versioned so that an old plugin and a new agent can coexist during an upgrade):
//
//	POST /v1/allocate      AllocateRequest  -> AllocateResponse
//	POST /v1/release       ReleaseRequest   -> ReleaseResponse
//	GET  /v1/allocations                    -> ListResponse
//	GET  /v1/status?card=N                  -> Status
//	GET  /v1/node                           -> NodeStatus    (read-only, for operators; ipam/server's Introspector)
//	GET  /v1/logs                           -> LogsResponse
//	GET  /v1/claims?namespace=&name=&uid=   -> ClaimsResponse (the NRI plugin's; only with --dra)
//	POST /v1/claims/interfaces ClaimInterfacesRequest -> ClaimInterfacesResponse (the NRI plugin's; only with --dra)
//
// # Compatibility
//
// During an upgrade the plugin on a node may be older or newer than its agent, in either order. The rule
// that keeps any pair working:
//
//   - A receiver ignores what it does not know: the agent ignores unknown JSON fields and query parameters
//     of a request, the client unknown fields of an answer. What it knows it validates strictly (type,
//     value, the JSON key named in the error), and the client validates its own request before sending it.
//   - So a v1 field may only add information that an older agent may safely ignore (as netns and network
//     were added: an agent without them does what it did before they existed). A request that changes
//     what is allocated or how gets a new path, /v2/..., which an older agent refuses as invalid ("no
//     endpoint") instead of serving it wrongly.
//   - A field, a path or a code is never removed or given another meaning within v1. A client treats a
//     code it does not know (from a newer agent) like CodeInternal.
//
// "family" is the one v1 field that changes what is allocated, kept in v1 because both mixed pairs stay
// safe: an older plugin sends none, which means ipv4, and the agent refuses it (CodeInvalid naming "family")
// on a card that serves ipv6 or dual instead of answering without the address the NAD promised; an older
// agent ignores it and answers without "ipv6", which Client.Allocate refuses (and releases) for a request
// of family ipv6 or dual.
//
// Agents built before this rule decoded strictly and refuse a newer plugin's "network" field; with the
// DaemonSet's rolling update (no surge) the old agent is gone before the new pod's init container installs
// the new plugin, so that pair does not meet. ipam/server's tests replay requests recorded from older
// plugins (testdata/wire).
//
// Any other answer than 200 carries an Error: {"code": "...", "message": "..."}. The codes are a small stable
// set (see Code); the client turns them back into *Error values that match the sentinels ErrInvalid,
// ErrCardTaken, ErrInterfaceTaken, ErrTryAgain, ErrNotManaged, ErrUnavailable and ErrInternal with errors.Is.
// One table (errors.go) gives each code its sentinel, HTTP status and CNI code: the agent's packages return
// the sentinels, the server finds the code with CodeOf (ipam/server's errorFor), the plugin the CNI code
// with CNICode.
//
// For debugging, as root:
//
//	curl --unix-socket /run/multinic/agent.sock http://agent/v1/allocations
package api

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/utils"
)

// DefaultSocketPath is where the agent listens and the plugin connects unless configured otherwise.
const DefaultSocketPath = "/run/multinic/agent.sock"

// Paths of the v1 endpoints.
const (
	PathAllocate    = "/v1/allocate"
	PathRelease     = "/v1/release"
	PathAllocations = "/v1/allocations"
	PathStatus      = "/v1/status"
)

// Address families of a card and of a request ("family"): which addresses a pod gets on the card. The
// empty family is FamilyIPv4, what plugins older than the field send.
const (
	FamilyIPv4 = "ipv4"
	FamilyIPv6 = "ipv6"
	FamilyDual = "dual"
)

// ValidFamily reports whether f is a family a request may carry ("" included: ipv4).
func ValidFamily(f string) bool {
	return f == "" || f == FamilyIPv4 || f == FamilyIPv6 || f == FamilyDual
}

// NormalFamily is f with the empty family spelled FamilyIPv4.
func NormalFamily(f string) string {
	if f == "" {
		return FamilyIPv4
	}
	return f
}

// WantsIPv4 and WantsIPv6 say which addresses a family gives.
func WantsIPv4(f string) bool { return f == "" || f == FamilyIPv4 || f == FamilyDual }
func WantsIPv6(f string) bool { return f == FamilyIPv6 || f == FamilyDual }

// maxIfNameLen is IFNAMSIZ less the terminating NUL.
const maxIfNameLen = 15

// AllocateRequest asks the agent for one address on one network card for one (container, interface) of a
// pod. Sending the same (containerID, ifName) again returns the same allocation.
//
// It and Allocation are the one allocation record: the allocator takes and holds them as they are and the
// checkpoint (ipam/store) persists Allocation directly, so a new field is added here only. Their JSON keys
// are therefore also the checkpoint's format: the compatibility rule below holds for both.
type AllocateRequest struct {
	// Card is the EC2 network card index (NetworkCardIndex). Required, even when 0.
	Card int `json:"card"`
	// ContainerID is CNI_CONTAINERID, the pod sandbox. Required.
	ContainerID string `json:"containerID"`
	// IfName is CNI_IFNAME, the interface name inside the pod (net1, ...). Required.
	IfName string `json:"ifName"`
	// PodRef comes from CNI_ARGS (K8S_POD_*); it identifies the pod for the one-address-per-pod-per-card
	// rule and for the agent's reclaim of gone pods' allocations.
	PodRef
	// Exclusive asks for a whole ENI (moved into the pod) instead of a shared secondary address.
	Exclusive bool `json:"exclusive,omitempty"`
	// Netns is CNI_NETNS, an absolute path; the agent's reclaim (its GC) frees the allocation once it
	// no longer exists.
	Netns string `json:"netns,omitempty"`
	// Network is the CNI configuration's "name": a CNI GC of one network frees only that network's
	// allocations. Empty from plugins older than the field; such an allocation is never freed by CNI GC.
	Network string `json:"network,omitempty"`
	// Family is FamilyIPv4 (also when empty, as plugins older than the field send), FamilyIPv6 or
	// FamilyDual: the network's "family". It must be the card's family as the agent serves it, or the
	// request is refused (CodeInvalid naming "family").
	Family string `json:"family,omitempty"`
}

// AllocateResponse is a granted AllocateRequest: what the plugin needs to build the pod interface. The
// IPv4 fields are those of every release before IPv6; Address is zero (the JSON "") for family ipv6.
type AllocateResponse struct {
	// Address is the pod's IPv4 address, e.g. "10.0.16.5".
	Address netip.Addr `json:"address"`
	// PrefixLen is the subnet's prefix length, e.g. 20.
	PrefixLen int `json:"prefixLen"`
	// Gateway is the subnet's router (the VPC's .1 address).
	Gateway netip.Addr `json:"gateway"`
	// SubnetCIDR is the ENI's subnet, e.g. "10.0.16.0/20".
	SubnetCIDR netip.Prefix `json:"subnetCIDR"`
	// ENIID is the EC2 network interface that carries Address, e.g. "eni-0123456789abcdef0".
	ENIID string `json:"eniID"`
	// LinkName is the ENI's link in the node's netns: the ipvlan parent, or the link to move in exclusive mode.
	LinkName string `json:"linkName"`
	// MAC is the ENI's hardware address, e.g. "02:12:34:56:78:9a".
	MAC string `json:"mac"`
	// MTU is the ENI link's MTU.
	MTU int `json:"mtu"`
	// Exclusive is true when the whole ENI belongs to this pod (Address is its primary address).
	Exclusive bool `json:"exclusive,omitempty"`
	// IPv6 is the pod's IPv6 address for family ipv6 and dual, on the same ENI as Address; nil for ipv4.
	IPv6 *IPv6Lease `json:"ipv6,omitempty"`
}

// IPv6Lease is the IPv6 part of an allocation.
type IPv6Lease struct {
	// Address is the pod's address, e.g. "2001:db8:ec2:1::5".
	Address netip.Addr `json:"address"`
	// PrefixLen is the subnet's prefix length: 64 on EC2.
	PrefixLen int `json:"prefixLen"`
	// Gateway is the VPC router's link-local address, which the pod routes via: EC2's router answers
	// neighbour discovery for fe80:ec2::1 on every subnet (the address the AWS VPC CNI routes its IPv6 pods
	// via), so it is the same on every card and needs no on-link route of the subnet.
	Gateway netip.Addr `json:"gateway"`
	// SubnetCIDR is the ENI's subnet's IPv6 CIDR, e.g. "2001:db8:ec2:1::/64".
	SubnetCIDR netip.Prefix `json:"subnetCIDR"`
}

// PodRef names a pod as CNI_ARGS do (K8S_POD_NAMESPACE, K8S_POD_NAME, K8S_POD_UID). Every record that names
// a pod embeds it (this request, the allocator's, the checkpoint's), so the JSON keys stay flat and the fields
// read as before: req.PodName.
type PodRef struct {
	PodNamespace string `json:"podNamespace,omitempty"`
	PodName      string `json:"podName,omitempty"`
	PodUID       string `json:"podUID,omitempty"`
}

// Describe names the pod for logs, errors and events: "ns/name (uid U)", "ns/name", "uid U", or "" when
// nothing is known. (Not String: embedded in a record, it would print for the whole record.)
func (p PodRef) Describe() string {
	switch {
	case p.PodName != "" && p.PodUID != "":
		return p.PodNamespace + "/" + p.PodName + " (uid " + p.PodUID + ")"
	case p.PodName != "":
		return p.PodNamespace + "/" + p.PodName
	case p.PodUID != "":
		return "uid " + p.PodUID
	}
	return ""
}

// ReleaseRequest gives back what (containerID, ifName) holds. Releasing twice, or something never allocated,
// is not an error: Released is then false.
type ReleaseRequest struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
}

// ReleaseResponse says whether an allocation existed and was released.
type ReleaseResponse struct {
	Released bool `json:"released"`
}

// Allocation is a granted AllocateRequest: one live allocation in the agent, as the allocator holds it, the
// checkpoint saves it and GET /v1/allocations lists it. Address is zero for a shared allocation of family
// ipv6; an exclusive one's is its ENI's primary address whatever the family (it stands for the whole ENI).
type Allocation struct {
	AllocateRequest
	Address     netip.Addr `json:"address"`
	ENIID       string     `json:"eniID"`
	AllocatedAt time.Time  `json:"allocatedAt"`
	// IPv6 is the allocation's IPv6 address (family ipv6 or dual), on ENIID; omitted for ipv4. (omitzero,
	// not omitempty: encoding/json never omits a struct such as netip.Addr for omitempty.)
	IPv6 netip.Addr `json:"ipv6,omitzero"`
}

// ListResponse is the body of GET /v1/allocations.
type ListResponse struct {
	Allocations []Allocation `json:"allocations"`
}

// Status says whether an ADD on the card could be served now: the agent is up, manages the card, and has a
// free address or can get one. The plugin answers CNI STATUS with it.
type Status struct {
	Card  int  `json:"card"`
	Ready bool `json:"ready"`
	// Reason explains Ready=false, e.g. "card 3: subnet subnet-0abc has no free addresses".
	Reason string `json:"reason,omitempty"`
}

// Validate checks what the agent needs; errors match ErrInvalid and name the JSON key.
func (r AllocateRequest) Validate() error {
	if r.Card < 0 {
		return invalidf("\"card\" %d invalid: must be 0 or more", r.Card)
	}
	if err := checkIDs(r.ContainerID, r.IfName); err != nil {
		return err
	}
	if err := checkNetwork(r.Network); err != nil {
		return err
	}
	if !ValidFamily(r.Family) {
		return invalidf("\"family\" %q invalid: must be %q, %q or %q", r.Family, FamilyIPv4, FamilyIPv6, FamilyDual)
	}
	if r.Netns != "" && !filepath.IsAbs(r.Netns) {
		return invalidf("\"netns\" %q invalid: must be an absolute path", r.Netns)
	}
	return nil
}

// Validate checks the release request; errors match ErrInvalid and name the JSON key.
func (r ReleaseRequest) Validate() error { return checkIDs(r.ContainerID, r.IfName) }

// checkIDs applies CNI's own rules (as skel and libcni check CNI_CONTAINERID and CNI_IFNAME), so that a
// local client cannot store what no runtime could send.
func checkIDs(containerID, ifName string) error {
	if containerID == "" {
		return invalidf("\"containerID\" is required")
	}
	if e := utils.ValidateContainerID(containerID); e != nil {
		return invalidf("\"containerID\" %q invalid: must match [a-zA-Z0-9][a-zA-Z0-9_.-]*", containerID)
	}
	return checkIfName(ifName)
}

// checkIfName applies the kernel's rules for interface names, as CNI does.
func checkIfName(name string) error {
	if name == "" {
		return invalidf("\"ifName\" is required")
	}
	if e := utils.ValidateInterfaceName(name); e != nil || strings.ContainsRune(name, 0) {
		return invalidf("\"ifName\" %q invalid: at most %d bytes, not \".\" or \"..\", no '/', ':' or whitespace", name, maxIfNameLen)
	}
	return nil
}

// checkNetwork applies CNI's rule for network names to a non-empty name.
func checkNetwork(name string) error {
	if name == "" {
		return nil
	}
	if e := utils.ValidateNetworkName(name); e != nil {
		return invalidf("\"network\" %q invalid: must match [a-zA-Z0-9][a-zA-Z0-9_.-]*", name)
	}
	return nil
}

func invalidf(format string, args ...any) *Error {
	return &Error{Code: CodeInvalid, Message: fmt.Sprintf(format, args...)}
}
