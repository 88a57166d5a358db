package plugin

import (
	"errors"
	"fmt"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/multinic/multinic/ipam/api"
)

func TestCNIError(t *testing.T) {
	tests := []struct {
		err  error
		want uint
	}{
		{fmt.Errorf("allocate: %w", &api.Error{Code: api.CodeInvalid}), types.ErrInvalidNetworkConfig},
		{fmt.Errorf("allocate: %w", &api.Error{Code: api.CodeTryAgain, Message: "RequestLimitExceeded"}), types.ErrTryAgainLater},
		{fmt.Errorf("allocate: %w: connect", api.ErrUnavailable), types.ErrTryAgainLater},
		{&api.Error{Code: api.CodeCardTaken}, api.CNICardTaken},
		{&api.Error{Code: api.CodeInterfaceTaken}, api.CNIInterfaceTaken},
		{&api.Error{Code: api.CodeNotManaged}, api.CNICardNotManaged},
		{fmt.Errorf("allocate: %w", &api.Error{Code: api.CodeLimit}), api.CNIAllocationLimit},
		{fmt.Errorf("allocate: %w", &api.Error{Code: api.CodeNotClaimed}), api.CNICardNotClaimed},
		{&api.Error{Code: api.CodeForbidden}, types.ErrInternal},
		{&api.Error{Code: "future", Message: "a code from a newer agent"}, types.ErrInternal},
		{&api.Error{Code: api.CodeInternal}, types.ErrInternal},
		{errors.New("netlink: boom"), types.ErrInternal},
		{fmt.Errorf("ctx: %w", types.NewError(types.ErrInvalidNetNS, "host netns", "")), types.ErrInvalidNetNS},
	}
	for _, tt := range tests {
		got := cniError(tt.err)
		var e *types.Error
		if !errors.As(got, &e) || e.Code != tt.want || e.Msg != tt.err.Error() {
			t.Errorf("cniError(%v) = %#v, want code %d with the whole message", tt.err, got, tt.want)
		}
	}
	if cniError(nil) != nil {
		t.Error("cniError(nil) != nil")
	}
}
