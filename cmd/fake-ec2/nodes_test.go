package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/multinic/multinic/internal/nettest"
	"github.com/multinic/multinic/internal/testing/fabric"
	"github.com/multinic/multinic/internal/testing/fakeec2"
)

// TestTwoNodesReachEachOtherPerCard runs the binary with two materialized trn1.32xlarge
// nodes, attaches an ENI on cards 1 and 2 of each through the real SDK, plays the agent
// (link up, address), pings node to node over each card, reads IMDS from inside a node's
// netns, then stops fake-ec2 with SIGTERM and checks that nothing it made is left.
func TestTwoNodesReachEachOtherPerCard(t *testing.T) {
	ping := rootAndPing(t)
	hostNS, err := ns.GetCurrentNS()
	if err != nil {
		t.Fatal(err)
	}
	defer hostNS.Close()
	hostH := nettest.Handle(t, hostNS)
	hostLinks := nettest.LinkNames(t, hostH)
	prefix := fmt.Sprintf("fe2t%d", os.Getpid()%100000)
	nodes := []string{prefix + "-n1", prefix + "-n2"}
	p := startFakeEC2(t, "--nodes", "2", "--netns", strings.Join(nodes, ","), "--fabric-prefix", prefix)
	client := fakeec2.NewClient(p.ready.Endpoint, p.ready.Region)
	ctx := context.Background()

	// Each node gets one ENI on card 1 and one on card 2; addr[node][card] is its address.
	addr := map[string]map[int]string{}
	for i, inst := range p.ready.Instances {
		addr[nodes[i]] = map[int]string{}
		for _, card := range []int{1, 2} {
			created, err := client.CreateNetworkInterface(ctx, &ec2.CreateNetworkInterfaceInput{SubnetId: aws.String(fakeec2.CardSubnetID(card))})
			if err != nil {
				t.Fatal(err)
			}
			eni := created.NetworkInterface
			if _, err := client.AttachNetworkInterface(ctx, &ec2.AttachNetworkInterfaceInput{
				NetworkInterfaceId: eni.NetworkInterfaceId, InstanceId: aws.String(inst.ID),
				NetworkCardIndex: aws.Int32(int32(card)), DeviceIndex: aws.Int32(1),
			}); err != nil {
				t.Fatal(err)
			}
			configureENILink(t, nodes[i], aws.ToString(eni.MacAddress), aws.ToString(eni.PrivateIpAddress)+"/20")
			addr[nodes[i]][card] = aws.ToString(eni.PrivateIpAddress)
		}
	}
	for _, card := range []int{1, 2} {
		from, to := addr[nodes[0]][card], addr[nodes[1]][card]
		out, err := exec.Command("ip", "netns", "exec", nodes[0], ping, "-c", "2", "-W", "2", "-I", from, to).CombinedOutput()
		if err != nil {
			t.Errorf("card %d: ping %s -> %s from %s: %v\n%s", card, from, to, nodes[0], err, out)
		}
	}

	// The agent on node 2 finds its own instance on IMDS at the loopback of its netns.
	id, err := imdsIn(t, nodes[1], p.ready.Endpoint).GetMetadata(ctx, &imds.GetMetadataInput{Path: "instance-id"})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(id.Content)
	if string(b) != p.ready.Instances[1].ID {
		t.Errorf("IMDS in %s says instance %q, want %q", nodes[1], b, p.ready.Instances[1].ID)
	}

	if err := p.stop(); err != nil {
		t.Fatalf("stop fake-ec2: %v\n%s", err, p.output)
	}
	for _, n := range append(nodes, prefix+"-vpc") {
		if _, err := os.Stat(filepath.Join(fabric.NetNSDir, n)); !os.IsNotExist(err) {
			t.Errorf("netns %s still exists after SIGTERM (stat: %v)", n, err)
		}
	}
	if after := nettest.LinkNames(t, hostH); !slices.Equal(hostLinks, after) {
		t.Errorf("host links changed: before %v, after %v", hostLinks, after)
	}
}

// TestTwoNodesReachEachOtherOverIPv6 runs the binary with two materialized nodes, creates an ENI with an
// IPv6 address on card 1 of each through the real SDK, plays the agent and plugin (link up, the address as a
// /128, default route via the VPC router fe80:ec2::1) and pings node to node over IPv6 through the fabric;
// then a /80 assigned to node 2's ENI is reachable, and no longer once it is unassigned.
func TestTwoNodesReachEachOtherOverIPv6(t *testing.T) {
	ping := rootAndPing(t)
	prefix := fmt.Sprintf("fe6t%d", os.Getpid()%100000)
	nodes := []string{prefix + "-n1", prefix + "-n2"}
	p := startFakeEC2(t, "--nodes", "2", "--netns", strings.Join(nodes, ","), "--fabric-prefix", prefix)
	client := fakeec2.NewClient(p.ready.Endpoint, p.ready.Region)
	ctx := context.Background()

	var addr, eni, mac [2]string
	for i, inst := range p.ready.Instances {
		created, err := client.CreateNetworkInterface(ctx, &ec2.CreateNetworkInterfaceInput{SubnetId: aws.String(fakeec2.CardSubnetID(1)), Ipv6AddressCount: aws.Int32(1)})
		if err != nil {
			t.Fatal(err)
		}
		e := created.NetworkInterface
		if _, err := client.AttachNetworkInterface(ctx, &ec2.AttachNetworkInterfaceInput{NetworkInterfaceId: e.NetworkInterfaceId,
			InstanceId: aws.String(inst.ID), NetworkCardIndex: aws.Int32(1), DeviceIndex: aws.Int32(1)}); err != nil {
			t.Fatal(err)
		}
		addr[i], eni[i], mac[i] = aws.ToString(e.Ipv6Addresses[0].Ipv6Address), aws.ToString(e.NetworkInterfaceId), aws.ToString(e.MacAddress)
		configureENILink6(t, nodes[i], mac[i], addr[i])
	}
	ping6 := func(from, to string) error {
		out, err := exec.Command("ip", "netns", "exec", nodes[0], ping, "-6", "-c", "2", "-W", "2", "-I", from, to).CombinedOutput()
		if err != nil {
			return fmt.Errorf("ping %s -> %s from %s: %v\n%s", from, to, nodes[0], err, out)
		}
		return nil
	}
	if err := ping6(addr[0], addr[1]); err != nil {
		t.Fatalf("card 1 over IPv6: %v", err)
	}

	out, err := client.AssignIpv6Addresses(ctx, &ec2.AssignIpv6AddressesInput{NetworkInterfaceId: aws.String(eni[1]), Ipv6PrefixCount: aws.Int32(1)})
	if err != nil {
		t.Fatal(err)
	}
	inPrefix := netip.MustParsePrefix(out.AssignedIpv6Prefixes[0]).Addr().Next().String()
	configureENILink6(t, nodes[1], mac[1], inPrefix)
	if err := ping6(addr[0], inPrefix); err != nil {
		t.Errorf("an address of the assigned /80: %v", err)
	}
	if _, err := client.UnassignIpv6Addresses(ctx, &ec2.UnassignIpv6AddressesInput{NetworkInterfaceId: aws.String(eni[1]), Ipv6Prefixes: out.AssignedIpv6Prefixes}); err != nil {
		t.Fatal(err)
	}
	if err := ping6(addr[0], inPrefix); err == nil {
		t.Errorf("%s answered after its /80 was unassigned", inPrefix)
	}
}

// rootAndPing skips a test that is not root and returns ping's path, failing the test without it.
func rootAndPing(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces and links")
	}
	ping, err := exec.LookPath("ping")
	if err != nil {
		t.Fatalf("ping is missing (%v): apt-get install iputils-ping, as .ci/run does", err)
	}
	return ping
}

// configureENILink6 does for IPv6 what the agent and plugin will: the ENI's link up, addr as a /128
// without DAD, and a default route through the VPC router.
func configureENILink6(t *testing.T, netnsName, mac, addr string) {
	t.Helper()
	onENILink(t, netnsName, mac, func(l netlink.Link) error {
		if err := netlink.LinkSetUp(l); err != nil {
			return err
		}
		a := &netlink.Addr{IPNet: &net.IPNet{IP: net.ParseIP(addr), Mask: net.CIDRMask(128, 128)}, Flags: unix.IFA_F_NODAD}
		if err := netlink.AddrAdd(l, a); err != nil {
			return err
		}
		_, def, _ := net.ParseCIDR("::/0")
		return netlink.RouteReplace(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: def, Gw: fabric.IPv6Gateway.AsSlice()})
	})
}

// configureENILink does what the agent will: find the ENI's link by MAC, bring it up, address it.
func configureENILink(t *testing.T, netnsName, mac, cidr string) {
	t.Helper()
	onENILink(t, netnsName, mac, func(l netlink.Link) error {
		a, err := netlink.ParseAddr(cidr)
		if err != nil {
			return err
		}
		if err := netlink.AddrAdd(l, a); err != nil {
			return err
		}
		return netlink.LinkSetUp(l)
	})
}

// onENILink runs f on the link with the ENI's MAC, from inside netns netnsName.
func onENILink(t *testing.T, netnsName, mac string, f func(netlink.Link) error) {
	t.Helper()
	err := inNetNS(netnsName, func() error {
		links, err := netlink.LinkList()
		if err != nil {
			return err
		}
		for _, l := range links {
			if l.Attrs().HardwareAddr.String() == mac {
				return f(l)
			}
		}
		return fmt.Errorf("no link with MAC %s", mac)
	})
	if err != nil {
		t.Fatalf("configure ENI link %s in %s: %v", mac, netnsName, err)
	}
}

func inNetNS(name string, f func() error) error {
	n, err := ns.GetNS(filepath.Join(fabric.NetNSDir, name))
	if err != nil {
		return err
	}
	defer n.Close()
	return n.Do(func(ns.NetNS) error { return f() })
}

// imdsIn returns an SDK IMDS client whose connections are opened inside netns name, at the
// same address fake-ec2 listens on in the host netns.
func imdsIn(t *testing.T, name, endpoint string) *imds.Client {
	t.Helper()
	dial := func(ctx context.Context, network, address string) (net.Conn, error) {
		var c net.Conn
		err := inNetNS(name, func() error {
			var err error
			c, err = (&net.Dialer{}).DialContext(ctx, network, address)
			return err
		})
		return c, err
	}
	hc := &http.Client{Transport: &http.Transport{DialContext: dial}}
	t.Cleanup(hc.CloseIdleConnections)
	return imds.New(imds.Options{Endpoint: endpoint, HTTPClient: hc})
}
