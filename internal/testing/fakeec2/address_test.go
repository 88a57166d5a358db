package fakeec2

import (
	"net/netip"
	"slices"
	"sync"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
)

func TestPool(t *testing.T) {
	tests := []struct {
		cidr       string
		usable     int
		first      string
		prefixes   int // /28 blocks free of reserved addresses in an empty subnet
		firstBlock string
	}{
		{"10.0.0.0/28", 11, "10.0.0.4", 0, ""},
		{"10.0.0.0/27", 27, "10.0.0.4", 0, ""},
		{"10.0.0.0/26", 59, "10.0.0.4", 2, "10.0.0.16/28"},
		{"10.1.16.0/20", 4091, "10.1.16.4", 254, "10.1.16.16/28"},
	}
	for _, tc := range tests {
		t.Run(tc.cidr, func(t *testing.T) {
			p := newPool(netip.MustParsePrefix(tc.cidr))
			if p.usable() != tc.usable || p.free() != tc.usable {
				t.Fatalf("usable %d free %d, want %d", p.usable(), p.free(), tc.usable)
			}
			a, ok := p.allocIP("eni-a")
			if !ok || a.String() != tc.first {
				t.Fatalf("first address %s, want %s", a, tc.first)
			}
			p.releaseIP(a)
			var got []netip.Prefix
			for {
				pfx, ok := p.allocPrefix("eni-a")
				if !ok {
					break
				}
				got = append(got, pfx)
			}
			if len(got) != tc.prefixes || (tc.prefixes > 0 && got[0].String() != tc.firstBlock) {
				t.Fatalf("prefixes %v, want %d starting %s", got, tc.prefixes, tc.firstBlock)
			}
			for _, pfx := range got {
				p.releasePrefix(pfx)
			}
			var all []netip.Addr
			for {
				a, ok := p.allocIP("eni-b")
				if !ok {
					break
				}
				all = append(all, a)
			}
			if len(all) != tc.usable || p.free() != 0 {
				t.Fatalf("allocated %d, free %d", len(all), p.free())
			}
			last := all[len(all)-1]
			if !last.Next().IsValid() || netip.MustParsePrefix(tc.cidr).Contains(last.Next().Next()) {
				t.Fatalf("last address %s is not broadcast-1", last)
			}
		})
	}
}

func TestSubnetExhaustionAndReuse(t *testing.T) {
	cfg := Config{Subnets: []SubnetConfig{{ID: "subnet-0main00000000000", CIDR: "10.0.0.0/20"}, {ID: "subnet-0small0000000000", CIDR: "10.0.100.0/27"}}}
	f := start(t, cfg)
	small := "subnet-0small0000000000"
	// 32 - 5 reserved = 27 usable: ENI primary + 26 secondaries fills it.
	e := aws.ToString(f.createENI(t, small).NetworkInterfaceId)
	if _, err := f.ec2.AssignPrivateIpAddresses(ctx(t), &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: aws.String(e), SecondaryPrivateIpAddressCount: aws.Int32(26)}); err != nil {
		t.Fatal(err)
	}
	sub, err := f.ec2.DescribeSubnets(ctx(t), &ec2.DescribeSubnetsInput{SubnetIds: []string{small}})
	if err != nil || aws.ToInt32(sub.Subnets[0].AvailableIpAddressCount) != 0 {
		t.Fatalf("availableIpAddressCount: %v %+v", err, sub)
	}
	_, err = f.noRetry.AssignPrivateIpAddresses(ctx(t), &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: aws.String(e), SecondaryPrivateIpAddressCount: aws.Int32(1)})
	wantCode(t, err, "InsufficientFreeAddressesInSubnet", 400)
	_, err = f.noRetry.CreateNetworkInterface(ctx(t), &ec2.CreateNetworkInterfaceInput{SubnetId: aws.String(small)})
	wantCode(t, err, "InsufficientFreeAddressesInSubnet", 400)

	st, _ := f.srv.State().ENI(e)
	freed := st.SecondaryIPs[10:13]
	if _, err := f.ec2.UnassignPrivateIpAddresses(ctx(t), &ec2.UnassignPrivateIpAddressesInput{NetworkInterfaceId: aws.String(e), PrivateIpAddresses: freed}); err != nil {
		t.Fatal(err)
	}
	sub, _ = f.ec2.DescribeSubnets(ctx(t), &ec2.DescribeSubnetsInput{SubnetIds: []string{small}})
	if n := aws.ToInt32(sub.Subnets[0].AvailableIpAddressCount); n != 3 {
		t.Fatalf("available %d after freeing 3", n)
	}
	// The freed addresses are the only free ones, so they are what a new ENI gets.
	other := f.createENI(t, small, func(in *ec2.CreateNetworkInterfaceInput) { in.SecondaryPrivateIpAddressCount = aws.Int32(2) })
	got := addrs2(other.PrivateIpAddresses)
	slices.Sort(got)
	want := slices.Clone(freed)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("new ENI got %v, want the freed %v", got, want)
	}
	checkInvariants(t, f.srv.State())
}

// TestConcurrentAssignUnassign hammers one subnet from many goroutines and then
// checks that no address ended up with two owners and the counters agree.
func TestConcurrentAssignUnassign(t *testing.T) {
	cfg := Config{Subnets: []SubnetConfig{{ID: "subnet-0main00000000000", CIDR: "10.0.0.0/18"}}}
	f := start(t, cfg)
	// At peak a worker holds up to 28 addresses: 200 of them need more than a /20.
	const workers = 200
	enis := make([]string, workers)
	for i := range enis {
		enis[i] = aws.ToString(f.createENI(t, "subnet-0main00000000000").NetworkInterfaceId)
	}
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := enis[w]
			for round := range 8 {
				in := &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: aws.String(id), SecondaryPrivateIpAddressCount: aws.Int32(3)}
				if round%4 == 3 {
					in = &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: aws.String(id), Ipv4PrefixCount: aws.Int32(1)}
				}
				out, err := f.ec2.AssignPrivateIpAddresses(ctx(t), in)
				if err != nil {
					errs <- err
					return
				}
				if round%2 == 1 {
					un := &ec2.UnassignPrivateIpAddressesInput{NetworkInterfaceId: aws.String(id), PrivateIpAddresses: addrs(out.AssignedPrivateIpAddresses)}
					for _, p := range out.AssignedIpv4Prefixes {
						un.Ipv4Prefixes = append(un.Ipv4Prefixes, aws.ToString(p.Ipv4Prefix))
					}
					if _, err := f.ec2.UnassignPrivateIpAddresses(ctx(t), un); err != nil {
						errs <- err
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("worker: %v", err)
	}
	st := f.srv.State()
	checkInvariants(t, st)
	total := 0
	for _, e := range st.ENIs {
		total += len(e.SecondaryIPs) + 16*len(e.Prefixes)
	}
	// Rounds 0 and 2 keep 3 addresses each; rounds 1, 3, 5, 7 give theirs back; 4 and 6 keep 3 each.
	if want := workers * 12; total != want {
		t.Fatalf("%d secondary addresses held, want %d", total, want)
	}
}
