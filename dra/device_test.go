package dra

import (
	"testing"

	resourceapi "k8s.io/api/resource/v1"

	"github.com/multinic/multinic/netconf"
)

func TestDevices(t *testing.T) {
	cards := []Card{
		{Index: 3, Subnet: "subnet-3", Addresses: 98, BaselineGbps: 100, PeakGbps: 100, PCIeRoot: "pci0000:30"},
		{Index: 1, Subnet: "subnet-1", Addresses: 49, BaselineGbps: 12.5, PeakGbps: 25},
		{Index: 2, Subnet: "subnet-2", Addresses: 0}, // not ready: no devices
	}
	both := Devices(cards, []string{netconf.ModeIPVlan, netconf.ModeExclusive})
	var names []string
	for _, d := range both {
		names = append(names, d.Name)
	}
	want := []string{"card-1", "card-1-exclusive", "card-3", "card-3-exclusive"}
	if len(names) != len(want) {
		t.Fatalf("devices %v, want %v", names, want)
	}
	for i := range want {
		if names[i] != want[i] {
			t.Fatalf("devices %v, want %v", names, want)
		}
	}
	shared, excl := both[2], both[3]
	if shared.AllowMultipleAllocations == nil || !*shared.AllowMultipleAllocations {
		t.Error("shared device not allowMultipleAllocations")
	}
	if excl.AllowMultipleAllocations != nil || excl.Capacity != nil {
		t.Errorf("exclusive device shared: %v %v", excl.AllowMultipleAllocations, excl.Capacity)
	}
	c := shared.Capacity[CapAddresses]
	if c.Value.Value() != 98 || c.RequestPolicy == nil || c.RequestPolicy.Default.Value() != 1 ||
		len(c.RequestPolicy.ValidValues) != 1 || c.RequestPolicy.ValidValues[0].Value() != 1 {
		t.Errorf("shared capacity %+v, want 98 addresses, one per allocation", c)
	}
	for _, tc := range []struct {
		dev  resourceapi.Device
		attr resourceapi.QualifiedName
		i    int64
		s    string
	}{
		{shared, AttrCard, 3, ""}, {shared, AttrSubnet, 0, "subnet-3"}, {shared, AttrMode, 0, "ipvlan"},
		{excl, AttrMode, 0, "exclusive"}, {shared, AttrBaselineMbps, 100000, ""}, {shared, AttrPCIeRoot, 0, "pci0000:30"},
		{both[0], AttrBaselineMbps, 12500, ""}, {both[0], AttrPeakMbps, 25000, ""},
	} {
		a, ok := tc.dev.Attributes[tc.attr]
		switch {
		case !ok:
			t.Errorf("%s: no %s", tc.dev.Name, tc.attr)
		case tc.s != "" && (a.StringValue == nil || *a.StringValue != tc.s):
			t.Errorf("%s: %s = %v, want %q", tc.dev.Name, tc.attr, a, tc.s)
		case tc.s == "" && (a.IntValue == nil || *a.IntValue != tc.i):
			t.Errorf("%s: %s = %v, want %d", tc.dev.Name, tc.attr, a, tc.i)
		}
	}
	if _, ok := both[0].Attributes[AttrPCIeRoot]; ok {
		t.Error("card 1 has no known pcie root but got the attribute")
	}
	if got := Devices(cards, []string{netconf.ModeExclusive}); len(got) != 2 || got[0].Name != "card-1-exclusive" {
		t.Errorf("exclusive only: %v", got)
	}
}
