package allocator

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/multinic/multinic/ipam/api"
)

// AddAddresses puts eniID's secondary addresses into the card's shared pool as warm, skipping any address
// already known (anywhere), and persists. It returns how many were added.
func (a *Allocator) AddAddresses(cardN int, eniID string, addrs ...netip.Addr) (int, error) {
	for _, ad := range addrs {
		if err := checkAddress(cardN, eniID, ad); err != nil {
			return 0, fmt.Errorf("add addresses to card %d: %w", cardN, err)
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	var added []*slot
	for _, ad := range addrs {
		if _, known := a.slots[ad]; known {
			continue
		}
		s := &slot{card: cardN, addr: ad, eni: eniID}
		a.addSlot(s)
		added = append(added, s)
	}
	if len(added) == 0 {
		return 0, nil
	}
	if err := a.persist(); err != nil {
		for _, s := range added {
			a.removeSlot(s)
		}
		return 0, fmt.Errorf("add %d addresses of %s to card %d: %w", len(added), eniID, cardN, err)
	}
	a.card(cardN).notify()
	return len(added), nil
}

// AddExclusiveENI puts a whole ENI into the card's exclusive pool; an exclusive request gets its primary
// address, and, given ipv6 (the ENI's IPv6 address; at most one), an ipv6 or dual request gets that (only
// ENIs with one serve those). Adding the same ENI again is a no-op; an ENI or address known in another
// role is ErrConflict.
func (a *Allocator) AddExclusiveENI(cardN int, eniID string, primary netip.Addr, ipv6 ...netip.Addr) error {
	var addr6 netip.Addr
	switch {
	case len(ipv6) > 1:
		return fmt.Errorf("add exclusive ENI %s to card %d: %d IPv6 addresses, want at most one: %w", eniID, cardN, len(ipv6), api.ErrInvalid)
	case len(ipv6) == 1 && !ipv6[0].Is6():
		return fmt.Errorf("add exclusive ENI %s to card %d: IPv6 address %s invalid: %w", eniID, cardN, ipv6[0], api.ErrInvalid)
	case len(ipv6) == 1:
		addr6 = ipv6[0]
	}
	if err := checkAddress(cardN, eniID, primary); err != nil {
		return fmt.Errorf("add exclusive ENI to card %d: %w", cardN, err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if s, known := a.slots[primary]; known {
		if s.exclusive && s.card == cardN && s.eni == eniID {
			return nil
		}
		return fmt.Errorf("add exclusive ENI %s to card %d: address %s already known on card %d ENI %s: %w",
			eniID, cardN, primary, s.card, s.eni, ErrConflict)
	}
	c := a.card(cardN)
	if s, known := c.exclusive[eniID]; known {
		return fmt.Errorf("add exclusive ENI %s to card %d: already there with address %s: %w",
			eniID, cardN, s.addr, ErrConflict)
	}
	for _, s := range c.shared {
		if s.eni == eniID {
			return fmt.Errorf("add exclusive ENI %s to card %d: ENI serves the shared pool: %w",
				eniID, cardN, ErrConflict)
		}
	}
	s := &slot{card: cardN, addr: primary, eni: eniID, exclusive: true, addr6: addr6}
	a.addSlot(s)
	if err := a.persist(); err != nil {
		a.removeSlot(s)
		return fmt.Errorf("add exclusive ENI %s to card %d: %w", eniID, cardN, err)
	}
	c.notify()
	return nil
}

// RemoveAddresses drops free addresses (shared, or the primary of a free exclusive ENI) from the card and
// persists. Held addresses, unknown ones and ones on another card are skipped: an allocated address is
// never removed from under a pod. It returns the ones removed.
//
// To give addresses back to EC2, remove them here first and unassign only what was returned; on an EC2
// failure, AddAddresses them back. The other order races with Allocate.
func (a *Allocator) RemoveAddresses(cardN int, addrs ...netip.Addr) ([]netip.Addr, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	var removed []*slot
	for _, ad := range addrs {
		s, ok := a.slots[ad]
		if !ok || s.card != cardN || !s.free() {
			continue
		}
		a.removeSlot(s)
		removed = append(removed, s)
	}
	if len(removed) == 0 {
		return nil, nil
	}
	if err := a.persist(); err != nil {
		for _, s := range removed {
			a.addSlot(s)
		}
		return nil, fmt.Errorf("remove %d addresses from card %d: %w", len(removed), cardN, err)
	}
	out := make([]netip.Addr, len(removed))
	for i, s := range removed {
		out[i] = s.addr
	}
	return out, nil
}

// Warm returns the card's shared addresses usable now (free and rested), by address. Resting addresses are
// not warm: the ENI manager never gives one back to EC2 during its cooldown.
func (a *Allocator) Warm(cardN int) []PoolAddress {
	return a.list(cardN, false, (*slot).usable)
}

// FreeExclusive returns the card's exclusive ENIs that are free, rested and home (usable now), by ENI ID.
func (a *Allocator) FreeExclusive(cardN int) []PoolAddress {
	return a.list(cardN, true, (*slot).usable)
}

// AwayExclusive returns the card's exclusive ENIs that are free but away (released, their link not yet
// seen back in the node netns), by ENI ID.
func (a *Allocator) AwayExclusive(cardN int) []PoolAddress {
	return a.list(cardN, true, func(s *slot, _ time.Time) bool { return s.free() && s.away })
}

// list returns the card's shared addresses (by address) or exclusive ENIs (by ENI ID) that keep accepts.
func (a *Allocator) list(cardN int, exclusive bool, keep func(*slot, time.Time) bool) []PoolAddress {
	a.mu.Lock()
	defer a.mu.Unlock()
	c := a.cards[cardN]
	if c == nil {
		return nil
	}
	now := a.now()
	var out []PoolAddress
	add := func(s *slot) {
		if keep(s, now) {
			out = append(out, s.pool())
		}
	}
	if exclusive {
		for _, s := range c.exclusive {
			add(s)
		}
		slices.SortFunc(out, func(x, y PoolAddress) int { return strings.Compare(x.ENIID, y.ENIID) })
		return out
	}
	for _, s := range c.shared {
		add(s)
	}
	slices.SortFunc(out, comparePool)
	return out
}

// SetAway marks a free exclusive ENI away (false: its link is home, ConfirmHome) and persists. Away, it
// is never given out; it still counts in the card's capacity and can be removed. An ENI that is held,
// unknown or not exclusive is api.ErrInvalid: only a free ENI's state is the ENI manager's to decide.
func (a *Allocator) SetAway(cardN int, eniID string, away bool) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	c := a.cards[cardN]
	var s *slot
	if c != nil {
		s = c.exclusive[eniID]
	}
	if s == nil || !s.free() {
		return fmt.Errorf("mark exclusive ENI %s on card %d away=%t: not a free exclusive ENI: %w", eniID, cardN, away, api.ErrInvalid)
	}
	if s.away == away {
		return nil
	}
	prevNetns := s.awayNetns
	s.away = away
	if !away {
		s.awayNetns = ""
	}
	if err := a.persist(); err != nil {
		s.away, s.awayNetns = !away, prevNetns
		return fmt.Errorf("mark exclusive ENI %s on card %d away=%t: %w", eniID, cardN, away, err)
	}
	if !away {
		c.notify()
	}
	return nil
}

// ConfirmHome makes an away exclusive ENI usable again: the ENI manager saw its link back home.
func (a *Allocator) ConfirmHome(cardN int, eniID string) error { return a.SetAway(cardN, eniID, false) }

// Stats counts the card's pools.
func (a *Allocator) Stats(cardN int) Stats {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.statsLocked(cardN)
}

func (a *Allocator) statsLocked(cardN int) Stats {
	var st Stats
	c := a.cards[cardN]
	if c == nil {
		return st
	}
	now := a.now()
	count := func(n *Counts, s *slot) {
		n.Capacity++
		switch {
		case !s.free():
			n.Allocated++
		case s.away:
			n.Away++
		case s.resting(now):
			n.Cooling++
		default:
			n.Warm++
		}
	}
	for _, s := range c.shared {
		count(&st.Counts, s)
	}
	for _, s := range c.exclusive {
		count(&st.Exclusive, s)
	}
	for _, p := range c.v6 {
		st.IPv6.Prefixes++
		st.IPv6.Allocated += len(p.held)
	}
	st.Waiting = c.waiting
	return st
}

// WaitForAddress blocks until the card could serve req (its card, mode and family: a usable address,
// exclusive ENI, IPv6 prefix, or for dual an address on an ENI with a prefix) or ctx ends; while it waits
// for an IPv4 address of the shared pool it counts in the card's Stats (Waiting). It wakes on
// AddAddresses, AddIPv6Prefixes, AddExclusiveENI, releases and reconcile, and when a resting address's time
// is up. A nil return is a hint, not a reservation: Allocate may still find the pool empty.
func (a *Allocator) WaitForAddress(ctx context.Context, req api.AllocateRequest) error {
	cardN, exclusive := req.Card, req.Exclusive
	if cardN < 0 {
		return fmt.Errorf("wait for address on card %d: %w", cardN, api.ErrInvalid)
	}
	if !exclusive && api.WantsIPv4(req.Family) {
		a.mu.Lock()
		a.card(cardN).waiting++
		a.mu.Unlock()
		defer func() {
			a.mu.Lock()
			a.card(cardN).waiting--
			a.mu.Unlock()
		}()
	}
	for {
		a.mu.Lock()
		c := a.card(cardN)
		now := a.now()
		s, p := c.pickFor(req, now)
		ready := s != nil || p != nil
		var next time.Time
		if exclusive {
			_, next = resting(c.exclusive, now)
		} else if api.WantsIPv4(req.Family) {
			_, next = resting(c.shared, now)
		}
		changed := c.changed
		a.mu.Unlock()
		if ready {
			return nil
		}
		var timeout <-chan time.Time
		var timer *time.Timer
		if !next.IsZero() {
			timer = time.NewTimer(next.Sub(now))
			timeout = timer.C
		}
		select {
		case <-ctx.Done():
			if timer != nil {
				timer.Stop()
			}
			return fmt.Errorf("wait for address on card %d: %w", cardN, ctx.Err())
		case <-changed:
		case <-timeout:
		}
		if timer != nil {
			timer.Stop()
		}
	}
}
