package allocator

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"

	"github.com/multinic/multinic/ipam/api"
)

// The IPv6 pool. A card that serves ipv6 or dual takes its pods' IPv6 addresses from /80 prefixes that
// EC2 delegated to its shared ENIs (AssignIpv6Addresses with Ipv6PrefixCount). A /80 holds 2^48
// addresses, so the pool is not a list of addresses but a cursor per prefix: each allocation takes the
// next address after the last one given out, and a released address is never given out again (the cursor
// would have to go round 2^48 addresses first): it needs no cooldown, and once a card has a prefix its
// IPv6 pool never waits on EC2. A dual allocation takes both addresses from one ENI (the pod's ipvlan
// parent carries both), or neither.

// IPv6Prefix is one /80 the allocator knows, for the ENI manager and reconcile.
type IPv6Prefix struct {
	Card   int
	ENIID  string
	Prefix netip.Prefix
	// Next is the next address the prefix gives out (past the end: none left).
	Next netip.Addr
	// Allocated counts its addresses held now.
	Allocated int
}

// IPv6Counts describes one card's IPv6 pool.
type IPv6Counts struct {
	// Prefixes the card's shared ENIs hold; Allocated addresses held from them.
	Prefixes, Allocated int
}

// EC2Prefix is one IPv6 prefix EC2 reports on one of the agent's ENIs.
type EC2Prefix struct {
	Card   int
	ENIID  string
	Prefix netip.Prefix
}

// prefix6 is one /80 of a shared ENI.
type prefix6 struct {
	card int
	eni  string
	pfx  netip.Prefix
	next netip.Addr
	held map[netip.Addr]*api.Allocation
}

// first is the address a new prefix starts at: the prefix's own first address is left out (on the
// subnet's first /80 it is the subnet-router anycast address).
func first(p netip.Prefix) netip.Addr { return p.Masked().Addr().Next() }

// unknownStart is where a prefix found in EC2 but in no checkpoint starts (reconcile's Unknown, after the
// checkpoint was lost): an earlier process may have given out its addresses, in order from first or from
// an earlier unknownStart, and nothing says how far. So it starts at a random point of the prefix's upper
// half: a node's pods use a vanishing part of 2^47 addresses, so it meets none of them (when in doubt,
// keep).
func unknownStart(p netip.Prefix) netip.Addr {
	host := 128 - p.Bits()
	if host < 8 || host > 62 {
		return first(p)
	}
	off := uint64(1)<<(host-1) + rand.Uint64N(uint64(1)<<(host-2))
	b := p.Masked().Addr().As16()
	lo := binary.BigEndian.Uint64(b[8:]) + off // no carry: off stays within the prefix's host bits
	binary.BigEndian.PutUint64(b[8:], lo)
	return netip.AddrFrom16(b)
}

func (p *prefix6) info() IPv6Prefix {
	return IPv6Prefix{Card: p.card, ENIID: p.eni, Prefix: p.pfx, Next: p.next, Allocated: len(p.held)}
}

// free reports whether the prefix can give out an address.
func (p *prefix6) free() bool { return p.pfx.Contains(p.next) }

// take is the next free address and the cursor after it; ok is false when the prefix has none left.
func (p *prefix6) take() (addr, next netip.Addr, ok bool) {
	for a := p.next; p.pfx.Contains(a); a = a.Next() {
		if p.held[a] == nil {
			return a, a.Next(), true
		}
	}
	return netip.Addr{}, p.next, false
}

func checkPrefix6(cardN int, eniID string, p netip.Prefix) error {
	switch {
	case cardN < 0:
		return fmt.Errorf("card %d: %w: must be 0 or more", cardN, api.ErrInvalid)
	case eniID == "":
		return fmt.Errorf("prefix %s on card %d: %w: empty ENI id", p, cardN, api.ErrInvalid)
	case !p.IsValid() || !p.Addr().Is6() || p.Addr().Is4In6() || p != p.Masked() || p.Bits() > 124:
		return fmt.Errorf("prefix %s on card %d ENI %s: %w: want an IPv6 prefix such as 2001:db8::/80", p, cardN, eniID, api.ErrInvalid)
	}
	return nil
}

// prefixOf returns the card's prefix holding addr, or nil.
func (c *card) prefixOf(addr netip.Addr) *prefix6 {
	for _, p := range c.v6 {
		if p.pfx.Contains(addr) {
			return p
		}
	}
	return nil
}

// pick6 returns the card's prefix to allocate from: on eniID when given, else on any ENI; the lowest
// prefix that has an address left.
func (c *card) pick6(eniID string) *prefix6 {
	var best *prefix6
	for _, p := range c.v6 {
		if (eniID != "" && p.eni != eniID) || !p.free() {
			continue
		}
		if best == nil || p.pfx.Addr().Less(best.pfx.Addr()) {
			best = p
		}
	}
	return best
}

// overlaps reports whether p overlaps a prefix the allocator knows on any card.
func (a *Allocator) overlaps(p netip.Prefix) *prefix6 {
	for _, c := range a.cards {
		for _, q := range c.v6 {
			if q.pfx.Overlaps(p) {
				return q
			}
		}
	}
	return nil
}

// AddIPv6Prefixes puts eniID's IPv6 prefixes, just assigned by EC2, into the card's IPv6 pool, skipping
// any the card already knows on that ENI, and persists; each gives out its addresses from its start. A
// prefix overlapping one known elsewhere is ErrConflict. It returns how many were added.
func (a *Allocator) AddIPv6Prefixes(cardN int, eniID string, pfxs ...netip.Prefix) (int, error) {
	return a.addIPv6Prefixes(cardN, eniID, first, pfxs)
}

// AdoptIPv6Prefixes is AddIPv6Prefixes for prefixes found on an ENI an earlier process had (adopted
// without a checkpoint that knows them): they start at unknownStart.
func (a *Allocator) AdoptIPv6Prefixes(cardN int, eniID string, pfxs ...netip.Prefix) (int, error) {
	return a.addIPv6Prefixes(cardN, eniID, unknownStart, pfxs)
}

func (a *Allocator) addIPv6Prefixes(cardN int, eniID string, start func(netip.Prefix) netip.Addr, pfxs []netip.Prefix) (int, error) {
	for _, p := range pfxs {
		if err := checkPrefix6(cardN, eniID, p); err != nil {
			return 0, fmt.Errorf("add IPv6 prefixes to card %d: %w", cardN, err)
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	c := a.card(cardN)
	var added []*prefix6
	for _, p := range pfxs {
		if q := a.overlaps(p); q != nil {
			if q.pfx == p && q.card == cardN && q.eni == eniID {
				continue
			}
			for _, x := range added {
				delete(c.v6, x.pfx)
			}
			return 0, fmt.Errorf("add IPv6 prefix %s of %s to card %d: overlaps %s on card %d ENI %s: %w",
				p, eniID, cardN, q.pfx, q.card, q.eni, ErrConflict)
		}
		x := &prefix6{card: cardN, eni: eniID, pfx: p, next: start(p), held: map[netip.Addr]*api.Allocation{}}
		c.v6[p] = x
		added = append(added, x)
	}
	if len(added) == 0 {
		return 0, nil
	}
	if err := a.persist(); err != nil {
		for _, x := range added {
			delete(c.v6, x.pfx)
		}
		return 0, fmt.Errorf("add %d IPv6 prefixes of %s to card %d: %w", len(added), eniID, cardN, err)
	}
	c.notify()
	return len(added), nil
}

// RemoveIPv6Prefixes drops prefixes of the card none of whose addresses is held, and persists; held,
// unknown ones and ones on another card are skipped (never from under a pod). It returns the ones removed.
// As for RemoveAddresses: remove here first, then unassign in EC2 what was returned.
func (a *Allocator) RemoveIPv6Prefixes(cardN int, pfxs ...netip.Prefix) ([]netip.Prefix, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	c := a.cards[cardN]
	if c == nil {
		return nil, nil
	}
	var removed []*prefix6
	for _, p := range pfxs {
		if x := c.v6[p]; x != nil && len(x.held) == 0 {
			delete(c.v6, p)
			removed = append(removed, x)
		}
	}
	if len(removed) == 0 {
		return nil, nil
	}
	if err := a.persist(); err != nil {
		for _, x := range removed {
			c.v6[x.pfx] = x
		}
		return nil, fmt.Errorf("remove %d IPv6 prefixes from card %d: %w", len(removed), cardN, err)
	}
	out := make([]netip.Prefix, len(removed))
	for i, x := range removed {
		out[i] = x.pfx
	}
	return out, nil
}

// KnownIPv6 returns every IPv6 prefix the allocator knows, by card then prefix.
func (a *Allocator) KnownIPv6() []IPv6Prefix {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.knownIPv6Locked()
}

func (a *Allocator) knownIPv6Locked() []IPv6Prefix {
	var out []IPv6Prefix
	for _, c := range a.cards {
		for _, p := range c.v6 {
			out = append(out, p.info())
		}
	}
	slices.SortFunc(out, func(x, y IPv6Prefix) int {
		return cmp.Or(cmp.Compare(x.Card, y.Card), x.Prefix.Addr().Compare(y.Prefix.Addr()))
	})
	return out
}

// IPv6Diff is what the allocator's IPv6 pool and EC2 disagree on.
type IPv6Diff struct {
	// Lost: allocations whose IPv6 address is in no prefix EC2 has on that card and ENI. Reported, not
	// released.
	Lost []api.Allocation
	// Stale: known prefixes, none of whose addresses is held, that EC2 no longer has on that card and ENI.
	// Removed.
	Stale []IPv6Prefix
	// Unknown: EC2 prefixes of the agent's shared ENIs the allocator does not know. Added.
	Unknown []EC2Prefix
}

// Empty reports whether the IPv6 pool and EC2 agree.
func (d IPv6Diff) Empty() bool { return len(d.Lost)+len(d.Stale)+len(d.Unknown) == 0 }

// CompareIPv6 is the pure core of ReconcileIPv6, as Compare is for IPv4: prefixes match by (card, ENI,
// prefix); a held prefix is never stale (when in doubt, keep).
func CompareIPv6(known []IPv6Prefix, allocs []api.Allocation, ec2 []EC2Prefix) IPv6Diff {
	type place struct {
		card int
		eni  string
		pfx  netip.Prefix
	}
	inEC2 := map[place]bool{}
	for _, e := range ec2 {
		inEC2[place{e.Card, e.ENIID, e.Prefix}] = true
	}
	var d IPv6Diff
	knownPfx := map[netip.Prefix]bool{}
	for _, k := range known {
		knownPfx[k.Prefix] = true
		if k.Allocated == 0 && !inEC2[place{k.Card, k.ENIID, k.Prefix}] {
			d.Stale = append(d.Stale, k)
		}
	}
	for _, al := range allocs {
		if !al.IPv6.IsValid() {
			continue
		}
		found := false
		for _, e := range ec2 {
			if e.Card == al.Card && e.ENIID == al.ENIID && e.Prefix.Contains(al.IPv6) {
				found = true
				break
			}
		}
		if !found {
			d.Lost = append(d.Lost, al)
		}
	}
	seen := map[netip.Prefix]bool{}
	for _, e := range ec2 {
		if knownPfx[e.Prefix] || seen[e.Prefix] {
			continue
		}
		seen[e.Prefix] = true
		d.Unknown = append(d.Unknown, e)
	}
	slices.SortFunc(d.Unknown, func(x, y EC2Prefix) int {
		return cmp.Or(cmp.Compare(x.Card, y.Card), x.Prefix.Addr().Compare(y.Prefix.Addr()))
	})
	return d
}

// ReconcileIPv6 compares the IPv6 pool with EC2's view of the agent's shared ENIs' prefixes (all of
// them: a prefix left out counts as gone), removes Stale prefixes, adds Unknown ones (starting at
// unknownStart), persists, and returns the diff. Lost allocations are left in place for the caller. An Unknown prefix that overlaps a
// known one elsewhere is left out (reported by the next pass again) rather than failing the pass.
func (a *Allocator) ReconcileIPv6(ec2 []EC2Prefix) (IPv6Diff, error) {
	for _, e := range ec2 {
		if err := checkPrefix6(e.Card, e.ENIID, e.Prefix); err != nil {
			return IPv6Diff{}, fmt.Errorf("reconcile IPv6 with EC2: %w", err)
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	d := CompareIPv6(a.knownIPv6Locked(), a.listLocked(), ec2)
	var removed, added []*prefix6
	for _, k := range d.Stale {
		c := a.cards[k.Card]
		removed = append(removed, c.v6[k.Prefix])
		delete(c.v6, k.Prefix)
	}
	unknown := d.Unknown[:0:0]
	for _, e := range d.Unknown {
		if a.overlaps(e.Prefix) != nil {
			continue
		}
		x := &prefix6{card: e.Card, eni: e.ENIID, pfx: e.Prefix, next: unknownStart(e.Prefix), held: map[netip.Addr]*api.Allocation{}}
		a.card(e.Card).v6[e.Prefix] = x
		added = append(added, x)
		unknown = append(unknown, e)
	}
	d.Unknown = unknown
	if len(removed)+len(added) == 0 {
		return d, nil
	}
	if err := a.persist(); err != nil {
		for _, x := range added {
			delete(a.cards[x.card].v6, x.pfx)
		}
		for _, x := range removed {
			a.cards[x.card].v6[x.pfx] = x
		}
		return IPv6Diff{}, fmt.Errorf("reconcile %d stale and %d unknown IPv6 prefixes: %w", len(removed), len(added), err)
	}
	for _, x := range added {
		a.cards[x.card].notify()
	}
	return d, nil
}
