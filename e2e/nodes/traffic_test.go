package nodes

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/multinic/multinic/internal/nettest"
	"github.com/multinic/multinic/internal/testing/harness"
	"github.com/multinic/multinic/plugin"
)

// replies is how many UDP request/reply exchanges the reply-path cases make.
const replies = 32

// TestTwoNodes puts pod a on node 1 and pod b on node 2, each with eth0 (the primary network) and ipvlan L2
// attachments on card 1 (net1) and card 2 (net2), and pod c on node 1 with eth0 only. It shows that a and
// b reach each other over each card through their multinic interfaces, and that b's reply to a client
// outside both cards' subnets leaves through the interface of the address it answers from (net2) because of
// the source rule, and through eth0 (the main table's default route) once the rule is gone or when the
// network has policyRouting false (pod d on node 2).
func TestTwoNodes(t *testing.T) {
	nettest.RequireLinkType(t, "ipvlan")
	region := harness.NewRegion(t, harness.Config{Nodes: 2})
	n1, n2 := region.Node(0), region.Node(1)
	cards := []harness.Attachment{{Card: 1, IPVlanMode: "l2"}, {Card: 2, IPVlanMode: "l2"}}
	a := n1.AddPod(t, "a", cards)
	b := n2.AddPod(t, "b", cards)
	c := n1.AddPod(t, "c", nil)
	t.Logf("a (node1): eth0 %s net1 %s net2 %s; b (node2): eth0 %s net1 %s net2 %s; c (node1): eth0 %s",
		a.PrimaryIP, a.Addr("net1"), a.Addr("net2"), b.PrimaryIP, b.Addr("net1"), b.Addr("net2"), c.PrimaryIP)

	for _, ifName := range []string{"net1", "net2"} {
		t.Run("reach-over-"+ifName, func(t *testing.T) {
			for i, dir := range [][2]*harness.Pod{{a, b}, {b, a}} {
				from, to := dir[0], dir[1]
				txBefore, rxBefore := stats(t, from, ifName), stats(t, to, ifName)
				otherBefore := stats(t, from, harness.PrimaryIfName)
				tcpEcho(t, from, from.Addr(ifName), to, to.Addr(ifName), 7100+i)
				tx := stats(t, from, ifName).TxPackets - txBefore.TxPackets
				rx := stats(t, to, ifName).RxPackets - rxBefore.RxPackets
				other := stats(t, from, harness.PrimaryIfName).TxPackets - otherBefore.TxPackets
				t.Logf("%s %s -> %s %s: %s tx +%d packets, %s rx +%d, %s's eth0 tx +%d", from.Name, from.Addr(ifName),
					to.Name, to.Addr(ifName), from.Name+"/"+ifName, tx, to.Name+"/"+ifName, rx, from.Name, other)
				// A TCP connection with one echoed message is at least SYN, ACK, data, FIN from the client.
				if tx < 4 || rx < 4 || other != 0 {
					t.Errorf("%s -> %s over %s: tx +%d rx +%d (want >= 4 each), eth0 tx +%d (want 0)", from.Name, to.Name, ifName, tx, rx, other)
				}
			}
		})
	}

	// b answers UDP on its card-2 address; c (node 1, eth0 only: outside both cards' subnets) asks. d, on
	// node 2 like b, has card 2 with policy routing off.
	off := false
	d := n2.AddPod(t, "d", []harness.Attachment{{Card: 2, IPVlanMode: "l2", PolicyRouting: &off}})
	t.Logf("d (node2, card 2 without policy routing): eth0 %s net1 %s", d.PrimaryIP, d.Addr("net1"))
	bDst := udpEchoServer(t, b, b.Addr("net2"), 7200)
	dDst := udpEchoServer(t, d, d.Addr("net1"), 7200)

	t.Run("reply-leaves-net2", func(t *testing.T) {
		if dev := routeDev(t, b, c.PrimaryIP, b.Addr("net2")); dev != "net2" {
			t.Errorf("b's route to %s from %s leaves via %s, want net2", c.PrimaryIP, b.Addr("net2"), dev)
		}
		// ARP for eth0's gateway would be the only excuse for eth0 to send anything.
		checkReplies(t, exchange(t, c, bDst, b), "net2", map[string]uint64{"eth0": 2})
	})

	t.Run("policy-routing-off-reply-leaves-eth0", func(t *testing.T) {
		if rules := rulesTo(t, d.Handle(), plugin.RouteTableBase+2); len(rules) != 0 {
			t.Errorf("d has rules to table %d with policyRouting false: %v", plugin.RouteTableBase+2, rules)
		}
		if dev := routeDev(t, d, c.PrimaryIP, d.Addr("net1")); dev != harness.PrimaryIfName {
			t.Errorf("d's route to %s from %s leaves via %s, want eth0", c.PrimaryIP, d.Addr("net1"), dev)
		}
		// net1 may answer the router's ARP for its address, nothing more.
		checkReplies(t, exchange(t, c, dDst, d), harness.PrimaryIfName, map[string]uint64{"net1": 2})
	})

	t.Run("without-rule-reply-leaves-eth0", func(t *testing.T) {
		h := b.Handle()
		table := plugin.RouteTableBase + 2
		rules := rulesTo(t, h, table)
		if len(rules) != 1 {
			t.Fatalf("b has %d rules to table %d, want 1: %v", len(rules), table, rules)
		}
		rule := rules[0]
		if err := h.RuleDel(&rule); err != nil {
			t.Fatalf("delete b's rule %s: %v", rule, err)
		}
		restored := false
		restore := func() {
			if !restored {
				restored = true
				if err := h.RuleAdd(&rule); err != nil {
					t.Errorf("restore b's rule: %v", err)
				}
			}
		}
		defer restore()
		if err := b.Check(); err == nil {
			t.Errorf("CHECK of b passed without its net2 rule, want it to fail")
		}
		if dev := routeDev(t, b, c.PrimaryIP, b.Addr("net2")); dev != harness.PrimaryIfName {
			t.Errorf("without the rule b's route to %s from %s leaves via %s, want eth0", c.PrimaryIP, b.Addr("net2"), dev)
		}
		// net2 may answer the router's ARP probe for its address, nothing more.
		checkReplies(t, exchange(t, c, bDst, b), harness.PrimaryIfName, map[string]uint64{"net2": 2})
		restore()
		if err := b.Check(); err != nil {
			t.Errorf("CHECK of b with its rule back: %v", err)
		}
	})
}

// checkReplies wants every reply, at least that many packets sent by the server pod's interface out, and
// nothing from its other interfaces beyond their slack.
func checkReplies(t *testing.T, d delta, out string, slack map[string]uint64) {
	t.Helper()
	if d.got != replies {
		t.Errorf("%d/%d replies", d.got, replies)
	}
	for ifName, tx := range d.tx {
		switch {
		case ifName == out && tx < replies:
			t.Errorf("%s sent %d packets, want >= %d: the replies did not leave through it", ifName, tx, replies)
		case ifName != out && tx > slack[ifName]:
			t.Errorf("%s sent %d packets, want <= %d: replies left through it", ifName, tx, slack[ifName])
		}
	}
}

func stats(t *testing.T, p *harness.Pod, ifName string) netlink.LinkStatistics {
	t.Helper()
	s, err := p.LinkStats(ifName)
	if err != nil {
		t.Fatalf("counters of %s in %s: %v", ifName, p.Name, err)
	}
	return s
}

// routeDev is the interface the pod's kernel picks to reach dst from src.
func routeDev(t *testing.T, p *harness.Pod, dst, src netip.Addr) string {
	t.Helper()
	h := p.Handle()
	routes, err := h.RouteGetWithOptions(net.IP(dst.AsSlice()), &netlink.RouteGetOptions{SrcAddr: net.IP(src.AsSlice())})
	if err != nil || len(routes) == 0 {
		t.Fatalf("route get %s from %s in %s: %v", dst, src, p.Name, err)
	}
	l, err := h.LinkByIndex(routes[0].LinkIndex)
	if err != nil {
		t.Fatalf("link %d in %s: %v", routes[0].LinkIndex, p.Name, err)
	}
	return l.Attrs().Name
}

// tcpEcho connects from src in pod from to dst:port in pod to, sends a message and reads it back.
func tcpEcho(t *testing.T, from *harness.Pod, src netip.Addr, to *harness.Pod, dst netip.Addr, port int) {
	t.Helper()
	var l net.Listener
	err := to.Do(func() (err error) {
		l, err = net.Listen("tcp", netip.AddrPortFrom(dst, uint16(port)).String())
		return err
	})
	if err != nil {
		t.Fatalf("listen in %s: %v", to.Name, err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		_, _ = io.CopyN(c, c, 5)
	}()
	var conn net.Conn
	err = from.Do(func() (err error) {
		d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0)), Timeout: 10 * time.Second}
		conn, err = d.DialContext(context.Background(), "tcp", netip.AddrPortFrom(dst, uint16(port)).String())
		return err
	})
	if err != nil {
		t.Fatalf("connect %s %s -> %s %s: %v", from.Name, src, to.Name, dst, err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	msg := []byte("hello")
	if _, err := conn.Write(msg); err != nil {
		t.Fatalf("write %s -> %s: %v", src, dst, err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(conn, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo %s -> %s: got %q, %v", src, dst, got, err)
	}
}

// udpEchoServer answers every datagram to addr:port in pod p from that address, until the test ends.
func udpEchoServer(t *testing.T, p *harness.Pod, addr netip.Addr, port int) *net.UDPAddr {
	t.Helper()
	var conn net.PacketConn
	err := p.Do(func() (err error) {
		conn, err = net.ListenPacket("udp4", netip.AddrPortFrom(addr, uint16(port)).String())
		return err
	})
	if err != nil {
		t.Fatalf("udp listen in %s: %v", p.Name, err)
	}
	t.Cleanup(func() { conn.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := conn.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = conn.WriteTo(buf[:n], from)
		}
	}()
	return net.UDPAddrFromAddrPort(netip.AddrPortFrom(addr, uint16(port)))
}

// delta is one exchange's outcome: replies received and the server pod's tx packet growth per interface.
type delta struct {
	got int
	tx  map[string]uint64
}

// exchange sends `replies` datagrams one at a time from client (eth0) to dst and waits for each answer,
// reading the server pod's tx counters before and after.
func exchange(t *testing.T, client *harness.Pod, dst *net.UDPAddr, server *harness.Pod) delta {
	t.Helper()
	var conn net.PacketConn
	err := client.Do(func() (err error) {
		conn, err = net.ListenPacket("udp4", netip.AddrPortFrom(client.PrimaryIP, 0).String())
		return err
	})
	if err != nil {
		t.Fatalf("udp socket in %s: %v", client.Name, err)
	}
	defer conn.Close()
	ifs := []string{harness.PrimaryIfName}
	for _, a := range server.Attachments {
		ifs = append(ifs, a.IfName)
	}
	before := map[string]uint64{}
	for _, i := range ifs {
		before[i] = stats(t, server, i).TxPackets
	}
	d := delta{tx: map[string]uint64{}}
	buf := make([]byte, 1500)
	for i := range replies {
		msg := fmt.Appendf(nil, "req %d", i)
		if _, err := conn.WriteTo(msg, dst); err != nil {
			t.Fatalf("send to %s: %v", dst, err)
		}
		_ = conn.SetReadDeadline(time.Now().Add(3 * time.Second))
		n, from, err := conn.ReadFrom(buf)
		if err != nil {
			t.Logf("reply %d from %s: %v", i, dst, err)
			continue
		}
		if from.String() != dst.String() || !bytes.Equal(buf[:n], msg) {
			t.Errorf("reply %d: %q from %s, want %q from %s", i, buf[:n], from, msg, dst)
			continue
		}
		d.got++
	}
	for _, i := range ifs {
		d.tx[i] = stats(t, server, i).TxPackets - before[i]
	}
	var txs []string
	for _, i := range ifs {
		txs = append(txs, fmt.Sprintf("%s +%d", i, d.tx[i]))
	}
	t.Logf("%s %s -> %s %s: %d/%d replies; %s tx packets: %s", client.Name, client.PrimaryIP, server.Name, dst,
		d.got, replies, server.Name, strings.Join(txs, ", "))
	return d
}
