package fabric

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/multinic/multinic/internal/testing/fakeec2"
)

// testPrefixBase starts every prefix these tests use, so TestMain can spot leaks.
const testPrefixBase = "mnft"

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		os.Exit(m.Run())
	}
	before, err := hostLinkNames()
	if err != nil {
		fmt.Fprintln(os.Stderr, "list host links:", err)
		os.Exit(1)
	}
	code := m.Run()
	after, err := hostLinkNames()
	if err != nil || !slices.Equal(before, after) {
		fmt.Fprintf(os.Stderr, "host links changed: before %v, after %v (%v)\n", before, after, err)
		code = 1
	}
	if entries, err := os.ReadDir(NetNSDir); err == nil {
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), testPrefixBase) {
				fmt.Fprintln(os.Stderr, "netns left behind:", e.Name())
				code = 1
			}
		}
	}
	os.Exit(code)
}

func requireRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("needs root: creates netns, veths, bridges and qdiscs")
	}
}

// testPrefix is unique per call so parallel runs and tests never share names.
func testPrefix(tb testing.TB) string {
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		tb.Fatal(err)
	}
	return testPrefixBase + hex.EncodeToString(b)
}

// newFabric builds a fabric and removes it (and any leftover) when the test ends.
func newFabric(tb testing.TB, cfg Config) *Fabric {
	tb.Helper()
	f, err := New(cfg)
	if err != nil {
		tb.Fatalf("New: %v", err)
	}
	tb.Cleanup(func() {
		if err := f.Close(); err != nil {
			tb.Errorf("Close: %v", err)
		}
		if err := Cleanup(cfg.Prefix); err != nil {
			tb.Errorf("Cleanup: %v", err)
		}
	})
	return f
}

// makeNetNS creates a netns the fabric did not create, removed when the test ends.
func makeNetNS(tb testing.TB, name string) {
	tb.Helper()
	if err := createNetNS(name); err != nil {
		tb.Fatalf("create netns %s: %v", name, err)
	}
	tb.Cleanup(func() {
		if err := deleteNetNS(name); err != nil {
			tb.Errorf("delete netns %s: %v", name, err)
		}
	})
}

// eni is an attachment with a MAC derived from (node, card, device).
func eni(instance string, node, card, dev int, subnet, cidr, ip string) fakeec2.Attachment {
	return fakeec2.Attachment{
		InstanceID:  instance,
		ENIID:       fmt.Sprintf("eni-%d%d%d", node, card, dev),
		MAC:         fmt.Sprintf("02:4f:%02x:%02x:00:%02x", node, card, dev),
		SubnetID:    subnet,
		SubnetCIDR:  cidr,
		NetworkCard: card,
		DeviceIndex: dev,
		PrimaryIP:   ip,
		Primary:     card == 0 && dev == 0,
	}
}

func attach(tb testing.TB, f *Fabric, as ...fakeec2.Attachment) {
	tb.Helper()
	for _, a := range as {
		if err := f.Attach(a); err != nil {
			tb.Fatalf("Attach %s: %v", a.ENIID, err)
		}
	}
}

// nsHandle opens a netlink handle in a named netns for the test's own checks.
func nsHandle(tb testing.TB, name string) netlinksafe.Handle {
	tb.Helper()
	nsh, h, err := openNetNS(name)
	if err != nil {
		tb.Fatalf("open netns %s: %v", name, err)
	}
	tb.Cleanup(func() {
		h.Close()
		_ = nsh.Close()
	})
	return h
}

// linkByMAC finds a link by MAC in a netns; nil if none has it.
func linkByMAC(tb testing.TB, h netlinksafe.Handle, mac string) netlink.Link {
	tb.Helper()
	links, err := h.LinkList()
	if err != nil {
		tb.Fatalf("list links: %v", err)
	}
	for _, l := range links {
		if l.Attrs().HardwareAddr.String() == mac {
			return l
		}
	}
	return nil
}

// bringUp plays the agent: link up and an address on it.
func bringUp(tb testing.TB, nsName string, a fakeec2.Attachment, ip string) {
	tb.Helper()
	h := nsHandle(tb, nsName)
	link := linkByMAC(tb, h, a.MAC)
	if link == nil {
		tb.Fatalf("no link with MAC %s in %s", a.MAC, nsName)
	}
	_, subnet, _ := net.ParseCIDR(a.SubnetCIDR)
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: net.ParseIP(ip).To4(), Mask: subnet.Mask}}
	if err := h.AddrAdd(link, addr); err != nil {
		tb.Fatalf("add %s to %s: %v", addr, link.Attrs().Name, err)
	}
	if err := h.LinkSetUp(link); err != nil {
		tb.Fatalf("set %s up: %v", link.Attrs().Name, err)
	}
}

// ping sends ICMP echo requests from src (in netns nsName) to dst over a raw
// socket until a reply comes or the timeout passes. No ping binary needed.
func ping(nsName, src, dst string, timeout time.Duration) error {
	var conn net.PacketConn
	// A socket stays in the netns it was created in.
	err := ns.WithNetNSPath(netnsPath(nsName), func(ns.NetNS) error {
		var err error
		conn, err = net.ListenPacket("ip4:icmp", src)
		return err
	})
	if err != nil {
		return fmt.Errorf("open icmp socket in %s: %w", nsName, err)
	}
	defer func() { _ = conn.Close() }()
	dstAddr := &net.IPAddr{IP: net.ParseIP(dst)}
	id := uint16(os.Getpid())
	deadline := time.Now().Add(timeout)
	for seq := uint16(1); time.Now().Before(deadline); seq++ {
		if _, err := conn.WriteTo(echoRequest(id, seq), dstAddr); err != nil {
			return fmt.Errorf("send echo to %s: %w", dst, err)
		}
		if gotReply(conn, dstAddr, id, seq, min(time.Until(deadline), 300*time.Millisecond)) {
			return nil
		}
	}
	return fmt.Errorf("ping %s -> %s in %s: no reply in %s", src, dst, nsName, timeout)
}

func echoRequest(id, seq uint16) []byte {
	b := make([]byte, 8, 8+16)
	b[0] = 8 // echo request
	binary.BigEndian.PutUint16(b[4:], id)
	binary.BigEndian.PutUint16(b[6:], seq)
	b = append(b, "multinic-fabric!"...)
	binary.BigEndian.PutUint16(b[2:], icmpChecksum(b))
	return b
}

func icmpChecksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// gotReply waits for the echo reply matching (id, seq) from dst.
func gotReply(conn net.PacketConn, dst *net.IPAddr, id, seq uint16, wait time.Duration) bool {
	_ = conn.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, 1500)
	for {
		n, from, err := conn.ReadFrom(buf) // the IPv4 header is stripped for ip4:icmp
		if err != nil {
			return false
		}
		ip, ok := from.(*net.IPAddr)
		if n >= 8 && buf[0] == 0 && ok && ip.IP.Equal(dst.IP) &&
			binary.BigEndian.Uint16(buf[4:]) == id && binary.BigEndian.Uint16(buf[6:]) == seq {
			return true
		}
	}
}

func hostLinkNames() ([]string, error) {
	links, err := netlinksafe.LinkList()
	if err != nil {
		return nil, err
	}
	var names []string
	for _, l := range links {
		names = append(names, fmt.Sprintf("%d:%s:%s", l.Attrs().Index, l.Type(), l.Attrs().Name))
	}
	slices.Sort(names)
	return names, nil
}

// iperf3 runs a 2 s TCP test from client (in clientNS) to server (in serverNS)
// and returns what the receiver measured, in bit/s. reverse makes the server send.
func iperf3(tb testing.TB, bin, serverNS, serverIP, clientNS, clientIP string, reverse bool) float64 {
	tb.Helper()
	const port = "5299"
	server := exec.Command(bin, "-s", "-1", "-B", serverIP, "-p", port)
	var serverOut bytes.Buffer
	server.Stdout, server.Stderr = &serverOut, &serverOut
	// A child forked from a thread inside the netns starts there.
	err := ns.WithNetNSPath(netnsPath(serverNS), func(ns.NetNS) error { return server.Start() })
	if err != nil {
		tb.Fatalf("start iperf3 server in %s: %v", serverNS, err)
	}
	serverDone := make(chan error, 1)
	go func() { serverDone <- server.Wait() }()
	// The one-shot server must be gone before the next run binds the port.
	defer func() {
		select {
		case <-serverDone:
		case <-time.After(5 * time.Second):
			_ = server.Process.Kill()
			<-serverDone
		}
	}()

	args := []string{"-c", serverIP, "-B", clientIP, "-p", port, "-t", "2", "-J"}
	if reverse {
		args = append(args, "-R")
	}
	var res struct {
		Error string `json:"error"`
		End   struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	for try := 0; ; try++ {
		var out []byte
		client := exec.Command(bin, args...)
		err = ns.WithNetNSPath(netnsPath(clientNS), func(ns.NetNS) error {
			var err error
			out, err = client.Output()
			return err
		})
		if err == nil {
			err = json.Unmarshal(out, &res)
		}
		if err == nil && res.Error == "" {
			break
		}
		// iperf3 -J may exit 0 on "connection refused": the server is not listening yet.
		if try == 30 || !strings.Contains(res.Error+string(out), "refused") {
			tb.Fatalf("iperf3 client %v: %v %s\n%s\nserver: %s", args, err, res.Error, out, serverOut.String())
		}
		res.Error = ""
		time.Sleep(100 * time.Millisecond)
	}
	return res.End.SumReceived.BitsPerSecond
}

func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf)
}
