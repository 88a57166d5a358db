package backend

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/multinic/multinic/internal/netnsdir"
	"github.com/multinic/multinic/ipam/api"
)

// Reclaim reasons, also the values of the reason label of multinic_gc_releases_total.
const (
	reasonPodGone   = "pod-gone"
	reasonNetnsGone = "netns-gone"
)

// Reasons a reclaim pass freed nothing, the values of the reason label of multinic_gc_refusals_total.
const (
	// refusalAllAllocations: the pass would have freed every allocation on the node.
	refusalAllAllocations = "all-allocations"
	// refusalNotSynced: the pod view had not listed the node's pods yet.
	refusalNotSynced = "pod-view-not-synced"
)

// reclaimKey names one allocation exactly: a released and re-made allocation of the same pair is another one.
type reclaimKey struct {
	containerID, ifName string
	address             netip.Addr
	allocatedAt         time.Time
}

func keyFor(al api.Allocation) reclaimKey {
	return reclaimKey{al.ContainerID, al.IfName, al.Address, al.AllocatedAt}
}

type reclaimSeen struct {
	first  time.Time
	passes int
	reason string
}

type reclaimState struct {
	mu   sync.Mutex // one pass at a time
	seen map[reclaimKey]reclaimSeen
	// unseen are the allocations whose netns path is outside NetnsDirs, logged once each.
	unseen map[reclaimKey]bool
	// refusal is why the last pass freed nothing though it had something to free; "" when it did not refuse.
	refusal atomic.Pointer[string]
}

// podKey is a pod as the API server names it.
type podKey struct{ namespace, name string }

// ReclaimGonePods runs one reclaim pass (the agent's GC, as its flags and metrics call it): it releases the
// allocations whose pod has been seen gone on two passes at least, ReclaimGrace apart or more. When in doubt
// it keeps:
//   - With a Kube client a pod is gone when the synced pod view of this node no longer has it (by
//     namespace/name, and UID, a mirror pod's config hash standing for the static pod's UID) or shows it
//     finished, AND, where a netns path was recorded, that netns is gone too. Until the view has synced,
//     nothing is released.
//   - Allocations without a pod name, and every allocation without a Kube client, go by their netns path
//     alone: gone once it no longer exists. An allocation without a recorded netns is never collected that way.
//   - A netns path is evidence only in one of NetnsDirs, and only while that directory is there.
//   - With a Kube client, a pass that would release every allocation on the node releases nothing: that is
//     what a wrong node name or an API server answering an empty list look like. It says so in the log, in
//     multinic_gc_refusals_total and on /readyz.
//
// It returns how many allocations it released.
func (b *Backend) ReclaimGonePods(ctx context.Context) (int, error) {
	b.reclaim.mu.Lock()
	defer b.reclaim.mu.Unlock()
	now := b.cfg.Now()
	als := b.alloc.List()

	var pods map[podKey][]string // namespace/name -> the UIDs of the live pods on the node
	if b.pods != nil {
		var err error
		if pods, err = b.pods.livePods(); err != nil {
			b.metrics.reclaimRefusals.WithLabelValues(refusalNotSynced).Inc()
			return 0, fmt.Errorf("reclaim allocations of gone pods: %w", err)
		}
	}
	next := make(map[reclaimKey]reclaimSeen)
	unseen := make(map[reclaimKey]bool)
	due := make(map[reclaimKey]string)
	for _, al := range als {
		k := keyFor(al)
		reason, visible := b.gone(al, pods)
		if !visible {
			unseen[k] = true
			if !b.reclaim.unseen[k] {
				b.log.Warn("allocation's netns is outside the netns directories the agent sees: GC keeps it",
					"card", al.Card, "container", al.ContainerID, "ifname", al.IfName, "netns", al.Netns,
					"netnsDirs", b.cfg.NetnsDirs)
			}
		}
		if reason == "" {
			continue
		}
		s, ok := b.reclaim.seen[k]
		if !ok {
			s = reclaimSeen{first: now}
			b.log.Info("allocation's pod looks gone, releasing after the grace period", "card", al.Card,
				"container", al.ContainerID, "ifname", al.IfName, "pod", al.Describe(),
				"address", al.Address, "reason", reason, "grace", b.cfg.ReclaimGrace)
		}
		s.passes++
		s.reason = reason
		next[k] = s
		if s.passes >= 2 && now.Sub(s.first) >= b.cfg.ReclaimGrace {
			due[k] = reason
		}
	}
	b.reclaim.seen = next
	b.reclaim.unseen = unseen

	if pods != nil && len(due) > 0 && len(due) == len(als) {
		why := fmt.Sprintf("GC refused to free all %d allocations of node %q: the API server lists %d live pods "+
			"on it and none holds one; check --node-name and the API server", len(als), b.cfg.NodeName, len(pods))
		b.reclaim.refusal.Store(&why)
		b.metrics.reclaimRefusals.WithLabelValues(refusalAllAllocations).Inc()
		b.log.Error(why, "allocations", len(als), "livePods", len(pods))
		return 0, nil
	}
	b.reclaim.refusal.Store(nil)

	var released []api.Allocation
	if len(due) > 0 {
		var err error
		released, err = b.alloc.ReleaseIf(func(al api.Allocation) bool {
			_, ok := due[keyFor(al)]
			return ok
		})
		if err != nil {
			return 0, fmt.Errorf("reclaim allocations of gone pods: %w", err)
		}
	}
	for _, al := range released {
		reason := due[keyFor(al)]
		delete(b.reclaim.seen, keyFor(al))
		b.metrics.reclaimReleases.WithLabelValues(reason).Inc()
		b.events.reclaimed(al, reason)
		b.log.Info("released allocation of a gone pod", "card", al.Card, "container", al.ContainerID,
			"ifname", al.IfName, "pod", al.Describe(), "address", al.Address,
			"eni", al.ENIID, "reason", reason)
	}
	return len(released), nil
}

// reclaimRefusal is why the last reclaim pass refused to free anything, or "".
func (b *Backend) reclaimRefusal() string {
	if p := b.reclaim.refusal.Load(); p != nil {
		return *p
	}
	return ""
}

// gone returns why al's pod is gone, or "" when it is not (or cannot be told); visible is false when al's
// netns path was consulted but lies outside NetnsDirs.
func (b *Backend) gone(al api.Allocation, pods map[podKey][]string) (reason string, visible bool) {
	if pods != nil && al.PodName != "" {
		uids, ok := pods[podKey{al.PodNamespace, al.PodName}]
		if ok && (al.PodUID == "" || slices.Contains(uids, al.PodUID)) {
			return "", true
		}
		if al.Netns == "" {
			return reasonPodGone, true
		}
		// The second signal: the pod's netns must be gone too.
		gone, visible := b.netnsGone(al.Netns)
		if gone {
			return reasonPodGone, true
		}
		return "", visible
	}
	if al.Netns == "" {
		return "", true
	}
	gone, visible := b.netnsGone(al.Netns)
	if gone {
		return reasonNetnsGone, true
	}
	return "", visible
}

// netnsGone says whether the netns at path is positively gone (package netnsdir): visible is false for a
// path outside NetnsDirs.
func (b *Backend) netnsGone(path string) (gone, visible bool) {
	return netnsdir.Gone(b.cfg.NetnsDirs, path)
}
