package agent

import (
	"context"
	"net/netip"
)

// Pools is what the agent needs from the ENI manager (package ipam/eni): the manager owns every
// EC2 call and keeps the allocator's pools filled; the agent only allocates from them.
type Pools interface {
	// Ready reports whether every managed card has its ENI attached and its link up.
	Ready() bool
	// Managed reports whether the card is one this agent serves.
	Managed(card int) bool
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
}
