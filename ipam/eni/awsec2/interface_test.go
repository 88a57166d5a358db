package awsec2

import (
	"net/netip"
	"reflect"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
)

func TestParse(t *testing.T) {
	ip := netip.MustParseAddr
	for _, tc := range []struct {
		name string
		in   types.NetworkInterface
		want Interface
	}{
		{
			name: "attached, secondaries and a prefix",
			in: types.NetworkInterface{
				NetworkInterfaceId: aws.String("eni-1"), MacAddress: aws.String("02:00:00:00:00:01"), SubnetId: aws.String("subnet-1"),
				Status: types.NetworkInterfaceStatusInUse, InterfaceType: types.NetworkInterfaceTypeInterface,
				TagSet: []types.Tag{{Key: aws.String("multinic.io/card"), Value: aws.String("3")}},
				Attachment: &types.NetworkInterfaceAttachment{AttachmentId: aws.String("eni-attach-1"), InstanceId: aws.String("i-1"),
					NetworkCardIndex: aws.Int32(3), DeviceIndex: aws.Int32(1), DeleteOnTermination: aws.Bool(true)},
				PrivateIpAddress: aws.String("10.0.3.4"),
				PrivateIpAddresses: []types.NetworkInterfacePrivateIpAddress{
					{PrivateIpAddress: aws.String("10.0.3.9")},
					{PrivateIpAddress: aws.String("10.0.3.4"), Primary: aws.Bool(true)},
					{PrivateIpAddress: aws.String("not an address")},
				},
				Ipv4Prefixes: []types.Ipv4PrefixSpecification{{Ipv4Prefix: aws.String("10.0.3.16/28")}, {Ipv4Prefix: aws.String("bad")}},
			},
			want: Interface{ID: "eni-1", MAC: "02:00:00:00:00:01", SubnetID: "subnet-1", Status: "in-use", Type: "interface",
				Tags:       map[string]string{"multinic.io/card": "3"},
				Attachment: &Attachment{ID: "eni-attach-1", InstanceID: "i-1", Card: 3, Device: 1, DeleteOnTermination: true},
				Primary:    ip("10.0.3.4"), Secondaries: []netip.Addr{ip("10.0.3.9")},
				Prefixes: []netip.Prefix{netip.MustParsePrefix("10.0.3.16/28")}},
		},
		{
			name: "IPv6 addresses and /80s (malformed and IPv4 ones skipped, prefixes masked)",
			in: types.NetworkInterface{NetworkInterfaceId: aws.String("eni-6"), PrivateIpAddress: aws.String("10.0.1.6"),
				Ipv6Addresses: []types.NetworkInterfaceIpv6Address{{Ipv6Address: aws.String("2001:db8:ec2:1::77")},
					{Ipv6Address: aws.String("10.0.1.7")}, {Ipv6Address: aws.String("bad")}},
				Ipv6Prefixes: []types.Ipv6PrefixSpecification{{Ipv6Prefix: aws.String("2001:db8:ec2:1:5::/80")},
					{Ipv6Prefix: aws.String("2001:db8:ec2:1:6::1/80")}, {Ipv6Prefix: aws.String("10.0.0.0/28")}}},
			want: Interface{ID: "eni-6", Tags: map[string]string{}, Primary: ip("10.0.1.6"),
				IPv6Addresses: []netip.Addr{ip("2001:db8:ec2:1::77")},
				IPv6Prefixes:  []netip.Prefix{netip.MustParsePrefix("2001:db8:ec2:1:5::/80"), netip.MustParsePrefix("2001:db8:ec2:1:6::/80")}},
		},
		{
			name: "available, the primary only as PrivateIpAddress (a create's answer may say no more)",
			in: types.NetworkInterface{NetworkInterfaceId: aws.String("eni-2"), Status: types.NetworkInterfaceStatusAvailable,
				PrivateIpAddress: aws.String("10.0.1.5")},
			want: Interface{ID: "eni-2", Status: StatusAvailable, Tags: map[string]string{}, Primary: ip("10.0.1.5")},
		},
	} {
		got := Parse(tc.in)
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s:\n got %+v\nwant %+v", tc.name, got, tc.want)
		}
	}
}

func TestInterfaceHelpers(t *testing.T) {
	i := Interface{Secondaries: []netip.Addr{netip.MustParseAddr("10.0.0.9")}, Prefixes: []netip.Prefix{netip.MustParsePrefix("10.0.0.18/28")}}
	got := i.Addresses()
	if len(got) != 17 || got[0].String() != "10.0.0.9" || got[1].String() != "10.0.0.16" || got[16].String() != "10.0.0.31" {
		t.Errorf("Addresses = %v, want 10.0.0.9 then 10.0.0.16-31 (the prefix masked)", got)
	}
	for _, tc := range []struct {
		typ   string
		plain bool
	}{{"", true}, {"interface", true}, {"efa", false}, {"trunk", false}} {
		if got := (Interface{Type: tc.typ}).Plain(); got != tc.plain {
			t.Errorf("Plain(%q) = %v", tc.typ, got)
		}
	}
	if !(Interface{Status: StatusAvailable}).Available() || (Interface{Status: StatusAvailable, Attachment: &Attachment{}}).Available() ||
		(Interface{Status: "in-use"}).Available() {
		t.Error("Available: attached to nothing and available")
	}
	if _, ok := (Interface{MAC: "02:00:00:00:00:0a"}).HardwareAddr(); !ok {
		t.Error("a 6-byte MAC refused")
	}
	if _, ok := (Interface{MAC: "02:00:00:00:00:00:00:0a"}).HardwareAddr(); ok {
		t.Error("an 8-byte MAC accepted")
	}
}
