package fakeec2

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
)

// exampleLaunchTemplate is the README's launch template data for trn1.32xlarge.
const exampleLaunchTemplate = "../../../manifests/examples/launch-template-trn1.json"

// TestLaunchTemplateExample launches an instance from the README's very file: its ENIs exist attached from
// the launch, as Describe (real SDK) and IMDS show, tagged and with their secondaries, and no EC2 call made them.
func TestLaunchTemplateExample(t *testing.T) {
	lt, err := LoadLaunchTemplateData(exampleLaunchTemplate)
	if err != nil {
		t.Fatal(err)
	}
	cfg := perCard(t, "trn1.32xlarge")
	cfg.Instances[0].LaunchTemplateData = lt
	f := start(t, cfg)
	out, err := f.ec2.DescribeNetworkInterfaces(ctx(t), &ec2.DescribeNetworkInterfacesInput{
		Filters: []types.Filter{{Name: aws.String("attachment.instance-id"), Values: []string{f.inst}}}})
	if err != nil {
		t.Fatal(err)
	}
	if len(out.NetworkInterfaces) != len(lt.NetworkInterfaces) {
		t.Fatalf("%d ENIs attached, want %d", len(out.NetworkInterfaces), len(lt.NetworkInterfaces))
	}
	byCard := map[int32]types.NetworkInterface{}
	for _, ni := range out.NetworkInterfaces {
		byCard[aws.ToInt32(ni.Attachment.NetworkCardIndex)] = ni
	}
	c := imds.New(imds.Options{Endpoint: f.url})
	macs := mustGet(t, c, "network/interfaces/macs/")
	for _, want := range lt.NetworkInterfaces {
		ni, ok := byCard[int32(want.NetworkCardIndex)]
		if !ok {
			t.Fatalf("no ENI on card %d", want.NetworkCardIndex)
		}
		id := aws.ToString(ni.NetworkInterfaceId)
		if got := aws.ToInt32(ni.Attachment.DeviceIndex); got != int32(want.DeviceIndex) {
			t.Errorf("%s: device %d, want %d", id, got, want.DeviceIndex)
		}
		if aws.ToString(ni.SubnetId) != want.SubnetID || ni.Status != types.NetworkInterfaceStatusInUse ||
			!aws.ToBool(ni.Attachment.DeleteOnTermination) || len(ni.PrivateIpAddresses) != 1+want.SecondaryPrivateIPAddressCount {
			t.Errorf("card %d: ENI %s subnet %s status %s dot %v addresses %d, want %s in-use true %d", want.NetworkCardIndex, id,
				aws.ToString(ni.SubnetId), ni.Status, aws.ToBool(ni.Attachment.DeleteOnTermination), len(ni.PrivateIpAddresses),
				want.SubnetID, 1+want.SecondaryPrivateIPAddressCount)
		}
		if len(ni.TagSet) != 1 || aws.ToString(ni.TagSet[0].Key) != "multinic.io/cluster" || aws.ToString(ni.TagSet[0].Value) != "my-cluster" {
			t.Errorf("card %d: tags %v, want the template's", want.NetworkCardIndex, ni.TagSet)
		}
		mac := aws.ToString(ni.MacAddress)
		if !strings.Contains(macs, mac+"/") {
			t.Errorf("IMDS macs %q lack %s", macs, mac)
		}
		if got := mustGet(t, c, "network/interfaces/macs/"+mac+"/interface-id"); got != id {
			t.Errorf("IMDS interface-id of %s: %q, want %s", mac, got, id)
		}
		ips := strings.Fields(mustGet(t, c, "network/interfaces/macs/"+mac+"/local-ipv4s"))
		if len(ips) != 1+want.SecondaryPrivateIPAddressCount {
			t.Errorf("IMDS local-ipv4s of card %d: %v", want.NetworkCardIndex, ips)
		}
	}
	if got := f.srv.State().Instances[0].Tags["multinic.io/cluster"]; got != "my-cluster" {
		t.Errorf("instance tag multinic.io/cluster %q, want the template's my-cluster", got)
	}
	for action, byResult := range f.srv.State().Calls {
		if MutatingAction(action) && len(byResult) > 0 {
			t.Errorf("the launch made EC2 calls: %s %v", action, byResult)
		}
	}
}

// TestLaunchTemplateDefaults: no DeleteOnTermination means true, no SubnetId the primary's, prefixes as
// asked, efa kept as efa; false stays false.
func TestLaunchTemplateDefaults(t *testing.T) {
	cfg := perCard(t, "trn1.32xlarge")
	no := false
	cfg.Instances[0].NetworkInterfaces = []LaunchNetworkInterface{
		{SubnetID: CardSubnetID(2)},
		{NetworkCardIndex: 1, DeviceIndex: 1, IPv4PrefixCount: 2},
		{NetworkCardIndex: 1, DeviceIndex: 0, InterfaceType: "efa-only", DeleteOnTermination: &no},
	}
	f := start(t, cfg)
	st := f.srv.State()
	if st.Instances[0].SubnetID != CardSubnetID(2) {
		t.Errorf("primary subnet %s, want the template's %s", st.Instances[0].SubnetID, CardSubnetID(2))
	}
	var got []string
	for _, e := range st.ENIs {
		if e.Primary {
			continue
		}
		got = append(got, fmt.Sprintf("%d %d %s %d %v", e.Card, e.Device, e.SubnetID, len(e.Prefixes), e.DeleteOnTermination))
	}
	want := []string{"1 1 " + CardSubnetID(2) + " 2 true", "1 0 " + CardSubnetID(2) + " 0 false"}
	if strings.Join(got, ";") != strings.Join(want, ";") {
		t.Errorf("launch ENIs %q, want %q", got, want)
	}
	out, err := f.ec2.DescribeNetworkInterfaces(ctx(t), &ec2.DescribeNetworkInterfacesInput{
		Filters: []types.Filter{{Name: aws.String("attachment.instance-id"), Values: []string{f.inst}}}})
	if err != nil {
		t.Fatal(err)
	}
	efa := 0
	for _, ni := range out.NetworkInterfaces {
		if ni.InterfaceType == "efa-only" {
			efa++
		}
	}
	if efa != 1 {
		t.Errorf("%d efa-only ENIs, want 1", efa)
	}
}

// TestLaunchTemplateInvalid: what RunInstances refuses, New refuses, naming the field.
func TestLaunchTemplateInvalid(t *testing.T) {
	prim := LaunchNetworkInterface{}
	for _, tc := range []struct {
		name string
		nis  []LaunchNetworkInterface
		tags []LaunchTagSpecification
		want string
	}{
		{"card out of range", []LaunchNetworkInterface{prim, {NetworkCardIndex: 8, DeviceIndex: 1}}, nil, "NetworkInterfaces[1].NetworkCardIndex 8 invalid"},
		{"negative device", []LaunchNetworkInterface{prim, {NetworkCardIndex: 1, DeviceIndex: -1}}, nil, "NetworkInterfaces[1].DeviceIndex -1 invalid"},
		{"same card and device", []LaunchNetworkInterface{prim, {NetworkCardIndex: 1, DeviceIndex: 1}, {NetworkCardIndex: 1, DeviceIndex: 1}}, nil, "NetworkInterfaces[2] invalid: a second interface at network card 1, device index 1"},
		{"no such subnet", []LaunchNetworkInterface{prim, {NetworkCardIndex: 1, DeviceIndex: 1, SubnetID: "subnet-nope"}}, nil, `NetworkInterfaces[1].SubnetId "subnet-nope" invalid`},
		{"too many addresses", []LaunchNetworkInterface{prim, {NetworkCardIndex: 1, DeviceIndex: 1, SecondaryPrivateIPAddressCount: 49, IPv4PrefixCount: 1}}, nil, "PrivateIpAddressLimitExceeded"},
		{"bad type", []LaunchNetworkInterface{prim, {NetworkCardIndex: 1, DeviceIndex: 1, InterfaceType: "trunk"}}, nil, `InterfaceType "trunk" invalid`},
		{"no primary", []LaunchNetworkInterface{{NetworkCardIndex: 1, DeviceIndex: 1}}, nil, "none at network card 0, device index 0"},
		{"too many on a card", []LaunchNetworkInterface{prim, {NetworkCardIndex: 1}, {NetworkCardIndex: 1, DeviceIndex: 1}, {NetworkCardIndex: 1, DeviceIndex: 2},
			{NetworkCardIndex: 1, DeviceIndex: 3}, {NetworkCardIndex: 1, DeviceIndex: 4}, {NetworkCardIndex: 1, DeviceIndex: 5}}, nil, "AttachmentLimitExceeded"},
		{"resource type", []LaunchNetworkInterface{prim}, []LaunchTagSpecification{{ResourceType: "eni"}}, `TagSpecifications[0].ResourceType "eni" invalid`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := perCard(t, "trn1.32xlarge")
			cfg.Instances[0].NetworkInterfaces, cfg.Instances[0].TagSpecifications = tc.nis, tc.tags
			_, err := New(cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New: %v, want an error with %q", err, tc.want)
			}
		})
	}
}

// TestLaunchTemplateConfigJSON: fake-ec2's --config takes an instance's launch template data in EC2's JSON.
func TestLaunchTemplateConfigJSON(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.json")
	if err := os.WriteFile(path, []byte(`{"subnets":[{"id":"subnet-a","cidr":"10.0.0.0/20"}],
		"instances":[{"type":"trn1.32xlarge","NetworkInterfaces":[{"DeviceIndex":0},
			{"NetworkCardIndex":2,"DeviceIndex":1,"SecondaryPrivateIpAddressCount":3,"DeleteOnTermination":false}],
		"TagSpecifications":[{"ResourceType":"network-interface","Tags":[{"Key":"k","Value":"v"}]}]}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range srv.State().ENIs {
		if !x.Primary && (x.Card != 2 || x.Device != 1 || len(x.SecondaryIPs) != 3 || x.DeleteOnTermination || x.Tags["k"] != "v") {
			t.Errorf("launch ENI %+v, want card 2 device 1, 3 secondaries, no DeleteOnTermination, tag k=v", x)
		}
	}
	if n := len(srv.State().ENIs); n != 2 {
		t.Errorf("%d ENIs, want the primary and the launch ENI", n)
	}
}
