package fakeec2

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
)

// Expected IPv6 blocks come from the documented layout (the VPC's /56 is 2001:db8:ec2::/56, subnet k its
// k-th /64), not from the code that computes them.
func card64(k int) string {
	return netip.MustParsePrefix(fmt.Sprintf("2001:db8:ec2:%x::/64", k)).String() // canonical: card 0 is 2001:db8:ec2::/64
}

func v6addrs(l []types.NetworkInterfaceIpv6Address) []string {
	var out []string
	for _, a := range l {
		out = append(out, aws.ToString(a.Ipv6Address))
	}
	return out
}

func v6prefixes(l []types.Ipv6PrefixSpecification) []string {
	var out []string
	for _, p := range l {
		out = append(out, aws.ToString(p.Ipv6Prefix))
	}
	return out
}

func (f *fixture) assign6(t *testing.T, in *ec2.AssignIpv6AddressesInput) *ec2.AssignIpv6AddressesOutput {
	t.Helper()
	out, err := f.ec2.AssignIpv6Addresses(ctx(t), in)
	if err != nil {
		t.Fatalf("assign IPv6 to %s: %v", aws.ToString(in.NetworkInterfaceId), err)
	}
	return out
}

// inside fails unless every address or prefix in vs lies in block p.
func inside(t *testing.T, p string, vs []string) {
	t.Helper()
	pp := netip.MustParsePrefix(p)
	for _, v := range vs {
		if a, err := netip.ParseAddr(v); err == nil {
			if !pp.Contains(a) {
				t.Errorf("%s outside %s", a, pp)
			}
			continue
		}
		x := netip.MustParsePrefix(v)
		if x.Bits() != 80 || x.Masked() != x || !pp.Contains(x.Addr()) {
			t.Errorf("%s is not an aligned /80 in %s", x, pp)
		}
	}
}

func TestDescribeSubnetsIPv6(t *testing.T) {
	cfg := perCard(t, "trn1.32xlarge")
	cfg.Subnets = append(cfg.Subnets, SubnetConfig{ID: "subnet-0v4only000000", CIDR: "10.0.200.0/24", IPv4Only: true})
	f := start(t, cfg)
	out, err := f.ec2.DescribeSubnets(ctx(t), &ec2.DescribeSubnetsInput{})
	if err != nil {
		t.Fatal(err)
	}
	assocs := map[string]bool{}
	for i, sn := range out.Subnets {
		if aws.ToString(sn.SubnetId) == "subnet-0v4only000000" {
			if len(sn.Ipv6CidrBlockAssociationSet) != 0 {
				t.Errorf("IPv4-only subnet has IPv6 blocks %+v", sn.Ipv6CidrBlockAssociationSet)
			}
			continue
		}
		if len(sn.Ipv6CidrBlockAssociationSet) != 1 {
			t.Fatalf("%s: %d IPv6 blocks, want 1", aws.ToString(sn.SubnetId), len(sn.Ipv6CidrBlockAssociationSet))
		}
		a := sn.Ipv6CidrBlockAssociationSet[0]
		if aws.ToString(a.Ipv6CidrBlock) != card64(i) || a.Ipv6CidrBlockState == nil || a.Ipv6CidrBlockState.State != types.SubnetCidrBlockStateCodeAssociated ||
			!strings.HasPrefix(aws.ToString(a.AssociationId), "subnet-cidr-assoc-") || assocs[aws.ToString(a.AssociationId)] {
			t.Errorf("%s: IPv6 block %s state %+v association %s, want %s associated with a unique ID", aws.ToString(sn.SubnetId),
				aws.ToString(a.Ipv6CidrBlock), a.Ipv6CidrBlockState, aws.ToString(a.AssociationId), card64(i))
		}
		assocs[aws.ToString(a.AssociationId)] = true
		if aws.ToBool(sn.Ipv6Native) || aws.ToBool(sn.AssignIpv6AddressOnCreation) {
			t.Errorf("%s: ipv6Native %v assignIpv6AddressOnCreation %v, want false (dual stack, no address unless asked)", aws.ToString(sn.SubnetId),
				aws.ToBool(sn.Ipv6Native), aws.ToBool(sn.AssignIpv6AddressOnCreation))
		}
	}
	filter := func(name string, values ...string) []string {
		t.Helper()
		out, err := f.ec2.DescribeSubnets(ctx(t), &ec2.DescribeSubnetsInput{Filters: []types.Filter{{Name: aws.String(name), Values: values}}})
		if err != nil {
			t.Fatalf("filter %s: %v", name, err)
		}
		var ids []string
		for _, sn := range out.Subnets {
			ids = append(ids, aws.ToString(sn.SubnetId))
		}
		return ids
	}
	if got := filter("ipv6-cidr-block-association.ipv6-cidr-block", card64(3)); !slices.Equal(got, []string{CardSubnetID(3)}) {
		t.Errorf("filter by IPv6 block %s: %v", card64(3), got)
	}
	card5 := out.Subnets[5].Ipv6CidrBlockAssociationSet[0].AssociationId
	if got := filter("ipv6-cidr-block-association.association-id", aws.ToString(card5)); !slices.Equal(got, []string{CardSubnetID(5)}) {
		t.Errorf("filter by association ID: %v", got)
	}
	if got := filter("ipv6-cidr-block-association.state", "associated"); len(got) != 8 || slices.Contains(got, "subnet-0v4only000000") {
		t.Errorf("filter by state associated: %v, want the 8 card subnets", got)
	}
	if got := filter("ipv6-native", "false"); len(got) != 9 {
		t.Errorf("filter ipv6-native=false: %v, want all 9", got)
	}
}

func TestAssignUnassignIPv6(t *testing.T) {
	f := start(t, perCard(t, "trn1.32xlarge"))
	e := f.createENI(t, CardSubnetID(1))
	id := aws.ToString(e.NetworkInterfaceId)
	if len(e.Ipv6Addresses) != 0 || len(e.Ipv6Prefixes) != 0 {
		t.Fatalf("a plain create got IPv6: %+v %+v", e.Ipv6Addresses, e.Ipv6Prefixes)
	}
	f.attach(t, id, 1, 1)

	out := f.assign6(t, &ec2.AssignIpv6AddressesInput{NetworkInterfaceId: aws.String(id), Ipv6AddressCount: aws.Int32(2)})
	byCount := out.AssignedIpv6Addresses
	if aws.ToString(out.NetworkInterfaceId) != id || len(byCount) != 2 || byCount[0] == byCount[1] || len(out.AssignedIpv6Prefixes) != 0 {
		t.Fatalf("assign 2 addresses: %+v", out)
	}
	inside(t, card64(1), byCount)
	out = f.assign6(t, &ec2.AssignIpv6AddressesInput{NetworkInterfaceId: aws.String(id), Ipv6PrefixCount: aws.Int32(2)})
	byPrefixCount := out.AssignedIpv6Prefixes
	if len(byPrefixCount) != 2 || len(out.AssignedIpv6Addresses) != 0 {
		t.Fatalf("assign 2 prefixes: %+v", out)
	}
	inside(t, card64(1), byPrefixCount)
	// Explicit ones: the response lists only the new ones.
	out = f.assign6(t, &ec2.AssignIpv6AddressesInput{NetworkInterfaceId: aws.String(id), Ipv6Addresses: []string{"2001:db8:ec2:1::100", "2001:db8:ec2:1::101"}})
	if !slices.Equal(out.AssignedIpv6Addresses, []string{"2001:db8:ec2:1::100", "2001:db8:ec2:1::101"}) {
		t.Fatalf("assign explicit addresses returned %v", out.AssignedIpv6Addresses)
	}
	out = f.assign6(t, &ec2.AssignIpv6AddressesInput{NetworkInterfaceId: aws.String(id), Ipv6Prefixes: []string{"2001:db8:ec2:1:abcd::/80"}})
	if !slices.Equal(out.AssignedIpv6Prefixes, []string{"2001:db8:ec2:1:abcd::/80"}) {
		t.Fatalf("assign explicit prefix returned %v", out.AssignedIpv6Prefixes)
	}

	d := f.describeENI(t, id)
	wantAddrs := append(slices.Clone(byCount), "2001:db8:ec2:1::100", "2001:db8:ec2:1::101")
	wantPrefixes := append(slices.Clone(byPrefixCount), "2001:db8:ec2:1:abcd::/80")
	if got := v6addrs(d.Ipv6Addresses); !slices.Equal(got, wantAddrs) {
		t.Errorf("described IPv6 addresses %v, want %v", got, wantAddrs)
	}
	if got := v6prefixes(d.Ipv6Prefixes); !slices.Equal(got, wantPrefixes) {
		t.Errorf("described IPv6 prefixes %v, want %v", got, wantPrefixes)
	}
	for _, a := range d.Ipv6Addresses {
		if aws.ToBool(a.IsPrimaryIpv6) {
			t.Errorf("%s is primary: fake-ec2 has no primary IPv6", aws.ToString(a.Ipv6Address))
		}
	}
	if len(d.PrivateIpAddresses) != 1 || len(d.Ipv4Prefixes) != 0 {
		t.Errorf("IPv6 changed IPv4: %+v %+v", d.PrivateIpAddresses, d.Ipv4Prefixes)
	}
	// The filter EC2 documents for DescribeNetworkInterfaces, and DescribeInstances with its ENIs.
	found, err := f.ec2.DescribeNetworkInterfaces(ctx(t), &ec2.DescribeNetworkInterfacesInput{Filters: []types.Filter{
		{Name: aws.String("ipv6-addresses.ipv6-address"), Values: []string{"2001:db8:ec2:1::101"}}}})
	if err != nil || len(found.NetworkInterfaces) != 1 || aws.ToString(found.NetworkInterfaces[0].NetworkInterfaceId) != id {
		t.Errorf("filter by IPv6 address: %v %+v", err, found)
	}
	insts, err := f.ec2.DescribeInstances(ctx(t), &ec2.DescribeInstancesInput{Filters: []types.Filter{
		{Name: aws.String("network-interface.ipv6-prefixes.ipv6-prefix"), Values: []string{"2001:db8:ec2:1:abcd::/80"}},
		{Name: aws.String("network-interface.ipv6-addresses.ipv6-address"), Values: []string{byCount[0]}}}})
	if err != nil || len(insts.Reservations) != 1 {
		t.Fatalf("describe instances by IPv6: %v %+v", err, insts)
	}
	for _, ni := range insts.Reservations[0].Instances[0].NetworkInterfaces {
		if aws.ToString(ni.NetworkInterfaceId) != id {
			continue
		}
		var gotA, gotP []string
		for _, a := range ni.Ipv6Addresses {
			gotA = append(gotA, aws.ToString(a.Ipv6Address))
		}
		for _, p := range ni.Ipv6Prefixes {
			gotP = append(gotP, aws.ToString(p.Ipv6Prefix))
		}
		if !slices.Equal(gotA, wantAddrs) || !slices.Equal(gotP, wantPrefixes) {
			t.Errorf("DescribeInstances ENI IPv6 %v %v, want %v %v", gotA, gotP, wantAddrs, wantPrefixes)
		}
	}
	checkInvariants(t, f.srv.State())

	un, err := f.ec2.UnassignIpv6Addresses(ctx(t), &ec2.UnassignIpv6AddressesInput{NetworkInterfaceId: aws.String(id),
		Ipv6Addresses: []string{byCount[0], "2001:db8:ec2:1::100"}, Ipv6Prefixes: []string{"2001:db8:ec2:1:abcd::/80"}})
	if err != nil {
		t.Fatal(err)
	}
	if aws.ToString(un.NetworkInterfaceId) != id || !slices.Equal(un.UnassignedIpv6Addresses, []string{byCount[0], "2001:db8:ec2:1::100"}) ||
		!slices.Equal(un.UnassignedIpv6Prefixes, []string{"2001:db8:ec2:1:abcd::/80"}) {
		t.Fatalf("unassign answered %+v", un)
	}
	d = f.describeENI(t, id)
	if got := v6addrs(d.Ipv6Addresses); !slices.Equal(got, []string{byCount[1], "2001:db8:ec2:1::101"}) {
		t.Errorf("after unassign: addresses %v", got)
	}
	if got := v6prefixes(d.Ipv6Prefixes); !slices.Equal(got, byPrefixCount) {
		t.Errorf("after unassign: prefixes %v", got)
	}
	// What was freed can be assigned again.
	f.assign6(t, &ec2.AssignIpv6AddressesInput{NetworkInterfaceId: aws.String(id), Ipv6Addresses: []string{"2001:db8:ec2:1::100"}})
	f.assign6(t, &ec2.AssignIpv6AddressesInput{NetworkInterfaceId: aws.String(id), Ipv6Prefixes: []string{"2001:db8:ec2:1:abcd::/80"}})
	checkInvariants(t, f.srv.State())

	// Deleting the ENI gives everything back to the subnet.
	other := aws.ToString(f.createENI(t, CardSubnetID(2)).NetworkInterfaceId)
	f.assign6(t, &ec2.AssignIpv6AddressesInput{NetworkInterfaceId: aws.String(other), Ipv6Prefixes: []string{"2001:db8:ec2:2:77::/80"}})
	if _, err := f.ec2.DeleteNetworkInterface(ctx(t), &ec2.DeleteNetworkInterfaceInput{NetworkInterfaceId: aws.String(other)}); err != nil {
		t.Fatal(err)
	}
	again := aws.ToString(f.createENI(t, CardSubnetID(2)).NetworkInterfaceId)
	f.assign6(t, &ec2.AssignIpv6AddressesInput{NetworkInterfaceId: aws.String(again), Ipv6Prefixes: []string{"2001:db8:ec2:2:77::/80"}})
}

func TestCreateNetworkInterfaceIPv6(t *testing.T) {
	f := start(t, perCard(t, "trn1.32xlarge"))
	byCount := f.createENI(t, CardSubnetID(2), func(in *ec2.CreateNetworkInterfaceInput) {
		in.Ipv6AddressCount = aws.Int32(3)
		in.SecondaryPrivateIpAddressCount = aws.Int32(1)
	})
	if len(byCount.Ipv6Addresses) != 3 || len(byCount.PrivateIpAddresses) != 2 {
		t.Fatalf("create with 3 IPv6 and 1 secondary IPv4: %+v %+v", byCount.Ipv6Addresses, byCount.PrivateIpAddresses)
	}
	inside(t, card64(2), v6addrs(byCount.Ipv6Addresses))
	byPrefix := f.createENI(t, CardSubnetID(2), func(in *ec2.CreateNetworkInterfaceInput) { in.Ipv6PrefixCount = aws.Int32(2) })
	if len(byPrefix.Ipv6Prefixes) != 2 || len(byPrefix.Ipv6Addresses) != 0 {
		t.Fatalf("create with 2 /80s: %+v", byPrefix.Ipv6Prefixes)
	}
	inside(t, card64(2), v6prefixes(byPrefix.Ipv6Prefixes))
	explicit := f.createENI(t, CardSubnetID(2), func(in *ec2.CreateNetworkInterfaceInput) {
		in.Ipv6Addresses = []types.InstanceIpv6Address{{Ipv6Address: aws.String("2001:db8:ec2:2::42")}}
	})
	if got := v6addrs(explicit.Ipv6Addresses); !slices.Equal(got, []string{"2001:db8:ec2:2::42"}) {
		t.Fatalf("create with an explicit address: %v", got)
	}
	explicitPrefix := f.createENI(t, CardSubnetID(2), func(in *ec2.CreateNetworkInterfaceInput) {
		in.Ipv6Prefixes = []types.Ipv6PrefixSpecificationRequest{{Ipv6Prefix: aws.String("2001:db8:ec2:2:42::/80")}}
	})
	if got := v6prefixes(explicitPrefix.Ipv6Prefixes); !slices.Equal(got, []string{"2001:db8:ec2:2:42::/80"}) {
		t.Fatalf("create with an explicit prefix: %v", got)
	}
	// The response of a create is what Describe shows.
	if got := v6addrs(f.describeENI(t, aws.ToString(byCount.NetworkInterfaceId)).Ipv6Addresses); !slices.Equal(got, v6addrs(byCount.Ipv6Addresses)) {
		t.Errorf("describe %v, create said %v", got, v6addrs(byCount.Ipv6Addresses))
	}

	// A failed create leaves nothing behind: not the ENI, not its IPv4 address.
	before := f.srv.State()
	_, err := f.noRetry.CreateNetworkInterface(ctx(t), &ec2.CreateNetworkInterfaceInput{SubnetId: aws.String(CardSubnetID(2)),
		Ipv6Addresses: []types.InstanceIpv6Address{{Ipv6Address: aws.String("2001:db8:ec2:2::42")}}})
	wantCode(t, err, "InvalidIPAddress.InUse", 400)
	after := f.srv.State()
	sb, _ := before.Subnet(CardSubnetID(2))
	sa, _ := after.Subnet(CardSubnetID(2))
	if len(after.ENIs) != len(before.ENIs) || sa.Used != sb.Used {
		t.Errorf("failed create left %d ENIs (was %d), %d IPv4 used (was %d)", len(after.ENIs), len(before.ENIs), sa.Used, sb.Used)
	}
	// A retried create (same client token) does not allocate twice.
	in := &ec2.CreateNetworkInterfaceInput{SubnetId: aws.String(CardSubnetID(2)), ClientToken: aws.String("tok-6"), Ipv6AddressCount: aws.Int32(2)}
	a, err := f.ec2.CreateNetworkInterface(ctx(t), in)
	if err != nil {
		t.Fatal(err)
	}
	b, err := f.ec2.CreateNetworkInterface(ctx(t), in)
	if err != nil {
		t.Fatal(err)
	}
	if aws.ToString(a.NetworkInterface.NetworkInterfaceId) != aws.ToString(b.NetworkInterface.NetworkInterfaceId) ||
		!slices.Equal(v6addrs(a.NetworkInterface.Ipv6Addresses), v6addrs(b.NetworkInterface.Ipv6Addresses)) {
		t.Errorf("retried create: %v then %v", v6addrs(a.NetworkInterface.Ipv6Addresses), v6addrs(b.NetworkInterface.Ipv6Addresses))
	}
	checkInvariants(t, f.srv.State())
}

// TestIPv6Errors provokes every IPv6 error and reads it back through the SDK.
func TestIPv6Errors(t *testing.T) {
	cfg := perCard(t, "trn1.32xlarge")
	cfg.Subnets = append(cfg.Subnets,
		SubnetConfig{ID: "subnet-0v4only000000", CIDR: "10.0.200.0/24", IPv4Only: true},
		// A /78 has four /80s; the first and the last hold reserved addresses, so two are usable.
		SubnetConfig{ID: "subnet-0four800000000", CIDR: "10.0.201.0/24", IPv6CIDR: "2001:db8:ec2:f0::/78"},
		// 2^8 - 5 reserved = 251 addresses, no /80 at all.
		SubnetConfig{ID: "subnet-0tiny6000000000", CIDR: "10.0.202.0/24", IPv6CIDR: "2001:db8:ec2:f1::/120"})
	cfg.Instances = append(cfg.Instances, InstanceConfig{ID: "i-0m5large00000000", Type: "m5.large"})
	f := start(t, cfg)
	c := f.noRetry
	m5 := &fixture{srv: f.srv, ec2: f.ec2, noRetry: f.noRetry, inst: "i-0m5large00000000"}

	v4only := aws.ToString(f.createENI(t, "subnet-0v4only000000").NetworkInterfaceId)
	holder := aws.ToString(f.createENI(t, CardSubnetID(1)).NetworkInterfaceId)
	f.assign6(t, &ec2.AssignIpv6AddressesInput{NetworkInterfaceId: aws.String(holder), Ipv6Addresses: []string{"2001:db8:ec2:1::10"}})
	f.assign6(t, &ec2.AssignIpv6AddressesInput{NetworkInterfaceId: aws.String(holder), Ipv6Addresses: []string{"2001:db8:ec2:1:7::1"}})
	f.assign6(t, &ec2.AssignIpv6AddressesInput{NetworkInterfaceId: aws.String(holder), Ipv6Prefixes: []string{"2001:db8:ec2:1:5::/80"}})
	spare := aws.ToString(f.createENI(t, CardSubnetID(1)).NetworkInterfaceId)
	// m5.large: 10 IPv6 per interface; 8 addresses and 2 /80s fill it.
	full := aws.ToString(f.createENI(t, CardSubnetID(0)).NetworkInterfaceId)
	m5.attach(t, full, 0, 1)
	f.assign6(t, &ec2.AssignIpv6AddressesInput{NetworkInterfaceId: aws.String(full), Ipv6AddressCount: aws.Int32(8)})
	f.assign6(t, &ec2.AssignIpv6AddressesInput{NetworkInterfaceId: aws.String(full), Ipv6PrefixCount: aws.Int32(2)})
	// 11 on an unattached ENI is fine (limit 50) but too many for an m5.large.
	eleven := aws.ToString(f.createENI(t, CardSubnetID(0), func(in *ec2.CreateNetworkInterfaceInput) { in.Ipv6AddressCount = aws.Int32(11) }).NetworkInterfaceId)

	assign := func(in ec2.AssignIpv6AddressesInput) func() error {
		return func() error { _, err := c.AssignIpv6Addresses(ctx(t), &in); return err }
	}
	create := func(in ec2.CreateNetworkInterfaceInput) func() error {
		return func() error { _, err := c.CreateNetworkInterface(ctx(t), &in); return err }
	}
	unassign := func(in ec2.UnassignIpv6AddressesInput) func() error {
		return func() error { _, err := c.UnassignIpv6Addresses(ctx(t), &in); return err }
	}
	tests := []struct {
		name string
		call func() error
		code string
		msg  string // substring of the message, when it matters
	}{
		{"assign in a subnet without IPv6", assign(ec2.AssignIpv6AddressesInput{NetworkInterfaceId: aws.String(v4only), Ipv6AddressCount: aws.Int32(1)}),
			"InvalidParameterValue", "Subnet does not contain any IPv6 CIDR block ranges"},
		{"prefix in a subnet without IPv6", assign(ec2.AssignIpv6AddressesInput{NetworkInterfaceId: aws.String(v4only), Ipv6PrefixCount: aws.Int32(1)}),
			"InvalidParameterValue", "Subnet does not contain any IPv6 CIDR block ranges"},
		{"create with IPv6 in a subnet without IPv6", create(ec2.CreateNetworkInterfaceInput{SubnetId: aws.String("subnet-0v4only000000"), Ipv6AddressCount: aws.Int32(1)}),
			"InvalidParameterValue", "Subnet does not contain any IPv6 CIDR block ranges"},
		{"per-ENI limit, address", assign(ec2.AssignIpv6AddressesInput{NetworkInterfaceId: aws.String(full), Ipv6AddressCount: aws.Int32(1)}),
			"PrivateIpAddressLimitExceeded", "IPv6"},
		{"per-ENI limit, a prefix is one slot", assign(ec2.AssignIpv6AddressesInput{NetworkInterfaceId: aws.String(full), Ipv6PrefixCount: aws.Int32(1)}),
			"PrivateIpAddressLimitExceeded", ""},
		{"per-ENI limit of an unattached ENI", assign(ec2.AssignIpv6AddressesInput{NetworkInterfaceId: aws.String(spare), Ipv6AddressCount: aws.Int32(51)}),
			"PrivateIpAddressLimitExceeded", ""},
		{"per-ENI limit at create", create(ec2.CreateNetworkInterfaceInput{SubnetId: aws.String(CardSubnetID(1)), Ipv6PrefixCount: aws.Int32(51)}),
			"PrivateIpAddressLimitExceeded", ""},
		{"per-ENI limit at attach", func() error {
			_, err := c.AttachNetworkInterface(ctx(t), &ec2.AttachNetworkInterfaceInput{NetworkInterfaceId: aws.String(eleven),
				InstanceId: aws.String(m5.inst), DeviceIndex: aws.Int32(2), NetworkCardIndex: aws.Int32(0)})
			return err
		}, "PrivateIpAddressLimitExceeded", ""},
		{"address assigned to another ENI", assign(ec2.AssignIpv6AddressesInput{NetworkInterfaceId: aws.String(spare), Ipv6Addresses: []string{"2001:db8:ec2:1::10"}}),
			"InvalidIPAddress.InUse", "2001:db8:ec2:1::10"},
		{"address assigned to the same ENI", assign(ec2.AssignIpv6AddressesInput{NetworkInterfaceId: aws.String(holder), Ipv6Addresses: []string{"2001:db8:ec2:1::10"}}),
			"InvalidIPAddress.InUse", ""},
		{"address inside another ENI's /80", assign(ec2.AssignIpv6AddressesInput{NetworkInterfaceId: aws.String(spare), Ipv6Addresses: []string{"2001:db8:ec2:1:5::99"}}),
			"InvalidIPAddress.InUse", ""},
		{"the same address twice", assign(ec2.AssignIpv6AddressesInput{NetworkInterfaceId: aws.String(spare), Ipv6Addresses: []string{"2001:db8:ec2:1::77", "2001:db8:ec2:1::77"}}),
			"InvalidIPAddress.InUse", ""},
		{"address outside the subnet", assign(ec2.AssignIpv6AddressesInput{NetworkInterfaceId: aws.String(spare), Ipv6Addresses: []string{"2001:db8:ec2:2::10"}}),
			"InvalidParameterValue", ""},
		{"reserved address", assign(ec2.AssignIpv6AddressesInput{NetworkInterfaceId: aws.String(spare), Ipv6Addresses: []string{"2001:db8:ec2:1::1"}}),
			"InvalidParameterValue", ""},
		{"IPv4 address as IPv6", assign(ec2.AssignIpv6AddressesInput{NetworkInterfaceId: aws.String(spare), Ipv6Addresses: []string{"10.0.16.9"}}),
			"InvalidParameterValue", ""},
		{"prefix assigned to another ENI", assign(ec2.AssignIpv6AddressesInput{NetworkInterfaceId: aws.String(spare), Ipv6Prefixes: []string{"2001:db8:ec2:1:5::/80"}}),
			"InvalidParameterValue", "in use"},
		{"prefix holding an assigned address", assign(ec2.AssignIpv6AddressesInput{NetworkInterfaceId: aws.String(spare), Ipv6Prefixes: []string{"2001:db8:ec2:1:7::/80"}}),
			"InvalidParameterValue", "in use"},
		{"the first /80 holds reserved addresses", assign(ec2.AssignIpv6AddressesInput{NetworkInterfaceId: aws.String(spare), Ipv6Prefixes: []string{"2001:db8:ec2:1::/80"}}),
			"InvalidParameterValue", "not a /80 block"},
		{"the last /80 holds the reserved last address", assign(ec2.AssignIpv6AddressesInput{NetworkInterfaceId: aws.String(spare), Ipv6Prefixes: []string{"2001:db8:ec2:1:ffff::/80"}}),
			"InvalidParameterValue", "not a /80 block"},
		{"prefix not aligned", assign(ec2.AssignIpv6AddressesInput{NetworkInterfaceId: aws.String(spare), Ipv6Prefixes: []string{"2001:db8:ec2:1:6::1/80"}}),
			"InvalidParameterValue", ""},
		{"prefix not a /80", assign(ec2.AssignIpv6AddressesInput{NetworkInterfaceId: aws.String(spare), Ipv6Prefixes: []string{"2001:db8:ec2:1:6::/96"}}),
			"InvalidParameterValue", ""},
		{"prefix outside the subnet", assign(ec2.AssignIpv6AddressesInput{NetworkInterfaceId: aws.String(spare), Ipv6Prefixes: []string{"2001:db8:ec2:2:6::/80"}}),
			"InvalidParameterValue", ""},
		{"two kinds in one assign", assign(ec2.AssignIpv6AddressesInput{NetworkInterfaceId: aws.String(spare), Ipv6AddressCount: aws.Int32(1), Ipv6PrefixCount: aws.Int32(1)}),
			"InvalidParameterValue", "one and only one"},
		{"count and explicit in one assign", assign(ec2.AssignIpv6AddressesInput{NetworkInterfaceId: aws.String(spare), Ipv6AddressCount: aws.Int32(1), Ipv6Addresses: []string{"2001:db8:ec2:1::78"}}),
			"InvalidParameterValue", "one and only one"},
		{"two kinds in one create", create(ec2.CreateNetworkInterfaceInput{SubnetId: aws.String(CardSubnetID(1)), Ipv6AddressCount: aws.Int32(1),
			Ipv6Prefixes: []types.Ipv6PrefixSpecificationRequest{{Ipv6Prefix: aws.String("2001:db8:ec2:1:9::/80")}}}), "InvalidParameterValue", "one and only one"},
		{"assign nothing", assign(ec2.AssignIpv6AddressesInput{NetworkInterfaceId: aws.String(spare)}), "MissingParameter", ""},
		{"assign to a missing ENI", assign(ec2.AssignIpv6AddressesInput{NetworkInterfaceId: aws.String("eni-0000000000000dead"), Ipv6AddressCount: aws.Int32(1)}),
			"InvalidNetworkInterfaceID.NotFound", ""},
		{"no /80 left in a /78", func() error {
			id := aws.ToString(f.createENI(t, "subnet-0four800000000", func(in *ec2.CreateNetworkInterfaceInput) { in.Ipv6PrefixCount = aws.Int32(2) }).NetworkInterfaceId)
			_, err := c.AssignIpv6Addresses(ctx(t), &ec2.AssignIpv6AddressesInput{NetworkInterfaceId: aws.String(id), Ipv6PrefixCount: aws.Int32(1)})
			return err
		}, "InsufficientCidrBlocks", ""},
		{"no /80 in a /120", create(ec2.CreateNetworkInterfaceInput{SubnetId: aws.String("subnet-0tiny6000000000"), Ipv6PrefixCount: aws.Int32(1)}),
			"InsufficientCidrBlocks", ""},
		{"no IPv6 address left", func() error {
			for range 5 {
				f.createENI(t, "subnet-0tiny6000000000", func(in *ec2.CreateNetworkInterfaceInput) { in.Ipv6AddressCount = aws.Int32(50) })
			}
			_, err := c.CreateNetworkInterface(ctx(t), &ec2.CreateNetworkInterfaceInput{SubnetId: aws.String("subnet-0tiny6000000000"), Ipv6AddressCount: aws.Int32(2)})
			return err
		}, "InsufficientFreeAddressesInSubnet", ""},
		{"unassign an address the ENI does not hold", unassign(ec2.UnassignIpv6AddressesInput{NetworkInterfaceId: aws.String(spare), Ipv6Addresses: []string{"2001:db8:ec2:1::10"}}),
			"InvalidParameterValue", "not assigned"},
		{"unassign a prefix the ENI does not hold", unassign(ec2.UnassignIpv6AddressesInput{NetworkInterfaceId: aws.String(spare), Ipv6Prefixes: []string{"2001:db8:ec2:1:5::/80"}}),
			"InvalidParameterValue", "not assigned"},
		{"unassign one held and one not: all or nothing", unassign(ec2.UnassignIpv6AddressesInput{NetworkInterfaceId: aws.String(holder),
			Ipv6Addresses: []string{"2001:db8:ec2:1::10", "2001:db8:ec2:1::11"}}), "InvalidParameterValue", ""},
		{"unassign nothing", unassign(ec2.UnassignIpv6AddressesInput{NetworkInterfaceId: aws.String(holder)}), "MissingParameter", ""},
		{"unassign from a missing ENI", unassign(ec2.UnassignIpv6AddressesInput{NetworkInterfaceId: aws.String("eni-0000000000000dead"), Ipv6Addresses: []string{"2001:db8:ec2:1::10"}}),
			"InvalidNetworkInterfaceID.NotFound", ""},
		{"a primary IPv6 is not implemented", create(ec2.CreateNetworkInterfaceInput{SubnetId: aws.String(CardSubnetID(1)), EnablePrimaryIpv6: aws.Bool(true)}),
			"UnsupportedOperation", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := f.srv.State()
			err := tc.call()
			wantCode(t, err, tc.code, 400)
			if tc.msg != "" && !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("message %q does not contain %q", err.Error(), tc.msg)
			}
			// A failed call changes no ENI's IPv6 (the setup calls in some cases above do, before).
			if strings.HasPrefix(tc.name, "unassign") || strings.HasPrefix(tc.name, "per-ENI") || strings.Contains(tc.name, "assigned") {
				after := f.srv.State()
				for _, e := range before.ENIs {
					a, _ := after.ENI(e.ID)
					if !slices.Equal(a.IPv6Addresses, e.IPv6Addresses) || !slices.Equal(a.IPv6Prefixes, e.IPv6Prefixes) || a.Status != e.Status {
						t.Errorf("%s changed: %v %v %s -> %v %v %s", e.ID, e.IPv6Addresses, e.IPv6Prefixes, e.Status, a.IPv6Addresses, a.IPv6Prefixes, a.Status)
					}
				}
			}
		})
	}
	checkInvariants(t, f.srv.State())

	// After one of the two usable /80s of the /78 is given back, a prefix fits again.
	st := f.srv.State()
	for _, e := range st.ENIs {
		if e.SubnetID == "subnet-0four800000000" {
			if _, err := f.ec2.UnassignIpv6Addresses(ctx(t), &ec2.UnassignIpv6AddressesInput{NetworkInterfaceId: aws.String(e.ID), Ipv6Prefixes: e.IPv6Prefixes[:1]}); err != nil {
				t.Fatal(err)
			}
			f.assign6(t, &ec2.AssignIpv6AddressesInput{NetworkInterfaceId: aws.String(e.ID), Ipv6PrefixCount: aws.Int32(1)})
		}
	}
}

func TestConfigIPv6(t *testing.T) {
	bad := map[string]Config{
		"vpc block not IPv6":          {VPCIPv6CIDR: "10.0.0.0/16"},
		"vpc block too small":         {VPCIPv6CIDR: "2001:db8:ec2::/72"},
		"vpc block not a network":     {VPCIPv6CIDR: "2001:db8:ec2::1/56"},
		"subnet block outside vpc":    {Subnets: []SubnetConfig{{CIDR: "10.0.0.0/20", IPv6CIDR: "2001:db8:ec3::/64"}}},
		"subnet block too big":        {Subnets: []SubnetConfig{{CIDR: "10.0.0.0/20", IPv6CIDR: "2001:db8:ec2::/63"}}},
		"subnet block too small":      {Subnets: []SubnetConfig{{CIDR: "10.0.0.0/20", IPv6CIDR: "2001:db8:ec2::/121"}}},
		"subnet blocks overlap":       {Subnets: []SubnetConfig{{CIDR: "10.0.0.0/20"}, {CIDR: "10.0.16.0/20", IPv6CIDR: "2001:db8:ec2::/80"}}},
		"ipv4Only with an IPv6 block": {Subnets: []SubnetConfig{{CIDR: "10.0.0.0/20", IPv4Only: true, IPv6CIDR: "2001:db8:ec2::/64"}}},
	}
	for name, cfg := range bad {
		t.Run(name, func(t *testing.T) {
			if _, err := New(cfg); err == nil {
				t.Fatal("New accepted a bad config")
			}
		})
	}
	// A /60 VPC block has 16 /64s: a 17th subnet without an explicit block cannot get one.
	var subnets []SubnetConfig
	for i := range 17 {
		subnets = append(subnets, SubnetConfig{CIDR: fmt.Sprintf("10.0.%d.0/24", i)})
	}
	if _, err := New(Config{VPCIPv6CIDR: "2001:db8:ec2::/60", Subnets: subnets}); err == nil {
		t.Fatal("17 subnets in a /60 accepted")
	}
	srv, err := New(Config{VPCIPv6CIDR: "2001:db8:ec2::/60", Subnets: subnets[:16]})
	if err != nil {
		t.Fatal(err)
	}
	if got := srv.State().Subnets[15].IPv6CIDR; got != "2001:db8:ec2:f::/64" {
		t.Fatalf("16th subnet of a /60: %s", got)
	}
	// The default region: every subnet has its /64.
	srv, err = New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	if got := srv.State().Subnets[0].IPv6CIDR; got != card64(0) {
		t.Fatalf("default subnet's IPv6 block %q, want %s", got, card64(0))
	}
}

// TestIPv6FaultsAndLag: the IPv6 actions share the per-account mutate bucket with the IPv4 ones, take
// injected errors and denials by name, and show through the visibility lag like every ENI change.
func TestIPv6FaultsAndLag(t *testing.T) {
	t.Setenv(LagEnv, "")
	f := start(t, Config{Faults: Faults{Rates: map[string]Rate{ClassMutate: {Burst: 3, PerSecond: 0.01}}}})
	id := aws.ToString(f.createENI(t, CardSubnetID(0)).NetworkInterfaceId) // token 1
	if _, err := f.noRetry.AssignPrivateIpAddresses(ctx(t), &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: aws.String(id), SecondaryPrivateIpAddressCount: aws.Int32(1)}); err != nil {
		t.Fatal(err) // token 2
	}
	out, err := f.noRetry.AssignIpv6Addresses(ctx(t), &ec2.AssignIpv6AddressesInput{NetworkInterfaceId: aws.String(id), Ipv6AddressCount: aws.Int32(1)})
	if err != nil {
		t.Fatal(err) // token 3
	}
	_, err = f.noRetry.UnassignIpv6Addresses(ctx(t), &ec2.UnassignIpv6AddressesInput{NetworkInterfaceId: aws.String(id), Ipv6Addresses: out.AssignedIpv6Addresses})
	wantCode(t, err, "RequestLimitExceeded", 503)
	_, err = f.noRetry.AssignIpv6Addresses(ctx(t), &ec2.AssignIpv6AddressesInput{NetworkInterfaceId: aws.String(id), Ipv6AddressCount: aws.Int32(1)})
	wantCode(t, err, "RequestLimitExceeded", 503)
	if e, _ := f.srv.State().ENI(id); len(e.IPv6Addresses) != 1 {
		t.Fatalf("throttled calls changed the ENI: %v", e.IPv6Addresses)
	}

	const lag = 300 * time.Millisecond
	if err := f.srv.SetFaults(Faults{Lag: Duration(lag), Deny: []string{"UnassignIpv6Addresses"},
		Errors: map[string]ErrorFault{"AssignIpv6Addresses": {Rate: 1, Code: "InternalError"}}}); err != nil {
		t.Fatal(err)
	}
	_, err = f.noRetry.AssignIpv6Addresses(ctx(t), &ec2.AssignIpv6AddressesInput{NetworkInterfaceId: aws.String(id), Ipv6AddressCount: aws.Int32(1)})
	wantCode(t, err, "InternalError", 500)
	_, err = f.noRetry.UnassignIpv6Addresses(ctx(t), &ec2.UnassignIpv6AddressesInput{NetworkInterfaceId: aws.String(id), Ipv6Addresses: out.AssignedIpv6Addresses})
	wantCode(t, err, "UnauthorizedOperation", 403)
	calls := f.srv.State().Calls
	if calls["AssignIpv6Addresses"]["InternalError"] != 1 || calls["UnassignIpv6Addresses"]["UnauthorizedOperation"] != 1 || calls["AssignIpv6Addresses"]["ok"] != 1 {
		t.Errorf("calls counted: %v %v", calls["AssignIpv6Addresses"], calls["UnassignIpv6Addresses"])
	}

	if err := f.srv.SetFaults(Faults{Lag: Duration(lag)}); err != nil {
		t.Fatal(err)
	}
	pfx, err := f.ec2.AssignIpv6Addresses(ctx(t), &ec2.AssignIpv6AddressesInput{NetworkInterfaceId: aws.String(id), Ipv6PrefixCount: aws.Int32(1)})
	if err != nil {
		t.Fatal(err)
	}
	if got := v6prefixes(f.describeENI(t, id).Ipv6Prefixes); len(got) != 0 {
		t.Errorf("prefix visible at once: %v, want after %s", got, lag)
	}
	time.Sleep(lag + 50*time.Millisecond)
	if got := v6prefixes(f.describeENI(t, id).Ipv6Prefixes); !slices.Equal(got, pfx.AssignedIpv6Prefixes) {
		t.Errorf("prefix %s later: %v, want %v", lag, got, pfx.AssignedIpv6Prefixes)
	}
}

// TestIPv6ToLinkMaker: a link maker that routes IPv6 hears every change of an attached ENI's IPv6,
// with the whole set each time; changes of unattached ENIs come with the attach.
func TestIPv6ToLinkMaker(t *testing.T) {
	rec := newRecorder()
	f := start(t, perCard(t, "trn1.32xlarge"), WithLinkMaker(rec))
	e := f.createENI(t, CardSubnetID(3), func(in *ec2.CreateNetworkInterfaceInput) { in.Ipv6AddressCount = aws.Int32(1) })
	id := aws.ToString(e.NetworkInterfaceId)
	f.assign6(t, &ec2.AssignIpv6AddressesInput{NetworkInterfaceId: aws.String(id), Ipv6PrefixCount: aws.Int32(1)})
	if _, events := rec.snapshot(); slices.Contains(events, "ipv6 "+id) {
		t.Fatalf("IPv6 routed for an unattached ENI: %v", events)
	}
	f.attach(t, id, 3, 1)
	d := f.describeENI(t, id)
	links, _ := rec.snapshot()
	if a := links[id]; a.SubnetIPv6CIDR != card64(3) || !slices.Equal(a.IPv6Addresses, v6addrs(d.Ipv6Addresses)) || !slices.Equal(a.IPv6Prefixes, v6prefixes(d.Ipv6Prefixes)) {
		t.Fatalf("attach carried %+v, ENI has %v %v", a, v6addrs(d.Ipv6Addresses), v6prefixes(d.Ipv6Prefixes))
	}
	out := f.assign6(t, &ec2.AssignIpv6AddressesInput{NetworkInterfaceId: aws.String(id), Ipv6Addresses: []string{"2001:db8:ec2:3::99"}})
	links, events := rec.snapshot()
	if events[len(events)-1] != "ipv6 "+id || !slices.Contains(links[id].IPv6Addresses, out.AssignedIpv6Addresses[0]) || len(links[id].IPv6Addresses) != 2 {
		t.Fatalf("after assign: last event %q, addresses %v", events[len(events)-1], links[id].IPv6Addresses)
	}
	if _, err := f.ec2.UnassignIpv6Addresses(ctx(t), &ec2.UnassignIpv6AddressesInput{NetworkInterfaceId: aws.String(id), Ipv6Prefixes: links[id].IPv6Prefixes}); err != nil {
		t.Fatal(err)
	}
	if links, _ = rec.snapshot(); len(links[id].IPv6Prefixes) != 0 || len(links[id].IPv6Addresses) != 2 {
		t.Fatalf("after unassign: %+v", links[id])
	}
	// A failing router answers InternalError; the change stays and the next call carries it.
	rec.mu.Lock()
	rec.failNext = errors.New("route table full")
	rec.mu.Unlock()
	_, err := f.noRetry.AssignIpv6Addresses(ctx(t), &ec2.AssignIpv6AddressesInput{NetworkInterfaceId: aws.String(id), Ipv6AddressCount: aws.Int32(1)})
	wantCode(t, err, "InternalError", 500)
	f.assign6(t, &ec2.AssignIpv6AddressesInput{NetworkInterfaceId: aws.String(id), Ipv6AddressCount: aws.Int32(1)})
	if links, _ = rec.snapshot(); len(links[id].IPv6Addresses) != 4 {
		t.Fatalf("after a failed and a good assign the router has %v, want 4 addresses", links[id].IPv6Addresses)
	}
}

func TestPool6(t *testing.T) {
	p := newPool6(netip.MustParsePrefix("2001:db8:ec2:1::/64"))
	a, ok := p.allocIP("eni-a")
	if !ok || a != netip.MustParseAddr("2001:db8:ec2:1::4") {
		t.Fatalf("first address %s, want ::4 (the first four are reserved)", a)
	}
	pfx, ok := p.allocPrefix("eni-a")
	if !ok || pfx != netip.MustParsePrefix("2001:db8:ec2:1:1::/80") {
		t.Fatalf("first /80 %s, want 2001:db8:ec2:1:1::/80 (the first holds reserved addresses)", pfx)
	}
	if o, ok := p.ownerOf(netip.MustParseAddr("2001:db8:ec2:1:1::9")); !ok || o != "eni-a" {
		t.Fatalf("an address in the /80: owner %q assignable %v", o, ok)
	}
	for _, r := range []string{"2001:db8:ec2:1::", "2001:db8:ec2:1::3", "2001:db8:ec2:1:ffff:ffff:ffff:ffff", "2001:db8:ec2:2::4"} {
		if _, ok := p.ownerOf(netip.MustParseAddr(r)); ok {
			t.Errorf("%s assignable", r)
		}
	}
	// Addresses are handed out around a /80: take the whole first block's worth by hand.
	p.hint = 1<<48 - 1
	b, _ := p.allocIP("eni-b")
	c, _ := p.allocIP("eni-b")
	if b != netip.MustParseAddr("2001:db8:ec2:1:0:ffff:ffff:ffff") || c != netip.MustParseAddr("2001:db8:ec2:1:2::") {
		t.Fatalf("addresses around the /80: %s %s, want the last of block 0 and the first of block 2", b, c)
	}
	// A /80 holding a single address is not free; once the address goes, it is.
	if valid, free := p.prefixOK(netip.MustParsePrefix("2001:db8:ec2:1:2::/80")); !valid || free {
		t.Fatalf("block 2 with an address: valid %v free %v", valid, free)
	}
	p.releaseIP(c)
	if valid, free := p.prefixOK(netip.MustParsePrefix("2001:db8:ec2:1:2::/80")); !valid || !free {
		t.Fatalf("block 2 emptied: valid %v free %v", valid, free)
	}
	// A released /80's addresses are handed out again, lowest first.
	p.releasePrefix(pfx)
	p.hint = 1 << 48
	if d, _ := p.allocIP("eni-c"); d != netip.MustParseAddr("2001:db8:ec2:1:1::") {
		t.Fatalf("after the /80 went: %s", d)
	}
	// A /120 has no /80 and 251 addresses.
	tiny := newPool6(netip.MustParsePrefix("2001:db8:ec2:2::/120"))
	if _, ok := tiny.allocPrefix("x"); ok {
		t.Fatal("a /80 from a /120")
	}
	n := 0
	for {
		if _, ok := tiny.allocIP("x"); !ok {
			break
		}
		n++
	}
	if n != 251 {
		t.Fatalf("%d addresses in a /120, want 251", n)
	}
}

// TestIMDSIPv6 reads the IPv6 keys through the SDK's IMDS client, as the AWS VPC CNI reads them: per MAC
// `ipv6s` and `ipv6-prefix` (one per line, 404 when there are none), `subnet-ipv6-cidr-blocks` (404 for
// a subnet without IPv6) and `vpc-ipv6-cidr-blocks`; the instance's `ipv6` once its primary ENI has one.
func TestIMDSIPv6(t *testing.T) {
	cfg := perCard(t, "trn1.32xlarge")
	cfg.Subnets = append(cfg.Subnets, SubnetConfig{ID: "subnet-0v4only000000", CIDR: "10.0.200.0/24", IPv4Only: true})
	f := start(t, cfg)
	c := imds.New(imds.Options{Endpoint: f.url})
	e := f.createENI(t, CardSubnetID(3))
	id, mac := aws.ToString(e.NetworkInterfaceId), aws.ToString(e.MacAddress)
	f.attach(t, id, 3, 1)
	dir := "network/interfaces/macs/" + mac + "/"
	for k, want := range map[string]string{"subnet-ipv6-cidr-blocks": card64(3), "vpc-ipv6-cidr-blocks": "2001:db8:ec2::/56"} {
		if got := mustGet(t, c, dir+k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	for _, k := range []string{dir + "ipv6s", dir + "ipv6-prefix", "ipv6"} {
		if _, status := imdsGet(t, c, k); status != 404 {
			t.Errorf("%s before any IPv6: status %d, want 404", k, status)
		}
	}

	a := f.assign6(t, &ec2.AssignIpv6AddressesInput{NetworkInterfaceId: aws.String(id), Ipv6AddressCount: aws.Int32(2)}).AssignedIpv6Addresses
	p := f.assign6(t, &ec2.AssignIpv6AddressesInput{NetworkInterfaceId: aws.String(id), Ipv6PrefixCount: aws.Int32(2)}).AssignedIpv6Prefixes
	if got := mustGet(t, c, dir+"ipv6s"); got != a[0]+"\n"+a[1] {
		t.Errorf("ipv6s = %q, want %q", got, a[0]+"\n"+a[1])
	}
	if got := mustGet(t, c, dir+"ipv6-prefix"); got != p[0]+"\n"+p[1] {
		t.Errorf("ipv6-prefix = %q, want %q", got, p[0]+"\n"+p[1])
	}
	listing := strings.Split(mustGet(t, c, dir), "\n")
	for _, k := range []string{"ipv6s", "ipv6-prefix", "subnet-ipv6-cidr-blocks", "vpc-ipv6-cidr-blocks"} {
		if !slices.Contains(listing, k) {
			t.Errorf("MAC listing %v lacks %s", listing, k)
		}
	}
	if _, status := imdsGet(t, c, "ipv6"); status != 404 {
		t.Errorf("instance ipv6 while only a secondary ENI has IPv6: status %d, want 404", status)
	}

	// The primary ENI's first IPv6 address is the instance's.
	st := f.srv.State()
	prim := st.Instances[0].PrimaryENI
	pa := f.assign6(t, &ec2.AssignIpv6AddressesInput{NetworkInterfaceId: aws.String(prim), Ipv6Addresses: []string{"2001:db8:ec2::a", "2001:db8:ec2::b"}}).AssignedIpv6Addresses
	if got := mustGet(t, c, "ipv6"); got != pa[0] {
		t.Errorf("ipv6 = %q, want %q", got, pa[0])
	}

	// A subnet without IPv6 has no IPv6 keys at all.
	v4 := f.createENI(t, "subnet-0v4only000000")
	f.attach(t, aws.ToString(v4.NetworkInterfaceId), 4, 1)
	v4dir := "network/interfaces/macs/" + aws.ToString(v4.MacAddress) + "/"
	if _, status := imdsGet(t, c, v4dir+"subnet-ipv6-cidr-blocks"); status != 404 {
		t.Errorf("subnet-ipv6-cidr-blocks of an IPv4-only subnet: status %d, want 404", status)
	}
}
