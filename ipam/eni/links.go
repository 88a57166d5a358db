package eni

import (
	"errors"
	"fmt"
	"net"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/multinic/multinic/internal/linkalias"
	"github.com/multinic/multinic/internal/namedns"
)

// Links finds and configures ENI links in the node's network namespace.
type Links interface {
	// LinkNames returns the names of the links with these MACs, keyed by MAC (net.HardwareAddr.String);
	// a MAC without a link is absent. One call, one look at the netns, however many MACs.
	LinkNames(macs ...net.HardwareAddr) (map[string]string, error)
	SetUp(name string) error
	SetMTU(name string, mtu int) error
	// Restore readies an ENI link that came home from a pod netns that died without a DEL: it may carry
	// the pod-side name and the multinic alias (package linkalias). The link gets back the name the alias
	// records (or want, without one), loses the alias, takes mtu and is brought up. It returns the name
	// the link has afterwards: the old one when another link holds the wanted name.
	Restore(name, want string, mtu int) (string, error)
}

// NoLinks pretends every ENI's link exists with an empty name and does nothing: for running the
// manager where no node netns is to be configured (dry runs, tests of EC2 behaviour only).
type NoLinks struct{}

func (NoLinks) LinkNames(macs ...net.HardwareAddr) (map[string]string, error) {
	names := make(map[string]string, len(macs))
	for _, mac := range macs {
		names[mac.String()] = ""
	}
	return names, nil
}
func (NoLinks) SetUp(string) error                            { return nil }
func (NoLinks) SetMTU(string, int) error                      { return nil }
func (NoLinks) Restore(name, _ string, _ int) (string, error) { return name, nil }

// NetlinkLinks is Links over netlink in one network namespace, held open by a handle so no thread
// ever switches namespaces.
type NetlinkLinks struct {
	h  netlinksafe.Handle
	ns ns.NetNS // nil for the current netns
}

var _ Links = (*NetlinkLinks)(nil)

// NewNetlinkLinks opens a handle in the netns at path (e.g. /var/run/netns/node1); "" is the current one.
func NewNetlinkLinks(path string) (*NetlinkLinks, error) {
	if path == "" {
		h, err := netlinksafe.NewHandle(unix.NETLINK_ROUTE)
		if err != nil {
			return nil, fmt.Errorf("open netlink handle: %w", err)
		}
		return &NetlinkLinks{h: h}, nil
	}
	n, h, err := namedns.Open(path)
	if err != nil {
		return nil, err
	}
	return &NetlinkLinks{h: h, ns: n}, nil
}

// Close releases the handle and the netns.
func (l *NetlinkLinks) Close() error {
	l.h.Close()
	if l.ns != nil {
		return l.ns.Close()
	}
	return nil
}

func (l *NetlinkLinks) LinkNames(macs ...net.HardwareAddr) (map[string]string, error) {
	links, err := l.h.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	want := make(map[string]bool, len(macs))
	for _, mac := range macs {
		want[mac.String()] = true
	}
	names := map[string]string{}
	for _, k := range links {
		// Skip ipvlan children and the like: they share the ENI's MAC but are not the ENI.
		switch k.Type() {
		case "ipvlan", "ipvtap", "macvlan", "macvtap", "vlan":
			continue
		}
		if mac := k.Attrs().HardwareAddr.String(); want[mac] {
			names[mac] = k.Attrs().Name
		}
	}
	return names, nil
}

// linkName is the name of the link with mac; found is false while there is none.
func linkName(l Links, mac net.HardwareAddr) (name string, found bool, err error) {
	names, err := l.LinkNames(mac)
	name, found = names[mac.String()]
	return name, found, err
}

func (l *NetlinkLinks) SetUp(name string) error {
	k, err := l.h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("find link %s: %w", name, err)
	}
	if err := l.h.LinkSetUp(k); err != nil {
		return fmt.Errorf("set link %s up: %w", name, err)
	}
	return nil
}

func (l *NetlinkLinks) SetMTU(name string, mtu int) error {
	k, err := l.h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("find link %s: %w", name, err)
	}
	if k.Attrs().MTU == mtu {
		return nil
	}
	if err := l.h.LinkSetMTU(k, mtu); err != nil {
		return fmt.Errorf("set link %s mtu %d: %w", name, mtu, err)
	}
	return nil
}

func (l *NetlinkLinks) Restore(name, want string, mtu int) (string, error) {
	k, err := l.h.LinkByName(name)
	if err != nil {
		return name, fmt.Errorf("find link %s: %w", name, err)
	}
	orig, aliased := linkalias.Parse(k.Attrs().Alias)
	if aliased {
		want = orig.Name
	}
	if want != "" && want != name {
		if _, err := l.h.LinkByName(want); err == nil {
			want = name // the name is taken: keep the one the kernel gave
		} else if !errors.As(err, &netlink.LinkNotFoundError{}) {
			return name, fmt.Errorf("find link %s: %w", want, err)
		}
	}
	if want != "" && want != name {
		if err := l.h.LinkSetDown(k); err != nil {
			return name, fmt.Errorf("set link %s down to rename it: %w", name, err)
		}
		if err := l.h.LinkSetName(k, want); err != nil {
			return name, fmt.Errorf("rename link %s to %s: %w", name, want, err)
		}
		name = want
	}
	if aliased {
		if err := l.h.LinkSetAlias(k, ""); err != nil {
			return name, fmt.Errorf("clear alias of link %s: %w", name, err)
		}
	}
	if err := l.SetMTU(name, mtu); err != nil {
		return name, err
	}
	return name, l.SetUp(name)
}
