package awsec2

import (
	"net"
	"net/netip"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
)

// StatusAvailable is the status of an ENI attached to nothing.
const StatusAvailable = string(types.NetworkInterfaceStatusAvailable)

// Interface is EC2's data of one network interface, parsed once (Parse): everything the agent reads of it.
type Interface struct {
	ID       string
	MAC      string // as EC2 gives it; see HardwareAddr
	SubnetID string
	Status   string // StatusAvailable, "in-use", ...
	Type     string // "interface" (or "" from older answers), "efa", "trunk", ...
	Tags     map[string]string
	// Attachment is nil when the ENI is attached to nothing.
	Attachment *Attachment
	// Primary is the ENI's primary address; Secondaries its other addresses; Prefixes its delegated
	// /28s (every address of which is usable: see Expand).
	Primary     netip.Addr
	Secondaries []netip.Addr
	Prefixes    []netip.Prefix
	// IPv6Addresses and IPv6Prefixes are its IPv6 addresses and delegated prefixes (/80s).
	IPv6Addresses []netip.Addr
	IPv6Prefixes  []netip.Prefix
}

// Attachment is where an ENI is attached.
type Attachment struct {
	ID, InstanceID      string
	Card, Device        int
	DeleteOnTermination bool
}

// Parse reads what the agent needs of EC2's interface data. Addresses and prefixes EC2 would never send
// malformed are skipped if they are; the primary is the one marked so, else PrivateIpAddress.
func Parse(ni types.NetworkInterface) Interface {
	out := Interface{
		ID: aws.ToString(ni.NetworkInterfaceId), MAC: aws.ToString(ni.MacAddress), SubnetID: aws.ToString(ni.SubnetId),
		Status: string(ni.Status), Type: string(ni.InterfaceType), Tags: make(map[string]string, len(ni.TagSet)),
	}
	for _, t := range ni.TagSet {
		out.Tags[aws.ToString(t.Key)] = aws.ToString(t.Value)
	}
	if a := ni.Attachment; a != nil {
		out.Attachment = &Attachment{ID: aws.ToString(a.AttachmentId), InstanceID: aws.ToString(a.InstanceId),
			Card: int(aws.ToInt32(a.NetworkCardIndex)), Device: int(aws.ToInt32(a.DeviceIndex)),
			DeleteOnTermination: aws.ToBool(a.DeleteOnTermination)}
	}
	for _, a := range ni.PrivateIpAddresses {
		ip, err := netip.ParseAddr(aws.ToString(a.PrivateIpAddress))
		switch {
		case err != nil:
		case aws.ToBool(a.Primary):
			out.Primary = ip
		default:
			out.Secondaries = append(out.Secondaries, ip)
		}
	}
	if !out.Primary.IsValid() {
		out.Primary, _ = netip.ParseAddr(aws.ToString(ni.PrivateIpAddress))
	}
	out.Prefixes = parsePrefixes(ni.Ipv4Prefixes)
	for _, a := range ni.Ipv6Addresses {
		if ip, err := netip.ParseAddr(aws.ToString(a.Ipv6Address)); err == nil && ip.Is6() {
			out.IPv6Addresses = append(out.IPv6Addresses, ip)
		}
	}
	for _, p := range ni.Ipv6Prefixes {
		out.IPv6Prefixes = append(out.IPv6Prefixes, parsePrefixes6([]string{aws.ToString(p.Ipv6Prefix)})...)
	}
	return out
}

// parsePrefixes6 parses IPv6 prefixes, skipping any malformed (EC2 never sends one).
func parsePrefixes6(ps []string) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range ps {
		if pfx, err := netip.ParsePrefix(p); err == nil && pfx.Addr().Is6() {
			out = append(out, pfx.Masked())
		}
	}
	return out
}

func parsePrefixes(ps []types.Ipv4PrefixSpecification) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range ps {
		if pfx, err := netip.ParsePrefix(aws.ToString(p.Ipv4Prefix)); err == nil {
			out = append(out, pfx)
		}
	}
	return out
}

// Addresses is every address the ENI holds beside its primary: its secondaries, then every address of
// its prefixes.
func (i Interface) Addresses() []netip.Addr { return withPrefixes(i.Secondaries, i.Prefixes) }

// HardwareAddr parses MAC; an ENI's is always 6 bytes.
func (i Interface) HardwareAddr() (net.HardwareAddr, bool) {
	mac, err := net.ParseMAC(i.MAC)
	return mac, err == nil && len(mac) == 6
}

// Plain: a plain interface, never EFA or trunk.
func (i Interface) Plain() bool {
	return i.Type == "" || i.Type == string(types.NetworkInterfaceTypeInterface)
}

// Available: attached to nothing.
func (i Interface) Available() bool { return i.Attachment == nil && i.Status == StatusAvailable }

func withPrefixes(addrs []netip.Addr, pfxs []netip.Prefix) []netip.Addr {
	out := append([]netip.Addr(nil), addrs...)
	for _, p := range pfxs {
		out = append(out, Expand(p)...)
	}
	return out
}

// Expand lists every address of a delegated prefix: on EC2 all 16 addresses of a /28 are usable.
func Expand(p netip.Prefix) []netip.Addr {
	p = p.Masked()
	n := 1 << (32 - p.Bits())
	out := make([]netip.Addr, 0, n)
	for a, i := p.Addr(), 0; i < n; a, i = a.Next(), i+1 {
		out = append(out, a)
	}
	return out
}
