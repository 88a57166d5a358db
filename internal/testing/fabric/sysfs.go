package fabric

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
)

// A veth has no PCI device, so /sys/class/net/<link>/device does not exist for the fabric's ENI links. With
// Config.SysfsDir set, the fabric writes for each node a small sysfs tree that says what a real instance's
// sysfs says about an ENA device, for the node's ENI links only, so that the agent's real sysfs reading
// (DRA's resource.kubernetes.io/pcieRoot) runs against it:
//
//	<SysfsDir>/<node netns>/devices/<root>/<bdf>/                    the ENI's PCI function
//	<SysfsDir>/<node netns>/bus/pci/devices/<bdf> -> ../../../devices/<root>/<bdf>
//	<SysfsDir>/<node netns>/class/net/<link>/device -> ../../../devices/<root>/<bdf>
//
// <root> is Config.PCIeRoots[card] ("pci<domain>:<bus>"); a card without one gets no entries, as a veth.

// pcieRootRe is the form of a PCIe root complex in sysfs: pci<domain>:<bus>.
var pcieRootRe = regexp.MustCompile(`^pci([0-9a-f]{4}):([0-9a-f]{2})$`)

// SysfsRoot is the fake sysfs of the node with this netns name ("" without Config.SysfsDir).
func (c Config) SysfsRoot(netnsName string) string {
	if c.SysfsDir == "" {
		return ""
	}
	return filepath.Join(c.SysfsDir, netnsName)
}

// pciBusID is the ENI on (card, device)'s PCI address below root: the root's domain, bus root+1+device,
// device number card, function 0 (EC2's largest: 32 cards, 15 devices, which fits).
func pciBusID(root string, card, device int) (string, error) {
	m := pcieRootRe.FindStringSubmatch(root)
	if m == nil {
		return "", fmt.Errorf("pcie root %q invalid: must be pci<4 hex digits>:<2 hex digits>", root)
	}
	bus, _ := strconv.ParseUint(m[2], 16, 8)
	if bus+1+uint64(device) > 0xff || card > 0x1f {
		return "", fmt.Errorf("card %d device %d do not fit below pcie root %s", card, device, root)
	}
	return fmt.Sprintf("%s:%02x:%02x.0", m[1], bus+1+uint64(device), card), nil
}

// sysfsDevice names the fake sysfs of netnsName, the card's PCIe root and the ENI's PCI bus id; dir is ""
// when the node has no fake sysfs or the card no root (nothing to write or remove).
func (f *Fabric) sysfsDevice(netnsName string, card, device int) (dir, root, bdf string, err error) {
	root, ok := f.cfg.PCIeRoots[card]
	dir = f.cfg.SysfsRoot(netnsName)
	if !ok || dir == "" {
		return "", "", "", nil
	}
	if bdf, err = pciBusID(root, card, device); err != nil {
		return "", "", "", err
	}
	return dir, root, bdf, nil
}

// writeSysfs adds the entries of the ENI on (card, device) to the node's fake sysfs.
func (f *Fabric) writeSysfs(netnsName string, card, device int) error {
	dir, root, bdf, err := f.sysfsDevice(netnsName, card, device)
	if dir == "" || err != nil {
		return err
	}
	target := filepath.Join("..", "..", "..", "devices", root, bdf)
	link := filepath.Join(dir, "class", "net", NodeLinkName(card, device))
	for _, d := range []string{filepath.Join(dir, "devices", root, bdf), filepath.Join(dir, "bus", "pci", "devices"), link} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("fake sysfs: %w", err)
		}
	}
	for _, l := range []string{filepath.Join(dir, "bus", "pci", "devices", bdf), filepath.Join(link, "device")} {
		if err := os.Remove(l); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("fake sysfs: %w", err)
		}
		if err := os.Symlink(target, l); err != nil {
			return fmt.Errorf("fake sysfs: %w", err)
		}
	}
	return nil
}

// removeSysfs removes what writeSysfs made for the ENI on (card, device); missing entries are fine.
func (f *Fabric) removeSysfs(netnsName string, card, device int) error {
	dir, root, bdf, err := f.sysfsDevice(netnsName, card, device)
	if dir == "" || err != nil {
		return err
	}
	return errors.Join(
		os.RemoveAll(filepath.Join(dir, "class", "net", NodeLinkName(card, device))),
		os.RemoveAll(filepath.Join(dir, "bus", "pci", "devices", bdf)),
		os.RemoveAll(filepath.Join(dir, "devices", root, bdf)),
	)
}
