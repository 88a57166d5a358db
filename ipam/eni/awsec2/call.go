package awsec2

import (
	"context"
	"fmt"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
)

// noRetry turns the SDK's own retryer off for one call: the client retries itself, so that every attempt
// goes through its class's bucket and is counted, and so that the SDK's retry quota (which empties under a
// sustained throttle and then fails calls without trying) cannot fail a refill that only needed patience.
func noRetry(o *ec2.Options) { o.Retryer = aws.NopRetryer{} }

// backoff is full jitter: uniform in [0, min(cap, base*2^attempt)).
func (c *Client) backoff(attempt int) time.Duration {
	d := c.base << min(attempt, 30)
	if d <= 0 || d > c.cap {
		d = c.cap
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Duration(c.rng.Int64N(int64(d)) + 1)
}

// attemptObserverKey carries a func(action string, err error) that call runs for every failed attempt it is
// about to retry, and with a nil error once a retried call succeeds. A card's loop uses it so its last
// error shows EC2's code while retries go on (they can take a minute), instead of "none" until they run
// out; the client itself does not know the card.
type attemptObserverKey struct{}

// WithAttemptObserver returns ctx carrying observe (see attemptObserverKey).
func WithAttemptObserver(ctx context.Context, observe func(action string, err error)) context.Context {
	return context.WithValue(ctx, attemptObserverKey{}, observe)
}

// yieldKey marks a context whose calls give way to a busy account (see YieldOnThrottle).
type yieldKey struct{}

// YieldOnThrottle returns ctx whose calls are not retried after a throttle: work that nothing waits for gives
// the account's tokens to the calls that something waits for (other cards, other nodes of a scale-up), and
// tries again once EC2 has stopped throttling (ThrottledAt). Other retryable errors are retried as usual.
func YieldOnThrottle(ctx context.Context) context.Context {
	return context.WithValue(ctx, yieldKey{}, true)
}

// call runs fn (an SDK call given the noRetry option) through the bucket of its class until it succeeds,
// fails for good, or ctx ends. Errors carry EC2's code as *APIError.
func call[O any](ctx context.Context, c *Client, action string, filtered bool, fn func(context.Context, func(*ec2.Options)) (O, error)) (O, error) {
	var zero O
	lim := c.limiter(classOf(action, filtered))
	for attempt := 0; ; attempt++ {
		if err := lim.Wait(ctx); err != nil {
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
		result := ErrorCode(err)
		if result == "" {
			result = "error"
		}
		c.count(action, result, attempt > 0)
		yield := Throttled(err) && ctx.Value(yieldKey{}) != nil
		if !retryable(err) || yield || attempt+1 >= c.maxAttempts || ctx.Err() != nil {
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
