//go:build e2e

package realnode

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/multinic/multinic/nad"
)

// waitPending waits until the scheduler has marked the pod unschedulable with a message containing
// reason, in both places a user looks: the PodScheduled condition and a FailedScheduling event (kubectl
// get events). The pod must stay unscheduled meanwhile. It returns the condition's text.
func (e *Env) waitPending(ctx context.Context, t *testing.T, name, reason string) string {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	var cond, events string
	for time.Now().Before(deadline) {
		p, err := e.Client.CoreV1().Pods("default").Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if p.Spec.NodeName != "" || p.Status.Phase != corev1.PodPending {
			t.Fatalf("pod %s was scheduled to %q (%s), want it Pending (%s)", name, p.Spec.NodeName, p.Status.Phase, reason)
		}
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse {
				cond = c.Reason + ": " + c.Message
			}
		}
		events, err = e.Kubectl(ctx, nil, "get", "events", "--field-selector", "involvedObject.name="+name+",reason=FailedScheduling",
			"-o", "jsonpath={.items[*].message}")
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(cond, "Unschedulable: ") && strings.Contains(cond, reason) && strings.Contains(events, reason) {
			return cond
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Fatalf("pod %s: no PodScheduled=False and FailedScheduling event with %q after a minute (condition %q, events %q)", name, reason, cond, events)
	return ""
}

// addrsOf returns every interface address a pod's container has (kubectl exec), by interface.
func (e *Env) addrsOf(ctx context.Context, t *testing.T, pod string) map[string]netip.Addr {
	t.Helper()
	out := map[string]netip.Addr{}
	for name, in := range e.podIfaces(ctx, t, pod) {
		if len(in.Addrs) == 1 && name != "lo" {
			out[name] = in.Addrs[0].Addr()
		}
	}
	return out
}

// noDuplicates fails t if two interfaces of the pods share an address.
func noDuplicates(t *testing.T, pods map[string]map[string]netip.Addr) {
	t.Helper()
	seen := map[netip.Addr]string{}
	for pod, addrs := range pods {
		for ifName, a := range addrs {
			who := pod + " " + ifName
			if prev, ok := seen[a]; ok {
				t.Errorf("address %s on both %s and %s", a, prev, who)
			}
			seen[a] = who
		}
	}
}

// sameAddrs fails t unless the pod still has exactly the addresses it had.
func (e *Env) sameAddrs(ctx context.Context, t *testing.T, pod string, before map[string]netip.Addr, after string) {
	t.Helper()
	now := e.addrsOf(ctx, t, pod)
	if fmt.Sprint(now) != fmt.Sprint(before) {
		t.Errorf("pod %s after %s has %v, before %v", pod, after, now, before)
	}
}

// testScheduling: a pod asking for a card no node serves (card 7, before the agents serve it) and one
// asking for more of a card than is left on its node stay Pending with the scheduler's reason; each starts
// once capacity appears: the second when the pod holding the card's capacity is deleted, the first when
// the agents are rolled out to serve card 7, while a running pod keeps its addresses through the rollout
// and no address is given twice.
func testScheduling(ctx context.Context, t *testing.T, e *Env, image string) {
	steady := testPod{Name: "steady", Node: e.Nodes[0].Name, Atts: []attachment{{Card: 1}, {Card: 2}}}
	e.runPod(ctx, t, steady)
	before := e.addrsOf(ctx, t, steady.Name)

	card7 := nad.ResourceName(nad.DefaultResourcePrefix, 7)
	late := testPod{Name: "wants-card-7", Atts: []attachment{{Card: 7}, {Card: 1}}}
	e.apply(ctx, t, late)
	t.Logf("pod %s: %s", late.Name, e.waitPending(ctx, t, late.Name, "Insufficient "+card7))

	// More than is left: a holder takes all of card 1 on the second node but one, a pod there asks for two.
	n2 := e.Nodes[1]
	node, err := e.Client.CoreV1().Nodes().Get(ctx, n2.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	card1 := nad.ResourceName(nad.DefaultResourcePrefix, 1)
	have := node.Status.Allocatable[corev1.ResourceName(card1)]
	holder := testPod{Name: "holds-card-1", Node: n2.Name, Atts: []attachment{{Card: 1}}, Limits: map[string]string{card1: fmt.Sprint(have.Value() - 1)}}
	e.runPod(ctx, t, holder)
	wants := testPod{Name: "wants-2-of-card-1", Node: n2.Name, Atts: []attachment{{Card: 1}}, Limits: map[string]string{card1: "2"}}
	e.apply(ctx, t, wants)
	t.Logf("pod %s (%s: 2; node %s has %s, %d held): %s", wants.Name, card1, n2.Name, have.String(), have.Value()-1,
		e.waitPending(ctx, t, wants.Name, "Insufficient "+card1))
	// Capacity appears: the holder goes.
	e.deletePod(ctx, t, holder.Name)
	e.waitReady(ctx, t, wants.Name, "once the holder of card 1 is gone")
	e.checkPod(ctx, t, wants)
	e.deletePod(ctx, t, wants.Name)

	// Capacity appears: the agents serve card 7 after a rollout of the DaemonSet.
	installAgent(ctx, t, e, image, allCards)
	e.waitReady(ctx, t, late.Name, "once card 7 is served")
	e.checkPod(ctx, t, late)
	e.sameAddrs(ctx, t, steady.Name, before, "the agent rollout")
	e.checkPod(ctx, t, steady)
	noDuplicates(t, map[string]map[string]netip.Addr{steady.Name: e.addrsOf(ctx, t, steady.Name), late.Name: e.addrsOf(ctx, t, late.Name)})
	e.deletePod(ctx, t, late.Name)
	e.deletePod(ctx, t, steady.Name)
	e.checkFreed(ctx, t)
}

// waitReady waits until a pod that was Pending is Ready (kubectl wait) and logs how long that took.
func (e *Env) waitReady(ctx context.Context, t *testing.T, name, when string) {
	t.Helper()
	start := time.Now()
	if out, err := e.Kubectl(ctx, nil, "wait", "--for=condition=Ready", "pod/"+name, fmt.Sprintf("--timeout=%s", podTimeout)); err != nil {
		t.Fatalf("pod %s not Ready %s: %v\n%s\n%s", name, when, err, out, e.describePod(ctx, name))
	}
	t.Logf("pod %s Ready %s, after %s", name, when, time.Since(start).Round(100*time.Millisecond))
}

// testSelections: a subset of cards under names of the pod's choosing (name@ifname), and the JSON
// selection form with "interface" and "cni-args" (an MTU for that interface only).
func testSelections(ctx context.Context, t *testing.T, e *Env) {
	short := testPod{Name: "subset", Atts: []attachment{{Card: 2, IfName: "fast2"}, {Card: 5, IfName: "fast5"}}}
	long := testPod{Name: "json-form", JSONForm: true, Atts: []attachment{
		{Card: 3, IfName: "data3", CNIArgs: map[string]any{"mtu": 1500}}, {Card: 6},
	}}
	e.runPod(ctx, t, short)
	e.runPod(ctx, t, long)
	a, b := e.checkPod(ctx, t, short), e.checkPod(ctx, t, long)
	e.checkRoutes(ctx, t, short, a)
	e.checkRoutes(ctx, t, long, b)
	noDuplicates(t, map[string]map[string]netip.Addr{short.Name: a, long.Name: b})
	e.deletePod(ctx, t, short.Name)
	e.deletePod(ctx, t, long.Name)
	e.checkFreed(ctx, t)
}

// nodeState is what pods may leave in a node once they are gone, as text to compare before and after.
type nodeState struct {
	// Net: IPv4 policy rules and routes of every table (the kernel's IPv6 link-local routes come and go
	// with the ENI links of the agent's pool), without those of the local nodes' primary bridge cni0: the
	// bridge plugin creates it with the node's first pod and keeps it (and its route's "linkdown" flag
	// follows its carrier, so whether it has a port); its ports and addresses are Ports and IPAM.
	Net string
	// NetNS are the pod netns the runtime keeps (/run/netns).
	NetNS string
	// Ports are the links enslaved to a bridge (the primary network's veths to its pods).
	Ports string
	// IPAM are the addresses host-local holds, one "<network>/<address>" per line.
	IPAM string
	// Links are the node's links but lo, cni0 and the ENIs' (fake-ec2 names them ens<card>d<device>; the
	// agent's pool changes them, and an exclusive ENI comes home under that name): a veth or any other link
	// a pod's ADD made and its DEL left. (Compared with before only: a kernel with tunnel modules loaded
	// gives every netns fallback devices such as tunl0.)
	Links string
}

var (
	primaryBridgeRoute = regexp.MustCompile(`(?m)^.* dev cni0 .*\n`)
	nodeOwnLink        = regexp.MustCompile(`^(lo|cni0|ens\d+d\d+)$`)
)

// state reads the node's nodeState (ip, ls inside the node).
func (n *Node) state(ctx context.Context, t *testing.T) nodeState {
	t.Helper()
	run := func(what string, args ...string) string {
		out, err := n.Exec(ctx, args[0], args[1:]...)
		if err != nil {
			t.Fatalf("%s in %s: %v: %s", what, n.Name, err, out)
		}
		return string(out)
	}
	var s nodeState
	s.Net = run("ip rule", "ip", "-4", "rule") + primaryBridgeRoute.ReplaceAllString(run("ip route", "ip", "-4", "route", "show", "table", "all"), "")
	s.NetNS = run("ls /run/netns", "sh", "-c", "ls /run/netns 2>/dev/null; true")
	s.Ports = run("bridge ports", "sh", "-c", "ip -o link show type bridge_slave | sed 's/^[0-9]*: //; s/:.*//'")
	s.IPAM = run("host-local", "sh", "-c", "cd /var/lib/cni/networks 2>/dev/null && ls -d */* | grep -v -e '/lock$' -e '/last_reserved_ip'; true")
	var links []string
	for _, l := range strings.Split(strings.TrimSpace(run("links", "ip", "-o", "link", "show")), "\n") {
		// "7: ens1d1@if8: <...> ..." (ip -o: one line per link)
		if f := strings.SplitN(l, ": ", 3); len(f) == 3 {
			if name, _, _ := strings.Cut(f[1], "@"); !nodeOwnLink.MatchString(name) {
				links = append(links, name)
			}
		}
	}
	slices.Sort(links)
	s.Links = strings.Join(links, "\n")
	return s
}

// checkLeftovers fails t where the node's state after every pod is gone differs from before. With
// thick Multus, host-local addresses of the primary network stay held (see checkThickIPAMLeak).
func (e *Env) checkLeftovers(ctx context.Context, t *testing.T, n *Node, before, after nodeState) {
	t.Helper()
	checks := []struct{ what, before, after string }{
		{"rules and routes", before.Net, after.Net}, {"pod netns", before.NetNS, after.NetNS},
		{"bridge ports", before.Ports, after.Ports}, {"links", before.Links, after.Links},
	}
	if e.multusMode == MultusThick {
		e.checkThickIPAMLeak(ctx, t, n, before.IPAM, after.IPAM)
	} else {
		checks = append(checks, struct{ what, before, after string }{"host-local addresses", before.IPAM, after.IPAM})
	}
	for _, f := range checks {
		if f.before != f.after {
			t.Errorf("node %s: %s after every pod is gone differ from before:\n%s\nbefore:\n%s", n.Name, f.what, f.after, f.before)
		}
	}
	// On the local nodes every pod but the cases' runs on the host network (the agents, Multus): none may
	// keep a netns or a bridge port, whatever an earlier case left in "before". (kind runs pods of its own.)
	if !n.kind && (after.NetNS != "" || after.Ports != "") {
		t.Errorf("node %s: pod netns %q and bridge ports %q left after every pod is gone, want none", n.Name, after.NetNS, after.Ports)
	}
}

// thickDelBug is how Multus v4.3.0's thick daemon fails the primary network's DEL: its cluster network
// is a .conflist file path, which it loads through a lossy round trip (only type and ipam.type of each
// plugin survive) and caches for DEL, so bridge's host-local gets no ranges and keeps the address
// (k8snetworkplumbingwg/multus-cni#1521, fixed after v4.3.0). ADD uses the lossless list and works.
const thickDelBug = "no IP ranges specified"

// checkThickIPAMLeak holds the thick mode's host-local addresses to exactly that upstream bug: every
// address held now and not before belongs to a container whose DEL Multus logged as failing with
// thickDelBug, no address held before is gone, and at least one is held (else the bug is gone: then
// compare the addresses as in thin mode, and say so in the README).
func (e *Env) checkThickIPAMLeak(ctx context.Context, t *testing.T, n *Node, before, after string) {
	t.Helper()
	was := map[string]bool{}
	for _, l := range strings.Fields(before) {
		was[l] = true
	}
	var added []string
	for _, l := range strings.Fields(after) {
		if !was[l] {
			added = append(added, l)
		}
		delete(was, l)
	}
	if len(was) > 0 {
		t.Errorf("node %s: host-local addresses held before and gone now: %v", n.Name, was)
	}
	if len(added) == 0 {
		t.Errorf("node %s: thick Multus freed every primary address: its DEL bug (%q) is gone; compare host-local strictly in thick mode too", n.Name, thickDelBug)
		return
	}
	logs, err := e.Kubectl(ctx, nil, "-n", "kube-system", "logs", "-l", "name=multus", "--all-containers", "--tail=-1")
	if err != nil {
		t.Fatal(err)
	}
	failed := regexp.MustCompile(`DEL finished CNI request ContainerID:"([0-9a-f]+)".*err: .*` + regexp.QuoteMeta(thickDelBug))
	bug := map[string]bool{}
	for _, m := range failed.FindAllStringSubmatch(logs, -1) {
		bug[m[1]] = true
	}
	for _, a := range added {
		owner, err := n.Exec(ctx, "head", "-n", "1", "/var/lib/cni/networks/"+a)
		id := strings.TrimSpace(string(owner))
		if err != nil || !bug[id] {
			t.Errorf("node %s: host-local still holds %s for container %q (%v), and Multus logged no DEL failing with %q for it", n.Name, a, id, err, thickDelBug)
		}
	}
	t.Logf("node %s: host-local keeps %d addresses of deleted pods, each from a Multus thick DEL that failed with %q (multus-cni#1521): %v", n.Name, len(added), thickDelBug, added)
}

// testLifecycle: the agent pod deleted while pods run (they keep their addresses, a new pod gets new
// ones, no duplicate); the kubelet restarted (pods keep running as they were); a node's containerd and
// kubelet killed with every pod's netns (a crash), then both restarted: the dead sandboxes' allocations
// are freed; finally kubectl delete pod leaves no allocation, pod netns, rule or route in the nodes.
func testLifecycle(ctx context.Context, t *testing.T, e *Env) {
	n1, n2 := e.Nodes[0], e.Nodes[1]
	base := map[string]nodeState{n1.Name: n1.state(ctx, t), n2.Name: n2.state(ctx, t)}
	a := testPod{Name: "life-a", Node: n1.Name, Atts: []attachment{{Card: 1}, {Card: 4}}}
	b := testPod{Name: "life-b", Node: n2.Name, Atts: []attachment{{Card: 1}, {Card: 4}}}
	e.runPod(ctx, t, a)
	e.runPod(ctx, t, b)
	addrA := e.addrsOf(ctx, t, a.Name)

	// The agent pod of node 1 deleted: the DaemonSet makes a new one.
	if out, err := e.Kubectl(ctx, nil, "-n", "kube-system", "delete", "pod", "-l", "app.kubernetes.io/name=multinic-agent",
		"--field-selector", "spec.nodeName="+n1.Name, "--wait=true"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if out, err := e.Kubectl(ctx, nil, "-n", "kube-system", "rollout", "status", "daemonset/multinic-agent", "--timeout=3m"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	e.sameAddrs(ctx, t, a.Name, addrA, "its node's agent pod was deleted")
	c := testPod{Name: "life-c", Node: n1.Name, Atts: []attachment{{Card: 1}, {Card: 4}}}
	e.runPod(ctx, t, c)
	e.checkPod(ctx, t, c)
	noDuplicates(t, map[string]map[string]netip.Addr{a.Name: e.addrsOf(ctx, t, a.Name), c.Name: e.addrsOf(ctx, t, c.Name)})

	// The kubelet of node 1 restarted.
	if err := n1.RestartKubelet(ctx); err != nil {
		t.Fatal(err)
	}
	if err := e.WaitNodesReady(ctx); err != nil {
		t.Fatal(err)
	}
	e.waitExec(ctx, t, a.Name) // a restarted kubelet serves exec once it has synced the pod again
	e.sameAddrs(ctx, t, a.Name, addrA, "a kubelet restart")
	e.checkPod(ctx, t, a)

	t.Run("node-crash", func(t *testing.T) {
		if n2.kind {
			t.Skip("kind: a node container's restart takes its netns, and fake-ec2's ENI links with it")
		}
		testNodeCrash(ctx, t, e, n2, b)
	})

	for _, p := range []testPod{a, b, c} {
		e.deletePod(ctx, t, p.Name)
	}
	e.checkFreed(ctx, t)
	for _, n := range e.Nodes {
		e.checkLeftovers(ctx, t, n, base[n.Name], n.state(ctx, t))
	}
}

// testNodeCrash: node n crashes (containerd, kubelet, shims, containers, its mount namespace with the pod
// netns) and comes back: the kubelet makes a new sandbox for pod p; the dead one's addresses are freed.
func testNodeCrash(ctx context.Context, t *testing.T, e *Env, n *Node, p testPod) {
	before := e.addrsOf(ctx, t, p.Name)
	if err := n.Crash(); err != nil {
		t.Fatal(err)
	}
	if err := n.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if err := e.WaitNodesReady(ctx); err != nil {
		t.Fatal(err)
	}
	if out, err := e.Kubectl(ctx, nil, "-n", "kube-system", "rollout", "status", "daemonset/multinic-agent", "--timeout=3m"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if out, err := e.Kubectl(ctx, nil, "wait", "--for=condition=Ready", "pod/"+p.Name, fmt.Sprintf("--timeout=%s", podTimeout)); err != nil {
		t.Fatalf("pod %s not Ready after its node came back: %v\n%s\n%s", p.Name, err, out, e.describePod(ctx, p.Name))
	}
	e.waitExec(ctx, t, p.Name) // Ready may still be the status from before the crash
	e.checkPod(ctx, t, p)
	t.Logf("pod %s before the crash %v, after %v", p.Name, before, e.addrsOf(ctx, t, p.Name))
	deadline := time.Now().Add(time.Minute)
	for {
		k, err := e.allocated(ctx, n)
		if err == nil && k == len(p.Atts) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("node %s: %d allocations (%v) a minute after it came back, want %d (the pod's new sandbox only)", n.Name, k, err, len(p.Atts))
		}
		time.Sleep(time.Second)
	}
}

// testRuntimeStatus shows containerd's CNI STATUS on the node's network (Multus' config, cniVersion
// 1.1.0, which passes STATUS on to the primary network, bridge): with the bridge binary gone STATUS fails,
// containerd reports NetworkReady=false and the kubelet turns the Node NotReady with that message; with
// the binary back the Node is Ready again.
func testRuntimeStatus(ctx context.Context, t *testing.T, e *Env) {
	n := e.Nodes[0]
	bridge := filepath.Join(n.HostPath("/opt/cni/bin"), "bridge")
	if err := os.Rename(bridge, bridge+".away"); err != nil {
		t.Fatal(err)
	}
	restored := false
	restore := func() {
		if !restored {
			restored = true
			if err := os.Rename(bridge+".away", bridge); err != nil {
				t.Error(err)
			}
		}
	}
	defer restore()
	msg := e.waitNodeCondition(ctx, t, n.Name, corev1.ConditionFalse, "NetworkReady=false")
	t.Logf("node %s without the bridge plugin: Ready=False: %s", n.Name, msg)
	restore()
	msg = e.waitNodeCondition(ctx, t, n.Name, corev1.ConditionTrue, "")
	t.Logf("node %s with it back: Ready=True: %s", n.Name, msg)
}

// waitNodeCondition waits until the Node's Ready condition has status and a message containing substr.
func (e *Env) waitNodeCondition(ctx context.Context, t *testing.T, name string, status corev1.ConditionStatus, substr string) string {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	var last string
	for time.Now().Before(deadline) {
		node, err := e.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range node.Status.Conditions {
			if c.Type == corev1.NodeReady {
				last = fmt.Sprintf("%s %s: %s", c.Status, c.Reason, c.Message)
				if c.Status == status && strings.Contains(c.Message, substr) {
					return c.Reason + ": " + c.Message
				}
			}
		}
		time.Sleep(time.Second)
	}
	t.Fatalf("node %s: Ready not %s with %q after 2m (last: %s)", name, status, substr, last)
	return ""
}

// waitExec waits until kubectl exec into the pod works.
func (e *Env) waitExec(ctx context.Context, t *testing.T, pod string) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		_, err := e.Kubectl(ctx, nil, "exec", pod, "--", "true")
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("kubectl exec %s: %v", pod, err)
		}
		time.Sleep(time.Second)
	}
}
