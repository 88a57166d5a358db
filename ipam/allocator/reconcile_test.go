package allocator

import (
	"errors"
	"net/netip"
	"reflect"
	"testing"

	"github.com/multinic/multinic/ipam/api"
)

func TestCompare(t *testing.T) {
	ip := netip.MustParseAddr
	held := api.Allocation{AllocateRequest: req(1, 1), Address: ip("10.1.0.1"), ENIID: "eni-1"}
	heldX := api.Allocation{AllocateRequest: req(2, 1), Address: ip("10.1.9.1"), ENIID: "eni-x"}
	heldX.Exclusive = true
	known := []PoolAddress{
		{Card: 1, ENIID: "eni-1", Address: ip("10.1.0.1"), Allocated: true},
		{Card: 1, ENIID: "eni-1", Address: ip("10.1.0.2")},
		{Card: 1, ENIID: "eni-1", Address: ip("10.1.0.3")},
		{Card: 1, ENIID: "eni-x", Address: ip("10.1.9.1"), Exclusive: true, Allocated: true},
	}
	allocs := []api.Allocation{held, heldX}
	ec2All := []EC2Address{
		{Card: 1, ENIID: "eni-1", Address: ip("10.1.0.100"), Primary: true},
		{Card: 1, ENIID: "eni-1", Address: ip("10.1.0.1")},
		{Card: 1, ENIID: "eni-1", Address: ip("10.1.0.2")},
		{Card: 1, ENIID: "eni-1", Address: ip("10.1.0.3")},
		{Card: 1, ENIID: "eni-x", Address: ip("10.1.9.1"), Primary: true},
	}
	without := func(drop ...string) []EC2Address {
		var out []EC2Address
	next:
		for _, e := range ec2All {
			for _, d := range drop {
				if e.Address == ip(d) {
					continue next
				}
			}
			out = append(out, e)
		}
		return out
	}
	for _, tc := range []struct {
		name string
		ec2  []EC2Address
		want Diff
	}{
		{name: "in sync", ec2: ec2All},
		{name: "held address gone", ec2: without("10.1.0.1"), want: Diff{Lost: []api.Allocation{held}}},
		{name: "exclusive ENI gone", ec2: without("10.1.9.1"), want: Diff{Lost: []api.Allocation{heldX}}},
		{name: "free address gone", ec2: without("10.1.0.3"), want: Diff{Stale: []PoolAddress{known[2]}}},
		{name: "new addresses", ec2: append(without(),
			EC2Address{Card: 1, ENIID: "eni-1", Address: ip("10.1.0.9")},
			EC2Address{Card: 1, ENIID: "eni-1", Address: ip("10.1.0.9")}, // listed twice: added once
			EC2Address{Card: 1, ENIID: "eni-x", Address: ip("10.1.9.2")}, // on an exclusive ENI: not pooled
			EC2Address{Card: 2, ENIID: "eni-2", Address: ip("10.2.0.7")},
			EC2Address{Card: 2, ENIID: "eni-2", Address: ip("10.2.0.100"), Primary: true},
		), want: Diff{Unknown: []EC2Address{
			{Card: 1, ENIID: "eni-1", Address: ip("10.1.0.9")},
			{Card: 2, ENIID: "eni-2", Address: ip("10.2.0.7")},
		}}},
		{name: "address moved to another ENI", ec2: append(without("10.1.0.2", "10.1.0.1"),
			EC2Address{Card: 1, ENIID: "eni-9", Address: ip("10.1.0.2")},
			EC2Address{Card: 1, ENIID: "eni-9", Address: ip("10.1.0.1")},
		), want: Diff{Lost: []api.Allocation{held}, Stale: []PoolAddress{known[1]}}},
		{name: "EC2 reports nothing", ec2: nil, want: Diff{
			Lost: []api.Allocation{held, heldX}, Stale: []PoolAddress{known[1], known[2]}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := Compare(known, allocs, tc.ec2)
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("Compare:\n got %+v\nwant %+v", got, tc.want)
			}
			if got.Empty() != (tc.name == "in sync") {
				t.Errorf("Empty() = %v", got.Empty())
			}
		})
	}
}

func TestReconcile(t *testing.T) {
	a, _, _ := newTest(t)
	addrs := seed(t, a, 1, 3)
	held := mustAllocate(t, a, req(1, 1)) // addrs[0]
	ec2 := []EC2Address{
		{Card: 1, ENIID: eni(1), Address: addrs[1]},
		{Card: 1, ENIID: eni(1), Address: addr(1, 10)},
	}
	d, err := a.Reconcile(ec2)
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Lost) != 1 || d.Lost[0] != held || len(d.Stale) != 1 || d.Stale[0].Address != addrs[2] ||
		len(d.Unknown) != 1 || d.Unknown[0].Address != addr(1, 10) {
		t.Fatalf("diff %+v", d)
	}
	// Lost allocations stay; stale removed; unknown added as warm.
	if _, ok := a.Lookup("sandbox-1", "net1"); !ok {
		t.Error("reconcile released a lost allocation")
	}
	if s := a.Stats(1); s.Counts != (Counts{Capacity: 3, Allocated: 1, Warm: 2}) {
		t.Errorf("stats %+v", s.Counts)
	}
	// A second pass over the same EC2 view only reports the lost allocation again.
	d, err = a.Reconcile(ec2)
	if err != nil || len(d.Lost) != 1 || len(d.Stale)+len(d.Unknown) != 0 {
		t.Fatalf("second pass: %+v %v", d, err)
	}
	if _, err := a.Reconcile([]EC2Address{{Card: 1, Address: addr(1, 11)}}); !errors.Is(err, api.ErrInvalid) {
		t.Errorf("reconcile with an ENI-less address: %v, want api.ErrInvalid", err)
	}
}
