package awsec2

import (
	"context"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/ec2"
)

func TestBackoffBounds(t *testing.T) {
	c := New(nil, Config{MaxAttempts: 3, BackoffBase: 100 * time.Millisecond, BackoffMax: time.Second, Rate: 1, Burst: 1})
	for attempt := range 40 {
		limit := min(100*time.Millisecond<<min(attempt, 30), time.Second)
		for range 50 {
			if d := c.backoff(attempt); d <= 0 || d > limit {
				t.Fatalf("attempt %d: backoff %s outside (0, %s]", attempt, d, limit)
			}
		}
	}
}

// stubEC2 answers every call at once; only the calls TestBucketsPerClass makes are implemented.
type stubEC2 struct{ EC2API }

func (stubEC2) DescribeSubnets(context.Context, *ec2.DescribeSubnetsInput, ...func(*ec2.Options)) (*ec2.DescribeSubnetsOutput, error) {
	return &ec2.DescribeSubnetsOutput{}, nil
}

func (stubEC2) DeleteNetworkInterface(context.Context, *ec2.DeleteNetworkInterfaceInput, ...func(*ec2.Options)) (*ec2.DeleteNetworkInterfaceOutput, error) {
	return &ec2.DeleteNetworkInterfaceOutput{}, nil
}

func (stubEC2) DetachNetworkInterface(context.Context, *ec2.DetachNetworkInterfaceInput, ...func(*ec2.Options)) (*ec2.DetachNetworkInterfaceOutput, error) {
	return &ec2.DetachNetworkInterfaceOutput{}, nil
}

// TestBucketsPerClass: with the mutating bucket empty, a Describe and a Detach still go out at once, as EC2
// would take them; another mutating call waits for its token.
func TestBucketsPerClass(t *testing.T) {
	c := New(stubEC2{}, Config{Rate: 2, Burst: 1, MaxAttempts: 1}) // mutating: one token, then one per 500 ms
	ctx := context.Background()
	if err := c.Delete(ctx, "eni-1"); err != nil { // takes the mutating token
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := c.Subnets(ctx, []string{"subnet-1"}); err != nil {
		t.Fatal(err)
	}
	if err := c.Detach(ctx, "eni-attach-1"); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Errorf("a Describe and a Detach waited %s behind an empty mutating bucket", d)
	}
	start = time.Now()
	if err := c.Delete(ctx, "eni-2"); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 300*time.Millisecond {
		t.Errorf("a second mutating call went out after %s, want about 500 ms (2/s)", d)
	}
	if st := c.Stats(); st.Calls["DeleteNetworkInterface"]["ok"] != 2 || st.Calls["DescribeSubnets"]["ok"] != 1 {
		t.Errorf("calls %v", st.Calls)
	}
}

// TestSetBurst: the new buckets are full at the new size, at the old rate.
func TestSetBurst(t *testing.T) {
	c := New(stubEC2{}, Config{Rate: 0.01, Burst: 1, MaxAttempts: 1}) // one token, the next in 100 s
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	c.SetBurst(6) // mutating 6, attach/detach 3
	for i := range 6 {
		if err := c.Delete(ctx, "eni-1"); err != nil {
			t.Fatalf("mutating call %d of a burst of 6: %v", i+1, err)
		}
	}
	for i := range 3 {
		if err := c.Detach(ctx, "eni-attach-1"); err != nil {
			t.Fatalf("detach %d of a burst of 3: %v", i+1, err)
		}
	}
	short, cancelShort := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancelShort()
	if err := c.Delete(short, "eni-1"); err == nil {
		t.Fatal("a 7th mutating call went out at 0.01/s: the rate changed with the burst")
	}
}

// throttlingEC2 throttles every DeleteNetworkInterface, as EC2 does when the account's bucket is empty.
type throttlingEC2 struct{ stubEC2 }

func (throttlingEC2) DeleteNetworkInterface(context.Context, *ec2.DeleteNetworkInterfaceInput, ...func(*ec2.Options)) (*ec2.DeleteNetworkInterfaceOutput, error) {
	return nil, apiErr("RequestLimitExceeded", "Request limit exceeded.")
}

// TestYieldOnThrottle: a throttled call is retried up to MaxAttempts, but only once under YieldOnThrottle;
// either way the client remembers when EC2 throttled it.
func TestYieldOnThrottle(t *testing.T) {
	for _, tc := range []struct {
		name  string
		yield bool
		want  int
	}{{"retried", false, 3}, {"yields", true, 1}} {
		t.Run(tc.name, func(t *testing.T) {
			c := New(throttlingEC2{}, Config{Rate: 1000, Burst: 10, MaxAttempts: 3, BackoffBase: time.Millisecond, BackoffMax: time.Millisecond})
			if !c.ThrottledAt().IsZero() {
				t.Fatal("throttled before any call")
			}
			ctx := context.Background()
			if tc.yield {
				ctx = YieldOnThrottle(ctx)
			}
			before := time.Now()
			if err := c.Delete(ctx, "eni-1"); !Throttled(err) {
				t.Fatalf("delete: %v, want the stub's throttle", err)
			}
			if got := c.Stats().Calls["DeleteNetworkInterface"]["RequestLimitExceeded"]; got != tc.want {
				t.Errorf("%d attempts, want %d", got, tc.want)
			}
			if at := c.ThrottledAt(); at.Before(before) {
				t.Errorf("ThrottledAt %s, before the call at %s", at, before)
			}
		})
	}
}
