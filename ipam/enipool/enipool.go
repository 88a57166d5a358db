// Package enipool is the contract between the ENI manager (ipam/eni), which owns every EC2 call and keeps
// the allocator's per-card pools filled, and the allocation backend (ipam/backend), which only allocates from
// them: the interface the manager implements, the ENI facts an allocation answer needs, and the manager's
// error the backend tells apart. It imports nothing of the project, so neither side depends on the other.
package enipool

import (
	"context"
	"errors"
	"net/netip"
)

// ErrCardFull: the card has as many ENIs as the instance type allows and they are all full. The ENI
// manager returns it; the agent tells it apart for the Node's events.
var ErrCardFull = errors.New("card full")

// Pools is what the agent needs from the ENI manager: the manager owns every EC2 call and keeps the
// allocator's pools filled; the agent only allocates from them.
type Pools interface {
	// Ready reports whether every managed card has its ENI attached and its link up.
	Ready() bool
	// Managed reports whether the card is one this agent serves.
	Managed(card int) bool
	// Family is the address family a managed card serves: api.FamilyIPv4, FamilyIPv6 or FamilyDual.
	Family(card int) string
	// ENI describes an ENI the manager created, for the plugin: its link in the node netns,
	// its MAC and MTU, and its subnet. ok is false for an ENI the manager does not know.
	ENI(eniID string) (info ENIInfo, ok bool)
	// Kick asks for a refill check of the card's pool now (after an allocation, or when a
	// caller is waiting on an empty pool). It never blocks.
	Kick(card int)
	// LastError is the most recent EC2 failure while filling the card's pool, or nil. Its
	// message carries EC2's own error code; the agent returns it in "try again" answers.
	LastError(card int) error
	// EnsureExclusive makes sure the card has a free whole ENI for an exclusive allocation,
	// creating and attaching one when none is free (bounded by ctx and the card's limit).
	EnsureExclusive(ctx context.Context, card int) error
}

// ENIInfo is what an allocation answer needs to know about the ENI behind an address.
type ENIInfo struct {
	ID         string
	Card       int
	LinkName   string // the ENI's link in the node's netns
	MAC        string
	MTU        int
	SubnetCIDR netip.Prefix
	Gateway    netip.Addr // the subnet's router: its network address + 1
	// IPv6SubnetCIDR is the subnet's IPv6 block (invalid: the subnet has none); IPv6Gateway the VPC
	// router's link-local address, which pods route IPv6 via.
	IPv6SubnetCIDR netip.Prefix
	IPv6Gateway    netip.Addr
}
