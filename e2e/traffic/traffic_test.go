package traffic

import (
	"context"
	"errors"
	"net"
	"os"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/multinic/multinic/internal/nettest"
	"github.com/vishvananda/netlink"
)

func TestRunNeedsFlows(t *testing.T) {
	if _, err := Run(context.Background(), nil, nil, 1, time.Millisecond); !errors.Is(err, ErrNoFlows) {
		t.Fatalf("Run(no flows) = %v, want ErrNoFlows", err)
	}
}

// TestRunMeasuresAShapedLink sends over a veth pair whose receiving side is shaped with tbf
// and checks that the meter reports about the shaped rate, per flow and in total.
func TestRunMeasuresAShapedLink(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces")
	}
	const rate = 40_000_000 // bits/s
	a, b := nettest.NewNS(t), nettest.NewNS(t)
	ipA1, ipA2 := net.ParseIP("192.0.2.1"), net.ParseIP("192.0.2.3")
	ipB := net.ParseIP("192.0.2.2")
	vethPair(t, a, b, "va", []net.IP{ipA1, ipA2}, ipB, rate)

	sink, err := NewSink(b, []net.IP{ipB})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sink.Close)

	flows := []Flow{{SrcNS: a, Src: ipA1, Dst: ipB}, {SrcNS: a, Src: ipA2, Dst: ipB}}
	r, err := Run(context.Background(), sink, flows, 2, 1500*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("per flow %.1f / %.1f Mbit/s, total %.1f Mbit/s", r.PerFlow[0]/1e6, r.PerFlow[1]/1e6, r.Total/1e6)
	// Counted at the receiver inside a window where the shaper's queue is full: a meter
	// that loses, double-counts or counts queued bytes lands outside these bounds.
	if r.Total < 0.8*rate || r.Total > 1.1*rate {
		t.Errorf("total %.1f Mbit/s, want about %d Mbit/s", r.Total/1e6, rate/1_000_000)
	}
	for i, f := range r.PerFlow {
		if f <= 0 {
			t.Errorf("flow %d measured nothing", i)
		}
	}
}

// vethPair joins a and b with a veth, name in a and name+"p" in b, addresses both ends (/24), and shapes
// traffic into b to rate.
func vethPair(t *testing.T, a, b ns.NetNS, name string, ipsA []net.IP, ipB net.IP, rate uint64) {
	t.Helper()
	ha := nettest.Handle(t, a)
	hb := nettest.Handle(t, b)
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "p", PeerNamespace: netlink.NsFd(int(b.Fd()))}
	if err := ha.LinkAdd(veth); err != nil {
		t.Fatal(err)
	}
	up := func(h netlinksafe.Handle, name string, ips ...net.IP) netlink.Link {
		l, err := h.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		for _, ip := range ips {
			if err := h.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: ip, Mask: net.CIDRMask(24, 32)}}); err != nil {
				t.Fatal(err)
			}
		}
		if err := h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
		return l
	}
	la := up(ha, name, ipsA...)
	up(hb, name+"p", ipB)
	// Shape what a sends: tbf on a's egress.
	tbf := &netlink.Tbf{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: la.Attrs().Index, Handle: netlink.MakeHandle(1, 0), Parent: netlink.HANDLE_ROOT},
		Rate:       rate / 8, Limit: 256 << 10, Buffer: 32 << 10,
	}
	if err := ha.QdiscAdd(tbf); err != nil {
		t.Fatalf("add tbf: %v", err)
	}
}
