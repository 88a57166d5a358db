//go:build e2e

package cluster

import (
	"context"
	"crypto/sha512"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/multinic/multinic/internal/nettest"
)

// nadCRD is a minimal NetworkAttachmentDefinition CRD, enough for Multus (manifests/ has the real one).
const nadCRD = `
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: network-attachment-definitions.k8s.cni.cncf.io
spec:
  group: k8s.cni.cncf.io
  scope: Namespaced
  names:
    plural: network-attachment-definitions
    singular: network-attachment-definition
    kind: NetworkAttachmentDefinition
    shortNames: [net-attach-def]
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              config: {type: string}
`

var nadGVR = schema.GroupVersionResource{Group: "k8s.cni.cncf.io", Version: "v1", Resource: "network-attachment-definitions"}

const (
	networksAnnotation      = "k8s.v1.cni.cncf.io/networks"
	networkStatusAnnotation = "k8s.v1.cni.cncf.io/network-status"
	multusNetwork           = "multus-cni-network"
	masterLink              = "ens6" // the node's link the macvlan NAD hangs off
	primarySubnet           = "10.244.1.0/24"
	secondarySubnet         = "192.168.50.0/24"
	// cniVersion of the Multus conflist, its delegate and the NAD: the version the multinic plugin speaks.
	cniVersion = "1.1.0"
)

// networkStatus is one element of the network-status annotation.
type networkStatus struct {
	Name      string   `json:"name"`
	Interface string   `json:"interface"`
	IPs       []string `json:"ips"`
	Mac       string   `json:"mac"`
	Default   bool     `json:"default"`
}

// sandbox is a pod as the runtime sees it: an API object and a netns.
type sandbox struct {
	pod         *corev1.Pod
	netns       ns.NetNS
	containerID string
}

func (s *sandbox) cniArgs() [][2]string {
	return [][2]string{
		{"IgnoreUnknown", "true"},
		{"K8S_POD_NAMESPACE", s.pod.Namespace},
		{"K8S_POD_NAME", s.pod.Name},
		{"K8S_POD_INFRA_CONTAINER_ID", s.containerID},
		{"K8S_POD_UID", string(s.pod.UID)},
	}
}

// runtime runs the Multus conflist for one sandbox from inside the node netns, ADD or DEL.
type podRuntime interface {
	containerID(netnsPath string) string
	run(t *testing.T, verb string, s *sandbox) error
}

// libcniRuntime is what containerd and CRI-O do: libcni in process, here with a private cache dir.
type libcniRuntime struct {
	node     ns.NetNS
	cni      *libcni.CNIConfig
	confList *libcni.NetworkConfigList
	cacheDir string
}

func (r *libcniRuntime) containerID(netnsPath string) string {
	return "libcni-" + filepath.Base(netnsPath)
}

func (r *libcniRuntime) run(t *testing.T, verb string, s *sandbox) error {
	rt := &libcni.RuntimeConf{ContainerID: s.containerID, NetNS: s.netns.Path(), IfName: "eth0", Args: s.cniArgs()}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return r.node.Do(func(ns.NetNS) error { // the plugins' host side lands in the node netns
		if verb == "ADD" {
			res, err := r.cni.AddNetworkList(ctx, r.confList, rt)
			if err == nil {
				t.Logf("libcni ADD result: %s", mustJSON(res))
			}
			return err
		}
		return r.cni.DelNetworkList(ctx, r.confList, rt)
	})
}

// cnitoolRuntime runs the cnitool binary (its libcni cache is /var/lib/cni; DEL removes its entry).
type cnitoolRuntime struct {
	node    ns.NetNS
	tool    string
	cniPath string
	confDir string
}

// containerID is how cnitool names the container: a hash of the netns path.
func (r *cnitoolRuntime) containerID(netnsPath string) string {
	s := sha512.Sum512([]byte(netnsPath))
	return fmt.Sprintf("cnitool-%x", s[:10])
}

func (r *cnitoolRuntime) run(t *testing.T, verb string, s *sandbox) error {
	var args []string
	for _, kv := range s.cniArgs() {
		args = append(args, kv[0]+"="+kv[1])
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return r.node.Do(func(ns.NetNS) error { // the child inherits the locked thread's netns
		cmd := exec.CommandContext(ctx, r.tool, strings.ToLower(verb), multusNetwork, s.netns.Path())
		cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "CNI_PATH=" + r.cniPath, "NETCONFPATH=" + r.confDir,
			"CNI_IFNAME=eth0", "CNI_ARGS=" + strings.Join(args, ";")}
		out, err := cmd.CombinedOutput()
		t.Logf("cnitool %s: %s", strings.ToLower(verb), out)
		if err != nil {
			return fmt.Errorf("cnitool %s: %w: %s", verb, err, out)
		}
		return nil
	})
}

// TestMultusThinPlugin runs the real Multus thin plugin as a runtime would: a Pod object naming a
// macvlan NetworkAttachmentDefinition, a "node" netns that can reach the API server on 127.0.0.1, a
// primary network ptp + host-local as eth0, and the NAD's attachment as net1.
func TestMultusThinPlugin(t *testing.T) {
	tools := RequireE2E(t)
	c := Start(t, Options{Tools: tools})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	work := t.TempDir()

	node := nettest.NewNS(t)
	if err := c.ServeInNetNS(node.Path()); err != nil {
		t.Fatal(err)
	}
	if err := node.Do(func(ns.NetNS) error {
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: masterLink}, PeerName: masterLink + "-peer"}
		if err := netlink.LinkAdd(veth); err != nil {
			return fmt.Errorf("create %s: %w", masterLink, err)
		}
		for _, name := range []string{masterLink, masterLink + "-peer"} {
			l, err := netlinksafe.LinkByName(name)
			if err != nil {
				return err
			}
			if err := netlink.LinkSetUp(l); err != nil {
				return fmt.Errorf("set %s up: %w", name, err)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	if _, err := c.Apply(ctx, []byte(nadCRD), ApplyOptions{}); err != nil {
		t.Fatalf("install NAD CRD: %v", err)
	}
	ipamDir := filepath.Join(work, "ipam") // host-local leases, instead of /var/lib/cni/networks
	nadConf := mustJSON(map[string]any{
		"cniVersion": cniVersion, "type": "macvlan", "master": masterLink, "mode": "bridge",
		"ipam": map[string]any{"type": "host-local", "dataDir": ipamDir,
			"ranges": [][]map[string]string{{{"subnet": secondarySubnet}}}},
	})
	nad := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
		"metadata": map[string]any{"name": "macvlan-net", "namespace": "default"},
		"spec":     map[string]any{"config": nadConf},
	}}
	if _, err := c.Dynamic.Resource(nadGVR).Namespace("default").Create(ctx, nad, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create NAD: %v", err)
	}
	if _, err := c.CreateNode(ctx, "node-a", map[string]string{"kubernetes.io/hostname": "node-a"}); err != nil {
		t.Fatal(err)
	}

	multusCache := filepath.Join(work, "multus")
	confDir := filepath.Join(work, "net.d")
	if err := os.MkdirAll(confDir, 0o755); err != nil {
		t.Fatal(err)
	}
	multusLog := filepath.Join(work, "multus.log")
	confList := mustJSON(map[string]any{
		"cniVersion": cniVersion,
		"name":       multusNetwork,
		"plugins": []any{map[string]any{
			"type":        "multus",
			"kubeconfig":  c.Kubeconfig,
			"binDir":      tools.CNIBinDir,
			"cniDir":      multusCache,
			"confDir":     confDir,
			"logFile":     multusLog,
			"logLevel":    "debug",
			"logToStderr": false,
			"delegates": []any{map[string]any{
				"cniVersion": cniVersion, "name": "primary", "type": "ptp",
				"ipam": map[string]any{"type": "host-local", "dataDir": ipamDir,
					"ranges": [][]map[string]string{{{"subnet": primarySubnet}}}},
			}},
		}},
	})
	if err := os.WriteFile(filepath.Join(confDir, "00-multus.conflist"), []byte(confList), 0o644); err != nil {
		t.Fatal(err)
	}
	list, err := libcni.NetworkConfFromBytes([]byte(confList))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			if data, err := os.ReadFile(multusLog); err == nil {
				t.Logf("multus log:\n%s", data)
			}
		}
	})

	cniPath := filepath.Dir(tools.Multus) + string(os.PathListSeparator) + tools.CNIBinDir
	runtimes := []struct {
		name string
		rt   podRuntime
	}{
		{"libcni", &libcniRuntime{node: node, confList: list, cacheDir: filepath.Join(work, "libcni"),
			cni: libcni.NewCNIConfigWithCacheDir(filepath.SplitList(cniPath), filepath.Join(work, "libcni"), nil)}},
		{"cnitool", &cnitoolRuntime{node: node, tool: tools.CNITool, cniPath: cniPath, confDir: confDir}},
	}
	varLibCNIExisted := exists("/var/lib/cni")
	t.Cleanup(func() {
		if !varLibCNIExisted { // cnitool's libcni cache; only empty folders may remain after DEL
			_ = os.Remove("/var/lib/cni/results")
			_ = os.Remove("/var/lib/cni")
		}
	})

	nodeLinksBefore := nettest.LinkNames(t, nettest.Handle(t, node))
	for i, r := range runtimes {
		t.Run(r.name, func(t *testing.T) {
			podNS := nettest.NewNS(t)
			pod := testPod(fmt.Sprintf("pod-%d", i), "node-a", map[string]string{networksAnnotation: "macvlan-net"})
			pod, err := c.Client.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			s := &sandbox{pod: pod, netns: podNS, containerID: r.rt.containerID(podNS.Path())}

			start := time.Now()
			if err := r.rt.run(t, "ADD", s); err != nil {
				t.Fatalf("ADD: %v", err)
			}
			t.Logf("ADD took %s", time.Since(start).Round(time.Millisecond))
			eth0 := podAddr(t, podNS, "eth0")
			net1 := podAddr(t, podNS, "net1")
			if !inSubnet(eth0, primarySubnet) || !inSubnet(net1, secondarySubnet) {
				t.Errorf("eth0 %v in %s and net1 %v in %s expected", eth0, primarySubnet, net1, secondarySubnet)
			}

			got, err := c.Client.CoreV1().Pods("default").Get(ctx, pod.Name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			raw := got.Annotations[networkStatusAnnotation]
			var statuses []networkStatus
			if err := json.Unmarshal([]byte(raw), &statuses); err != nil {
				t.Fatalf("network-status %q: %v", raw, err)
			}
			t.Logf("network-status: %s", raw)
			want := []networkStatus{
				{Name: "primary", Interface: "eth0", IPs: []string{eth0.String()}, Default: true},
				{Name: "default/macvlan-net", Interface: "net1", IPs: []string{net1.String()}},
			}
			if len(statuses) != len(want) {
				t.Fatalf("network-status has %d entries, want %d: %s", len(statuses), len(want), raw)
			}
			for i, w := range want {
				g := statuses[i]
				if g.Name != w.Name || g.Interface != w.Interface || !slices.Equal(g.IPs, w.IPs) || g.Default != w.Default {
					t.Errorf("network-status[%d] = %+v, want %+v", i, g, w)
				}
			}

			if err := r.rt.run(t, "DEL", s); err != nil {
				t.Fatalf("DEL: %v", err)
			}
			if links := nettest.LinkNames(t, nettest.Handle(t, podNS)); !slices.Equal(links, []string{"lo"}) {
				t.Errorf("pod netns links after DEL: %v, want [lo]", links)
			}
			if links := nettest.LinkNames(t, nettest.Handle(t, node)); !slices.Equal(links, nodeLinksBefore) {
				t.Errorf("node netns links after DEL: %v, want %v", links, nodeLinksBefore)
			}
			if leases := hostLocalLeases(t, ipamDir); len(leases) > 0 {
				t.Errorf("host-local leases left after DEL: %v", leases)
			}
			// A second DEL (the runtime retrying) succeeds too.
			if err := r.rt.run(t, "DEL", s); err != nil {
				t.Errorf("second DEL: %v", err)
			}
		})
	}
	for _, dir := range []string{multusCache, filepath.Join(work, "libcni", "results")} {
		if left := filesUnder(t, dir); len(left) > 0 {
			t.Errorf("cache entries left in %s after DEL: %v", dir, left)
		}
	}
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// podAddr returns the one IPv4 address of link in the pod netns.
func podAddr(t *testing.T, n ns.NetNS, link string) net.IP {
	t.Helper()
	var ip net.IP
	if err := n.Do(func(ns.NetNS) error {
		l, err := netlinksafe.LinkByName(link)
		if err != nil {
			return err
		}
		addrs, err := netlinksafe.AddrList(l, netlink.FAMILY_V4)
		if err != nil {
			return err
		}
		if len(addrs) != 1 {
			return fmt.Errorf("%s has %d IPv4 addresses, want 1", link, len(addrs))
		}
		ip = addrs[0].IP
		return nil
	}); err != nil {
		t.Fatalf("pod netns %s: %v", link, err)
	}
	return ip
}

func inSubnet(ip net.IP, cidr string) bool {
	_, n, err := net.ParseCIDR(cidr)
	return err == nil && n.Contains(ip)
}

// hostLocalLeases lists the lease files (named by address) host-local keeps under dataDir/<network>/.
func hostLocalLeases(t *testing.T, dataDir string) []string {
	t.Helper()
	var leases []string
	for _, f := range filesUnder(t, dataDir) {
		if net.ParseIP(filepath.Base(f)) != nil {
			leases = append(leases, f)
		}
	}
	return leases
}

func filesUnder(t *testing.T, dir string) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			if os.IsNotExist(err) {
				return nil
			}
			return err
		}
		if !d.IsDir() {
			files = append(files, path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}
