package awsec2

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/aws/smithy-go"
)

func apiErr(code, msg string) error { return &smithy.GenericAPIError{Code: code, Message: msg} }

func TestRetryable(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"throttle", apiErr("RequestLimitExceeded", "m"), true},
		{"internal", apiErr("InternalError", "m"), true},
		{"unavailable", apiErr("Unavailable", "m"), true},
		{"no addresses", apiErr("InsufficientFreeAddressesInSubnet", "m"), false},
		{"limit", apiErr("PrivateIpAddressLimitExceeded", "m"), false},
		{"denied", apiErr("UnauthorizedOperation", "m"), false},
		{"transport", errors.New("connection reset"), true},
		{"cancelled", fmt.Errorf("x: %w", context.Canceled), false},
	} {
		if got := retryable(tc.err); got != tc.want {
			t.Errorf("%s: retryable %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestClassifiers: EC2's answers the agent acts on, as EC2 words them (notes/ec2-wire.md), wrapped as the
// client returns them.
func TestClassifiers(t *testing.T) {
	for _, tc := range []struct {
		err                                  error
		subnetFull, deviceInUse, inUse, gone bool
	}{
		{err: apiErr("InsufficientFreeAddressesInSubnet", "no free addresses"), subnetFull: true},
		{err: apiErr("InsufficientCidrBlocks", "no /28 left"), subnetFull: true},
		{err: apiErr("InvalidParameterValue", "Instance 'i-1' already has an interface attached at device index '1'."), deviceInUse: true},
		{err: apiErr("InvalidParameterValue", "Network interface 'eni-1' is currently in use."), inUse: true},
		{err: apiErr("InvalidNetworkInterfaceID.NotFound", "The networkInterface ID 'eni-x' does not exist"), gone: true},
		{err: apiErr("InvalidAttachmentID.NotFound", "no attachment"), gone: true},
		{err: apiErr("AttachmentLimitExceeded", "Interface count 4 exceeds the limit")},
		{err: errors.New("connection reset")},
	} {
		err := fmt.Errorf("doing something: %w", wrapAPI(tc.err))
		if got := SubnetFull(err); got != tc.subnetFull {
			t.Errorf("SubnetFull(%v) = %v", err, got)
		}
		if got := DeviceInUse(err); got != tc.deviceInUse {
			t.Errorf("DeviceInUse(%v) = %v", err, got)
		}
		if got := InUse(err); got != tc.inUse {
			t.Errorf("InUse(%v) = %v", err, got)
		}
		if got := NotFound(err); got != tc.gone {
			t.Errorf("NotFound(%v) = %v", err, got)
		}
	}
	var ae *APIError
	if err := fmt.Errorf("x: %w", wrapAPI(apiErr("RequestLimitExceeded", "Request limit exceeded."))); !errors.As(err, &ae) ||
		ae.Error() != "RequestLimitExceeded: Request limit exceeded." || ErrorCode(err) != "RequestLimitExceeded" {
		t.Errorf("wrapped %v: APIError %+v, code %q", err, ae, ErrorCode(err))
	}
}

func TestThrottled(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{fmt.Errorf("discover instance: %w", wrapAPI(apiErr("RequestLimitExceeded", "Request limit exceeded."))), true},
		{apiErr("Throttling", "m"), true},
		{apiErr("InternalError", "m"), false}, // retried per call, but not EC2's throttle
		{apiErr("UnauthorizedOperation", "m"), false},
		{errors.New("connection reset"), false},
		{nil, false},
	} {
		if got := Throttled(tc.err); got != tc.want {
			t.Errorf("Throttled(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}
