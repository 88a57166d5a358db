package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"

	"github.com/multinic/multinic/ipam/allocator"
)

// GC reasons, also the values of the reason label of the GC metric.
const (
	reasonPodGone   = "pod-gone"
	reasonNetnsGone = "netns-gone"
)

// gcKey names one allocation exactly: a released and re-made allocation of the same pair is another one.
type gcKey struct {
	containerID, ifName string
	address             netip.Addr
	allocatedAt         time.Time
}

func keyFor(al allocator.Allocation) gcKey {
	return gcKey{al.ContainerID, al.IfName, al.Address, al.AllocatedAt}
}

type gcSeen struct {
	first  time.Time
	passes int
	reason string
}

type gcState struct {
	mu   sync.Mutex // one pass at a time
	seen map[gcKey]gcSeen
}

// podKey is a pod as the API server names it.
type podKey struct{ namespace, name string }

// CollectGarbage runs one GC pass: it releases the allocations whose pod has been seen gone on two passes
// at least, GCGrace apart or more. With a Kube client a pod is gone when the API server's pod list for
// this node no longer has it (by namespace/name, and UID when known) or shows it finished; allocations
// without a pod name, and every allocation without a Kube client, go by their netns path: gone once the
// path no longer exists. An allocation without a recorded netns is never collected that way. When the pod
// list fails, nothing is released in this pass. It returns how many allocations it released.
func (a *Agent) CollectGarbage(ctx context.Context) (int, error) {
	a.gc.mu.Lock()
	defer a.gc.mu.Unlock()
	now := a.cfg.Now()
	als := a.alloc.List()

	var pods map[podKey]string // name -> UID of the live pods on the node
	if a.cfg.Kube != nil {
		var err error
		if pods, err = a.livePods(ctx); err != nil {
			return 0, err
		}
	}
	next := make(map[gcKey]gcSeen)
	due := make(map[gcKey]string)
	for _, al := range als {
		reason := a.gone(al, pods)
		if reason == "" {
			continue
		}
		k := keyFor(al)
		s, ok := a.gc.seen[k]
		if !ok {
			s = gcSeen{first: now}
			a.log.Info("allocation's pod looks gone, releasing after the grace period", "card", al.Card,
				"container", al.ContainerID, "ifname", al.IfName, "pod", podOf(al.PodNamespace, al.PodName, al.PodUID),
				"address", al.Address, "reason", reason, "grace", a.cfg.GCGrace)
		}
		s.passes++
		s.reason = reason
		next[k] = s
		if s.passes >= 2 && now.Sub(s.first) >= a.cfg.GCGrace {
			due[k] = reason
		}
	}
	a.gc.seen = next

	var released []allocator.Allocation
	if len(due) > 0 {
		var err error
		released, err = a.alloc.ReleaseIf(func(al allocator.Allocation) bool {
			_, ok := due[keyFor(al)]
			return ok
		})
		if err != nil {
			return 0, fmt.Errorf("collect garbage: %w", err)
		}
	}
	for _, al := range released {
		reason := due[keyFor(al)]
		delete(a.gc.seen, keyFor(al))
		a.metrics.gcReleases.WithLabelValues(reason).Inc()
		a.log.Info("released allocation of a gone pod", "card", al.Card, "container", al.ContainerID,
			"ifname", al.IfName, "pod", podOf(al.PodNamespace, al.PodName, al.PodUID), "address", al.Address,
			"eni", al.ENIID, "reason", reason)
	}
	return len(released), nil
}

// gone returns why al's pod is gone, or "" when it is not (or cannot be told).
func (a *Agent) gone(al allocator.Allocation, pods map[podKey]string) string {
	if pods != nil && al.PodName != "" {
		uid, ok := pods[podKey{al.PodNamespace, al.PodName}]
		if !ok || (al.PodUID != "" && uid != al.PodUID) {
			return reasonPodGone
		}
		return ""
	}
	if al.Netns == "" {
		return ""
	}
	if _, err := os.Lstat(al.Netns); errors.Is(err, fs.ErrNotExist) {
		return reasonNetnsGone
	}
	return ""
}

// livePods lists the pods bound to this node that have not finished, by name, with their UIDs.
func (a *Agent) livePods(ctx context.Context) (map[podKey]string, error) {
	sel := fields.OneTermEqualSelector("spec.nodeName", a.cfg.NodeName).String()
	pods := map[podKey]string{}
	opts := metav1.ListOptions{FieldSelector: sel, Limit: 500}
	for {
		list, err := a.cfg.Kube.CoreV1().Pods(metav1.NamespaceAll).List(ctx, opts)
		if err != nil {
			return nil, fmt.Errorf("list pods on node %s: %w", a.cfg.NodeName, err)
		}
		for _, p := range list.Items {
			// The selector is the server's job; checking again costs nothing and keeps a misbehaving
			// server (or a fake) from keeping another node's pod alive here.
			if p.Spec.NodeName != a.cfg.NodeName {
				continue
			}
			if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
				continue
			}
			pods[podKey{p.Namespace, p.Name}] = string(p.UID)
		}
		if list.Continue == "" {
			return pods, nil
		}
		opts.Continue = list.Continue
	}
}
