// Package awsec2 is the ENI manager's EC2 layer, as the AWS VPC CNI keeps awsutils apart from ipamd: every
// EC2 and IMDS call the agent makes, each through the token bucket of its EC2 throttling class, retried
// with full-jitter backoff and counted; the classification of EC2's errors; and the one parser from EC2's
// network interface data to addresses and prefixes (Parse). It knows nothing of pools, cards or policy.
package awsec2

import (
	"context"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"golang.org/x/time/rate"
)

// EC2API is the part of *ec2.Client the agent uses.
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
	AssignIpv6Addresses(context.Context, *ec2.AssignIpv6AddressesInput, ...func(*ec2.Options)) (*ec2.AssignIpv6AddressesOutput, error)
	UnassignIpv6Addresses(context.Context, *ec2.UnassignIpv6AddressesInput, ...func(*ec2.Options)) (*ec2.UnassignIpv6AddressesOutput, error)
}

var _ EC2API = (*ec2.Client)(nil)

// IMDSAPI is the part of *imds.Client the agent uses.
type IMDSAPI interface {
	GetMetadata(context.Context, *imds.GetMetadataInput, ...func(*imds.Options)) (*imds.GetMetadataOutput, error)
}

var _ IMDSAPI = (*imds.Client)(nil)

// Config sets the client's rate limits and retries.
type Config struct {
	// Rate and Burst are the mutating class's token bucket (calls per second, every attempt counted); each
	// other class gets the same share of EC2's published refill rate and bucket size (see Limits).
	Rate  float64
	Burst int
	// MaxAttempts per call, the first included.
	MaxAttempts int
	// BackoffBase and BackoffMax bound the full-jitter exponential backoff between attempts.
	BackoffBase, BackoffMax time.Duration
}

// Client makes the agent's EC2 calls. It is safe for concurrent use.
type Client struct {
	api         EC2API
	rate        float64
	limMu       sync.RWMutex
	lim         map[Class]*rate.Limiter
	maxAttempts int
	base, cap   time.Duration

	mu        sync.Mutex
	calls     map[string]map[string]int
	throttles int
	retries   int
	// throttledAt is when EC2 last throttled one of the client's calls (zero: never).
	throttledAt time.Time
	rng         *rand.Rand
}

// New returns a client over api.
func New(api EC2API, cfg Config) *Client {
	c := &Client{
		api: api, rate: cfg.Rate, lim: limiters(cfg.Rate, cfg.Burst), maxAttempts: cfg.MaxAttempts, base: cfg.BackoffBase,
		cap: cfg.BackoffMax, calls: map[string]map[string]int{}, rng: rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 0xec2)),
	}
	return c
}

func limiters(mutatingRate float64, mutatingBurst int) map[Class]*rate.Limiter {
	lim := map[Class]*rate.Limiter{}
	for class, l := range Limits(mutatingRate, mutatingBurst) {
		lim[class] = rate.NewLimiter(rate.Limit(l.PerSecond), l.Burst)
	}
	return lim
}

// SetBurst replaces every class's bucket with a full one for a mutating burst of mutatingBurst (the other
// classes scaled, see Limits), at the same rates: the manager sizes the burst for the node's cold start
// once discovery knows how many cards it serves.
func (c *Client) SetBurst(mutatingBurst int) {
	lim := limiters(c.rate, mutatingBurst)
	c.limMu.Lock()
	defer c.limMu.Unlock()
	c.lim = lim
}

// limiter is the bucket of class.
func (c *Client) limiter(class Class) *rate.Limiter {
	c.limMu.RLock()
	defer c.limMu.RUnlock()
	return c.lim[class]
}

// CallStats counts EC2 attempts by action and result ("ok" or EC2's error code).
type CallStats struct {
	Calls     map[string]map[string]int
	Throttles int
	Retries   int
}

// ThrottledAt is when EC2 last throttled one of the client's calls, any class (zero: never): the account's
// budget was spent then, by this agent or by others.
func (c *Client) ThrottledAt() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.throttledAt
}

// Stats returns the counts so far.
func (c *Client) Stats() CallStats {
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

func (c *Client) count(action, result string, retry bool) {
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
		c.throttledAt = time.Now()
	}
	if retry {
		c.retries++
	}
}
