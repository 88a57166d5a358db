// Package eni is the node agent's ENI manager: it discovers the instance's network cards, creates, tags
// and attaches one ENI per managed card (more when a card's ENIs are full), keeps the allocator's per-card
// pools filled with batched secondary addresses or /28 prefixes, gives surplus back to EC2 after a delay,
// makes whole ENIs for exclusive allocations, reconciles the allocator with EC2 and deletes detached ENIs
// it left behind.
//
// It is split as the AWS VPC CNI splits awsutils from ipamd: package awsec2 is the EC2 layer (every EC2
// call, a token bucket per EC2 throttling class, retries, error classes, the one parser of EC2's interface
// data); package plan is the pool policy, pure (a card's inventory and pool counts in, actions out); this
// package keeps the inventory of the manager's ENIs, executes the plans against EC2 and the allocator
// (cardloop.go), and adopts, reconciles and recovers what EC2 and the node say.
//
// Ownership: the manager changes only ENIs that carry its tags (TagCluster = Config.Cluster, TagNode = this
// instance, TagCard), and the addresses of launch ENIs (attached to this instance by its launch template,
// TagCluster = Config.Cluster and no TagNode; discover.go), which it never detaches or deletes; never card
// 0's primary ENI, an ENI tagged TagNoManage=true, or an EFA ENI. Every other ENI only occupies a device index.
//
// Concurrency: one goroutine per managed card fills and shrinks that card's pool; a reconcile goroutine
// compares the allocator with EC2. Address changes (EC2 call + allocator update) hold opMu for reading;
// reconcile and its detached-ENI cleanup hold it for writing, so they never see an address in EC2 but not
// yet in the allocator (or the reverse) and never delete an ENI between its create and attach.
package eni

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/multinic/multinic/internal/ctxtime"
	"github.com/multinic/multinic/ipam/allocator"
	"github.com/multinic/multinic/ipam/api"
	"github.com/multinic/multinic/ipam/eni/awsec2"
	"github.com/multinic/multinic/ipam/eni/plan"
	"github.com/multinic/multinic/ipam/enipool"
)

var _ enipool.Pools = (*Manager)(nil)

// Deps are the manager's collaborators.
type Deps struct {
	EC2       awsec2.EC2API
	IMDS      awsec2.IMDSAPI
	Allocator *allocator.Allocator
	// Links finds ENI links in the node netns; nil means NoLinks.
	Links Links
}

// Manager implements enipool.Pools.
type Manager struct {
	cfg    Config
	log    *slog.Logger
	ec2    *awsec2.Client
	imds   awsec2.IMDSAPI
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
	subnets  map[string]awsec2.Subnet
	// orphanSeen: available ENIs of the cluster the orphan sweep saw, since when (orphans.go).
	orphanSeen map[string]time.Time

	startOnce sync.Once
	started   time.Time // when Start ran: idle work waits a while after it (planInput)
	cancel    context.CancelFunc
	wg        sync.WaitGroup
}

type typeLimits struct {
	cards       int
	defaultCard int
	enisPerCard map[int]int
	maxENIs     int
	ipv4PerENI  int
	// baselineGbps and peakGbps: each card's bandwidth, as DescribeInstanceTypes gives it.
	baselineGbps, peakGbps map[int]float64
}

type cardState struct {
	index    int
	family   string // api.FamilyIPv4, FamilyIPv6 or FamilyDual
	subnetID string
	groups   []string
	kick     chan struct{}
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
	// unattached: an ENI the card created whose attach EC2 throttled, attached by the card's next create
	// instead of a new one (create.go); reconcile's detached-ENI cleanup leaves it alone.
	unattached *unattachedENI
	warned     map[string]bool
}

type eniState struct {
	id           string
	mac          net.HardwareAddr
	card, device int
	attachmentID string
	subnetID     string
	cidr, cidr6  netip.Prefix // the subnet's IPv4 and IPv6 blocks (cidr6 invalid: none)
	exclusive    bool
	primary      netip.Addr
	ipv6         netip.Addr // an exclusive ENI's IPv6 address (ipv6 and dual cards), zero when none
	secondaries  int
	prefixes     []netip.Prefix
	prefixes6    []netip.Prefix // IPv6 /80s
	linkName     string
	linkReady    bool
	dot          bool // DeleteOnTermination set
	// launch: made by the instance's launch template (isLaunchENI). The agent assigns and unassigns its
	// addresses as on any of its ENIs, but never detaches, deletes or retags it, nor changes its
	// DeleteOnTermination: the operator asked for it in the launch template, which decides its lifetime.
	launch bool
	// pending: addresses EC2 gave the ENI that join the pool once its link is ready;
	// pendingExclusive: the ENI joins the exclusive pool then.
	pending          []netip.Addr
	pending6         []netip.Prefix
	pendingExclusive bool
	// adopted: found attached at discovery or reconcile; linkChecked once adoptLink looked for its link.
	adopted, linkChecked bool
}

func (e *eniState) slots() int { return 1 + e.secondaries + len(e.prefixes) }

// ipv6Arg is e's IPv6 address as AddExclusiveENI takes it: none, or the one.
func (e *eniState) ipv6Arg() []netip.Addr {
	if e.ipv6.IsValid() {
		return []netip.Addr{e.ipv6}
	}
	return nil
}

// IPv6PrefixBits is the length of the IPv6 prefixes the manager asks EC2 for: EC2 delegates /80s.
const IPv6PrefixBits = 80

// IPv6Gateway is the VPC router's IPv6 address as pods use it: on EC2 the router answers neighbour
// discovery for this link-local address on every subnet with an IPv6 block (the AWS VPC CNI routes its
// IPv6 pods via it too), so one address serves every card and the pod needs no on-link route of the /64.
// fake-ec2's fabric answers at the same address (fabric.IPv6Gateway).
var IPv6Gateway = netip.MustParseAddr("fe80:ec2::1")

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
		cfg: cfg, log: cfg.Logger, ec2: awsec2.New(d.EC2, cfg.ec2()), imds: d.IMDS, alloc: d.Allocator, links: d.Links,
		recent: newRecent(cfg.SettleTime),
		cards:  map[int]*cardState{}, enis: map[string]*eniState{}, occupied: map[int]map[int]string{},
		subnets: map[string]awsec2.Subnet{}, orphanSeen: map[string]time.Time{},
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
	m.started = time.Now()
	// When a cluster scales up, every new node's agent describes at once against the account's buckets, and
	// the start's calls may run out of attempts while EC2 throttles; on a loaded node IMDS may not answer
	// the first reads in time. They only read (and reconcile, which runs again every ReconcileInterval
	// anyway), so the start tries again after a backoff, as a card loop does, instead of exiting into the
	// kubelet's crash-loop backoff. A final answer (a 4xx, a bad instance type) ends the start.
	for failures := 1; ; failures++ {
		err := m.discoverAndReconcile(ctx)
		if err == nil || !awsec2.Transient(err) || ctx.Err() != nil {
			if err != nil {
				return err
			}
			break
		}
		wait := plan.Backoff(failures, m.cfg.RefillInterval, m.cfg.ErrorBackoffMax)
		m.log.Warn("start: EC2 or IMDS failed for now; trying again", "err", err, "failures", failures, "retryIn", wait)
		if ctxtime.Sleep(ctx, wait) != nil {
			return err
		}
	}
	if m.cfg.EC2Burst == 0 {
		m.mu.Lock()
		cards := len(m.cards)
		m.mu.Unlock()
		m.ec2.SetBurst(ColdStartBurst(cards))
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

// discoverAndReconcile is the start's EC2 work before the loops run; safe to run again after a failure.
func (m *Manager) discoverAndReconcile(ctx context.Context) error {
	if err := m.discover(ctx); err != nil {
		return fmt.Errorf("discover instance: %w", err)
	}
	if err := m.reconcile(ctx); err != nil {
		return fmt.Errorf("reconcile with ec2: %w", err)
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

// Family is the address family the card serves (api.FamilyIPv4 for a card not managed).
func (m *Manager) Family(card int) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	if cs := m.cards[card]; cs != nil {
		return cs.family
	}
	return api.FamilyIPv4
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
		IPv6SubnetCIDR: e.cidr6, IPv6Gateway: IPv6Gateway,
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
	// BaselineGbps and PeakGbps are the card's bandwidth from DescribeInstanceTypes (0: EC2 gave none).
	BaselineGbps, PeakGbps float64
}

// Stats is everything the agent exports as metrics.
type Stats struct {
	Cards []CardStats
	EC2   awsec2.CallStats
	// PrefixMode: the cards' pools are filled with /28 prefixes, not single addresses.
	PrefixMode bool
}

// Stats returns per-card figures and EC2 call counts.
func (m *Manager) Stats() Stats {
	per := m.perENI()
	m.mu.Lock()
	var out Stats
	for _, k := range slices.Sorted(maps.Keys(m.cards)) {
		cs := m.cards[k]
		st := CardStats{Card: k, SubnetID: cs.subnetID, MaxENIs: m.limits.enisPerCard[k], Ready: m.cardReadyLocked(k),
			BaselineGbps: m.limits.baselineGbps[k], PeakGbps: m.limits.peakGbps[k]}
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
	out.EC2 = m.ec2.Stats()
	out.PrefixMode = m.cfg.PrefixMode
	return out
}

// perENI is how many shared addresses one ENI can hold.
func (m *Manager) perENI() int {
	if m.cfg.PrefixMode {
		return (m.limits.ipv4PerENI - 1) * plan.PrefixSize
	}
	return m.limits.ipv4PerENI - 1
}
