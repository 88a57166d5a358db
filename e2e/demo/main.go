// Command demo is `make demo`: fake-ec2 as two trn1.32xlarge nodes whose ENIs are real links,
// an ENI on every non-primary network card of each node (through the real AWS SDK), a table of
// what was attached, and a bandwidth run over 1, 2, 4 and 7 cards with a per-card rate limit,
// showing why a multi-homed workload wants every card. Everything is removed at the end.
//
// The agent and the CNI plugin (issues 3 and 4) will put these addresses into pods; until
// then the demo plays their part and addresses the ENI links in the node namespaces itself.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/multinic/multinic/e2e/fabric"
	"github.com/multinic/multinic/e2e/fakeec2"
	"github.com/multinic/multinic/e2e/traffic"
)

const prefix = "mndemo"

func main() {
	instanceType := flag.String("instance-type", "trn1.32xlarge", "instance type of both nodes")
	rate := flag.Uint64("rate-per-card", 200_000_000, "per-card bandwidth limit on the fabric, bit/s")
	duration := flag.Duration("duration", 2*time.Second, "length of each bandwidth measurement")
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "demo: needs root (it creates network namespaces and links)")
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *instanceType, *rate, *duration); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

// nodeENI is one ENI the demo attached, with its link configured in the node's netns.
type nodeENI struct {
	node, link, addr, eni string
	card                  int
}

func run(ctx context.Context, instanceType string, rate uint64, d time.Duration) (retErr error) {
	it, ok := fakeec2.LookupInstanceType(instanceType)
	if !ok {
		return fmt.Errorf("instance type %q is not in the catalog %v", instanceType, fakeec2.InstanceTypes())
	}
	subnets, err := fakeec2.SubnetsPerCard(it.NetworkCards)
	if err != nil {
		return err
	}
	cfg := fakeec2.Config{Subnets: subnets, Instances: []fakeec2.InstanceConfig{
		{ID: "i-0demo000000000001", Type: instanceType}, {ID: "i-0demo000000000002", Type: instanceType}}}
	nodes := map[string]string{cfg.Instances[0].ID: prefix + "-node1", cfg.Instances[1].ID: prefix + "-node2"}

	step("building the VPC fabric: netns %s-vpc, one bridge per card's subnet, %s per card", prefix, mbit(float64(rate)))
	if err := fabric.Cleanup(prefix); err != nil {
		return err
	}
	fab, err := fabric.New(fabric.Config{Prefix: prefix, Nodes: nodes, RatePerCard: rate})
	if err != nil {
		return err
	}
	defer func() { retErr = errors.Join(retErr, teardown(fab)) }()
	srv, err := fakeec2.New(cfg, fakeec2.WithLinkMaker(fab))
	if err != nil {
		return err
	}
	defer srv.Close()
	endpoint, err := srv.Listen("127.0.0.1:0")
	if err != nil {
		return err
	}
	step("fake-ec2 serving the EC2 Query API and IMDSv2 on %s: 2 x %s (%d network cards, %d ENIs per card)",
		endpoint, instanceType, it.NetworkCards, it.InterfacesPerCard)

	client := srv.Client()
	var enis []nodeENI
	for _, inst := range cfg.Instances {
		step("attaching an ENI on cards 1-%d of %s (%s)", it.NetworkCards-1, inst.ID, nodes[inst.ID])
		for card := 1; card < it.NetworkCards; card++ {
			e, err := attachENI(ctx, client, inst.ID, nodes[inst.ID], card)
			if err != nil {
				return err
			}
			enis = append(enis, e)
		}
	}
	printTable(enis)
	return bandwidthRun(ctx, nodes[cfg.Instances[0].ID], nodes[cfg.Instances[1].ID], enis, it.NetworkCards-1, rate, d)
}

// attachENI creates an ENI in the card's subnet, attaches it on that card, and configures its
// link in the node netns as the agent and plugin will: found by MAC, up, addressed.
func attachENI(ctx context.Context, client *ec2.Client, instanceID, netnsName string, card int) (nodeENI, error) {
	created, err := client.CreateNetworkInterface(ctx, &ec2.CreateNetworkInterfaceInput{
		SubnetId:    aws.String(fakeec2.CardSubnetID(card)),
		Description: aws.String(fmt.Sprintf("multinic demo card %d", card)),
		TagSpecifications: []types.TagSpecification{{ResourceType: types.ResourceTypeNetworkInterface,
			Tags: []types.Tag{{Key: aws.String("multinic.io/card"), Value: aws.String(fmt.Sprint(card))}}}},
	})
	if err != nil {
		return nodeENI{}, fmt.Errorf("create ENI for card %d of %s: %w", card, instanceID, err)
	}
	eni := created.NetworkInterface
	if _, err := client.AttachNetworkInterface(ctx, &ec2.AttachNetworkInterfaceInput{
		NetworkInterfaceId: eni.NetworkInterfaceId, InstanceId: aws.String(instanceID),
		NetworkCardIndex: aws.Int32(int32(card)), DeviceIndex: aws.Int32(1),
	}); err != nil {
		return nodeENI{}, fmt.Errorf("attach %s on card %d of %s: %w", aws.ToString(eni.NetworkInterfaceId), card, instanceID, err)
	}
	addr := aws.ToString(eni.PrivateIpAddress)
	link, err := configureLink(netnsName, aws.ToString(eni.MacAddress), addr)
	if err != nil {
		return nodeENI{}, err
	}
	return nodeENI{node: netnsName, card: card, link: link, addr: addr, eni: aws.ToString(eni.NetworkInterfaceId)}, nil
}

func configureLink(netnsName, mac, addr string) (string, error) {
	var name string
	err := inNetNS(netnsName, func(ns.NetNS) error {
		links, err := netlink.LinkList()
		if err != nil {
			return err
		}
		for _, l := range links {
			if l.Attrs().HardwareAddr.String() != mac {
				continue
			}
			name = l.Attrs().Name
			a, err := netlink.ParseAddr(addr + "/" + fmt.Sprint(subnetBits))
			if err != nil {
				return err
			}
			if err := netlink.AddrAdd(l, a); err != nil {
				return err
			}
			return netlink.LinkSetUp(l)
		}
		return fmt.Errorf("no link with MAC %s", mac)
	})
	if err != nil {
		return "", fmt.Errorf("configure ENI link in %s: %w", netnsName, err)
	}
	return name, nil
}

// subnetBits is the prefix length fakeec2.SubnetsPerCard gives cards' subnets on types with up to 16 cards.
const subnetBits = 20

func inNetNS(name string, f func(ns.NetNS) error) error {
	n, err := ns.GetNS(filepath.Join(fabric.NetNSDir, name))
	if err != nil {
		return err
	}
	defer n.Close()
	return n.Do(f)
}

func printTable(enis []nodeENI) {
	fmt.Println()
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "NODE\tCARD\tLINK\tADDRESS\tENI")
	for _, e := range enis {
		fmt.Fprintf(w, "%s\t%d\t%s\t%s\t%s\n", e.node, e.card, e.link, e.addr, e.eni)
	}
	w.Flush()
	fmt.Println()
}

// bandwidthRun sends from node1 to node2 over 1, 2, 4 and all cards at once, each card its own
// flow between the two nodes' ENIs on that card, and prints the aggregate.
func bandwidthRun(ctx context.Context, node1, node2 string, enis []nodeENI, cards int, rate uint64, d time.Duration) error {
	src, err := ns.GetNS(filepath.Join(fabric.NetNSDir, node1))
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := ns.GetNS(filepath.Join(fabric.NetNSDir, node2))
	if err != nil {
		return err
	}
	defer dst.Close()
	byCard := map[string]map[int]net.IP{node1: {}, node2: {}}
	var sinkAddrs []net.IP
	for _, e := range enis {
		byCard[e.node][e.card] = net.ParseIP(e.addr)
		if e.node == node2 {
			sinkAddrs = append(sinkAddrs, net.ParseIP(e.addr))
		}
	}
	sink, err := traffic.NewSink(dst, sinkAddrs)
	if err != nil {
		return err
	}
	defer sink.Close()

	step("bandwidth %s -> %s, 4 TCP connections per card, %s per card, %s per run", node1, node2, mbit(float64(rate)), d)
	// Rows print as they are measured, so fixed widths rather than a tabwriter.
	fmt.Printf("%5s  %14s  %14s  %10s\n", "CARDS", "AGGREGATE", "PER CARD", "x ONE CARD")
	var one float64
	for _, n := range []int{1, 2, 4, cards} {
		if n > cards {
			continue
		}
		var flows []traffic.Flow
		for card := 1; card <= n; card++ {
			flows = append(flows, traffic.Flow{SrcNS: src, Src: byCard[node1][card], Dst: byCard[node2][card]})
		}
		r, err := traffic.Run(ctx, sink, flows, 4, d)
		if err != nil {
			return err
		}
		if n == 1 {
			one = r.Total
		}
		fmt.Printf("%5d  %14s  %14s  %10.2f\n", n, mbit(r.Total), mbit(r.Total/float64(n)), r.Total/one)
	}
	return nil
}

// teardown closes the fabric and checks that nothing of the demo's is left on the host.
func teardown(fab *fabric.Fabric) error {
	step("tearing down")
	if err := fab.Close(); err != nil {
		return err
	}
	left, _ := filepath.Glob(filepath.Join(fabric.NetNSDir, prefix+"*"))
	if len(left) > 0 {
		return fmt.Errorf("netns left after teardown: %v", left)
	}
	step("done: no namespace, link or process of the demo remains")
	return nil
}

func step(format string, args ...any) {
	fmt.Printf("==> "+format+"\n", args...)
}

func mbit(bps float64) string { return fmt.Sprintf("%.0f Mbit/s", bps/1e6) }
