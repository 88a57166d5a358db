package awsec2

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"github.com/aws/smithy-go"
	"net/http"
	"net/http/httptest"
	"time"
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

// TestTransient: the real SDK clients' errors, as the agent's start sees them. IMDS has no error codes, only
// HTTP status: a 5xx or no answer passes, a 4xx is final; EC2's codes decide for EC2; an error that is not an
// AWS call's (a bad instance type found by the agent) is final.
func TestTransient(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/latest/api/token":
			w.Header().Set("X-Aws-Ec2-Metadata-Token-Ttl-Seconds", "21600")
			fmt.Fprint(w, "token")
		case "/latest/meta-data/unavailable":
			http.Error(w, "unavailable", http.StatusServiceUnavailable)
		case "/latest/meta-data/missing":
			http.Error(w, "not found", http.StatusNotFound)
		case "/latest/meta-data/cut":
			w.Header().Set("Content-Length", "100")
			fmt.Fprint(w, "cut off")
		case "/latest/meta-data/slow":
			time.Sleep(300 * time.Millisecond)
			fmt.Fprint(w, "late")
		default:
			fmt.Fprint(w, "ok")
		}
	}))
	defer srv.Close()
	client := imds.New(imds.Options{Endpoint: srv.URL, Retryer: aws.NopRetryer{},
		HTTPClient: &http.Client{Timeout: 100 * time.Millisecond}})
	read := func(path string) error {
		_, err := Metadata(context.Background(), client, path)
		return err
	}
	if err := read("instance-id"); err != nil {
		t.Fatalf("the server answers nothing: %v", err)
	}
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"imds 503", read("unavailable"), true},
		{"imds no answer in time", read("slow"), true},
		{"imds body cut off", read("cut"), true},
		{"imds 404", read("missing"), false},
		{"ec2 throttle", wrapAPI(apiErr("RequestLimitExceeded", "m")), true},
		{"ec2 internal", wrapAPI(apiErr("InternalError", "m")), true},
		{"ec2 denied", wrapAPI(apiErr("UnauthorizedOperation", "m")), false},
		{"not an aws call", errors.New("2 IPv4 addresses per ENI leave none for pods"), false},
	} {
		if tc.err == nil {
			t.Fatalf("%s: no error", tc.name)
		}
		if got := Transient(fmt.Errorf("discover: %w", tc.err)); got != tc.want {
			t.Errorf("%s (%v): Transient %v, want %v", tc.name, tc.err, got, tc.want)
		}
	}
}
