//go:build e2e

package multus

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/multinic/multinic/internal/nlretry"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/multinic/multinic/e2e/cluster"
	"github.com/multinic/multinic/internal/namedns"
	"github.com/multinic/multinic/internal/nettest"
	"github.com/multinic/multinic/internal/testing/fabric"
	"github.com/multinic/multinic/internal/testing/fakeec2"
	"github.com/multinic/multinic/internal/testing/harness"
	"github.com/multinic/multinic/ipam/api"
	"github.com/multinic/multinic/ipam/eni"
	"github.com/multinic/multinic/manifests"
	"github.com/multinic/multinic/nad"
	"github.com/multinic/multinic/netconf"
)

const (
	instanceType            = "trn1.32xlarge"
	networkStatusAnnotation = "k8s.v1.cni.cncf.io/network-status"
	primaryNetwork          = "primary"
	cniVersion              = "1.1.0"
	// settleTimeout bounds the wait for the agents and fake-ec2 to be back where they were before the pods
	// (exclusive ENIs go back to EC2 after --surplus-delay).
	settleTimeout = 90 * time.Second
)

// managedCards are every card of trn1.32xlarge but the default card 0.
var managedCards = []int{1, 2, 3, 4, 5, 6, 7}

var nadGVR = schema.GroupVersionResource{Group: "k8s.cni.cncf.io", Version: "v1", Resource: "network-attachment-definitions"}

// TestMultinicThroughMultus is the issue 5 e2e: manifests applied to a real kube-apiserver, two agents
// publishing NADs and node resources, and pods attached to cards through the real Multus thin plugin.
// The cases use the exclusive NADs (a whole ENI per card), which this host's kernel supports; the same
// cases with the ipvlan NADs run in the test VM (TestMultinicThroughMultusIPVlanVM).
func TestMultinicThroughMultus(t *testing.T) {
	tools := cluster.RequireE2E(t)
	setupBinaries(t, harness.BinDir(t))
	start := time.Now()
	c := cluster.Start(t, cluster.Options{Tools: tools})
	runCases(t, c, tools, netconf.ModeExclusive, managedCards, start)
}

// TestMultinicThroughMultusDual is issue 14's e2e: the agents serve every card dual-stack (--family dual)
// and publish NADs with "family": "dual"; a pod on each node attached to cards 1-7 through Multus gets an
// IPv4 and an IPv6 address of one ENI on each card (network-status lists both, IPv4 first), and the two
// pods reach each other over IPv6 (and IPv4) on every card, through fake-ec2's VPC router. Exclusive NADs:
// this host's kernel has no ipvlan.
func TestMultinicThroughMultusDual(t *testing.T) {
	tools := cluster.RequireE2E(t)
	setupBinaries(t, harness.BinDir(t))
	start := time.Now()
	c := cluster.Start(t, cluster.Options{Tools: tools})
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	e := startEnv(ctx, t, c, tools, netconf.ModeExclusive, netconf.FamilyDual, 2, nil, start)
	a := e.addPod(ctx, t, e.region.Node(0), "dual-a", managedCards)
	b := e.addPod(ctx, t, e.region.Node(1), "dual-b", managedCards)
	e.checkPod(ctx, t, a)
	e.checkPod(ctx, t, b)
	for i, card := range managedCards {
		ifName := "net" + strconv.Itoa(i+1)
		tcpEcho(t, a, b, ifName, true, 7000+card)
		tcpEcho(t, b, a, ifName, true, 7100+card)
		tcpEcho(t, a, b, ifName, false, 7200+card)
	}
	e.deletePod(ctx, t, a)
	e.deletePod(ctx, t, b)
	e.settle(t)
	t.Logf("total %s", time.Since(start).Round(time.Millisecond))
}

// runCases runs the cases on the control plane c with the NADs of mode (netconf.ModeExclusive or
// netconf.ModeIPVlan): applies the manifests, starts the region and its agents, then the pods. allCards are
// the cards of the "all-cards" pod.
func runCases(t *testing.T, c *cluster.Cluster, tools *cluster.Tools, mode string, allCards []int, start time.Time) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()

	e := startEnv(ctx, t, c, tools, mode, "", 2, nil, start)
	region := e.region

	t.Run("all-cards", func(t *testing.T) {
		p := e.addPod(ctx, t, region.Node(0), "all-cards", allCards)
		e.checkPod(ctx, t, p)
		e.deletePod(ctx, t, p)
		e.settle(t)
	})
	t.Run("example-pod", func(t *testing.T) {
		p := e.addExamplePod(ctx, t, region.Node(0), exampleFile(mode))
		e.checkPod(ctx, t, p)
		e.deletePod(ctx, t, p)
		e.settle(t)
	})
	t.Run("subset", func(t *testing.T) {
		p := e.addPod(ctx, t, region.Node(1), "subset", []int{2, 5})
		e.checkPod(ctx, t, p)
		e.deletePod(ctx, t, p)
		e.settle(t)
	})
	t.Run("same-card-twice", func(t *testing.T) {
		n := region.Node(0)
		p, err := e.newPod(ctx, t, n, "same-card", []int{3, 3})
		if err != nil {
			t.Fatal(err)
		}
		_, err = e.run("ADD", p)
		if err == nil {
			t.Fatal("Multus ADD of a pod naming card 3 twice succeeded")
		}
		// Multus wraps the delegate's error; the plugin's code and message must come through.
		msg := err.Error()
		t.Logf("Multus ADD failed as it should: %s", msg)
		if !strings.Contains(msg, nad.Name(3, e.mode)) || !strings.Contains(msg, "net2") ||
			!strings.Contains(strings.ToLower(msg), "card 3") {
			t.Errorf("ADD error %q does not name the NAD, net2 and card 3", msg)
		}
		if !strings.Contains(msg, "already holds") || !strings.Contains(msg, "one address per pod per card") {
			t.Errorf("ADD error %q does not carry the plugin's card-taken message", msg)
		}
		// Multus v4.3.0 wraps a delegate's error into its own (code 999): the plugin's code does not get
		// through, its message does.
		if code := cniCode(err); code != types.ErrInternal {
			t.Errorf("Multus ADD error code %d, want Multus' %d (it does not forward delegate codes)", code, types.ErrInternal)
		}
		// Multus rolled back: nothing of the pod is left with the agent, in the pod or on the node.
		if allocs := e.podAllocations(t, n, p); len(allocs) != 0 {
			t.Errorf("after the failed ADD the agent holds %v for the pod", allocs)
		}
		if links := nettest.LinkNames(t, p.h); !slices.Equal(links, []string{"lo"}) {
			t.Errorf("after the failed ADD the pod netns has links %v, want [lo]", links)
		}
		// The runtime then tears the sandbox down: DEL succeeds.
		e.deletePod(ctx, t, p)
		e.settle(t)

		// The plugin's own code, under Multus' configuration: a pod holding card 3 through Multus, and a
		// second attachment to card 3 made by calling the plugin as Multus calls it, with the NAD's config.
		holder := e.addPod(ctx, t, n, "card-holder", []int{3})
		u, err := e.c.Dynamic.Resource(nadGVR).Namespace(nad.DefaultNamespace).Get(ctx, nad.Name(3, e.mode), metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		conf, _, _ := unstructuredString(u.Object, "spec", "config")
		_, err = e.execPlugin(holder, "ADD", "net2", conf)
		if code := cniCode(err); code != api.CNICardTaken || !strings.Contains(fmt.Sprint(err), "one address per pod per card") {
			t.Errorf("plugin ADD of card 3 again as net2: %v (code %d), want code %d (card taken)", err, code, api.CNICardTaken)
		} else {
			t.Logf("the plugin itself answers code %d: %v", code, err)
		}
		if _, err := e.execPlugin(holder, "DEL", "net2", conf); err != nil { // what Multus does after a failed ADD
			t.Errorf("plugin DEL of the refused net2: %v", err)
		}
		if allocs := e.podAllocations(t, n, holder); len(allocs) != 1 || allocs["net1"].Card != 3 {
			t.Errorf("after the refused net2 the agent holds %+v for the holder, want its net1 on card 3 only", allocs)
		}
		e.checkPod(ctx, t, holder)
		e.deletePod(ctx, t, holder)
		e.settle(t)
	})
	t.Run("two-nodes", func(t *testing.T) {
		a := e.addPod(ctx, t, region.Node(0), "peer-a", []int{1, 2})
		b := e.addPod(ctx, t, region.Node(1), "peer-b", []int{1, 2})
		e.checkPod(ctx, t, a)
		e.checkPod(ctx, t, b)
		for i, card := range []int{1, 2} {
			ifName := "net" + strconv.Itoa(i+1)
			tcpEcho(t, a, b, ifName, false, 7000+card)
			tcpEcho(t, b, a, ifName, false, 7100+card)
		}
		e.deletePod(ctx, t, a)
		e.deletePod(ctx, t, b)
		e.settle(t)
	})
	t.Logf("total %s", time.Since(start).Round(time.Millisecond))
}

// startEnv makes the cluster side of the cases on the control plane c: applies the manifests, starts a
// region of nodes nodes (Node objects node1, node2, ...) whose agents serve managedCards in family ("" for
// the agents' default, ipv4) and publish to c (agentArgs on top of the harness's and the e2e's flags),
// checks what they publish, and returns the runtime side with pods of mode (netconf.ModeExclusive or
// netconf.ModeIPVlan) and the node netns recorded.
func startEnv(ctx context.Context, t *testing.T, c *cluster.Cluster, tools *cluster.Tools, mode, family string, nodes int, agentArgs []string, start time.Time) *env {
	t.Helper()
	applyManifests(ctx, t, c)
	if family != "" {
		agentArgs = append([]string{"--family", family}, agentArgs...)
	}
	// The Node objects first: the agents patch their status as soon as they are ready.
	for i := range nodes {
		name := fmt.Sprintf("node%d", i+1) // harness.Node.Name
		if _, err := c.CreateNode(ctx, name, map[string]string{"kubernetes.io/hostname": name}); err != nil {
			t.Fatal(err)
		}
	}
	region := harness.NewRegion(t, harness.Config{
		InstanceType: instanceType, Nodes: nodes, ManagedCards: managedCards, BinDir: wrapBinDir,
		AgentArgs: append([]string{
			"--kubeconfig", c.Kubeconfig, // the agent runs in the host's netns: 127.0.0.1 reaches the API server
			"--socket", api.DefaultSocketPath, // the node's folder there: see the agent wrapper
			"--nad-namespace", nad.DefaultNamespace, "--nad-mode", "both",
			"--publish-interval", "1s", "--surplus-delay", "1s",
		}, agentArgs...),
	})
	t.Logf("control plane, manifests and region with %d agents up in %s", len(region.Nodes()), time.Since(start).Round(time.Millisecond))
	for _, n := range region.Nodes() {
		if n.Name != fmt.Sprintf("node%d", n.Index+1) {
			t.Fatalf("harness node %d is named %q, the Node object node%d", n.Index, n.Name, n.Index+1)
		}
		if n.Socket != filepath.Join(n.Dir, filepath.Base(api.DefaultSocketPath)) {
			t.Fatalf("harness socket %s: want %s in the node folder, where the agent wrapper makes the agent listen", n.Socket, filepath.Base(api.DefaultSocketPath))
		}
		if err := c.ServeInNetNS(n.NetNSPath); err != nil { // Multus runs in the node netns
			t.Fatal(err)
		}
	}
	checkNADs(ctx, t, c, family)
	checkNodeResources(ctx, t, c, region)

	e := newEnv(t, c, tools, region)
	e.mode, e.family = mode, netconf.FamilyIPv4
	if family != "" {
		e.family = family
	}
	e.snapshot(t)
	return e
}

// applyManifests server-side applies manifests/ in order: for real, but the DaemonSet as a dry run (no
// image is published, and nothing would run it).
func applyManifests(ctx context.Context, t *testing.T, c *cluster.Cluster) {
	t.Helper()
	objs, err := manifests.Objects()
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, o := range objs {
		dry := o.GetKind() == "DaemonSet"
		if _, err := c.ApplyObject(ctx, o, cluster.ApplyOptions{DryRun: dry}); err != nil {
			t.Fatalf("apply manifests (dry run %t): %v", dry, err)
		}
		kinds = append(kinds, o.GetKind()+"/"+o.GetName())
	}
	t.Logf("applied %d manifests (DaemonSet as dry run): %v", len(objs), kinds)
	if _, err := c.Client.AppsV1().DaemonSets("kube-system").Get(ctx, "multinic-agent", metav1.GetOptions{}); err == nil {
		t.Error("the DaemonSet's dry run stored it")
	}
}

// checkNADs waits for the agents' NADs and compares them with nad.Render (with family, "" for the
// default): same names, labels, annotations and config, and no other NAD managed by the agent.
func checkNADs(ctx context.Context, t *testing.T, c *cluster.Cluster, family string) {
	t.Helper()
	var families map[int]string
	if family != "" {
		families = map[int]string{}
		for _, card := range managedCards {
			families[card] = family
		}
	}
	want, err := nad.Render(managedCards, nad.Options{Namespace: nad.DefaultNamespace,
		Modes: []string{netconf.ModeIPVlan, netconf.ModeExclusive}, Families: families})
	if err != nil {
		t.Fatal(err)
	}
	res := c.Dynamic.Resource(nadGVR).Namespace(nad.DefaultNamespace)
	var last string
	deadline := time.Now().Add(30 * time.Second)
	for {
		list, err := res.List(ctx, metav1.ListOptions{LabelSelector: nad.ManagedByLabel + "=" + nad.ManagedByValue})
		var diffs []string
		if err != nil {
			diffs = append(diffs, err.Error())
		} else {
			got := map[string]bool{}
			for _, u := range list.Items {
				got[u.GetName()] = true
			}
			for _, w := range want {
				u, err := res.Get(ctx, w.Name, metav1.GetOptions{})
				if err != nil {
					diffs = append(diffs, fmt.Sprintf("%s: %v", w.Name, err))
					continue
				}
				delete(got, w.Name)
				cfg, _, _ := unstructuredString(u.Object, "spec", "config")
				if cfg != w.Spec.Config {
					diffs = append(diffs, fmt.Sprintf("%s config %s, want %s", w.Name, cfg, w.Spec.Config))
				}
				for k, v := range w.Labels {
					if u.GetLabels()[k] != v {
						diffs = append(diffs, fmt.Sprintf("%s label %s=%q, want %q", w.Name, k, u.GetLabels()[k], v))
					}
				}
				for k, v := range w.Annotations {
					if u.GetAnnotations()[k] != v {
						diffs = append(diffs, fmt.Sprintf("%s annotation %s=%q, want %q", w.Name, k, u.GetAnnotations()[k], v))
					}
				}
			}
			for name := range got {
				diffs = append(diffs, "unexpected NAD "+name)
			}
		}
		if len(diffs) == 0 {
			t.Logf("the agents published %d NADs in %s, as nad.Render renders them (e.g. %s: %s)",
				len(want), nad.DefaultNamespace, want[1].Name, want[1].Spec.Config)
			return
		}
		last = strings.Join(diffs, "; ")
		if time.Now().After(deadline) {
			t.Fatalf("published NADs differ from nad.Render: %s", last)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func unstructuredString(obj map[string]any, fields ...string) (string, bool, error) {
	var cur any = obj
	for _, f := range fields {
		m, ok := cur.(map[string]any)
		if !ok {
			return "", false, nil
		}
		cur = m[f]
	}
	s, ok := cur.(string)
	return s, ok, nil
}

// checkNodeResources waits until each Node's status carries multinic.io/card-1..7 > 0 (capacity and
// allocatable) and nothing for card 0.
func checkNodeResources(ctx context.Context, t *testing.T, c *cluster.Cluster, region *harness.Region) {
	t.Helper()
	for _, n := range region.Nodes() {
		var last string
		deadline := time.Now().Add(30 * time.Second)
		for {
			node, err := c.Client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
			var bad []string
			if err != nil {
				bad = append(bad, err.Error())
			} else {
				for _, card := range managedCards {
					name := corev1.ResourceName(nad.ResourceName("", card))
					for what, list := range map[string]corev1.ResourceList{"capacity": node.Status.Capacity, "allocatable": node.Status.Allocatable} {
						if q, ok := list[name]; !ok || q.Cmp(resource.MustParse("1")) < 0 {
							bad = append(bad, fmt.Sprintf("%s %s=%v", what, name, q.String()))
						}
					}
				}
				if _, ok := node.Status.Capacity[corev1.ResourceName(nad.ResourceName("", 0))]; ok {
					bad = append(bad, "card 0 advertised")
				}
			}
			if len(bad) == 0 {
				q := node.Status.Capacity[corev1.ResourceName(nad.ResourceName("", 1))]
				t.Logf("node %s advertises multinic.io/card-1..7 (card-1: %s)", n.Name, q.String())
				break
			}
			last = strings.Join(bad, "; ")
			if time.Now().After(deadline) {
				t.Fatalf("node %s resources: %s", n.Name, last)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
}

// env is the runtime side of the test: one Multus conflist per node, the caches, the baseline.
type env struct {
	c      *cluster.Cluster
	region *harness.Region
	work   string
	// cniPath holds multus, the reference plugins and multinic (Multus' binDir).
	cniPath   string
	confList  map[string]string // per node name: the conflist file
	multusLog string
	mode      string // of the pods' NADs: netconf.ModeExclusive or netconf.ModeIPVlan
	family    string // of the agents' cards and so of the NADs: netconf.FamilyIPv4, FamilyIPv6 or FamilyDual
	pods      []*pod
	base      map[string]baseline // per node name
}

type baseline struct {
	netns []string
	enis  []string
}

func newEnv(t *testing.T, c *cluster.Cluster, tools *cluster.Tools, region *harness.Region) *env {
	t.Helper()
	work := t.TempDir()
	e := &env{c: c, region: region, work: work, confList: map[string]string{}, base: map[string]baseline{},
		multusLog: filepath.Join(work, "multus.log")}
	// One binDir: Multus finds its delegates (ptp, host-local, multinic) there.
	e.cniPath = filepath.Join(work, "bin")
	if err := os.MkdirAll(e.cniPath, 0o755); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(tools.CNIBinDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, de := range entries {
		if err := os.Symlink(filepath.Join(tools.CNIBinDir, de.Name()), filepath.Join(e.cniPath, de.Name())); err != nil {
			t.Fatal(err)
		}
	}
	for _, b := range []string{tools.Multus, filepath.Join(realBinDir, harness.PluginBinary)} {
		dst := filepath.Join(e.cniPath, filepath.Base(b))
		_ = os.Remove(dst)
		if err := os.Symlink(b, dst); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range region.Nodes() {
		dir := filepath.Join(work, n.Name)
		conf := map[string]any{
			"cniVersion": cniVersion,
			"name":       "multus-cni-network",
			"plugins": []any{map[string]any{
				"type":        "multus",
				"kubeconfig":  c.Kubeconfig,
				"binDir":      e.cniPath,
				"cniDir":      filepath.Join(dir, "multus"),
				"confDir":     filepath.Join(dir, "net.d"),
				"logFile":     e.multusLog,
				"logLevel":    "debug",
				"logToStderr": false,
				"delegates": []any{map[string]any{
					"cniVersion": cniVersion, "name": primaryNetwork, "type": "ptp",
					"ipam": map[string]any{"type": "host-local", "dataDir": filepath.Join(dir, "ipam"),
						"ranges": [][]map[string]string{{{"subnet": n.PodCIDR.String()}}}},
				}},
			}},
		}
		if err := os.MkdirAll(filepath.Join(dir, "net.d"), 0o755); err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(conf)
		path := filepath.Join(dir, "net.d", "00-multus.conflist")
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
		e.confList[n.Name] = path
		writeKubeletCheckpoint(t, filepath.Join(dir, "kubelet"))
	}
	t.Cleanup(func() {
		if t.Failed() {
			if data, err := os.ReadFile(e.multusLog); err == nil {
				const max = 12000
				if len(data) > max {
					data = data[len(data)-max:]
				}
				t.Logf("multus log (tail):\n%s", data)
			}
		}
	})
	return e
}

// writeKubeletCheckpoint writes the device-plugin checkpoint a kubelet keeps in dir/device-plugins when no
// device plugin has given a pod anything: multinic's cards are extended resources advertised on the Node's
// status, not devices, so Multus finds no device ID for them and passes none to the plugin.
func writeKubeletCheckpoint(t *testing.T, dir string) {
	t.Helper()
	dp := filepath.Join(dir, "device-plugins")
	if err := os.MkdirAll(dp, 0o755); err != nil {
		t.Fatal(err)
	}
	const empty = `{"Data":{"PodDeviceEntries":null,"RegisteredDevices":{}},"Checksum":0}`
	if err := os.WriteFile(filepath.Join(dp, "kubelet_internal_checkpoint"), []byte(empty), 0o644); err != nil {
		t.Fatal(err)
	}
}

// pod is a Pod object and its sandbox netns, on a node.
type pod struct {
	obj         *corev1.Pod
	node        *harness.Node
	cards       []int
	netnsPath   string
	netns       ns.NetNS
	h           netlinksafe.Handle
	containerID string
	result      *current.Result
	deleted     bool
	removed     bool
	// modes are the plugin mode of each card's attachment; nil: the env's mode for all.
	modes []string
}

// mode is the plugin mode of the i-th attachment.
func (p *pod) mode(i int, def string) string {
	if p.modes != nil {
		return p.modes[i]
	}
	return def
}

// newPod creates the Pod object (networks: the NAD of e.mode of each card, in order) and its netns,
// without running ADD. Both go when the test ends.
func (e *env) newPod(ctx context.Context, t *testing.T, n *harness.Node, name string, cards []int) (*pod, error) {
	t.Helper()
	var nets []string
	for _, c := range cards {
		nets = append(nets, nad.DefaultNamespace+"/"+nad.Name(c, e.mode))
	}
	return e.newPodNets(ctx, t, n, name, cards, nets)
}

// newPodNets is newPod with the networks named: nets[i] (namespace/NAD) attaches cards[i].
func (e *env) newPodNets(ctx context.Context, t *testing.T, n *harness.Node, name string, cards []int, nets []string) (*pod, error) {
	t.Helper()
	obj := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default",
			Annotations: map[string]string{nad.NetworksAnnotation: strings.Join(nets, ",")}},
		Spec: corev1.PodSpec{NodeName: n.Name, Containers: []corev1.Container{{Name: "c", Image: "registry.k8s.io/pause:3.10"}}},
	}
	return e.newPodObject(ctx, t, n, obj, cards, nil)
}

// newPodObject creates the Pod object obj (its networks attach cards[i] in modes[i]; nil: e.mode) and
// its netns on node n, without running ADD.
func (e *env) newPodObject(ctx context.Context, t *testing.T, n *harness.Node, obj *corev1.Pod, cards []int, modes []string) (*pod, error) {
	t.Helper()
	name := obj.Name
	obj, err := e.c.Client.CoreV1().Pods(obj.Namespace).Create(ctx, obj, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("create pod %s: %w", name, err)
	}
	id := make([]byte, 32)
	_, _ = rand.Read(id)
	p := &pod{obj: obj, node: n, cards: cards, modes: modes, containerID: hex.EncodeToString(id)}
	t.Cleanup(func() { e.removePod(t, p) })
	p.netnsPath = filepath.Join(fabric.NetNSDir, fmt.Sprintf("%s-%s", n.NetNSName, name))
	if p.netns, p.h, err = namedns.CreateOpen(p.netnsPath); err != nil {
		return nil, err
	}
	return p, nil
}

// addPod is newPod and a successful Multus ADD.
func (e *env) addPod(ctx context.Context, t *testing.T, n *harness.Node, name string, cards []int) *pod {
	t.Helper()
	p, err := e.newPod(ctx, t, n, name, cards)
	if err != nil {
		t.Fatal(err)
	}
	took := e.add(t, p)
	t.Logf("Multus ADD of pod %s on %s (cards %v) took %s", name, n.Name, cards, took.Round(time.Millisecond))
	return p
}

// add runs a Multus ADD for the pod, which must succeed, keeps its result in p.result and returns how long
// the runtime's CNI call took.
func (e *env) add(t *testing.T, p *pod) time.Duration {
	t.Helper()
	out, took, err := e.runTimed("ADD", p)
	if err != nil {
		t.Fatalf("Multus ADD of pod %s (cards %v): %v", p.obj.Name, p.cards, err)
	}
	r, err := current.NewResult(out)
	if err == nil {
		p.result, err = current.GetResult(r)
	}
	if err != nil {
		t.Fatalf("ADD result %s: %v", out, err)
	}
	return took
}

// run runs the runtime (this test binary, see runRuntime) for the pod: from inside the node's netns, in a
// mount namespace where socketDir is the node's folder. A failure is the CNI error Multus returned.
func (e *env) run(verb string, p *pod) ([]byte, error) {
	out, _, err := e.runTimed(verb, p)
	return out, err
}

// runTimed is run, and how long the runtime's libcni call took (the exec of Multus and all Multus did,
// without the start of the runtime process around it).
func (e *env) runTimed(verb string, p *pod) ([]byte, time.Duration, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, 0, err
	}
	elapsed, err := os.CreateTemp(e.work, "elapsed-")
	if err != nil {
		return nil, 0, err
	}
	_ = elapsed.Close()
	defer os.Remove(elapsed.Name())
	n := p.node
	args := append(bindDirs([][2]string{{n.Dir, socketDir}, {filepath.Join(e.work, n.Name, "kubelet"), kubeletDir}}), self)
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = []string{
		"PATH=" + os.Getenv("PATH"),
		runtimeEnv + "=" + verb,
		runtimeConfEnv + "=" + e.confList[n.Name],
		runtimeNetNSEnv + "=" + p.netnsPath,
		runtimeContainerEnv + "=" + p.containerID,
		runtimeCacheEnv + "=" + filepath.Join(e.work, n.Name, "libcni"),
		runtimePathEnv + "=" + e.cniPath,
		runtimeArgsEnv + "=" + strings.Join([]string{"IgnoreUnknown=true",
			"K8S_POD_NAMESPACE=" + p.obj.Namespace, "K8S_POD_NAME=" + p.obj.Name,
			"K8S_POD_INFRA_CONTAINER_ID=" + p.containerID, "K8S_POD_UID=" + string(p.obj.UID)}, ";"),
		runtimeElapsedEnv + "=" + elapsed.Name(),
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = n.NetNS().Do(func(ns.NetNS) error { return cmd.Run() }) // the child starts in the node netns
	if err != nil {
		var cniErr types.Error
		if json.Unmarshal(stdout.Bytes(), &cniErr) == nil && cniErr.Code != 0 {
			return nil, 0, &cniErr
		}
		return nil, 0, fmt.Errorf("runtime %s: %w (stdout %s, stderr %s)", verb, err, stdout.String(), strings.TrimSpace(stderr.String()))
	}
	data, err := os.ReadFile(elapsed.Name())
	if err != nil {
		return nil, 0, fmt.Errorf("runtime %s: its timing: %w", verb, err)
	}
	nanos, err := strconv.ParseInt(string(data), 10, 64)
	if err != nil {
		return nil, 0, fmt.Errorf("runtime %s: its timing %q: %w", verb, data, err)
	}
	return stdout.Bytes(), time.Duration(nanos), nil
}

// execPlugin runs the multinic plugin for the pod as Multus runs a delegate: from the node's netns and
// filesystem, with the NAD's config on stdin and Multus' CNI_ARGS.
func (e *env) execPlugin(p *pod, verb, ifName, conf string) ([]byte, error) {
	n := p.node
	args := append(bindDirs([][2]string{{n.Dir, socketDir}}), filepath.Join(realBinDir, harness.PluginBinary))
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = []string{
		"PATH=" + os.Getenv("PATH"),
		"CNI_COMMAND=" + verb, "CNI_CONTAINERID=" + p.containerID, "CNI_NETNS=" + p.netnsPath, "CNI_IFNAME=" + ifName,
		"CNI_PATH=" + e.cniPath,
		"CNI_ARGS=" + strings.Join([]string{"IgnoreUnknown=true",
			"K8S_POD_NAMESPACE=" + p.obj.Namespace, "K8S_POD_NAME=" + p.obj.Name,
			"K8S_POD_INFRA_CONTAINER_ID=" + p.containerID, "K8S_POD_UID=" + string(p.obj.UID)}, ";"),
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = strings.NewReader(conf), &stdout, &stderr
	err := n.NetNS().Do(func(ns.NetNS) error { return cmd.Run() })
	if err != nil {
		var cniErr types.Error
		if json.Unmarshal(stdout.Bytes(), &cniErr) == nil && cniErr.Code != 0 {
			return nil, &cniErr
		}
		return nil, fmt.Errorf("plugin %s: %w (stdout %s, stderr %s)", verb, err, stdout.String(), strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

func cniCode(err error) uint {
	if e, ok := err.(*types.Error); ok {
		return e.Code
	}
	return 0
}

// networkStatus is one element of the network-status annotation.
type networkStatus struct {
	Name      string   `json:"name"`
	Interface string   `json:"interface"`
	IPs       []string `json:"ips"`
	Mac       string   `json:"mac"`
	Default   bool     `json:"default"`
}

// checkPod asserts what a pod with attachments of e.mode to p.cards must look like: netN per card with one
// address in the card's subnet, that address an ENI's on that card of the node in fake-ec2 (exclusive: its
// primary; ipvlan: a secondary), the ENI's MAC on netN (an ipvlan has its parent's), the agent's
// allocation, the ADD result and the Pod's network-status annotation agreeing.
func (e *env) checkPod(ctx context.Context, t *testing.T, p *pod) {
	t.Helper()
	st := e.region.State()
	obj, err := e.c.Client.CoreV1().Pods(p.obj.Namespace).Get(ctx, p.obj.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	raw := obj.Annotations[networkStatusAnnotation]
	var statuses []networkStatus
	if err := json.Unmarshal([]byte(raw), &statuses); err != nil {
		t.Fatalf("pod %s network-status %q: %v", p.obj.Name, raw, err)
	}
	if len(statuses) != len(p.cards)+1 {
		t.Fatalf("pod %s network-status has %d entries, want eth0 and %d cards: %s", p.obj.Name, len(statuses), len(p.cards), raw)
	}
	eth0 := podAddrs(t, p, "eth0")
	if s := statuses[0]; s.Name != primaryNetwork || s.Interface != "eth0" || !s.Default || len(eth0) != 1 ||
		!slices.Equal(s.IPs, []string{eth0[0].Addr().String()}) || !p.node.PodCIDR.Contains(eth0[0].Addr()) {
		t.Errorf("pod %s network-status[0] = %+v, want the default eth0 with %v in %s", p.obj.Name, s, eth0, p.node.PodCIDR)
	}
	allocs := e.podAllocations(t, p.node, p)
	if len(allocs) != len(p.cards) {
		t.Errorf("pod %s: the agent holds %d allocations, want %d: %+v", p.obj.Name, len(allocs), len(p.cards), allocs)
	}
	var summary []string
	for i, card := range p.cards {
		ifName := "net" + strconv.Itoa(i+1)
		mode := p.mode(i, e.mode)
		exclusive := mode == netconf.ModeExclusive
		subnet, ok := st.Subnet(fakeec2.CardSubnetID(card))
		if !ok {
			t.Fatalf("fake-ec2 has no subnet %s for card %d", fakeec2.CardSubnetID(card), card)
		}
		// The addresses of each family: one in the card's subnet for a family the network has, none else.
		var addr, addr6 netip.Addr
		var wantIPs []string
		for _, f := range []struct {
			want  bool
			addrs []netip.Prefix
			cidr  string
			addr  *netip.Addr
		}{
			{api.WantsIPv4(e.family), podAddrs(t, p, ifName), subnet.CIDR, &addr},
			{api.WantsIPv6(e.family), podAddrs6(t, p, ifName), subnet.IPv6CIDR, &addr6},
		} {
			cidr, err := netip.ParsePrefix(f.cidr)
			switch {
			case !f.want && len(f.addrs) != 0:
				t.Errorf("pod %s %s addresses %v, want none of that family with family %s", p.obj.Name, ifName, f.addrs, e.family)
			case !f.want:
			case err != nil || len(f.addrs) != 1 || !cidr.Contains(f.addrs[0].Addr()):
				t.Errorf("pod %s %s addresses %v, want one in card %d's subnet %s", p.obj.Name, ifName, f.addrs, card, f.cidr)
			default:
				*f.addr = f.addrs[0].Addr()
				wantIPs = append(wantIPs, f.addr.String())
			}
		}
		if len(wantIPs) == 0 || (api.WantsIPv4(e.family) && api.WantsIPv6(e.family) && len(wantIPs) != 2) {
			continue
		}
		// fake-ec2: an ENI of this node on this card holds the addresses (exclusive: the IPv4 as its primary;
		// the IPv6 as an address or in a /80 of the same ENI).
		var en *fakeec2.ENIState
		for i := range st.ENIs {
			x := &st.ENIs[i]
			if addr.IsValid() && (x.PrimaryIP == addr.String() || slices.Contains(x.SecondaryIPs, addr.String())) {
				en = x
			}
			if !addr.IsValid() && eniHasIPv6(x, addr6) {
				en = x
			}
		}
		switch {
		case en == nil:
			t.Errorf("pod %s %s addresses %v are on no ENI in fake-ec2", p.obj.Name, ifName, wantIPs)
			continue
		case en.InstanceID != p.node.InstanceID || en.Card != card || en.SubnetID != subnet.ID || en.Status != "in-use":
			t.Errorf("pod %s %s addresses %v are on ENI %s (%s card %d subnet %s %s), want %s card %d subnet %s",
				p.obj.Name, ifName, wantIPs, en.ID, en.InstanceID, en.Card, en.SubnetID, en.Status, p.node.InstanceID, card, subnet.ID)
		case addr.IsValid() && exclusive && en.PrimaryIP != addr.String():
			t.Errorf("pod %s %s: exclusive address %s is not ENI %s's primary %s", p.obj.Name, ifName, addr, en.ID, en.PrimaryIP)
		case addr.IsValid() && !exclusive && !slices.Contains(en.SecondaryIPs, addr.String()):
			t.Errorf("pod %s %s: ipvlan address %s is not a secondary address of ENI %s", p.obj.Name, ifName, addr, en.ID)
		case addr6.IsValid() && !eniHasIPv6(en, addr6):
			t.Errorf("pod %s %s: IPv6 address %s is not ENI %s's (%v, /80s %v)", p.obj.Name, ifName, addr6, en.ID, en.IPv6Addresses, en.IPv6Prefixes)
		}
		link, err := p.h.LinkByName(ifName)
		if err != nil {
			t.Errorf("pod %s: %v", p.obj.Name, err)
		} else {
			if !strings.EqualFold(link.Attrs().HardwareAddr.String(), en.MAC) {
				t.Errorf("pod %s %s MAC %s, want ENI %s's %s", p.obj.Name, ifName, link.Attrs().HardwareAddr, en.ID, en.MAC)
			}
			if isIPVlan := link.Type() == "ipvlan"; isIPVlan == exclusive {
				t.Errorf("pod %s %s is a %s link, want mode %s", p.obj.Name, ifName, link.Type(), mode)
			}
		}
		// The agent's record.
		if a, ok := allocs[ifName]; !ok || a.Card != card || a.Exclusive != exclusive || a.Address != addr || a.IPv6 != addr6 ||
			a.ENIID != en.ID || a.PodName != p.obj.Name || a.PodNamespace != p.obj.Namespace {
			t.Errorf("pod %s %s: agent allocation %+v (found %t), want card %d %s %v on %s", p.obj.Name, ifName, a, ok, card, mode, wantIPs, en.ID)
		}
		// The ADD result Multus returned (the primary network's) and the annotation Multus wrote: IPv4 first.
		s := statuses[i+1]
		wantName := nad.DefaultNamespace + "/" + nad.Name(card, mode)
		if s.Name != wantName || s.Interface != ifName || !slices.Equal(s.IPs, wantIPs) ||
			!strings.EqualFold(s.Mac, en.MAC) || s.Default {
			t.Errorf("pod %s network-status[%d] = %+v, want %s %s %v mac %s", p.obj.Name, i+1, s, wantName, ifName, wantIPs, en.MAC)
		}
		summary = append(summary, fmt.Sprintf("%s=%s(card %d, %s)", ifName, strings.Join(wantIPs, ","), card, en.ID))
	}
	if p.result == nil || len(p.result.IPs) != 1 || p.result.IPs[0].Address.IP.String() != eth0[0].Addr().String() {
		t.Errorf("pod %s: Multus ADD result %+v, want the primary network's eth0 %v", p.obj.Name, p.result, eth0)
	}
	t.Logf("pod %s on %s: eth0=%s %s", p.obj.Name, p.node.Name, eth0[0].Addr(), strings.Join(summary, " "))
}

// podAllocations is the agent's allocations of the pod's sandbox, by interface.
func (e *env) podAllocations(t *testing.T, n *harness.Node, p *pod) map[string]allocation {
	t.Helper()
	all, err := n.Allocations()
	if err != nil {
		t.Fatalf("list allocations of %s: %v", n.Name, err)
	}
	out := map[string]allocation{}
	for _, a := range all {
		if a.ContainerID == p.containerID || (a.PodName == p.obj.Name && a.PodNamespace == p.obj.Namespace) {
			out[a.IfName] = allocation{Card: a.Card, Exclusive: a.Exclusive, Address: a.Address, IPv6: a.IPv6, ENIID: a.ENIID,
				PodName: a.PodName, PodNamespace: a.PodNamespace}
		}
	}
	return out
}

type allocation struct {
	Card                  int
	Exclusive             bool
	Address, IPv6         netip.Addr
	ENIID                 string
	PodName, PodNamespace string
}

func podAddrs(t *testing.T, p *pod, ifName string) []netip.Prefix {
	t.Helper()
	l, err := p.h.LinkByName(ifName)
	if err != nil {
		t.Errorf("pod %s: no %s: %v", p.obj.Name, ifName, err)
		return nil
	}
	addrs, err := nlretry.AddrList(p.h, l, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	var out []netip.Prefix
	for _, a := range addrs {
		ip, _ := netip.AddrFromSlice(a.IP.To4())
		ones, _ := a.Mask.Size()
		out = append(out, netip.PrefixFrom(ip, ones))
	}
	return out
}

// podAddrs6 are the global IPv6 addresses of the pod's ifName (not the kernel's link-local).
func podAddrs6(t *testing.T, p *pod, ifName string) []netip.Prefix {
	t.Helper()
	l, err := p.h.LinkByName(ifName)
	if err != nil {
		t.Errorf("pod %s: no %s: %v", p.obj.Name, ifName, err)
		return nil
	}
	addrs, err := nlretry.AddrList(p.h, l, netlink.FAMILY_V6)
	if err != nil {
		t.Fatal(err)
	}
	var out []netip.Prefix
	for _, a := range addrs {
		ip, _ := netip.AddrFromSlice(a.IP)
		if ip.IsLinkLocalUnicast() {
			continue
		}
		ones, _ := a.Mask.Size()
		out = append(out, netip.PrefixFrom(ip, ones))
	}
	return out
}

// eniHasIPv6 says whether EC2 assigned a to the ENI, as an address or in one of its /80s.
func eniHasIPv6(en *fakeec2.ENIState, a netip.Addr) bool {
	if slices.Contains(en.IPv6Addresses, a.String()) {
		return true
	}
	for _, s := range en.IPv6Prefixes {
		if p, err := netip.ParsePrefix(s); err == nil && p.Contains(a) {
			return true
		}
	}
	return false
}

// deletePod is what the runtime and the API server do when a pod goes: Multus DEL (which must succeed),
// nothing of multinic left in the pod, the netns removed, the Pod object deleted.
func (e *env) deletePod(ctx context.Context, t *testing.T, p *pod) {
	t.Helper()
	e.del(t, p)
	// A second DEL (the runtime retrying) succeeds too.
	if _, err := e.run("DEL", p); err != nil {
		t.Errorf("second Multus DEL of pod %s: %v", p.obj.Name, err)
	}
	e.dropPod(ctx, t, p)
}

// del runs the Multus DEL of the pod, which must succeed and leave nothing in the pod or with the agent,
// and returns how long the runtime's CNI call took.
func (e *env) del(t *testing.T, p *pod) time.Duration {
	t.Helper()
	_, took, err := e.runTimed("DEL", p)
	if err != nil {
		t.Errorf("Multus DEL of pod %s: %v", p.obj.Name, err)
	}
	p.deleted = true
	if links := nettest.LinkNames(t, p.h); !slices.Equal(links, []string{"lo"}) {
		t.Errorf("after DEL pod %s has links %v, want [lo]", p.obj.Name, links)
	}
	if allocs := e.podAllocations(t, p.node, p); len(allocs) != 0 {
		t.Errorf("after DEL the agent on %s still holds %v for pod %s", p.node.Name, allocs, p.obj.Name)
	}
	return took
}

// dropPod removes the pod's netns and deletes its Pod object, as the runtime and the API server do once
// the pod is gone.
func (e *env) dropPod(ctx context.Context, t *testing.T, p *pod) {
	t.Helper()
	e.removePod(t, p)
	if err := e.c.Client.CoreV1().Pods(p.obj.Namespace).Delete(ctx, p.obj.Name, metav1.DeleteOptions{}); err != nil {
		t.Errorf("delete pod object %s: %v", p.obj.Name, err)
	}
}

// removePod DELs the pod unless that was done, and removes its netns; idempotent (also the test's cleanup).
func (e *env) removePod(t *testing.T, p *pod) {
	if p.removed {
		return
	}
	p.removed = true
	if !p.deleted && p.netns != nil {
		if _, err := e.run("DEL", p); err != nil {
			t.Errorf("cleanup: Multus DEL of pod %s: %v", p.obj.Name, err)
		}
	}
	if p.h.Handle != nil {
		p.h.Close()
	}
	if p.netns != nil {
		_ = p.netns.Close()
	}
	if p.netnsPath != "" {
		if err := namedns.Remove(p.netnsPath); err != nil {
			t.Errorf("remove netns of pod %s: %v", p.obj.Name, err)
		}
	}
}

// snapshot records, per node, the netns (links, rules, routes of every table) and the ENIs fake-ec2 has
// for the node, before any pod.
func (e *env) snapshot(t *testing.T) {
	t.Helper()
	st := e.region.State()
	for _, n := range e.region.Nodes() {
		ns, err := netnsState(n.Handle())
		if err != nil {
			t.Fatal(err)
		}
		e.base[n.Name] = baseline{netns: ns, enis: nodeENIs(st, n)}
		t.Logf("%s before the pods: %d ENIs %v", n.Name, len(e.base[n.Name].enis), e.base[n.Name].enis)
	}
}

// settle waits until both agents hold no allocation and every node's netns and ENIs are as before the pods
// (the exclusive ENIs back where the agent keeps them, or returned to EC2).
func (e *env) settle(t *testing.T) {
	t.Helper()
	start := time.Now()
	deadline := start.Add(settleTimeout)
	for {
		var diffs []string
		st := e.region.State()
		for _, n := range e.region.Nodes() {
			all, err := n.Allocations()
			if err != nil {
				diffs = append(diffs, fmt.Sprintf("%s: list allocations: %v", n.Name, err))
			} else if len(all) != 0 {
				diffs = append(diffs, fmt.Sprintf("%s: %d allocations left: %+v", n.Name, len(all), all))
			}
			ns, err := netnsState(n.Handle())
			if err != nil {
				t.Fatal(err)
			}
			b := e.base[n.Name]
			if d := diff(b.netns, ns); d != "" {
				diffs = append(diffs, fmt.Sprintf("%s netns: %s", n.Name, d))
			}
			if d := diff(b.enis, nodeENIs(st, n)); d != "" {
				diffs = append(diffs, fmt.Sprintf("%s ENIs: %s", n.Name, d))
			}
		}
		if len(diffs) == 0 {
			t.Logf("settled in %s: 0 allocations, node netns and ENIs as before the pods", time.Since(start).Round(time.Millisecond))
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("not back to the state before the pods after %s:\n%s", settleTimeout, strings.Join(diffs, "\n"))
			return
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// nodeENIs describes the ENIs attached to the node or tagged by its agent: id, status, card, device and
// the number of addresses.
func nodeENIs(st fakeec2.State, n *harness.Node) []string {
	var out []string
	for _, x := range st.ENIs {
		if x.InstanceID != n.InstanceID && x.Tags[eni.TagNode] != n.InstanceID {
			continue
		}
		out = append(out, fmt.Sprintf("%s %s card %d device %d ips %d prefixes %d",
			x.ID, x.Status, x.Card, x.Device, 1+len(x.SecondaryIPs), len(x.Prefixes)))
	}
	slices.Sort(out)
	return out
}

// netnsState lists a netns' links (name, type, MAC), IPv4 rules and IPv4 routes of every table.
func netnsState(h netlinksafe.Handle) ([]string, error) {
	var out []string
	links, err := h.LinkList()
	if err != nil {
		return nil, err
	}
	names := map[int]string{}
	for _, l := range links {
		a := l.Attrs()
		names[a.Index] = a.Name
		out = append(out, fmt.Sprintf("link %s %s %s", a.Name, l.Type(), a.HardwareAddr))
	}
	rules, err := h.RuleList(unix.AF_INET)
	if err != nil {
		return nil, err
	}
	for _, r := range rules {
		out = append(out, fmt.Sprintf("rule pref %d from %v to %v table %d", r.Priority, r.Src, r.Dst, r.Table))
	}
	routes, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, err
	}
	for _, r := range routes {
		out = append(out, fmt.Sprintf("route table %d %v via %v dev %s", r.Table, r.Dst, r.Gw, names[r.LinkIndex]))
	}
	slices.Sort(out)
	return out, nil
}

// diff says what was added to and removed from before in after ("" when equal).
func diff(before, after []string) string {
	var added, removed []string
	for _, a := range after {
		if !slices.Contains(before, a) {
			added = append(added, a)
		}
	}
	for _, b := range before {
		if !slices.Contains(after, b) {
			removed = append(removed, b)
		}
	}
	if len(added)+len(removed) == 0 {
		return ""
	}
	return fmt.Sprintf("added %v, removed %v", added, removed)
}

// tcpEcho connects from pod from's ifName address (IPv6 with v6) to pod to's ifName address, inside the
// pods' netns, and checks that a message comes back and that the server saw from's address.
func tcpEcho(t *testing.T, from, to *pod, ifName string, v6 bool, port int) {
	t.Helper()
	addrsOf := podAddrs
	if v6 {
		addrsOf = podAddrs6
	}
	src, dst := addrsOf(t, from, ifName), addrsOf(t, to, ifName)
	if len(src) != 1 || len(dst) != 1 {
		t.Errorf("tcp %s: addresses %v -> %v", ifName, src, dst)
		return
	}
	srcAddr, dstAddr := src[0].Addr(), dst[0].Addr()
	var l net.Listener
	if err := to.netns.Do(func(ns.NetNS) error {
		var err error
		l, err = net.Listen("tcp", netip.AddrPortFrom(dstAddr, uint16(port)).String())
		return err
	}); err != nil {
		t.Errorf("listen in pod %s on %s: %v", to.obj.Name, dstAddr, err)
		return
	}
	defer l.Close()
	peer := make(chan string, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			peer <- "accept: " + err.Error()
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		peer <- c.RemoteAddr().(*net.TCPAddr).IP.String()
		_, _ = io.Copy(c, c)
	}()
	msg := fmt.Sprintf("hello from %s %s to %s %s", from.obj.Name, srcAddr, to.obj.Name, dstAddr)
	var got []byte
	err := from.netns.Do(func(ns.NetNS) error {
		d := net.Dialer{Timeout: 10 * time.Second, LocalAddr: &net.TCPAddr{IP: net.IP(srcAddr.AsSlice())}}
		c, err := d.Dial("tcp", netip.AddrPortFrom(dstAddr, uint16(port)).String())
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write([]byte(msg)); err != nil {
			return err
		}
		got = make([]byte, len(msg))
		_, err = io.ReadFull(c, got)
		return err
	})
	if err != nil {
		t.Errorf("tcp %s:%s -> %s:%s: %v", from.obj.Name, srcAddr, to.obj.Name, dstAddr, err)
		return
	}
	if string(got) != msg {
		t.Errorf("tcp %s -> %s echoed %q, want %q", srcAddr, dstAddr, got, msg)
	}
	if p := <-peer; p != srcAddr.String() {
		t.Errorf("tcp %s -> %s: server saw %s", srcAddr, dstAddr, p)
	}
	t.Logf("tcp %s %s (%s) -> %s %s (%s): echoed", from.obj.Name, ifName, srcAddr, to.obj.Name, ifName, dstAddr)
}

// exampleFile is the example pod the cases of mode run: examples/pod.yaml (ipvlan on cards 1 and 2,
// exclusive on card 3) where the kernel has ipvlan, its exclusive variant elsewhere.
func exampleFile(mode string) string {
	if mode == netconf.ModeIPVlan {
		return "examples/pod.yaml"
	}
	return "examples/pod-exclusive.yaml"
}

var exampleNetwork = regexp.MustCompile(`^` + nad.DefaultNamespace + `/multinic-card-(\d+)(-exclusive)?$`)

// addExamplePod creates the example pod of manifests/ as it is, bound to node n as the scheduler would bind
// it (no scheduler runs here), and runs the Multus ADD for its sandbox there.
func (e *env) addExamplePod(ctx context.Context, t *testing.T, n *harness.Node, file string) *pod {
	t.Helper()
	docs, err := manifests.Documents(file)
	if err != nil || len(docs) != 1 {
		t.Fatalf("manifests/%s: want one document: %d, %v", file, len(docs), err)
	}
	var obj corev1.Pod
	if err := json.Unmarshal(docs[0], &obj); err != nil {
		t.Fatal(err)
	}
	obj.Spec.NodeName = n.Name
	var cards []int
	var modes []string
	for _, ref := range strings.Split(obj.Annotations[nad.NetworksAnnotation], ",") {
		m := exampleNetwork.FindStringSubmatch(strings.TrimSpace(ref))
		if m == nil {
			t.Fatalf("manifests/%s asks for %q, not a published NAD", file, ref)
		}
		card, _ := strconv.Atoi(m[1])
		mode := netconf.ModeIPVlan
		if m[2] != "" {
			mode = netconf.ModeExclusive
		}
		cards, modes = append(cards, card), append(modes, mode)
	}
	p, err := e.newPodObject(ctx, t, n, &obj, cards, modes)
	if err != nil {
		t.Fatal(err)
	}
	took := e.add(t, p)
	t.Logf("Multus ADD of manifests/%s (%s, cards %v, modes %v) on %s took %s", file, obj.Name, cards, modes, n.Name, took.Round(time.Millisecond))
	return p
}
