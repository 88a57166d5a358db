package fakeec2

import (
	"slices"
	"sort"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
)

func TestDescribeInstanceTypes(t *testing.T) {
	f := start(t, Config{})
	// Expected values come from DESIGN.md, not from the catalog, so a bad catalog fails here.
	tests := []struct {
		typ             string
		cards, perCard  int32
		ipv4, maxENIs   int32
		baselineNonZero bool
	}{
		{"p5.48xlarge", 32, 2, 50, 64, true},
		{"p5en.48xlarge", 16, 4, 50, 64, true},
		{"trn1.32xlarge", 8, 5, 50, 40, true},
		{"trn1n.32xlarge", 16, 5, 50, 80, true},
		{"p4d.24xlarge", 4, 15, 50, 60, true},
		{"g6e.48xlarge", 4, 10, 50, 40, true},
		{"c6in.32xlarge", 2, 8, 50, 16, true},
		{"m5.large", 1, 3, 10, 3, true},
		{"c5n.18xlarge", 1, 15, 50, 15, true},
	}
	for _, tc := range tests {
		t.Run(tc.typ, func(t *testing.T) {
			out, err := f.ec2.DescribeInstanceTypes(ctx(t), &ec2.DescribeInstanceTypesInput{InstanceTypes: []types.InstanceType{types.InstanceType(tc.typ)}})
			if err != nil {
				t.Fatal(err)
			}
			if len(out.InstanceTypes) != 1 {
				t.Fatalf("got %d types", len(out.InstanceTypes))
			}
			it := out.InstanceTypes[0]
			ni := it.NetworkInfo
			if string(it.InstanceType) != tc.typ || aws.ToInt32(ni.MaximumNetworkCards) != tc.cards ||
				aws.ToInt32(ni.Ipv4AddressesPerInterface) != tc.ipv4 || aws.ToInt32(ni.MaximumNetworkInterfaces) != tc.maxENIs ||
				aws.ToInt32(ni.DefaultNetworkCardIndex) != 0 {
				t.Fatalf("got type %s cards %d ipv4 %d max %d default card %d", it.InstanceType, aws.ToInt32(ni.MaximumNetworkCards),
					aws.ToInt32(ni.Ipv4AddressesPerInterface), aws.ToInt32(ni.MaximumNetworkInterfaces), aws.ToInt32(ni.DefaultNetworkCardIndex))
			}
			// EC2 documents as many IPv6 addresses per interface as private IPv4 ones (AssignIpv6Addresses).
			if !aws.ToBool(ni.Ipv6Supported) || aws.ToInt32(ni.Ipv6AddressesPerInterface) != tc.ipv4 {
				t.Fatalf("ipv6Supported %v ipv6AddressesPerInterface %d, want true and %d", aws.ToBool(ni.Ipv6Supported), aws.ToInt32(ni.Ipv6AddressesPerInterface), tc.ipv4)
			}
			if len(ni.NetworkCards) != int(tc.cards) {
				t.Fatalf("got %d networkCards items, want %d", len(ni.NetworkCards), tc.cards)
			}
			for i, c := range ni.NetworkCards {
				if aws.ToInt32(c.NetworkCardIndex) != int32(i) || aws.ToInt32(c.MaximumNetworkInterfaces) != tc.perCard {
					t.Fatalf("card %d: index %d max %d, want max %d", i, aws.ToInt32(c.NetworkCardIndex), aws.ToInt32(c.MaximumNetworkInterfaces), tc.perCard)
				}
				if aws.ToFloat64(c.BaselineBandwidthInGbps) <= 0 || aws.ToFloat64(c.PeakBandwidthInGbps) < aws.ToFloat64(c.BaselineBandwidthInGbps) {
					t.Fatalf("card %d: bandwidth %v/%v", i, aws.ToFloat64(c.BaselineBandwidthInGbps), aws.ToFloat64(c.PeakBandwidthInGbps))
				}
			}
		})
	}
	t.Run("all", func(t *testing.T) {
		out, err := f.ec2.DescribeInstanceTypes(ctx(t), &ec2.DescribeInstanceTypesInput{})
		if err != nil {
			t.Fatal(err)
		}
		if len(out.InstanceTypes) != len(tests) {
			t.Fatalf("got %d types, want %d", len(out.InstanceTypes), len(tests))
		}
	})
	t.Run("filter ipv6-supported", func(t *testing.T) {
		for v, want := range map[string]int{"true": len(tests), "false": 0} {
			out, err := f.ec2.DescribeInstanceTypes(ctx(t), &ec2.DescribeInstanceTypesInput{Filters: []types.Filter{{Name: aws.String("network-info.ipv6-supported"), Values: []string{v}}}})
			if err != nil || len(out.InstanceTypes) != want {
				t.Fatalf("ipv6-supported=%s: %v, %d types, want %d", v, err, len(out.InstanceTypes), want)
			}
		}
	})
}

func TestDescribeInstancesAndSubnets(t *testing.T) {
	cfg := perCard(t, "trn1.32xlarge")
	cfg.Instances = append(cfg.Instances, InstanceConfig{ID: "i-0bbbbbbbbbbbbbbbb", Type: "m5.large", SubnetID: CardSubnetID(1)})
	f := start(t, cfg)

	out, err := f.ec2.DescribeInstances(ctx(t), &ec2.DescribeInstancesInput{InstanceIds: []string{"i-0bbbbbbbbbbbbbbbb"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(out.Reservations) != 1 || len(out.Reservations[0].Instances) != 1 {
		t.Fatalf("got %d reservations", len(out.Reservations))
	}
	in := out.Reservations[0].Instances[0]
	if aws.ToString(in.InstanceId) != "i-0bbbbbbbbbbbbbbbb" || in.InstanceType != "m5.large" ||
		aws.ToString(in.Placement.AvailabilityZone) != DefaultAZ || aws.ToString(in.SubnetId) != CardSubnetID(1) {
		t.Fatalf("instance: %+v", in)
	}
	if len(in.NetworkInterfaces) != 1 {
		t.Fatalf("want the primary ENI only, got %d", len(in.NetworkInterfaces))
	}
	pe := in.NetworkInterfaces[0]
	if aws.ToInt32(pe.Attachment.DeviceIndex) != 0 || aws.ToInt32(pe.Attachment.NetworkCardIndex) != 0 ||
		aws.ToString(pe.PrivateIpAddress) != aws.ToString(in.PrivateIpAddress) || aws.ToString(pe.SubnetId) != CardSubnetID(1) {
		t.Fatalf("primary ENI: %+v", pe)
	}
	if ip := aws.ToString(in.PrivateIpAddress); ip != "10.0.16.4" {
		t.Fatalf("primary address %s, want the first usable address 10.0.16.4", ip)
	}

	all, err := f.ec2.DescribeInstances(ctx(t), &ec2.DescribeInstancesInput{})
	if err != nil || len(all.Reservations) != 2 {
		t.Fatalf("describe all: %v, %d reservations", err, len(all.Reservations))
	}
	byType, err := f.ec2.DescribeInstances(ctx(t), &ec2.DescribeInstancesInput{Filters: []types.Filter{{Name: aws.String("instance-type"), Values: []string{"trn1.32xlarge"}}}})
	if err != nil || len(byType.Reservations) != 1 || aws.ToString(byType.Reservations[0].Instances[0].InstanceId) != f.inst {
		t.Fatalf("filter by type: %v %+v", err, byType)
	}

	subs, err := f.ec2.DescribeSubnets(ctx(t), &ec2.DescribeSubnetsInput{})
	if err != nil || len(subs.Subnets) != 8 {
		t.Fatalf("describe subnets: %v, %d", err, len(subs.Subnets))
	}
	one, err := f.ec2.DescribeSubnets(ctx(t), &ec2.DescribeSubnetsInput{SubnetIds: []string{CardSubnetID(1)}})
	if err != nil || len(one.Subnets) != 1 {
		t.Fatalf("describe one subnet: %v", err)
	}
	sn := one.Subnets[0]
	// /20 = 4096 addresses, 5 reserved, one taken by the m5.large's primary ENI.
	if aws.ToString(sn.CidrBlock) != "10.0.16.0/20" || aws.ToInt32(sn.AvailableIpAddressCount) != 4096-5-1 ||
		aws.ToString(sn.AvailabilityZone) != DefaultAZ || aws.ToString(sn.VpcId) == "" {
		t.Fatalf("subnet: cidr %s available %d az %s", aws.ToString(sn.CidrBlock), aws.ToInt32(sn.AvailableIpAddressCount), aws.ToString(sn.AvailabilityZone))
	}
	filtered, err := f.ec2.DescribeSubnets(ctx(t), &ec2.DescribeSubnetsInput{Filters: []types.Filter{{Name: aws.String("cidr-block"), Values: []string{"10.0.32.0/20"}}}})
	if err != nil || len(filtered.Subnets) != 1 || aws.ToString(filtered.Subnets[0].SubnetId) != CardSubnetID(2) {
		t.Fatalf("filter subnets by cidr: %v %+v", err, filtered.Subnets)
	}
}

func TestCreateNetworkInterface(t *testing.T) {
	f := start(t, perCard(t, "trn1.32xlarge"))
	e := f.createENI(t, CardSubnetID(3), func(in *ec2.CreateNetworkInterfaceInput) {
		in.Description = aws.String("multinic card 3")
		in.Groups = []string{"sg-0aaaaaaaaaaaaaaaa", "sg-0bbbbbbbbbbbbbbbb"}
		in.SecondaryPrivateIpAddressCount = aws.Int32(3)
		in.Ipv4PrefixCount = aws.Int32(1)
		in.PrivateIpAddress = aws.String("10.0.48.100")
		in.TagSpecifications = []types.TagSpecification{{ResourceType: types.ResourceTypeNetworkInterface, Tags: []types.Tag{
			{Key: aws.String("multinic.io/node"), Value: aws.String("n1")}, {Key: aws.String("multinic.io/card"), Value: aws.String("3")}}}}
	})
	if aws.ToString(e.PrivateIpAddress) != "10.0.48.100" || aws.ToString(e.Description) != "multinic card 3" ||
		e.Status != types.NetworkInterfaceStatusAvailable || e.InterfaceType != "interface" || aws.ToString(e.SubnetId) != CardSubnetID(3) {
		t.Fatalf("created: %+v", e)
	}
	if len(e.PrivateIpAddresses) != 4 || !aws.ToBool(e.PrivateIpAddresses[0].Primary) || aws.ToBool(e.PrivateIpAddresses[1].Primary) {
		t.Fatalf("addresses: %+v", e.PrivateIpAddresses)
	}
	if len(e.Ipv4Prefixes) != 1 {
		t.Fatalf("prefixes: %+v", e.Ipv4Prefixes)
	}
	if len(e.Groups) != 2 || aws.ToString(e.Groups[1].GroupId) != "sg-0bbbbbbbbbbbbbbbb" {
		t.Fatalf("groups: %+v", e.Groups)
	}
	if len(e.TagSet) != 2 || !aws.ToBool(e.SourceDestCheck) || e.Attachment != nil {
		t.Fatalf("tags %+v sdc %v attachment %+v", e.TagSet, aws.ToBool(e.SourceDestCheck), e.Attachment)
	}
	if !macRE.MatchString(aws.ToString(e.MacAddress)) {
		t.Fatalf("mac %q is not a lower-case locally administered MAC", aws.ToString(e.MacAddress))
	}
	// Defaults: the VPC's default group.
	d := f.createENI(t, CardSubnetID(3))
	if len(d.Groups) != 1 || aws.ToString(d.Groups[0].GroupName) != "default" {
		t.Fatalf("default groups: %+v", d.Groups)
	}
	checkInvariants(t, f.srv.State())
}

func TestCreateNetworkInterfaceClientToken(t *testing.T) {
	f := start(t, Config{})
	in := &ec2.CreateNetworkInterfaceInput{SubnetId: aws.String(CardSubnetID(0)), ClientToken: aws.String("tok-1"), SecondaryPrivateIpAddressCount: aws.Int32(2)}
	a, err := f.ec2.CreateNetworkInterface(ctx(t), in)
	if err != nil {
		t.Fatal(err)
	}
	b, err := f.ec2.CreateNetworkInterface(ctx(t), in)
	if err != nil {
		t.Fatal(err)
	}
	if aws.ToString(a.NetworkInterface.NetworkInterfaceId) != aws.ToString(b.NetworkInterface.NetworkInterfaceId) {
		t.Fatalf("same token gave %s and %s", aws.ToString(a.NetworkInterface.NetworkInterfaceId), aws.ToString(b.NetworkInterface.NetworkInterfaceId))
	}
	if aws.ToString(b.ClientToken) != "tok-1" {
		t.Fatalf("client token %q", aws.ToString(b.ClientToken))
	}
	in.ClientToken = aws.String("tok-2")
	c, err := f.ec2.CreateNetworkInterface(ctx(t), in)
	if err != nil {
		t.Fatal(err)
	}
	if aws.ToString(c.NetworkInterface.NetworkInterfaceId) == aws.ToString(a.NetworkInterface.NetworkInterfaceId) {
		t.Fatal("a new token returned the old ENI")
	}
	// The SDK fills a token itself when none is given: two calls, two ENIs.
	in.ClientToken = nil
	f.createENI(t, CardSubnetID(0))
	f.createENI(t, CardSubnetID(0))
	// primary + tok-1 + tok-2 + 2 untokened
	if n := len(f.srv.State().ENIs); n != 5 {
		t.Fatalf("got %d ENIs, want 5", n)
	}
	// 3 addresses each for tok-1, tok-2, 1 each for the rest and the primary.
	if sn, _ := f.srv.State().Subnet(CardSubnetID(0)); sn.Used != 3+3+1+1+1 {
		t.Fatalf("used %d, want 9 (a retried create must not allocate twice)", sn.Used)
	}
}

func TestAttachDetachDeletePerCardDeviceIndex(t *testing.T) {
	f := start(t, perCard(t, "trn1.32xlarge"))
	e1 := f.createENI(t, CardSubnetID(1))
	e2 := f.createENI(t, CardSubnetID(2))
	id1, id2 := aws.ToString(e1.NetworkInterfaceId), aws.ToString(e2.NetworkInterfaceId)
	// Device index 1 on card 1 and on card 2 at the same time: DeviceIndex is per card.
	att1 := f.attach(t, id1, 1, 1)
	att2 := f.attach(t, id2, 2, 1)
	if att1 == "" || att1 == att2 {
		t.Fatalf("attachment IDs %q %q", att1, att2)
	}
	for _, tc := range []struct {
		id, att string
		card    int32
	}{{id1, att1, 1}, {id2, att2, 2}} {
		e := f.describeENI(t, tc.id)
		a := e.Attachment
		if e.Status != types.NetworkInterfaceStatusInUse || a == nil || aws.ToString(a.AttachmentId) != tc.att ||
			aws.ToString(a.InstanceId) != f.inst || aws.ToInt32(a.DeviceIndex) != 1 || aws.ToInt32(a.NetworkCardIndex) != tc.card ||
			a.Status != types.AttachmentStatusAttached || a.AttachTime == nil || aws.ToBool(a.DeleteOnTermination) {
			t.Fatalf("%s: status %s attachment %+v", tc.id, e.Status, a)
		}
	}
	inst, err := f.ec2.DescribeInstances(ctx(t), &ec2.DescribeInstancesInput{InstanceIds: []string{f.inst}})
	if err != nil {
		t.Fatal(err)
	}
	var cards []int32
	for _, ni := range inst.Reservations[0].Instances[0].NetworkInterfaces {
		cards = append(cards, aws.ToInt32(ni.Attachment.NetworkCardIndex))
	}
	if !slices.Equal(cards, []int32{0, 1, 2}) {
		t.Fatalf("instance ENIs on cards %v, want [0 1 2]", cards)
	}

	// Deleting an attached ENI is refused; detach then delete works.
	_, err = f.noRetry.DeleteNetworkInterface(ctx(t), &ec2.DeleteNetworkInterfaceInput{NetworkInterfaceId: aws.String(id1)})
	wantCode(t, err, "InvalidParameterValue", 400)
	if _, err := f.ec2.DetachNetworkInterface(ctx(t), &ec2.DetachNetworkInterfaceInput{AttachmentId: aws.String(att1), Force: aws.Bool(true)}); err != nil {
		t.Fatal(err)
	}
	if e := f.describeENI(t, id1); e.Status != types.NetworkInterfaceStatusAvailable || e.Attachment != nil {
		t.Fatalf("after detach: status %s attachment %+v", e.Status, e.Attachment)
	}
	// The freed device index can be used again.
	att1 = f.attach(t, id1, 1, 1)
	if _, err := f.ec2.DetachNetworkInterface(ctx(t), &ec2.DetachNetworkInterfaceInput{AttachmentId: aws.String(att1)}); err != nil {
		t.Fatal(err)
	}
	before, _ := f.srv.State().Subnet(CardSubnetID(1))
	if _, err := f.ec2.DeleteNetworkInterface(ctx(t), &ec2.DeleteNetworkInterfaceInput{NetworkInterfaceId: aws.String(id1)}); err != nil {
		t.Fatal(err)
	}
	_, err = f.noRetry.DescribeNetworkInterfaces(ctx(t), &ec2.DescribeNetworkInterfacesInput{NetworkInterfaceIds: []string{id1}})
	wantCode(t, err, "InvalidNetworkInterfaceID.NotFound", 400)
	if after, _ := f.srv.State().Subnet(CardSubnetID(1)); after.Available != before.Available+1 {
		t.Fatalf("delete did not free the address: available %d -> %d", before.Available, after.Available)
	}
}

func TestAssignUnassign(t *testing.T) {
	f := start(t, perCard(t, "trn1.32xlarge"))
	e := f.createENI(t, CardSubnetID(0))
	id := aws.ToString(e.NetworkInterfaceId)
	f.attach(t, id, 0, 1)

	out, err := f.ec2.AssignPrivateIpAddresses(ctx(t), &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: aws.String(id), SecondaryPrivateIpAddressCount: aws.Int32(3)})
	if err != nil {
		t.Fatal(err)
	}
	if aws.ToString(out.NetworkInterfaceId) != id || len(out.AssignedPrivateIpAddresses) != 3 || len(out.AssignedIpv4Prefixes) != 0 {
		t.Fatalf("assign count: %+v", out)
	}
	first := aws.ToString(out.AssignedPrivateIpAddresses[0].PrivateIpAddress)

	// Explicit addresses: the response lists only the new ones.
	out, err = f.ec2.AssignPrivateIpAddresses(ctx(t), &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: aws.String(id), PrivateIpAddresses: []string{"10.0.10.10", "10.0.10.11"}})
	if err != nil {
		t.Fatal(err)
	}
	if got := addrs(out.AssignedPrivateIpAddresses); !slices.Equal(got, []string{"10.0.10.10", "10.0.10.11"}) {
		t.Fatalf("assign explicit returned %v", got)
	}
	// Prefixes by count and explicitly.
	out, err = f.ec2.AssignPrivateIpAddresses(ctx(t), &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: aws.String(id), Ipv4PrefixCount: aws.Int32(2)})
	if err != nil {
		t.Fatal(err)
	}
	if len(out.AssignedIpv4Prefixes) != 2 || len(out.AssignedPrivateIpAddresses) != 0 {
		t.Fatalf("assign prefixes: %+v", out)
	}
	out, err = f.ec2.AssignPrivateIpAddresses(ctx(t), &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: aws.String(id), Ipv4Prefixes: []string{"10.0.12.16/28"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(out.AssignedIpv4Prefixes) != 1 || aws.ToString(out.AssignedIpv4Prefixes[0].Ipv4Prefix) != "10.0.12.16/28" {
		t.Fatalf("assign explicit prefix: %+v", out.AssignedIpv4Prefixes)
	}
	d := f.describeENI(t, id)
	if len(d.PrivateIpAddresses) != 6 || len(d.Ipv4Prefixes) != 3 {
		t.Fatalf("after assign: %d addresses, %d prefixes", len(d.PrivateIpAddresses), len(d.Ipv4Prefixes))
	}
	// An address inside an assigned prefix cannot be handed out again.
	_, err = f.noRetry.AssignPrivateIpAddresses(ctx(t), &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: aws.String(id), PrivateIpAddresses: []string{"10.0.12.20"}})
	wantCode(t, err, "InvalidIPAddress.InUse", 400)
	checkInvariants(t, f.srv.State())

	if _, err := f.ec2.UnassignPrivateIpAddresses(ctx(t), &ec2.UnassignPrivateIpAddressesInput{NetworkInterfaceId: aws.String(id),
		PrivateIpAddresses: []string{first, "10.0.10.11"}, Ipv4Prefixes: []string{"10.0.12.16/28"}}); err != nil {
		t.Fatal(err)
	}
	d = f.describeENI(t, id)
	got := addrs2(d.PrivateIpAddresses)
	if len(got) != 4 || slices.Contains(got, first) || slices.Contains(got, "10.0.10.11") || len(d.Ipv4Prefixes) != 2 {
		t.Fatalf("after unassign: %v prefixes %+v", got, d.Ipv4Prefixes)
	}
	// The freed explicit address can be assigned again.
	if _, err := f.ec2.AssignPrivateIpAddresses(ctx(t), &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: aws.String(id), PrivateIpAddresses: []string{"10.0.10.11"}}); err != nil {
		t.Fatal(err)
	}
	checkInvariants(t, f.srv.State())
}

func TestAssignAllowReassignment(t *testing.T) {
	f := start(t, Config{})
	a := aws.ToString(f.createENI(t, CardSubnetID(0)).NetworkInterfaceId)
	b := aws.ToString(f.createENI(t, CardSubnetID(0)).NetworkInterfaceId)
	if _, err := f.ec2.AssignPrivateIpAddresses(ctx(t), &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: aws.String(a), PrivateIpAddresses: []string{"10.0.5.5"}}); err != nil {
		t.Fatal(err)
	}
	_, err := f.noRetry.AssignPrivateIpAddresses(ctx(t), &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: aws.String(b), PrivateIpAddresses: []string{"10.0.5.5"}})
	wantCode(t, err, "InvalidIPAddress.InUse", 400)
	if _, err := f.ec2.AssignPrivateIpAddresses(ctx(t), &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: aws.String(b),
		PrivateIpAddresses: []string{"10.0.5.5"}, AllowReassignment: aws.Bool(true)}); err != nil {
		t.Fatal(err)
	}
	st := f.srv.State()
	ea, _ := st.ENI(a)
	eb, _ := st.ENI(b)
	if len(ea.SecondaryIPs) != 0 || !slices.Equal(eb.SecondaryIPs, []string{"10.0.5.5"}) {
		t.Fatalf("after reassignment: a %v b %v", ea.SecondaryIPs, eb.SecondaryIPs)
	}
	checkInvariants(t, st)
}

func TestModifyNetworkInterfaceAttribute(t *testing.T) {
	f := start(t, Config{})
	id := aws.ToString(f.createENI(t, CardSubnetID(0)).NetworkInterfaceId)
	att := f.attach(t, id, 0, 1)
	calls := []*ec2.ModifyNetworkInterfaceAttributeInput{
		{NetworkInterfaceId: aws.String(id), SourceDestCheck: &types.AttributeBooleanValue{Value: aws.Bool(false)}},
		{NetworkInterfaceId: aws.String(id), Attachment: &types.NetworkInterfaceAttachmentChanges{AttachmentId: aws.String(att), DeleteOnTermination: aws.Bool(true)}},
		{NetworkInterfaceId: aws.String(id), Groups: []string{"sg-0cccccccccccccccc"}},
		{NetworkInterfaceId: aws.String(id), Description: &types.AttributeValue{Value: aws.String("changed")}},
	}
	for _, in := range calls {
		if _, err := f.ec2.ModifyNetworkInterfaceAttribute(ctx(t), in); err != nil {
			t.Fatal(err)
		}
	}
	e := f.describeENI(t, id)
	if aws.ToBool(e.SourceDestCheck) || !aws.ToBool(e.Attachment.DeleteOnTermination) || len(e.Groups) != 1 ||
		aws.ToString(e.Groups[0].GroupId) != "sg-0cccccccccccccccc" || aws.ToString(e.Description) != "changed" {
		t.Fatalf("after modify: sdc %v dot %v groups %+v desc %q", aws.ToBool(e.SourceDestCheck), aws.ToBool(e.Attachment.DeleteOnTermination), e.Groups, aws.ToString(e.Description))
	}
	_, err := f.noRetry.ModifyNetworkInterfaceAttribute(ctx(t), &ec2.ModifyNetworkInterfaceAttributeInput{NetworkInterfaceId: aws.String(id),
		Attachment: &types.NetworkInterfaceAttachmentChanges{AttachmentId: aws.String("eni-attach-0000000000000000"), DeleteOnTermination: aws.Bool(true)}})
	wantCode(t, err, "InvalidAttachmentID.NotFound", 400)
}

func TestTagsAndFilters(t *testing.T) {
	f := start(t, perCard(t, "trn1.32xlarge"))
	a := aws.ToString(f.createENI(t, CardSubnetID(1)).NetworkInterfaceId)
	b := aws.ToString(f.createENI(t, CardSubnetID(2)).NetworkInterfaceId)
	c := aws.ToString(f.createENI(t, CardSubnetID(2)).NetworkInterfaceId)
	f.attach(t, a, 1, 1)
	if _, err := f.ec2.CreateTags(ctx(t), &ec2.CreateTagsInput{Resources: []string{a, b}, Tags: []types.Tag{
		{Key: aws.String("multinic.io/managed"), Value: aws.String("true")}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.ec2.CreateTags(ctx(t), &ec2.CreateTagsInput{Resources: []string{b}, Tags: []types.Tag{
		{Key: aws.String("node.k8s.amazonaws.com/no_manage"), Value: aws.String("true")}}}); err != nil {
		t.Fatal(err)
	}
	primary := f.srv.State().Instances[0].PrimaryENI
	filter := func(name string, values ...string) types.Filter {
		return types.Filter{Name: aws.String(name), Values: values}
	}
	tests := []struct {
		name    string
		filters []types.Filter
		ids     []string
		want    []string
	}{
		{"attachment.instance-id", []types.Filter{filter("attachment.instance-id", f.inst)}, nil, []string{primary, a}},
		{"network-interface-id", []types.Filter{filter("network-interface-id", b, c)}, nil, []string{b, c}},
		{"subnet-id", []types.Filter{filter("subnet-id", CardSubnetID(2))}, nil, []string{b, c}},
		{"status available", []types.Filter{filter("status", "available")}, nil, []string{b, c}},
		{"status in-use", []types.Filter{filter("status", "in-use")}, nil, []string{primary, a}},
		{"tag:", []types.Filter{filter("tag:multinic.io/managed", "true")}, nil, []string{a, b}},
		{"tag-key", []types.Filter{filter("tag-key", "node.k8s.amazonaws.com/no_manage")}, nil, []string{b}},
		{"tag wildcard", []types.Filter{filter("tag:multinic.io/managed", "t*")}, nil, []string{a, b}},
		{"filters AND", []types.Filter{filter("tag:multinic.io/managed", "true"), filter("subnet-id", CardSubnetID(2))}, nil, []string{b}},
		{"ids and filter", []types.Filter{filter("status", "available")}, []string{a, b}, []string{b}},
		{"ids only", nil, []string{c, a}, []string{a, c}},
		{"no match", []types.Filter{filter("tag:nope", "x")}, nil, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, err := f.ec2.DescribeNetworkInterfaces(ctx(t), &ec2.DescribeNetworkInterfacesInput{Filters: tc.filters, NetworkInterfaceIds: tc.ids})
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, e := range out.NetworkInterfaces {
				got = append(got, aws.ToString(e.NetworkInterfaceId))
			}
			sort.Strings(got)
			want := slices.Clone(tc.want)
			sort.Strings(want)
			if !slices.Equal(got, want) {
				t.Fatalf("got %v, want %v", got, want)
			}
		})
	}
	e := f.describeENI(t, b)
	if len(e.TagSet) != 2 {
		t.Fatalf("tags on %s: %+v", b, e.TagSet)
	}
	_, err := f.noRetry.DescribeNetworkInterfaces(ctx(t), &ec2.DescribeNetworkInterfacesInput{Filters: []types.Filter{filter("bogus-filter", "x")}})
	wantCode(t, err, "InvalidParameterValue", 400)
}

func TestDescribeNetworkInterfacesPagination(t *testing.T) {
	f := start(t, Config{})
	want := map[string]bool{f.srv.State().Instances[0].PrimaryENI: true}
	for range 12 {
		want[aws.ToString(f.createENI(t, CardSubnetID(0)).NetworkInterfaceId)] = true
	}
	p := ec2.NewDescribeNetworkInterfacesPaginator(f.ec2, &ec2.DescribeNetworkInterfacesInput{MaxResults: aws.Int32(5)})
	pages := 0
	got := map[string]bool{}
	for p.HasMorePages() {
		out, err := p.NextPage(ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		pages++
		if len(out.NetworkInterfaces) > 5 {
			t.Fatalf("page %d has %d items", pages, len(out.NetworkInterfaces))
		}
		for _, e := range out.NetworkInterfaces {
			id := aws.ToString(e.NetworkInterfaceId)
			if got[id] {
				t.Fatalf("%s on two pages", id)
			}
			got[id] = true
		}
	}
	if pages != 3 || len(got) != 13 {
		t.Fatalf("got %d ENIs in %d pages, want 13 in 3", len(got), pages)
	}
	for id := range want {
		if !got[id] {
			t.Fatalf("%s missing from pages", id)
		}
	}
	_, err := f.noRetry.DescribeNetworkInterfaces(ctx(t), &ec2.DescribeNetworkInterfacesInput{MaxResults: aws.Int32(2)})
	wantCode(t, err, "InvalidParameterValue", 400)
	_, err = f.noRetry.DescribeNetworkInterfaces(ctx(t), &ec2.DescribeNetworkInterfacesInput{NextToken: aws.String("garbage")})
	wantCode(t, err, "InvalidParameterValue", 400)
}

func addrs(a []types.AssignedPrivateIpAddress) []string {
	var out []string
	for _, x := range a {
		out = append(out, aws.ToString(x.PrivateIpAddress))
	}
	return out
}

func addrs2(a []types.NetworkInterfacePrivateIpAddress) []string {
	var out []string
	for _, x := range a {
		out = append(out, aws.ToString(x.PrivateIpAddress))
	}
	return out
}
