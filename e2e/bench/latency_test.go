package bench

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/multinic/multinic/internal/nettest"
	"github.com/multinic/multinic/internal/testing/fabric"
	"github.com/multinic/multinic/internal/testing/harness"
	"github.com/multinic/multinic/ipam/api"
)

// latencyCard is the card both plugins use: the same ENI link as the parent (ipvlan), the same subnet.
const latencyCard = 1

// maxLatencyRatio is the target: no worse than 1.2x the reference.
const maxLatencyRatio = 1.2

// maxRSSRatio is issue 13's target for the plugin's RSS per call: no more than the reference plugin's.
const maxRSSRatio = 1.0

// latencyAgentArgs: no cooldown, so every iteration takes the same warm address (or the same free
// exclusive ENI) and the ADD hot path never waits for EC2; info logs, as the DaemonSet runs.
var latencyAgentArgs = []string{"--cooldown", "0s", "--surplus-delay", "30m", "--log-level", "info"}

// samples are one plugin's measurements in an interleaved run.
type samples struct {
	add, del, version []time.Duration
	rss               []float64 // MiB, per ADD and DEL call
	allocate, release []time.Duration
	steps             stepSamples // plugin 0's steps
}

// interleave runs ADD then DEL of each plugin in turn, warmup+n times, the order swapped every iteration
// (A B, B A, A B, ...) so that drift and ordering hit both; each also execs CNI_COMMAND=VERSION (process
// start and Go runtime init, no work). It also times the agent's allocate (of rt's card, mode and family)
// and release for plugin 0, through a fresh client per call (the plugin dials once per call too), and
// traces plugin 0's steps, then runs kernel (when set) into the same step samples.
func interleave(t *testing.T, node *harness.Node, pod *harness.Pod, ps [2]plugin, n, warmup int, rt api.AllocateRequest, kernel func(*testing.T, *stepSamples)) [2]*samples {
	t.Helper()
	out := [2]*samples{{}, {}}
	const ifName = "net1"
	for i := range warmup + n {
		order := [2]int{0, 1}
		if i%2 == 1 {
			order = [2]int{1, 0}
		}
		keep := i >= warmup
		for _, k := range order {
			p, s, cid := ps[k], out[k], newContainerID()
			add, err := execCNI(node.NetNS(), p, "ADD", cid, pod.NetNSPath, ifName, pod.Name)
			if err != nil {
				t.Fatalf("iteration %d: %v", i, err)
			}
			del, err := execCNI(node.NetNS(), p, "DEL", cid, pod.NetNSPath, ifName, pod.Name)
			if err != nil {
				t.Fatalf("iteration %d: %v", i, err)
			}
			if !keep {
				continue
			}
			s.add, s.del = append(s.add, add.dur), append(s.del, del.dur)
			if (i-warmup)%sampleEvery != 0 {
				continue
			}
			ver, err := execCNI(node.NetNS(), p, "VERSION", cid, pod.NetNSPath, ifName, pod.Name)
			if err != nil {
				t.Fatalf("iteration %d: %v", i, err)
			}
			s.version = append(s.version, ver.dur)
			s.rss = append(s.rss, traceRSS(t, node, pod, p)...)
			if k == 0 {
				a, r := agentRoundTrip(t, node, pod, rt)
				s.allocate, s.release = append(s.allocate, a), append(s.release, r)
				traceSteps(t, node, pod, p, &s.steps)
				if kernel != nil {
					kernel(t, &s.steps)
				}
			}
		}
	}
	return out
}

// sampleEvery: every sampleEvery-th measured iteration also execs VERSION (process start) and a traced ADD
// and DEL (RSS) of each plugin, times the agent's round trips, and runs an ADD and DEL of multinic with its
// step trace on.
const sampleEvery = 5

// traceRSS runs one more ADD and DEL of p, traced, and returns their peak RSS in MiB.
func traceRSS(t *testing.T, node *harness.Node, pod *harness.Pod, p plugin) []float64 {
	t.Helper()
	cid := newContainerID()
	var out []float64
	for _, verb := range []string{"ADD", "DEL"} {
		kb, err := peakRSS(node.NetNS(), p, verb, cid, pod.NetNSPath, "net1", pod.Name)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, float64(kb)/1024)
	}
	return out
}

// agentRoundTrip times one allocate (rt's card, mode and family) and one release as the plugin sends
// them, on a fresh connection each.
func agentRoundTrip(t *testing.T, node *harness.Node, pod *harness.Pod, rt api.AllocateRequest) (alloc, rel time.Duration) {
	t.Helper()
	cid := newContainerID()
	ctx := context.Background()
	c := api.NewClient(node.Socket, 0)
	start := time.Now()
	_, err := c.Allocate(ctx, api.AllocateRequest{Card: rt.Card, ContainerID: cid, IfName: "net1",
		PodRef:    api.PodRef{PodNamespace: "default", PodName: pod.Name, PodUID: "uid-" + pod.Name},
		Exclusive: rt.Exclusive, Netns: pod.NetNSPath, Family: rt.Family})
	alloc = time.Since(start)
	c.Close()
	if err != nil {
		t.Fatal(err)
	}
	c = api.NewClient(node.Socket, 0)
	defer c.Close()
	start = time.Now()
	if _, err := c.Release(ctx, api.ReleaseRequest{ContainerID: cid, IfName: "net1"}); err != nil {
		t.Fatal(err)
	}
	return alloc, time.Since(start)
}

// latencyResults turns an interleaved run into figure 1's table and figure 5's plugin RSS table.
func latencyResults(t *testing.T, key, title, refTitle string, n int, s [2]*samples, notes []string) {
	t.Helper()
	ms := func(d []time.Duration) Stat { return Summarize(Millis(d)) }
	ours, ref := s[0], s[1]
	addRow := Compare("ADD", "ms", ms(ours.add), ms(ref.add), maxLatencyRatio)
	delRow := Compare("DEL", "ms", ms(ours.del), ms(ref.del), maxLatencyRatio)
	verRow := Compare("VERSION (process start, no work)", "ms", ms(ours.version), ms(ref.version), 0)
	rows := []Row{addRow, delRow, verRow,
		{Metric: "agent allocate round trip (in ADD)", Unit: "ms", Ours: ms(ours.allocate)},
		{Metric: "agent release round trip (in DEL)", Unit: "ms", Ours: ms(ours.release)},
	}
	// Where the time goes: ADD = process start + agent round trip + the rest (netlink, sysctls, result).
	netlinkAdd := addRow.Ours.Value - verRow.Ours.Value - rows[3].Ours.Value
	netlinkRef := addRow.Ref.Value - verRow.Ref.Value
	notes = append(notes,
		fmt.Sprintf("ADD p50 breakdown, multinic: %.2f ms process start (VERSION) + %.2f ms agent allocate + %.2f ms the rest (netlink in the pod netns, result); reference: %.2f ms process start + %.2f ms the rest (IPAM plugin exec + netlink).",
			verRow.Ours.Value, rows[3].Ours.Value, netlinkAdd, verRow.Ref.Value, netlinkRef),
		fmt.Sprintf("Each iteration: ADD then DEL of one plugin, then of the other, with a fresh container ID each; the order alternates (A B, B A, ...). Both plugins' binaries are copied to the same temporary folder first (in the VM: tmpfs rather than the 9p mount). Every %d iterations, VERSION is exec'd the same way after the DEL, and the agent's allocate and release are timed from the test process (a fresh connection per call, as the plugin makes).", sampleEvery))
	emit(t, Result{Figure: 1, Key: key, Title: title, Iterations: n, Ours: "multinic", Ref: refTitle, Rows: rows, Notes: notes})
	emit(t, stepsResult(key, "multinic "+key+" mode: ADD and DEL by step", refTitle, ours, ref))
	rss := Compare("max RSS per call (ADD and DEL)", "MiB", Summarize(ours.rss), Summarize(ref.rss), maxRSSRatio)
	emit(t, Result{Figure: 5, Key: "plugin-" + key, Title: "plugin RSS per call: " + title, Iterations: len(ours.rss),
		Ours: "multinic", Ref: refTitle, Rows: []Row{rss},
		Notes: []string{fmt.Sprintf("Peak RSS (VmHWM) of the plugin process itself, read at its exit under ptrace (PTRACE_O_TRACEEXIT), for one extra ADD and DEL every %d iterations of the run above (not timed). The reference's IPAM plugin (a child) is not included. Both sides are built the same way: static (CGO_ENABLED=0), -trimpath, not stripped (internal/gobuild; e2e/bench/run.sh refs), and exec'd from the same folder. ru_maxrss from wait4 is not used: Go starts children with CLONE_VM|CLONE_VFORK and exec folds the parent's high-water mark into the child's, so it reports the test process's RSS for every plugin.", sampleEvery)}})
}

// probeCard asks the agent for one address on the card to learn its ENI link and subnet, then releases it.
func probeCard(t *testing.T, node *harness.Node) api.AllocateResponse {
	t.Helper()
	ctx := context.Background()
	cid := newContainerID()
	resp, err := node.Client.Allocate(ctx, api.AllocateRequest{Card: latencyCard, ContainerID: cid, IfName: "probe"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := node.Client.Release(ctx, api.ReleaseRequest{ContainerID: cid, IfName: "probe"}); err != nil {
		t.Fatal(err)
	}
	return resp
}

// subnetTail is the last n usable addresses of a subnet (below the broadcast address), for the reference
// IPAM: far from the addresses fake-ec2 hands out from the bottom.
func subnetTail(p netip.Prefix, n int) (first, last netip.Addr) {
	p = p.Masked()
	a := p.Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	end := v | host - 1
	at := func(x uint32) netip.Addr {
		return netip.AddrFrom4([4]byte{byte(x >> 24), byte(x >> 16), byte(x >> 8), byte(x)})
	}
	return at(end - uint32(n) + 1), at(end)
}

func newLatencyPod(t *testing.T, node *harness.Node) *harness.Pod {
	t.Helper()
	pod, err := node.NewPod("lat")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := pod.Remove(); err != nil {
			t.Errorf("remove pod: %v", err)
		}
	})
	return pod
}

// TestLatencyIPVlan is figure 1's ipvlan row: multinic mode ipvlan against the reference ipvlan +
// host-local, same parent link (the card's ENI), same pod netns, interleaved. Needs ipvlan: the test VM.
func TestLatencyIPVlan(t *testing.T) {
	nettest.RequireLinkType(t, "ipvlan")
	refs := refBinDir(t)
	region := harness.NewRegion(t, harness.Config{ManagedCards: []int{latencyCard}, WarmTarget: 4, AgentArgs: latencyAgentArgs})
	node := region.Node(0)
	probe := probeCard(t, node)
	pod := newLatencyPod(t, node)
	first, last := subnetTail(probe.SubnetCIDR, 32)
	bins := stageBinaries(t, filepath.Join(harness.BinDir(t), harness.PluginBinary), filepath.Join(refs, "ipvlan"), filepath.Join(refs, "host-local"))
	ours := plugin{name: "multinic", bin: filepath.Join(bins, harness.PluginBinary), cniPath: bins,
		conf: mustJSON(harness.Attachment{Card: latencyCard, Mode: "ipvlan", IPVlanMode: "l2"}.NetConf(node.Socket))}
	ref := plugin{name: "ipvlan", bin: filepath.Join(bins, "ipvlan"), cniPath: bins, conf: mustJSON(map[string]any{
		"cniVersion": harness.CNIVersion, "name": "ref-ipvlan-card1", "type": "ipvlan", "master": probe.LinkName, "mode": "l2",
		"ipam": map[string]any{"type": "host-local", "dataDir": t.TempDir(), "ranges": [][]map[string]any{{{
			"subnet": probe.SubnetCIDR.String(), "rangeStart": first.String(), "rangeEnd": last.String(), "gateway": probe.Gateway.String(),
		}}}},
	})}
	n := latencyIterations()
	s := interleave(t, node, pod, [2]plugin{ours, ref}, n, max(2, n/50), api.AllocateRequest{Card: latencyCard},
		kernelIPVlan(t, node, pod, probe.LinkName))
	latencyResults(t, "ipvlan", "ipvlan mode vs ipvlan + host-local", "ipvlan + host-local", n, s, []string{
		fmt.Sprintf("Same parent link (%s, the card-%d ENI the agent serves), same pod netns (made by internal/testing/harness with its eth0), ipvlan l2, CNI 1.1.0, both exec'd from the node netns. The reference gets host-local with a range at the top of the same subnet and no routes; multinic also installs its per-card route table and policy rules (its default).", probe.LinkName, latencyCard),
		fmt.Sprintf("Agent flags (on top of internal/testing/harness's): %v, --warm-target 4.", latencyAgentArgs),
	})
}

// TestLatencyExclusive is figure 1's exclusive row: multinic mode exclusive (moves the card's ENI into the
// pod) against the reference host-device + static moving a veth of the same kind (its peer in the fabric
// netns, MTU 9001), interleaved. Runs on the host: fake-ec2's ENIs are veths.
func TestLatencyExclusive(t *testing.T) {
	nettest.RequireRoot(t)
	refs := refBinDir(t)
	region := harness.NewRegion(t, harness.Config{ManagedCards: []int{latencyCard}, WarmTarget: 2, AgentArgs: latencyAgentArgs})
	node := region.Node(0)
	probe := probeCard(t, node)
	refDev := refDevice(t, region, node, "refeni1")
	kernelDev := refDevice(t, region, node, "kmove1")
	pod := newLatencyPod(t, node)
	_, last := subnetTail(probe.SubnetCIDR, 1)
	bins := stageBinaries(t, filepath.Join(harness.BinDir(t), harness.PluginBinary), filepath.Join(refs, "host-device"), filepath.Join(refs, "static"))
	ours := plugin{name: "multinic", bin: filepath.Join(bins, harness.PluginBinary), cniPath: bins,
		conf: mustJSON(harness.Attachment{Card: latencyCard, Mode: "exclusive"}.NetConf(node.Socket))}
	ref := plugin{name: "host-device", bin: filepath.Join(bins, "host-device"), cniPath: bins, conf: mustJSON(map[string]any{
		"cniVersion": harness.CNIVersion, "name": "ref-hostdev-card1", "type": "host-device", "device": refDev,
		"ipam": map[string]any{"type": "static", "addresses": []map[string]any{{
			"address": netip.PrefixFrom(last, probe.SubnetCIDR.Bits()).String(), "gateway": probe.Gateway.String(),
		}}},
	})}
	n := latencyIterations()
	s := interleave(t, node, pod, [2]plugin{ours, ref}, n, max(2, n/50), api.AllocateRequest{Card: latencyCard, Exclusive: true},
		kernelMove(t, node, pod, kernelDev))
	latencyResults(t, "exclusive", "exclusive mode vs host-device + static", "host-device + static", n, s, []string{
		fmt.Sprintf("multinic moves the card-%d ENI link the agent created (a veth from fake-ec2's fabric, MTU 9001) into the pod; host-device moves %s, a veth made the same way (peer in the fabric netns, MTU 9001), with static IPAM giving an address of the same subnet. Same pod netns, both exec'd from the node netns. Runs on the host (exclusive mode needs no ipvlan).", latencyCard, refDev),
		fmt.Sprintf("Agent flags (on top of internal/testing/harness's): %v: the one exclusive ENI is reused every iteration, so no EC2 call is on the hot path.", latencyAgentArgs),
	})
}

// dualCard is the card TestLatencyDual serves dual-stack, next to latencyCard's ipv4.
const dualCard = 2

// TestLatencyDual is issue 14's ADD latency, dual-stack against IPv4-only in the same run: multinic mode
// exclusive on a card of family dual (the ENI moved in with its IPv4 and its IPv6 address, both families'
// routes and rules) and on a card of family ipv4, interleaved, same pod netns. Runs on the host.
func TestLatencyDual(t *testing.T) {
	nettest.RequireRoot(t)
	args := append([]string{"--family", fmt.Sprintf("%d=dual", dualCard)}, latencyAgentArgs...)
	region := harness.NewRegion(t, harness.Config{ManagedCards: []int{latencyCard, dualCard}, WarmTarget: 2, AgentArgs: args})
	node := region.Node(0)
	pod := newLatencyPod(t, node)
	bins := stageBinaries(t, filepath.Join(harness.BinDir(t), harness.PluginBinary))
	dual := plugin{name: "multinic dual", bin: filepath.Join(bins, harness.PluginBinary), cniPath: bins,
		conf: mustJSON(harness.Attachment{Card: dualCard, Mode: "exclusive", Family: api.FamilyDual}.NetConf(node.Socket))}
	v4 := plugin{name: "multinic ipv4", bin: filepath.Join(bins, harness.PluginBinary), cniPath: bins,
		conf: mustJSON(harness.Attachment{Card: latencyCard, Mode: "exclusive"}.NetConf(node.Socket))}
	n := latencyIterations()
	s := interleave(t, node, pod, [2]plugin{dual, v4}, n, max(2, n/50), api.AllocateRequest{Card: dualCard, Exclusive: true, Family: api.FamilyDual}, nil)
	ms := func(d []time.Duration) Stat { return Summarize(Millis(d)) }
	emit(t, Result{Figure: 1, Key: "exclusive-dual", Title: "exclusive mode: dual-stack vs IPv4-only (issue 14)", Iterations: n,
		Ours: "multinic dual", Ref: "multinic ipv4",
		Rows: []Row{
			Compare("ADD", "ms", ms(s[0].add), ms(s[1].add), 0),
			Compare("DEL", "ms", ms(s[0].del), ms(s[1].del), 0),
			Compare("VERSION (process start, no work)", "ms", ms(s[0].version), ms(s[1].version), 0),
			{Metric: "agent allocate round trip, dual (in ADD)", Unit: "ms", Ours: ms(s[0].allocate)},
			{Metric: "agent release round trip, dual (in DEL)", Unit: "ms", Ours: ms(s[0].release)},
		},
		Notes: []string{
			fmt.Sprintf("The same plugin binary, mode exclusive, interleaved (A B, B A, ...) with a fresh container ID each: on card %d of family dual (the ENI, made with one IPv6 address, moved into the pod with its IPv4 and IPv6 addresses, IPv6 routes and rules through fe80:ec2::1 next to the IPv4 ones) and on card %d of family ipv4. Same pod netns, both exec'd from the node netns; the agent's allocate and release are timed for the dual card every %d iterations.", dualCard, latencyCard, sampleEvery),
			fmt.Sprintf("Agent flags (on top of internal/testing/harness's): %v: each card's one exclusive ENI is reused every iteration, so no EC2 call is on the hot path.", args),
		}})
}

// refDevices counts refDevice's links, for distinct MACs.
var refDevices int

// refDevice makes a link like an ENI's (the reference's "ENI", the kernel-alone move's): a veth named name
// in the node netns, peer in the fabric netns, MTU 9001, up.
func refDevice(t *testing.T, region *harness.Region, node *harness.Node, name string) string {
	t.Helper()
	fab, err := ns.GetNS(filepath.Join(fabric.NetNSDir, region.FabricNetNS()))
	if err != nil {
		t.Fatal(err)
	}
	defer fab.Close()
	refDevices++
	peer := fmt.Sprintf("v%s%d", name[:min(len(name), 8)], os.Getpid()%100000)
	mac := net.HardwareAddr{0x02, 0xaa, 0xbb, 0x00, 0x00, byte(refDevices)}
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: 9001, HardwareAddr: mac},
		PeerName: peer, PeerNamespace: netlink.NsFd(int(fab.Fd()))}
	h := node.Handle()
	if err := h.LinkAdd(veth); err != nil {
		t.Fatalf("create reference device %s: %v", name, err)
	}
	t.Cleanup(func() {
		if l, err := h.LinkByName(name); err == nil {
			_ = h.LinkDel(l)
		}
	})
	l, err := h.LinkByName(name)
	if err == nil {
		err = h.LinkSetUp(l)
	}
	if err != nil {
		t.Fatalf("set %s up: %v", name, err)
	}
	return name
}

// stageBinaries copies the plugins into one temporary folder, so that both sides exec from the same
// filesystem (in the VM, tmpfs instead of the 9p mount, where every page of an exec is a 9p read).
func stageBinaries(t *testing.T, paths ...string) string {
	t.Helper()
	dir := t.TempDir()
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err == nil {
			err = os.WriteFile(filepath.Join(dir, filepath.Base(p)), b, 0o755)
		}
		if err != nil {
			t.Fatalf("stage %s: %v", p, err)
		}
	}
	return dir
}
