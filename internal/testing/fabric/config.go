package fabric

import (
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"

	"github.com/multinic/multinic/internal/testing/fakeec2"
)

const (
	fabricNetNSSuffix = "-vpc"
	maxPrefixLen      = 32
	maxIfNameLen      = 15 // IFNAMSIZ - 1
)

// FabricNetNSName is the fabric netns of a fabric with this prefix.
func FabricNetNSName(prefix string) string { return prefix + fabricNetNSSuffix }

// NodeLinkName is the node-side name of the ENI on (card, device): "ens<card>d<device>".
// At most 8 characters for EC2's largest values (32 cards, 15 devices).
func NodeLinkName(card, device int) string {
	return "ens" + strconv.Itoa(card) + "d" + strconv.Itoa(device)
}

// FabricLinkName is the fabric-side name of the ENI with this MAC: "v" + 12 hex digits.
// MACs are unique per ENI, so Detach finds the link from the attachment alone.
func FabricLinkName(mac net.HardwareAddr) string {
	return "v" + hex.EncodeToString(mac)
}

// IfbLinkName is the ifb that shapes what the ENI with this MAC sends: "i" + 12 hex digits.
func IfbLinkName(mac net.HardwareAddr) string {
	return "i" + hex.EncodeToString(mac)
}

// bridgeName is the n-th subnet bridge of a fabric; the bridge's alias holds the subnet ID.
func bridgeName(n int) string { return "br" + strconv.Itoa(n) }

func (c Config) validate() error {
	if err := validPrefix(c.Prefix); err != nil {
		return err
	}
	if c.MTU < 0 || (c.MTU > 0 && c.MTU < 68) || c.MTU > 65535 {
		return fmt.Errorf("mtu %d invalid: must be 68-65535 (or 0 for %d)", c.MTU, DefaultMTU)
	}
	seen := map[string]string{}
	for id, name := range c.Nodes {
		if err := validNetNSName(name); err != nil {
			return fmt.Errorf("node %s: %w", id, err)
		}
		if name == FabricNetNSName(c.Prefix) {
			return fmt.Errorf("node %s: netns %q is the fabric's own", id, name)
		}
		if other, ok := seen[name]; ok {
			return fmt.Errorf("node %s: netns %q already used by %s", id, name, other)
		}
		seen[name] = id
	}
	for card, root := range c.PCIeRoots {
		if _, err := pciBusID(root, card, 0); err != nil {
			return fmt.Errorf("pcie root of card %d: %w", card, err)
		}
	}
	for card := range c.CardRates {
		if card < 0 {
			return fmt.Errorf("card rate for card %d invalid: card must be >= 0", card)
		}
	}
	return nil
}

// rateFor is the limit in bit/s for a card, 0 for none.
func (c Config) rateFor(card int) uint64 {
	if r, ok := c.CardRates[card]; ok {
		return r
	}
	return c.RatePerCard
}

func validPrefix(p string) error {
	if p == "" || len(p) > maxPrefixLen {
		return fmt.Errorf("prefix %q invalid: must be 1-%d characters", p, maxPrefixLen)
	}
	return validNetNSName(p)
}

// validNetNSName keeps names to plain file names under /var/run/netns.
func validNetNSName(name string) error {
	if name == "" || name == "." || name == ".." || len(name) > 64 {
		return fmt.Errorf("netns name %q invalid: must be 1-64 characters", name)
	}
	for _, r := range name {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' ||
			r == '-' || r == '_' || r == '.'
		if !ok {
			return fmt.Errorf("netns name %q invalid: only letters, digits, '-', '_', '.'", name)
		}
	}
	return nil
}

// parsedAttachment is an Attachment checked and parsed before anything is changed.
type parsedAttachment struct {
	mac  net.HardwareAddr
	addr *net.IPNet     // primary IP with the subnet's prefix length; nil unless Primary
	ipv6 []netip.Prefix // the ENI's IPv6 addresses as /128s and its /80 prefixes
}

func parseAttachment(a fakeec2.Attachment) (parsedAttachment, error) {
	var p parsedAttachment
	mac, err := net.ParseMAC(a.MAC)
	if err != nil || len(mac) != 6 {
		return p, fmt.Errorf("mac %q invalid: must be 6 bytes", a.MAC)
	}
	if mac[0]&1 == 1 {
		return p, fmt.Errorf("mac %q invalid: multicast", a.MAC)
	}
	p.mac = mac
	if a.SubnetID == "" {
		return p, errors.New("subnet id empty")
	}
	if a.NetworkCard < 0 || a.DeviceIndex < 0 {
		return p, fmt.Errorf("card %d device %d invalid: must be >= 0", a.NetworkCard, a.DeviceIndex)
	}
	if n := NodeLinkName(a.NetworkCard, a.DeviceIndex); len(n) > maxIfNameLen {
		return p, fmt.Errorf("link name %q too long", n)
	}
	if p.ipv6, err = parseIPv6(a); err != nil {
		return p, err
	}
	if !a.Primary {
		return p, nil
	}
	_, subnet, err := net.ParseCIDR(a.SubnetCIDR)
	if err != nil {
		return p, fmt.Errorf("subnet cidr %q invalid: %w", a.SubnetCIDR, err)
	}
	ip := net.ParseIP(a.PrimaryIP)
	if ip == nil || !subnet.Contains(ip) {
		return p, fmt.Errorf("primary ip %q invalid: must be in %s", a.PrimaryIP, subnet)
	}
	if v4 := ip.To4(); v4 != nil {
		ip = v4
	}
	p.addr = &net.IPNet{IP: ip, Mask: subnet.Mask}
	return p, nil
}

// parseIPv6 reads an attachment's IPv6 addresses (as /128s) and prefixes, all inside its subnet's block.
func parseIPv6(a fakeec2.Attachment) ([]netip.Prefix, error) {
	if a.SubnetIPv6CIDR == "" {
		if len(a.IPv6Addresses)+len(a.IPv6Prefixes) > 0 {
			return nil, errors.New("IPv6 addresses in a subnet without an IPv6 block")
		}
		return nil, nil
	}
	subnet, err := netip.ParsePrefix(a.SubnetIPv6CIDR)
	if err != nil || !subnet.Addr().Is6() {
		return nil, fmt.Errorf("subnet IPv6 cidr %q invalid", a.SubnetIPv6CIDR)
	}
	var out []netip.Prefix
	for _, s := range a.IPv6Addresses {
		x, err := netip.ParseAddr(s)
		if err != nil || !subnet.Contains(x) {
			return nil, fmt.Errorf("IPv6 address %q invalid: must be in %s", s, subnet)
		}
		out = append(out, netip.PrefixFrom(x, 128))
	}
	for _, s := range a.IPv6Prefixes {
		x, err := netip.ParsePrefix(s)
		if err != nil || x != x.Masked() || x.Bits() < subnet.Bits() || !subnet.Contains(x.Addr()) {
			return nil, fmt.Errorf("IPv6 prefix %q invalid: must be in %s", s, subnet)
		}
		out = append(out, x)
	}
	return out, nil
}
