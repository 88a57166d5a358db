// Package agent is the node agent's backend for the plugin's socket (server.Backend): it allocates from the
// allocator's per-card pools, asks the ENI manager (enipool.Pools) to refill them, waits a bounded time when a
// pool is empty, garbage-collects the allocations of pods that are gone, and exposes Prometheus metrics and health
// endpoints.
package agent

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
	// DefaultGCGrace is how long an allocation's pod must have been seen gone before GC releases it.
	DefaultGCGrace = 60 * time.Second
	// DefaultGCInterval is how often GC looks for allocations whose pod is gone.
	DefaultGCInterval = 15 * time.Second
)

var _ server.Backend = (*Agent)(nil)

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

	// NodeName is this node's Kubernetes name, for the pod view of GC.
	NodeName string
	// Kube, when set, is how GC learns which pods live on the node (an informer on the node's pods, started
	// by Run); nil: GC goes by netns existence alone.
	Kube kubernetes.Interface
	// NetnsDirs are the directories whose netns paths GC takes as evidence (nil: netnsdir.Default).
	NetnsDirs []string
	// GCGrace: an allocation is released once its pod has been seen gone for this long, on two passes
	// at least (0: DefaultGCGrace).
	GCGrace time.Duration
	// GCInterval is the time between GC passes in Run (0: DefaultGCInterval).
	GCInterval time.Duration

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
	// when it recovers, and when GC frees an allocation; on the Pod when its allocation is refused for a
	// reason the user can act on. FailingFor is how long a card's refill must fail, with addresses still
	// free, before the Node hears of it (0: DefaultFailingFor).
	Events     record.EventRecorder
	FailingFor time.Duration

	Logger *slog.Logger
	// Now replaces time.Now for GC decisions, for tests.
	Now func() time.Time
}

// Agent serves allocations; it is safe for concurrent use.
type Agent struct {
	cfg     Config
	alloc   *allocator.Allocator
	pools   enipool.Pools
	log     *slog.Logger
	metrics *metrics
	gc      *gcState
	// pods is the node's pod view; nil without Config.Kube.
	pods   *podView
	events *events
}

// New returns an agent over a restored allocator.
func New(cfg Config) (*Agent, error) {
	switch {
	case cfg.Allocator == nil:
		return nil, errors.New("new agent: allocator required")
	case cfg.Pools == nil:
		return nil, errors.New("new agent: pools required")
	case cfg.WaitTimeout < 0:
		return nil, fmt.Errorf("new agent: wait timeout %s invalid: must be 0 or more", cfg.WaitTimeout)
	case cfg.GCGrace < 0:
		return nil, fmt.Errorf("new agent: gc grace %s invalid: must be 0 or more", cfg.GCGrace)
	case cfg.GCInterval < 0:
		return nil, fmt.Errorf("new agent: gc interval %s invalid: must be 0 or more", cfg.GCInterval)
	}
	if cfg.WaitTimeout == 0 {
		cfg.WaitTimeout = DefaultWaitTimeout
	}
	if cfg.GCGrace == 0 {
		cfg.GCGrace = DefaultGCGrace
	}
	if cfg.GCInterval == 0 {
		cfg.GCInterval = DefaultGCInterval
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
		return nil, errors.New("new agent: node name required with a Kube client")
	}
	a := &Agent{
		cfg:    cfg,
		alloc:  cfg.Allocator,
		pools:  cfg.Pools,
		log:    cfg.Logger,
		gc:     &gcState{seen: map[gcKey]gcSeen{}, unseen: map[gcKey]bool{}},
		events: newEvents(cfg.Events, cfg.NodeName),
	}
	if cfg.Kube != nil {
		a.pods = newPodView(cfg.Kube, cfg.NodeName)
	}
	a.metrics = newMetrics(a)
	return a, nil
}

func reqLogAttrs(req api.AllocateRequest) []any {
	return []any{"card", req.Card, "container", req.ContainerID, "ifname", req.IfName,
		"pod", req.Describe()}
}

// Allocate grants req an address on its card, waiting up to WaitTimeout for a refill when the pool is
// empty. Errors wrap api.ErrNotManaged, api.ErrTryAgain (with EC2's last error on the card) or the
// allocator's sentinels.
func (a *Agent) Allocate(ctx context.Context, req api.AllocateRequest) (resp api.AllocateResponse, retErr error) {
	start := time.Now()
	log := a.log.With(reqLogAttrs(req)...)
	defer func() {
		a.metrics.observeAllocate(time.Since(start), retErr)
		a.events.allocateRefused(req, retErr)
	}()
	if err := req.Validate(); err != nil {
		return api.AllocateResponse{}, err
	}
	pod := req.Describe()
	if !a.pools.Managed(req.Card) {
		return api.AllocateResponse{}, fmt.Errorf("allocate card %d for %s: %w", req.Card, pod, api.ErrNotManaged)
	}
	_, existed := a.alloc.Lookup(req.ContainerID, req.IfName)
	var al api.Allocation
	defer func() {
		if retErr != nil && al.Address.IsValid() && !existed {
			// Give back what this call took: the caller is told it failed.
			if _, _, err := a.alloc.Release(req.ContainerID, req.IfName); err != nil {
				log.Error("roll back allocation", "address", al.Address, "error", err)
			}
		}
	}()

	waited, err := a.allocateWait(ctx, req, existed, log)
	if err != nil {
		return api.AllocateResponse{}, err
	}
	al = waited
	// Refill in the background so the next pod finds a warm address.
	a.pools.Kick(req.Card)
	info, ok := a.pools.ENI(al.ENIID)
	if !ok {
		return api.AllocateResponse{}, fmt.Errorf("allocate card %d for %s: address %s is on ENI %s, which the ENI manager does not know",
			req.Card, pod, al.Address, al.ENIID)
	}
	resp = api.AllocateResponse{
		Address:    al.Address,
		PrefixLen:  info.SubnetCIDR.Bits(),
		Gateway:    info.Gateway,
		SubnetCIDR: info.SubnetCIDR,
		ENIID:      al.ENIID,
		LinkName:   info.LinkName,
		MAC:        info.MAC,
		MTU:        info.MTU,
		Exclusive:  al.Exclusive,
	}
	log.Info("allocated", "address", al.Address, "eni", al.ENIID, "link", info.LinkName,
		"exclusive", al.Exclusive, "again", existed, "duration", time.Since(start))
	return resp, nil
}

// allocateWait allocates, kicking the pool and waiting for a refill while it is empty, until WaitTimeout or
// ctx ends.
func (a *Agent) allocateWait(ctx context.Context, req api.AllocateRequest, existed bool, log *slog.Logger) (api.Allocation, error) {
	pod := req.Describe()
	waitCtx, cancel := context.WithTimeout(ctx, a.cfg.WaitTimeout)
	defer cancel()
	if req.Exclusive && !existed {
		// At the cap, refuse before an ENI is made for an allocation the allocator would refuse anyway.
		if a.alloc.Full() {
			return api.Allocation{}, fmt.Errorf("allocate exclusive ENI on card %d for %s: %w", req.Card, pod, api.ErrLimit)
		}
		if err := a.pools.EnsureExclusive(waitCtx, req.Card); err != nil {
			if ctx.Err() != nil {
				return api.Allocation{}, fmt.Errorf("allocate exclusive ENI on card %d for %s: %w", req.Card, pod, ctx.Err())
			}
			return api.Allocation{}, fmt.Errorf("allocate exclusive ENI on card %d for %s: %w: %w",
				req.Card, pod, api.ErrTryAgain, err)
		}
	}
	start := time.Now()
	for {
		al, err := a.alloc.Allocate(req)
		if err == nil {
			return al, nil
		}
		if !errors.Is(err, allocator.ErrPoolEmpty) {
			return api.Allocation{}, err
		}
		a.pools.Kick(req.Card)
		log.Debug("pool empty, waiting for a refill", "error", err)
		if werr := a.alloc.WaitForAddress(waitCtx, req.Card, req.Exclusive); werr != nil {
			if ctx.Err() != nil {
				// The client went away or its own deadline passed.
				return api.Allocation{}, fmt.Errorf("%w (gave up waiting for a refill: %w)", err, ctx.Err())
			}
			last := a.pools.LastError(req.Card)
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
func (a *Agent) Release(_ context.Context, req api.ReleaseRequest) (api.ReleaseResponse, error) {
	if err := req.Validate(); err != nil {
		return api.ReleaseResponse{}, err
	}
	al, ok, err := a.alloc.Release(req.ContainerID, req.IfName)
	if err != nil {
		a.metrics.releases.WithLabelValues("error").Inc()
		return api.ReleaseResponse{}, err
	}
	if !ok {
		a.metrics.releases.WithLabelValues("unknown").Inc()
		a.log.Info("release: nothing allocated", "container", req.ContainerID, "ifname", req.IfName)
		return api.ReleaseResponse{}, nil
	}
	a.metrics.releases.WithLabelValues("ok").Inc()
	a.log.Info("released", "card", al.Card, "container", al.ContainerID, "ifname", al.IfName,
		"pod", al.Describe(), "address", al.Address, "eni", al.ENIID)
	return api.ReleaseResponse{Released: true}, nil
}

// List returns every allocation, with the netns each was made for.
func (a *Agent) List(context.Context) ([]api.Allocation, error) {
	return a.alloc.List(), nil
}

// Status says whether an ADD on card could be served now.
func (a *Agent) Status(_ context.Context, card int) (api.Status, error) {
	st := api.Status{Card: card}
	switch {
	case !a.pools.Managed(card):
		st.Reason = fmt.Sprintf("card %d is not managed by this agent", card)
	case !a.pools.Ready():
		st.Reason = "agent not ready: ENIs of the managed cards are still being set up"
	default:
		stats := a.alloc.Stats(card)
		if last := a.pools.LastError(card); stats.Warm == 0 && last != nil {
			st.Reason = fmt.Sprintf("card %d: no free address and the last refill failed: %v", card, last)
			break
		}
		st.Ready = true
	}
	return st, nil
}

// cardCheckInterval is how often Run looks at the cards' health for the Node's events.
const cardCheckInterval = 5 * time.Second

// Run starts the pod view (with a Kube client), waits until it has synced, and runs GC every GCInterval
// until ctx ends. It returns nil once ctx ends.
//
// With Config.Events it also looks at the cards' health every cardCheckInterval.
func (a *Agent) Run(ctx context.Context) error {
	if a.pods != nil {
		a.pods.start(ctx)
		if !a.pods.waitSynced(ctx) {
			return nil
		}
		a.log.Info("pod view of the node synced", "node", a.cfg.NodeName)
	}
	t := time.NewTicker(a.cfg.GCInterval)
	defer t.Stop()
	cards := time.NewTicker(cardCheckInterval)
	defer cards.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-cards.C:
			a.checkCards(ctx)
			continue
		case <-t.C:
		}
		if _, err := a.CollectGarbage(ctx); err != nil && ctx.Err() == nil {
			a.log.Warn("garbage collection", "error", err)
		}
	}
}
