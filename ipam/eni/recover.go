package eni

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/multinic/multinic/internal/nlretry"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/multinic/multinic/internal/ctxtime"
	"github.com/multinic/multinic/internal/linkalias"
	"github.com/multinic/multinic/internal/namedns"
	"github.com/multinic/multinic/ipam/allocator"
	"github.com/multinic/multinic/ipam/api"
	"github.com/multinic/multinic/ipam/store"
)

// Recovery rebuilds the allocator's checkpoint when it is missing or corrupt, from what is true, never by
// taking everything as free:
//   - EC2: the ENIs this node's agent created and tagged (attached to this instance), their primary and
//     secondary addresses;
//   - the pod netns in NetnsDirs: a link there carrying the plugin's alias with the MAC of one of those
//     exclusive ENIs is that ENI's allocation; an ipvlan link with the MAC of one of the shared ENIs and
//     an address EC2 has on that ENI is that address's allocation;
//   - the pods on this node (when the caller knows them): a pod netns whose other addresses are a pod's
//     IPs gives the allocation the pod's namespace, name and UID. A running pod none of whose IPs is seen
//     in a visible netns means a netns the agent cannot see: recovery refuses (its addresses would be
//     taken as free).
// EC2 is eventually consistent: an ipvlan pod link on one of this node's ENIs that Describe does not
// explain yet (the ENI or the address made a moment ago) makes recovery read EC2 again, up to SettleTime.
// The container ID behind a netns is not knowable here, so a recovered allocation's is RecoveredPrefix +
// the netns name: the pod's DEL tears its links down but releases nothing, and the agent's reclaim frees the allocation
// once the netns is gone (and the pod, with a kubeconfig). Every other address stays out of the
// checkpoint: the first reconcile adds it as warm, and exclusive ENIs join when their link is home.

// RecoveredPrefix starts the container ID of an allocation rebuilt by Recover.
const RecoveredPrefix = "recovered-"

// PodIPs are the pods running on this node (not host network) with their IPs, for Recover.
type PodIPs struct {
	Namespace, Name, UID string
	IPs                  []netip.Addr
}

// RecoverReport says what Recover found.
type RecoverReport struct {
	Netns       int // pod netns looked into
	Exclusive   int // exclusive ENI allocations rebuilt
	Shared      int // shared address allocations rebuilt
	MatchedPods int // allocations given their pod's identity
}

// Recover builds a checkpoint from EC2, the pod netns in netnsDirs and, when pods is not nil, the pods on
// this node. It changes nothing in EC2 or in any netns.
func Recover(ctx context.Context, cfg Config, d Deps, netnsDirs []string, pods []PodIPs) (store.Checkpoint, RecoverReport, error) {
	var rep RecoverReport
	if d.Allocator == nil { // the manager needs one; nothing is allocated from it here
		a, err := allocator.New(store.NewMemory())
		if err != nil {
			return store.Checkpoint{}, rep, err
		}
		d.Allocator = a
	}
	m, err := New(cfg, d)
	if err != nil {
		return store.Checkpoint{}, rep, err
	}
	if err := m.discover(ctx); err != nil {
		return store.Checkpoint{}, rep, fmt.Errorf("recover: discover instance: %w", err)
	}
	netns := map[string][]podLink{} // pod netns path -> its links
	paths := netnsFiles(netnsDirs)
	for _, path := range paths {
		links, err := podLinks(path)
		if errors.Is(err, errNotNetns) {
			continue
		}
		if err != nil {
			return store.Checkpoint{}, rep, fmt.Errorf("recover: read pod netns %s: %w", path, err)
		}
		netns[path] = links
	}
	// EC2 is eventually consistent: an ENI or address made a moment ago may be missing from Describe. A
	// pod link it does not explain yet is read again, up to SettleTime: recovering without it would take
	// its address as free.
	var byMAC map[string]*recoverENI
	for deadline := time.Now().Add(m.cfg.SettleTime); ; {
		var unexplained []string
		if byMAC, unexplained, err = m.recoverView(ctx, netns); err != nil {
			return store.Checkpoint{}, rep, err
		}
		if len(unexplained) == 0 {
			break
		}
		if time.Now().After(deadline) {
			m.log.Warn("recover: pod links EC2 does not explain; recovered without them", "links", unexplained)
			break
		}
		m.log.Info("recover: pod links EC2 does not explain yet (Describe may lag); reading again", "links", unexplained)
		if err := ctxtime.Sleep(ctx, recoverPoll); err != nil {
			return store.Checkpoint{}, rep, err
		}
	}

	podByIP := map[netip.Addr]PodIPs{}
	for _, p := range pods {
		for _, ip := range p.IPs {
			podByIP[ip] = p
		}
	}
	seenPod := map[string]bool{}
	taken := map[netip.Addr]bool{}
	var cp store.Checkpoint
	now := time.Now().UTC()
	for _, path := range paths {
		links, ok := netns[path]
		if !ok {
			continue
		}
		rep.Netns++
		var pod PodIPs
		for _, l := range links {
			for _, a := range l.addrs {
				if p, ok := podByIP[a]; ok && byMAC[l.mac] == nil {
					pod = p
				}
			}
		}
		if pod.UID != "" {
			seenPod[pod.UID] = true
		}
		for _, l := range links {
			in := byMAC[l.mac]
			if in == nil {
				continue
			}
			al := api.Allocation{AllocateRequest: api.AllocateRequest{Card: in.e.card,
				ContainerID: RecoveredPrefix + filepath.Base(path), IfName: l.name,
				PodRef: api.PodRef{PodNamespace: pod.Namespace, PodName: pod.Name, PodUID: pod.UID},
				Netns:  path}, ENIID: in.e.id, AllocatedAt: now}
			var v4 bool
			var pfx netip.Prefix // the shared ENI's IPv6 prefix al.IPv6 is in
			switch {
			case in.e.exclusive && l.aliased:
				al.Exclusive, al.Address = true, in.e.primary
				v4 = slices.Contains(l.addrs, in.e.primary)
				if i := slices.IndexFunc(l.addrs6, func(a netip.Addr) bool { return in.ipv6[a] }); i >= 0 {
					al.IPv6 = l.addrs6[i]
				}
			case !in.e.exclusive && l.ipvlan:
				if i := slices.IndexFunc(l.addrs, func(a netip.Addr) bool { return in.addr[a] }); i >= 0 {
					al.Address, v4 = l.addrs[i], true
				}
				for _, a := range l.addrs6 {
					if p := in.prefixOf(a); p.IsValid() {
						al.IPv6, pfx = a, p
						break
					}
				}
				if !al.Address.IsValid() && !al.IPv6.IsValid() {
					continue
				}
			default:
				continue
			}
			if (al.Address.IsValid() && taken[al.Address]) || (al.IPv6.IsValid() && taken[al.IPv6]) {
				continue // one ENI, one address: never recovered twice
			}
			// The family is what the plugin configured on the link.
			switch {
			case al.IPv6.IsValid() && v4:
				al.Family = api.FamilyDual
			case al.IPv6.IsValid():
				al.Family = api.FamilyIPv6
			}
			if al.Exclusive {
				rep.Exclusive++
			} else {
				rep.Shared++
			}
			taken[al.Address], taken[al.IPv6] = true, true
			if pod.UID != "" {
				rep.MatchedPods++
			}
			cp.Allocations = append(cp.Allocations, al)
			if al.Address.IsValid() {
				ad := store.Address{Card: al.Card, Address: al.Address, ENIID: al.ENIID, Exclusive: al.Exclusive}
				if al.Exclusive && in.e.ipv6.IsValid() {
					ad.IPv6 = in.e.ipv6 // EC2's, whether or not the pod configured it
				}
				cp.Addresses = append(cp.Addresses, ad)
			}
			if pfx.IsValid() && !slices.ContainsFunc(cp.IPv6Prefixes, func(p store.IPv6Prefix) bool { return p.Prefix == pfx }) {
				// Next unknown (zero): the allocator starts it where no earlier address can be.
				cp.IPv6Prefixes = append(cp.IPv6Prefixes, store.IPv6Prefix{Card: al.Card, ENIID: al.ENIID, Prefix: pfx})
			}
		}
	}
	for _, p := range pods {
		if !seenPod[p.UID] {
			return store.Checkpoint{}, rep, fmt.Errorf("recover: pod %s/%s (uid %s, IPs %v) runs on this node but its netns is in none of %v: its addresses would be taken as free; mount the runtime's netns directory and name it in --netns-dirs",
				p.Namespace, p.Name, p.UID, p.IPs, netnsDirs)
		}
	}
	return cp, rep, nil
}

// recoverPoll is how often Recover reads EC2 again while it does not explain a pod link.
const recoverPoll = 500 * time.Millisecond

// recoverENI is one of the manager's ENIs and the addresses EC2 says it holds (secondaries and prefixes),
// its IPv6 addresses and its IPv6 prefixes.
type recoverENI struct {
	e    *eniState
	addr map[netip.Addr]bool
	ipv6 map[netip.Addr]bool
	pfx6 []netip.Prefix
}

// prefixOf is the ENI's IPv6 prefix holding a, or the zero prefix.
func (in *recoverENI) prefixOf(a netip.Addr) netip.Prefix {
	for _, p := range in.pfx6 {
		if p.Contains(a) {
			return p
		}
	}
	return netip.Prefix{}
}

// explains reports whether EC2's view of the ENI explains one of the link's addresses.
func (in *recoverENI) explains(l podLink) bool {
	return slices.ContainsFunc(l.addrs, func(a netip.Addr) bool { return in.addr[a] }) ||
		slices.ContainsFunc(l.addrs6, func(a netip.Addr) bool { return in.prefixOf(a).IsValid() })
}

// recoverView reads the instance's ENIs: the manager's own by MAC, and the pod links EC2 does not explain
// yet. Those are ipvlan links on one of this node's ENIs (their MAC is a link in the node netns) that
// Describe does not list, or lists without any of the link's addresses: an ENI or an address made a moment
// ago. Recovered without them, those addresses would be taken as free. An exclusive ENI Describe does not
// show yet needs no wait: it is not recovered, never handed out while its link is away, and registered
// once its link is home.
func (m *Manager) recoverView(ctx context.Context, netns map[string][]podLink) (map[string]*recoverENI, []string, error) {
	attached, err := m.describeAttached(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("recover: %w", err)
	}
	m.mu.Lock()
	m.setAttachedLocked(attached, m.recent.view())
	byMAC := map[string]*recoverENI{}
	described := map[string]bool{}
	for _, ni := range attached {
		described[strings.ToLower(ni.MAC)] = true
		e := m.enis[ni.ID]
		if e == nil {
			continue
		}
		in := &recoverENI{e: e, addr: map[netip.Addr]bool{}, ipv6: map[netip.Addr]bool{}, pfx6: ni.IPv6Prefixes}
		for _, a := range ni.Addresses() {
			in.addr[a] = true
		}
		for _, a := range ni.IPv6Addresses {
			in.ipv6[a] = true
		}
		byMAC[e.mac.String()] = in
	}
	m.mu.Unlock()
	var unexplained []string
	unknown := map[string][]string{} // MAC Describe does not know -> pod links on it
	for path, links := range netns {
		for _, l := range links {
			in := byMAC[l.mac]
			switch {
			case !l.ipvlan:
			case !described[l.mac]:
				unknown[l.mac] = append(unknown[l.mac], path+" "+l.name)
			case in != nil && !in.e.exclusive && !in.explains(l):
				unexplained = append(unexplained, path+" "+l.name)
			}
		}
	}
	if len(unknown) > 0 {
		var macs []net.HardwareAddr
		for s := range unknown {
			if mac, err := net.ParseMAC(s); err == nil {
				macs = append(macs, mac)
			}
		}
		home, err := m.links.LinkNames(macs...)
		if err != nil {
			return nil, nil, fmt.Errorf("recover: find the node's ENI links: %w", err)
		}
		for mac := range home {
			unexplained = append(unexplained, unknown[mac]...)
		}
	}
	slices.Sort(unexplained)
	return byMAC, unexplained, nil
}

// netnsFiles lists the entries of the netns directories, each netns once (/var/run/netns and /run/netns
// are often one directory), under the first directory that has it; a directory not there is skipped.
func netnsFiles(dirs []string) []string {
	var out []string
	seen := map[[2]uint64]bool{}
	for _, d := range dirs {
		ents, err := os.ReadDir(d)
		if err != nil {
			continue
		}
		for _, e := range ents {
			path := filepath.Join(d, e.Name())
			var st unix.Stat_t
			if e.IsDir() || unix.Stat(path, &st) != nil {
				continue
			}
			if id := [2]uint64{st.Dev, st.Ino}; !seen[id] {
				seen[id] = true
				out = append(out, path)
			}
		}
	}
	return out
}

var errNotNetns = errors.New("not a netns")

type podLink struct {
	name, mac string
	aliased   bool // carries the plugin's alias (an exclusive ENI moved in)
	ipvlan    bool
	addrs     []netip.Addr
	addrs6    []netip.Addr // global IPv6 addresses
}

// podLinks lists the links of the netns at path with their IPv4 and global IPv6 addresses, through a handle in that netns
// (no thread changes netns).
func podLinks(path string) ([]podLink, error) {
	n, h, err := namedns.Open(path)
	if err != nil {
		var notNS ns.NSPathNotNSErr
		var notExist ns.NSPathNotExistErr
		if errors.As(err, &notNS) || errors.As(err, &notExist) {
			return nil, errNotNetns
		}
		return nil, err
	}
	defer n.Close()
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		return nil, err
	}
	var out []podLink
	for _, k := range links {
		a := k.Attrs()
		_, aliased := linkalias.Parse(a.Alias)
		pl := podLink{name: a.Name, mac: net.HardwareAddr(a.HardwareAddr).String(), aliased: aliased, ipvlan: k.Type() == "ipvlan"}
		addrs, err := nlretry.AddrList(h, k, netlink.FAMILY_V4)
		if err != nil {
			return nil, err
		}
		for _, ad := range addrs {
			if ip, ok := netip.AddrFromSlice(ad.IP.To4()); ok {
				pl.addrs = append(pl.addrs, ip)
			}
		}
		addrs6, err := nlretry.AddrList(h, k, netlink.FAMILY_V6)
		if err != nil {
			return nil, err
		}
		for _, ad := range addrs6 {
			if ip, ok := netip.AddrFromSlice(ad.IP); ok && ip.Is6() && ip.IsGlobalUnicast() {
				pl.addrs6 = append(pl.addrs6, ip)
			}
		}
		out = append(out, pl)
	}
	return out, nil
}
