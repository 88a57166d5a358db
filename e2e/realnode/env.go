package realnode

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/multinic/multinic/e2e/cluster"
	"github.com/multinic/multinic/internal/statefile"
	"github.com/multinic/multinic/internal/testing/fakeec2"
	"github.com/multinic/multinic/internal/testing/harness"
)

// EC2Addr is where fake-ec2 serves EC2 and the instance's IMDS inside every node's netns: the same on
// every node, so one DaemonSet spec serves them all.
const EC2Addr = "127.0.0.1:8773"

// Env variables of the real-node e2e.
const (
	// E2EEnv set to "1" turns the real-node e2e on; `make e2e-node` sets it after building the tools.
	E2EEnv = "MULTINIC_E2E_NODE"
	// ImagesEnv names the folder holding the image archives (multinic, pause, busybox); default <repo>/bin.
	ImagesEnv = "MULTINIC_IMAGES"
	// KubeconfigEnv names the kubeconfig of an existing cluster: the cases run there instead of on nodes
	// this package starts (e2e/kind/run.sh sets it, with KindEnv).
	KubeconfigEnv = "MULTINIC_E2E_KUBECONFIG"
	// KindEnv is the name of that cluster in kind: its nodes are kind's containers (docker exec), images go
	// in with kind load image-archive. Only kind clusters are supported: the cases look inside the nodes.
	KindEnv = "MULTINIC_E2E_KIND"
)

// PCIeRoots are the nodes' cards' PCIe roots in the fake sysfs (the DRA cases' alignment): cards 3-6 share
// one root, card 1 has one of its own, the others none (as a veth). The DRA cases' test GPU driver puts a
// GPU on each of the two roots.
var PCIeRoots = map[int]string{1: "pci0000:10", 3: "pci0000:30", 4: "pci0000:30", 5: "pci0000:30", 6: "pci0000:30"}

// nodeReadyTimeout bounds the wait for both Nodes to be Ready; the machine may be busy.
const nodeReadyTimeout = 3 * time.Minute

// Options configure an Env.
type Options struct {
	// Nodes is the number of nodes (2).
	Nodes int
	// InstanceType of every node (harness.DefaultInstanceType).
	InstanceType string
	// Images are docker-archive tars imported into every node's containerd.
	Images []string
}

type tools struct {
	dir                                             string // containerd's folder: containerd-shim-runc-v2 is found on PATH there
	kubelet, containerd, ctr, runc, crictl, kubectl string
	cniBinDir                                       string
}

// Env is the cluster the cases run on: either real nodes this package starts (Start: the control plane
// with scheduler and controller-manager, the fake EC2 region, one real node per instance), or an existing
// kind cluster whose nodes are fake-ec2 instances (Attach).
type Env struct {
	// Kubeconfig, Client and Dynamic reach the API server as cluster admin.
	Kubeconfig string
	Client     kubernetes.Interface
	Dynamic    dynamic.Interface
	// Nodes in instance order.
	Nodes []*Node

	// Cluster and Region are the control plane and fake EC2 region Start started (nil after Attach).
	Cluster *cluster.Cluster
	Region  *harness.Region
	// Dir holds the nodes' folders (Start).
	Dir string
	// kind is the kind cluster's name (Attach).
	kind string
	// multusMode is the Multus mode installed (InstallMultus), "" without Multus.
	multusMode string

	tools    tools
	images   []string
	instType string
	lock     *statefile.Lock
	logf     func(string, ...any)
}

// RequireE2E skips tb unless the real-node e2e is on (MULTINIC_E2E_NODE=1); with it on, not being root
// fails tb.
func RequireE2E(tb testing.TB) {
	tb.Helper()
	if os.Getenv(E2EEnv) != "1" {
		tb.Skipf("real-node e2e: runs with `make e2e-node` (bash e2e/tools/build.sh node && make image && %s=1 go test -tags %s ./e2e/realnode/)", E2EEnv, cluster.BuildTag)
	}
	if os.Geteuid() != 0 {
		tb.Fatalf("%s=1 but the real-node e2e needs root", E2EEnv)
	}
}

// Start brings up the control plane, the region and the nodes, and waits until every Node is Ready. It
// fails tb on error and tears everything down when tb ends (Close).
func Start(tb testing.TB, opts Options) *Env {
	tb.Helper()
	if opts.Nodes == 0 {
		opts.Nodes = 2
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if opts.InstanceType == "" {
		opts.InstanceType = harness.DefaultInstanceType
	}
	e := &Env{images: opts.Images, logf: tb.Logf, instType: opts.InstanceType}
	var err error
	if e.tools, err = findTools(); err != nil {
		tb.Fatal(err)
	}
	if e.lock, err = lock(10 * time.Minute); err != nil {
		tb.Fatal(err)
	}
	if err := Cleanup(); err != nil { // what a killed run left
		_ = e.lock.Unlock()
		tb.Fatalf("clean up a previous run: %v", err)
	}
	if err := saveSysctls(); err != nil {
		_ = e.lock.Unlock()
		tb.Fatal(err)
	}
	tb.Cleanup(func() { e.sweep(tb) }) // first registered: runs last, after the region's own teardown

	// Everything of the run under one folder named with Prefix, the control plane too: its processes
	// name it on their command lines, so Leftovers finds any of them still running.
	if e.Dir, err = os.MkdirTemp("", Prefix+"-"); err != nil {
		tb.Fatal(err)
	}
	runDir.Store(e.Dir)
	c, err := cluster.New(ctx, cluster.Options{Logf: tb.Logf, Dir: filepath.Join(e.Dir, "control-plane"), APIServerArgs: []string{
		// kubectl exec/logs go to the node's address, not its name (no DNS for node names here)
		"--kubelet-preferred-address-types=InternalIP",
	}})
	if err != nil {
		tb.Fatalf("start control plane: %v", err)
	}
	e.Cluster, e.Kubeconfig, e.Client, e.Dynamic = c, c.Kubeconfig, c.Client, c.Dynamic
	scheduler, err1 := cluster.FindNodeTool(cluster.KubeScheduler)
	kcm, err2 := cluster.FindNodeTool(cluster.KubeControllerManager)
	if err := errors.Join(err1, err2); err != nil {
		tb.Fatal(err)
	}
	if err := c.StartControllers(ctx, cluster.Controllers{Scheduler: scheduler, ControllerManager: kcm}, "10.244.0.0/16"); err != nil {
		tb.Fatalf("start controllers: %v", err)
	}

	e.Region = harness.NewRegion(tb, harness.Config{Nodes: opts.Nodes, Prefix: Prefix, NoAgents: true, InstanceType: opts.InstanceType,
		PCIeRoots: PCIeRoots})
	tb.Cleanup(func() { e.stopNodes(tb) }) // before the region goes: CNI DELs still reach fake-ec2
	var ips []netip.Addr
	for i, hn := range e.Region.Nodes() {
		n := &Node{Name: hn.Name, IP: hn.PrimaryIP, PodCIDR: hn.PodCIDR, InstanceID: hn.InstanceID, Region: hn, env: e,
			Dir: filepath.Join(e.Dir, fmt.Sprintf("n%d", i+1)), cgroup: hn.NetNSName}
		e.Nodes = append(e.Nodes, n)
		ips = append(ips, n.IP)
		if err := e.prepareNode(n); err != nil {
			tb.Fatal(err)
		}
	}
	if err := createHostLink(ips); err != nil {
		tb.Fatal(err)
	}
	for _, n := range e.Nodes {
		if err := n.start(ctx); err != nil {
			tb.Fatal(err)
		}
	}
	if err := e.WaitNodesReady(ctx); err != nil {
		tb.Fatal(err)
	}
	tb.Logf("realnode: %d nodes Ready in %s", len(e.Nodes), time.Since(start).Round(100*time.Millisecond))
	return e
}

// prepareNode gives a node what its OS image would: the reference CNI plugins, the primary network's
// conflist, the API server and fake EC2 + IMDS on its loopback.
func (e *Env) prepareNode(n *Node) error {
	for _, b := range nodeBinds {
		if err := os.MkdirAll(filepath.Join(n.Dir, b[0]), 0o755); err != nil {
			return err
		}
	}
	for _, p := range []string{"bridge", "host-local", "loopback", "ptp", "tuning"} {
		if err := copyFile(filepath.Join(e.tools.cniBinDir, p), filepath.Join(n.HostPath("/opt/cni/bin"), p), 0o755); err != nil {
			return err
		}
	}
	netd := n.HostPath("/etc/cni/net.d")
	if err := os.MkdirAll(netd, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(netd, "10-podnet.conflist"), []byte(primaryConflist(n)), 0o644); err != nil {
		return err
	}
	if err := e.Cluster.ServeInNetNS(n.Region.NetNSPath); err != nil { // the kubelet's kubeconfig
		return err
	}
	if err := e.Cluster.ServeServiceInNetNS(n.Region.NetNSPath); err != nil { // in-cluster clients
		return err
	}
	if _, err := e.Region.Fake().ListenInNetNS(n.Region.InstanceID, n.Region.NetNSPath, EC2Addr); err != nil {
		return err
	}
	return nil
}

func (e *Env) instanceType() string { return e.instType }

// State is fake-ec2's state: in process (Start), or GET /fake/state from inside the first node (Attach).
func (e *Env) State(ctx context.Context) (fakeec2.State, error) {
	if e.Region != nil {
		return e.Region.State(), nil
	}
	body, err := e.Nodes[0].NodeGet(ctx, "http://"+EC2Addr+"/fake/state")
	if err != nil {
		return fakeec2.State{}, err
	}
	var st fakeec2.State
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		return fakeec2.State{}, fmt.Errorf("fake-ec2 state: %w", err)
	}
	return st, nil
}

// Import imports more image archives into every node (and again after a node's Restart): with ctr into
// each node's containerd, or with kind load image-archive.
func (e *Env) Import(ctx context.Context, archives []string) error {
	if e.kind != "" {
		return e.kindLoad(ctx, archives)
	}
	for _, n := range e.Nodes {
		if err := n.importImages(ctx, archives); err != nil {
			return err
		}
	}
	e.images = append(e.images, archives...)
	return nil
}

// WaitNodesReady waits until every Node is Ready.
func (e *Env) WaitNodesReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, nodeReadyTimeout)
	defer cancel()
	for {
		var notReady []string
		for _, n := range e.Nodes {
			node, err := e.Client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
			if err != nil || !nodeReady(node) {
				notReady = append(notReady, n.Name)
			}
		}
		if len(notReady) == 0 {
			return nil
		}
		for _, n := range e.Nodes {
			if n.kubelet != nil && n.kubelet.Exited() {
				return fmt.Errorf("kubelet of %s exited:\n%s", n.Name, n.logTails(30))
			}
		}
		select {
		case <-ctx.Done():
			var tails strings.Builder
			for _, n := range e.Nodes {
				tails.WriteString(n.logTails(30))
			}
			return fmt.Errorf("nodes %v not Ready after %s:\n%s", notReady, nodeReadyTimeout, tails.String())
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func nodeReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// Kubectl runs the real kubectl against the cluster and returns its stdout; stderr is in the error. Once
// the local control plane is down (a crash), it fails at once instead of waiting out kubectl's timeouts.
func (e *Env) Kubectl(ctx context.Context, stdin io.Reader, args ...string) (string, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var down <-chan struct{}
	if e.Cluster != nil {
		down = e.Cluster.Down()
	}
	select {
	case <-down:
		return "", fmt.Errorf("kubectl %s: the control plane is down", strings.Join(args, " "))
	default:
	}
	go func() {
		select {
		case <-down:
			cancel()
		case <-ctx.Done():
		}
	}()
	cmd := exec.CommandContext(ctx, e.tools.kubectl, append([]string{"--kubeconfig", e.Kubeconfig}, args...)...)
	var stdout, stderr strings.Builder
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, &stdout, &stderr
	if err := runDying(cmd); err != nil {
		return stdout.String(), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// stopNodes stops every node in order: kubelet, the pods' sandboxes through the CRI (CNI DEL runs), then
// every process left in the node's cgroup.
func (e *Env) stopNodes(tb testing.TB) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if tb.Failed() {
		for _, n := range e.Nodes {
			tb.Logf("%s", n.logTails(40))
		}
	}
	for _, n := range e.Nodes {
		if err := n.stop(ctx); err != nil {
			tb.Errorf("stop node %s: %v", n.Name, err)
		}
	}
}

// sweep stops the control plane, removes everything with Prefix that is left (Cleanup: also what a
// failed start left) and puts the host's kernel settings back.
func (e *Env) sweep(tb testing.TB) {
	if e.Cluster != nil {
		if err := e.Cluster.Close(); err != nil {
			tb.Errorf("stop control plane: %v", err)
		}
	}
	if err := Cleanup(); err != nil {
		tb.Errorf("sweep real-node leftovers: %v", err)
	}
	if e.Dir != "" {
		if tb.Failed() {
			tb.Logf("realnode: the run's logs are kept in %s", e.Dir)
			_ = pruneToLogs(e.Dir)
		} else {
			_ = os.RemoveAll(e.Dir)
		}
		runDir.Store("")
	}
	_ = e.lock.Unlock()
}

func findTools() (tools, error) {
	var t tools
	var errs []error
	find := func(dst *string, nt cluster.NodeTool) {
		p, err := cluster.FindNodeTool(nt)
		errs = append(errs, err)
		*dst = p
	}
	find(&t.kubelet, cluster.Kubelet)
	find(&t.containerd, cluster.Containerd)
	find(&t.ctr, cluster.Ctr)
	find(&t.runc, cluster.Runc)
	find(&t.crictl, cluster.Crictl)
	find(&t.kubectl, cluster.Kubectl)
	var shim string
	find(&shim, cluster.ContainerdShim)
	t.dir = filepath.Dir(shim)
	ct, err := cluster.FindTools()
	errs = append(errs, err)
	if ct != nil {
		t.cniBinDir = ct.CNIBinDir
	}
	return t, errors.Join(errs...)
}

func copyFile(src, dst string, mode os.FileMode) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	tmp := dst + ".tmp"
	if err := os.WriteFile(tmp, b, mode); err != nil {
		return err
	}
	return os.Rename(tmp, dst)
}

// describe is kubectl describe of the pods matching selector, for failure messages.
func (e *Env) describe(ctx context.Context, ns, selector string) string {
	out, err := e.Kubectl(ctx, nil, "-n", ns, "describe", "pods", "-l", selector)
	if err != nil {
		return err.Error()
	}
	return out
}

// nodeNames are the Nodes' names, sorted.
func (e *Env) nodeNames() []string {
	var names []string
	for _, n := range e.Nodes {
		names = append(names, n.Name)
	}
	slices.Sort(names)
	return names
}
