// Package backend is the node agent's allocation backend, what the plugin's socket calls (server.Backend): it
// allocates from the allocator's per-card pools, asks the ENI manager (enipool.Pools) to refill them, waits a
// bounded time when a pool is empty, reclaims the allocations of pods that are gone (reclaim.go: the agent's
// "GC" in its flags, metrics and Events, not the plugin's CNI GC), and exposes Prometheus metrics and health
// endpoints.
package backend

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/record"

	"github.com/multinic/multinic/internal/netnsdir"
	"github.com/multinic/multinic/ipam/allocator"
	"github.com/multinic/multinic/ipam/api"
	"github.com/multinic/multinic/ipam/enipool"
	"github.com/multinic/multinic/ipam/server"
)

// Defaults for the zero values of Config.
const (
	// DefaultWaitTimeout bounds how long an allocate waits for a refill of an empty pool.
	DefaultWaitTimeout = 10 * time.Second
	// DefaultReclaimGrace is how long an allocation's pod must have been seen gone before reclaim releases it.
	DefaultReclaimGrace = 60 * time.Second
	// DefaultReclaimInterval is how often reclaim looks for allocations whose pod is gone.
	DefaultReclaimInterval = 15 * time.Second
)

var _ server.Backend = (*Backend)(nil)

// EC2Stats is a snapshot of the ENI manager's EC2 call counters, for metrics.
type EC2Stats struct {
	// Calls counts attempts by action and result ("ok" or EC2's error code).
	Calls     map[string]map[string]int
	Throttles int
	Retries   int
}

// Config configures an Agent. Allocator and Pools are required; zero values of the others take the
// documented defaults.
type Config struct {
	Allocator *allocator.Allocator
	Pools     enipool.Pools

	// WaitTimeout bounds the wait for a refill of an empty pool (0: DefaultWaitTimeout). The request's
	// context bounds it too.
	WaitTimeout time.Duration

	// NodeName is this node's Kubernetes name, for the pod view of reclaim.
	NodeName string
	// Kube, when set, is how reclaim learns which pods live on the node (an informer on the node's pods, started
	// by Run); nil: reclaim goes by netns existence alone.
	Kube kubernetes.Interface
	// NetnsDirs are the directories whose netns paths reclaim takes as evidence (nil: netnsdir.Default).
	NetnsDirs []string
	// ReclaimGrace: an allocation is released once its pod has been seen gone for this long, on two passes
	// at least (0: DefaultReclaimGrace).
	ReclaimGrace time.Duration
	// ReclaimInterval is the time between reclaim passes in Run (0: DefaultReclaimInterval).
	ReclaimInterval time.Duration

	// Cards lists the cards whose pool gauges are exported even while empty (the managed ones, once
	// known). Cards with any known address are exported anyway.
	Cards func() []int
	// EC2Stats, when set, exports the manager's EC2 call counters.
	EC2Stats func() EC2Stats
	// InstanceID, CardInfo and Logs, when set, feed the operators' read-only endpoints (Node, Logs).
	InstanceID func() string
	CardInfo   func() []CardInfo
	Logs       func() []string

	// Events, when set, records Kubernetes Events: on the Node when a card stops being able to serve and
	// when it recovers, and when reclaim frees an allocation; on the Pod when its allocation is refused for a
	// reason the user can act on. FailingFor is how long a card's refill must fail, with addresses still
	// free, before the Node hears of it (0: DefaultFailingFor).
	Events     record.EventRecorder
	FailingFor time.Duration

	// Claims, when set (agent --dra), decides every allocation against the pod's DRA claims.
	Claims Claims
	// Interfaces, when set (agent --dra), hears which pod interface took over a claim's reservation, and
	// when that interface is released.
	Interfaces Interfaces

	Logger *slog.Logger
	// Now replaces time.Now for reclaim decisions, for tests.
	Now func() time.Time
}

// Claims is the check of an attachment against its pod's DRA ResourceClaims (package dra), for a node whose
// cards the scheduler hands out through DRA.
type Claims interface {
	// Reservation is the key of the claim's prepared allocation that req takes over (Transfer), or ok false
	// when req is allocated as it is: a claim's own allocation (prepare's), or an attachment whose claim
	// holds the card but whose reservation was taken over before (a new sandbox of the pod). An error
	// wrapping api.ErrNotClaimed refuses req: no claim of its pod holds its card in its mode.
	Reservation(ctx context.Context, req api.AllocateRequest) (from api.ReleaseRequest, ok bool, err error)
}

// Interfaces hears of the pod interfaces that take over claims' reservations, for the claims' status
// (package dra's Statuses, which writes interfaceName in the background): it must return at once.
type Interfaces interface {
	// Attached: the pod's (UID) claim device on card is now its interface ifName.
	Attached(pod string, card int, ifName string)
	// Detached: the pod's interface ifName on card is released (a DEL); ignored unless ifName is the name noted.
	Detached(pod string, card int, ifName string)
}

// Backend serves allocations; it is safe for concurrent use.
type Backend struct {
	cfg     Config
	alloc   *allocator.Allocator
	pools   enipool.Pools
	log     *slog.Logger
	metrics *metrics
	reclaim *reclaimState
	// pods is the node's pod view; nil without Config.Kube.
	pods   *podView
	events *events
}

// New returns a backend over a restored allocator.
func New(cfg Config) (*Backend, error) {
	switch {
	case cfg.Allocator == nil:
		return nil, errors.New("new backend: allocator required")
	case cfg.Pools == nil:
		return nil, errors.New("new backend: pools required")
	case cfg.WaitTimeout < 0:
		return nil, fmt.Errorf("new backend: wait timeout %s invalid: must be 0 or more", cfg.WaitTimeout)
	case cfg.ReclaimGrace < 0:
		return nil, fmt.Errorf("new backend: reclaim grace %s invalid: must be 0 or more", cfg.ReclaimGrace)
	case cfg.ReclaimInterval < 0:
		return nil, fmt.Errorf("new backend: reclaim interval %s invalid: must be 0 or more", cfg.ReclaimInterval)
	}
	if cfg.WaitTimeout == 0 {
		cfg.WaitTimeout = DefaultWaitTimeout
	}
	if cfg.ReclaimGrace == 0 {
		cfg.ReclaimGrace = DefaultReclaimGrace
	}
	if cfg.ReclaimInterval == 0 {
		cfg.ReclaimInterval = DefaultReclaimInterval
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.FailingFor == 0 {
		cfg.FailingFor = DefaultFailingFor
	}
	if cfg.NetnsDirs == nil {
		cfg.NetnsDirs = netnsdir.Default
	}
	if cfg.Kube != nil && cfg.NodeName == "" {
		return nil, errors.New("new backend: node name required with a Kube client")
	}
	b := &Backend{
		cfg:     cfg,
		alloc:   cfg.Allocator,
		pools:   cfg.Pools,
		log:     cfg.Logger,
		reclaim: &reclaimState{seen: map[reclaimKey]reclaimSeen{}, unseen: map[reclaimKey]bool{}},
		events:  newEvents(cfg.Events, cfg.NodeName),
	}
	if cfg.Kube != nil {
		b.pods = newPodView(cfg.Kube, cfg.NodeName)
	}
	b.metrics = newMetrics(b)
	return b, nil
}

func reqLogAttrs(req api.AllocateRequest) []any {
	return []any{"card", req.Card, "container", req.ContainerID, "ifname", req.IfName,
		"pod", req.Describe()}
}

// Allocate grants req an address on its card, waiting up to WaitTimeout for a refill when the pool is
// empty. Errors wrap api.ErrNotManaged, api.ErrTryAgain (with EC2's last error on the card) or the
// allocator's sentinels.
func (b *Backend) Allocate(ctx context.Context, req api.AllocateRequest) (resp api.AllocateResponse, retErr error) {
	start := time.Now()
	log := b.log.With(reqLogAttrs(req)...)
	defer func() {
		b.metrics.observeAllocate(time.Since(start), retErr)
		b.events.allocateRefused(req, retErr)
	}()
	if err := req.Validate(); err != nil {
		return api.AllocateResponse{}, err
	}
	pod := req.Describe()
	if !b.pools.Managed(req.Card) {
		return api.AllocateResponse{}, fmt.Errorf("allocate card %d for %s: %w", req.Card, pod, api.ErrNotManaged)
	}
	if got, want := api.NormalFamily(req.Family), b.pools.Family(req.Card); got != want {
		// A plugin older than "family" sends none (ipv4): refuse rather than answer without the address the
		// card's NAD promises.
		return api.AllocateResponse{}, fmt.Errorf("allocate card %d for %s: %w: \"family\" %q invalid: card %d serves %q (a plugin older than the family key sends none, which is ipv4: update the plugin, or the NAD's family does not match the agent's --family)",
			req.Card, pod, api.ErrInvalid, got, req.Card, want)
	}
	_, existed := b.alloc.Lookup(req.ContainerID, req.IfName)
	var al api.Allocation
	var claimed *api.AllocateRequest // the claim's reservation this call took over, as the claim held it
	defer func() {
		if retErr == nil || (!al.Address.IsValid() && !al.IPv6.IsValid()) || existed {
			return
		}
		// Give back what this call took: the caller is told it failed. A reservation goes back to its claim.
		if claimed != nil {
			if _, _, err := b.alloc.Transfer(req.ContainerID, req.IfName, *claimed); err != nil {
				log.Error("give the reservation back to its claim", "address", al.Address, "error", err)
			}
			return
		}
		if _, _, err := b.alloc.Release(req.ContainerID, req.IfName); err != nil {
			log.Error("roll back allocation", "address", al.Address, "error", err)
		}
	}()

	if b.cfg.Claims != nil && !existed {
		res, take, err := b.cfg.Claims.Reservation(ctx, req)
		if err != nil {
			return api.AllocateResponse{}, fmt.Errorf("allocate card %d for %s: %w", req.Card, pod, err)
		}
		if orig, ok := b.alloc.Lookup(res.ContainerID, res.IfName); take && ok {
			moved, ok, err := b.alloc.Transfer(res.ContainerID, res.IfName, req)
			if err != nil {
				return api.AllocateResponse{}, err
			}
			if ok {
				al, claimed = moved, &orig.AllocateRequest
				log.Info("took over the claim's reservation", "claimContainer", res.ContainerID, "claimIfName", res.IfName, "address", al.Address)
			}
		}
	}
	if claimed == nil {
		waited, err := b.allocateWait(ctx, req, existed, log)
		if err != nil {
			return api.AllocateResponse{}, err
		}
		al = waited
	}
	// Refill in the background so the next pod finds a warm address.
	b.pools.Kick(req.Card)
	info, ok := b.pools.ENI(al.ENIID)
	if !ok {
		return api.AllocateResponse{}, fmt.Errorf("allocate card %d for %s: address %s is on ENI %s, which the ENI manager does not know",
			req.Card, pod, al.Address, al.ENIID)
	}
	resp = api.AllocateResponse{
		ENIID:     al.ENIID,
		LinkName:  info.LinkName,
		MAC:       info.MAC,
		MTU:       info.MTU,
		Exclusive: al.Exclusive,
	}
	if api.WantsIPv4(req.Family) {
		resp.Address, resp.PrefixLen, resp.Gateway, resp.SubnetCIDR = al.Address, info.SubnetCIDR.Bits(), info.Gateway, info.SubnetCIDR
	}
	if api.WantsIPv6(req.Family) {
		if !info.IPv6SubnetCIDR.IsValid() {
			return api.AllocateResponse{}, fmt.Errorf("allocate card %d for %s: ENI %s: the ENI manager knows no IPv6 CIDR of its subnet",
				req.Card, pod, al.ENIID)
		}
		resp.IPv6 = &api.IPv6Lease{Address: al.IPv6, PrefixLen: info.IPv6SubnetCIDR.Bits(), Gateway: info.IPv6Gateway,
			SubnetCIDR: info.IPv6SubnetCIDR}
	}
	log.Info("allocated", "address", al.Address, "ipv6", al.IPv6, "eni", al.ENIID, "link", info.LinkName,
		"exclusive", al.Exclusive, "again", existed, "duration", time.Since(start))
	if claimed != nil && b.cfg.Interfaces != nil {
		// Told only now that nothing can fail any more: a reservation given back was never the pod's interface.
		b.cfg.Interfaces.Attached(req.PodUID, req.Card, req.IfName)
	}
	return resp, nil
}

// allocateWait allocates, kicking the pool and waiting for a refill while it is empty, until WaitTimeout or
// ctx ends.
func (b *Backend) allocateWait(ctx context.Context, req api.AllocateRequest, existed bool, log *slog.Logger) (api.Allocation, error) {
	pod := req.Describe()
	waitCtx, cancel := context.WithTimeout(ctx, b.cfg.WaitTimeout)
	defer cancel()
	if req.Exclusive && !existed {
		// At the cap, refuse before an ENI is made for an allocation the allocator would refuse anyway.
		if b.alloc.Full() {
			return api.Allocation{}, fmt.Errorf("allocate exclusive ENI on card %d for %s: %w", req.Card, pod, api.ErrLimit)
		}
		if err := b.pools.EnsureExclusive(waitCtx, req.Card); err != nil {
			if ctx.Err() != nil {
				return api.Allocation{}, fmt.Errorf("allocate exclusive ENI on card %d for %s: %w", req.Card, pod, ctx.Err())
			}
			return api.Allocation{}, fmt.Errorf("allocate exclusive ENI on card %d for %s: %w: %w",
				req.Card, pod, api.ErrTryAgain, err)
		}
	}
	start := time.Now()
	for {
		al, err := b.alloc.Allocate(req)
		if err == nil {
			return al, nil
		}
		if !errors.Is(err, allocator.ErrPoolEmpty) {
			return api.Allocation{}, err
		}
		b.pools.Kick(req.Card)
		log.Debug("pool empty, waiting for a refill", "error", err)
		if werr := b.alloc.WaitForAddress(waitCtx, req); werr != nil {
			if ctx.Err() != nil {
				// The client went away or its own deadline passed.
				return api.Allocation{}, fmt.Errorf("%w (gave up waiting for a refill: %w)", err, ctx.Err())
			}
			last := b.pools.LastError(req.Card)
			reason := "none"
			if last != nil {
				reason = last.Error()
			}
			return api.Allocation{}, fmt.Errorf("%w: %w; waited %s for a refill; last EC2 error on card %d: %s",
				api.ErrTryAgain, err, time.Since(start).Round(time.Millisecond), req.Card, reason)
		}
	}
}

// Release gives back what (containerID, ifName) holds; releasing what is not held is not an error.
func (b *Backend) Release(_ context.Context, req api.ReleaseRequest) (api.ReleaseResponse, error) {
	if err := req.Validate(); err != nil {
		return api.ReleaseResponse{}, err
	}
	al, ok, err := b.alloc.Release(req.ContainerID, req.IfName)
	if err != nil {
		b.metrics.releases.WithLabelValues("error").Inc()
		return api.ReleaseResponse{}, err
	}
	if !ok {
		b.metrics.releases.WithLabelValues("unknown").Inc()
		b.log.Info("release: nothing allocated", "container", req.ContainerID, "ifname", req.IfName)
		return api.ReleaseResponse{}, nil
	}
	b.metrics.releases.WithLabelValues("ok").Inc()
	if b.cfg.Interfaces != nil && al.PodUID != "" {
		// The address is freed, not given back to the claim (its prepare's reservation is spent), but the
		// pod's interface of the claim device is gone: its status says so.
		b.cfg.Interfaces.Detached(al.PodUID, al.Card, al.IfName)
	}
	b.log.Info("released", "card", al.Card, "container", al.ContainerID, "ifname", al.IfName,
		"pod", al.Describe(), "address", al.Address, "ipv6", al.IPv6, "eni", al.ENIID)
	return api.ReleaseResponse{Released: true}, nil
}

// List returns every allocation, with the netns each was made for.
func (b *Backend) List(context.Context) ([]api.Allocation, error) {
	return b.alloc.List(), nil
}

// Status says whether an ADD on card could be served now.
func (b *Backend) Status(_ context.Context, card int) (api.Status, error) {
	st := api.Status{Card: card}
	switch {
	case !b.pools.Managed(card):
		st.Reason = fmt.Sprintf("card %d is not managed by this agent", card)
	case !b.pools.Ready():
		st.Reason = "agent not ready: ENIs of the managed cards are still being set up"
	default:
		stats, fam := b.alloc.Stats(card), b.pools.Family(card)
		free := (!api.WantsIPv4(fam) || stats.Warm > 0) && (!api.WantsIPv6(fam) || stats.IPv6.Prefixes > 0)
		if last := b.pools.LastError(card); !free && last != nil {
			st.Reason = fmt.Sprintf("card %d: no free address and the last refill failed: %v", card, last)
			break
		}
		st.Ready = true
	}
	return st, nil
}

// cardCheckInterval is how often Run looks at the cards' health for the Node's events.
const cardCheckInterval = 5 * time.Second

// Run starts the pod view (with a Kube client), waits until it has synced, and runs ReclaimGonePods every ReclaimInterval
// until ctx ends. It returns nil once ctx ends.
//
// With Config.Events it also looks at the cards' health every cardCheckInterval.
func (b *Backend) Run(ctx context.Context) error {
	if b.pods != nil {
		b.pods.start(ctx)
		if !b.pods.waitSynced(ctx) {
			return nil
		}
		b.log.Info("pod view of the node synced", "node", b.cfg.NodeName)
	}
	t := time.NewTicker(b.cfg.ReclaimInterval)
	defer t.Stop()
	cards := time.NewTicker(cardCheckInterval)
	defer cards.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-cards.C:
			b.checkCards(ctx)
			continue
		case <-t.C:
		}
		if _, err := b.ReclaimGonePods(ctx); err != nil && ctx.Err() == nil {
			b.log.Warn("garbage collection", "error", err)
		}
	}
}
