package harness

import (
	"encoding/json"
	"fmt"
	"slices"
	"testing"

	"github.com/multinic/multinic/internal/testing/fakeec2"
	"github.com/multinic/multinic/ipam/eni"
)

func TestAttachmentNetConf(t *testing.T) {
	off := false
	tests := []struct {
		name string
		att  Attachment
		want string
	}{
		{"defaults", Attachment{Card: 1},
			`{"agentSocket":"/s","cniVersion":"1.1.0","name":"multinic-card1","networkCard":1,"type":"multinic"}`},
		{"every key", Attachment{Card: 2, Mode: "exclusive", IPVlanMode: "l3", PolicyRouting: &off, MTU: 1500, Family: "dual"},
			`{"agentSocket":"/s","cniVersion":"1.1.0","family":"dual","ipvlanMode":"l3","mode":"exclusive","mtu":1500,"name":"multinic-card2","networkCard":2,"policyRouting":false,"type":"multinic"}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b, err := json.Marshal(tc.att.NetConf("/s"))
			if err != nil {
				t.Fatal(err)
			}
			if string(b) != tc.want {
				t.Errorf("NetConf = %s\nwant      %s", b, tc.want)
			}
		})
	}
}

func TestConfigDefaults(t *testing.T) {
	c := Config{}.withDefaults()
	if c.InstanceType != DefaultInstanceType || c.Nodes != 1 || c.WarmTarget != DefaultWarmTarget ||
		len(c.ManagedCards) != 2 || c.Prefix == "" || len(c.Prefix) > 20 {
		t.Errorf("defaults = %+v", c)
	}
	if a, b := (Config{}).withDefaults().Prefix, (Config{}).withDefaults().Prefix; a == b {
		t.Errorf("two regions got the same prefix %q", a)
	}
	c = Config{Nodes: 3, ManagedCards: []int{4}, Prefix: "x"}.withDefaults()
	if c.Nodes != 3 || len(c.ManagedCards) != 1 || c.ManagedCards[0] != 4 || c.Prefix != "x" {
		t.Errorf("set fields changed: %+v", c)
	}
}

// TestLaunchENIs: the launch template data LaunchENIs gives is what the README's example lays out, and
// fake-ec2 launches it: one ENI at device index 1 of each card asked, with its secondaries, tagged with the
// harness's cluster and no node.
func TestLaunchENIs(t *testing.T) {
	subnets, err := fakeec2.SubnetsPerCard(8)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := fakeec2.New(fakeec2.Config{Subnets: subnets, Instances: []fakeec2.InstanceConfig{
		{Type: "trn1.32xlarge", LaunchTemplateData: *LaunchENIs([]int{1, 3}, 5)}}})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, x := range srv.State().ENIs {
		if !x.Primary {
			got = append(got, fmt.Sprintf("card %d device %d %s %d secondaries dot=%v %v", x.Card, x.Device, x.SubnetID,
				len(x.SecondaryIPs), x.DeleteOnTermination, x.Tags))
		}
	}
	want := []string{
		fmt.Sprintf("card 1 device 1 %s 5 secondaries dot=true map[%s:%s]", fakeec2.CardSubnetID(1), eni.TagCluster, DefaultCluster),
		fmt.Sprintf("card 3 device 1 %s 5 secondaries dot=true map[%s:%s]", fakeec2.CardSubnetID(3), eni.TagCluster, DefaultCluster),
	}
	if !slices.Equal(got, want) {
		t.Errorf("launch ENIs\n%q, want\n%q", got, want)
	}
}
