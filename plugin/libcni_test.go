package plugin

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/multinic/multinic/internal/nettest"
	"github.com/multinic/multinic/internal/testing/testbin"
	"github.com/multinic/multinic/ipam/api"
	"github.com/multinic/multinic/netconf"
)

func TestMain(m *testing.M) { os.Exit(testbin.Main(m)) }

// pluginBinaries is a folder with the multinic binary and the reference tuning plugin, built on first use
// (so that unit-only runs do not pay for it). The test VM has no Go toolchain: the libcni tests run on the
// host, in exclusive mode.
func pluginBinaries(t *testing.T) string {
	t.Helper()
	nettest.RequireRoot(t)
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("needs the go toolchain to build the plugin binaries (the test VM has none; this runs on the host)")
	}
	return testbin.Dir(t, testbin.Plugin, "github.com/containernetworking/plugins/plugins/meta/tuning")
}

// TestLibcni drives the real binary through libcni with tuning chained after it, as a runtime (or
// Multus's delegate machinery) would: ADD, CHECK, DEL, DEL again, and STATUS and GC for 1.1.0.
func TestLibcni(t *testing.T) {
	dir := pluginBinaries(t)
	for _, ver := range netconf.SupportedVersions {
		t.Run(ver, func(t *testing.T) {
			e := newEnv(t, true)
			conflist := fmt.Sprintf(`{"cniVersion": %q, "name": "card1", "plugins": [
				{"type": "multinic", "networkCard": %d, "mode": "exclusive", "agentSocket": %q, "mtu": 1500},
				{"type": "tuning", "sysctl": {"net.ipv4.conf.IFNAME.arp_ignore": "1"}}]}`, ver, card, e.srv.socket)
			list, err := libcni.NetworkConfFromBytes([]byte(conflist))
			if err != nil {
				t.Fatal(err)
			}
			cni := libcni.NewCNIConfigWithCacheDir([]string{dir}, t.TempDir(), nil)
			rt := &libcni.RuntimeConf{
				ContainerID: e.containerID,
				NetNS:       e.pod.Path(),
				IfName:      podIfName,
				Args: [][2]string{
					{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "default"}, {"K8S_POD_NAME", "pod-a"},
					{"K8S_POD_INFRA_CONTAINER_ID", e.containerID}, {"K8S_POD_UID", "uid-a"},
				},
			}
			ctx := context.Background()
			// The binaries run in the node netns: they are forked from this locked thread.
			inNode := func(f func() error) error { return e.inNode(f) }

			var raw types.Result
			if err := inNode(func() (err error) { raw, err = cni.AddNetworkList(ctx, list, rt); return err }); err != nil {
				t.Fatalf("ADD: %v", err)
			}
			if raw.Version() != ver {
				t.Errorf("result version = %s, want %s", raw.Version(), ver)
			}
			res, err := current.NewResultFromResult(raw)
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Interfaces) != 1 || res.Interfaces[0].Sandbox != e.pod.Path() || res.Interfaces[0].Mac != eniMAC.String() ||
				len(res.IPs) != 1 || res.IPs[0].Address.String() != "10.1.0.5/24" {
				t.Errorf("result = %s", res)
			}
			var arpIgnore, rpf string
			err = e.pod.Do(func(ns.NetNS) (err error) {
				if arpIgnore, err = readSysctl("ipv4", podIfName, "arp_ignore"); err != nil {
					return err
				}
				rpf, err = readSysctl("ipv4", podIfName, "rp_filter")
				return err
			})
			if err != nil || arpIgnore != "1" || rpf != "2" {
				t.Errorf("arp_ignore %q (tuning), rp_filter %q (multinic), %v: want 1 and 2", arpIgnore, rpf, err)
			}

			if err := inNode(func() error { return cni.CheckNetworkList(ctx, list, rt) }); err != nil {
				t.Errorf("CHECK: %v", err)
			}

			if ver == "1.1.0" {
				if err := inNode(func() error { return cni.GetStatusNetworkList(ctx, list) }); err != nil {
					t.Errorf("STATUS: %v", err)
				}
				e.agent.mu.Lock()
				e.agent.status = api.Status{Reason: "no free addresses"}
				e.agent.mu.Unlock()
				err := inNode(func() error { return cni.GetStatusNetworkList(ctx, list) })
				if cniCode(err) != int(types.ErrPluginNotAvailable) {
					t.Errorf("STATUS not ready = %v, want code 50", err)
				}
				e.agent.mu.Lock()
				e.agent.status = api.Status{Ready: true}
				e.agent.allocs[attachment{"stale", podIfName}] = api.Allocation{AllocateRequest: api.AllocateRequest{
					Card: card, ContainerID: "stale", IfName: podIfName, Exclusive: true, Network: "card1"}}
				// Another network on the same card and mode: libcni's list is this network's only.
				e.agent.allocs[attachment{"other-network", podIfName}] = api.Allocation{AllocateRequest: api.AllocateRequest{
					Card: card, ContainerID: "other-network", IfName: podIfName, Exclusive: true, Network: "card1-by-hand"}}
				e.agent.mu.Unlock()
				valid := &libcni.GCArgs{ValidAttachments: []types.GCAttachment{{ContainerID: e.containerID, IfName: podIfName}}}
				if err := inNode(func() error { return cni.GCNetworkList(ctx, list, valid) }); err != nil {
					t.Errorf("GC: %v", err)
				}
				if !e.agent.released("stale", podIfName) || e.agent.released(e.containerID, podIfName) {
					t.Errorf("GC released %v, want only stale/net1", e.agent.releases)
				}
				e.agent.mu.Lock()
				delete(e.agent.allocs, attachment{"other-network", podIfName})
				e.agent.mu.Unlock()
			}

			for i := range 2 {
				if err := inNode(func() error { return cni.DelNetworkList(ctx, list, rt) }); err != nil {
					t.Fatalf("DEL #%d: %v", i+1, err)
				}
			}
			e.requireClean([]string{"lo"})
			e.requireENIHome()
		})
	}
}

// TestVersion: VERSION through libcni reports what the plugin supports.
func TestVersion(t *testing.T) {
	dir := pluginBinaries(t)
	info, err := libcni.NewCNIConfig([]string{dir}, nil).GetVersionInfo(context.Background(), "multinic")
	if err != nil {
		t.Fatal(err)
	}
	if got := info.SupportedVersions(); !slices.Equal(got, []string{"0.4.0", "1.0.0", "1.1.0"}) {
		t.Errorf("supported versions = %v, want 0.4.0 to 1.1.0", got)
	}
	// Without CNI_COMMAND the binary says what it is.
	out, _ := exec.Command(filepath.Join(dir, "multinic")).CombinedOutput()
	if !strings.Contains(string(out), "multinic") || !strings.Contains(string(out), "1.1.0") {
		t.Errorf("about = %q", out)
	}
}

// TestLibcniDual: a dual-stack attachment through libcni in every supported version (0.4.0 results carry
// each IP's version), tuning chained after it: the result has IPv4 then IPv6, CHECK passes on the converted
// prevResult, DEL twice cleans both families.
func TestLibcniDual(t *testing.T) {
	dir := pluginBinaries(t)
	for _, ver := range netconf.SupportedVersions {
		t.Run(ver, func(t *testing.T) {
			e := newEnv(t, true)
			conflist := fmt.Sprintf(`{"cniVersion": %q, "name": "card1", "plugins": [
				{"type": "multinic", "networkCard": %d, "mode": "exclusive", "family": "dual", "agentSocket": %q},
				{"type": "tuning", "sysctl": {"net.ipv6.conf.IFNAME.hop_limit": "32"}}]}`, ver, card, e.srv.socket)
			list, err := libcni.NetworkConfFromBytes([]byte(conflist))
			if err != nil {
				t.Fatal(err)
			}
			cni := libcni.NewCNIConfigWithCacheDir([]string{dir}, t.TempDir(), nil)
			rt := &libcni.RuntimeConf{ContainerID: e.containerID, NetNS: e.pod.Path(), IfName: podIfName,
				Args: [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "default"}, {"K8S_POD_NAME", "pod-a"}, {"K8S_POD_UID", "uid-a"}}}
			ctx := context.Background()
			var raw types.Result
			if err := e.inNode(func() (err error) { raw, err = cni.AddNetworkList(ctx, list, rt); return err }); err != nil {
				t.Fatalf("ADD: %v", err)
			}
			res, err := current.NewResultFromResult(raw)
			if err != nil {
				t.Fatal(err)
			}
			var ips []string
			for _, ipc := range res.IPs {
				ips = append(ips, fmt.Sprintf("%s gw %s if %d", ipc.Address.String(), ipc.Gateway, *ipc.Interface))
			}
			want := []string{"10.1.0.5/24 gw 10.1.0.1 if 0", "2001:db8:ec2:1::5/64 gw fe80:ec2::1 if 0"}
			if !slices.Equal(ips, want) {
				t.Errorf("result IPs = %q, want %q", ips, want)
			}
			var hop string
			if err := e.pod.Do(func(ns.NetNS) (err error) { hop, err = readSysctl("ipv6", podIfName, "hop_limit"); return err }); err != nil || hop != "32" {
				t.Errorf("hop_limit (tuning) = %q (%v), want 32: IPv6 on the link as tuning sees it", hop, err)
			}
			if err := e.inNode(func() error { return cni.CheckNetworkList(ctx, list, rt) }); err != nil {
				t.Errorf("CHECK: %v", err)
			}
			for i := range 2 {
				if err := e.inNode(func() error { return cni.DelNetworkList(ctx, list, rt) }); err != nil {
					t.Fatalf("DEL #%d: %v", i+1, err)
				}
			}
			e.requireClean([]string{"lo"})
			e.requireENIHome()
		})
	}
}
