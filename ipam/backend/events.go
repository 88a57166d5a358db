package backend

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/aws/smithy-go"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/record"

	"github.com/multinic/multinic/ipam/allocator"
	"github.com/multinic/multinic/ipam/api"
	"github.com/multinic/multinic/ipam/enipool"
)

// Reasons of the Events the agent records (Kubernetes wants them CamelCase and stable).
const (
	// On the Node, when a card stops being able to serve new pods, by cause.
	EventSubnetExhausted = "SubnetExhausted"
	EventENILimit        = "ENILimitReached"
	EventEC2Denied       = "EC2Denied"
	EventEC2Throttled    = "EC2Throttled"
	EventEC2Failing      = "EC2Failing"
	// On the Node when the card serves again; and when reclaim frees an allocation.
	EventCardRecovered   = "CardRecovered"
	EventAddressReleased = "AddressReleased"
	// On the Pod (and, for a card not managed, the Node too) when its allocation is refused.
	EventCardTaken      = "CardTaken"
	EventInterfaceTaken = "InterfaceTaken"
	EventCardNotManaged = "CardNotManaged"
	EventNoAddress      = "NoAddress"
	EventCardNotClaimed = "CardNotClaimed"
)

// DefaultFailingFor is how long a card's refill must keep failing, with addresses still free, before the
// Node is told the card is in trouble.
const DefaultFailingFor = 2 * time.Minute

// EventComponent is the source of the agent's Events (kubectl's "From" column).
const EventComponent = "multinic-agent"

// NewEventRecorder returns a recorder that writes Events through kube, with client-go's aggregation of
// repeats and its per-object rate limit, and a stop func that flushes and ends it.
func NewEventRecorder(kube kubernetes.Interface, nodeName string) (record.EventRecorder, func()) {
	b := record.NewBroadcaster()
	b.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: kube.CoreV1().Events("")})
	rec := b.NewRecorder(scheme.Scheme, corev1.EventSource{Component: EventComponent, Host: nodeName})
	return rec, b.Shutdown
}

// events records the agent's Kubernetes Events. A nil recorder records nothing. The recorder (client-go's
// tools/record) aggregates repeats and rate limits per object, so a flapping card cannot flood the API.
type events struct {
	rec  record.EventRecorder
	node *corev1.ObjectReference

	mu    sync.Mutex
	cards map[int]*cardHealth
}

// cardHealth is what the watcher remembers of a card between looks.
type cardHealth struct {
	failingSince time.Time // zero while the last refill worked
	down         bool      // a "cannot serve" event was recorded and no recovery since
}

func newEvents(rec record.EventRecorder, nodeName string) *events {
	// The kubelet names its Node this way (UID = node name); `kubectl describe node` finds both forms.
	node := &corev1.ObjectReference{Kind: "Node", Name: nodeName, UID: types.UID(nodeName)}
	return &events{rec: rec, node: node, cards: map[int]*cardHealth{}}
}

func podRef(ns, name, uid string) *corev1.ObjectReference {
	return &corev1.ObjectReference{Kind: "Pod", APIVersion: "v1", Namespace: ns, Name: name, UID: types.UID(uid)}
}

// allocateRefused tells the pod why its allocation was refused, when the reason is one the user can act
// on: the pod already has this card, the card is not served on this node, or EC2 could not give an address
// (with EC2's code). Nothing is recorded for requests without a pod name.
func (e *events) allocateRefused(req api.AllocateRequest, err error) {
	if e.rec == nil || err == nil || req.PodName == "" {
		return
	}
	pod := podRef(req.PodNamespace, req.PodName, req.PodUID)
	var taken *allocator.CardTakenError
	switch {
	case errors.As(err, &taken):
		e.rec.Eventf(pod, corev1.EventTypeWarning, EventCardTaken,
			"interface %s refused: %v. List each card once in the pod's networks", req.IfName, taken)
	case errors.Is(err, api.ErrInterfaceTaken):
		e.rec.Eventf(pod, corev1.EventTypeWarning, EventInterfaceTaken, "interface %s on card %d refused: %v", req.IfName, req.Card, err)
	case errors.Is(err, api.ErrNotManaged):
		e.rec.Eventf(pod, corev1.EventTypeWarning, EventCardNotManaged,
			"interface %s: card %d is not served on node %s: schedule the pod with the resource multinic.io/card-%d, or add the card to the agent's --managed-cards",
			req.IfName, req.Card, e.node.Name, req.Card)
		e.rec.Eventf(e.node, corev1.EventTypeWarning, EventCardNotManaged,
			"pod %s asked for card %d, which this node's agent does not serve", req.Describe(), req.Card)
	case errors.Is(err, api.ErrNotClaimed):
		e.rec.Eventf(pod, corev1.EventTypeWarning, EventCardNotClaimed, "interface %s refused: %v", req.IfName, err)
	case errors.Is(err, api.ErrTryAgain):
		e.rec.Eventf(pod, corev1.EventTypeWarning, EventNoAddress,
			"interface %s: no address on card %d yet, the runtime will try again: %v", req.IfName, req.Card, err)
	}
}

// reclaimed tells the Node that reclaim freed an allocation, and why.
func (e *events) reclaimed(al api.Allocation, reason string) {
	if e.rec == nil {
		return
	}
	e.rec.Eventf(e.node, corev1.EventTypeNormal, EventAddressReleased,
		"released %s (card %d, %s) of pod %s, interface %s: %s", al.Address, al.Card, al.ENIID,
		al.Describe(), al.IfName, reason)
}

// cardDownReason names why a card cannot serve, from its last error: EC2's code when there is one.
func cardDownReason(err error) string {
	var ae smithy.APIError
	code := ""
	if errors.As(err, &ae) {
		code = ae.ErrorCode()
	}
	switch {
	case code == "InsufficientFreeAddressesInSubnet":
		return EventSubnetExhausted
	case errors.Is(err, enipool.ErrCardFull), code == "AttachmentLimitExceeded", code == "PrivateIpAddressLimitExceeded",
		code == "NetworkInterfaceLimitExceeded":
		return EventENILimit
	case code == "UnauthorizedOperation", code == "OperationNotPermitted", code == "AuthFailure":
		return EventEC2Denied
	case code == "RequestLimitExceeded", code == "Throttling", code == "ThrottlingException", code == "RequestThrottled":
		return EventEC2Throttled
	}
	return EventEC2Failing
}

// checkCards looks at every managed card once and records a Node event when one stops being able to serve
// new pods (its pool is empty and its refill fails, or its refill has failed for failingFor), and when it
// serves again.
func (b *Backend) checkCards(ctx context.Context) {
	e := b.events
	if e.rec == nil || b.cfg.Cards == nil || !b.pools.Ready() {
		return
	}
	now := b.cfg.Now()
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, card := range b.cfg.Cards() {
		h := e.cards[card]
		if h == nil {
			h = &cardHealth{}
			e.cards[card] = h
		}
		last := b.pools.LastError(card)
		switch {
		case last == nil:
			h.failingSince = time.Time{}
		case h.failingSince.IsZero():
			h.failingSince = now
		}
		st, _ := b.Status(ctx, card)
		down := last != nil && (!st.Ready || now.Sub(h.failingSince) >= b.cfg.FailingFor)
		switch {
		case down && !h.down:
			msg := fmt.Sprintf("card %d cannot serve new pods: %v", card, last)
			if st.Ready {
				msg = fmt.Sprintf("card %d: its pool refill has failed for %s; new pods will fail once its free addresses are gone: %v",
					card, now.Sub(h.failingSince).Round(time.Second), last)
			}
			e.rec.Event(e.node, corev1.EventTypeWarning, cardDownReason(last), msg)
		case !down && h.down && st.Ready:
			e.rec.Eventf(e.node, corev1.EventTypeNormal, EventCardRecovered, "card %d serves new pods again", card)
		default:
			continue
		}
		h.down = down
	}
}
