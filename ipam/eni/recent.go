package eni

import (
	"maps"
	"net/netip"
	"sync"
	"time"
)

// recent remembers the manager's own EC2 changes for Config.SettleTime. EC2 is eventually consistent: for
// a few seconds after a change, DescribeNetworkInterfaces may still list an address just unassigned (put
// back in the pool, a pod would get an address its ENI no longer has), miss an address just assigned or an
// ENI just created (reconcile would drop it, GC could delete an ENI still being attached), or show an ENI
// just detached as attached (it would be adopted again). Reconcile and GC believe this memory over
// Describe; the AWS VPC CNI's ipamd keeps the same kind of cooldown cache for unassigned addresses.
type recent struct {
	ttl        time.Duration
	mu         sync.Mutex
	assigned   map[netip.Addr]assignment
	unassigned map[netip.Addr]time.Time
	created    map[string]time.Time // ENI IDs
	detached   map[string]time.Time
}

type assignment struct {
	eniID string
	at    time.Time
}

func newRecent(ttl time.Duration) *recent {
	return &recent{ttl: ttl, assigned: map[netip.Addr]assignment{}, unassigned: map[netip.Addr]time.Time{},
		created: map[string]time.Time{}, detached: map[string]time.Time{}}
}

func (r *recent) assign(eniID string, addrs ...netip.Addr) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, a := range addrs {
		delete(r.unassigned, a)
		r.assigned[a] = assignment{eniID, time.Now()}
	}
}

func (r *recent) unassign(addrs ...netip.Addr) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, a := range addrs {
		delete(r.assigned, a)
		r.unassigned[a] = time.Now()
	}
}

func (r *recent) create(eniID string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.created[eniID] = time.Now()
}

func (r *recent) detach(eniID string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.created, eniID)
	r.detached[eniID] = time.Now()
}

// recentView is a copy of the memory, without what is older than the TTL, for one reconcile or GC pass.
type recentView struct {
	assigned   map[netip.Addr]assignment
	unassigned map[netip.Addr]time.Time
	created    map[string]time.Time
	detached   map[string]time.Time
}

func (r *recent) view() recentView {
	r.mu.Lock()
	defer r.mu.Unlock()
	old := func(t time.Time) bool { return time.Since(t) >= r.ttl }
	maps.DeleteFunc(r.assigned, func(_ netip.Addr, a assignment) bool { return old(a.at) })
	maps.DeleteFunc(r.unassigned, func(_ netip.Addr, t time.Time) bool { return old(t) })
	maps.DeleteFunc(r.created, func(_ string, t time.Time) bool { return old(t) })
	maps.DeleteFunc(r.detached, func(_ string, t time.Time) bool { return old(t) })
	return recentView{assigned: maps.Clone(r.assigned), unassigned: maps.Clone(r.unassigned),
		created: maps.Clone(r.created), detached: maps.Clone(r.detached)}
}
