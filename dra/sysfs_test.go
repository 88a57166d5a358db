package dra

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// TestPCIeRoot reads a sysfs laid out as a real instance's: class/net/<link> is a symlink into /sys/devices,
// its device link points at the PCI function, and bus/pci/devices/<function> leads to the root complex.
func TestPCIeRoot(t *testing.T) {
	root := t.TempDir()
	fn := filepath.Join(root, "devices", "pci0000:10", "0000:10:01.0", "0000:11:00.0")
	must(t, os.MkdirAll(filepath.Join(fn, "net", "ens6"), 0o755))
	must(t, os.MkdirAll(filepath.Join(root, "class", "net"), 0o755))
	must(t, os.MkdirAll(filepath.Join(root, "bus", "pci", "devices"), 0o755))
	must(t, os.Symlink("../../devices/pci0000:10/0000:10:01.0/0000:11:00.0/net/ens6", filepath.Join(root, "class", "net", "ens6")))
	must(t, os.Symlink("../../../0000:11:00.0", filepath.Join(fn, "net", "ens6", "device")))
	must(t, os.Symlink("../../../devices/pci0000:10/0000:10:01.0/0000:11:00.0", filepath.Join(root, "bus", "pci", "devices", "0000:11:00.0")))
	// A veth: no device link.
	must(t, os.MkdirAll(filepath.Join(root, "class", "net", "veth0"), 0o755))

	if got, err := PCIeRoot(root, "ens6"); err != nil || got != "pci0000:10" {
		t.Errorf("PCIeRoot(ens6) = %q, %v; want pci0000:10", got, err)
	}
	if _, err := PCIeRoot(root, "veth0"); !errors.Is(err, ErrNoPCIDevice) {
		t.Errorf("PCIeRoot(veth0) error %v, want ErrNoPCIDevice", err)
	}
	if _, err := PCIeRoot(root, "nothere"); !errors.Is(err, ErrNoPCIDevice) {
		t.Errorf("PCIeRoot(nothere) error %v, want ErrNoPCIDevice", err)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
