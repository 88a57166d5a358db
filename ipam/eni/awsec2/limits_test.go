package awsec2

import "testing"

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
