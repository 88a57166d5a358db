package eni

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/multinic/multinic/internal/ctxtime"
	"github.com/multinic/multinic/ipam/allocator"
	"github.com/multinic/multinic/ipam/enipool"
	"github.com/multinic/multinic/ipam/store"
)

// createENI creates, tags and attaches one ENI on the card, sets DeleteOnTermination, waits for its link
// and brings it up; then a shared ENI's initial addresses join the pool, or an exclusive ENI joins the
// card's exclusive pool. want is the shared pool's demand; batch decides how much of it the ENI starts with.
// A failed attach deletes the new ENI. A link that does not show up leaves the ENI attached but not ready;
// the card loop retries the link.
func (m *Manager) createENI(ctx context.Context, cs *cardState, exclusive bool, want allocator.Demand) (*eniState, error) {
	cs.createMu.Lock()
	defer cs.createMu.Unlock()
	m.mu.Lock()
	used, limit := len(m.occupied[cs.index]), m.limits.enisPerCard[cs.index]
	m.mu.Unlock()
	if used >= limit {
		return nil, fmt.Errorf("add ENI on card %d: %w: %d of %d ENIs attached", cs.index, enipool.ErrCardFull, used, limit)
	}
	n := 0
	if !exclusive {
		n = m.batch(want, m.limits.ipv4PerENI-1)
	}
	m.opMu.RLock()
	e, addrs, err := m.createAttach(ctx, cs, exclusive, n)
	m.opMu.RUnlock()
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	e.pending = addrs
	e.pendingExclusive = exclusive
	m.mu.Unlock()
	if err := m.setDeleteOnTermination(ctx, e); err != nil {
		m.log.Warn("set DeleteOnTermination failed; will retry", "card", cs.index, "eni", e.id, "err", err)
	}
	if err := m.finishENI(ctx, e); err != nil {
		return e, err
	}
	return e, nil
}

func (m *Manager) tags(card int, exclusive bool) []types.Tag {
	mode := ModeShared
	if exclusive {
		mode = ModeExclusive
	}
	t := []types.Tag{
		{Key: aws.String(TagCluster), Value: aws.String(m.cfg.Cluster)},
		{Key: aws.String(TagNode), Value: aws.String(m.instanceID)},
		{Key: aws.String(TagCard), Value: aws.String(itoa(card))},
		{Key: aws.String(TagManaged), Value: aws.String("true")},
		{Key: aws.String(TagMode), Value: aws.String(mode)},
		{Key: aws.String(TagCreatedAt), Value: aws.String(time.Now().UTC().Format(time.RFC3339))},
	}
	if m.cfg.NodeName != "" {
		t = append(t, types.Tag{Key: aws.String(TagNodeName), Value: aws.String(m.cfg.NodeName)})
	}
	return t
}

// createAttach is CreateNetworkInterface + AttachNetworkInterface, deleting the ENI if the attach fails.
// Caller holds opMu for reading, so the detached-ENI cleanup cannot delete the ENI between the two calls.
func (m *Manager) createAttach(ctx context.Context, cs *cardState, exclusive bool, n int) (_ *eniState, _ []netip.Addr, retErr error) {
	in := &ec2.CreateNetworkInterfaceInput{
		SubnetId:    aws.String(cs.subnetID),
		Groups:      cs.groups,
		Description: aws.String(fmt.Sprintf("multinic %s card %d node %s", m.cfg.Cluster, cs.index, m.instanceID)),
		ClientToken: aws.String(newToken()),
		TagSpecifications: []types.TagSpecification{{
			ResourceType: types.ResourceTypeNetworkInterface, Tags: m.tags(cs.index, exclusive)}},
	}
	setCount := func(n int) {
		in.SecondaryPrivateIpAddressCount, in.Ipv4PrefixCount = nil, nil
		switch {
		case n == 0:
		case m.cfg.PrefixMode:
			in.Ipv4PrefixCount = aws.Int32(int32(n))
		default:
			in.SecondaryPrivateIpAddressCount = aws.Int32(int32(n))
		}
	}
	setCount(n)
	create := func() (*ec2.CreateNetworkInterfaceOutput, error) {
		return do(ctx, m.ec2, "CreateNetworkInterface", func(ctx context.Context, o func(*ec2.Options)) (*ec2.CreateNetworkInterfaceOutput, error) {
			return m.ec2.api.CreateNetworkInterface(ctx, in, o)
		})
	}
	out, err := create()
	if code := ErrorCode(err); n > 0 && (code == "InsufficientFreeAddressesInSubnet" || code == "InsufficientCidrBlocks") {
		// The subnet cannot give the initial batch: an ENI with its primary address alone still serves
		// exclusive allocations and whatever the subnet frees later.
		m.log.Warn("subnet too full for the initial batch; creating the ENI without", "card", cs.index,
			"subnet", cs.subnetID, "batch", n, "err", err)
		setCount(0)
		in.ClientToken = aws.String(newToken())
		out, err = create()
	}
	if err != nil {
		return nil, nil, fmt.Errorf("create ENI on card %d in subnet %s: %w", cs.index, cs.subnetID, err)
	}
	ni := out.NetworkInterface
	id := aws.ToString(ni.NetworkInterfaceId)
	primary, _ := netip.ParseAddr(aws.ToString(ni.PrivateIpAddress))
	m.recent.create(store.RecentENI{ID: id, Card: cs.index, MAC: aws.ToString(ni.MacAddress),
		SubnetID: aws.ToString(ni.SubnetId), Exclusive: exclusive, Primary: primary})
	m.saveRecent() // a restarted agent deletes it if the attach never happened, and never too early
	log := m.log.With("card", cs.index, "eni", id)
	defer func() {
		if retErr != nil {
			log.Warn("deleting ENI after failed attach", "err", retErr)
			m.deleteENI(ctx, cs.index, id)
		}
	}()
	mac, err := parseMAC(aws.ToString(ni.MacAddress))
	if err != nil {
		return nil, nil, fmt.Errorf("create ENI on card %d: %s: %w", cs.index, id, err)
	}
	var attOut *ec2.AttachNetworkInterfaceOutput
	dev := 0
	for try := 0; ; try++ {
		dev = m.freeDevice(cs.index)
		attOut, err = do(ctx, m.ec2, "AttachNetworkInterface", func(ctx context.Context, o func(*ec2.Options)) (*ec2.AttachNetworkInterfaceOutput, error) {
			return m.ec2.api.AttachNetworkInterface(ctx, &ec2.AttachNetworkInterfaceInput{
				NetworkInterfaceId: aws.String(id), InstanceId: aws.String(m.instanceID),
				DeviceIndex: aws.Int32(int32(dev)), NetworkCardIndex: aws.Int32(int32(cs.index)),
			}, o)
		})
		if err == nil || try > 0 || !deviceInUse(err) {
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
		id: id, mac: mac, card: cs.index, device: dev, attachmentID: aws.ToString(attOut.AttachmentId),
		subnetID: aws.ToString(ni.SubnetId), exclusive: exclusive,
	}
	var addrs []netip.Addr
	for _, a := range ni.PrivateIpAddresses {
		ip, err := netip.ParseAddr(aws.ToString(a.PrivateIpAddress))
		if err != nil {
			continue
		}
		if aws.ToBool(a.Primary) {
			e.primary = ip
		} else {
			e.secondaries++
			addrs = append(addrs, ip)
		}
	}
	if !e.primary.IsValid() {
		e.primary, _ = netip.ParseAddr(aws.ToString(ni.PrivateIpAddress))
	}
	for _, p := range ni.Ipv4Prefixes {
		if pfx, err := netip.ParsePrefix(aws.ToString(p.Ipv4Prefix)); err == nil {
			e.prefixes = append(e.prefixes, pfx)
			addrs = append(addrs, expand(pfx)...)
		}
	}
	m.recent.attached(id, dev, e.attachmentID)
	m.recent.assign(id, addrs...)
	m.saveRecent() // a restarted agent adopts it before Describe shows it
	m.mu.Lock()
	e.cidr = m.subnets[e.subnetID]
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

func deviceInUse(err error) bool {
	return ErrorCode(err) == "InvalidParameterValue" && strings.Contains(err.Error(), "device index")
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
		if a := ni.Attachment; a != nil && int(aws.ToInt32(a.NetworkCardIndex)) == card {
			occ[int(aws.ToInt32(a.DeviceIndex))] = aws.ToString(ni.NetworkInterfaceId)
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
	_, err := do(ctx, m.ec2, "ModifyNetworkInterfaceAttribute", func(ctx context.Context, o func(*ec2.Options)) (*ec2.ModifyNetworkInterfaceAttributeOutput, error) {
		return m.ec2.api.ModifyNetworkInterfaceAttribute(ctx, &ec2.ModifyNetworkInterfaceAttributeInput{
			NetworkInterfaceId: aws.String(e.id),
			Attachment: &types.NetworkInterfaceAttachmentChanges{
				AttachmentId: aws.String(att), DeleteOnTermination: aws.Bool(true)},
		}, o)
	})
	if err != nil {
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
	pending, excl := e.pending, e.pendingExclusive
	m.mu.Unlock()
	if len(pending) > 0 {
		if _, err := m.alloc.AddAddresses(e.card, e.id, pending...); err != nil {
			return fmt.Errorf("add initial addresses of %s to card %d: %w", e.id, e.card, err)
		}
	}
	if excl {
		if err := m.alloc.AddExclusiveENI(e.card, e.id, e.primary); err != nil {
			return fmt.Errorf("add exclusive ENI %s to card %d: %w", e.id, e.card, err)
		}
	}
	m.mu.Lock()
	e.pending, e.pendingExclusive = nil, false
	m.mu.Unlock()
	m.log.Info("ENI ready", "card", e.card, "eni", e.id, "link", name, "mtu", m.cfg.MTU, "addresses", len(pending))
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
