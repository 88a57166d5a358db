package allocator

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/multinic/multinic/ipam/api"
)

// EC2Address is one address EC2 reports on one of the agent's ENIs.
type EC2Address struct {
	Card    int
	ENIID   string
	Address netip.Addr
	// Primary: the ENI's primary address. Never added to the shared pool; it stands for an exclusive ENI.
	Primary bool
}

// Diff is what a restored allocator and EC2 disagree on.
type Diff struct {
	// Lost: allocations whose address EC2 no longer has on that card and ENI. Reported, not released: the
	// caller decides (log, event, reclaim).
	Lost []api.Allocation
	// Stale: free known addresses EC2 no longer has on that card and ENI. Reconcile removes them.
	Stale []PoolAddress
	// Unknown: EC2 secondary addresses on shared ENIs the allocator does not know at all. Reconcile adds them
	// as warm.
	Unknown []EC2Address
}

// Empty reports whether allocator and EC2 agree.
func (d Diff) Empty() bool { return len(d.Lost)+len(d.Stale)+len(d.Unknown) == 0 }

type place struct {
	card int
	eni  string
	addr netip.Addr
}

// Compare is the pure core of reconcile: known and allocs as the allocator has them (Known, List), ec2 as
// EC2 reports the agent's ENIs. Addresses match by (card, ENI, address). An address EC2 moved to another
// ENI shows as Stale (or Lost) now and as Unknown on the next pass, once it has been removed.
func Compare(known []PoolAddress, allocs []api.Allocation, ec2 []EC2Address) Diff {
	inEC2 := make(map[place]bool, len(ec2))
	for _, e := range ec2 {
		inEC2[place{e.Card, e.ENIID, e.Address}] = true
	}
	knownAddr := make(map[netip.Addr]bool, len(known))
	exclusiveENI := map[string]bool{}
	var d Diff
	for _, k := range known {
		knownAddr[k.Address] = true
		if k.Exclusive {
			exclusiveENI[k.ENIID] = true
		}
		if !k.Allocated && !inEC2[place{k.Card, k.ENIID, k.Address}] {
			d.Stale = append(d.Stale, k)
		}
	}
	for _, al := range allocs {
		if al.Address.IsValid() && !inEC2[place{al.Card, al.ENIID, al.Address}] { // family ipv6: CompareIPv6
			d.Lost = append(d.Lost, al)
		}
	}
	seen := map[netip.Addr]bool{}
	for _, e := range ec2 {
		if e.Primary || exclusiveENI[e.ENIID] || knownAddr[e.Address] || seen[e.Address] {
			continue
		}
		seen[e.Address] = true
		d.Unknown = append(d.Unknown, e)
	}
	slices.SortFunc(d.Stale, comparePool)
	slices.SortFunc(d.Unknown, func(x, y EC2Address) int {
		if x.Card != y.Card {
			return x.Card - y.Card
		}
		return x.Address.Compare(y.Address)
	})
	return d
}

// Reconcile compares the allocator with EC2's view of the agent's ENIs (all of them: an ENI left out counts
// as gone), removes Stale addresses, adds Unknown ones as warm, persists, and returns the Diff. Lost
// allocations are left in place for the caller to handle.
func (a *Allocator) Reconcile(ec2 []EC2Address) (Diff, error) {
	for _, e := range ec2 {
		if err := checkAddress(e.Card, e.ENIID, e.Address); err != nil {
			return Diff{}, fmt.Errorf("reconcile with EC2: %w", err)
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	d := Compare(a.knownLocked(), a.listLocked(), ec2)
	if len(d.Stale)+len(d.Unknown) == 0 {
		return d, nil
	}
	var removed, added []*slot
	for _, p := range d.Stale {
		s := a.slots[p.Address]
		a.removeSlot(s)
		removed = append(removed, s)
	}
	for _, e := range d.Unknown {
		s := &slot{card: e.Card, addr: e.Address, eni: e.ENIID}
		a.addSlot(s)
		added = append(added, s)
	}
	if err := a.persist(); err != nil {
		for _, s := range added {
			a.removeSlot(s)
		}
		for _, s := range removed {
			a.addSlot(s)
		}
		return Diff{}, fmt.Errorf("reconcile %d stale and %d unknown addresses: %w", len(d.Stale), len(d.Unknown), err)
	}
	for _, s := range added {
		a.card(s.card).notify()
	}
	return d, nil
}
