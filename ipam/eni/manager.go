// Package eni is the node agent's ENI manager: it discovers the instance's network cards, creates, tags
// and attaches one ENI per managed card (more when a card's ENIs are full), keeps the allocator's per-card
// pools filled with batched secondary addresses or /28 prefixes, gives surplus back to EC2 after a delay,
// makes whole ENIs for exclusive allocations, reconciles the allocator with EC2 and deletes detached ENIs
// it left behind. It is the only code that calls EC2.
//
// Ownership: the manager changes only ENIs that carry its tags (TagCluster = Config.Cluster, TagNode = this
// instance, TagCard); never card 0's primary ENI, an ENI tagged TagNoManage=true, or an EFA ENI. Every other
// ENI only occupies a device index.
//
// Concurrency: one goroutine per managed card fills and shrinks that card's pool; a reconcile goroutine
// compares the allocator with EC2. Address changes (EC2 call + allocator update) hold opMu for reading;
// reconcile and its detached-ENI cleanup hold it for writing, so they never see an address in EC2 but not yet in the allocator
// (or the reverse) and never delete an ENI between its create and attach.
package eni

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/multinic/multinic/ipam/allocator"
	"github.com/multinic/multinic/ipam/enipool"
	"github.com/multinic/multinic/ipam/store"
)

var _ enipool.Pools = (*Manager)(nil)

// Deps are the manager's collaborators.
type Deps struct {
	EC2       EC2API
	IMDS      IMDSAPI
	Allocator *allocator.Allocator
	// Links finds ENI links in the node netns; nil means NoLinks.
	Links Links
}

// Manager implements enipool.Pools.
type Manager struct {
	cfg    Config
	log    *slog.Logger
	ec2    *caller
	imds   IMDSAPI
	alloc  *allocator.Allocator
	links  Links
	recent *recent

	// Set by discovery, read-only once Start returns.
	instanceID   string
	instanceType string
	limits       typeLimits
	primaryENI   string

	opMu sync.RWMutex

	mu       sync.Mutex
	cards    map[int]*cardState
	enis     map[string]*eniState // ours, attached to this instance
	occupied map[int]map[int]string
	subnets  map[string]netip.Prefix
	// orphanSeen: available ENIs of the cluster the orphan sweep saw, since when (orphans.go).
	orphanSeen map[string]time.Time

	startOnce sync.Once
	cancel    context.CancelFunc
	wg        sync.WaitGroup
}

type typeLimits struct {
	cards       int
	defaultCard int
	enisPerCard map[int]int
	maxENIs     int
	ipv4PerENI  int
}

type cardState struct {
	index    int
	subnetID string
	groups   []string
	kick     chan struct{}
	createMu sync.Mutex // one ENI creation at a time per card: device indexes are per card
	exclMu   sync.Mutex // one look at the card's exclusive ENIs at a time (EnsureExclusive, the card loop)

	// Under Manager.mu. lastErr clears once a step succeeds; lastFailure stays, for operators.
	lastErr       error
	lastFailure   string
	lastFailureAt time.Time
	failedSteps   int // card loop steps that failed, ever: EnsureExclusive answers with a failure after its ask
	surplusSince  map[netip.Addr]time.Time
	exclSince     map[string]time.Time
	// exclWaiting: EnsureExclusive calls waiting; exclAsked: when one last asked (zero once served).
	exclWaiting int
	exclAsked   time.Time
	exclGone    map[string]time.Time // away ENIs whose netns is gone: since when
	warned      map[string]bool
}

type eniState struct {
	id           string
	mac          net.HardwareAddr
	card, device int
	attachmentID string
	subnetID     string
	cidr         netip.Prefix
	exclusive    bool
	primary      netip.Addr
	secondaries  int
	prefixes     []netip.Prefix
	linkName     string
	linkReady    bool
	dot          bool // DeleteOnTermination set
	// pending: addresses EC2 gave the ENI that join the pool once its link is ready;
	// pendingExclusive: the ENI joins the exclusive pool then.
	pending          []netip.Addr
	pendingExclusive bool
	// adopted: found attached at discovery or reconcile; linkChecked once adoptLink looked for its link.
	adopted, linkChecked bool
}

func (e *eniState) slots() int { return 1 + e.secondaries + len(e.prefixes) }

// New checks cfg and returns a manager; Start does the work.
func New(cfg Config, d Deps) (*Manager, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("eni manager config: %w", err)
	}
	if d.EC2 == nil || d.IMDS == nil || d.Allocator == nil {
		return nil, errors.New("eni manager: EC2, IMDS and Allocator are required")
	}
	if d.Links == nil {
		d.Links = NoLinks{}
	}
	m := &Manager{
		cfg: cfg, log: cfg.Logger, ec2: newCaller(d.EC2, cfg), imds: d.IMDS, alloc: d.Allocator, links: d.Links,
		recent: newRecent(cfg.SettleTime),
		cards:  map[int]*cardState{}, enis: map[string]*eniState{}, occupied: map[int]map[int]string{},
		subnets: map[string]netip.Prefix{}, orphanSeen: map[string]time.Time{},
	}
	// What the previous process changed in EC2 within the settle time, and from now on this one's, in
	// every checkpoint.
	m.recent.load(d.Allocator.Recent())
	d.Allocator.CarryRecent(m.recent.snapshot)
	return m, nil
}

// saveRecent writes the memory of recent EC2 changes with the checkpoint now, for a change that no
// allocator write follows. A failure is logged: the memory still serves this process.
func (m *Manager) saveRecent() {
	if err := m.alloc.SaveRecent(); err != nil {
		m.log.Warn("save the memory of recent EC2 changes with the checkpoint", "err", err)
	}
}

// Start discovers the instance, adopts the manager's own ENIs, deletes detached ones of this node,
// reconciles the allocator with EC2 and starts the per-card loops, which create missing ENIs and fill the
// pools in the background (see Ready and WaitReady). It fails only when discovery or the first reconcile
// fails. The loops run until ctx ends or Stop.
func (m *Manager) Start(ctx context.Context) error {
	err := errors.New("eni manager: already started")
	m.startOnce.Do(func() { err = m.start(ctx) })
	return err
}

func (m *Manager) start(ctx context.Context) error {
	if err := m.discover(ctx); err != nil {
		return fmt.Errorf("discover instance: %w", err)
	}
	if err := m.reconcile(ctx); err != nil {
		return fmt.Errorf("reconcile with ec2: %w", err)
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	m.cancel = cancel
	go func() {
		select {
		case <-ctx.Done():
			cancel()
		case <-runCtx.Done():
		}
	}()
	m.mu.Lock()
	for _, cs := range m.cards {
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			m.cardLoop(runCtx, cs)
		}()
	}
	m.mu.Unlock()
	if m.cfg.ReconcileInterval > 0 {
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			m.reconcileLoop(runCtx)
		}()
	}
	if m.cfg.OrphanSweepInterval > 0 {
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			m.orphanLoop(runCtx)
		}()
	}
	return nil
}

// Stop ends the loops and waits for them. EC2 calls in flight are cancelled.
func (m *Manager) Stop() {
	if m.cancel != nil {
		m.cancel()
	}
	m.wg.Wait()
}

// WaitReady blocks until Ready or ctx ends.
func (m *Manager) WaitReady(ctx context.Context) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for !m.Ready() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for eni manager ready: %w", ctx.Err())
		case <-t.C:
		}
	}
	return nil
}

// InstanceID is this instance, known after Start.
func (m *Manager) InstanceID() string { return m.instanceID }

// Ready reports whether every managed card has a shared ENI attached with its link up.
func (m *Manager) Ready() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.cards) == 0 {
		return false
	}
	for k := range m.cards {
		if !m.cardReadyLocked(k) {
			return false
		}
	}
	return true
}

func (m *Manager) cardReadyLocked(card int) bool {
	for _, e := range m.enis {
		if e.card == card && !e.exclusive && e.linkReady {
			return true
		}
	}
	return false
}

// Managed reports whether the manager serves card.
func (m *Manager) Managed(card int) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.cards[card]
	return ok
}

// ManagedCards lists the served cards, ascending.
func (m *Manager) ManagedCards() []int {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]int, 0, len(m.cards))
	for k := range m.cards {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// ENI describes one of the manager's ENIs.
func (m *Manager) ENI(eniID string) (enipool.ENIInfo, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.enis[eniID]
	if !ok {
		return enipool.ENIInfo{}, false
	}
	return enipool.ENIInfo{
		ID: e.id, Card: e.card, LinkName: e.linkName, MAC: e.mac.String(), MTU: m.cfg.MTU,
		SubnetCIDR: e.cidr, Gateway: e.cidr.Masked().Addr().Next(),
	}, true
}

// Kick asks the card's loop for a refill check now. It never blocks.
func (m *Manager) Kick(card int) {
	m.mu.Lock()
	cs := m.cards[card]
	m.mu.Unlock()
	if cs == nil {
		return
	}
	select {
	case cs.kick <- struct{}{}:
	default:
	}
}

// LastError is the card's most recent failure to create an ENI or fill its pool, nil once a refill
// succeeds. Its message names the card, the ENI, the subnet and EC2's error code.
func (m *Manager) LastError(card int) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if cs := m.cards[card]; cs != nil {
		return cs.lastErr
	}
	return nil
}

func (m *Manager) setLastErr(cs *cardState, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	cs.setErrLocked(err)
}

// setErrLocked sets the card's last error, and its last failure when err is one; under Manager.mu.
func (cs *cardState) setErrLocked(err error) {
	cs.lastErr = err
	if err != nil {
		cs.lastFailure, cs.lastFailureAt = err.Error(), time.Now()
	}
}

// CardStats describes one managed card.
type CardStats struct {
	Card     int
	SubnetID string
	// ENIs serving the shared pool and exclusive ENIs, and the card's ENI limit (all ENIs, ours or not).
	SharedENIs, ExclusiveENIs, MaxENIs int
	// Capacity is how many shared addresses the card's shared ENIs can hold; MaxCapacity how many if every
	// free ENI slot on the card held a full shared ENI too.
	Capacity, MaxCapacity int
	Ready                 bool
	Pool                  allocator.Stats
	LastError             string
	// SharedENIIDs and ExclusiveENIIDs name the card's ENIs, sorted.
	SharedENIIDs, ExclusiveENIIDs []string
	// LastFailure is the card's most recent failure and LastFailureAt when it happened; unlike LastError
	// they stay after the card recovers.
	LastFailure   string
	LastFailureAt time.Time
}

// Stats is everything the agent exports as metrics.
type Stats struct {
	Cards []CardStats
	EC2   CallStats
	// PrefixMode: the cards' pools are filled with /28 prefixes, not single addresses.
	PrefixMode bool
}

// Stats returns per-card figures and EC2 call counts.
func (m *Manager) Stats() Stats {
	per := m.perENI()
	m.mu.Lock()
	var out Stats
	for _, k := range slices.Sorted(mapsKeys(m.cards)) {
		cs := m.cards[k]
		st := CardStats{Card: k, SubnetID: cs.subnetID, MaxENIs: m.limits.enisPerCard[k], Ready: m.cardReadyLocked(k)}
		for _, e := range m.enis {
			if e.card != k {
				continue
			}
			if e.exclusive {
				st.ExclusiveENIs++
				st.ExclusiveENIIDs = append(st.ExclusiveENIIDs, e.id)
			} else {
				st.SharedENIs++
				st.SharedENIIDs = append(st.SharedENIIDs, e.id)
			}
		}
		slices.Sort(st.SharedENIIDs)
		slices.Sort(st.ExclusiveENIIDs)
		st.Capacity = st.SharedENIs * per
		st.MaxCapacity = (st.MaxENIs - len(m.occupied[k]) + st.SharedENIs) * per
		if cs.lastErr != nil {
			st.LastError = cs.lastErr.Error()
		}
		st.LastFailure, st.LastFailureAt = cs.lastFailure, cs.lastFailureAt
		out.Cards = append(out.Cards, st)
	}
	m.mu.Unlock()
	for i := range out.Cards {
		out.Cards[i].Pool = m.alloc.Stats(out.Cards[i].Card)
	}
	out.EC2 = m.ec2.stats()
	out.PrefixMode = m.cfg.PrefixMode
	return out
}

// perENI is how many shared addresses one ENI can hold.
func (m *Manager) perENI() int {
	if m.cfg.PrefixMode {
		return (m.limits.ipv4PerENI - 1) * PrefixSize
	}
	return m.limits.ipv4PerENI - 1
}

func mapsKeys[K comparable, V any](m map[K]V) func(func(K) bool) {
	return func(yield func(K) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

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
		cs := &cardState{index: k, subnetID: primSubnet, groups: primGroups, kick: make(chan struct{}, 1),
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
		subnetIDs[aws.ToString(ni.SubnetId)] = true
	}
	for _, c := range rv.created {
		if c.rec.SubnetID != "" {
			subnetIDs[c.rec.SubnetID] = true
		}
	}
	if err := m.describeSubnets(ctx, slices.Sorted(mapsKeys(subnetIDs))); err != nil {
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
	out, err := m.imds.GetMetadata(ctx, &imds.GetMetadataInput{Path: path})
	if err != nil {
		return "", fmt.Errorf("read imds %s: %w", path, err)
	}
	defer out.Content.Close()
	b, err := io.ReadAll(io.LimitReader(out.Content, 1<<20))
	if err != nil {
		return "", fmt.Errorf("read imds %s: %w", path, err)
	}
	return strings.TrimSpace(string(b)), nil
}

func (m *Manager) describeType(ctx context.Context) error {
	out, err := do(ctx, m.ec2, "DescribeInstanceTypes", func(ctx context.Context, o func(*ec2.Options)) (*ec2.DescribeInstanceTypesOutput, error) {
		return m.ec2.api.DescribeInstanceTypes(ctx, &ec2.DescribeInstanceTypesInput{
			InstanceTypes: []types.InstanceType{types.InstanceType(m.instanceType)}}, o)
	})
	if err != nil {
		return fmt.Errorf("describe instance type %s: %w", m.instanceType, err)
	}
	if len(out.InstanceTypes) != 1 || out.InstanceTypes[0].NetworkInfo == nil {
		return fmt.Errorf("describe instance type %s: no network info", m.instanceType)
	}
	ni := out.InstanceTypes[0].NetworkInfo
	l := typeLimits{
		cards:       int(aws.ToInt32(ni.MaximumNetworkCards)),
		defaultCard: int(aws.ToInt32(ni.DefaultNetworkCardIndex)),
		maxENIs:     int(aws.ToInt32(ni.MaximumNetworkInterfaces)),
		ipv4PerENI:  int(aws.ToInt32(ni.Ipv4AddressesPerInterface)),
		enisPerCard: map[int]int{},
	}
	for _, c := range ni.NetworkCards {
		l.enisPerCard[int(aws.ToInt32(c.NetworkCardIndex))] = int(aws.ToInt32(c.MaximumNetworkInterfaces))
	}
	if l.cards == 0 {
		l.cards = 1
	}
	if len(l.enisPerCard) == 0 {
		l.enisPerCard[0] = l.maxENIs
	}
	if l.ipv4PerENI < 2 {
		return fmt.Errorf("describe instance type %s: %d IPv4 addresses per ENI leave none for pods", m.instanceType, l.ipv4PerENI)
	}
	m.limits = l
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
func (m *Manager) describeAttached(ctx context.Context) ([]types.NetworkInterface, error) {
	return m.describeENIs(ctx, []types.Filter{{Name: aws.String("attachment.instance-id"), Values: []string{m.instanceID}}})
}

func (m *Manager) describeENIs(ctx context.Context, filters []types.Filter) ([]types.NetworkInterface, error) {
	var all []types.NetworkInterface
	var token *string
	for {
		out, err := do(ctx, m.ec2, "DescribeNetworkInterfaces", func(ctx context.Context, o func(*ec2.Options)) (*ec2.DescribeNetworkInterfacesOutput, error) {
			return m.ec2.api.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{Filters: filters, NextToken: token}, o)
		})
		if err != nil {
			return nil, fmt.Errorf("describe network interfaces of %s: %w", m.instanceID, err)
		}
		all = append(all, out.NetworkInterfaces...)
		if aws.ToString(out.NextToken) == "" {
			return all, nil
		}
		token = out.NextToken
	}
}

func (m *Manager) describeSubnets(ctx context.Context, ids []string) error {
	out, err := do(ctx, m.ec2, "DescribeSubnets", func(ctx context.Context, o func(*ec2.Options)) (*ec2.DescribeSubnetsOutput, error) {
		return m.ec2.api.DescribeSubnets(ctx, &ec2.DescribeSubnetsInput{SubnetIds: ids}, o)
	})
	if err != nil {
		return fmt.Errorf("describe subnets %v: %w", ids, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, sn := range out.Subnets {
		p, err := netip.ParsePrefix(aws.ToString(sn.CidrBlock))
		if err != nil {
			return fmt.Errorf("subnet %s cidr %q: %w", aws.ToString(sn.SubnetId), aws.ToString(sn.CidrBlock), err)
		}
		m.subnets[aws.ToString(sn.SubnetId)] = p
	}
	return nil
}

func tagMap(ts []types.Tag) map[string]string {
	out := make(map[string]string, len(ts))
	for _, t := range ts {
		out[aws.ToString(t.Key)] = aws.ToString(t.Value)
	}
	return out
}

// ownsTags decides ownership from everything but the attachment.
func (m *Manager) ownsTags(ni types.NetworkInterface) bool {
	tags := tagMap(ni.TagSet)
	switch {
	case tags[TagNoManage] == "true":
		return false
	case ni.InterfaceType != "" && ni.InterfaceType != types.NetworkInterfaceTypeInterface:
		return false // efa, efa-only, trunk, ...: never ours
	case tags[TagCluster] != m.cfg.Cluster || tags[TagNode] != m.instanceID || tags[TagCard] == "":
		return false
	case aws.ToString(ni.NetworkInterfaceId) == m.primaryENI:
		return false
	}
	return true
}

// setAttachedLocked rebuilds device occupancy from ni (every ENI attached to this instance) and adopts or
// refreshes the manager's own ENIs; link state of known ENIs is kept. Describe may lag (recent): an ENI
// the manager created within SettleTime and Describe does not show yet is kept (adopted from the memory
// when an earlier process created and attached it), one it detached within SettleTime and Describe still
// shows is not adopted again.
func (m *Manager) setAttachedLocked(enis []types.NetworkInterface, rv recentView) {
	m.occupied = map[int]map[int]string{}
	seen := map[string]bool{}
	for _, ni := range enis {
		att := ni.Attachment
		if att == nil || aws.ToString(att.InstanceId) != m.instanceID {
			continue
		}
		id := aws.ToString(ni.NetworkInterfaceId)
		card, dev := int(aws.ToInt32(att.NetworkCardIndex)), int(aws.ToInt32(att.DeviceIndex))
		if m.occupied[card] == nil {
			m.occupied[card] = map[int]string{}
		}
		m.occupied[card][dev] = id
		if !m.ownsTags(ni) || (card == 0 && dev == 0) {
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
			mac, _ := net.ParseMAC(aws.ToString(ni.MacAddress))
			e = &eniState{id: id, mac: mac, exclusive: tagMap(ni.TagSet)[TagMode] == ModeExclusive, adopted: true}
			m.enis[id] = e
			m.log.Info("adopted ENI", "card", card, "eni", id, "device", dev, "exclusive", e.exclusive)
		}
		// Fields other goroutines read without m.mu are written only when they change (they never do
		// for an attachment that stays): card, device, attachment, subnet, primary.
		set(&e.card, card)
		set(&e.device, dev)
		set(&e.attachmentID, aws.ToString(att.AttachmentId))
		set(&e.subnetID, aws.ToString(ni.SubnetId))
		set(&e.cidr, m.subnets[e.subnetID])
		e.dot = aws.ToBool(att.DeleteOnTermination)
		e.secondaries, e.prefixes = 0, nil
		for _, a := range ni.PrivateIpAddresses {
			ip, err := netip.ParseAddr(aws.ToString(a.PrivateIpAddress))
			if err != nil {
				continue
			}
			if aws.ToBool(a.Primary) {
				set(&e.primary, ip)
			} else {
				e.secondaries++
			}
		}
		for _, p := range ni.Ipv4Prefixes {
			if pfx, err := netip.ParsePrefix(aws.ToString(p.Ipv4Prefix)); err == nil {
				e.prefixes = append(e.prefixes, pfx)
			}
		}
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
		subnetID: rec.SubnetID, cidr: m.subnets[rec.SubnetID], exclusive: rec.Exclusive, primary: rec.Primary, adopted: true}
	pfxs := map[netip.Prefix]bool{}
	for a, as := range rv.assigned {
		switch {
		case as.eniID != rec.ID:
		case m.cfg.PrefixMode:
			pfxs[netip.PrefixFrom(a, 28).Masked()] = true
		default:
			e.secondaries++
		}
	}
	e.prefixes = slices.SortedFunc(mapsKeys(pfxs), func(x, y netip.Prefix) int { return x.Addr().Compare(y.Addr()) })
	return e
}

// newToken is a fresh ClientToken for one logical CreateNetworkInterface, reused by its retries.
func newToken() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return "multinic-" + hex.EncodeToString(b)
}

func itoa(i int) string { return strconv.Itoa(i) }

func parseMAC(s string) (net.HardwareAddr, error) {
	mac, err := net.ParseMAC(s)
	if err != nil || len(mac) != 6 {
		return nil, fmt.Errorf("mac %q invalid", s)
	}
	return mac, nil
}

func set[T comparable](p *T, v T) {
	if *p != v {
		*p = v
	}
}
