package dra

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"k8s.io/dynamic-resource-allocation/deviceattribute"
)

// DefaultSysfs is where the agent reads the ENI links' PCI devices.
const DefaultSysfs = "/sys"

// ErrNoPCIDevice: the link has no PCI device in sysfs (a veth, or a link of another netns than sysfs's).
var ErrNoPCIDevice = errors.New("no pci device")

// PCIeRoot is the PCIe root complex ("pci0000:10") of the network link's device as sysfs at root shows it:
// class/net/<link>/device names the PCI function, bus/pci/devices/<function> leads to its root (resolved by
// k8s.io/dynamic-resource-allocation/deviceattribute, as other DRA drivers do).
func PCIeRoot(root, link string) (string, error) {
	target, err := os.Readlink(filepath.Join(root, "class", "net", link, "device"))
	if errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("pcie root of %s: %w", link, ErrNoPCIDevice)
	}
	if err != nil {
		return "", fmt.Errorf("pcie root of %s: %w", link, err)
	}
	attr, err := deviceattribute.GetPCIeRootAttributeByPCIBusID(filepath.Base(target), deviceattribute.WithFSFromRoot(root))
	if err != nil {
		return "", fmt.Errorf("pcie root of %s: %w", link, err)
	}
	if attr.Value.StringValue == nil {
		return "", fmt.Errorf("pcie root of %s: %w", link, ErrNoPCIDevice)
	}
	return *attr.Value.StringValue, nil
}
