package fabric

import (
	"errors"
	"net"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/multinic/multinic/internal/nlretry"
	"github.com/vishvananda/netlink"

	"github.com/multinic/multinic/internal/testing/fakeec2"
)

// Subnets of the test VPC. subnet-c has subnet-b's CIDR on purpose: only the
// separate bridges can keep them apart.
const (
	subnetA, cidrA = "subnet-a", "10.1.0.0/24"
	subnetB, cidrB = "subnet-b", "10.2.0.0/24"
	subnetC, cidrC = "subnet-c", "10.2.0.0/24"
)

func TestAttachPingIsolation(t *testing.T) {
	requireRoot(t)
	p := testPrefix(t)
	n1, n2, n3 := p+"-n1", p+"-n2", p+"-n3"
	f := newFabric(t, Config{Prefix: p, Nodes: map[string]string{"i-1": n1, "i-2": n2}})

	prim1 := eni("i-1", 1, 0, 0, subnetA, cidrA, "10.1.0.11")
	prim2 := eni("i-2", 2, 0, 0, subnetA, cidrA, "10.1.0.12")
	card1 := eni("i-1", 1, 1, 0, subnetB, cidrB, "10.2.0.11")
	card2 := eni("i-2", 2, 1, 0, subnetB, cidrB, "10.2.0.12")
	attach(t, f, prim1, prim2, card1, card2)

	// Links exist with the exact MACs and names; primary up and addressed, others down and bare.
	for _, tc := range []struct {
		netns string
		a     fakeec2.Attachment
	}{{n1, prim1}, {n2, prim2}, {n1, card1}, {n2, card2}} {
		h := nsHandle(t, tc.netns)
		link := linkByMAC(t, h, tc.a.MAC)
		if link == nil {
			t.Fatalf("%s: no link with MAC %s in %s", tc.a.ENIID, tc.a.MAC, tc.netns)
		}
		if got, want := link.Attrs().Name, NodeLinkName(tc.a.NetworkCard, tc.a.DeviceIndex); got != want {
			t.Errorf("%s: link name %q, want %q", tc.a.ENIID, got, want)
		}
		if link.Attrs().MTU != DefaultMTU {
			t.Errorf("%s: mtu %d, want %d", tc.a.ENIID, link.Attrs().MTU, DefaultMTU)
		}
		addrs, err := nlretry.AddrList(h, link, netlink.FAMILY_V4)
		if err != nil {
			t.Fatal(err)
		}
		up := link.Attrs().Flags&net.FlagUp != 0
		if tc.a.Primary {
			if !up || len(addrs) != 1 || addrs[0].IPNet.String() != tc.a.PrimaryIP+"/24" {
				t.Errorf("%s: primary up=%v addrs=%v, want up with %s/24", tc.a.ENIID, up, addrs, tc.a.PrimaryIP)
			}
		} else if up || len(addrs) != 0 {
			t.Errorf("%s: secondary up=%v addrs=%v, want down and no address", tc.a.ENIID, up, addrs)
		}
	}

	// Play the agent: card 1 links up with their addresses.
	bringUp(t, n1, card1, card1.PrimaryIP)
	bringUp(t, n2, card2, card2.PrimaryIP)
	if err := ping(n1, card1.PrimaryIP, card2.PrimaryIP, 3*time.Second); err != nil {
		t.Errorf("card 1: %v", err)
	}
	if err := ping(n1, prim1.PrimaryIP, prim2.PrimaryIP, 3*time.Second); err != nil {
		t.Errorf("card 0: %v", err)
	}

	// A node added later with an ENI on subnet-c (same CIDR as subnet-b) stays unreachable from subnet-b.
	if err := f.AddNode("i-3", n3); err != nil {
		t.Fatal(err)
	}
	other := eni("i-3", 3, 0, 0, subnetC, cidrC, "10.2.0.13")
	attach(t, f, other)
	if err := ping(n1, card1.PrimaryIP, other.PrimaryIP, time.Second); err == nil {
		t.Errorf("subnet-b reached subnet-c: %s -> %s answered", card1.PrimaryIP, other.PrimaryIP)
	}
	if err := ping(n3, other.PrimaryIP, card2.PrimaryIP, time.Second); err == nil {
		t.Errorf("subnet-c reached subnet-b: %s -> %s answered", other.PrimaryIP, card2.PrimaryIP)
	}
	// Card 1 still works (the failed pings are not a broken fabric).
	if err := ping(n2, card2.PrimaryIP, card1.PrimaryIP, 3*time.Second); err != nil {
		t.Errorf("card 1 after isolation check: %v", err)
	}
}

func TestAttachErrors(t *testing.T) {
	requireRoot(t)
	p := testPrefix(t)
	f := newFabric(t, Config{Prefix: p, Nodes: map[string]string{"i-1": p + "-n1"}})
	a := eni("i-1", 1, 1, 0, subnetB, cidrB, "10.2.0.11")
	attach(t, f, a)
	if err := f.Attach(a); err == nil {
		t.Error("second Attach of the same ENI succeeded")
	}
	// Same card and device as a but another MAC: the node name clashes, nothing may leak.
	clash := eni("i-1", 9, 1, 0, subnetB, cidrB, "10.2.0.19")
	clash.NetworkCard, clash.DeviceIndex = a.NetworkCard, a.DeviceIndex
	if err := f.Attach(clash); err == nil {
		t.Error("Attach with a clashing node link name succeeded")
	}
	mac, _ := parseAttachment(clash)
	if _, err := nsHandle(t, f.NetNSName()).LinkByName(FabricLinkName(mac.mac)); !isNotFound(err) {
		t.Errorf("failed Attach left fabric link %s: %v", FabricLinkName(mac.mac), err)
	}
	if err := f.Attach(eni("i-9", 9, 0, 0, subnetA, cidrA, "10.1.0.9")); !errors.Is(err, ErrUnknownInstance) {
		t.Errorf("Attach for unknown instance = %v, want ErrUnknownInstance", err)
	}
}

func TestRateLimit(t *testing.T) {
	requireRoot(t)
	const rate = 20_000_000
	p := testPrefix(t)
	n1, n2 := p+"-n1", p+"-n2"
	// Only card 1 is limited, so each direction exercises one mechanism alone.
	f := newFabric(t, Config{Prefix: p, Nodes: map[string]string{"i-1": n1, "i-2": n2},
		CardRates: map[int]uint64{1: rate}})
	limited := eni("i-1", 1, 1, 0, subnetB, cidrB, "10.2.0.11")
	free := eni("i-2", 2, 2, 0, subnetB, cidrB, "10.2.0.12")
	attach(t, f, limited, free)

	h := nsHandle(t, f.NetNSName())
	limitedMAC, _ := parseAttachment(limited)
	link, err := h.LinkByName(FabricLinkName(limitedMAC.mac))
	if err != nil {
		t.Fatal(err)
	}
	ifb, err := h.LinkByName(IfbLinkName(limitedMAC.mac))
	if err != nil {
		t.Fatalf("no ifb for the limited ENI: %v", err)
	}
	// Traffic to the ENI: tbf on the fabric end.
	if tbf := rootTbf(t, h, link); tbf == nil || tbf.Rate*8 != rate {
		t.Errorf("egress of %s: tbf %+v, want %d bit/s", link.Attrs().Name, tbf, rate)
	}
	// Traffic from the ENI: ingress redirected to the ifb, tbf on the ifb.
	if tbf := rootTbf(t, h, ifb); tbf == nil || tbf.Rate*8 != rate {
		t.Errorf("egress of %s: tbf %+v, want %d bit/s", ifb.Attrs().Name, tbf, rate)
	}
	filters, err := h.FilterList(link, netlink.MakeHandle(0xffff, 0))
	if err != nil {
		t.Fatal(err)
	}
	var redirect *netlink.MirredAction
	for _, fl := range filters {
		if u, ok := fl.(*netlink.U32); ok {
			for _, act := range u.Actions {
				if m, ok := act.(*netlink.MirredAction); ok {
					redirect = m
				}
			}
		}
	}
	if redirect == nil || redirect.Ifindex != ifb.Attrs().Index || redirect.MirredAction != netlink.TCA_EGRESS_REDIR {
		t.Errorf("ingress of %s: mirred %+v, want redirect to %s (filters %v)", link.Attrs().Name, redirect, ifb.Attrs().Name, filters)
	}
	freeMAC, _ := parseAttachment(free)
	freeLink, err := h.LinkByName(FabricLinkName(freeMAC.mac))
	if err != nil {
		t.Fatal(err)
	}
	if tbf := rootTbf(t, h, freeLink); tbf != nil {
		t.Errorf("unlimited card 2 has a tbf: %+v", tbf)
	}

	const bin = "/usr/bin/iperf3"
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("%s missing (%v): apt-get install iperf3, as .ci/run does", bin, err)
	}
	bringUp(t, n1, limited, limited.PrimaryIP)
	bringUp(t, n2, free, free.PrimaryIP)
	if err := ping(n1, limited.PrimaryIP, free.PrimaryIP, 3*time.Second); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		reverse bool
	}{{"sent by the ENI (ingress -> ifb tbf)", false}, {"delivered to the ENI (egress tbf)", true}} {
		got := iperf3(t, bin, n2, free.PrimaryIP, n1, limited.PrimaryIP, tc.reverse)
		t.Logf("%s: %.1f Mbit/s (limit %d Mbit/s)", tc.name, got/1e6, rate/1_000_000)
		// The floor shows the shaped path carries traffic well, not just that it is capped.
		if got < 0.5*rate || got > 1.2*rate {
			t.Errorf("%s: %.1f Mbit/s, want %.0f-%.0f", tc.name, got/1e6, 0.5*rate/1e6, 1.2*rate/1e6)
		}
	}
}

// rootTbf is the link's root tbf qdisc, nil if it has none.
func rootTbf(tb testing.TB, h netlinksafe.Handle, link netlink.Link) *netlink.Tbf {
	tb.Helper()
	qs, err := h.QdiscList(link)
	if err != nil {
		tb.Fatalf("list qdiscs of %s: %v", link.Attrs().Name, err)
	}
	for _, q := range qs {
		if t, ok := q.(*netlink.Tbf); ok && t.Parent == netlink.HANDLE_ROOT {
			return t
		}
	}
	return nil
}

func TestDetach(t *testing.T) {
	requireRoot(t)
	p := testPrefix(t)
	n1 := p + "-n1"
	f := newFabric(t, Config{Prefix: p, Nodes: map[string]string{"i-1": n1}, RatePerCard: 10_000_000})
	prim := eni("i-1", 1, 0, 0, subnetA, cidrA, "10.1.0.11")
	sec := eni("i-1", 1, 1, 0, subnetB, cidrB, "10.2.0.11")
	attach(t, f, prim, sec)

	if err := f.Detach(sec); err != nil {
		t.Fatalf("Detach: %v", err)
	}
	node, fab := nsHandle(t, n1), nsHandle(t, f.NetNSName())
	if l := linkByMAC(t, node, sec.MAC); l != nil {
		t.Errorf("node link %s still there after Detach", l.Attrs().Name)
	}
	m, _ := parseAttachment(sec)
	for _, name := range []string{FabricLinkName(m.mac), IfbLinkName(m.mac)} {
		if _, err := fab.LinkByName(name); !isNotFound(err) {
			t.Errorf("fabric link %s still there after Detach: %v", name, err)
		}
	}
	if linkByMAC(t, node, prim.MAC) == nil {
		t.Error("Detach of one ENI removed another")
	}
	if err := f.Detach(sec); err != nil {
		t.Errorf("second Detach: %v", err)
	}
	// Re-attach after detach works (the same ENI attached again).
	attach(t, f, sec)
	if linkByMAC(t, node, sec.MAC) == nil {
		t.Error("re-attached ENI has no link")
	}
}

func TestCloseRemovesEverything(t *testing.T) {
	requireRoot(t)
	before, err := hostLinkNames()
	if err != nil {
		t.Fatal(err)
	}
	p := testPrefix(t)
	own, pre := p+"-n1", p+"-pre"
	makeNetNS(t, pre) // a node netns the fabric must keep
	f := newFabric(t, Config{Prefix: p, Nodes: map[string]string{"i-1": own, "i-2": pre}, RatePerCard: 50_000_000})
	attach(t, f,
		eni("i-1", 1, 0, 0, subnetA, cidrA, "10.1.0.11"),
		eni("i-1", 1, 1, 0, subnetB, cidrB, "10.2.0.11"),
		eni("i-2", 2, 0, 0, subnetA, cidrA, "10.1.0.12"),
		eni("i-2", 2, 1, 0, subnetB, cidrB, "10.2.0.12"),
	)
	if err := f.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := f.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	for _, name := range []string{f.NetNSName(), own} {
		if netnsExists(name) {
			t.Errorf("netns %s survived Close", name)
		}
	}
	if !netnsExists(pre) {
		t.Fatalf("Close removed netns %s it did not create", pre)
	}
	links, err := nsHandle(t, pre).LinkList()
	if err != nil {
		t.Fatal(err)
	}
	if len(links) != 1 || links[0].Attrs().Name != "lo" {
		t.Errorf("links left in %s: %d, want only lo", pre, len(links))
	}
	after, err := hostLinkNames()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(before, after) {
		t.Errorf("host links before %v, after %v", before, after)
	}
	if err := f.Attach(eni("i-1", 1, 2, 0, subnetB, cidrB, "10.2.0.21")); err == nil {
		t.Error("Attach after Close succeeded")
	}
	if err := f.Detach(eni("i-1", 1, 1, 0, subnetB, cidrB, "10.2.0.11")); err != nil {
		t.Errorf("Detach after Close: %v", err)
	}
}

func TestNewPartialFailureCleansUp(t *testing.T) {
	requireRoot(t)
	p := testPrefix(t)
	bogus := p + "-bogus" // a plain file, not a netns: opening it fails after the fabric netns exists
	if err := os.WriteFile(netnsPath(bogus), nil, 0o444); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Remove(netnsPath(bogus)) })
	f, err := New(Config{Prefix: p, Nodes: map[string]string{"i-1": p + "-n1", "i-2": bogus}})
	if err == nil {
		_ = f.Close()
		t.Fatal("New with a bogus node netns succeeded")
	}
	t.Logf("New: %v", err)
	for _, name := range []string{FabricNetNSName(p), p + "-n1"} {
		if netnsExists(name) {
			t.Errorf("netns %s left after failed New", name)
		}
	}
}

func TestCleanupLeftovers(t *testing.T) {
	requireRoot(t)
	p := testPrefix(t)
	foreign := testPrefix(t) + "-node" // another prefix: Cleanup(p) must keep it but lose our link
	makeNetNS(t, foreign)
	cfg := Config{Prefix: p, Nodes: map[string]string{"i-1": p + "-n1", "i-2": foreign}}
	crashed, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// Simulates SIGKILL: never closed, but its fds go when the test ends.
	t.Cleanup(func() { _ = crashed.Close() })
	inForeign := eni("i-2", 2, 1, 0, subnetB, cidrB, "10.2.0.12")
	attach(t, crashed, eni("i-1", 1, 0, 0, subnetA, cidrA, "10.1.0.11"), inForeign)

	if _, err := New(cfg); !errors.Is(err, errNetNSExists) {
		t.Errorf("New over leftovers = %v, want errNetNSExists", err)
	}
	if err := Cleanup(p); err != nil {
		t.Fatalf("Cleanup: %v", err)
	}
	if left, _ := leftoverNetNS(p); len(left) != 0 {
		t.Errorf("Cleanup left %v", left)
	}
	if l := linkByMAC(t, nsHandle(t, foreign), inForeign.MAC); l != nil {
		t.Errorf("Cleanup left link %s in %s", l.Attrs().Name, foreign)
	}
	if !netnsExists(foreign) {
		t.Errorf("Cleanup(%s) removed %s", p, foreign)
	}
	if err := Cleanup(p); err != nil {
		t.Errorf("second Cleanup: %v", err)
	}
	// The restart path: a new fabric with the same prefix starts cleanly.
	f := newFabric(t, cfg)
	attach(t, f, inForeign)
}
