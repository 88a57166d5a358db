package eni

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/multinic/multinic/ipam/eni/awsec2"
	"github.com/multinic/multinic/ipam/store"
)

// discover reads IMDS, DescribeInstanceTypes and the attached ENIs, and sets up the managed cards.
func (m *Manager) discover(ctx context.Context) error {
	var err error
	if m.instanceID, err = m.metadata(ctx, "instance-id"); err != nil {
		return err
	}
	if m.instanceType, err = m.metadata(ctx, "instance-type"); err != nil {
		return err
	}
	mac, err := m.metadata(ctx, "mac")
	if err != nil {
		return err
	}
	primSubnet, err := m.metadata(ctx, "network/interfaces/macs/"+mac+"/subnet-id")
	if err != nil {
		return err
	}
	groups, err := m.metadata(ctx, "network/interfaces/macs/"+mac+"/security-group-ids")
	if err != nil {
		return err
	}
	if m.primaryENI, err = m.metadata(ctx, "network/interfaces/macs/"+mac+"/interface-id"); err != nil {
		return err
	}
	primGroups := splitLines(groups)

	if err := m.describeType(ctx); err != nil {
		return err
	}
	managed, err := m.managedCards()
	if err != nil {
		return err
	}
	enis, err := m.describeAttached(ctx)
	if err != nil {
		return err
	}

	m.mu.Lock()
	for _, k := range managed {
		cs := &cardState{index: k, family: m.cfg.family(k), subnetID: primSubnet, groups: primGroups, kick: make(chan struct{}, 1),
			surplusSince: map[netip.Addr]time.Time{}, exclSince: map[string]time.Time{},
			exclGone: map[string]time.Time{}, warned: map[string]bool{}}
		if cc, ok := m.cfg.Cards[k]; ok {
			if cc.SubnetID != "" {
				cs.subnetID = cc.SubnetID
			}
			if len(cc.SecurityGroupIDs) > 0 {
				cs.groups = slices.Clone(cc.SecurityGroupIDs)
			}
		}
		m.cards[k] = cs
	}
	m.mu.Unlock()

	rv := m.recent.view()
	subnetIDs := map[string]bool{primSubnet: true}
	for _, cs := range m.cards {
		subnetIDs[cs.subnetID] = true
	}
	for _, ni := range enis {
		subnetIDs[ni.SubnetID] = true
	}
	for _, c := range rv.created {
		if c.rec.SubnetID != "" {
			subnetIDs[c.rec.SubnetID] = true
		}
	}
	if err := m.describeSubnets(ctx, slices.Sorted(maps.Keys(subnetIDs))); err != nil {
		return err
	}
	m.mu.Lock()
	m.setAttachedLocked(enis, rv)
	adopted := len(m.enis)
	m.mu.Unlock()
	m.log.Info("discovered instance", "instance", m.instanceID, "type", m.instanceType, "cards", m.limits.cards,
		"enisPerCard", m.limits.enisPerCard[managedOr(managed, 0)], "ipv4PerENI", m.limits.ipv4PerENI,
		"managedCards", managed, "attachedENIs", len(enis), "adoptedENIs", adopted)
	return nil
}

func managedOr(cards []int, def int) int {
	if len(cards) > 0 {
		return cards[0]
	}
	return def
}

func splitLines(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}

func (m *Manager) metadata(ctx context.Context, path string) (string, error) {
	return awsec2.Metadata(ctx, m.imds, path)
}

func (m *Manager) describeType(ctx context.Context) error {
	ni, err := m.ec2.InstanceType(ctx, m.instanceType)
	if err != nil {
		return fmt.Errorf("describe instance type %s: %w", m.instanceType, err)
	}
	if ni.IPv4PerENI < 2 {
		return fmt.Errorf("describe instance type %s: %d IPv4 addresses per ENI leave none for pods", m.instanceType, ni.IPv4PerENI)
	}
	m.limits = typeLimits{cards: ni.Cards, defaultCard: ni.DefaultCard, enisPerCard: ni.ENIsPerCard, maxENIs: ni.MaxENIs,
		ipv4PerENI: ni.IPv4PerENI, baselineGbps: ni.BaselineGbps, peakGbps: ni.PeakGbps}
	return nil
}

func (m *Manager) managedCards() ([]int, error) {
	var out []int
	switch {
	case m.cfg.AllCards:
		for k := range m.limits.cards {
			out = append(out, k)
		}
	case m.cfg.ManagedCards != nil:
		for _, k := range m.cfg.ManagedCards {
			if k >= m.limits.cards {
				return nil, fmt.Errorf("managed card %d invalid: %s has cards 0-%d", k, m.instanceType, m.limits.cards-1)
			}
			out = append(out, k)
		}
	default:
		for k := range m.limits.cards {
			if k != m.limits.defaultCard {
				out = append(out, k)
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// describeAttached lists every ENI attached to this instance, ours or not.
func (m *Manager) describeAttached(ctx context.Context) ([]awsec2.Interface, error) {
	return m.describeENIs(ctx, awsec2.Filter{Name: "attachment.instance-id", Values: []string{m.instanceID}})
}

func (m *Manager) describeENIs(ctx context.Context, filters ...awsec2.Filter) ([]awsec2.Interface, error) {
	enis, err := m.ec2.Interfaces(ctx, filters...)
	if err != nil {
		return nil, fmt.Errorf("describe network interfaces of %s: %w", m.instanceID, err)
	}
	return enis, nil
}

func (m *Manager) describeSubnets(ctx context.Context, ids []string) error {
	cidrs, err := m.ec2.Subnets(ctx, ids)
	if err != nil {
		return fmt.Errorf("describe subnets %v: %w", ids, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	maps.Copy(m.subnets, cidrs)
	return nil
}

// ownsTags decides ownership from everything but the attachment.
func (m *Manager) ownsTags(ni awsec2.Interface) bool {
	switch {
	case ni.Tags[TagNoManage] == "true":
		return false
	case !ni.Plain():
		return false // efa, efa-only, trunk, ...: never ours
	case ni.Tags[TagCluster] != m.cfg.Cluster || ni.Tags[TagNode] != m.instanceID || ni.Tags[TagCard] == "":
		return false
	case ni.ID == m.primaryENI:
		return false
	}
	return true
}

// isLaunchENI: an ENI the instance's launch template made (EC2 created and attached it in RunInstances): a
// plain interface, not the primary nor opted out, tagged with this cluster and with no TagNode (a launch
// template cannot know the instance ID). Only its attachment to this instance, which the caller checks,
// makes it this node's: EC2 attaches an ENI to one instance at a time, so no other node uses it.
func (m *Manager) isLaunchENI(ni awsec2.Interface) bool {
	switch {
	case ni.Tags[TagNoManage] == "true" || !ni.Plain() || ni.ID == m.primaryENI:
		return false
	case ni.Tags[TagCluster] != m.cfg.Cluster || ni.Tags[TagNode] != "":
		return false
	}
	return true
}

// setAttachedLocked rebuilds device occupancy from enis (every ENI attached to this instance) and adopts or
// refreshes the manager's own ENIs and the launch ENIs (isLaunchENI); link state of known ENIs is kept. Describe may lag (recent): an ENI
// the manager created within SettleTime and Describe does not show yet is kept (adopted from the memory
// when an earlier process created and attached it), one it detached within SettleTime and Describe still
// shows is not adopted again.
func (m *Manager) setAttachedLocked(enis []awsec2.Interface, rv recentView) {
	m.occupied = map[int]map[int]string{}
	seen := map[string]bool{}
	for _, ni := range enis {
		att := ni.Attachment
		if att == nil || att.InstanceID != m.instanceID {
			continue
		}
		id, card, dev := ni.ID, att.Card, att.Device
		if m.occupied[card] == nil {
			m.occupied[card] = map[int]string{}
		}
		m.occupied[card][dev] = id
		launch := m.isLaunchENI(ni)
		if !(m.ownsTags(ni) || launch) || (card == 0 && dev == 0) {
			continue
		}
		if _, managed := m.cards[card]; !managed {
			continue // ours, but on a card no longer served: leave it as it is
		}
		if _, gone := rv.detached[id]; gone {
			continue
		}
		seen[id] = true
		e := m.enis[id]
		if e == nil {
			mac, _ := net.ParseMAC(ni.MAC)
			e = &eniState{id: id, mac: mac, exclusive: ni.Tags[TagMode] == ModeExclusive, adopted: true, launch: launch}
			m.enis[id] = e
			m.log.Info("adopted ENI", "card", card, "eni", id, "device", dev, "exclusive", e.exclusive, "launchTemplate", launch)
		}
		// Fields other goroutines read without m.mu are written only when they change (they never do
		// for an attachment that stays): card, device, attachment, subnet, primary.
		set(&e.card, card)
		set(&e.device, dev)
		set(&e.attachmentID, att.ID)
		set(&e.subnetID, ni.SubnetID)
		set(&e.cidr, m.subnets[e.subnetID].CIDR)
		set(&e.cidr6, m.subnets[e.subnetID].IPv6CIDR)
		if ni.Primary.IsValid() {
			set(&e.primary, ni.Primary)
		}
		if len(ni.IPv6Addresses) > 0 {
			set(&e.ipv6, ni.IPv6Addresses[0])
		}
		e.dot = att.DeleteOnTermination
		e.secondaries, e.prefixes, e.prefixes6 = len(ni.Secondaries), ni.Prefixes, ni.IPv6Prefixes
	}
	for id, c := range rv.created {
		if !seen[id] && m.enis[id] == nil && c.rec.AttachmentID != "" {
			if _, managed := m.cards[c.rec.Card]; managed {
				m.enis[id] = m.fromMemory(c.rec, rv)
				m.log.Info("adopted ENI from the memory of recent changes; Describe does not show it yet",
					"card", c.rec.Card, "eni", id, "device", c.rec.Device, "exclusive", c.rec.Exclusive)
			}
		}
	}
	for id, e := range m.enis {
		if seen[id] {
			continue
		}
		if _, fresh := rv.created[id]; fresh {
			if m.occupied[e.card] == nil {
				m.occupied[e.card] = map[int]string{}
			}
			m.occupied[e.card][e.device] = id
			continue
		}
		m.log.Warn("ENI no longer attached", "card", e.card, "eni", id)
		delete(m.enis, id)
	}
}

// fromMemory is an ENI an earlier process created and attached within SettleTime, as it recorded it; its
// secondary addresses (or prefixes) are those assigned to it since, as remembered. Its link is looked for
// as for any adopted ENI; DeleteOnTermination is set again (the record does not say).
func (m *Manager) fromMemory(rec store.RecentENI, rv recentView) *eniState {
	mac, _ := net.ParseMAC(rec.MAC)
	e := &eniState{id: rec.ID, mac: mac, card: rec.Card, device: rec.Device, attachmentID: rec.AttachmentID,
		subnetID: rec.SubnetID, cidr: m.subnets[rec.SubnetID].CIDR, cidr6: m.subnets[rec.SubnetID].IPv6CIDR,
		exclusive: rec.Exclusive, primary: rec.Primary, adopted: true}
	pfxs := map[netip.Prefix]bool{}
	for a, as := range rv.assigned {
		switch {
		case as.eniID != rec.ID:
		case a.Is6(): // an IPv6 prefix, remembered by its first address
			e.prefixes6 = append(e.prefixes6, netip.PrefixFrom(a, IPv6PrefixBits))
		case m.cfg.PrefixMode:
			pfxs[netip.PrefixFrom(a, 28).Masked()] = true
		default:
			e.secondaries++
		}
	}
	e.prefixes = slices.SortedFunc(maps.Keys(pfxs), func(x, y netip.Prefix) int { return x.Addr().Compare(y.Addr()) })
	slices.SortFunc(e.prefixes6, func(x, y netip.Prefix) int { return x.Addr().Compare(y.Addr()) })
	return e
}

// newToken is a fresh ClientToken for one logical CreateNetworkInterface, reused by its retries.
func newToken() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return "multinic-" + hex.EncodeToString(b)
}

func itoa(i int) string { return strconv.Itoa(i) }

func set[T comparable](p *T, v T) {
	if *p != v {
		*p = v
	}
}
