package main

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/multinic/multinic/internal/testing/fakeec2"
)

// awsCLI is Debian's AWS CLI v2; an older `aws` earlier on PATH may ignore --endpoint-url.
const awsCLI = "/usr/bin/aws"

// cli runs the AWS CLI against the fake and returns its stdout, or its stderr as the error.
type cli struct {
	t        *testing.T
	endpoint string
	env      []string
}

func newCLI(t *testing.T, endpoint string) *cli {
	if _, err := os.Stat(awsCLI); err != nil {
		t.Fatalf("the Debian AWS CLI is missing (%v): apt-get install awscli, as .ci/run does", err)
	}
	home := t.TempDir()
	return &cli{t: t, endpoint: endpoint, env: []string{
		"HOME=" + home, "PATH=/usr/bin:/bin",
		"AWS_ACCESS_KEY_ID=AKIAFAKEEC2", "AWS_SECRET_ACCESS_KEY=fake-secret", "AWS_DEFAULT_REGION=us-east-1",
		"AWS_PAGER=", "AWS_CONFIG_FILE=" + home + "/config", "AWS_SHARED_CREDENTIALS_FILE=" + home + "/credentials",
		"AWS_EC2_METADATA_DISABLED=true",
	}}
}

func (c *cli) run(args ...string) ([]byte, error) {
	args = append([]string{"ec2", "--endpoint-url", c.endpoint, "--output", "json"}, args...)
	cmd := exec.Command(awsCLI, args...)
	cmd.Env = c.env
	out, err := cmd.Output()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return out, errors.New(string(ee.Stderr))
	}
	return out, err
}

// must runs the CLI and decodes its JSON output into v.
func (c *cli) must(v any, args ...string) {
	c.t.Helper()
	out, err := c.run(args...)
	if err != nil {
		c.t.Fatalf("aws ec2 %s: %v", strings.Join(args, " "), err)
	}
	if v != nil {
		if err := json.Unmarshal(out, v); err != nil {
			c.t.Fatalf("aws ec2 %s: decode %q: %v", args[0], out, err)
		}
	}
}

// TestAWSCLIScenario drives fake-ec2 with the AWS CLI as an operator would: read the type's
// network cards, create an ENI in card 3's subnet, attach it on card 3, assign addresses,
// find it with a filter, and read back EC2's error codes.
func TestAWSCLIScenario(t *testing.T) {
	p := startFakeEC2(t, "--instance-type", "trn1.32xlarge")
	c := newCLI(t, p.ready.Endpoint)
	instance := p.ready.Instances[0].ID

	var types struct {
		InstanceTypes []struct {
			InstanceType string
			NetworkInfo  struct {
				MaximumNetworkCards       int
				MaximumNetworkInterfaces  int
				DefaultNetworkCardIndex   int
				Ipv4AddressesPerInterface int
				EfaSupported              bool
				NetworkCards              []struct {
					NetworkCardIndex         int
					MaximumNetworkInterfaces int
				}
			}
		}
	}
	c.must(&types, "describe-instance-types", "--instance-types", "trn1.32xlarge")
	if len(types.InstanceTypes) != 1 {
		t.Fatalf("describe-instance-types returned %d types", len(types.InstanceTypes))
	}
	ni := types.InstanceTypes[0].NetworkInfo
	// Booleans are checked where the CLI is stricter than the SDK: it reads "True" as false.
	if ni.MaximumNetworkCards != 8 || len(ni.NetworkCards) != 8 || ni.Ipv4AddressesPerInterface != 50 || ni.MaximumNetworkInterfaces != 40 || !ni.EfaSupported {
		t.Fatalf("trn1.32xlarge network info = %+v, want 8 cards x 5 ENIs, 50 IPv4 each, EFA", ni)
	}
	for i, card := range ni.NetworkCards {
		if card.NetworkCardIndex != i || card.MaximumNetworkInterfaces != 5 {
			t.Errorf("card %d = %+v, want index %d with 5 ENIs", i, card, i)
		}
	}

	var created struct {
		NetworkInterface struct {
			NetworkInterfaceId, SubnetId, Status, MacAddress, PrivateIpAddress string
			SourceDestCheck                                                    bool
			TagSet                                                             []struct{ Key, Value string }
		}
	}
	card3Subnet := fakeec2.CardSubnetID(3)
	c.must(&created, "create-network-interface", "--subnet-id", card3Subnet, "--description", "multinic card 3",
		"--tag-specifications", "ResourceType=network-interface,Tags=[{Key=multinic/card,Value=3}]")
	eni := created.NetworkInterface
	if !strings.HasPrefix(eni.NetworkInterfaceId, "eni-") || eni.SubnetId != card3Subnet || eni.Status != "available" ||
		!eni.SourceDestCheck || len(eni.TagSet) != 1 || eni.TagSet[0].Value != "3" {
		t.Fatalf("created ENI = %+v", eni)
	}

	var attached struct {
		AttachmentId     string
		NetworkCardIndex int
	}
	c.must(&attached, "attach-network-interface", "--network-interface-id", eni.NetworkInterfaceId,
		"--instance-id", instance, "--network-card-index", "3", "--device-index", "1")
	if !strings.HasPrefix(attached.AttachmentId, "eni-attach-") || attached.NetworkCardIndex != 3 {
		t.Fatalf("attach = %+v, want an attachment on card 3", attached)
	}

	var assigned struct {
		AssignedPrivateIpAddresses []struct{ PrivateIpAddress string }
	}
	c.must(&assigned, "assign-private-ip-addresses", "--network-interface-id", eni.NetworkInterfaceId,
		"--secondary-private-ip-address-count", "5")
	if len(assigned.AssignedPrivateIpAddresses) != 5 {
		t.Fatalf("assigned %d addresses, want 5", len(assigned.AssignedPrivateIpAddresses))
	}

	var described struct {
		NetworkInterfaces []struct {
			NetworkInterfaceId string
			Status             string
			Attachment         struct {
				InstanceId          string
				NetworkCardIndex    int
				DeviceIndex         int
				Status              string
				DeleteOnTermination *bool
			}
			PrivateIpAddresses []struct {
				PrivateIpAddress string
				Primary          bool
			}
		}
	}
	c.must(&described, "describe-network-interfaces", "--filters",
		"Name=attachment.instance-id,Values="+instance, "Name=tag:multinic/card,Values=3")
	if len(described.NetworkInterfaces) != 1 {
		t.Fatalf("filter by instance and tag found %d ENIs, want 1: %+v", len(described.NetworkInterfaces), described)
	}
	got := described.NetworkInterfaces[0]
	if got.NetworkInterfaceId != eni.NetworkInterfaceId || got.Status != "in-use" || got.Attachment.InstanceId != instance ||
		got.Attachment.NetworkCardIndex != 3 || got.Attachment.DeviceIndex != 1 || got.Attachment.Status != "attached" ||
		got.Attachment.DeleteOnTermination == nil || *got.Attachment.DeleteOnTermination || len(got.PrivateIpAddresses) != 6 ||
		!got.PrivateIpAddresses[0].Primary || got.PrivateIpAddresses[0].PrivateIpAddress != eni.PrivateIpAddress {
		t.Fatalf("described ENI = %+v", got)
	}

	// Errors come back with EC2's codes, which the CLI prints on stderr.
	for _, tc := range []struct {
		args []string
		code string
	}{
		{[]string{"delete-network-interface", "--network-interface-id", eni.NetworkInterfaceId}, "InvalidParameterValue"},
		{[]string{"attach-network-interface", "--network-interface-id", "eni-0000000000000dead", "--instance-id", instance,
			"--network-card-index", "3", "--device-index", "2"}, "InvalidNetworkInterfaceID.NotFound"},
		{[]string{"detach-network-interface", "--attachment-id", "eni-attach-0000000000000dead"}, "InvalidAttachmentID.NotFound"},
	} {
		_, err := c.run(tc.args...)
		if err == nil || !strings.Contains(err.Error(), "("+tc.code+")") {
			t.Errorf("aws ec2 %s: err %v, want code %s", tc.args[0], err, tc.code)
		}
	}
}

// TestAWSCLIIPv6 drives the IPv6 actions with the AWS CLI against a plain `fake-ec2 --instance-type`:
// every subnet has its /64, ENIs take IPv6 addresses and /80 prefixes at create and by assign, filters
// find them, unassign gives them back, and EC2's error code comes back for an address in use.
func TestAWSCLIIPv6(t *testing.T) {
	p := startFakeEC2(t, "--instance-type", "trn1.32xlarge")
	c := newCLI(t, p.ready.Endpoint)
	instance := p.ready.Instances[0].ID
	card1 := fakeec2.CardSubnetID(1)

	var subnets struct {
		Subnets []struct {
			SubnetId                    string
			Ipv6Native                  bool
			AssignIpv6AddressOnCreation bool
			Ipv6CidrBlockAssociationSet []struct {
				AssociationId      string
				Ipv6CidrBlock      string
				Ipv6CidrBlockState struct{ State string }
			}
		}
	}
	c.must(&subnets, "describe-subnets", "--filters", "Name=ipv6-cidr-block-association.ipv6-cidr-block,Values=2001:db8:ec2:1::/64")
	if len(subnets.Subnets) != 1 || subnets.Subnets[0].SubnetId != card1 || len(subnets.Subnets[0].Ipv6CidrBlockAssociationSet) != 1 {
		t.Fatalf("subnet with 2001:db8:ec2:1::/64 = %+v, want card 1's", subnets)
	}
	sn := subnets.Subnets[0]
	if a := sn.Ipv6CidrBlockAssociationSet[0]; a.Ipv6CidrBlockState.State != "associated" || !strings.HasPrefix(a.AssociationId, "subnet-cidr-assoc-") || sn.Ipv6Native {
		t.Fatalf("card 1's IPv6 block = %+v, ipv6Native %v", a, sn.Ipv6Native)
	}

	var types struct {
		InstanceTypes []struct {
			NetworkInfo struct {
				Ipv6Supported             bool
				Ipv6AddressesPerInterface int
			}
		}
	}
	c.must(&types, "describe-instance-types", "--instance-types", "trn1.32xlarge")
	if ni := types.InstanceTypes[0].NetworkInfo; !ni.Ipv6Supported || ni.Ipv6AddressesPerInterface != 50 {
		t.Fatalf("trn1.32xlarge IPv6 = %+v, want supported with 50 per interface", ni)
	}

	type eni struct {
		NetworkInterfaceId string
		// CLI 2.9's model has no IsPrimaryIpv6 yet (the SDK test reads it).
		Ipv6Addresses []struct{ Ipv6Address string }
		Ipv6Prefixes  []struct{ Ipv6Prefix string }
	}
	var created struct{ NetworkInterface eni }
	c.must(&created, "create-network-interface", "--subnet-id", card1, "--ipv6-address-count", "2")
	if e := created.NetworkInterface; len(e.Ipv6Addresses) != 2 || !strings.HasPrefix(e.Ipv6Addresses[0].Ipv6Address, "2001:db8:ec2:1:") {
		t.Fatalf("create with 2 IPv6 addresses = %+v", e)
	}
	c.must(&created, "create-network-interface", "--subnet-id", card1, "--ipv6-addresses", "Ipv6Address=2001:db8:ec2:1::99")
	if e := created.NetworkInterface; len(e.Ipv6Addresses) != 1 || e.Ipv6Addresses[0].Ipv6Address != "2001:db8:ec2:1::99" {
		t.Fatalf("create with an explicit address = %+v", e)
	}
	c.must(&created, "create-network-interface", "--subnet-id", card1, "--ipv6-prefixes", "Ipv6Prefix=2001:db8:ec2:1:42::/80")
	if e := created.NetworkInterface; len(e.Ipv6Prefixes) != 1 || e.Ipv6Prefixes[0].Ipv6Prefix != "2001:db8:ec2:1:42::/80" {
		t.Fatalf("create with an explicit prefix = %+v", e)
	}
	id := created.NetworkInterface.NetworkInterfaceId
	c.must(nil, "attach-network-interface", "--network-interface-id", id, "--instance-id", instance, "--network-card-index", "1", "--device-index", "1")

	var assigned struct {
		NetworkInterfaceId    string
		AssignedIpv6Addresses []string
		AssignedIpv6Prefixes  []string
	}
	c.must(&assigned, "assign-ipv6-addresses", "--network-interface-id", id, "--ipv6-prefix-count", "1")
	if assigned.NetworkInterfaceId != id || len(assigned.AssignedIpv6Prefixes) != 1 || !strings.HasSuffix(assigned.AssignedIpv6Prefixes[0], "/80") {
		t.Fatalf("assign a /80 = %+v", assigned)
	}
	byCount := assigned.AssignedIpv6Prefixes[0]
	c.must(&assigned, "assign-ipv6-addresses", "--network-interface-id", id, "--ipv6-addresses", "2001:db8:ec2:1::a1", "2001:db8:ec2:1::a2")
	if len(assigned.AssignedIpv6Addresses) != 2 || assigned.AssignedIpv6Addresses[1] != "2001:db8:ec2:1::a2" {
		t.Fatalf("assign explicit addresses = %+v", assigned)
	}
	c.must(&assigned, "assign-ipv6-addresses", "--network-interface-id", id, "--ipv6-prefixes", "2001:db8:ec2:1:43::/80")
	if len(assigned.AssignedIpv6Prefixes) != 1 || assigned.AssignedIpv6Prefixes[0] != "2001:db8:ec2:1:43::/80" {
		t.Fatalf("assign an explicit prefix = %+v", assigned)
	}

	var described struct{ NetworkInterfaces []eni }
	c.must(&described, "describe-network-interfaces", "--filters", "Name=ipv6-addresses.ipv6-address,Values=2001:db8:ec2:1::a1")
	if len(described.NetworkInterfaces) != 1 {
		t.Fatalf("filter by IPv6 address found %d ENIs", len(described.NetworkInterfaces))
	}
	if e := described.NetworkInterfaces[0]; e.NetworkInterfaceId != id || len(e.Ipv6Addresses) != 2 || len(e.Ipv6Prefixes) != 3 {
		t.Fatalf("described = %+v, want 2 addresses and 3 /80s", e)
	}
	var reservations struct {
		Reservations []struct {
			Instances []struct{ NetworkInterfaces []eni }
		}
	}
	c.must(&reservations, "describe-instances", "--filters", "Name=network-interface.ipv6-prefixes.ipv6-prefix,Values="+byCount)
	if len(reservations.Reservations) != 1 || len(reservations.Reservations[0].Instances[0].NetworkInterfaces) != 2 {
		t.Fatalf("instance with %s = %+v", byCount, reservations)
	}
	if e := reservations.Reservations[0].Instances[0].NetworkInterfaces[1]; len(e.Ipv6Prefixes) != 3 || len(e.Ipv6Addresses) != 2 {
		t.Fatalf("the instance's card 1 ENI = %+v", e)
	}

	var unassigned struct {
		NetworkInterfaceId      string
		UnassignedIpv6Addresses []string
		UnassignedIpv6Prefixes  []string
	}
	c.must(&unassigned, "unassign-ipv6-addresses", "--network-interface-id", id, "--ipv6-addresses", "2001:db8:ec2:1::a1", "--ipv6-prefixes", byCount)
	if unassigned.NetworkInterfaceId != id || len(unassigned.UnassignedIpv6Addresses) != 1 || len(unassigned.UnassignedIpv6Prefixes) != 1 ||
		unassigned.UnassignedIpv6Prefixes[0] != byCount {
		t.Fatalf("unassign = %+v", unassigned)
	}
	_, err := c.run("assign-ipv6-addresses", "--network-interface-id", id, "--ipv6-addresses", "2001:db8:ec2:1::99")
	if err == nil || !strings.Contains(err.Error(), "(InvalidIPAddress.InUse)") {
		t.Fatalf("assign an address in use: %v, want InvalidIPAddress.InUse", err)
	}
}
