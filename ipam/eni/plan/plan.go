// Package plan is the ENI manager's pool policy, and nothing else: a card as the manager sees it at one
// instant (its ENIs, the allocator's counts and free addresses, what waits, the surplus timers) goes in,
// the actions to take come out. It calls nothing, reads no clock and keeps no state, so every rule is a
// table test: refill (Need, Batch), batch halving (Smaller), hysteresis and shrink (Surplus, the surplus
// timers), cooldown (resting addresses count as free but are never given back; Backoff after failures),
// exclusive ENIs (made for waiting allocations, waited for on a full card, given back when unasked), the
// card's address family (an IPv6 /80 on every shared ENI of an ipv6 or dual card; no IPv4 kept warm on an
// ipv6 card), and idle work (DeleteOnTermination, a top-up nothing waits for), which waits while EC2 is busy.
// Package eni gathers the input, executes the plan against EC2 and the allocator, and plans again.
package plan

import (
	"cmp"
	"net/netip"
	"slices"
	"time"

	"github.com/multinic/multinic/ipam/allocator"
)

// PrefixSize is how many addresses a /28 prefix delegates.
const PrefixSize = 16

// Config is the policy's settings (package eni's Config, defaults applied).
type Config struct {
	// WarmTarget free addresses per card; MinFree of them usable right now.
	WarmTarget, MinFree int
	// MaxBatch bounds the addresses one call asks for.
	MaxBatch int
	// PrefixMode: the shared pool is filled with /28 prefixes, one per slot.
	PrefixMode bool
	// SurplusDelay: how long an address (or a free exclusive ENI) must stay surplus before it goes back.
	SurplusDelay time.Duration
}

// ENI is one of the manager's ENIs on the card.
type ENI struct {
	ID        string
	Device    int
	Exclusive bool
	// Ready: its link is up and nothing of it waits to join a pool.
	Ready bool
	// PendingExclusive: an exclusive ENI made but not yet in the exclusive pool.
	PendingExclusive bool
	// DeleteOnTermination is set on its attachment.
	DeleteOnTermination bool
	// Slots it uses: its primary, its secondary addresses and its prefixes.
	Slots    int
	Prefixes []netip.Prefix
	// IPv6Prefixes counts its IPv6 /80s.
	IPv6Prefixes int
}

// Card is one card as the manager sees it.
type Card struct {
	// The card's address family: NoIPv4 for ipv6 (no IPv4 address is allocated), IPv6 for ipv6 and dual.
	NoIPv4, IPv6 bool
	ENIs         []ENI
	// Attached counts the ENIs attached to the card, the manager's or not; MaxENIs is the most it takes.
	Attached, MaxENIs int
	// SlotsPerENI is how many addresses (the primary included) or prefixes (plus the primary) an ENI holds.
	SlotsPerENI int
	// Pool is the allocator's counts of the card's pools, with the allocations waiting for an address.
	Pool allocator.Stats
	// Warm is the shared pool's addresses usable now; FreeExclusive the exclusive ENIs usable now that the
	// card may give back (launch ENIs are not among them).
	Warm, FreeExclusive []allocator.PoolAddress
	// ExclusiveWaiting counts exclusive allocations waiting for an ENI; ExclusiveAsked: one asked and was
	// not served yet.
	ExclusiveWaiting int
	ExclusiveAsked   bool
	// SurplusSince and ExclusiveSince are the previous plan's timers: since when each surplus address
	// (each free exclusive ENI) has been surplus.
	SurplusSince   map[netip.Addr]time.Time
	ExclusiveSince map[string]time.Time
	Now            time.Time
	// BusyUntil: until then EC2 counts as busy (it throttled the agent lately: in a cluster scale-up every
	// new node's agent wants the account's tokens at once). Idle work is not planned before it, so that
	// the account's tokens go to the calls something waits for; zero: never busy.
	BusyUntil time.Time
}

// Kind is what an Action does.
type Kind int

const (
	// SetDeleteOnTermination on ENIID's attachment.
	SetDeleteOnTermination Kind = iota
	// FinishENI: wait for ENIID's link, set it up, hand its addresses (or itself) to the allocator.
	FinishENI
	// CreateENI creates and attaches an ENI: Exclusive, or shared with Batch addresses (prefixes) to start.
	CreateENI
	// Assign Batch more addresses (prefixes) to ENIID.
	Assign
	// GiveBack unassigns Addresses of ENIID, or its whole Prefix in prefix mode, once the allocator let go
	// of them.
	GiveBack
	// RemoveExclusive detaches and deletes the free exclusive ENIID, whose primary is Addresses[0].
	RemoveExclusive
	// AssignIPv6Prefix gives the shared ENIID an IPv6 /80 (an ENI of an ipv6 or dual card found without).
	AssignIPv6Prefix
)

// Action is one thing to do.
type Action struct {
	Kind      Kind
	ENIID     string
	Exclusive bool
	Batch     int
	Addresses []netip.Addr
	Prefix    netip.Prefix
	// Need and Waiting are the shared pool's demand a refill serves, for logs.
	Need, Waiting int
	// Idle: nothing waits for it (DeleteOnTermination, a top-up while MinFree is usable and no allocation
	// waits). It was planned because EC2 was not busy; if EC2 throttles it, it gives way (one attempt)
	// and waits for the next plan, without failing the card.
	Idle bool
}

// Plan is the actions to take now, in order, and the timers to keep for the next plan.
type Plan struct {
	Actions []Action
	// Next is when a surplus address or a free exclusive ENI comes due, or when idle work waiting for a busy
	// EC2 may go (zero: none pending).
	Next           time.Time
	SurplusSince   map[netip.Addr]time.Time
	ExclusiveSince map[string]time.Time
}

// Step plans the card's next actions; the manager executes them and plans again until a plan has none.
// In order: repairs (ENIs not ready, a missing IPv6 /80) and the card's first shared ENI, alone, so what
// follows sees them done; then exclusive ENIs to make or give back; then the shared refill; then, unless
// EC2 is busy, DeleteOnTermination on the ENIs without it; and only once the refill needs nothing, the
// shared surplus to give back. DeleteOnTermination is idle work: until it is set, an ENI left behind by a
// terminated node is the orphan sweep's (orphans.go).
func Step(c Card, cfg Config) Plan {
	p := Plan{SurplusSince: c.SurplusSince, ExclusiveSince: c.ExclusiveSince}
	if c.NoIPv4 { // IPv6 only: no IPv4 address is ever allocated, none is kept
		cfg.WarmTarget, cfg.MinFree = 0, 0
	}
	busy := c.Now.Before(c.BusyUntil)
	enis := slices.Clone(c.ENIs)
	slices.SortFunc(enis, func(x, y ENI) int { return cmp.Or(cmp.Compare(x.Device, y.Device), cmp.Compare(x.ID, y.ID)) })
	shared := 0
	for _, e := range enis {
		if !e.Exclusive {
			shared++
		}
	}
	for _, e := range enis {
		switch {
		case !e.Ready:
			p.Actions = append(p.Actions, Action{Kind: FinishENI, ENIID: e.ID})
		case !e.Exclusive && e.IPv6Prefixes == 0 && c.IPv6:
			p.Actions = append(p.Actions, Action{Kind: AssignIPv6Prefix, ENIID: e.ID})
		}
	}
	if shared == 0 { // the card's first ENI, whatever the demand: it makes the card ready
		p.Actions = append(p.Actions, Action{Kind: CreateENI, Batch: Batch(cfg.WarmTarget, c.SlotsPerENI-1, cfg), Need: cfg.WarmTarget})
	}
	if len(p.Actions) > 0 {
		return p
	}

	p.Actions = append(p.Actions, supplyExclusive(c)...)
	var removals []Action
	removals, p.ExclusiveSince, p.Next = shrinkExclusive(c, cfg)
	p.Actions = append(p.Actions, removals...)

	if refill, ok := refill(c, enis, cfg); ok {
		if refill.Idle && busy {
			p.Next = earliest(p.Next, c.BusyUntil)
		} else {
			p.Actions = append(p.Actions, refill)
		}
		return p
	}
	var dot []Action
	for _, e := range enis {
		switch {
		case e.DeleteOnTermination:
		case busy:
			p.Next = earliest(p.Next, c.BusyUntil)
		default:
			dot = append(dot, Action{Kind: SetDeleteOnTermination, ENIID: e.ID, Idle: true})
		}
	}
	if len(dot) > 0 {
		p.Actions = append(p.Actions, dot...)
		return p
	}
	var giveBacks []Action
	var next time.Time
	giveBacks, p.SurplusSince, next = shrink(c, enis, cfg)
	p.Actions = append(p.Actions, giveBacks...)
	p.Next = earliest(p.Next, next)
	return p
}

// Need is how many addresses the shared pool should ask EC2 for: enough that free addresses (warm plus
// resting, which come back by themselves after their cooldown) reach the warm target, with every
// allocation waiting on top. When fewer than MinFree are usable right now, enough that the warm target is
// usable right now: refilling only up to MinFree would take one small EC2 call after another while a
// churn keeps many addresses resting.
func Need(st allocator.Stats, cfg Config) int {
	w := st.Waiting
	need := cfg.WarmTarget + w - (st.Warm + st.Cooling)
	if st.Warm < cfg.MinFree+w {
		need = max(cfg.WarmTarget, cfg.MinFree) + w - st.Warm
	}
	return max(need, 0)
}

// Batch is what one call asks for to serve need on an ENI with room free slots: addresses, or prefixes
// in prefix mode (at least one), at most MaxBatch addresses.
func Batch(need, room int, cfg Config) int {
	if cfg.PrefixMode {
		return max(min(ceilDiv(need, PrefixSize), room, max(1, cfg.MaxBatch/PrefixSize)), 0)
	}
	return max(min(need, room, cfg.MaxBatch), 0)
}

func ceilDiv(a, b int) int { return (a + b - 1) / b }

// Smaller is the batch to ask for after EC2 said the subnet cannot give n: half of it for an assign, and
// nothing beyond the primary address for a create (an ENI with its primary alone still serves exclusive
// allocations and whatever the subnet frees later). ok is false when there is nothing smaller to ask.
func Smaller(n int, create bool) (smaller int, ok bool) {
	switch {
	case create && n > 0:
		return 0, true
	case !create && n > 1:
		return n / 2, true
	}
	return n, false
}

// Backoff is how long a card waits after its failures-th failure in a row before it tries again: a tenth of
// the refill interval, doubling, at most maxWait. Kicks are ignored meanwhile, so allocations waiting on an
// empty pool cannot hammer EC2 with a request that keeps failing.
func Backoff(failures int, refillInterval, maxWait time.Duration) time.Duration {
	return min(maxWait, (refillInterval/10)<<min(max(failures, 1)-1, 20))
}

// WorthWaiting: on a card that takes no more ENIs, an exclusive ENI resting or away will be usable again,
// so an exclusive allocation waits for it instead of failing.
func WorthWaiting(exclusive allocator.Counts) bool { return exclusive.Cooling+exclusive.Away > 0 }

// Surplus is the shared pool's warm addresses beyond the warm target, highest first: the candidates to
// give back. Resting addresses are never warm, so an address goes back at the earliest SurplusDelay after
// its cooldown ended.
func Surplus(warm []allocator.PoolAddress, warmTarget int) []allocator.PoolAddress {
	if len(warm) <= warmTarget {
		return nil
	}
	out := slices.Clone(warm)
	slices.SortFunc(out, func(x, y allocator.PoolAddress) int { return y.Address.Compare(x.Address) })
	return out[:len(out)-max(warmTarget, 0)]
}

// refill is the shared pool's next refill action, if it needs one: an assign to the ready shared ENI with
// room and the lowest device index, or a new ENI when none has room. It is idle (a top-up) while no
// allocation waits and MinFree addresses are usable.
func refill(c Card, enis []ENI, cfg Config) (Action, bool) {
	need := Need(c.Pool, cfg)
	if need == 0 {
		return Action{}, false
	}
	a := Action{Need: need, Waiting: c.Pool.Waiting, Idle: c.Pool.Waiting == 0 && c.Pool.Warm >= cfg.MinFree}
	for _, e := range enis { // by device
		if !e.Exclusive && e.Ready && e.Slots < c.SlotsPerENI {
			a.Kind, a.ENIID, a.Batch = Assign, e.ID, Batch(need, c.SlotsPerENI-e.Slots, cfg)
			return a, true
		}
	}
	a.Kind, a.Batch = CreateENI, Batch(need, c.SlotsPerENI-1, cfg)
	return a, true
}

// shrink gives back the warm addresses that have been surplus for SurplusDelay (hysteresis: an address
// that stops being surplus starts over), grouped by ENI; in prefix mode only whole prefixes all of whose
// addresses are due.
func shrink(c Card, enis []ENI, cfg Config) ([]Action, map[netip.Addr]time.Time, time.Time) {
	surplus := Surplus(c.Warm, cfg.WarmTarget)
	eniOf := make(map[netip.Addr]string, len(surplus))
	keys := make([]netip.Addr, 0, len(surplus))
	for _, p := range surplus {
		eniOf[p.Address] = p.ENIID
		keys = append(keys, p.Address)
	}
	dueAddrs, since, next := due(keys, c.SurplusSince, cfg.SurplusDelay, c.Now)
	byENI := map[string][]netip.Addr{}
	for _, a := range dueAddrs {
		byENI[eniOf[a]] = append(byENI[eniOf[a]], a)
	}
	var out []Action
	for _, e := range enis { // by device
		addrs := byENI[e.ID]
		if e.Exclusive || len(addrs) == 0 {
			continue
		}
		slices.SortFunc(addrs, netip.Addr.Compare)
		if !cfg.PrefixMode {
			out = append(out, Action{Kind: GiveBack, ENIID: e.ID, Addresses: addrs})
			continue
		}
		for _, pfx := range e.Prefixes {
			in := slices.DeleteFunc(slices.Clone(addrs), func(a netip.Addr) bool { return !pfx.Masked().Contains(a) })
			if len(in) == 1<<(32-pfx.Bits()) {
				out = append(out, Action{Kind: GiveBack, ENIID: e.ID, Addresses: in, Prefix: pfx})
			}
		}
	}
	return out, since, next
}

// wantExclusive is how many exclusive ENIs are wanted now: one per waiting allocation, or one for an ask
// not served yet.
func wantExclusive(c Card) int {
	if c.ExclusiveWaiting == 0 && c.ExclusiveAsked {
		return 1
	}
	return c.ExclusiveWaiting
}

// supplyExclusive makes an exclusive ENI while more are wanted than are usable or being made. On a full
// card an ENI resting or away is waited for; without one, the create is planned anyway and fails with the
// card full, which the waiting allocations hear.
func supplyExclusive(c Card) []Action {
	coming := 0
	for _, e := range c.ENIs {
		if e.PendingExclusive {
			coming++
		}
	}
	if wantExclusive(c) <= c.Pool.Exclusive.Warm+coming {
		return nil
	}
	if c.Attached >= c.MaxENIs && WorthWaiting(c.Pool.Exclusive) {
		return nil
	}
	return []Action{{Kind: CreateENI, Exclusive: true}}
}

// shrinkExclusive gives back the exclusive ENIs free and rested for SurplusDelay, unless exclusive
// allocations want one (then the timers stand still).
func shrinkExclusive(c Card, cfg Config) ([]Action, map[string]time.Time, time.Time) {
	if wantExclusive(c) > 0 {
		return nil, c.ExclusiveSince, time.Time{}
	}
	primary := make(map[string]netip.Addr, len(c.FreeExclusive))
	keys := make([]string, 0, len(c.FreeExclusive))
	for _, p := range c.FreeExclusive {
		primary[p.ENIID] = p.Address
		keys = append(keys, p.ENIID)
	}
	ids, since, next := due(keys, c.ExclusiveSince, cfg.SurplusDelay, c.Now)
	slices.Sort(ids)
	var out []Action
	for _, id := range ids {
		out = append(out, Action{Kind: RemoveExclusive, ENIID: id, Addresses: []netip.Addr{primary[id]}})
	}
	return out, since, next
}

// due is the keys surplus for delay by now, the timers of the keys still surplus (a new one starts now; a
// key no longer given drops its timer), and when the next one comes due (zero: none).
func due[K comparable](keys []K, since map[K]time.Time, delay time.Duration, now time.Time) ([]K, map[K]time.Time, time.Time) {
	kept := make(map[K]time.Time, len(keys))
	var out []K
	var next time.Time
	for _, k := range keys {
		t, ok := since[k]
		if !ok {
			t = now
		}
		kept[k] = t
		if at := t.Add(delay); !at.After(now) {
			out = append(out, k)
		} else {
			next = earliest(next, at)
		}
	}
	return out, kept, next
}

// earliest is the earlier of two times, a zero one meaning none.
func earliest(a, b time.Time) time.Time {
	switch {
	case a.IsZero():
		return b
	case b.IsZero() || a.Before(b):
		return a
	}
	return b
}
