package allocator

import (
	"errors"
	"fmt"
	"time"
)

// Sentinel errors, matched with errors.Is; the typed errors below carry the details.
var (
	// ErrCardTaken: the pod already holds an address on the card under another (container, interface).
	ErrCardTaken = errors.New("card already taken by this pod")
	// ErrPoolEmpty: no address (or exclusive ENI) on the card is free and rested. Try again after a refill.
	ErrPoolEmpty = errors.New("no free address")
	// ErrInterfaceTaken: the (container, interface) already holds an allocation that differs from the
	// request (another card, pod or mode).
	ErrInterfaceTaken = errors.New("interface already allocated differently")
	// ErrInvalid: a malformed request or argument.
	ErrInvalid = errors.New("invalid argument")
	// ErrLimit: the node already holds the most allocations WithMaxAllocations allows.
	ErrLimit = errors.New("allocation limit reached")
	// ErrConflict: an address or ENI is already known in another role or place.
	ErrConflict = errors.New("conflicts with known state")
)

// CardTakenError names the pod, the card and the interface that already holds it.
type CardTakenError struct {
	Pod      string
	Card     int
	Existing Allocation
}

func (e *CardTakenError) Error() string {
	return fmt.Sprintf("pod %s already holds %s on card %d through container %s interface %s: one address per pod per card",
		e.Pod, e.Existing.Address, e.Card, e.Existing.ContainerID, e.Existing.IfName)
}

// Is makes errors.Is(err, ErrCardTaken) true.
func (e *CardTakenError) Is(target error) bool { return target == ErrCardTaken }

// PoolEmptyError says which card ran dry and when the next resting address becomes usable.
type PoolEmptyError struct {
	Card      int
	Exclusive bool
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
	msg := fmt.Sprintf("no free %s on card %d", what, e.Card)
	if e.Cooling > 0 {
		msg += fmt.Sprintf(" (%d resting, first usable at %s)", e.Cooling, e.NextReady.Format(time.RFC3339))
	}
	return msg
}

// Is makes errors.Is(err, ErrPoolEmpty) true.
func (e *PoolEmptyError) Is(target error) bool { return target == ErrPoolEmpty }
