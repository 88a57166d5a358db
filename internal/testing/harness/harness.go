// Package harness stands up one fake EC2 region with N nodes on one machine, for root tests and demos:
// fake-ec2 in-process, the VPC fabric (fabric package) with one netns per node, and per node the REAL
// multinic-agent binary; pods are netns whose multinic attachments are made by exec'ing the REAL multinic
// CNI plugin from inside the node's netns, as a container runtime would.
//
//	region := harness.NewRegion(t, harness.Config{Nodes: 2})
//	pod := region.Node(0).AddPod(t, "a", []harness.Attachment{{Card: 1}, {Card: 2, Mode: "exclusive"}})
//	addr := pod.Addr("net1")
//	err := pod.Del()
//
// The region also plays the VPC's router and the cluster's primary network, so that traffic behaves as on
// EC2: each subnet's bridge in the fabric netns carries the subnet's gateway (.1) with forwarding on; each
// pod gets an eth0 (a veth to its node, 10.244.<node>.<n>/32, default route via the node); each node
// forwards, routes by default through its primary ENI's gateway, and the router knows each node's pod
// range (10.244.<node>.0/24 via the node's primary address), like a VPC route table.
//
// Everything is removed when the test ends, failed or not: pods DEL'd and their netns removed, agents
// SIGTERMed and waited for, fake-ec2 closed (ENI links detached), the fabric closed. Names start with
// Config.Prefix, so fabric.Cleanup(prefix) removes what a killed run left behind.
package harness

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/multinic/multinic/internal/namedns"
	"github.com/multinic/multinic/internal/testing/fabric"
	"github.com/multinic/multinic/internal/testing/fakeec2"
	"github.com/multinic/multinic/ipam/eni"
)

// Defaults of Config's zero values.
const (
	DefaultInstanceType = "trn1.32xlarge"
	DefaultWarmTarget   = 2
	DefaultCluster      = "multinic-e2e"
	// DefaultReadyTimeout bounds the wait for an agent to serve every managed card; generous for the
	// single-vCPU test VM.
	DefaultReadyTimeout = 90 * time.Second
)

// DefaultManagedCards are the cards the agents serve unless Config says otherwise: few, to start fast.
var DefaultManagedCards = []int{1, 2}

// Config describes a region. Zero values take the defaults.
type Config struct {
	// InstanceType of every node, from fake-ec2's catalog (DefaultInstanceType).
	InstanceType string
	// Nodes is the number of instances, each with its netns and agent (1).
	Nodes int
	// Prefix names the netns: "<Prefix>-vpc", "<Prefix>-n<i>", "<Prefix>-n<i>-<pod>" (generated, unique per
	// process and region). At most 20 characters.
	Prefix string
	// ManagedCards are the cards each agent serves (DefaultManagedCards).
	ManagedCards []int
	// WarmTarget is each agent's --warm-target (DefaultWarmTarget).
	WarmTarget int
	// AgentDefaults runs the agents with their own defaults for the pool and EC2 rate (--warm-target,
	// --min-free, --cooldown, --ec2-rate, --ec2-burst), as a node does, instead of the harness's quick
	// ones; WarmTarget is then unused.
	AgentDefaults bool
	// Subnets are fake-ec2's subnets (fakeec2.SubnetsPerCard of the instance type: one per card, each
	// card's ENIs in its own).
	Subnets []fakeec2.SubnetConfig
	// AgentArgs are extra agent flags; they override the harness's (the last value of a flag wins).
	AgentArgs []string
	// ReadyTimeout bounds the wait for each agent to be ready (DefaultReadyTimeout).
	ReadyTimeout time.Duration
	// NoAgents leaves the nodes without the harness's agents: something else runs them (the real-node e2e,
	// as a DaemonSet on a real kubelet). Node.StartAgent still starts one.
	NoAgents bool
	// BinDir is the folder of the multinic and multinic-agent binaries the nodes run (BinDir's when empty).
	BinDir string
	// PCIeRoots gives cards a PCIe root ("pci0000:10") in each node's fake sysfs (fabric.Config.PCIeRoots),
	// which the agents read (--sysfs); other cards' links have no PCI device, as a veth.
	PCIeRoots map[int]string
	// LaunchTemplate: every node is launched from this launch template data (its NetworkInterfaces and
	// TagSpecifications, EC2's JSON shape), as an autoscaler's launch template gives them; see LaunchENIs.
	LaunchTemplate *fakeec2.LaunchTemplateData
	// RatePerCard is the fabric's rate limit of every ENI in bit/s, both directions (fabric.Config.RatePerCard:
	// tbf, and ifb + mirred for what the ENI sends); 0 = none.
	RatePerCard uint64
}

// Region is a fake EC2 region with its nodes. Use NewRegion.
type Region struct {
	cfg      Config
	binDir   string
	fake     *fakeec2.Server
	fab      *fabric.Fabric
	endpoint string
	nodes    []*Node
	sysfsDir string // the nodes' fake sysfs trees (fabric.Config.SysfsDir)

	mu   sync.Mutex
	pods []*Pod // live pods, for the final cleanup
}

var regionSeq atomic.Int32

// NewRegion starts fake-ec2 with cfg.Nodes instances, the fabric with their netns, and one real agent per
// node, and waits until every agent is ready on every managed card. It fails tb on any error (skipping it
// unless it runs as root), and tears everything down when tb ends.
func NewRegion(tb TB, cfg Config) *Region {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("needs root: creates network namespaces, links and runs the agent")
	}
	cfg = cfg.withDefaults()
	if len(cfg.Prefix) > 20 {
		tb.Fatalf("harness prefix %q invalid: at most 20 characters", cfg.Prefix)
	}
	r := &Region{cfg: cfg, binDir: cfg.BinDir}
	if r.binDir == "" {
		r.binDir = BinDir(tb)
	}
	tb.Cleanup(func() {
		if err := r.close(tb); err != nil {
			tb.Errorf("tear down region %s: %v", cfg.Prefix, err)
		}
	})
	if err := r.start(tb); err != nil {
		tb.Fatalf("start region %s: %v", cfg.Prefix, err)
	}
	return r
}

func (c Config) withDefaults() Config {
	if c.InstanceType == "" {
		c.InstanceType = DefaultInstanceType
	}
	if c.Nodes == 0 {
		c.Nodes = 1
	}
	if c.Prefix == "" {
		c.Prefix = fmt.Sprintf("mnh%d-%d", os.Getpid()%100000, regionSeq.Add(1))
	}
	if c.ManagedCards == nil {
		c.ManagedCards = DefaultManagedCards
	}
	if c.WarmTarget == 0 {
		c.WarmTarget = DefaultWarmTarget
	}
	if c.ReadyTimeout == 0 {
		c.ReadyTimeout = DefaultReadyTimeout
	}
	return c
}

func (r *Region) start(tb TB) error {
	it, ok := fakeec2.LookupInstanceType(r.cfg.InstanceType)
	if !ok {
		return fmt.Errorf("instance type %q not in fake-ec2's catalog %v", r.cfg.InstanceType, fakeec2.InstanceTypes())
	}
	for _, c := range r.cfg.ManagedCards {
		if c < 0 || c >= it.NetworkCards {
			return fmt.Errorf("managed card %d invalid: %s has cards 0-%d", c, it.Name, it.NetworkCards-1)
		}
	}
	subnets := r.cfg.Subnets
	if subnets == nil {
		var err error
		if subnets, err = fakeec2.SubnetsPerCard(it.NetworkCards); err != nil {
			return err
		}
	}
	fcfg := fakeec2.Config{Subnets: subnets}
	nodeNS := map[string]string{}
	for i := range r.cfg.Nodes {
		id := fmt.Sprintf("i-0%016x", i+1)
		ic := fakeec2.InstanceConfig{ID: id, Type: it.Name}
		if r.cfg.LaunchTemplate != nil {
			ic.LaunchTemplateData = *r.cfg.LaunchTemplate
		}
		fcfg.Instances = append(fcfg.Instances, ic)
		nodeNS[id] = fmt.Sprintf("%s-n%d", r.cfg.Prefix, i+1)
	}
	if err := shareNetNSDir(); err != nil {
		return err
	}
	if err := fabric.Cleanup(r.cfg.Prefix); err != nil {
		return err
	}
	var err error
	if r.sysfsDir, err = os.MkdirTemp("", "mnh-sysfs-"); err != nil {
		return err
	}
	if r.fab, err = fabric.New(fabric.Config{Prefix: r.cfg.Prefix, Nodes: nodeNS, RatePerCard: r.cfg.RatePerCard,
		SysfsDir: r.sysfsDir, PCIeRoots: r.cfg.PCIeRoots}); err != nil {
		return err
	}
	if r.fake, err = fakeec2.New(fcfg, fakeec2.WithLinkMaker(r.fab)); err != nil {
		return err
	}
	if r.endpoint, err = r.fake.Listen("127.0.0.1:0"); err != nil {
		return err
	}
	st := r.fake.State()
	for i, in := range st.Instances {
		n, err := r.newNode(tb, i, in, nodeNS[in.ID])
		r.nodes = append(r.nodes, n) // before the error check: close cleans up what was made
		if err != nil {
			return err
		}
	}
	for _, n := range r.nodes {
		if r.cfg.NoAgents {
			break
		}
		if err := n.WaitReady(); err != nil {
			return err
		}
	}
	return r.routeVPC()
}

// LaunchENIs is launch template data as the README's example lays it out: the primary on card 0 and one
// plain ENI at device index 1 of each of cards, in the card's subnet (fakeec2.CardSubnetID), with secondaries
// secondary addresses and DeleteOnTermination, tagged with the harness's cluster and no node: the agents
// adopt them as launch ENIs.
func LaunchENIs(cards []int, secondaries int) *fakeec2.LaunchTemplateData {
	dot := true
	d := &fakeec2.LaunchTemplateData{
		NetworkInterfaces: []fakeec2.LaunchNetworkInterface{{SubnetID: fakeec2.CardSubnetID(0), DeleteOnTermination: &dot}},
		TagSpecifications: []fakeec2.LaunchTagSpecification{{ResourceType: "network-interface",
			Tags: []fakeec2.LaunchTag{{Key: eni.TagCluster, Value: DefaultCluster}}}},
	}
	for _, k := range cards {
		d.NetworkInterfaces = append(d.NetworkInterfaces, fakeec2.LaunchNetworkInterface{NetworkCardIndex: k, DeviceIndex: 1,
			SubnetID: fakeec2.CardSubnetID(k), SecondaryPrivateIPAddressCount: secondaries, DeleteOnTermination: &dot})
	}
	return d
}

// Node returns the i-th node (0-based).
func (r *Region) Node(i int) *Node { return r.nodes[i] }

// Nodes returns every node in instance order.
func (r *Region) Nodes() []*Node { return slices.Clone(r.nodes) }

// Fake is the in-process fake-ec2 server.
func (r *Region) Fake() *fakeec2.Server { return r.fake }

// Endpoint is fake-ec2's URL (EC2 Query API, GET /fake/state).
func (r *Region) Endpoint() string { return r.endpoint }

// State is a snapshot of fake-ec2's state.
func (r *Region) State() fakeec2.State { return r.fake.State() }

// Prefix is the name prefix of the region's netns.
func (r *Region) Prefix() string { return r.cfg.Prefix }

// SysfsRoot is the fake sysfs of the node with this netns name, as its agent's --sysfs.
func (r *Region) SysfsRoot(netnsName string) string { return filepath.Join(r.sysfsDir, netnsName) }

// FabricNetNS is the name of the fabric's netns (the VPC router).
func (r *Region) FabricNetNS() string { return r.fab.NetNSName() }

// Gateway is the router address of a subnet (its network address + 1), as the agent reports it.
func Gateway(subnet netip.Prefix) netip.Addr { return subnet.Masked().Addr().Next() }

// routeVPC makes the fabric netns the VPC's router: the gateway of every subnet on its bridge, forwarding
// on, and each node's pod range through the node's primary address.
func (r *Region) routeVPC() error {
	path := filepath.Join(fabric.NetNSDir, r.fab.NetNSName())
	nsh, h, err := namedns.Open(path)
	if err != nil {
		return err
	}
	defer nsh.Close()
	defer h.Close()
	for _, kv := range [][2]string{
		{"net/ipv4/ip_forward", "1"}, {"net/ipv4/conf/all/rp_filter", "0"}, {"net/ipv4/conf/default/rp_filter", "0"},
	} {
		if err := writeSysctl(nsh, kv[0], kv[1], false); err != nil {
			return err
		}
	}
	cidrs := map[string]netip.Prefix{}
	for _, sn := range r.fake.State().Subnets {
		cidrs[sn.ID] = netip.MustParsePrefix(sn.CIDR)
	}
	links, err := h.LinkList()
	if err != nil {
		return fmt.Errorf("list links of %s: %w", r.fab.NetNSName(), err)
	}
	for _, l := range links {
		cidr, ok := cidrs[l.Attrs().Alias] // the fabric names each bridge's subnet in its alias
		if l.Type() != "bridge" || !ok {
			continue
		}
		gw := netlink.Addr{IPNet: ipNet(netip.PrefixFrom(Gateway(cidr), cidr.Bits()))}
		if err := h.AddrAdd(l, &gw); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("add gateway %s to %s (%s): %w", gw.IPNet, l.Attrs().Name, l.Attrs().Alias, err)
		}
	}
	for _, n := range r.nodes {
		rt := netlink.Route{Dst: ipNet(n.PodCIDR), Gw: net.IP(n.PrimaryIP.AsSlice())}
		if err := h.RouteReplace(&rt); err != nil {
			return fmt.Errorf("route %s via %s in %s: %w", n.PodCIDR, n.PrimaryIP, r.fab.NetNSName(), err)
		}
	}
	return nil
}

// close tears down in dependency order: pods (DEL through the plugin, while the agents still run), agents,
// fake-ec2 (detaches every ENI link), fabric, and finally whatever netns with the prefix is left.
func (r *Region) close(tb TB) error {
	r.mu.Lock()
	pods := slices.Clone(r.pods)
	r.mu.Unlock()
	var errs []error
	for i := len(pods) - 1; i >= 0; i-- {
		errs = append(errs, pods[i].Remove())
	}
	for _, n := range r.nodes {
		errs = append(errs, n.close(tb))
	}
	if r.fake != nil {
		errs = append(errs, r.fake.Close())
	}
	if r.fab != nil {
		errs = append(errs, r.fab.Close())
	}
	errs = append(errs, fabric.Cleanup(r.cfg.Prefix))
	if r.sysfsDir != "" {
		errs = append(errs, os.RemoveAll(r.sysfsDir))
	}
	return errors.Join(errs...)
}

func (r *Region) addPod(p *Pod) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.pods = append(r.pods, p)
}

func (r *Region) forgetPod(p *Pod) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.pods = slices.DeleteFunc(r.pods, func(x *Pod) bool { return x == p })
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// linkStats reads a link's counters through h.
func linkStats(h netlinksafe.Handle, name string) (netlink.LinkStatistics, error) {
	l, err := h.LinkByName(name)
	if err != nil {
		return netlink.LinkStatistics{}, fmt.Errorf("find link %s: %w", name, err)
	}
	if l.Attrs().Statistics == nil {
		return netlink.LinkStatistics{}, fmt.Errorf("link %s: no statistics", name)
	}
	return *l.Attrs().Statistics, nil
}
