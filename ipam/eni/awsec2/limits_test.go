package awsec2

import (
	"testing"

	"github.com/multinic/multinic/internal/testing/fakeec2"
)

func TestClassOf(t *testing.T) {
	for _, tc := range []struct {
		action   string
		filtered bool
		want     Class
	}{
		{"AssignPrivateIpAddresses", true, Mutating},
		{"UnassignPrivateIpAddresses", true, Mutating},
		{"CreateNetworkInterface", true, Mutating},
		{"DeleteNetworkInterface", true, Mutating},
		{"ModifyNetworkInterfaceAttribute", true, Mutating},
		{"AttachNetworkInterface", true, AttachDetach},
		{"DetachNetworkInterface", true, AttachDetach},
		{"CreateTags", true, Tags},
		{"DescribeNetworkInterfaces", true, Describe},
		{"DescribeNetworkInterfaces", false, DescribeUnfiltered},
		{"DescribeSubnets", true, Describe},
		{"DescribeInstanceTypes", true, Describe},
	} {
		if got := classOf(tc.action, tc.filtered); got != tc.want {
			t.Errorf("classOf(%s, filtered %v) = %s, want %s", tc.action, tc.filtered, got, tc.want)
		}
	}
}

// TestLimits: the default 4/s, burst 10 of the mutating class is 80% of EC2's refill and a tenth of its
// bucket in every class.
func TestLimits(t *testing.T) {
	want := map[Class]Bucket{
		Mutating:           {Burst: 10, PerSecond: 4},
		AttachDetach:       {Burst: 5, PerSecond: 4},
		Tags:               {Burst: 10, PerSecond: 8},
		Describe:           {Burst: 10, PerSecond: 16},
		DescribeUnfiltered: {Burst: 5, PerSecond: 8},
	}
	got := Limits(4, 10)
	for class, w := range want {
		if got[class] != w {
			t.Errorf("%s: %+v, want %+v", class, got[class], w)
		}
	}
	if len(got) != len(Published) {
		t.Errorf("%d classes, want %d", len(got), len(Published))
	}
	if b := Limits(1, 1)[AttachDetach]; b.Burst != 1 {
		t.Errorf("a bucket of less than one token: %+v", b)
	}
}

// TestClassesMatchFake: the fake's model of EC2 (internal/testing/fakeec2) and the agent's buckets are
// written separately on purpose, so that the fake tests the agent; they must still agree. Every action the
// fake serves, filtered or not, is in the same class on both sides (classes are matched one to one; the names
// differ) with the same published burst and rate.
func TestClassesMatchFake(t *testing.T) {
	fakeOf := map[Class]string{} // the agent's class -> the fake's
	agentOf := map[string]Class{}
	for _, action := range fakeec2.Actions() {
		for _, filtered := range []bool{true, false} {
			mine, theirs := classOf(action, filtered), fakeec2.ThrottleClass(action, filtered)
			if f, ok := fakeOf[mine]; ok && f != theirs {
				t.Errorf("%s (filtered %v): agent's class %s, fake's %s, but %s is the fake's %s elsewhere", action, filtered, mine, theirs, mine, f)
			}
			if a, ok := agentOf[theirs]; ok && a != mine {
				t.Errorf("%s (filtered %v): fake's class %s, agent's %s, but %s is the agent's %s elsewhere", action, filtered, theirs, mine, theirs, a)
			}
			fakeOf[mine], agentOf[theirs] = theirs, mine
			r, ok := fakeec2.PublishedRates[theirs]
			if !ok {
				t.Errorf("%s: the fake's class %s has no published rate", action, theirs)
			}
			if b := Published[mine]; b.Burst != r.Burst || b.PerSecond != r.PerSecond {
				t.Errorf("%s (filtered %v): agent's %s bucket %+v, fake's %s %+v", action, filtered, mine, b, theirs, r)
			}
		}
	}
	if len(fakeOf) != len(Published) || len(agentOf) != len(fakeec2.PublishedRates) {
		t.Errorf("the fake's actions reach agent classes %v and fake classes %v; want all %d and %d", fakeOf, agentOf, len(Published), len(fakeec2.PublishedRates))
	}
}
