package eni

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/multinic/multinic/ipam/allocator"
	"github.com/multinic/multinic/ipam/api"
	"github.com/multinic/multinic/ipam/eni/awsec2"
)

func (m *Manager) reconcileLoop(ctx context.Context) {
	t := time.NewTicker(m.cfg.ReconcileInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := m.reconcile(ctx); err != nil && ctx.Err() == nil {
			m.log.Warn("reconcile with EC2 failed", "err", err)
		}
	}
}

// Reconcile runs one reconcile pass, detached-ENI cleanup included, now (it also runs at Start and every ReconcileInterval).
func (m *Manager) Reconcile(ctx context.Context) error { return m.reconcile(ctx) }

// reconcile re-reads the instance's ENIs, adopts the manager's own, compares what EC2 says they hold with
// the allocator and fixes the allocator (stale addresses out, unknown ones in as warm; exclusive ENIs it
// does not know are the card loop's: registered once their link is home), re-assigns addresses of live allocations EC2 no longer has, and deletes
// detached ENIs of this node. It holds opMu, so no address change is half done meanwhile.
func (m *Manager) reconcile(ctx context.Context) error {
	m.opMu.Lock()
	defer m.opMu.Unlock()
	enis, err := m.describeAttached(ctx)
	if err != nil {
		return err
	}
	var missing []string
	m.mu.Lock()
	for _, ni := range enis {
		if id := ni.SubnetID; id != "" && !m.subnets[id].CIDR.IsValid() {
			missing = append(missing, id)
		}
	}
	m.mu.Unlock()
	if len(missing) > 0 {
		if err := m.describeSubnets(ctx, missing); err != nil {
			return err
		}
	}
	rv := m.recent.view()
	m.mu.Lock()
	m.setAttachedLocked(enis, rv)
	var adopted []*eniState
	for _, e := range m.enis {
		if e.adopted && !e.linkChecked {
			e.linkChecked = true
			adopted = append(adopted, e)
		}
	}
	m.mu.Unlock()
	for _, e := range adopted {
		m.adoptLink(e)
	}

	// What EC2 says our ENIs hold. Addresses of a shared ENI whose link is not ready are left out unless
	// the allocator knows them already: they join the pool when the link is up, not before. Describe may
	// lag (recent): addresses unassigned within SettleTime are gone whatever it says, and ones assigned
	// within SettleTime are there.
	known := map[netip.Addr]bool{}
	for _, p := range m.alloc.Known() {
		known[p.Address] = true
	}
	known6 := map[netip.Prefix]bool{}
	for _, p := range m.alloc.KnownIPv6() {
		known6[p.Prefix] = true
	}
	var ec2Addrs []allocator.EC2Address
	m.mu.Lock()
	for _, ni := range enis {
		e := m.enis[ni.ID]
		if e == nil {
			continue
		}
		var pending []netip.Addr
		add := func(a netip.Addr, primary bool) {
			if _, gone := rv.unassigned[a]; gone && !primary {
				return
			}
			if !e.exclusive && !e.linkReady && !primary && !known[a] {
				pending = append(pending, a)
				return
			}
			ec2Addrs = append(ec2Addrs, allocator.EC2Address{Card: e.card, ENIID: e.id, Address: a, Primary: primary})
		}
		if ni.Primary.IsValid() {
			add(ni.Primary, true)
		}
		for _, a := range ni.Addresses() {
			add(a, false)
		}
		if !e.linkReady {
			e.pending = pending
		}
	}
	listed := map[netip.Addr]bool{}
	for _, a := range ec2Addrs {
		listed[a.Address] = true
	}
	for a, as := range rv.assigned {
		if e := m.enis[as.eniID]; e != nil && a.Is4() && !listed[a] && known[a] {
			ec2Addrs = append(ec2Addrs, allocator.EC2Address{Card: e.card, ENIID: e.id, Address: a})
		}
	}
	ec2Prefixes := m.ec2IPv6PrefixesLocked(enis, rv, known6)
	m.mu.Unlock()

	diff, err := m.alloc.Reconcile(ec2Addrs)
	if err != nil {
		return err
	}
	if !diff.Empty() {
		m.log.Warn("allocator and EC2 disagreed", "stale", len(diff.Stale), "unknown", len(diff.Unknown), "lost", len(diff.Lost))
	}
	m.reassignLost(ctx, diff.Lost)
	diff6, err := m.alloc.ReconcileIPv6(ec2Prefixes)
	if err != nil {
		return err
	}
	if !diff6.Empty() {
		m.log.Warn("allocator and EC2 disagreed on IPv6 prefixes", "stale", len(diff6.Stale), "unknown", len(diff6.Unknown), "lost", len(diff6.Lost))
	}
	for _, al := range diff6.Lost {
		// Kept (when in doubt, keep): the pod may still use it; the prefix is EC2's to give back.
		m.log.Error("allocation's IPv6 address is in no prefix EC2 has on its ENI", "card", al.Card, "eni", al.ENIID,
			"ipv6", al.IPv6, "container", al.ContainerID, "ifname", al.IfName)
	}
	return m.deleteDetachedLocked(ctx)
}

// ec2IPv6PrefixesLocked is what EC2 says the manager's shared ENIs hold of IPv6 prefixes, as reconcile
// believes it: prefixes unassigned within SettleTime are gone, ones assigned within SettleTime are there
// (remembered by their first address, recent.go), whatever a lagging Describe says; the prefixes of an ENI
// whose link is not ready join when it is (pending6), unless the allocator knows them already. Under m.mu.
func (m *Manager) ec2IPv6PrefixesLocked(enis []awsec2.Interface, rv recentView, known map[netip.Prefix]bool) []allocator.EC2Prefix {
	var out []allocator.EC2Prefix
	listed := map[netip.Prefix]bool{}
	pending := map[*eniState][]netip.Prefix{}
	for _, ni := range enis {
		e := m.enis[ni.ID]
		if e == nil || e.exclusive {
			continue
		}
		if !e.linkReady {
			pending[e] = nil
		}
		for _, p := range ni.IPv6Prefixes {
			if _, gone := rv.unassigned[p.Addr()]; gone {
				continue
			}
			listed[p] = true
			if !e.linkReady && !known[p] {
				pending[e] = append(pending[e], p)
				continue
			}
			out = append(out, allocator.EC2Prefix{Card: e.card, ENIID: e.id, Prefix: p})
		}
	}
	for a, as := range rv.assigned {
		p := netip.PrefixFrom(a, IPv6PrefixBits)
		e := m.enis[as.eniID]
		switch {
		case e == nil || !a.Is6() || e.exclusive || listed[p]:
		case known[p]:
			out = append(out, allocator.EC2Prefix{Card: e.card, ENIID: e.id, Prefix: p})
		case !e.linkReady: // assigned a moment ago, Describe does not show it yet: it joins with the link
			pending[e] = append(pending[e], p)
		}
	}
	for e, ps := range pending {
		e.pending6 = ps
	}
	return out
}

// adoptLink looks once, without waiting, for an adopted ENI's link. An exclusive ENI whose link is not in
// the node netns may be inside a pod: it is ready, and the card loop decides (exclusive.go).
func (m *Manager) adoptLink(e *eniState) {
	name, found, err := linkName(m.links, e.mac)
	if err == nil && found {
		if err := m.links.SetMTU(name, m.cfg.MTU); err == nil {
			err = m.links.SetUp(name)
		}
		if err != nil {
			m.log.Warn("set up adopted ENI link", "card", e.card, "eni", e.id, "err", err)
			return
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if found {
		e.linkName, e.linkReady = name, true
	} else if e.exclusive {
		e.linkReady = true
	}
}

// reassignLost asks EC2 to give back to their ENI the addresses of live allocations it no longer has
// (someone unassigned them behind the agent's back). Best effort: failures are logged.
func (m *Manager) reassignLost(ctx context.Context, lost []api.Allocation) {
	byENI := map[string][]netip.Addr{}
	for _, al := range lost {
		if !al.Exclusive {
			byENI[al.ENIID] = append(byENI[al.ENIID], al.Address)
		}
	}
	for id, addrs := range byENI {
		m.mu.Lock()
		e := m.enis[id]
		m.mu.Unlock()
		if e == nil || m.cfg.PrefixMode {
			m.log.Error("allocations lost their address in EC2; their ENI is gone or in prefix mode",
				"eni", id, "addresses", addrs)
			continue
		}
		if err := m.ec2.AssignAddresses(ctx, id, addrs); err != nil {
			m.log.Error("re-assign lost addresses", "card", e.card, "eni", id, "addresses", addrs, "err", err)
			continue
		}
		m.recent.assign(id, addrs...)
		m.saveRecent()
		m.mu.Lock()
		e.secondaries += len(addrs)
		m.mu.Unlock()
		m.log.Warn("re-assigned addresses EC2 had lost", "card", e.card, "eni", id, "addresses", addrs)
	}
}

// DeleteDetached (reconcile's detached-ENI cleanup) deletes detached ENIs tagged with this cluster and node: leftovers of a crash between create and
// attach, or of a detach whose delete failed. An ENI created within SettleTime, one the manager holds as
// attached, or one a card keeps for its next attach (EC2 throttled its attach) is never a leftover, whatever
// a lagging Describe says; but one an earlier agent process created within SettleTime and did not record attached is deleted even before Describe lists it: that
// process is gone, so nobody attaches it any more, and EC2 refuses to delete it if the attach did happen.
func (m *Manager) DeleteDetached(ctx context.Context) error {
	m.opMu.Lock()
	defer m.opMu.Unlock()
	return m.deleteDetachedLocked(ctx)
}

func (m *Manager) deleteDetachedLocked(ctx context.Context) error {
	enis, err := m.describeENIs(ctx, awsec2.TagFilter(TagNode, m.instanceID), awsec2.TagFilter(TagCluster, m.cfg.Cluster),
		awsec2.Filter{Name: "status", Values: []string{awsec2.StatusAvailable}})
	if err != nil {
		return fmt.Errorf("delete detached ENIs: %w", err)
	}
	rv := m.recent.view()
	leftovers := map[string]string{} // ENI -> card
	for _, ni := range enis {
		if !ni.Available() || !m.ownsTags(ni) {
			continue
		}
		leftovers[ni.ID] = ni.Tags[TagCard]
	}
	// abandoned: created by an earlier agent process that never recorded it attached.
	abandoned := func(c createdENI) bool { return c.inherited && c.rec.AttachmentID == "" }
	for id, c := range rv.created {
		if abandoned(c) {
			leftovers[id] = itoa(c.rec.Card)
		}
	}
	for id, card := range leftovers {
		m.mu.Lock()
		_, attached := m.enis[id]
		kept := m.keptUnattachedLocked(id)
		m.mu.Unlock()
		c, fresh := rv.created[id]
		if attached || kept || (fresh && !abandoned(c)) {
			continue // created just now (Describe may not show its attachment yet), or waiting for its attach
		}
		m.log.Info("deleting detached ENI of this node", "eni", id, "card", card, "abandonedByEarlierAgent", fresh)
		if err := m.deleteENI(ctx, -1, id); err == nil {
			m.recent.forget(id)
		}
	}
	return nil
}
