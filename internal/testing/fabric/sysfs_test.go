package fabric

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/dynamic-resource-allocation/deviceattribute"
)

func TestPCIBusID(t *testing.T) {
	for _, tc := range []struct {
		root       string
		card, dev  int
		want, fail string
	}{
		{root: "pci0000:10", card: 1, dev: 0, want: "0000:11:01.0"},
		{root: "pci00ab:20", card: 31, dev: 15, want: "00ab:30:1f.0"},
		{root: "pci0000:ff", card: 1, dev: 0, fail: "do not fit"},
		{root: "pci0000:10", card: 32, dev: 0, fail: "do not fit"},
		{root: "0000:10", card: 1, fail: "invalid"},
		{root: "pci0000:1G", card: 1, fail: "invalid"},
	} {
		got, err := pciBusID(tc.root, tc.card, tc.dev)
		if tc.fail != "" {
			if err == nil || !strings.Contains(err.Error(), tc.fail) {
				t.Errorf("pciBusID(%s, %d, %d) = %q, %v; want an error with %q", tc.root, tc.card, tc.dev, got, err, tc.fail)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("pciBusID(%s, %d, %d) = %q, %v; want %q", tc.root, tc.card, tc.dev, got, err, tc.want)
		}
	}
	if err := (Config{Prefix: "x", PCIeRoots: map[int]string{1: "pcie0"}}).validate(); err == nil {
		t.Error("validate accepted a bad pcie root")
	}
}

// TestFakeSysfs: an attached ENI of a card with a PCIe root has the entries a real instance's sysfs has, and
// the resolver the agent uses (k8s.io/dynamic-resource-allocation/deviceattribute) finds the card's root
// through them; a card without a root gets nothing (a veth has no device); Detach removes the entries.
func TestFakeSysfs(t *testing.T) {
	requireRoot(t)
	p := testPrefix(t)
	n1 := p + "-n1"
	dir := t.TempDir()
	f := newFabric(t, Config{Prefix: p, Nodes: map[string]string{"i-1": n1}, SysfsDir: dir,
		PCIeRoots: map[int]string{1: "pci0000:20"}})
	onRoot := eni("i-1", 1, 1, 2, subnetA, cidrA, "10.1.0.11")
	noRoot := eni("i-1", 1, 2, 0, subnetB, cidrB, "10.2.0.11")
	attach(t, f, onRoot, noRoot)

	root := f.cfg.SysfsRoot(n1)
	target, err := os.Readlink(filepath.Join(root, "class", "net", NodeLinkName(1, 2), "device"))
	if err != nil {
		t.Fatalf("read the device link of %s: %v", NodeLinkName(1, 2), err)
	}
	bdf := filepath.Base(target)
	attr, err := deviceattribute.GetPCIeRootAttributeByPCIBusID(bdf, deviceattribute.WithFSFromRoot(root))
	if err != nil {
		t.Fatalf("resolve the pcie root of %s: %v", bdf, err)
	}
	if got := attr.Value.StringValue; got == nil || *got != "pci0000:20" {
		t.Errorf("pcie root of card 1's ENI = %v, want pci0000:20", got)
	}
	if _, err := os.Lstat(filepath.Join(root, "class", "net", NodeLinkName(2, 0))); !os.IsNotExist(err) {
		t.Errorf("card 2 has no pcie root but its link has a sysfs entry: %v", err)
	}

	if err := f.Detach(onRoot); err != nil {
		t.Fatal(err)
	}
	for _, pth := range []string{filepath.Join("class", "net", NodeLinkName(1, 2)), filepath.Join("bus", "pci", "devices", bdf)} {
		if _, err := os.Lstat(filepath.Join(root, pth)); !os.IsNotExist(err) {
			t.Errorf("%s still there after Detach: %v", pth, err)
		}
	}
}
