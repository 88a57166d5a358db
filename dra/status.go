package dra

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"time"

	resourceapi "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	resourceapply "k8s.io/client-go/applyconfigurations/resource/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/workqueue"

	"github.com/multinic/multinic/ipam/api"
)

// Statuses is the one home of this driver's entries in the claims' status.devices: per claim prepared here,
// each device's addresses and MAC (from prepare) and the pod interface an attachment made of it
// (interfaceName: a Multus ADD that took the claim's reservation over, or the NRI plugin's card<N>).
// Server-side apply with field manager DriverName owns the whole set of our entries, so every write sends
// all of a claim's entries; other drivers' entries are never touched.
//
// Prepare and unprepare write at once (the kubelet waits for them anyway). Attached and Detached only note
// the name and queue the claim for Run, one goroutine that writes each queued claim once however many of
// its devices changed, and retries it with backoff while the API server fails (client-go's rate-limited
// workqueue: it coalesces a claim queued again before it is written): an ADD or a RunPodSandbox never
// waits on the API server for it and never fails because of it. Make it with NewStatuses.
//
// What it knows is in memory: after an agent restart, a claim prepared before it gets no interfaceName
// until it is prepared again (its addresses and MAC, written at prepare, stay).
type Statuses struct {
	kube kubernetes.Interface
	log  *slog.Logger
	// queue holds the claims whose status Run writes next; a failed write comes back after a backoff.
	queue workqueue.TypedRateLimitingInterface[types.UID]

	// applyMu makes writes one at a time, each with the entries as they are when it starts, so the last
	// write carries the newest entries.
	applyMu sync.Mutex

	mu     sync.Mutex // guards claims; never held across an API call
	claims map[types.UID]*claimStatus
}

// claimStatus is what Statuses keeps of one prepared claim.
type claimStatus struct {
	namespace, name string
	pods            []types.UID // the pods the claim was reserved for when it was prepared
	devices         []preparedDevice
}

// preparedDevice is one prepared device of a claim: the allocation's result, what the allocator answered,
// and the pod's interface of it ("" none yet).
type preparedDevice struct {
	result resourceapi.DeviceRequestAllocationResult
	card   int
	lease  api.AllocateResponse
	ifName string
}

// NewStatuses writes the claims' status through kube (nil: writes nothing).
func NewStatuses(kube kubernetes.Interface, logger *slog.Logger) *Statuses {
	return newStatuses(kube, logger, 100*time.Millisecond)
}

// newStatuses retries a failed write after minBackoff, doubling per failure of that claim up to 30 s.
func newStatuses(kube kubernetes.Interface, logger *slog.Logger, minBackoff time.Duration) *Statuses {
	limiter := workqueue.NewTypedItemExponentialFailureRateLimiter[types.UID](minBackoff, 30*time.Second)
	return &Statuses{kube: kube, log: logger, claims: map[types.UID]*claimStatus{},
		queue: workqueue.NewTypedRateLimitingQueue(limiter)}
}

// Prepared records claim's prepared devices and writes its status now. An interface noted before for the same
// device (a second prepare) is kept. A failed write is queued for Run and returned, for the log.
func (s *Statuses) Prepared(ctx context.Context, claim *resourceapi.ResourceClaim, devices []preparedDevice) error {
	c := &claimStatus{namespace: claim.Namespace, name: claim.Name, devices: devices}
	for _, r := range claim.Status.ReservedFor {
		if r.Resource == "pods" {
			c.pods = append(c.pods, r.UID)
		}
	}
	s.mu.Lock()
	if old, ok := s.claims[claim.UID]; ok {
		for i, d := range c.devices {
			if j := slices.IndexFunc(old.devices, func(o preparedDevice) bool { return o.result.Device == d.result.Device }); j >= 0 {
				c.devices[i].ifName = old.devices[j].ifName
			}
		}
	}
	s.claims[claim.UID] = c
	s.mu.Unlock()
	if err := s.apply(ctx, claim.UID); err != nil {
		s.queue.Add(claim.UID)
		return err
	}
	return nil
}

// Unprepared forgets the claim and removes all of our entries from its status now.
func (s *Statuses) Unprepared(ctx context.Context, namespace, name string, uid types.UID) error {
	s.mu.Lock()
	delete(s.claims, uid) // a queued write of it then writes nothing
	s.mu.Unlock()
	s.applyMu.Lock()
	defer s.applyMu.Unlock()
	return s.write(ctx, namespace, name, nil)
}

// Attached notes that the claim device of pod (UID) on card is the pod's interface ifName, and queues the
// claim's status. A pod with no such device prepared here (or prepared before an agent restart) is skipped.
func (s *Statuses) Attached(pod string, card int, ifName string) {
	s.setInterface(types.UID(pod), card, "", ifName)
}

// Detached notes that the pod's interface ifName of its claim device on card is gone (only if it is the name
// noted), and queues the claim's status.
func (s *Statuses) Detached(pod string, card int, ifName string) {
	s.setInterface(types.UID(pod), card, ifName, "")
}

// setInterface sets the interface of pod's claim device on card to ifName; was, when set, must be the name
// noted now.
func (s *Statuses) setInterface(pod types.UID, card int, was, ifName string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for uid, c := range s.claims {
		if !slices.Contains(c.pods, pod) {
			continue
		}
		for i := range c.devices {
			d := &c.devices[i]
			if d.card != card || (was != "" && d.ifName != was) || d.ifName == ifName {
				continue
			}
			d.ifName = ifName
			s.log.Info("claim device interface", "claim", c.namespace+"/"+c.name, "device", d.result.Device, "pod", pod, "ifname", ifName)
			s.queue.Add(uid)
			return
		}
	}
}

// Run writes the queued claims until ctx ends, one at a time; a failed one again after its backoff.
func (s *Statuses) Run(ctx context.Context) {
	go func() {
		<-ctx.Done()
		s.queue.ShutDown()
	}()
	for {
		uid, quit := s.queue.Get()
		if quit {
			return
		}
		if err := s.apply(ctx, uid); err != nil {
			s.log.Warn("write the claim's device status; will retry", "uid", uid, "failures", s.queue.NumRequeues(uid)+1, "error", err)
			s.queue.AddRateLimited(uid)
		} else {
			s.queue.Forget(uid)
		}
		s.queue.Done(uid)
	}
}

// apply writes the claim's entries as they are now; a claim no longer known (unprepared) is not written.
func (s *Statuses) apply(ctx context.Context, uid types.UID) error {
	s.applyMu.Lock()
	defer s.applyMu.Unlock()
	s.mu.Lock()
	c, ok := s.claims[uid]
	var entries []*resourceapply.AllocatedDeviceStatusApplyConfiguration
	if ok {
		for _, d := range c.devices {
			entries = append(entries, deviceStatus(d))
		}
	}
	s.mu.Unlock()
	if !ok {
		return nil
	}
	return s.write(ctx, c.namespace, c.name, entries)
}

// write makes this driver's entries of the claim's status.devices exactly devices (none: all of ours go), by
// server-side apply with the driver's field manager, so other drivers' entries are never touched. A claim
// that is gone needs nothing.
func (s *Statuses) write(ctx context.Context, namespace, name string, devices []*resourceapply.AllocatedDeviceStatusApplyConfiguration) error {
	if s.kube == nil {
		return nil
	}
	ac := resourceapply.ResourceClaim(name, namespace).WithStatus(resourceapply.ResourceClaimStatus().WithDevices(devices...))
	_, err := s.kube.ResourceV1().ResourceClaims(namespace).ApplyStatus(ctx, ac, metav1.ApplyOptions{FieldManager: DriverName, Force: true})
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}
