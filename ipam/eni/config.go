package eni

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/multinic/multinic/internal/netnsdir"
	"github.com/multinic/multinic/ipam/api"
	"github.com/multinic/multinic/ipam/eni/awsec2"
	"github.com/multinic/multinic/ipam/eni/plan"
)

// Tags the manager puts on every ENI it creates. An ENI is the manager's only when it carries TagCluster
// with the configured cluster, TagNode with this instance's ID and TagCard.
const (
	TagCluster = "multinic.io/cluster"
	TagNode    = "multinic.io/node"
	TagCard    = "multinic.io/card"
	TagManaged = "multinic.io/managed"
	// TagMode is ModeShared or ModeExclusive: whether the ENI serves the card's shared pool or stands for
	// one pod's whole-ENI allocation.
	TagMode       = "multinic.io/mode"
	ModeShared    = "shared"
	ModeExclusive = "exclusive"
	// TagNodeName is the Kubernetes node name, for people reading the console.
	TagNodeName = "multinic.io/node-name"
	// TagNoManage is the Amazon VPC CNI's opt-out tag: an ENI with it set to "true" is never touched.
	TagNoManage = "node.k8s.amazonaws.com/no_manage"
)

// Defaults for the zero values of Config.
const (
	DefaultWarmTarget        = 8
	DefaultMinFree           = 2
	DefaultMaxBatch          = 50
	DefaultSurplusDelay      = time.Minute
	DefaultMTU               = 9001
	DefaultRefillInterval    = 30 * time.Second
	DefaultReconcileInterval = 5 * time.Minute
	DefaultLinkTimeout       = 60 * time.Second
	DefaultLinkPoll          = 100 * time.Millisecond
	DefaultEC2Rate           = 4.0 // mutating calls/s, a bit under EC2's 5/s refill (the other classes scale with it)
	DefaultEC2Burst          = 10  // at least; see ColdStartBurst
	DefaultMaxAttempts       = 8
	DefaultBackoffBase       = 200 * time.Millisecond
	DefaultBackoffMax        = 20 * time.Second
	DefaultErrorBackoffMax   = time.Minute
	DefaultSettleTime        = time.Minute
	DefaultOrphanAge         = 10 * time.Minute
	DefaultOrphanSweep       = 10 * time.Minute
	DefaultOrphanBatch       = 20
)

// CardConfig overrides where a card's ENIs are created (empty fields: as the primary ENI) and the
// card's address family (empty: Config.Family).
type CardConfig struct {
	SubnetID         string
	SecurityGroupIDs []string
	Family           string
}

// Config configures a Manager. Zero values take the documented defaults.
type Config struct {
	// Cluster is the cluster name written to TagCluster. Required.
	Cluster string
	// NodeName is the Kubernetes node name, written to TagNodeName (informational).
	NodeName string

	// ManagedCards lists the cards to serve. nil: every card except the instance type's default card
	// (DefaultNetworkCardIndex, 0), which carries the node's primary network. AllCards overrides it.
	ManagedCards []int
	// AllCards serves every card, the default card included (on it, extra ENIs next to the primary).
	AllCards bool
	// Cards overrides subnet and security groups per card (default the primary ENI's), and the family.
	Cards map[int]CardConfig
	// Family is every card's address family unless Cards says otherwise: api.FamilyIPv4 (""), FamilyIPv6
	// (pods get one IPv6 address per card) or FamilyDual (one of each, from the same ENI). A card that
	// serves IPv6 gives every shared ENI one /80 prefix (at its CreateNetworkInterface, or
	// AssignIpv6Addresses for an ENI found without one) and takes its pods' IPv6 addresses from it; an
	// ipv6 card keeps no IPv4 addresses warm.
	Family string

	// WarmTarget is how many free addresses each card keeps (nil: DefaultWarmTarget).
	WarmTarget *int
	// MinFree is how many addresses each card keeps usable right now (nil: DefaultMinFree).
	MinFree *int
	// MaxBatch bounds the addresses one AssignPrivateIpAddresses asks for (0: DefaultMaxBatch). The
	// default is a whole ENI of the large instance types: allocations waiting on an empty pool are asked
	// for in one call, because under EC2 throttling every extra call is time a pod waits.
	MaxBatch int
	// PrefixMode assigns /28 prefixes (16 addresses each, one per call) instead of single addresses.
	PrefixMode bool
	// SurplusDelay: a warm address beyond WarmTarget goes back to EC2 only after it has been surplus
	// this long (0: DefaultSurplusDelay; negative: at once). Free exclusive ENIs are detached and
	// deleted after the same delay.
	SurplusDelay time.Duration
	// MTU set on every ENI link (0: DefaultMTU).
	MTU int

	// RefillInterval is how often each card's pool is checked without a Kick (0: DefaultRefillInterval).
	RefillInterval time.Duration
	// ReconcileInterval is how often the allocator is compared with EC2 and detached ENIs of this node
	// are deleted (0: DefaultReconcileInterval; negative: only at start).
	ReconcileInterval time.Duration
	// LinkTimeout bounds the wait for an attached ENI's link to appear (0: DefaultLinkTimeout).
	LinkTimeout time.Duration
	// LinkPoll is the interval between link lookups (0: DefaultLinkPoll).
	LinkPoll time.Duration

	// EC2Rate and EC2Burst set the token bucket of EC2's mutating calls (every attempt counts; 0:
	// DefaultEC2Rate; 0: ColdStartBurst of the managed cards). EC2 throttles each class of calls in its own
	// bucket, and so does the agent: attach/detach, tags and describes get the same share of EC2's published
	// rates (awsec2.Limits).
	EC2Rate  float64
	EC2Burst int
	// Eager makes every EC2 call as soon as it is planned, as the AWS VPC CNI does: DeleteOnTermination right
	// after each attach, and a top-up of a pool nothing waits for even while EC2 throttles. By default that
	// idle work waits until EC2 has not throttled the agent for ErrorBackoffMax, and gives way (one attempt) when
	// it does: a cluster scale-up's tokens go to the ENIs and addresses that nodes and pods wait for.
	Eager bool
	// MaxAttempts per EC2 call, the first included (0: DefaultMaxAttempts).
	MaxAttempts int
	// BackoffBase and BackoffMax bound the full-jitter exponential backoff between attempts
	// (0: DefaultBackoffBase, DefaultBackoffMax).
	BackoffBase time.Duration
	BackoffMax  time.Duration
	// ErrorBackoffMax bounds how long a card's refill loop waits after repeated failures
	// (0: DefaultErrorBackoffMax). The wait starts at RefillInterval/10 and doubles, but not after a
	// failure that is EC2's throttle.
	ErrorBackoffMax time.Duration

	// NetnsDirs are the directories whose netns paths count as evidence that a released exclusive ENI's
	// pod netns is gone (package netnsdir; nil: netnsdir.Default).
	NetnsDirs []string

	// OrphanAge: an available ENI of this cluster older than this is an orphan (0: DefaultOrphanAge).
	// OrphanSweepInterval: how often this agent sweeps the cluster's orphans (0: DefaultOrphanSweep;
	// negative: never). OrphanBatch: at most this many deletes per sweep (0: DefaultOrphanBatch). See
	// orphans.go.
	OrphanAge           time.Duration
	OrphanSweepInterval time.Duration
	OrphanBatch         int

	// SettleTime is how long reconcile and its detached-ENI cleanup believe the manager's own recent EC2 changes (assigns,
	// unassigns, creates, detaches) over what Describe says, which may lag behind (0: DefaultSettleTime).
	SettleTime time.Duration

	// Logger (nil: slog.Default()).
	Logger *slog.Logger
}

// withDefaults fills zero values; it changes nothing else.
func (c Config) withDefaults() Config {
	if c.WarmTarget == nil {
		c.WarmTarget = ptr(DefaultWarmTarget)
	}
	if c.MinFree == nil {
		c.MinFree = ptr(DefaultMinFree)
	}
	c.MaxBatch = or(c.MaxBatch, DefaultMaxBatch)
	switch {
	case c.SurplusDelay == 0:
		c.SurplusDelay = DefaultSurplusDelay
	case c.SurplusDelay < 0:
		c.SurplusDelay = 0
	}
	c.MTU = or(c.MTU, DefaultMTU)
	c.RefillInterval = or(c.RefillInterval, DefaultRefillInterval)
	c.ReconcileInterval = or(c.ReconcileInterval, DefaultReconcileInterval)
	c.LinkTimeout = or(c.LinkTimeout, DefaultLinkTimeout)
	c.LinkPoll = or(c.LinkPoll, DefaultLinkPoll)
	c.EC2Rate = or(c.EC2Rate, DefaultEC2Rate)
	c.MaxAttempts = or(c.MaxAttempts, DefaultMaxAttempts)
	c.BackoffBase = or(c.BackoffBase, DefaultBackoffBase)
	c.BackoffMax = or(c.BackoffMax, DefaultBackoffMax)
	c.ErrorBackoffMax = or(c.ErrorBackoffMax, DefaultErrorBackoffMax)
	c.SettleTime = or(c.SettleTime, DefaultSettleTime)
	c.OrphanAge = or(c.OrphanAge, DefaultOrphanAge)
	c.OrphanSweepInterval = or(c.OrphanSweepInterval, DefaultOrphanSweep)
	c.OrphanBatch = or(c.OrphanBatch, DefaultOrphanBatch)
	if c.NetnsDirs == nil {
		c.NetnsDirs = netnsdir.Default
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	c.Family = api.NormalFamily(c.Family)
	return c
}

// family is the card's address family (defaults applied).
func (c Config) family(card int) string {
	if f := c.Cards[card].Family; f != "" {
		return f
	}
	return c.Family
}

func (c Config) validate() error {
	switch {
	case c.Cluster == "":
		return errors.New("cluster name empty: required for the ENI tags")
	case *c.WarmTarget < 0:
		return fmt.Errorf("warm target %d invalid: must be 0 or more", *c.WarmTarget)
	case *c.MinFree < 0:
		return fmt.Errorf("min free %d invalid: must be 0 or more", *c.MinFree)
	case c.MaxBatch < 1:
		return fmt.Errorf("max batch %d invalid: must be 1 or more", c.MaxBatch)
	case c.MTU < 68 || c.MTU > 9001:
		return fmt.Errorf("mtu %d invalid: must be 68-9001", c.MTU)
	case c.EC2Rate < 0 || c.EC2Burst < 0:
		return fmt.Errorf("ec2 rate %g burst %d invalid: rate must be > 0 and burst >= 0 (0: the cold start's)", c.EC2Rate, c.EC2Burst)
	case c.MaxAttempts < 1:
		return fmt.Errorf("max attempts %d invalid: must be 1 or more", c.MaxAttempts)
	}
	if !api.ValidFamily(c.Family) {
		return fmt.Errorf("family %q invalid: must be %s, %s or %s", c.Family, api.FamilyIPv4, api.FamilyIPv6, api.FamilyDual)
	}
	for _, k := range c.ManagedCards {
		if k < 0 {
			return fmt.Errorf("managed card %d invalid: must be 0 or more", k)
		}
	}
	for k, cc := range c.Cards {
		if k < 0 {
			return fmt.Errorf("card %d config invalid: card must be 0 or more", k)
		}
		if cc.SubnetID != "" && !strings.HasPrefix(cc.SubnetID, "subnet-") {
			return fmt.Errorf("card %d subnet %q invalid: must start with subnet-", k, cc.SubnetID)
		}
		if !api.ValidFamily(cc.Family) {
			return fmt.Errorf("card %d family %q invalid: must be %s, %s or %s", k, cc.Family, api.FamilyIPv4, api.FamilyIPv6, api.FamilyDual)
		}
		for _, g := range cc.SecurityGroupIDs {
			if !strings.HasPrefix(g, "sg-") {
				return fmt.Errorf("card %d security group %q invalid: must start with sg-", k, g)
			}
		}
	}
	return nil
}

// ParseCards parses a managed-cards flag: "" (every non-default card), "all", or a list like "1,2,5-7".
// It returns (nil, false) for "", (nil, true) for "all".
func ParseCards(s string) (cards []int, all bool, err error) {
	s = strings.TrimSpace(s)
	switch s {
	case "":
		return nil, false, nil
	case "all":
		return nil, true, nil
	}
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		lo, hi, isRange := strings.Cut(part, "-")
		a, err1 := strconv.Atoi(lo)
		b := a
		var err2 error
		if isRange {
			b, err2 = strconv.Atoi(hi)
		}
		if err1 != nil || err2 != nil || a < 0 || b < a || b > 1023 {
			return nil, false, fmt.Errorf("cards %q invalid: %q must be a card number or a range like 2-5", s, part)
		}
		for k := a; k <= b; k++ {
			cards = append(cards, k)
		}
	}
	slices.Sort(cards)
	return slices.Compact(cards), false, nil
}

// ec2 is the EC2 layer's part of the configuration.
func (c Config) ec2() awsec2.Config {
	return awsec2.Config{Rate: c.EC2Rate, Burst: or(c.EC2Burst, DefaultEC2Burst), MaxAttempts: c.MaxAttempts, BackoffBase: c.BackoffBase, BackoffMax: c.BackoffMax}
}

// ColdStartBurst is the mutating burst that lets a node's cold start go out at once: a
// CreateNetworkInterface and a ModifyNetworkInterfaceAttribute (DeleteOnTermination, once the card is
// ready unless EC2 is busy) per managed card, at least DefaultEC2Burst. A p5.48xlarge's 31 cards take 62 of the account's 100 tokens, where a burst of 10
// paced the 52 calls beyond it at 4/s, ~13 s (TestColdStartBurst); the attach class gets half as many (awsec2.Limits), one
// per card. The rate stays EC2Rate.
func ColdStartBurst(cards int) int { return max(DefaultEC2Burst, 2*cards) }

// policy is the pool policy's part of the configuration (defaults applied).
func (c Config) policy() plan.Config {
	return plan.Config{WarmTarget: *c.WarmTarget, MinFree: *c.MinFree, MaxBatch: c.MaxBatch, PrefixMode: c.PrefixMode,
		SurplusDelay: c.SurplusDelay}
}

func ptr[T any](v T) *T { return &v }

func or[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}
