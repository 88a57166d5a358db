package fakeec2

import (
	"cmp"
	"math/rand/v2"
	"net/http"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Throttle classes, as EC2 documents its per-account token buckets. The agent's buckets
// (ipam/eni/awsec2/limits.go) are written separately on purpose: this is the fake's own model of EC2, which
// tests the agent's; awsec2's TestClassesMatchFake keeps the two in step.
const (
	ClassMutate             = "mutate"              // Assign/Unassign(Ipv6|PrivateIp)Addresses, Create/Delete/ModifyNetworkInterfaceAttribute
	ClassAttach             = "attach"              // Attach/DetachNetworkInterface
	ClassTags               = "tags"                // CreateTags
	ClassDescribe           = "describe"            // filtered Describe*
	ClassDescribeUnfiltered = "describe-unfiltered" // DescribeInstances/DescribeNetworkInterfaces without filters or IDs
)

// PublishedRates are EC2's default bucket sizes and refill rates.
var PublishedRates = map[string]Rate{
	ClassMutate:             {Burst: 100, PerSecond: 5},
	ClassAttach:             {Burst: 50, PerSecond: 5},
	ClassTags:               {Burst: 100, PerSecond: 10},
	ClassDescribe:           {Burst: 100, PerSecond: 20},
	ClassDescribeUnfiltered: {Burst: 50, PerSecond: 10},
}

// MutatingAction says whether action is in EC2's mutating throttle class (ClassMutate).
func MutatingAction(action string) bool { return throttleClass(action, query{}) == ClassMutate }

// ThrottleClass is the class a call of action counts against; filtered says whether the call names filters
// (only DescribeInstances and DescribeNetworkInterfaces without filters or IDs are ClassDescribeUnfiltered).
func ThrottleClass(action string, filtered bool) string {
	q := query{}
	if filtered {
		q["Filter.1.Name"] = []string{"filtered"}
	}
	return throttleClass(action, q)
}

func throttleClass(action string, q query) string {
	switch action {
	case "AssignPrivateIpAddresses", "UnassignPrivateIpAddresses", "AssignIpv6Addresses", "UnassignIpv6Addresses", "CreateNetworkInterface",
		"DeleteNetworkInterface", "ModifyNetworkInterfaceAttribute":
		return ClassMutate
	case "AttachNetworkInterface", "DetachNetworkInterface":
		return ClassAttach
	case "CreateTags":
		return ClassTags
	case "DescribeInstances":
		if q.count("Filter") == 0 && len(q.list("InstanceId")) == 0 {
			return ClassDescribeUnfiltered
		}
	case "DescribeNetworkInterfaces":
		if q.count("Filter") == 0 && len(q.list("NetworkInterfaceId")) == 0 {
			return ClassDescribeUnfiltered
		}
	}
	return ClassDescribe
}

// faults holds the live fault settings; it has its own lock so faults never wait on state. The buckets are
// the server's, not an instance's: a Server is one account's region, and EC2 counts every instance's calls
// against the account's buckets (TestThrottleAccountWide).
type faults struct {
	mu      sync.Mutex
	cfg     Faults
	buckets map[string]*rate.Limiter // by class or action name
	rng     *rand.Rand
	calls   map[string]map[string]int // action -> "ok" or error code -> count
	denySet map[string]bool
}

func newFaults(cfg Faults, seed uint64) *faults {
	f := &faults{rng: rand.New(rand.NewPCG(seed, seed^0x5eed)), calls: map[string]map[string]int{}}
	f.set(cfg)
	return f
}

func (f *faults) set(cfg Faults) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cfg = cfg
	f.buckets = map[string]*rate.Limiter{}
	if cfg.Throttle {
		for class, r := range PublishedRates {
			f.buckets[class] = rate.NewLimiter(rate.Limit(r.PerSecond), r.Burst)
		}
	}
	for name, r := range cfg.Rates {
		f.buckets[name] = rate.NewLimiter(rate.Limit(r.PerSecond), r.Burst)
	}
	f.denySet = map[string]bool{}
	for _, a := range cfg.Deny {
		f.denySet[a] = true
	}
}

func (f *faults) latency(action string) time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	if d, ok := f.cfg.ActionLatency[action]; ok {
		return time.Duration(d)
	}
	return time.Duration(f.cfg.Latency)
}

// imdsFault is the HTTP status an injected Errors["IMDS.Get"] fault answers a metadata read with (its
// Status, default 503: IMDS has no error codes), or 0. Only that key applies: "*" is EC2's.
func (f *faults) imdsFault() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	ef, ok := f.cfg.Errors["IMDS.Get"]
	if !ok || f.rng.Float64() >= ef.Rate {
		return 0
	}
	return cmp.Or(ef.Status, http.StatusServiceUnavailable)
}

// check decides whether a call fails before it reaches the state: throttled,
// denied or hit by an injected error.
func (f *faults) check(action, class string) *apiError {
	f.mu.Lock()
	defer f.mu.Unlock()
	b, ok := f.buckets[action]
	if !ok {
		b, ok = f.buckets[class]
	}
	if ok && !b.Allow() {
		return newErr("RequestLimitExceeded", "Request limit exceeded.")
	}
	if f.denySet[action] {
		return newErr("UnauthorizedOperation", "You are not authorized to perform this operation. User is not authorized to perform: ec2:%s", action)
	}
	ef, ok := f.cfg.Errors[action]
	if !ok {
		ef, ok = f.cfg.Errors["*"]
	}
	if ok && f.rng.Float64() < ef.Rate {
		e := newErr(ef.Code, "%s", cmp.Or(ef.Message, defaultMessage(ef.Code)))
		if ef.Status != 0 {
			e.Status = ef.Status
		}
		return e
	}
	return nil
}

func (f *faults) count(action, result string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	m := f.calls[action]
	if m == nil {
		m = map[string]int{}
		f.calls[action] = m
	}
	m[result]++
}

func (f *faults) snapshot() map[string]map[string]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make(map[string]map[string]int, len(f.calls))
	for a, m := range f.calls {
		c := make(map[string]int, len(m))
		for k, v := range m {
			c[k] = v
		}
		out[a] = c
	}
	return out
}
