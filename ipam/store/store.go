// Package store keeps the allocator's checkpoint on local disk, crash-safe and owned by one agent at a time.
//
// The checkpoint is one versioned JSON document rewritten whole on every change: temp file in the same
// directory, write, fsync, rename over the old one, fsync the directory. A crash at any point leaves either
// the old or the new checkpoint, never a mix. An exclusive flock on a lock file next to it keeps a second
// agent on the node from writing the same state.
package store

import (
	"errors"
	"net/netip"
	"time"

	"github.com/multinic/multinic/internal/statefile"
	"github.com/multinic/multinic/ipam/api"
)

// Version is the checkpoint format this build writes and the newest it reads. Adding optional fields
// (an allocation's Netns and Network, Checkpoint.Recent) kept it at 1: a checkpoint without the field loads with it empty, and a build that
// does not know it ignores it, so neither direction needs a conversion.
const Version = 1

// Sentinel errors; the returned errors wrap them with the path and the cause.
var (
	// ErrCorrupt: the checkpoint exists but cannot be parsed. The caller decides what to do; the store never
	// silently starts empty.
	ErrCorrupt = errors.New("checkpoint corrupt")
	// ErrUnsupportedVersion: the checkpoint was written by a newer (or unknown) format.
	ErrUnsupportedVersion = errors.New("checkpoint version unsupported")
	// ErrLockTimeout: another process held the lock until the deadline.
	ErrLockTimeout = statefile.ErrLockTimeout
	// ErrNotLocked: Save or Unlock without holding the lock.
	ErrNotLocked = errors.New("lock not held")
	// ErrLocked: Lock called twice on the same store.
	ErrLocked = errors.New("lock already held by this store")
)

// Checkpoint is everything the allocator needs to come back after a restart.
type Checkpoint struct {
	// Version is stamped by Save; Load only returns checkpoints of a version it understands.
	Version int `json:"version"`
	// Allocations are the records the agent answered with, persisted as they are defined (api.Allocation,
	// the wire's record): the JSON keys are the wire's and the same as before the types were one.
	Allocations []api.Allocation `json:"allocations"`
	// Addresses is every address the allocator knows, held or not; a held one also appears in Allocations.
	Addresses []Address `json:"addresses"`
	// IPv6Prefixes is every IPv6 prefix the allocator knows (cards that serve ipv6 or dual); an address
	// held from one appears in Allocations as its IPv6.
	IPv6Prefixes []IPv6Prefix `json:"ipv6Prefixes,omitempty"`
	// Recent is the ENI manager's memory of its own EC2 changes (package eni), nil when it has none. The
	// allocator carries it without reading it.
	Recent *Recent `json:"recent,omitempty"`
}

// IPv6Prefix is one IPv6 prefix (a /80) of a shared ENI and where its next allocation starts: its
// addresses are given out in order and never again (see package allocator), so Next must survive restarts.
// A zero Next (a checkpoint rebuilt by --recover) means unknown: the allocator starts it where no address
// given out from the prefix's start can be.
type IPv6Prefix struct {
	Card   int          `json:"card"`
	ENIID  string       `json:"eniID"`
	Prefix netip.Prefix `json:"prefix"`
	Next   netip.Addr   `json:"next"`
}

// Recent is what the ENI manager changed in EC2 within its settle time. EC2 is eventually consistent:
// DescribeNetworkInterfaces may lag behind those changes, and an agent restarted meanwhile must believe
// them over Describe, so they are saved with the checkpoint. Each entry carries when it happened; entries
// older than the settle time are dropped.
type Recent struct {
	// ENIs created, with their attachment once it succeeded (AttachmentID empty: not attached, or the
	// attach was not seen to succeed).
	ENIs []RecentENI `json:"enis,omitempty"`
	// Detached: ENIs detached (or being detached); only ID and At are set.
	Detached []RecentENI `json:"detached,omitempty"`
	// Assigned and Unassigned: secondary addresses (IPv4 prefixes expanded; an IPv6 prefix by its first
	// address, package eni), one entry per EC2 call.
	Assigned   []RecentAddresses `json:"assigned,omitempty"`
	Unassigned []RecentAddresses `json:"unassigned,omitempty"`
}

// RecentENI is one ENI the manager created (or detached), and where it attached it.
type RecentENI struct {
	ID           string     `json:"id"`
	At           time.Time  `json:"at"`
	Card         int        `json:"card,omitempty"`
	Device       int        `json:"device,omitempty"`
	AttachmentID string     `json:"attachmentID,omitempty"`
	MAC          string     `json:"mac,omitempty"`
	SubnetID     string     `json:"subnetID,omitempty"`
	Exclusive    bool       `json:"exclusive,omitempty"`
	Primary      netip.Addr `json:"primary,omitzero"`
}

// RecentAddresses is the addresses one EC2 call assigned to, or unassigned from, one ENI.
type RecentAddresses struct {
	ENIID     string       `json:"eniID"`
	At        time.Time    `json:"at"`
	Addresses []netip.Addr `json:"addresses"`
}

// Address is one address known on a card: a secondary address of a shared ENI, or, when Exclusive, the
// primary address standing for a whole ENI that is given to one pod.
type Address struct {
	Card      int        `json:"card"`
	Address   netip.Addr `json:"address"`
	ENIID     string     `json:"eniID"`
	Exclusive bool       `json:"exclusive,omitempty"`
	// RestUntil is when a released address may be given out again; zero for one never released.
	RestUntil time.Time `json:"restUntil,omitzero"`
	// Away: an exclusive ENI released while its link was in a pod; it is not given out again until its
	// link is seen back in the node netns. AwayNetns is the netns its last holder had, when known.
	Away      bool   `json:"away,omitempty"`
	AwayNetns string `json:"awayNetns,omitempty"`
	// IPv6 is an exclusive ENI's IPv6 address, which an ipv6 or dual allocation of it gets; zero: none.
	IPv6 netip.Addr `json:"ipv6,omitzero"`
}

// Store loads and saves the checkpoint.
type Store interface {
	// Load returns the last saved checkpoint; found is false when none was ever saved.
	Load() (cp Checkpoint, found bool, err error)
	// Save durably replaces the checkpoint before returning.
	Save(cp Checkpoint) error
}

var (
	_ Store = (*FileStore)(nil)
	_ Store = (*Memory)(nil)
)
