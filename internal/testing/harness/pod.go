package harness

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/multinic/multinic/internal/namedns"
	"github.com/multinic/multinic/internal/testing/fabric"
)

// CNIVersion is the version of the configurations the harness sends.
const CNIVersion = "1.1.0"

// PrimaryIfName is the pod's primary interface (the cluster network's, not multinic's).
const PrimaryIfName = "eth0"

// Attachment is one multinic network of a pod: what a NetworkAttachmentDefinition's config says.
type Attachment struct {
	Card int
	// Mode is "ipvlan" (default) or "exclusive".
	Mode string
	// IPVlanMode is "l2", "l3" or "l3s"; empty leaves the plugin's default (l2).
	IPVlanMode string
	// IfName is CNI_IFNAME; default "net<position+1>", as Multus names them.
	IfName string
	// PolicyRouting, when set, is the config's "policyRouting".
	PolicyRouting *bool
	// MTU, when not 0, is the config's "mtu".
	MTU int
	// Family, when set, is the config's "family" ("ipv4", "ipv6" or "dual"); the agent must serve the card
	// in that family.
	Family string
	// Network, when set, is the config's "name" (default multinic-card<N>): a second network on a card.
	Network string
	// Valid, when not nil, is the config's "cni.dev/valid-attachments", for GC.
	Valid []types.GCAttachment
}

// NetConf is the CNI network configuration of the attachment for an agent listening on socket.
func (a Attachment) NetConf(socket string) map[string]any {
	c := map[string]any{
		"cniVersion":  CNIVersion,
		"name":        fmt.Sprintf("multinic-card%d", a.Card),
		"type":        PluginBinary,
		"networkCard": a.Card,
		"agentSocket": socket,
	}
	if a.Mode != "" {
		c["mode"] = a.Mode
	}
	if a.IPVlanMode != "" {
		c["ipvlanMode"] = a.IPVlanMode
	}
	if a.PolicyRouting != nil {
		c["policyRouting"] = *a.PolicyRouting
	}
	if a.MTU != 0 {
		c["mtu"] = a.MTU
	}
	if a.Family != "" {
		c["family"] = a.Family
	}
	if a.Network != "" {
		c["name"] = a.Network
	}
	if a.Valid != nil {
		c["cni.dev/valid-attachments"] = a.Valid
	}
	return c
}

// Pod is a netns on a node with a primary eth0 and multinic attachments made by the real plugin.
type Pod struct {
	Node                 *Node
	Name, Namespace, UID string
	ContainerID          string
	NetNSName, NetNSPath string
	PrimaryIP            netip.Addr // eth0's address, in the node's PodCIDR
	Attachments          []Attachment
	Results              []*current.Result // one per attachment that ADD succeeded for, in order
	rawResults           [][]byte
	netns                ns.NetNS
	h                    netlinksafe.Handle
	hostVeth             string
	mu                   sync.Mutex
	deleted, removed     bool
}

// AddPod creates a pod netns on the node with eth0 (a veth to the node: PrimaryIP/32, default route via the
// node) and runs CNI ADD of the real plugin, from inside the node's netns, for each attachment in order.
// It fails tb if anything fails. The pod is DEL'd and removed when tb ends (or by Remove).
func (n *Node) AddPod(tb TB, name string, atts []Attachment) *Pod {
	tb.Helper()
	p, err := n.NewPod(name)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := p.Remove(); err != nil {
			tb.Errorf("remove pod %s: %v", name, err)
		}
	})
	for _, a := range atts {
		if _, err := p.Attach(a); err != nil {
			tb.Fatal(err)
		}
	}
	return p
}

// NewPod creates a pod netns with its eth0 and no attachment; Attach adds them. The caller must Remove it
// (the region removes it at the end at the latest).
func (n *Node) NewPod(name string) (_ *Pod, retErr error) {
	n.mu.Lock()
	n.podSeq++
	seq := n.podSeq
	n.mu.Unlock()
	if seq > 250 {
		return nil, fmt.Errorf("new pod %s on %s: at most 250 pods per node", name, n.Name)
	}
	id := make([]byte, 32)
	_, _ = rand.Read(id)
	p := &Pod{
		Node: n, Name: name, Namespace: "default", UID: fmt.Sprintf("uid-%s-%s", n.Name, name),
		ContainerID: hex.EncodeToString(id),
		NetNSName:   fmt.Sprintf("%s-%s", n.NetNSName, name),
		PrimaryIP:   n.PodCIDR.Addr().Next().Next(), // .2 ...
	}
	for range seq - 1 {
		p.PrimaryIP = p.PrimaryIP.Next()
	}
	p.NetNSPath = filepath.Join(fabric.NetNSDir, p.NetNSName)
	p.hostVeth = fmt.Sprintf("veth%08x", crc32.ChecksumIEEE([]byte(p.NetNSName)))
	var err error
	if p.netns, p.h, err = namedns.CreateOpen(p.NetNSPath); err != nil {
		return nil, fmt.Errorf("new pod %s: %w", name, err)
	}
	n.region.addPod(p)
	defer func() {
		if retErr != nil {
			retErr = errors.Join(retErr, p.Remove())
		}
	}()
	if err := p.setupPrimary(); err != nil {
		return nil, fmt.Errorf("new pod %s: primary interface: %w", name, err)
	}
	return p, nil
}

// setupPrimary gives the pod lo, and eth0 as a ptp veth to the node (like the ptp plugin): the pod has
// PrimaryIP/32, a host route to the node's end and a default route through it; the node has a /32 route
// back. IPv6 is off in the pod so that no stray packet (router solicitation, MLD) moves the counters.
func (p *Pod) setupPrimary() error {
	n := p.Node
	for _, key := range []string{"net/ipv6/conf/all/disable_ipv6", "net/ipv6/conf/default/disable_ipv6"} {
		if err := writeSysctl(p.netns, key, "1", true); err != nil {
			return err
		}
	}
	lo, err := p.h.LinkByName("lo")
	if err == nil {
		err = p.h.LinkSetUp(lo)
	}
	if err != nil {
		return fmt.Errorf("set lo up: %w", err)
	}
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: p.hostVeth},
		PeerName:      PrimaryIfName,
		PeerNamespace: netlink.NsFd(int(p.netns.Fd())),
	}
	if err := n.h.LinkAdd(veth); err != nil {
		return fmt.Errorf("create veth %s/%s: %w", p.hostVeth, PrimaryIfName, err)
	}
	gw := n.PodCIDR.Addr().Next() // .1: the node's end of every pod veth
	host, err := n.h.LinkByName(p.hostVeth)
	if err != nil {
		return fmt.Errorf("find %s: %w", p.hostVeth, err)
	}
	if err := n.h.AddrAdd(host, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(gw, 32))}); err != nil {
		return fmt.Errorf("address %s on %s: %w", gw, p.hostVeth, err)
	}
	if err := n.h.LinkSetUp(host); err != nil {
		return fmt.Errorf("set %s up: %w", p.hostVeth, err)
	}
	back := netlink.Route{LinkIndex: host.Attrs().Index, Dst: ipNet(netip.PrefixFrom(p.PrimaryIP, 32)), Scope: netlink.SCOPE_LINK}
	if err := n.h.RouteReplace(&back); err != nil {
		return fmt.Errorf("route to %s on %s: %w", p.PrimaryIP, p.hostVeth, err)
	}
	eth0, err := p.h.LinkByName(PrimaryIfName)
	if err != nil {
		return fmt.Errorf("find %s: %w", PrimaryIfName, err)
	}
	if err := p.h.AddrAdd(eth0, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(p.PrimaryIP, 32))}); err != nil {
		return fmt.Errorf("address %s on %s: %w", p.PrimaryIP, PrimaryIfName, err)
	}
	if err := p.h.LinkSetUp(eth0); err != nil {
		return fmt.Errorf("set %s up: %w", PrimaryIfName, err)
	}
	for _, rt := range []netlink.Route{
		{LinkIndex: eth0.Attrs().Index, Dst: ipNet(netip.PrefixFrom(gw, 32)), Scope: netlink.SCOPE_LINK},
		{LinkIndex: eth0.Attrs().Index, Dst: ipNet(netip.MustParsePrefix("0.0.0.0/0")), Gw: net.IP(gw.AsSlice())},
	} {
		if err := p.h.RouteAdd(&rt); err != nil {
			return fmt.Errorf("route %s on %s: %w", rt.Dst, PrimaryIfName, err)
		}
	}
	return nil
}

// Attach runs CNI ADD for a, appends it to the pod's attachments and returns the result. The attachment is
// recorded even when ADD fails, so that DEL (which must then succeed) cleans up after it.
func (p *Pod) Attach(a Attachment) (*current.Result, error) {
	p.mu.Lock()
	if a.IfName == "" {
		a.IfName = fmt.Sprintf("net%d", len(p.Attachments)+1)
	}
	p.Attachments = append(p.Attachments, a)
	p.deleted = false
	p.mu.Unlock()
	out, err := p.CNI("ADD", a, nil)
	if err != nil {
		return nil, fmt.Errorf("pod %s: %w", p.Name, err)
	}
	r, err := current.NewResult(out)
	if err == nil {
		var res *current.Result
		if res, err = current.NewResultFromResult(r); err == nil {
			p.mu.Lock()
			p.Results = append(p.Results, res)
			p.rawResults = append(p.rawResults, out)
			p.mu.Unlock()
			return res, nil
		}
	}
	return nil, fmt.Errorf("pod %s: ADD %s: parse result %s: %w", p.Name, a.IfName, out, err)
}

// CNI execs the plugin with command (ADD, CHECK, DEL, STATUS, ...) for attachment a of the pod, from
// inside the node's netns, as a runtime would; prevResult, when set, goes into the config. It returns the
// plugin's stdout; a failure carries the CNI error and the plugin's stderr.
func (p *Pod) CNI(command string, a Attachment, prevResult []byte) ([]byte, error) {
	n := p.Node
	conf := a.NetConf(n.Socket)
	if prevResult != nil {
		conf["prevResult"] = json.RawMessage(prevResult)
	}
	stdin, err := json.Marshal(conf)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(filepath.Join(n.region.binDir, PluginBinary))
	cmd.Env = []string{
		"CNI_COMMAND=" + command,
		"CNI_CONTAINERID=" + p.ContainerID,
		"CNI_NETNS=" + p.NetNSPath,
		"CNI_IFNAME=" + a.IfName,
		"CNI_ARGS=" + strings.Join([]string{"IgnoreUnknown=1",
			"K8S_POD_NAMESPACE=" + p.Namespace, "K8S_POD_NAME=" + p.Name,
			"K8S_POD_INFRA_CONTAINER_ID=" + p.ContainerID, "K8S_POD_UID=" + p.UID}, ";"),
		"CNI_PATH=" + n.region.binDir,
		"PATH=" + os.Getenv("PATH"),
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = bytes.NewReader(stdin), &stdout, &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // not killed halfway by a terminal's Ctrl-C
	// Do runs on a thread locked in the node's netns; the child forked from it starts there.
	err = n.netns.Do(func(ns.NetNS) error { return cmd.Run() })
	if err != nil {
		var cniErr types.Error
		if json.Unmarshal(stdout.Bytes(), &cniErr) == nil && cniErr.Code != 0 {
			return nil, fmt.Errorf("%s %s: %w (stderr: %s)", command, a.IfName, &cniErr, strings.TrimSpace(stderr.String()))
		}
		return nil, fmt.Errorf("%s %s: %w (stdout: %s, stderr: %s)", command, a.IfName, err, stdout.String(), strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

// Check runs CNI CHECK of every attachment with its ADD result as prevResult.
func (p *Pod) Check() error {
	p.mu.Lock()
	atts, raws := append([]Attachment(nil), p.Attachments...), append([][]byte(nil), p.rawResults...)
	p.mu.Unlock()
	var errs []error
	for i, a := range atts {
		if i >= len(raws) {
			errs = append(errs, fmt.Errorf("check %s: ADD did not succeed", a.IfName))
			continue
		}
		if _, err := p.CNI("CHECK", a, raws[i]); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Del runs CNI DEL of every attachment, last first. Del twice runs DEL twice (it must succeed).
func (p *Pod) Del() error {
	p.mu.Lock()
	atts := append([]Attachment(nil), p.Attachments...)
	p.mu.Unlock()
	var errs []error
	for i := len(atts) - 1; i >= 0; i-- {
		if _, err := p.CNI("DEL", atts[i], nil); err != nil {
			errs = append(errs, fmt.Errorf("pod %s: %w", p.Name, err))
		}
	}
	p.mu.Lock()
	p.deleted = true
	p.mu.Unlock()
	return errors.Join(errs...)
}

// Remove DELs the pod unless Del ran already, then removes its eth0 and its netns. Idempotent.
func (p *Pod) Remove() error {
	p.mu.Lock()
	if p.removed {
		p.mu.Unlock()
		return nil
	}
	p.removed = true
	deleted := p.deleted
	p.mu.Unlock()
	var errs []error
	if !deleted {
		errs = append(errs, p.Del())
	}
	// The veth goes with the netns, but asynchronously: delete it now so that nothing lingers.
	if l, err := p.Node.h.LinkByName(p.hostVeth); err == nil {
		errs = append(errs, p.Node.h.LinkDel(l))
	}
	if p.h.Handle != nil {
		p.h.Close()
	}
	if p.netns != nil {
		errs = append(errs, p.netns.Close())
	}
	errs = append(errs, namedns.Remove(p.NetNSPath))
	p.Node.region.forgetPod(p)
	return errors.Join(errs...)
}

// NetNS is the pod's netns (do not close it).
func (p *Pod) NetNS() ns.NetNS { return p.netns }

// Handle is a route netlink handle bound to the pod's netns (do not close it).
func (p *Pod) Handle() netlinksafe.Handle { return p.h }

// Do runs f on a thread in the pod's netns; sockets made there stay in it.
func (p *Pod) Do(f func() error) error { return p.netns.Do(func(ns.NetNS) error { return f() }) }

// Result is the ADD result of the attachment named ifName, or nil.
func (p *Pod) Result(ifName string) *current.Result {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, a := range p.Attachments {
		if a.IfName == ifName && i < len(p.Results) {
			return p.Results[i]
		}
	}
	return nil
}

// Addr is the IPv4 address ADD gave the attachment named ifName (eth0: PrimaryIP); invalid when none.
func (p *Pod) Addr(ifName string) netip.Addr {
	if ifName == PrimaryIfName {
		return p.PrimaryIP
	}
	return p.resultAddr(ifName, false)
}

// Addr6 is the IPv6 address ADD gave the attachment named ifName (family ipv6 or dual); invalid when none.
func (p *Pod) Addr6(ifName string) netip.Addr { return p.resultAddr(ifName, true) }

// resultAddr is the first address of the family in the attachment's ADD result.
func (p *Pod) resultAddr(ifName string, v6 bool) netip.Addr {
	r := p.Result(ifName)
	if r == nil {
		return netip.Addr{}
	}
	for _, ipc := range r.IPs {
		if a, ok := netip.AddrFromSlice(ipc.Address.IP); ok && a.Unmap().Is6() == v6 {
			return a.Unmap()
		}
	}
	return netip.Addr{}
}

// LinkStats reads the counters of a link in the pod.
func (p *Pod) LinkStats(name string) (netlink.LinkStatistics, error) { return linkStats(p.h, name) }
