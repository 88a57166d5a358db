package traffic

import (
	"net"
	"net/netip"

	"github.com/multinic/multinic/internal/testing/harness"
)

// PodEndpoint is a harness pod as the meter sees it: its netns and the IPv4 address of each of its
// multinic attachments, by card. (harness must not import this package: it would be a cycle.)
func PodEndpoint(p *harness.Pod) Endpoint { return podEndpoint(p, p.Addr) }

// PodEndpoint6 is PodEndpoint with the attachments' IPv6 addresses (family ipv6 or dual).
func PodEndpoint6(p *harness.Pod) Endpoint { return podEndpoint(p, p.Addr6) }

func podEndpoint(p *harness.Pod, addrOf func(ifName string) netip.Addr) Endpoint {
	addrs := map[int]net.IP{}
	for _, a := range p.Attachments {
		if addr := addrOf(a.IfName); addr.IsValid() {
			addrs[a.Card] = net.IP(addr.AsSlice())
		}
	}
	return Endpoint{Name: p.Name, NetNS: p.NetNS(), Addrs: addrs}
}
