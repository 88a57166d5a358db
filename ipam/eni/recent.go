package eni

import (
	"cmp"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/multinic/multinic/ipam/store"
)

// recent remembers the manager's own EC2 changes for Config.SettleTime. EC2 is eventually consistent: for
// a few seconds after a change, DescribeNetworkInterfaces may still list an address just unassigned (put
// back in the pool, a pod would get an address its ENI no longer has), miss an address just assigned or an
// ENI just created (reconcile would drop it, the detached-ENI cleanup could delete an ENI still being attached), or show an ENI
// just detached as attached (it would be adopted again). Reconcile and its detached-ENI cleanup believe this memory over
// Describe; the AWS VPC CNI's ipamd keeps the same kind of cooldown cache for unassigned addresses.
//
// The memory is saved with the allocator's checkpoint (store.Recent, through Allocator.CarryRecent) and
// loaded from it at start, so that an agent restarted within the settle time still believes what the
// previous process did: without it, the new process would take Describe's stale view for the truth.
type recent struct {
	ttl        time.Duration
	mu         sync.Mutex
	assigned   map[netip.Addr]assignment
	unassigned map[netip.Addr]assignment
	created    map[string]createdENI // by ENI ID
	detached   map[string]time.Time
	// saved is the last snapshot, good until savedUntil (when its oldest entry expires) unless the memory
	// changes: every checkpoint write asks for one, and most come with no EC2 change between them.
	saved      *store.Recent
	savedUntil time.Time
}

type assignment struct {
	eniID string
	at    time.Time
}

// createdENI is an ENI the manager created, with its attachment once the attach succeeded.
type createdENI struct {
	rec store.RecentENI
	// inherited: created by an earlier agent process (loaded from the checkpoint), not this one.
	inherited bool
}

// maxRecent bounds each kind of entry the saved memory holds (EC2 calls, or ENIs); the oldest go first.
// At the default EC2 rate a settle time sees a few hundred calls at most.
const maxRecent = 1024

func newRecent(ttl time.Duration) *recent {
	return &recent{ttl: ttl, assigned: map[netip.Addr]assignment{}, unassigned: map[netip.Addr]assignment{},
		created: map[string]createdENI{}, detached: map[string]time.Time{}}
}

func (r *recent) assign(eniID string, addrs ...netip.Addr) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.savedUntil = time.Time{}
	now := time.Now()
	for _, a := range addrs {
		delete(r.unassigned, a)
		r.assigned[a] = assignment{eniID, now}
	}
}

// unassign is recorded before the EC2 call and kept if it fails: an unassign whose outcome is unknown
// counts as done (a pool without the address leaks it for a while; a pool with it could give a pod an
// address its ENI no longer has).
func (r *recent) unassign(eniID string, addrs ...netip.Addr) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.savedUntil = time.Time{}
	now := time.Now()
	for _, a := range addrs {
		delete(r.assigned, a)
		r.unassigned[a] = assignment{eniID, now}
	}
}

// create records an ENI just created: ID, card, subnet, MAC, primary address and mode.
func (r *recent) create(rec store.RecentENI) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.savedUntil = time.Time{}
	rec.At = time.Now()
	r.created[rec.ID] = createdENI{rec: rec}
}

// attached records where a created ENI was attached.
func (r *recent) attached(eniID string, device int, attachmentID string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.savedUntil = time.Time{}
	if c, ok := r.created[eniID]; ok {
		c.rec.Device, c.rec.AttachmentID = device, attachmentID
		r.created[eniID] = c
	}
}

func (r *recent) detach(eniID string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.savedUntil = time.Time{}
	delete(r.created, eniID)
	r.detached[eniID] = time.Now()
}

// forget drops a created ENI that is gone (deleted).
func (r *recent) forget(eniID string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.savedUntil = time.Time{}
	delete(r.created, eniID)
}

// recentView is a copy of the memory, without what is older than the TTL, for one reconcile or cleanup pass.
type recentView struct {
	assigned   map[netip.Addr]assignment
	unassigned map[netip.Addr]assignment
	created    map[string]createdENI
	detached   map[string]time.Time
}

func (r *recent) view() recentView {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.expireLocked()
	return recentView{assigned: maps.Clone(r.assigned), unassigned: maps.Clone(r.unassigned),
		created: maps.Clone(r.created), detached: maps.Clone(r.detached)}
}

func (r *recent) expireLocked() {
	old := func(t time.Time) bool { return time.Since(t) >= r.ttl }
	maps.DeleteFunc(r.assigned, func(_ netip.Addr, a assignment) bool { return old(a.at) })
	maps.DeleteFunc(r.unassigned, func(_ netip.Addr, a assignment) bool { return old(a.at) })
	maps.DeleteFunc(r.created, func(_ string, c createdENI) bool { return old(c.rec.At) })
	maps.DeleteFunc(r.detached, func(_ string, t time.Time) bool { return old(t) })
}

// snapshot is the memory as the checkpoint saves it (nil when empty): addresses grouped by the EC2 call
// (ENI and time) that changed them, at most maxRecent entries of each kind, the newest. Callers must not
// change what it returns: it is kept for the next call while the memory does not change.
func (r *recent) snapshot() *store.Recent {
	r.mu.Lock()
	defer r.mu.Unlock()
	if time.Now().Before(r.savedUntil) {
		return r.saved
	}
	r.expireLocked()
	r.saved, r.savedUntil = r.snapshotLocked(), r.oldestLocked().Add(r.ttl)
	return r.saved
}

// oldestLocked is when the oldest entry was made (zero: none).
func (r *recent) oldestLocked() time.Time {
	var t time.Time
	older := func(at time.Time) {
		if t.IsZero() || at.Before(t) {
			t = at
		}
	}
	for _, a := range r.assigned {
		older(a.at)
	}
	for _, a := range r.unassigned {
		older(a.at)
	}
	for _, c := range r.created {
		older(c.rec.At)
	}
	for _, at := range r.detached {
		older(at)
	}
	return t
}

func (r *recent) snapshotLocked() *store.Recent {
	s := &store.Recent{Assigned: groupCalls(r.assigned), Unassigned: groupCalls(r.unassigned)}
	for _, c := range r.created {
		s.ENIs = append(s.ENIs, c.rec)
	}
	for id, at := range r.detached {
		s.Detached = append(s.Detached, store.RecentENI{ID: id, At: at})
	}
	byTime := func(x, y store.RecentENI) int { return cmp.Or(y.At.Compare(x.At), cmp.Compare(x.ID, y.ID)) }
	slices.SortFunc(s.ENIs, byTime)
	slices.SortFunc(s.Detached, byTime)
	s.ENIs, s.Detached = s.ENIs[:min(len(s.ENIs), maxRecent)], s.Detached[:min(len(s.Detached), maxRecent)]
	if len(s.ENIs)+len(s.Detached)+len(s.Assigned)+len(s.Unassigned) == 0 {
		return nil
	}
	return s
}

// groupCalls groups addresses by (ENI, time), newest first, at most maxRecent groups.
func groupCalls(m map[netip.Addr]assignment) []store.RecentAddresses {
	type call struct {
		eni string
		at  int64
	}
	idx := map[call]int{}
	var out []store.RecentAddresses
	for a, as := range m {
		k := call{as.eniID, as.at.UnixNano()}
		i, ok := idx[k]
		if !ok {
			i = len(out)
			idx[k] = i
			out = append(out, store.RecentAddresses{ENIID: as.eniID, At: as.at})
		}
		out[i].Addresses = append(out[i].Addresses, a)
	}
	for i := range out {
		slices.SortFunc(out[i].Addresses, netip.Addr.Compare)
	}
	slices.SortFunc(out, func(x, y store.RecentAddresses) int {
		return cmp.Or(y.At.Compare(x.At), cmp.Compare(x.ENIID, y.ENIID))
	})
	return out[:min(len(out), maxRecent)]
}

// load takes in what a checkpoint saved (an earlier process's memory); what is older than the TTL is
// left out, and the ENIs it created are marked inherited.
func (r *recent) load(s *store.Recent) {
	if s == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.savedUntil = time.Time{}
	for _, c := range s.ENIs {
		r.created[c.ID] = createdENI{rec: c, inherited: true}
	}
	for _, d := range s.Detached {
		r.detached[d.ID] = d.At
	}
	for _, g := range s.Assigned {
		for _, a := range g.Addresses {
			r.assigned[a] = assignment{g.ENIID, g.At}
		}
	}
	for _, g := range s.Unassigned {
		for _, a := range g.Addresses {
			r.unassigned[a] = assignment{g.ENIID, g.At}
		}
	}
	r.expireLocked()
}
