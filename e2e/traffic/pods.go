package traffic

import (
	"net"

	"github.com/multinic/multinic/internal/testing/harness"
)

// PodEndpoint is a harness pod as the meter sees it: its netns and the address of each of its multinic
// attachments, by card. (harness must not import this package: it would be a cycle.)
func PodEndpoint(p *harness.Pod) Endpoint {
	addrs := map[int]net.IP{}
	for _, a := range p.Attachments {
		if addr := p.Addr(a.IfName); addr.IsValid() {
			addrs[a.Card] = net.IP(addr.AsSlice())
		}
	}
	return Endpoint{Name: p.Name, NetNS: p.NetNS(), Addrs: addrs}
}
