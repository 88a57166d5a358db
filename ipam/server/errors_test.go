package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/multinic/multinic/ipam/allocator"
	"github.com/multinic/multinic/ipam/api"
)

var sentinels = []error{api.ErrInvalid, api.ErrCardTaken, api.ErrInterfaceTaken, api.ErrTryAgain, api.ErrNotManaged, api.ErrUnavailable, api.ErrInternal}

func TestErrorCodes(t *testing.T) {
	cardTaken := &allocator.CardTakenError{Pod: "ml/trainer-0", Card: 3, Existing: api.Allocation{
		AllocateRequest: api.AllocateRequest{Card: 3, ContainerID: "c0", IfName: "net1"}, Address: netip.MustParseAddr("10.0.16.7"),
	}}
	ec2Err := errors.New("api error InsufficientFreeAddressesInSubnet: subnet-0abc has no free addresses")
	tests := []struct {
		name     string
		err      error
		code     api.Code
		sentinel error // nil: no sentinel may match
		status   int
		inMsg    string
	}{
		{"allocator invalid", fmt.Errorf("allocate: %w", api.ErrInvalid), api.CodeInvalid, api.ErrInvalid, 400, "invalid request"},
		{"allocator card taken", fmt.Errorf("allocate card 3: %w", cardTaken), api.CodeCardTaken, api.ErrCardTaken, 409, "one address per pod per card"},
		{"allocator interface taken", fmt.Errorf("allocate: %w", api.ErrInterfaceTaken), api.CodeInterfaceTaken, api.ErrInterfaceTaken, 409, "differently"},
		{"allocator limit", fmt.Errorf("allocate: %w", api.ErrLimit), api.CodeLimit, api.ErrLimit, 429, "limit"},
		{"allocator pool empty with EC2 code", fmt.Errorf("refill card 3: %w: %w", &allocator.PoolEmptyError{Card: 3}, ec2Err),
			api.CodeTryAgain, api.ErrTryAgain, 503, "InsufficientFreeAddressesInSubnet"},
		{"backend gave up waiting", fmt.Errorf("wait for refill on card 3: %w", context.DeadlineExceeded), api.CodeTryAgain, api.ErrTryAgain, 503, "deadline"},
		{"state disk full", fmt.Errorf("save checkpoint: %w", &os.PathError{Op: "write", Path: "/var/lib/multinic/c.tmp", Err: syscall.ENOSPC}), api.CodeTryAgain, api.ErrTryAgain, 503, "no space left"},
		{"api error", &api.Error{Code: api.CodeNotManaged, Message: "card 7 is not managed"}, api.CodeNotManaged, api.ErrNotManaged, 404, "card 7 is not managed"},
		{"wrapped api error", fmt.Errorf("status: %w", &api.Error{Code: api.CodeTryAgain, Message: "throttled"}), api.CodeTryAgain, api.ErrTryAgain, 503, "status: throttled"},
		{"api sentinel not managed", fmt.Errorf("card 7: %w", api.ErrNotManaged), api.CodeNotManaged, api.ErrNotManaged, 404, "card 7"},
		{"api sentinel unavailable", fmt.Errorf("restoring state: %w", api.ErrUnavailable), api.CodeUnavailable, api.ErrUnavailable, 503, "restoring state"},
		{"api sentinel invalid", fmt.Errorf("bad: %w", api.ErrInvalid), api.CodeInvalid, api.ErrInvalid, 400, "bad"},
		{"allocator conflict", fmt.Errorf("add address: %w", allocator.ErrConflict), api.CodeInternal, api.ErrInternal, 500, "conflicts"},
		{"plain error", errors.New("write checkpoint: disk full"), api.CodeInternal, api.ErrInternal, 500, "disk full"},
		{"code from a newer agent", &api.Error{Code: "future", Message: "something new"}, "future", nil, 500, "something new"},
	}
	var backendErr error
	b := &fakeBackend{
		allocate: func(context.Context, api.AllocateRequest) (api.AllocateResponse, error) {
			return api.AllocateResponse{}, backendErr
		},
		release: func(context.Context, api.ReleaseRequest) (api.ReleaseResponse, error) {
			return api.ReleaseResponse{}, backendErr
		},
		list:   func(context.Context) ([]api.Allocation, error) { return nil, backendErr },
		status: func(context.Context, int) (api.Status, error) { return api.Status{}, backendErr },
	}
	s := startServer(t, b, nil, time.Second)
	c := newTestClient(t, s.path, 0)
	ctx := context.Background()
	calls := everyVerb(ctx, c)
	for _, tt := range tests {
		// The server's mapping on its own, including the HTTP status.
		if got := errorFor(tt.err); got.Code != tt.code || got.Code.HTTPStatus() != tt.status {
			t.Errorf("%s: errorFor = %q (HTTP %d), want %q (HTTP %d)", tt.name, got.Code, got.Code.HTTPStatus(), tt.code, tt.status)
		}
		for verb, call := range calls {
			t.Run(tt.name+"/"+verb, func(t *testing.T) {
				backendErr = tt.err
				err := call()
				var apiErr *api.Error
				if !errors.As(err, &apiErr) {
					t.Fatalf("error %v (%T) is not an *api.Error", err, err)
				}
				if apiErr.Code != tt.code {
					t.Errorf("code %q, want %q", apiErr.Code, tt.code)
				}
				for _, s := range sentinels {
					if got, want := errors.Is(err, s), s == tt.sentinel; got != want {
						t.Errorf("errors.Is(%v, %q) = %v, want %v", err, s, got, want)
					}
				}
				if !strings.Contains(err.Error(), tt.inMsg) {
					t.Errorf("message %q does not carry %q", err, tt.inMsg)
				}
			})
		}
	}
}

func TestErrorStatusOnWire(t *testing.T) {
	b := &fakeBackend{allocate: func(context.Context, api.AllocateRequest) (api.AllocateResponse, error) {
		return api.AllocateResponse{}, &allocator.PoolEmptyError{Card: 3}
	}}
	s := startServer(t, b, nil, time.Second)
	body, _ := json.Marshal(testRequest)
	status, e := rawDo(t, s.path, http.MethodPost, api.PathAllocate, body)
	if status != http.StatusServiceUnavailable || e == nil || e.Code != api.CodeTryAgain || e.Message != "no free address on card 3" {
		t.Errorf("got HTTP %d %+v", status, e)
	}
}
