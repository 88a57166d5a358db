package plugin

import (
	"errors"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/multinic/multinic/ipam/api"
)

// Plugin-specific CNI error codes (the spec leaves 100 and up to plugins).
const (
	// ErrCardTaken: the pod already holds an address on this card under another interface. A pod gets one
	// address per card; attach each card once.
	ErrCardTaken uint = 100
	// ErrInterfaceTaken: this (container, interface) already holds a different allocation, e.g. the same
	// ifname was attached to two cards.
	ErrInterfaceTaken uint = 101
	// ErrCardNotManaged: the agent on this node does not manage the card (no such card on the instance type,
	// or excluded by the agent's configuration).
	ErrCardNotManaged uint = 102
	// ErrAllocationLimit: the node's agent holds the most allocations it allows (--max-allocations).
	ErrAllocationLimit uint = 103
)

// cniError turns an error of a verb into the *types.Error the runtime sees. It is the one place where
// errors get their CNI codes:
//
//	*types.Error (config, CNI_ARGS, netns)  kept as is (7, 8, 11, 50, ...)
//	api.ErrInvalid                          7  ErrInvalidNetworkConfig
//	api.ErrTryAgain                         11 ErrTryAgainLater (the message carries EC2's error code)
//	api.ErrUnavailable (agent down)         11 ErrTryAgainLater
//	api.ErrCardTaken                        100 ErrCardTaken
//	api.ErrInterfaceTaken                   101 ErrInterfaceTaken
//	api.ErrNotManaged                       102 ErrCardNotManaged
//	api.ErrLimit                            103 ErrAllocationLimit
//	anything else                           999 ErrInternal
//
// STATUS reports its own codes (50) before it gets here; DEL never returns api.ErrUnavailable (it
// journals the release).
func cniError(err error) error {
	if err == nil {
		return nil
	}
	var e *types.Error
	if errors.As(err, &e) {
		if e == err {
			return e
		}
		// Keep the code, and the message with its context (which includes the details).
		return types.NewError(e.Code, err.Error(), "")
	}
	code := types.ErrInternal
	switch {
	case errors.Is(err, api.ErrInvalid):
		code = types.ErrInvalidNetworkConfig
	case errors.Is(err, api.ErrTryAgain), errors.Is(err, api.ErrUnavailable):
		code = types.ErrTryAgainLater
	case errors.Is(err, api.ErrCardTaken):
		code = ErrCardTaken
	case errors.Is(err, api.ErrInterfaceTaken):
		code = ErrInterfaceTaken
	case errors.Is(err, api.ErrNotManaged):
		code = ErrCardNotManaged
	case errors.Is(err, api.ErrLimit):
		code = ErrAllocationLimit
	}
	return types.NewError(code, err.Error(), "")
}
