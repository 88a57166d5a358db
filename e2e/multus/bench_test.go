//go:build e2e

package multus

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/multinic/multinic/internal/nlretry"
	"github.com/vishvananda/netlink"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/multinic/multinic/e2e/bench"
	"github.com/multinic/multinic/e2e/cluster"
	"github.com/multinic/multinic/internal/testing/fakeec2"
	"github.com/multinic/multinic/internal/testing/harness"
	"github.com/multinic/multinic/ipam/api"
	"github.com/multinic/multinic/nad"
	"github.com/multinic/multinic/netconf"
)

// Issue 6, figure 2: Multus ADD and DEL of a pod with all 7 cards, the multinic ipvlan NADs against NADs
// with the reference ipvlan + host-local on the same ENI links, interleaved in one run. Both need ipvlan,
// so both run in the test VM: TestMultusBenchVM is the host side (control plane, VM, see runInVM),
// TestMultusBenchIPVlan the guest side.
const (
	// benchEnv set to "1" runs the benchmark; it is not in make test (the VM alone takes minutes).
	benchEnv = "MULTINIC_BENCH_MULTUS"
	// benchFullEnv set to "1" picks the full size, as in e2e/bench; benchNEnv sets the iterations.
	benchFullEnv = "MULTINIC_BENCH"
	benchNEnv    = "MULTINIC_BENCH_MULTUS_N"
	// benchSmokeEnv tells the guest whether the host picked the smoke size.
	benchSmokeEnv = "MULTINIC_BENCH_MULTUS_SMOKE"
)

const (
	// Measured iterations per side at full and smoke size; each is one ADD and one DEL of a 7-card pod.
	// In the VM an iteration of both sides takes about 7 s: about 4 and 1 minutes in all, VM included.
	benchFullN  = 30
	benchSmokeN = 3
	// benchWarmup iterations per side come first and are not counted: the first exec of every binary and
	// the first API requests of each kind.
	benchWarmup = 1
	// benchIterTime bounds one iteration of both sides in the VM (measured: about 7 s), for the timeout.
	benchIterTime = 30 * time.Second
	// benchRefNADPrefix names the reference NADs: kube-system/ref-ipvlan-card-N.
	benchRefNADPrefix = "ref-ipvlan-card-"
	// benchMaxRatio is issue 13's target: a 7-card pod through Multus no slower than with 7 reference
	// delegates, ADD and DEL.
	benchMaxRatio = 1.0
)

// benchAgentArgs: no cooldown and no surplus return, so every iteration takes warm addresses and no EC2
// call runs during the timed calls; NADs and node resources checked every minute (the default) instead of
// every second; info logs, as the DaemonSet runs.
var benchAgentArgs = []string{"--cooldown", "0s", "--surplus-delay", "30m", "--publish-interval", "1m", "--log-level", "info"}

// benchSize is the measured iterations per side and whether that is the smoke size.
func benchSize() (n int, smoke bool) {
	if v, err := strconv.Atoi(os.Getenv(benchNEnv)); err == nil && v > 0 {
		return v, false
	}
	if os.Getenv(benchFullEnv) == "1" {
		return benchFullN, false
	}
	return benchSmokeN, true
}

// TestMultusBenchVM runs TestMultusBenchIPVlan in the test VM against a control plane on this host.
func TestMultusBenchVM(t *testing.T) {
	if os.Getenv(benchEnv) != "1" {
		t.Skipf("the Multus benchmark (issue 6, figure 2) runs with %s=1 %s=1 (%s=1: full size, %s: iterations)",
			cluster.E2EEnv, benchEnv, benchFullEnv, benchNEnv)
	}
	tools := cluster.RequireE2E(t)
	n, smoke := benchSize()
	// Booting, the region, the agents and the NADs take under a minute; the rest is room for a loaded host.
	timeout := 5*time.Minute + time.Duration(benchWarmup+n)*benchIterTime
	runInVM(t, tools, "TestMultusBenchIPVlan", timeout, map[string]string{
		benchNEnv: strconv.Itoa(n), benchSmokeEnv: strconv.FormatBool(smoke),
	})
}

// benchSide is one column of the comparison: the pod's networks and what is checked after its ADD.
type benchSide struct {
	name     string
	nets     []string // namespace/NAD, one per card of managedCards
	check    func(context.Context, *testing.T, *pod)
	add, del []time.Duration
}

// TestMultusBenchIPVlan is the guest side: one node whose agent serves cards 1-7, the reference NADs
// next to the agent's, then pods of 7 attachments through Multus, the two kinds in turn.
func TestMultusBenchIPVlan(t *testing.T) {
	start := time.Now()
	c, tools := guestCluster(t, "TestMultusBenchVM ("+benchEnv+"=1)")
	n, err := strconv.Atoi(os.Getenv(benchNEnv))
	if err != nil || n < 1 {
		t.Fatalf("%s=%q: want the iterations the host picked", benchNEnv, os.Getenv(benchNEnv))
	}
	smoke := os.Getenv(benchSmokeEnv) == "true"
	tools, bins := stageBenchBinaries(t, tools)
	setupBinaries(t, bins)
	ctx := t.Context()
	e := startEnv(ctx, t, c, tools, netconf.ModeIPVlan, "", 1, benchAgentArgs, start)
	node := e.region.Node(0)
	refs := createRefNADs(ctx, t, e, node)

	ours := &benchSide{name: "multinic", check: e.checkPod}
	ref := &benchSide{name: "ref", check: func(ctx context.Context, t *testing.T, p *pod) { checkRefPod(ctx, t, e, p, refs) }}
	for i, card := range managedCards {
		ours.nets = append(ours.nets, nad.DefaultNamespace+"/"+nad.Name(card, netconf.ModeIPVlan))
		ref.nets = append(ref.nets, nad.DefaultNamespace+"/"+refs[i].nad)
	}
	t.Logf("set up in %s; %d+%d iterations per side", time.Since(start).Round(time.Millisecond), benchWarmup, n)
	var ec2Before int
	for i := range benchWarmup + n {
		if i == benchWarmup {
			ec2Before = mutatingEC2Calls(e.region.State())
		}
		order := []*benchSide{ours, ref}
		if i%2 == 1 { // drift and ordering hit both sides alike
			slices.Reverse(order)
		}
		for _, s := range order {
			p, err := e.newPodNets(ctx, t, node, fmt.Sprintf("%s-%d", s.name, i), managedCards, s.nets)
			if err != nil {
				t.Fatal(err)
			}
			add := e.add(t, p)
			s.check(ctx, t, p)
			del := e.del(t, p)
			e.dropPod(ctx, t, p)
			if t.Failed() {
				t.FailNow()
			}
			t.Logf("iteration %d %s: ADD %s, DEL %s", i, s.name, add.Round(time.Millisecond), del.Round(time.Millisecond))
			if i >= benchWarmup {
				s.add, s.del = append(s.add, add), append(s.del, del)
			}
		}
	}
	ec2Calls := mutatingEC2Calls(e.region.State()) - ec2Before
	checkRefLeftovers(t, e, refs)
	emitBench(t, n, smoke, ours, ref, refs, ec2Calls)
	t.Logf("total %s", time.Since(start).Round(time.Millisecond))
}

// stageBenchBinaries copies what every ADD and DEL execs (Multus, ptp, host-local, ipvlan and multinic)
// to the guest's tmpfs, so that both sides exec from there rather than from the 9p mount, where every
// page of an exec is a 9p read. It returns the tools there and a folder with the copied plugin (and the
// agent, linked).
func stageBenchBinaries(t *testing.T, tools *cluster.Tools) (*cluster.Tools, string) {
	t.Helper()
	dir := t.TempDir()
	toolsDir, binDir := filepath.Join(dir, "tools"), filepath.Join(dir, "bin")
	for _, d := range []string{toolsDir, binDir} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range vmTools {
		if err := copyFile(filepath.Join(tools.CNIBinDir, name), filepath.Join(toolsDir, name), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	orig := harness.BinDir(t) // in the guest: the binaries vmtest.sh built
	if err := copyFile(filepath.Join(orig, harness.PluginBinary), filepath.Join(binDir, harness.PluginBinary), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(orig, harness.AgentBinary), filepath.Join(binDir, harness.AgentBinary)); err != nil {
		t.Fatal(err)
	}
	return &cluster.Tools{Multus: filepath.Join(toolsDir, "multus"), CNIBinDir: toolsDir}, binDir
}

// refCard is a reference NAD and what it was made from: the card's ENI link as the agent reports it,
// and the host-local range, the top /27 of the card's subnet.
type refCard struct {
	card int
	nad  string
	ipam string // host-local's dataDir
	eni  api.AllocateResponse
	rng  netip.Prefix
}

// createRefNADs asks the agent, for every card, for an address (released at once) to learn the card's
// ENI link and subnet, and creates the reference NAD of the card in nad.DefaultNamespace: ipvlan l2 on
// that link, host-local in the top /27 of the subnet (fake-ec2 hands out the lowest free address first;
// checkRefLeftovers checks that it never gave one of these), with the resourceName annotation of the
// agent's NAD, so that Multus does the same work for both kinds of pod.
func createRefNADs(ctx context.Context, t *testing.T, e *env, node *harness.Node) []refCard {
	t.Helper()
	var out []refCard
	for _, card := range managedCards {
		cid := fmt.Sprintf("bench-probe-%d", card)
		resp, err := node.Client.Allocate(ctx, api.AllocateRequest{Card: card, ContainerID: cid, IfName: "probe"})
		if err != nil {
			t.Fatalf("probe card %d: %v", card, err)
		}
		if _, err := node.Client.Release(ctx, api.ReleaseRequest{ContainerID: cid, IfName: "probe"}); err != nil {
			t.Fatal(err)
		}
		subnet := resp.SubnetCIDR.Masked()
		last := lastAddr(subnet)
		r := refCard{card: card, nad: benchRefNADPrefix + strconv.Itoa(card), eni: resp,
			rng: netip.PrefixFrom(last, 27).Masked(), ipam: filepath.Join(e.work, "ref-ipam")}
		conf, err := json.Marshal(map[string]any{
			"cniVersion": cniVersion, "name": r.nad, "type": "ipvlan", "master": resp.LinkName, "mode": "l2",
			"ipam": map[string]any{"type": "host-local", "dataDir": r.ipam, "ranges": [][]map[string]string{{{
				"subnet": subnet.String(), "rangeStart": r.rng.Addr().String(), "rangeEnd": last.Prev().String(),
				"gateway": resp.Gateway.String(),
			}}}},
		})
		if err != nil {
			t.Fatal(err)
		}
		obj := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": nadGVR.GroupVersion().String(), "kind": "NetworkAttachmentDefinition",
			"metadata": map[string]any{"name": r.nad, "namespace": nad.DefaultNamespace,
				"annotations": map[string]any{nad.ResourceNameAnnotation: nad.ResourceName("", card)}},
			"spec": map[string]any{"config": string(conf)},
		}}
		if _, err := e.c.Dynamic.Resource(nadGVR).Namespace(nad.DefaultNamespace).Create(ctx, obj, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create NAD %s: %v", r.nad, err)
		}
		t.Logf("card %d: ENI %s link %s, subnet %s; reference NAD %s: %s", card, resp.ENIID, resp.LinkName, subnet, r.nad, conf)
		out = append(out, r)
	}
	return out
}

// lastAddr is the last address (the broadcast address) of p.
func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	v := (uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])) | (uint32(1)<<(32-p.Bits()) - 1)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// checkRefPod asserts what a pod of the reference NADs must look like after its ADD: netN of each card
// an ipvlan child of the card's ENI link (its MAC) with one address in the card's host-local range, and
// Multus' network-status annotation naming the reference NADs with those addresses.
func checkRefPod(ctx context.Context, t *testing.T, e *env, p *pod, refs []refCard) {
	t.Helper()
	obj, err := e.c.Client.CoreV1().Pods(p.obj.Namespace).Get(ctx, p.obj.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var statuses []networkStatus
	if err := json.Unmarshal([]byte(obj.Annotations[networkStatusAnnotation]), &statuses); err != nil || len(statuses) != len(refs)+1 {
		t.Fatalf("pod %s network-status %q (%v): want eth0 and %d attachments", p.obj.Name, obj.Annotations[networkStatusAnnotation], err, len(refs))
	}
	for i, r := range refs {
		ifName := "net" + strconv.Itoa(i+1)
		link, err := p.h.LinkByName(ifName)
		if err != nil {
			t.Errorf("pod %s: %v", p.obj.Name, err)
			continue
		}
		if link.Type() != "ipvlan" || !strings.EqualFold(link.Attrs().HardwareAddr.String(), r.eni.MAC) {
			t.Errorf("pod %s %s: %s link with MAC %s, want an ipvlan child of %s (%s)", p.obj.Name, ifName, link.Type(), link.Attrs().HardwareAddr, r.eni.LinkName, r.eni.MAC)
		}
		addrs, err := nlretry.AddrList(p.h, link, netlink.FAMILY_V4)
		if err != nil {
			t.Fatal(err)
		}
		var addr netip.Addr
		if len(addrs) == 1 {
			addr, _ = netip.AddrFromSlice(addrs[0].IP.To4())
		}
		if !r.rng.Contains(addr) {
			t.Errorf("pod %s %s addresses %v, want one in card %d's reference range %s", p.obj.Name, ifName, addrs, r.card, r.rng)
		}
		if s := statuses[i+1]; s.Name != nad.DefaultNamespace+"/"+r.nad || s.Interface != ifName || !slices.Equal(s.IPs, []string{addr.String()}) {
			t.Errorf("pod %s network-status[%d] = %+v, want %s/%s %s %s", p.obj.Name, i+1, s, nad.DefaultNamespace, r.nad, ifName, addr)
		}
	}
}

// checkRefLeftovers asserts that the reference IPAM holds no lease after the last DEL and that fake-ec2
// never gave an address of a reference range to an ENI (which would have made the two sides collide).
func checkRefLeftovers(t *testing.T, e *env, refs []refCard) {
	t.Helper()
	st := e.region.State()
	for _, r := range refs {
		entries, err := os.ReadDir(filepath.Join(r.ipam, r.nad))
		if err != nil {
			t.Fatalf("host-local leases of %s: %v", r.nad, err)
		}
		for _, de := range entries {
			if _, err := netip.ParseAddr(de.Name()); err == nil {
				t.Errorf("host-local still leases %s of %s after the last DEL", de.Name(), r.nad)
			}
		}
		for _, x := range st.ENIs {
			for _, ip := range append([]string{x.PrimaryIP}, x.SecondaryIPs...) {
				if a, err := netip.ParseAddr(ip); err == nil && r.rng.Contains(a) {
					t.Errorf("fake-ec2 gave %s of the reference range %s to ENI %s", ip, r.rng, x.ID)
				}
			}
			for _, pfx := range x.Prefixes {
				if q, err := netip.ParsePrefix(pfx); err == nil && q.Overlaps(r.rng) {
					t.Errorf("fake-ec2 gave prefix %s, in the reference range %s, to ENI %s", pfx, r.rng, x.ID)
				}
			}
		}
	}
}

// mutatingEC2Calls counts the EC2 calls fake-ec2 has served that change something (not Describe*, not
// IMDS), whatever their result.
func mutatingEC2Calls(st fakeec2.State) int {
	n := 0
	for action, byResult := range st.Calls {
		if strings.HasPrefix(action, "Describe") || strings.HasPrefix(action, "IMDS.") {
			continue
		}
		for _, c := range byResult {
			n += c
		}
	}
	return n
}

// emitBench prints figure 2's result line; ec2Calls is mutatingEC2Calls during the measured iterations.
func emitBench(t *testing.T, n int, smoke bool, ours, ref *benchSide, refs []refCard, ec2Calls int) {
	t.Helper()
	ms := func(d []time.Duration) bench.Stat { return bench.Summarize(bench.Millis(d)) }
	add := bench.Compare("Multus ADD, 7 attachments", "ms", ms(ours.add), ms(ref.add), benchMaxRatio)
	del := bench.Compare("Multus DEL, 7 attachments", "ms", ms(ours.del), ms(ref.del), benchMaxRatio)
	p99 := func(r bench.Row) float64 { return r.Ours.P99 / r.Ref.P99 }
	r0 := refs[0]
	r := bench.Result{
		Figure: 2, Key: "multus-7-cards", Part: "multus-vm", Machine: bench.ThisMachine(), Date: time.Now().UTC(), Smoke: smoke,
		Title:      "Multus ADD and DEL of a pod with 7 cards: multinic ipvlan vs ipvlan + host-local",
		Iterations: n, Ours: "multinic ipvlan", Ref: "ipvlan + host-local", Rows: []bench.Row{add, del},
		Notes: []string{
			"Measured: Multus " + cluster.MultusVersion + " (thin plugin) as the container runtime invokes it. The runtime (this test binary, with libcni, started in the node netns) runs the conflist [multus] whose primary network is ptp + host-local (eth0), for a pod netns and CNI_ARGS K8S_POD_*; the clock covers the libcni AddNetworkList / DelNetworkList call, i.e. the exec of multus to its exit: Multus GETs the Pod (k8s.v1.cni.cncf.io/networks names 7 NADs) and each NAD from kube-apiserver, execs the primary delegate, then the 7 delegates one after the other, and updates the Pod's network-status annotation. On DEL it GETs the Pod, reads the delegates from its cache and execs them in reverse order.",
			"multinic: the agent's NADs kube-system/multinic-card-1..7 (mode ipvlan, ipvlan l2, its per-card route table and policy rules). Reference: kube-system/ref-ipvlan-card-1..7, made by the benchmark with the reference ipvlan (mode l2, master = the card's ENI link in the node netns as the agent reports it, e.g. " + r0.eni.LinkName + " for card 1) and host-local with a separate range in the card's subnet: its top /27 (card 1: " + r0.rng.String() + " in " + r0.eni.SubnetCIDR.Masked().String() + "), which fake-ec2 (lowest free address first) never handed out (checked), gateway the subnet's, no routes. Both NADs of a card carry the same k8s.v1.cni.cncf.io/resourceName annotation, so Multus does the same work per NAD (the kubelet checkpoint names no device).",
			fmt.Sprintf("Each iteration and side: a new Pod object and pod netns, Multus ADD, checks (untimed: links, addresses, MACs, network-status, the agent's allocations), Multus DEL, then the netns and the Pod go; the order of the two sides alternates (A B, B A, ...); %d warm-up iteration per side first, not counted. p99 ratio (ours/reference): ADD %.2fx, DEL %.2fx (under 100 iterations the p99 is the maximum).", benchWarmup, p99(add), p99(del)),
			"Where: the test VM (QEMU TCG, 1 vCPU, Debian's kernel, e2e/vm/vmtest.sh): one node, its agent serving cards 1-7 of " + instanceType + " on fake-ec2 (in the guest). kube-apiserver " + cluster.KubernetesVersion + " and etcd " + cluster.EtcdVersion + " run on the host, reached over QEMU user networking through relays in the guest, for both sides alike. multus, ptp, host-local, ipvlan (containernetworking/plugins " + cluster.CNIPluginsVersion + ", static, -s -w, built by e2e/tools/build.sh) and multinic (static, built by vmtest.sh) are copied to the guest's tmpfs first. Multus logs at debug level to a file (the e2e's conflist).",
			fmt.Sprintf("Agent flags (on top of internal/testing/harness's and the e2e's): %v, warm target %d per card: every ADD takes warm addresses (EC2 calls that change something during the measured iterations: %d).", benchAgentArgs, harness.DefaultWarmTarget, ec2Calls),
		},
	}
	if err := bench.Emit(os.Stdout, r); err != nil {
		t.Fatal(err)
	}
	t.Logf("ADD p50 %.0f / %.0f ms (%.2fx), DEL p50 %.0f / %.0f ms (%.2fx)", add.Ours.Value, add.Ref.Value, add.Ratio, del.Ours.Value, del.Ref.Value, del.Ratio)
}
