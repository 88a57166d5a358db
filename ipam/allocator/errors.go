package allocator

import (
	"errors"
	"fmt"
	"time"

	"github.com/multinic/multinic/ipam/api"
)

// The allocator's errors wrap api's sentinels, whose one table gives each its wire and CNI code:
// api.ErrInvalid (a malformed request or argument), api.ErrCardTaken (the pod already holds an address on the
// card under another (container, interface); CardTakenError), api.ErrInterfaceTaken (the (container,
// interface) already holds an allocation that differs from the request: another card, pod or mode) and
// api.ErrLimit (the node already holds the most allocations WithMaxAllocations allows). Its own sentinels:
var (
	// ErrPoolEmpty: no address (or exclusive ENI) on the card is free and rested (PoolEmptyError). The agent
	// waits for a refill on it; it is an api.ErrTryAgain.
	ErrPoolEmpty = fmt.Errorf("no free address: %w", api.ErrTryAgain)
	// ErrConflict: an address or ENI is already known in another role or place (an internal error).
	ErrConflict = errors.New("conflicts with known state")
)

// CardTakenError names the pod, the card and the interface that already holds it.
type CardTakenError struct {
	Pod      string
	Card     int
	Existing api.Allocation
}

func (e *CardTakenError) Error() string {
	return fmt.Sprintf("pod %s already holds %s on card %d through container %s interface %s: one address per pod per card",
		e.Pod, e.Existing.Address, e.Card, e.Existing.ContainerID, e.Existing.IfName)
}

// Unwrap makes errors.Is(err, api.ErrCardTaken) true.
func (e *CardTakenError) Unwrap() error { return api.ErrCardTaken }

// PoolEmptyError says which card ran dry and when the next resting address becomes usable.
type PoolEmptyError struct {
	Card      int
	Exclusive bool
	// Family is the request's (api.FamilyIPv4, ...).
	Family string
	// Cooling counts free addresses (or ENIs) still resting; NextReady is when the first of them is usable
	// again (zero when none rests).
	Cooling   int
	NextReady time.Time
}

func (e *PoolEmptyError) Error() string {
	what := "address"
	if e.Exclusive {
		what = "exclusive ENI"
	}
	switch {
	case e.Exclusive:
	case e.Family == api.FamilyIPv6:
		what = "IPv6 address (no IPv6 prefix on the card yet)"
	case e.Family == api.FamilyDual:
		what = "IPv4 address on an ENI with an IPv6 prefix"
	}
	msg := fmt.Sprintf("no free %s on card %d", what, e.Card)
	if e.Cooling > 0 {
		msg += fmt.Sprintf(" (%d resting, first usable at %s)", e.Cooling, e.NextReady.Format(time.RFC3339))
	}
	return msg
}

// Unwrap makes errors.Is(err, ErrPoolEmpty) (and so api.ErrTryAgain) true.
func (e *PoolEmptyError) Unwrap() error { return ErrPoolEmpty }
