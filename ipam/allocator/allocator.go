// Package allocator is the node agent's per-card address allocator: warm pools, one address per
// (pod, card), cooldown before reuse, and whole-ENI (exclusive) allocations. It knows nothing of EC2, links
// or pool policy: the ENI manager feeds it addresses (inventory.go) and plans refills and give-backs from
// its counts (package ipam/eni/plan). It takes and holds the wire's record as it is (api.AllocateRequest
// in, api.Allocation out and in the checkpoint): no copy of its own.
//
// Every operation that changes state writes the whole state through a store.Store before it returns; if the
// write fails the in-memory change is undone, so memory and disk never disagree about what was answered.
// One mutex serialises everything, including that write.
package allocator

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/multinic/multinic/ipam/api"
	"github.com/multinic/multinic/ipam/store"
)

// DefaultCooldown is how long a released address rests before it is given out again, so that peers' ARP
// entries and conntrack state for the old pod age out first.
const DefaultCooldown = 30 * time.Second

// PoolAddress is one address the allocator knows, for the ENI manager and reconcile.
type PoolAddress struct {
	Card    int
	ENIID   string
	Address netip.Addr
	// Exclusive: the primary address standing for a whole ENI in the card's exclusive pool.
	Exclusive bool
	// IPv6 is an exclusive ENI's IPv6 address (zero: it has none), which an ipv6 or dual allocation of
	// the ENI gets.
	IPv6      netip.Addr
	Allocated bool
	// RestUntil is when a released address may be reused; zero if never released.
	RestUntil time.Time
	// Away: a free exclusive ENI whose link has not been seen back in the node netns since its release;
	// AwayNetns is the netns of the allocation that released it ("" when unknown). See ConfirmHome.
	Away      bool
	AwayNetns string
}

// Counts describes one pool of a card. Capacity = Allocated + Warm + Cooling + Away.
type Counts struct {
	Capacity  int
	Allocated int
	// Warm: free and rested, ready to allocate now.
	Warm int
	// Cooling: free but still resting after a release.
	Cooling int
	// Away: exclusive ENIs released whose link is not confirmed back in the node netns.
	Away int
}

// Stats is a card's shared pool (embedded) and its exclusive-ENI pool.
type Stats struct {
	Counts
	Exclusive Counts
	// Waiting counts the allocations blocked on the empty shared pool right now (WaitForAddress): demand
	// a refill must cover at once.
	Waiting int
	// IPv6 is the card's IPv6 pool (ipv6.go).
	IPv6 IPv6Counts
}

// Option configures New.
type Option func(*Allocator)

// WithCooldown sets how long released addresses rest; 0 disables the rest.
func WithCooldown(d time.Duration) Option { return func(a *Allocator) { a.cooldown = d } }

// WithMaxAllocations caps the allocations held at once (0: no cap), so that a buggy local client cannot
// drain the subnets; a new allocation beyond it is api.ErrLimit. A checkpoint holding more still loads.
func WithMaxAllocations(n int) Option { return func(a *Allocator) { a.maxAllocs = n } }

// WithClock replaces time.Now, for tests.
func WithClock(now func() time.Time) Option { return func(a *Allocator) { a.nowFn = now } }

// Allocator holds every card's pools and allocations.
type Allocator struct {
	st       store.Store
	nowFn    func() time.Time
	cooldown time.Duration
	// maxAllocs caps len(allocs) for new allocations; 0: no cap.
	maxAllocs int

	mu     sync.Mutex
	cards  map[int]*card
	slots  map[netip.Addr]*slot // every known address, across cards: an address lives in one place only
	allocs map[key]*api.Allocation
	// recent is the ENI manager's memory of its EC2 changes as the checkpoint held it; once the manager
	// hands over its memory (CarryRecent), every save takes recentFn's instead. Never read here.
	recent   *store.Recent
	recentFn func() *store.Recent
}

type key struct{ containerID, ifName string }

func keyOf(r api.AllocateRequest) key { return key{r.ContainerID, r.IfName} }

// slot is one known address: a secondary of a shared ENI or the primary of an exclusive ENI.
type slot struct {
	card      int
	addr      netip.Addr
	eni       string
	exclusive bool
	addr6     netip.Addr      // exclusive only: the ENI's IPv6 address, if it has one
	holder    *api.Allocation // nil when free
	restUntil time.Time
	// away (exclusive only): released, its link not yet confirmed home; never given out meanwhile.
	away      bool
	awayNetns string
}

func (s *slot) free() bool { return s.holder == nil }
func (s *slot) usable(now time.Time) bool {
	return s.holder == nil && !s.away && !s.restUntil.After(now)
}
func (s *slot) resting(now time.Time) bool {
	return s.holder == nil && !s.away && s.restUntil.After(now)
}

func (s *slot) pool() PoolAddress {
	return PoolAddress{Card: s.card, ENIID: s.eni, Address: s.addr, Exclusive: s.exclusive, IPv6: s.addr6,
		Allocated: s.holder != nil, RestUntil: s.restUntil, Away: s.away, AwayNetns: s.awayNetns}
}

type card struct {
	shared    map[netip.Addr]*slot
	exclusive map[string]*slot // by ENI id
	v6        map[netip.Prefix]*prefix6
	allocs    map[key]*api.Allocation
	// changed is closed (and replaced) whenever an address may have become available on the card.
	changed chan struct{}
	// waiting counts WaitForAddress calls blocked on the shared pool: demand the refill must cover now.
	waiting int
}

// New returns an allocator persisting through st, restored from st's checkpoint when there is one. A
// checkpoint that cannot be read or breaks an invariant is an error: the caller decides whether to start
// empty.
func New(st store.Store, opts ...Option) (*Allocator, error) {
	a := &Allocator{
		st:       st,
		nowFn:    time.Now,
		cooldown: DefaultCooldown,
		cards:    map[int]*card{},
		slots:    map[netip.Addr]*slot{},
		allocs:   map[key]*api.Allocation{},
	}
	for _, o := range opts {
		o(a)
	}
	cp, found, err := st.Load()
	if err != nil {
		return nil, fmt.Errorf("restore allocator: %w", err)
	}
	if found {
		if err := a.restore(cp); err != nil {
			return nil, fmt.Errorf("restore allocator: %w: %w", store.ErrCorrupt, err)
		}
	}
	return a, nil
}

// now is the clock without monotonic reading or zone, so times compare equal after a checkpoint round trip.
func (a *Allocator) now() time.Time { return a.nowFn().Round(0).UTC() }

func (a *Allocator) card(n int) *card {
	c := a.cards[n]
	if c == nil {
		c = &card{
			shared:    map[netip.Addr]*slot{},
			exclusive: map[string]*slot{},
			v6:        map[netip.Prefix]*prefix6{},
			allocs:    map[key]*api.Allocation{},
			changed:   make(chan struct{}),
		}
		a.cards[n] = c
	}
	return c
}

func (c *card) notify() {
	close(c.changed)
	c.changed = make(chan struct{})
}

func (a *Allocator) addSlot(s *slot) {
	a.slots[s.addr] = s
	c := a.card(s.card)
	if s.exclusive {
		c.exclusive[s.eni] = s
	} else {
		c.shared[s.addr] = s
	}
}

func (a *Allocator) removeSlot(s *slot) {
	delete(a.slots, s.addr)
	c := a.card(s.card)
	if s.exclusive {
		delete(c.exclusive, s.eni)
	} else {
		delete(c.shared, s.addr)
	}
}

// hold records al as holding s (nil: no IPv4 address, family ipv6) and p's address al.IPv6 (p nil: none).
func (a *Allocator) hold(s *slot, p *prefix6, al *api.Allocation) {
	if s != nil {
		s.holder = al
	}
	if p != nil {
		p.held[al.IPv6] = al
	}
	k := keyOf(al.AllocateRequest)
	a.allocs[k] = al
	a.card(al.Card).allocs[k] = al
}

func (a *Allocator) unhold(s *slot, p *prefix6, al *api.Allocation) {
	if s != nil {
		s.holder = nil
	}
	if p != nil {
		delete(p.held, al.IPv6)
	}
	k := keyOf(al.AllocateRequest)
	delete(a.allocs, k)
	delete(a.card(al.Card).allocs, k)
}

// slotOf is the IPv4 slot al holds (nil for family ipv6), and prefixOf6 the IPv6 prefix (nil for ipv4).
func (a *Allocator) slotOf(al *api.Allocation) *slot {
	if !al.Address.IsValid() {
		return nil
	}
	return a.slots[al.Address]
}

func (a *Allocator) prefixOf6(al *api.Allocation) *prefix6 {
	if !al.IPv6.IsValid() || al.Exclusive { // an exclusive ENI's IPv6 address is its own, in no prefix
		return nil
	}
	return a.card(al.Card).prefixOf(al.IPv6)
}

func (a *Allocator) persist() error {
	if err := a.st.Save(a.checkpoint()); err != nil {
		return fmt.Errorf("save checkpoint: %w", err)
	}
	return nil
}

// Recent is the ENI manager's memory of its EC2 changes as the next checkpoint would carry it: the restored
// checkpoint's until the manager hands over its own (nil: none).
func (a *Allocator) Recent() *store.Recent {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.recentFn != nil {
		return a.recentFn()
	}
	return a.recent
}

// CarryRecent makes every later checkpoint carry fn's result: the ENI manager's memory of its own EC2
// changes rides along with the allocations it must agree with. fn must not call the allocator.
func (a *Allocator) CarryRecent(fn func() *store.Recent) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.recentFn = fn
}

// SaveRecent writes the checkpoint now: the carried memory changed while the allocator did not.
func (a *Allocator) SaveRecent() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.persist()
}

// checkpoint is the allocator's state as the store persists it: the allocations themselves (the record the
// wire defines, api.Allocation), every known address, and the ENI manager's memory it carries.
func (a *Allocator) checkpoint() store.Checkpoint {
	cp := store.Checkpoint{
		Allocations: a.listLocked(),
		Addresses:   make([]store.Address, 0, len(a.slots)),
		Recent:      a.recent,
	}
	if a.recentFn != nil {
		cp.Recent = a.recentFn()
	}
	for _, p := range a.knownIPv6Locked() {
		cp.IPv6Prefixes = append(cp.IPv6Prefixes, store.IPv6Prefix{Card: p.Card, ENIID: p.ENIID, Prefix: p.Prefix, Next: p.Next})
	}
	for _, p := range a.knownLocked() {
		cp.Addresses = append(cp.Addresses, store.Address{
			Card: p.Card, Address: p.Address, ENIID: p.ENIID, Exclusive: p.Exclusive, RestUntil: p.RestUntil,
			Away: p.Away, AwayNetns: p.AwayNetns, IPv6: p.IPv6,
		})
	}
	return cp
}

func (a *Allocator) restore(cp store.Checkpoint) error {
	a.recent = cp.Recent
	for _, ad := range cp.Addresses {
		if err := checkAddress(ad.Card, ad.ENIID, ad.Address); err != nil {
			return err
		}
		if _, dup := a.slots[ad.Address]; dup {
			return fmt.Errorf("address %s listed twice", ad.Address)
		}
		if ad.Exclusive {
			if _, dup := a.card(ad.Card).exclusive[ad.ENIID]; dup {
				return fmt.Errorf("exclusive ENI %s listed twice on card %d", ad.ENIID, ad.Card)
			}
		}
		if (ad.Away || ad.IPv6.IsValid()) && !ad.Exclusive {
			return fmt.Errorf("shared address %s marked away or with an IPv6 address", ad.Address)
		}
		a.addSlot(&slot{card: ad.Card, addr: ad.Address, eni: ad.ENIID, exclusive: ad.Exclusive, restUntil: ad.RestUntil,
			away: ad.Away, awayNetns: ad.AwayNetns, addr6: ad.IPv6})
	}
	for _, sp := range cp.IPv6Prefixes {
		if err := checkPrefix6(sp.Card, sp.ENIID, sp.Prefix); err != nil {
			return err
		}
		if q := a.overlaps(sp.Prefix); q != nil {
			return fmt.Errorf("IPv6 prefix %s overlaps %s", sp.Prefix, q.pfx)
		}
		next := sp.Next
		switch {
		case !next.IsValid(): // a checkpoint that does not know the position (--recover's): see unknownStart
			next = unknownStart(sp.Prefix)
		case !sp.Prefix.Contains(next) && next.Less(first(sp.Prefix)):
			next = first(sp.Prefix)
		}
		a.card(sp.Card).v6[sp.Prefix] = &prefix6{card: sp.Card, eni: sp.ENIID, pfx: sp.Prefix, next: next,
			held: map[netip.Addr]*api.Allocation{}}
	}
	for _, sa := range cp.Allocations {
		al := &sa
		if err := checkRequest(al.AllocateRequest); err != nil {
			return err
		}
		if _, dup := a.allocs[keyOf(al.AllocateRequest)]; dup {
			return fmt.Errorf("container %s interface %s allocated twice", al.ContainerID, al.IfName)
		}
		var p *prefix6
		if al.Exclusive && al.IPv6.IsValid() {
			if s := a.slots[al.Address]; s == nil || s.addr6 != al.IPv6 {
				return fmt.Errorf("exclusive allocation of %s to container %s interface %s: its ENI %s has no such IPv6 address",
					al.IPv6, al.ContainerID, al.IfName, al.ENIID)
			}
		} else if al.IPv6.IsValid() {
			p = a.prefixOf6(al)
			switch {
			case p == nil || p.eni != al.ENIID:
				return fmt.Errorf("allocation of %s to container %s interface %s: in no IPv6 prefix of card %d ENI %s",
					al.IPv6, al.ContainerID, al.IfName, al.Card, al.ENIID)
			case p.held[al.IPv6] != nil:
				return fmt.Errorf("address %s held twice", al.IPv6)
			}
		}
		if !al.Address.IsValid() && !al.Exclusive {
			if p == nil {
				return fmt.Errorf("allocation of container %s interface %s has no address", al.ContainerID, al.IfName)
			}
			if other := a.podOnCard(al.AllocateRequest); other != nil {
				return fmt.Errorf("pod %s holds card %d twice", podName(al.AllocateRequest), al.Card)
			}
			a.hold(nil, p, al)
			continue
		}
		s := a.slots[al.Address]
		switch {
		case s == nil:
			return fmt.Errorf("allocation of %s to container %s interface %s: address not in the pool",
				al.Address, al.ContainerID, al.IfName)
		case s.card != al.Card || s.eni != al.ENIID || s.exclusive != al.Exclusive:
			return fmt.Errorf("allocation of %s to container %s interface %s: pool has it on card %d ENI %s",
				al.Address, al.ContainerID, al.IfName, s.card, s.eni)
		case s.holder != nil:
			return fmt.Errorf("address %s held by container %s interface %s and container %s interface %s",
				al.Address, s.holder.ContainerID, s.holder.IfName, al.ContainerID, al.IfName)
		}
		if other := a.podOnCard(al.AllocateRequest); other != nil {
			return fmt.Errorf("pod %s holds card %d twice: %s and %s", podName(al.AllocateRequest), al.Card,
				other.Address, al.Address)
		}
		a.hold(s, p, al)
	}
	return nil
}

func checkRequest(r api.AllocateRequest) error {
	switch {
	case r.Card < 0:
		return fmt.Errorf("card %d: %w: must be 0 or more", r.Card, api.ErrInvalid)
	case r.ContainerID == "":
		return fmt.Errorf("empty container id: %w", api.ErrInvalid)
	case r.IfName == "":
		return fmt.Errorf("empty interface name for container %s: %w", r.ContainerID, api.ErrInvalid)
	case !api.ValidFamily(r.Family):
		return fmt.Errorf("family %q: %w", r.Family, api.ErrInvalid)
	}
	return nil
}

func checkAddress(cardN int, eniID string, addr netip.Addr) error {
	switch {
	case cardN < 0:
		return fmt.Errorf("card %d: %w: must be 0 or more", cardN, api.ErrInvalid)
	case eniID == "":
		return fmt.Errorf("address %s on card %d: %w: empty ENI id", addr, cardN, api.ErrInvalid)
	case !addr.IsValid():
		return fmt.Errorf("address on card %d ENI %s: %w: not set", cardN, eniID, api.ErrInvalid)
	}
	return nil
}

// samePod decides whether two requests come from one pod: by UID when both have one, else by
// namespace/name, else by sandbox container id.
func samePod(x, y api.AllocateRequest) bool {
	switch {
	case x.PodUID != "" && y.PodUID != "":
		return x.PodUID == y.PodUID
	case x.PodName != "" && y.PodName != "":
		return x.PodNamespace == y.PodNamespace && x.PodName == y.PodName
	default:
		return x.ContainerID == y.ContainerID
	}
}

// podName names r's pod; one without any pod name or UID is its sandbox, as for samePod.
func podName(r api.AllocateRequest) string { return cmp.Or(r.Describe(), "container "+r.ContainerID) }

// podOnCard returns the pod's allocation on the request's card under another (container, interface).
func (a *Allocator) podOnCard(r api.AllocateRequest) *api.Allocation {
	c := a.cards[r.Card]
	if c == nil {
		return nil
	}
	k := keyOf(r)
	for ak, al := range c.allocs {
		if ak != k && samePod(al.AllocateRequest, r) {
			return al
		}
	}
	return nil
}

// pick returns the usable slot that has rested longest (never-used ones first), lowest address on ties, so
// a just-rested address is reused last.
func pick[K comparable](m map[K]*slot, now time.Time) *slot {
	var best *slot
	for _, s := range m {
		if !s.usable(now) {
			continue
		}
		if best == nil {
			best = s
			continue
		}
		if c := s.restUntil.Compare(best.restUntil); c < 0 || c == 0 && s.addr.Less(best.addr) {
			best = s
		}
	}
	return best
}

// resting counts the free slots still resting and when the first becomes usable.
func resting[K comparable](m map[K]*slot, now time.Time) (n int, next time.Time) {
	for _, s := range m {
		if s.resting(now) {
			n++
			if next.IsZero() || s.restUntil.Before(next) {
				next = s.restUntil
			}
		}
	}
	return n, next
}

// Allocate grants req an address on its card (for family dual one of each, on one ENI; for ipv6 an
// IPv6 address alone, Address zero) and returns only once that is persisted.
//   - The same (ContainerID, IfName) again returns the same allocation, changing nothing but a Netns or a
//     Network it lacked (the first known stays); with a different card, pod, mode or network it is
//     api.ErrInterfaceTaken.
//   - The same pod holding the card under another (container, interface) is api.ErrCardTaken (*CardTakenError).
//   - No usable address (or exclusive ENI) is ErrPoolEmpty (*PoolEmptyError); see WaitForAddress.
func (a *Allocator) Allocate(req api.AllocateRequest) (api.Allocation, error) {
	if err := checkRequest(req); err != nil {
		return api.Allocation{}, fmt.Errorf("allocate card %d for %s: %w", req.Card, podName(req), err)
	}
	al, err := a.allocate(req)
	if err != nil {
		return api.Allocation{}, fmt.Errorf("allocate card %d for %s: %w", req.Card, podName(req), err)
	}
	return al, nil
}

func (a *Allocator) allocate(req api.AllocateRequest) (api.Allocation, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if cur, ok := a.allocs[keyOf(req)]; ok {
		if cur.Card != req.Card || cur.Exclusive != req.Exclusive || !samePod(cur.AllocateRequest, req) ||
			api.NormalFamily(cur.Family) != api.NormalFamily(req.Family) {
			return api.Allocation{}, fmt.Errorf("container %s interface %s already holds %s on card %d for %s: %w",
				req.ContainerID, req.IfName, cur.Address, cur.Card, podName(cur.AllocateRequest), api.ErrInterfaceTaken)
		}
		if cur.Network != "" && req.Network != "" && cur.Network != req.Network {
			return api.Allocation{}, fmt.Errorf("container %s interface %s already holds %s on card %d for network %s: %w",
				req.ContainerID, req.IfName, cur.Address, cur.Card, cur.Network, api.ErrInterfaceTaken)
		}
		if (cur.Netns == "" && req.Netns != "") || (cur.Network == "" && req.Network != "") {
			before := cur.AllocateRequest
			if cur.Netns == "" {
				cur.Netns = req.Netns
			}
			if cur.Network == "" {
				cur.Network = req.Network
			}
			if err := a.persist(); err != nil {
				cur.AllocateRequest = before
				return api.Allocation{}, err
			}
		}
		return *cur, nil
	}
	if other := a.podOnCard(req); other != nil {
		return api.Allocation{}, &CardTakenError{Pod: podName(req), Card: req.Card, Existing: *other}
	}
	if a.maxAllocs > 0 && len(a.allocs) >= a.maxAllocs {
		return api.Allocation{}, fmt.Errorf("the node holds %d allocations, the most allowed: %w", len(a.allocs), api.ErrLimit)
	}
	c := a.card(req.Card)
	now := a.now()
	s, p := c.pickFor(req, now)
	if s == nil && p == nil {
		e := &PoolEmptyError{Card: req.Card, Exclusive: req.Exclusive, Family: api.NormalFamily(req.Family)}
		if req.Exclusive {
			e.Cooling, e.NextReady = resting(c.exclusive, now)
		} else if api.WantsIPv4(req.Family) {
			e.Cooling, e.NextReady = resting(c.shared, now)
		}
		return api.Allocation{}, e
	}
	al := &api.Allocation{AllocateRequest: req, AllocatedAt: now}
	prevNext := netip.Addr{}
	if s != nil {
		al.Address, al.ENIID = s.addr, s.eni
	}
	if p != nil {
		addr, next, _ := p.take()
		prevNext, p.next = p.next, next
		al.IPv6, al.ENIID = addr, p.eni
	}
	if s != nil && s.exclusive && api.WantsIPv6(req.Family) {
		al.IPv6 = s.addr6 // the whole ENI: its own IPv6 address
	}
	a.hold(s, p, al)
	if err := a.persist(); err != nil {
		a.unhold(s, p, al)
		if p != nil {
			p.next = prevNext
		}
		return api.Allocation{}, err
	}
	return *al, nil
}

// Transfer gives the allocation of (fromContainerID, fromIfName) to req, with one checkpoint write: the
// address (or exclusive ENI) stays held throughout, now under req's container, interface, pod, netns and
// network. It is how a pod's attachment takes over its DRA claim's reservation instead of a second address.
// req must match the allocation's card, mode and family (else api.ErrInterfaceTaken), and hold nothing yet
// on the card (api.ErrCardTaken). An unknown from is (zero, false, nil).
func (a *Allocator) Transfer(fromContainerID, fromIfName string, req api.AllocateRequest) (api.Allocation, bool, error) {
	if err := checkRequest(req); err != nil {
		return api.Allocation{}, false, fmt.Errorf("transfer to card %d for %s: %w", req.Card, podName(req), err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	from, ok := a.allocs[key{fromContainerID, fromIfName}]
	if !ok {
		return api.Allocation{}, false, nil
	}
	if from.Card != req.Card || from.Exclusive != req.Exclusive || api.NormalFamily(from.Family) != api.NormalFamily(req.Family) {
		return api.Allocation{}, false, fmt.Errorf("transfer container %s interface %s (card %d, exclusive %t, family %s) to card %d (exclusive %t, family %s): %w",
			fromContainerID, fromIfName, from.Card, from.Exclusive, api.NormalFamily(from.Family), req.Card, req.Exclusive, api.NormalFamily(req.Family), api.ErrInterfaceTaken)
	}
	if cur, ok := a.allocs[keyOf(req)]; ok {
		return api.Allocation{}, false, fmt.Errorf("transfer to container %s interface %s: it holds %s on card %d already: %w",
			req.ContainerID, req.IfName, cur.Address, cur.Card, api.ErrInterfaceTaken)
	}
	if other := a.podOnCard(req); other != nil {
		return api.Allocation{}, false, &CardTakenError{Pod: podName(req), Card: req.Card, Existing: *other}
	}
	s, p := a.slotOf(from), a.prefixOf6(from)
	to := *from
	to.AllocateRequest = req
	a.unhold(s, p, from)
	a.hold(s, p, &to)
	if err := a.persist(); err != nil {
		a.unhold(s, p, &to)
		a.hold(s, p, from)
		return api.Allocation{}, false, err
	}
	return to, true, nil
}

// withIPv6 is the exclusive ENIs that have an IPv6 address.
func withIPv6(m map[string]*slot) map[string]*slot {
	out := make(map[string]*slot, len(m))
	for k, s := range m {
		if s.addr6.IsValid() {
			out[k] = s
		}
	}
	return out
}

// pickFor is what a new allocation of req takes: an IPv4 slot (nil for family ipv6) and an IPv6 prefix
// (nil for ipv4), both on one ENI for dual; both nil when the pool cannot serve it now. A dual allocation
// takes the usable IPv4 address pick would, among the ENIs that have a prefix with room.
func (c *card) pickFor(req api.AllocateRequest, now time.Time) (*slot, *prefix6) {
	switch {
	case req.Exclusive && api.WantsIPv6(req.Family):
		return pick(withIPv6(c.exclusive), now), nil
	case req.Exclusive:
		return pick(c.exclusive, now), nil
	case !api.WantsIPv6(req.Family):
		return pick(c.shared, now), nil
	case !api.WantsIPv4(req.Family):
		return nil, c.pick6("")
	}
	withPrefix := map[netip.Addr]*slot{}
	for ad, s := range c.shared {
		if c.pick6(s.eni) != nil {
			withPrefix[ad] = s
		}
	}
	s := pick(withPrefix, now)
	if s == nil {
		return nil, nil
	}
	return s, c.pick6(s.eni)
}

// Release frees the (container, interface)'s address into cooldown and persists before returning. An
// unknown pair is (zero, false, nil): releasing twice is harmless.
func (a *Allocator) Release(containerID, ifName string) (api.Allocation, bool, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	al, ok := a.allocs[key{containerID, ifName}]
	if !ok {
		return api.Allocation{}, false, nil
	}
	if err := a.releaseLocked([]*api.Allocation{al}); err != nil {
		return api.Allocation{}, false, fmt.Errorf("release card %d container %s interface %s: %w",
			al.Card, containerID, ifName, err)
	}
	return *al, true, nil
}

// ReleaseIf releases every allocation for which match is true, with one write, and returns them. match
// runs under the allocator's lock: it must not call the allocator. For the agent's reclaim: decide outside (List), then
// release here by key.
func (a *Allocator) ReleaseIf(match func(api.Allocation) bool) ([]api.Allocation, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	var hit []*api.Allocation
	for _, al := range a.listPtrsLocked() {
		if match(*al) {
			hit = append(hit, al)
		}
	}
	if len(hit) == 0 {
		return nil, nil
	}
	if err := a.releaseLocked(hit); err != nil {
		return nil, fmt.Errorf("release %d allocations: %w", len(hit), err)
	}
	out := make([]api.Allocation, len(hit))
	for i, al := range hit {
		out[i] = *al
	}
	return out, nil
}

// releaseLocked moves the allocations' addresses into cooldown, persists, and undoes it all on failure.
// A released exclusive ENI is away: its link was in the pod, and only the ENI manager, once it sees the
// link back in the node netns, makes it usable again (ConfirmHome).
func (a *Allocator) releaseLocked(als []*api.Allocation) error {
	until := a.now().Add(a.cooldown)
	prev := make([]time.Time, len(als))
	for i, al := range als {
		s, p := a.slotOf(al), a.prefixOf6(al)
		a.unhold(s, p, al)
		if s == nil {
			continue // an IPv6 address needs no rest: it is never given out again
		}
		prev[i] = s.restUntil
		s.restUntil = until
		if s.exclusive {
			s.away, s.awayNetns = true, al.Netns
		}
	}
	if err := a.persist(); err != nil {
		for i, al := range als {
			s, p := a.slotOf(al), a.prefixOf6(al)
			if s != nil {
				s.restUntil = prev[i]
				s.away, s.awayNetns = false, ""
			}
			a.hold(s, p, al)
		}
		return err
	}
	for _, al := range als {
		a.card(al.Card).notify()
	}
	return nil
}

// Lookup returns the allocation of (containerID, ifName).
func (a *Allocator) Lookup(containerID, ifName string) (api.Allocation, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	al, ok := a.allocs[key{containerID, ifName}]
	if !ok {
		return api.Allocation{}, false
	}
	return *al, true
}

// Full says whether a new allocation would be refused with api.ErrLimit now.
func (a *Allocator) Full() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.maxAllocs > 0 && len(a.allocs) >= a.maxAllocs
}

// List returns every allocation, by card then address.
func (a *Allocator) List() []api.Allocation {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.listLocked()
}

func (a *Allocator) listLocked() []api.Allocation {
	ptrs := a.listPtrsLocked()
	out := make([]api.Allocation, len(ptrs))
	for i, al := range ptrs {
		out[i] = *al
	}
	return out
}

func (a *Allocator) listPtrsLocked() []*api.Allocation {
	out := make([]*api.Allocation, 0, len(a.allocs))
	for _, al := range a.allocs {
		out = append(out, al)
	}
	slices.SortFunc(out, func(x, y *api.Allocation) int {
		return cmp.Or(cmp.Compare(x.Card, y.Card), x.Address.Compare(y.Address), x.IPv6.Compare(y.IPv6))
	})
	return out
}

// Known returns every address the allocator knows, held or not, by card then address.
func (a *Allocator) Known() []PoolAddress {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.knownLocked()
}

func (a *Allocator) knownLocked() []PoolAddress {
	out := make([]PoolAddress, 0, len(a.slots))
	for _, s := range a.slots {
		out = append(out, s.pool())
	}
	slices.SortFunc(out, comparePool)
	return out
}

func comparePool(x, y PoolAddress) int {
	return cmp.Or(cmp.Compare(x.Card, y.Card), x.Address.Compare(y.Address))
}

// Cards returns the cards that have any known address, ascending.
func (a *Allocator) Cards() []int {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []int
	for n, c := range a.cards {
		if len(c.shared)+len(c.exclusive)+len(c.v6) > 0 {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out
}
