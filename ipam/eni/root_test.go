package eni

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/multinic/multinic/e2e/fabric"
)

// TestLinksWithFabric runs the manager's netlink Links against real links: fake-ec2 with the fabric makes
// each attached ENI a veth with the ENI's MAC in a node netns; the manager must find them by MAC there,
// set the MTU and bring them up.
func TestLinksWithFabric(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces and veths")
	}
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	prefix := "mneni" + hex.EncodeToString(b)
	nodeNS := prefix + "-node"
	inst := fmt.Sprintf("i-0a%015x", 0) // fake-ec2's first instance
	fab, err := fabric.New(fabric.Config{Prefix: prefix, Nodes: map[string]string{inst: nodeNS}, MTU: 1500})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { // runs after the fake is closed (registered first)
		if err := fab.Close(); err != nil {
			t.Errorf("close fabric: %v", err)
		}
		if err := fabric.Cleanup(prefix); err != nil {
			t.Errorf("clean up fabric: %v", err)
		}
	})
	e := newEnv(t, envOpts{links: fab})
	if e.inst != inst {
		t.Fatalf("instance %s, want %s", e.inst, inst)
	}
	nsPath := filepath.Join(fabric.NetNSDir, nodeNS)
	links, err := NewNetlinkLinks(nsPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = links.Close() })

	cfg := e.fastConfig(8)
	cfg.ManagedCards = []int{1, 2}
	m, err := New(cfg, Deps{EC2: e.ec2, IMDS: e.imds, Allocator: e.alloc, Links: links})
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	if err := m.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Stop)
	waitReady(t, m, 10*time.Second)
	t.Logf("2 cards ready with real links in %s", time.Since(t0).Round(time.Millisecond))

	check, err := NewNetlinkLinks(nsPath)
	if err != nil {
		t.Fatal(err)
	}
	defer check.Close()
	ours := e.ours()
	if len(ours) != 2 {
		t.Fatalf("%d ENIs", len(ours))
	}
	for id, x := range ours {
		info, ok := m.ENI(id)
		if want := fabric.NodeLinkName(x.Card, x.Device); !ok || info.LinkName != want {
			t.Errorf("%s: link %q, want %q", id, info.LinkName, want)
		}
		mac, _ := net.ParseMAC(x.MAC)
		name, found, err := linkName(check, mac)
		if err != nil || !found || name != info.LinkName {
			t.Fatalf("%s: link by MAC %s: %q %v %v", id, x.MAC, name, found, err)
		}
		l, err := check.h.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		if l.Attrs().MTU != DefaultMTU || l.Attrs().Flags&net.FlagUp == 0 {
			t.Errorf("%s: mtu %d flags %v, want %d and up", name, l.Attrs().MTU, l.Attrs().Flags, DefaultMTU)
		}
		if l.Attrs().OperState == netlink.OperDown {
			t.Logf("%s: operstate down", name)
		}
	}
	// The host netns is untouched: no link with an ENI's MAC there.
	host, err := NewNetlinkLinks("")
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	for _, x := range ours {
		mac, _ := net.ParseMAC(x.MAC)
		if name, found, _ := linkName(host, mac); found {
			t.Errorf("ENI link %s in the host netns", name)
		}
	}
}
