package eni

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/smithy-go"
	"golang.org/x/time/rate"
)

// EC2API is the part of *ec2.Client the manager uses.
type EC2API interface {
	DescribeInstanceTypes(context.Context, *ec2.DescribeInstanceTypesInput, ...func(*ec2.Options)) (*ec2.DescribeInstanceTypesOutput, error)
	DescribeNetworkInterfaces(context.Context, *ec2.DescribeNetworkInterfacesInput, ...func(*ec2.Options)) (*ec2.DescribeNetworkInterfacesOutput, error)
	DescribeSubnets(context.Context, *ec2.DescribeSubnetsInput, ...func(*ec2.Options)) (*ec2.DescribeSubnetsOutput, error)
	CreateNetworkInterface(context.Context, *ec2.CreateNetworkInterfaceInput, ...func(*ec2.Options)) (*ec2.CreateNetworkInterfaceOutput, error)
	AttachNetworkInterface(context.Context, *ec2.AttachNetworkInterfaceInput, ...func(*ec2.Options)) (*ec2.AttachNetworkInterfaceOutput, error)
	DetachNetworkInterface(context.Context, *ec2.DetachNetworkInterfaceInput, ...func(*ec2.Options)) (*ec2.DetachNetworkInterfaceOutput, error)
	DeleteNetworkInterface(context.Context, *ec2.DeleteNetworkInterfaceInput, ...func(*ec2.Options)) (*ec2.DeleteNetworkInterfaceOutput, error)
	ModifyNetworkInterfaceAttribute(context.Context, *ec2.ModifyNetworkInterfaceAttributeInput, ...func(*ec2.Options)) (*ec2.ModifyNetworkInterfaceAttributeOutput, error)
	AssignPrivateIpAddresses(context.Context, *ec2.AssignPrivateIpAddressesInput, ...func(*ec2.Options)) (*ec2.AssignPrivateIpAddressesOutput, error)
	UnassignPrivateIpAddresses(context.Context, *ec2.UnassignPrivateIpAddressesInput, ...func(*ec2.Options)) (*ec2.UnassignPrivateIpAddressesOutput, error)
}

var _ EC2API = (*ec2.Client)(nil)

// IMDSAPI is the part of *imds.Client the manager uses.
type IMDSAPI interface {
	GetMetadata(context.Context, *imds.GetMetadataInput, ...func(*imds.Options)) (*imds.GetMetadataOutput, error)
}

var _ IMDSAPI = (*imds.Client)(nil)

// APIError is an EC2 error as the manager reports it: "Code: Message". It unwraps to the SDK's error.
type APIError struct {
	Code    string
	Message string
	Err     error
}

func (e *APIError) Error() string { return e.Code + ": " + e.Message }
func (e *APIError) Unwrap() error { return e.Err }

// ErrorCode returns EC2's error code in err's chain, or "".
func ErrorCode(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}

// throttleCodes are EC2's "slow down" answers.
var throttleCodes = map[string]bool{
	"RequestLimitExceeded": true, "Throttling": true, "ThrottlingException": true,
	"RequestThrottled": true, "EC2ThrottledException": true,
}

// transientCodes are server-side failures worth another attempt.
var transientCodes = map[string]bool{
	"InternalError": true, "InternalFailure": true, "ServiceUnavailable": true, "Unavailable": true,
}

// noRetry turns the SDK's own retryer off for one call: the caller retries itself, so that every attempt
// goes through the shared limiter and is counted, and so that the SDK's retry quota (which empties under a
// sustained throttle and then fails calls without trying) cannot fail a refill that only needed patience.
func noRetry(o *ec2.Options) { o.Retryer = aws.NopRetryer{} }

// caller runs EC2 calls through one rate limiter with retries, exponential backoff with full jitter, and
// counts every attempt by action and result.
type caller struct {
	api         EC2API
	lim         *rate.Limiter
	maxAttempts int
	base, cap   time.Duration

	mu        sync.Mutex
	calls     map[string]map[string]int
	throttles int
	retries   int
	rng       *rand.Rand
}

func newCaller(api EC2API, cfg Config) *caller {
	return &caller{
		api: api, lim: rate.NewLimiter(rate.Limit(cfg.EC2Rate), cfg.EC2Burst),
		maxAttempts: cfg.MaxAttempts, base: cfg.BackoffBase, cap: cfg.BackoffMax,
		calls: map[string]map[string]int{}, rng: rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 0xec2)),
	}
}

func (c *caller) count(action, result string, retry bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := c.calls[action]
	if m == nil {
		m = map[string]int{}
		c.calls[action] = m
	}
	m[result]++
	if throttleCodes[result] {
		c.throttles++
	}
	if retry {
		c.retries++
	}
}

// backoff is full jitter: uniform in [0, min(cap, base*2^attempt)).
func (c *caller) backoff(attempt int) time.Duration {
	d := c.base << min(attempt, 30)
	if d <= 0 || d > c.cap {
		d = c.cap
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Duration(c.rng.Int64N(int64(d)) + 1)
}

// retryable: throttles, server errors (5xx), and failures with no EC2 error code at all (transport errors,
// a response cut off mid-body). A 4xx with a code is EC2's answer and final.
func retryable(err error) bool {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	if code := ErrorCode(err); code != "" {
		if throttleCodes[code] || transientCodes[code] {
			return true
		}
		var re *awshttp.ResponseError
		return errors.As(err, &re) && re.HTTPStatusCode() >= 500
	}
	return true
}

// attemptObserverKey carries a func(action string, err error) that do calls for every failed attempt
// it is about to retry, and with a nil error once a retried call succeeds. A card's loop uses it so LastError shows EC2's code while retries go on (they
// can take a minute), instead of "none" until they run out; do itself does not know the card.
type attemptObserverKey struct{}

func withAttemptObserver(ctx context.Context, observe func(action string, err error)) context.Context {
	return context.WithValue(ctx, attemptObserverKey{}, observe)
}

// do runs fn (an SDK call given the noRetry option) until it succeeds, fails for good, or ctx ends.
// Errors carry EC2's code as *APIError.
func do[O any](ctx context.Context, c *caller, action string, fn func(context.Context, func(*ec2.Options)) (O, error)) (O, error) {
	var zero O
	for attempt := 0; ; attempt++ {
		if err := c.lim.Wait(ctx); err != nil {
			return zero, fmt.Errorf("wait for ec2 rate limiter: %w", err)
		}
		out, err := fn(ctx, noRetry)
		observe, _ := ctx.Value(attemptObserverKey{}).(func(string, error))
		if err == nil {
			c.count(action, "ok", attempt > 0)
			if attempt > 0 && observe != nil {
				observe(action, nil) // the failure it reported is over
			}
			return out, nil
		}
		code := ErrorCode(err)
		result := code
		if result == "" {
			result = "error"
		}
		c.count(action, result, attempt > 0)
		if !retryable(err) || attempt+1 >= c.maxAttempts || ctx.Err() != nil {
			return zero, wrapAPI(err)
		}
		if observe != nil {
			observe(action, wrapAPI(err))
		}
		t := time.NewTimer(c.backoff(attempt))
		select {
		case <-ctx.Done():
			t.Stop()
			return zero, wrapAPI(err)
		case <-t.C:
		}
	}
}

func wrapAPI(err error) error {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return &APIError{Code: ae.ErrorCode(), Message: ae.ErrorMessage(), Err: err}
	}
	return err
}

// CallStats counts EC2 attempts by action and result ("ok" or EC2's error code).
type CallStats struct {
	Calls     map[string]map[string]int
	Throttles int
	Retries   int
}

func (c *caller) stats() CallStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := CallStats{Calls: make(map[string]map[string]int, len(c.calls)), Throttles: c.throttles, Retries: c.retries}
	for a, m := range c.calls {
		cp := make(map[string]int, len(m))
		for k, v := range m {
			cp[k] = v
		}
		out.Calls[a] = cp
	}
	return out
}
