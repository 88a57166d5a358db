package eni

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/multinic/multinic/internal/namedns"
	"github.com/multinic/multinic/internal/nettest"
	"github.com/multinic/multinic/internal/testing/fabric"
	"github.com/multinic/multinic/plugin"
)

// TestLinksWithFabric runs the manager's netlink Links against real links: fake-ec2 with the fabric makes
// each attached ENI a veth with the ENI's MAC in a node netns; the manager must find them by MAC there,
// set the MTU and bring them up.
func TestLinksWithFabric(t *testing.T) {
	e, nsPath := fabricEnv(t)
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

// fabricEnv is an env whose ENIs are real links (veths with the ENI's MAC) in a throwaway node netns; it
// returns that netns' path. It skips unless root.
func fabricEnv(t *testing.T) (*env, string) {
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
	return e, filepath.Join(fabric.NetNSDir, nodeNS)
}

// TestExclusiveLinkHomeWithFabric: the plugin's own MoveLinkIn puts an exclusive ENI's real link into a
// pod netns (pod-side name, multinic alias). Then the pod netns goes without a DEL:
//   - "home": the device comes back to the node netns under the pod-side name with the alias, as the
//     kernel returns a real ENI's device when its netns dies. After the release the manager restores
//     it (name, no alias, MTU, up) and the next pod gets the same ENI;
//   - "dead": the device dies with the netns (a veth, as a virtual device does). The released
//     allocation's netns is gone, so the card loop deletes the ENI; the next pod gets a new one.
func TestExclusiveLinkHomeWithFabric(t *testing.T) {
	for _, tc := range []string{"home", "dead"} {
		t.Run(tc, func(t *testing.T) {
			e, nodePath := fabricEnv(t)
			links, err := NewNetlinkLinks(nodePath)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = links.Close() })
			cfg := e.cardOneConfig()
			cfg.SurplusDelay = time.Hour
			cfg.LinkTimeout = 2 * time.Second
			podDir := t.TempDir()
			cfg.NetnsDirs = []string{podDir}
			m, err := New(cfg, Deps{EC2: e.ec2, IMDS: e.imds, Allocator: e.alloc, Links: links})
			if err != nil {
				t.Fatal(err)
			}
			if err := m.Start(t.Context()); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(m.Stop)
			waitReady(t, m, 10*time.Second)

			podPath := filepath.Join(podDir, "pod")
			if err := namedns.Create(podPath); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = namedns.Remove(podPath) })
			ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
			defer cancel()
			r := exclusiveReq(1, 1)
			r.Netns = podPath
			first, err := allocWait(ctx, m, e.alloc, r)
			if err != nil {
				t.Fatal(err)
			}
			info, _ := m.ENI(first.ENIID)
			nodeNS, err := ns.GetNS(nodePath)
			if err != nil {
				t.Fatal(err)
			}
			defer nodeNS.Close()
			podNS, err := ns.GetNS(podPath)
			if err != nil {
				t.Fatal(err)
			}
			if err := nodeNS.Do(func(ns.NetNS) error { return plugin.MoveLinkIn(info.LinkName, info.MAC, podNS, "net1") }); err != nil {
				t.Fatal(err)
			}
			if tc == "home" { // what the kernel does with a real device when its netns dies
				if err := podNS.Do(func(ns.NetNS) error {
					l, err := netlink.LinkByName("net1")
					if err != nil {
						return err
					}
					return netlink.LinkSetNsFd(l, int(nodeNS.Fd()))
				}); err != nil {
					t.Fatal(err)
				}
			}
			_ = podNS.Close()
			if err := namedns.Remove(podPath); err != nil {
				t.Fatal(err)
			}
			if _, _, err := e.alloc.Release(first.ContainerID, first.IfName); err != nil {
				t.Fatal(err)
			}
			second, err := allocWait(ctx, m, e.alloc, exclusiveReq(2, 1))
			if err != nil {
				t.Fatal(err)
			}
			if tc == "dead" {
				if second.ENIID == first.ENIID {
					t.Fatalf("ENI %s handed out again, its link dead", first.ENIID)
				}
				eventually(t, 10*time.Second, "the dead ENI deleted", func() bool {
					_, inEC2 := e.eniState(first.ENIID)
					return !inEC2
				})
				return
			}
			if second.ENIID != first.ENIID {
				t.Fatalf("got ENI %s, want %s: its link came home", second.ENIID, first.ENIID)
			}
			h := nettest.Handle(t, nodeNS)
			l, err := h.LinkByName(info.LinkName)
			if err != nil {
				t.Fatalf("link not restored to %s: %v (links %v)", info.LinkName, err, nettest.LinkNames(t, h))
			}
			if a := l.Attrs(); a.Alias != "" || a.MTU != DefaultMTU || a.Flags&net.FlagUp == 0 {
				t.Errorf("restored link: alias %q mtu %d flags %v, want no alias, %d, up", a.Alias, a.MTU, a.Flags, DefaultMTU)
			}
			if got, _ := m.ENI(second.ENIID); got.LinkName != info.LinkName {
				t.Errorf("ENI handed out with link %q, want %q", got.LinkName, info.LinkName)
			}
		})
	}
}
