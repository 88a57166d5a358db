package awsec2

// Class is one of EC2's throttling classes: EC2 keeps a token bucket per account and region for each, so
// the agent does too, and a burst of Describes never delays an Assign (or the reverse).
type Class string

// EC2's throttling classes (docs.aws.amazon.com/ec2/latest/devguide/ec2-api-throttling.html).
const (
	// Mutating: Assign/UnassignPrivateIpAddresses, Assign/UnassignIpv6Addresses, Create/DeleteNetworkInterface,
	// ModifyNetworkInterfaceAttribute.
	Mutating Class = "mutating"
	// AttachDetach: Attach/DetachNetworkInterface.
	AttachDetach Class = "attach-detach"
	// Tags: CreateTags (the agent tags at create time, through TagSpecification).
	Tags Class = "tags"
	// Describe: Describe* with a filter or IDs.
	Describe Class = "describe"
	// DescribeUnfiltered: DescribeNetworkInterfaces (or DescribeInstances) without filters or IDs.
	DescribeUnfiltered Class = "describe-unfiltered"
)

// Bucket is a token bucket: Burst tokens, refilled PerSecond.
type Bucket struct {
	Burst     int
	PerSecond float64
}

// Published are EC2's default buckets per class. internal/testing/fakeec2 (faults.go) writes EC2's classes
// down again on purpose: the fake is an independent model of EC2 that tests these; TestClassesMatchFake
// keeps the two in step.
var Published = map[Class]Bucket{
	Mutating:           {Burst: 100, PerSecond: 5},
	AttachDetach:       {Burst: 50, PerSecond: 5},
	Tags:               {Burst: 100, PerSecond: 10},
	Describe:           {Burst: 100, PerSecond: 20},
	DescribeUnfiltered: {Burst: 50, PerSecond: 10},
}

// Limits are the agent's buckets: the mutating class's is (mutatingRate, mutatingBurst), and every other
// class takes the same share of its published refill rate and size (at least one token), so one setting
// keeps the agent under EC2's limits in every class: the default 4/s is 80% of EC2's refill everywhere.
func Limits(mutatingRate float64, mutatingBurst int) map[Class]Bucket {
	base := Published[Mutating]
	out := make(map[Class]Bucket, len(Published))
	for class, b := range Published {
		out[class] = Bucket{
			PerSecond: mutatingRate * b.PerSecond / base.PerSecond,
			Burst:     max(1, mutatingBurst*b.Burst/base.Burst),
		}
	}
	return out
}

// classOf is the class of one call; filtered says whether a Describe names filters or IDs.
func classOf(action string, filtered bool) Class {
	switch action {
	case "AssignPrivateIpAddresses", "UnassignPrivateIpAddresses", "AssignIpv6Addresses", "UnassignIpv6Addresses", "CreateNetworkInterface",
		"DeleteNetworkInterface", "ModifyNetworkInterfaceAttribute":
		return Mutating
	case "AttachNetworkInterface", "DetachNetworkInterface":
		return AttachDetach
	case "CreateTags":
		return Tags
	case "DescribeNetworkInterfaces", "DescribeInstances":
		if !filtered {
			return DescribeUnfiltered
		}
	}
	return Describe
}
