package eni

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/multinic/multinic/internal/ctxtime"
	"github.com/multinic/multinic/ipam/api"
	"github.com/multinic/multinic/ipam/eni/awsec2"
	"github.com/multinic/multinic/ipam/eni/plan"
	"github.com/multinic/multinic/ipam/enipool"
	"github.com/multinic/multinic/ipam/store"
)

// createENI creates, tags and attaches one ENI on the card, waits for its link and brings it up; then a
// shared ENI's initial batch of addresses (prefixes) joins the pool, or an exclusive ENI joins the card's
// exclusive pool. DeleteOnTermination is set later, as idle work the card loop plans (plan.Step), so that in
// a cluster scale-up the account's tokens go to the ENIs nodes wait for; with Config.Eager it is set right
// after the attach, as the AWS VPC CNI does. A failed attach deletes the new ENI. A link that does not show
// up leaves the ENI attached but not ready; the card loop retries the link. Only the card's own loop calls
// it, so the card's device indexes are chosen one at a time.
func (m *Manager) createENI(ctx context.Context, cs *cardState, exclusive bool, batch int) (*eniState, error) {
	m.mu.Lock()
	used, limit := len(m.occupied[cs.index]), m.limits.enisPerCard[cs.index]
	m.mu.Unlock()
	if used >= limit {
		return nil, fmt.Errorf("add ENI on card %d: %w: %d of %d ENIs attached", cs.index, enipool.ErrCardFull, used, limit)
	}
	if exclusive {
		batch = 0
	}
	m.opMu.RLock()
	e, addrs, err := m.createAttach(ctx, cs, exclusive, batch)
	m.opMu.RUnlock()
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	e.pending = addrs
	e.pendingExclusive = exclusive
	if !exclusive {
		e.pending6 = slices.Clone(e.prefixes6)
	}
	m.mu.Unlock()
	if m.cfg.Eager {
		if err := m.setDeleteOnTermination(ctx, e); err != nil {
			m.log.Warn("set DeleteOnTermination failed; will retry", "card", cs.index, "eni", e.id, "err", err)
		}
	}
	if err := m.finishENI(ctx, e); err != nil {
		return e, err
	}
	return e, nil
}

func (m *Manager) tags(card int, exclusive bool) map[string]string {
	mode := ModeShared
	if exclusive {
		mode = ModeExclusive
	}
	t := map[string]string{
		TagCluster: m.cfg.Cluster, TagNode: m.instanceID, TagCard: itoa(card), TagManaged: "true", TagMode: mode,
		TagCreatedAt: time.Now().UTC().Format(time.RFC3339),
	}
	if m.cfg.NodeName != "" {
		t[TagNodeName] = m.cfg.NodeName
	}
	return t
}

// unattachedENI is an ENI a card created and could not attach yet because EC2 throttled the attach.
type unattachedENI struct {
	ni        awsec2.Interface
	exclusive bool
}

// createAttach is CreateNetworkInterface + AttachNetworkInterface, deleting the ENI if the attach fails. An
// attach EC2 throttled keeps the ENI for the card's next createAttach of the same mode, instead of a delete
// now and a create then: two mutating calls more in a scale-up that waits on the account's tokens. Caller
// holds opMu for reading, so the detached-ENI cleanup cannot delete the ENI between the two calls.
func (m *Manager) createAttach(ctx context.Context, cs *cardState, exclusive bool, n int) (_ *eniState, _ []netip.Addr, retErr error) {
	ni, kept := m.takeUnattached(cs, exclusive)
	var err error
	if !kept {
		if ni, err = m.create(ctx, cs, exclusive, n); err != nil {
			return nil, nil, err
		}
	}
	id := ni.ID
	log := m.log.With("card", cs.index, "eni", id)
	defer func() {
		switch {
		case retErr == nil:
		case awsec2.Throttled(retErr):
			log.Info("attach throttled; the ENI waits for the card's next try", "err", retErr)
			m.mu.Lock()
			cs.unattached = &unattachedENI{ni: ni, exclusive: exclusive}
			m.mu.Unlock()
		default:
			log.Warn("deleting ENI after failed attach", "err", retErr)
			_ = m.deleteENI(ctx, cs.index, id)
		}
	}()
	mac, ok := ni.HardwareAddr()
	if !ok {
		return nil, nil, fmt.Errorf("create ENI on card %d: %s: mac %q invalid", cs.index, id, ni.MAC)
	}
	var attachment string
	dev := 0
	for try := 0; ; try++ {
		dev = m.freeDevice(cs.index)
		attachment, err = m.ec2.Attach(ctx, id, m.instanceID, cs.index, dev)
		if err == nil || try > 0 || !awsec2.DeviceInUse(err) {
			break
		}
		// Someone else took the device index: learn the card's devices again and retry once.
		if rerr := m.refreshDevices(ctx, cs.index); rerr != nil {
			return nil, nil, fmt.Errorf("attach %s to card %d device %d: %w (refresh devices: %w)", id, cs.index, dev, err, rerr)
		}
	}
	if err != nil {
		return nil, nil, fmt.Errorf("attach %s to card %d device %d: %w", id, cs.index, dev, err)
	}
	e := &eniState{
		id: id, mac: mac, card: cs.index, device: dev, attachmentID: attachment, subnetID: ni.SubnetID, exclusive: exclusive,
		primary: ni.Primary, secondaries: len(ni.Secondaries), prefixes: ni.Prefixes, prefixes6: ni.IPv6Prefixes,
	}
	if len(ni.IPv6Addresses) > 0 {
		e.ipv6 = ni.IPv6Addresses[0]
	}
	addrs := ni.Addresses()
	m.recent.attached(id, dev, e.attachmentID)
	m.recent.assign(id, addrs...)
	m.recent.assign(id, prefixAddrs(ni.IPv6Prefixes)...)
	m.saveRecent() // a restarted agent adopts it before Describe shows it
	m.mu.Lock()
	e.cidr, e.cidr6 = m.subnets[e.subnetID].CIDR, m.subnets[e.subnetID].IPv6CIDR
	m.enis[id] = e
	if m.occupied[cs.index] == nil {
		m.occupied[cs.index] = map[int]string{}
	}
	m.occupied[cs.index][dev] = id
	m.mu.Unlock()
	log.Info("created and attached ENI", "device", dev, "subnet", e.subnetID, "exclusive", exclusive,
		"addresses", e.secondaries, "prefixes", len(e.prefixes))
	return e, addrs, nil
}

// create is one CreateNetworkInterface for the card, with n addresses (prefixes) to start with, fewer when
// the subnet cannot give them; recorded in the memory of recent changes.
func (m *Manager) create(ctx context.Context, cs *cardState, exclusive bool, n int) (awsec2.Interface, error) {
	req := awsec2.CreateRequest{
		SubnetID: cs.subnetID, Groups: cs.groups, Tags: m.tags(cs.index, exclusive), Count: n, Prefixes: m.cfg.PrefixMode,
		Description: fmt.Sprintf("multinic %s card %d node %s", m.cfg.Cluster, cs.index, m.instanceID), ClientToken: newToken(),
	}
	switch {
	case !api.WantsIPv6(cs.family):
	case exclusive:
		req.IPv6Addresses = 1 // the pod's, with the whole ENI
	default:
		req.IPv6Prefixes = 1 // 2^48 addresses: the card's IPv6 pool never waits on EC2 again
	}
	ni, err := m.ec2.Create(ctx, req)
	if smaller, ok := plan.Smaller(n, true); ok && awsec2.SubnetFull(err) {
		m.log.Warn("subnet too full for the initial batch; creating the ENI without", "card", cs.index,
			"subnet", cs.subnetID, "batch", n, "err", err)
		req.Count, req.ClientToken = smaller, newToken()
		ni, err = m.ec2.Create(ctx, req)
	}
	if err != nil {
		return awsec2.Interface{}, fmt.Errorf("create ENI on card %d in subnet %s: %w", cs.index, cs.subnetID, err)
	}
	m.recent.create(store.RecentENI{ID: ni.ID, Card: cs.index, MAC: ni.MAC, SubnetID: ni.SubnetID, Exclusive: exclusive, Primary: ni.Primary})
	m.saveRecent() // a restarted agent deletes it if the attach never happened, and never too early
	return ni, nil
}

// takeUnattached hands out the card's ENI whose attach EC2 throttled, if it is of the mode asked for.
func (m *Manager) takeUnattached(cs *cardState, exclusive bool) (awsec2.Interface, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	u := cs.unattached
	if u == nil || u.exclusive != exclusive {
		return awsec2.Interface{}, false
	}
	cs.unattached = nil
	return u.ni, true
}

// keptUnattachedLocked says whether id is a card's ENI waiting for its attach; under m.mu.
func (m *Manager) keptUnattachedLocked(id string) bool {
	for _, cs := range m.cards {
		if cs.unattached != nil && cs.unattached.ni.ID == id {
			return true
		}
	}
	return false
}

// prefixAddrs names IPv6 prefixes by their first address, as the memory of recent changes keeps them.
func prefixAddrs(pfxs []netip.Prefix) []netip.Addr {
	out := make([]netip.Addr, len(pfxs))
	for i, p := range pfxs {
		out[i] = p.Masked().Addr()
	}
	return out
}

// freeDevice is the lowest device index >= 1 free on the card. Device 0 is left alone on every card: on
// card 0 it is the primary ENI, and EC2's multi-card launch layouts keep it for the primary interface.
func (m *Manager) freeDevice(card int) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	for d := 1; ; d++ {
		if _, used := m.occupied[card][d]; !used {
			return d
		}
	}
}

// refreshDevices relearns which device indexes are taken on one card: Describe's, and those of the
// manager's own ENIs, which a lagging Describe may not show yet.
func (m *Manager) refreshDevices(ctx context.Context, card int) error {
	enis, err := m.describeAttached(ctx)
	if err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	occ := map[int]string{}
	for _, ni := range enis {
		if a := ni.Attachment; a != nil && a.Card == card {
			occ[a.Device] = ni.ID
		}
	}
	for _, e := range m.enis {
		if e.card == card {
			occ[e.device] = e.id
		}
	}
	m.occupied[card] = occ
	return nil
}

func (m *Manager) setDeleteOnTermination(ctx context.Context, e *eniState) error {
	m.mu.Lock()
	att := e.attachmentID
	m.mu.Unlock()
	if err := m.ec2.SetDeleteOnTermination(ctx, e.id, att); err != nil {
		return fmt.Errorf("set DeleteOnTermination on %s (card %d): %w", e.id, e.card, err)
	}
	m.mu.Lock()
	e.dot = true
	m.mu.Unlock()
	return nil
}

// finishENI waits for e's link, sets its MTU and brings it up, then hands its pending addresses (or the
// ENI itself, when exclusive) to the allocator.
func (m *Manager) finishENI(ctx context.Context, e *eniState) error {
	name, err := m.waitLink(ctx, e)
	if err != nil {
		return err
	}
	if err := m.links.SetMTU(name, m.cfg.MTU); err != nil {
		return fmt.Errorf("set up link of %s on card %d: %w", e.id, e.card, err)
	}
	if err := m.links.SetUp(name); err != nil {
		return fmt.Errorf("set up link of %s on card %d: %w", e.id, e.card, err)
	}
	m.mu.Lock()
	e.linkName, e.linkReady = name, true
	pending, pending6, excl, adopted := e.pending, e.pending6, e.pendingExclusive, e.adopted
	m.mu.Unlock()
	if len(pending) > 0 {
		if _, err := m.alloc.AddAddresses(e.card, e.id, pending...); err != nil {
			return fmt.Errorf("add initial addresses of %s to card %d: %w", e.id, e.card, err)
		}
	}
	if len(pending6) > 0 {
		add := m.alloc.AddIPv6Prefixes
		if adopted { // an earlier process may have given out addresses of them
			add = m.alloc.AdoptIPv6Prefixes
		}
		if _, err := add(e.card, e.id, pending6...); err != nil {
			return fmt.Errorf("add IPv6 prefixes of %s to card %d: %w", e.id, e.card, err)
		}
	}
	if excl {
		if err := m.alloc.AddExclusiveENI(e.card, e.id, e.primary, e.ipv6Arg()...); err != nil {
			return fmt.Errorf("add exclusive ENI %s to card %d: %w", e.id, e.card, err)
		}
	}
	m.mu.Lock()
	e.pending, e.pending6, e.pendingExclusive = nil, nil, false
	m.mu.Unlock()
	m.log.Info("ENI ready", "card", e.card, "eni", e.id, "link", name, "mtu", m.cfg.MTU, "addresses", len(pending),
		"ipv6Prefixes", pending6)
	return nil
}

func (m *Manager) waitLink(ctx context.Context, e *eniState) (string, error) {
	deadline := time.Now().Add(m.cfg.LinkTimeout)
	for {
		name, found, err := linkName(m.links, e.mac)
		if err != nil {
			return "", fmt.Errorf("find link of %s (mac %s) on card %d: %w", e.id, e.mac, e.card, err)
		}
		if found {
			return name, nil
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("link of %s (mac %s) on card %d did not appear within %s", e.id, e.mac, e.card, m.cfg.LinkTimeout)
		}
		if ctxtime.Sleep(ctx, m.cfg.LinkPoll) != nil {
			return "", fmt.Errorf("wait for link of %s on card %d: %w", e.id, e.card, ctx.Err())
		}
	}
}
