package api

import (
	"errors"

	"github.com/containernetworking/cni/pkg/types"
)

// Code is the stable, machine-readable kind of an error on the wire.
type Code string

// The codes. Clients must treat an unknown code (from a newer agent) like CodeInternal.
const (
	// CodeInvalid: a malformed request: bad JSON, a missing or bad value, an unknown endpoint (CNI code 7).
	CodeInvalid Code = "invalid"
	// CodeCardTaken: the pod already holds an address on the card under another (container, interface).
	CodeCardTaken Code = "card-taken"
	// CodeInterfaceTaken: the (container, interface) already holds a different allocation.
	CodeInterfaceTaken Code = "interface-taken"
	// CodeTryAgain: nothing free right now (empty pool, EC2 refusing or throttling); the message carries
	// EC2's own error code when there is one (CNI code 11).
	CodeTryAgain Code = "try-again"
	// CodeNotManaged: the agent does not manage this card.
	CodeNotManaged Code = "not-managed"
	// CodeUnavailable: the agent is up but cannot serve yet (starting, restoring state, shutting down).
	CodeUnavailable Code = "unavailable"
	// CodeLimit: the node's cap on allocations (the agent's --max-allocations) is reached.
	CodeLimit Code = "limit"
	// CodeNotClaimed: with DRA on the node (agent --dra), no ResourceClaim of the pod holds the card in the
	// attachment's mode: the scheduler did not give the pod this card.
	CodeNotClaimed Code = "not-claimed"
	// CodeForbidden: the peer on the socket is not root (SO_PEERCRED).
	CodeForbidden Code = "forbidden"
	// CodeInternal: anything else.
	CodeInternal Code = "internal"
)

// Sentinels, matched with errors.Is against the *Error values the client returns. ErrUnavailable also matches
// the client's errors when the agent cannot be reached at all. The agent's packages return these same
// sentinels (wrapped with what was being done), so that codes has the one mapping of each.
var (
	ErrInvalid        = errors.New("invalid request")
	ErrCardTaken      = errors.New("card already taken by this pod")
	ErrInterfaceTaken = errors.New("interface already allocated differently")
	ErrTryAgain       = errors.New("try again later")
	ErrNotManaged     = errors.New("card not managed by this agent")
	ErrUnavailable    = errors.New("agent unavailable")
	ErrLimit          = errors.New("allocation limit of the node reached")
	ErrNotClaimed     = errors.New("card not in a resource claim of the pod")
	ErrForbidden      = errors.New("peer not allowed on the agent's socket")
	ErrInternal       = errors.New("agent internal error")
)

// CNI error codes of the plugin's own (the CNI spec leaves 100 and up to plugins).
const (
	// CNICardTaken: the pod already holds an address on this card under another interface. A pod gets one
	// address per card; attach each card once.
	CNICardTaken uint = 100
	// CNIInterfaceTaken: this (container, interface) already holds a different allocation, e.g. the same
	// ifname was attached to two cards.
	CNIInterfaceTaken uint = 101
	// CNICardNotManaged: the agent on this node does not manage the card (no such card on the instance type,
	// or excluded by the agent's configuration).
	CNICardNotManaged uint = 102
	// CNIAllocationLimit: the node's agent holds the most allocations it allows (--max-allocations).
	CNIAllocationLimit uint = 103
	// CNICardNotClaimed: DRA is on for the node and no ResourceClaim of the pod holds the card (in this
	// mode): claim it with DeviceClass multinic.io.
	CNICardNotClaimed uint = 104
)

// codes is the one table of errors: each code with its sentinel, the HTTP status the agent sends it with, and
// the CNI error code the plugin returns for it. The order is the order CodeOf tries the sentinels in.
var codes = []struct {
	code     Code
	sentinel error
	status   int
	cni      uint
}{
	{CodeInvalid, ErrInvalid, statusBadRequest, types.ErrInvalidNetworkConfig},
	{CodeCardTaken, ErrCardTaken, statusConflict, CNICardTaken},
	{CodeInterfaceTaken, ErrInterfaceTaken, statusConflict, CNIInterfaceTaken},
	// The message carries EC2's own error code when there is one.
	{CodeTryAgain, ErrTryAgain, statusServiceUnavailable, types.ErrTryAgainLater},
	{CodeNotManaged, ErrNotManaged, statusNotFound, CNICardNotManaged},
	// Also the agent down, on ADD (DEL journals the release instead).
	{CodeUnavailable, ErrUnavailable, statusServiceUnavailable, types.ErrTryAgainLater},
	{CodeLimit, ErrLimit, statusTooManyRequests, CNIAllocationLimit},
	{CodeNotClaimed, ErrNotClaimed, statusForbidden, CNICardNotClaimed},
	{CodeForbidden, ErrForbidden, statusForbidden, types.ErrInternal},
	{CodeInternal, ErrInternal, statusInternalServerError, types.ErrInternal},
}

// Error is an error as it travels on the wire, and as the client returns it.
type Error struct {
	Code    Code   `json:"code"`
	Message string `json:"message"`
}

func (e *Error) Error() string {
	if e.Message == "" {
		return string(e.Code)
	}
	return e.Message
}

// Is makes errors.Is(err, ErrTryAgain) and friends true for the matching code.
func (e *Error) Is(target error) bool {
	for _, c := range codes {
		if c.code == e.Code {
			return target == c.sentinel
		}
	}
	return false
}

// HTTPStatus is the HTTP status the agent sends an error with code c with; the body's code is what counts.
func (c Code) HTTPStatus() int {
	for _, x := range codes {
		if x.code == c {
			return x.status
		}
	}
	return statusInternalServerError
}

// CodeOf is the code of err: an *Error's own, else the code of the first sentinel (in the table's order) that
// err matches with errors.Is, else CodeInternal.
func CodeOf(err error) Code {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	for _, c := range codes {
		if errors.Is(err, c.sentinel) {
			return c.code
		}
	}
	return CodeInternal
}

// CNICode is the CNI error code for err, from codes: that of CodeOf(err), 999 (internal) for an error that
// matches no code.
func CNICode(err error) uint {
	c := CodeOf(err)
	for _, x := range codes {
		if x.code == c {
			return x.cni
		}
	}
	return types.ErrInternal
}
