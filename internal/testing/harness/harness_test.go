package harness

import (
	"encoding/json"
	"testing"
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
