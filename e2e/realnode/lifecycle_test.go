//go:build e2e

package realnode

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/multinic/multinic/nad"
)

// waitPending waits until the scheduler has marked the pod unschedulable with a message containing
// reason, and returns that message.
func (e *Env) waitPending(ctx context.Context, t *testing.T, name, reason string) string {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	var last string
	for time.Now().Before(deadline) {
		p, err := e.Cluster.Client.CoreV1().Pods("default").Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if p.Spec.NodeName != "" {
			t.Fatalf("pod %s was scheduled to %s, want it Pending (%s)", name, p.Spec.NodeName, reason)
		}
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse {
				last = c.Reason + ": " + c.Message
				if strings.Contains(c.Message, reason) {
					return last
				}
			}
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Fatalf("pod %s: no PodScheduled=False with %q after a minute (last: %q)", name, reason, last)
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
// asking for more of a card than a node has stay Pending with the scheduler's reason; the first starts
// once the agents are rolled out to serve card 7, while a running pod keeps its addresses through the
// rollout and no address is given twice.
func testScheduling(ctx context.Context, t *testing.T, e *Env, image string) {
	steady := testPod{Name: "steady", Node: e.Nodes[0].Name, Atts: []attachment{{Card: 1}, {Card: 2}}}
	e.runPod(ctx, t, steady)
	before := e.addrsOf(ctx, t, steady.Name)

	late := testPod{Name: "wants-card-7", Atts: []attachment{{Card: 7}, {Card: 1}}}
	e.apply(ctx, t, late)
	t.Logf("pod %s: %s", late.Name, e.waitPending(ctx, t, late.Name, "Insufficient "+nad.ResourceName(nad.DefaultResourcePrefix, 7)))

	node, err := e.Cluster.Client.CoreV1().Nodes().Get(ctx, e.Nodes[0].Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	card1 := corev1.ResourceName(nad.ResourceName(nad.DefaultResourcePrefix, 1))
	have := node.Status.Allocatable[card1]
	big := testPod{Name: "too-big", Atts: []attachment{{Card: 1}}, Limits: map[string]string{string(card1): fmt.Sprint(have.Value() + 1)}}
	e.apply(ctx, t, big)
	t.Logf("pod %s (%s: %d, a node has %s): %s", big.Name, card1, have.Value()+1, have.String(),
		e.waitPending(ctx, t, big.Name, "Insufficient "+string(card1)))
	e.deletePod(ctx, t, big.Name)

	// Capacity appears: the agents serve card 7 after a rollout of the DaemonSet.
	installAgent(ctx, t, e, image, allCards)
	if out, err := e.Kubectl(ctx, nil, "wait", "--for=condition=Ready", "pod/"+late.Name, fmt.Sprintf("--timeout=%s", podTimeout)); err != nil {
		t.Fatalf("pod %s not Ready once card 7 is served: %v\n%s\n%s", late.Name, err, out, e.describePod(ctx, late.Name))
	}
	e.checkPod(ctx, t, late)
	e.sameAddrs(ctx, t, steady.Name, before, "the agent rollout")
	e.checkPod(ctx, t, steady)
	noDuplicates(t, map[string]map[string]netip.Addr{steady.Name: e.addrsOf(ctx, t, steady.Name), late.Name: e.addrsOf(ctx, t, late.Name)})
	e.deletePod(ctx, t, late.Name)
	e.deletePod(ctx, t, steady.Name)
	e.checkFreed(ctx, t)
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
	noDuplicates(t, map[string]map[string]netip.Addr{short.Name: a, long.Name: b})
	e.deletePod(ctx, t, short.Name)
	e.deletePod(ctx, t, long.Name)
	e.checkFreed(ctx, t)
}

// nodeNetState is what multinic may leave in a node's netns: IPv4 policy rules and routes of every table
// (the kernel's IPv6 link-local routes come and go with the ENI links of the agent's pool). A route's
// "linkdown" flag is its link's carrier, not a route anyone made: the primary network's bridge has none
// before its first pod and keeps it after its last, so it is left out.
func (n *Node) nodeNetState(ctx context.Context, t *testing.T) string {
	t.Helper()
	rules, err := n.Exec(ctx, "ip", "-4", "rule")
	if err != nil {
		t.Fatalf("ip rule in %s: %v: %s", n.Name, err, rules)
	}
	routes, err := n.Exec(ctx, "ip", "-4", "route", "show", "table", "all")
	if err != nil {
		t.Fatalf("ip route in %s: %v: %s", n.Name, err, routes)
	}
	return string(rules) + strings.ReplaceAll(string(routes), " linkdown", "")
}

// podNetNS lists the pod netns the runtime keeps in the node (/run/netns inside it).
func (n *Node) podNetNS(ctx context.Context) (string, error) {
	out, err := n.Exec(ctx, "ls", "/run/netns")
	return strings.TrimSpace(string(out)), err
}

// testLifecycle: the agent pod deleted while pods run (they keep their addresses, a new pod gets new
// ones, no duplicate); the kubelet restarted (pods keep running as they were); a node's containerd and
// kubelet killed with every pod's netns (a crash), then both restarted: the dead sandboxes' allocations
// are freed; finally kubectl delete pod leaves no allocation, pod netns, rule or route in the nodes.
func testLifecycle(ctx context.Context, t *testing.T, e *Env) {
	n1, n2 := e.Nodes[0], e.Nodes[1]
	base := map[string]string{n1.Name: n1.nodeNetState(ctx, t), n2.Name: n2.nodeNetState(ctx, t)}
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
	if err := n1.StopKubelet(); err != nil {
		t.Fatal(err)
	}
	if err := n1.StartKubelet(); err != nil {
		t.Fatal(err)
	}
	if err := e.WaitNodesReady(ctx); err != nil {
		t.Fatal(err)
	}
	e.waitExec(ctx, t, a.Name) // a restarted kubelet serves exec once it has synced the pod again
	e.sameAddrs(ctx, t, a.Name, addrA, "a kubelet restart")
	e.checkPod(ctx, t, a)

	// Node 2 crashes (containerd, kubelet, shims, containers, its mount namespace with the pod netns) and
	// comes back: the kubelet makes a new sandbox for life-b; the dead one's addresses are freed.
	bBefore := e.addrsOf(ctx, t, b.Name)
	if err := n2.Crash(); err != nil {
		t.Fatal(err)
	}
	if err := n2.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if err := e.WaitNodesReady(ctx); err != nil {
		t.Fatal(err)
	}
	if out, err := e.Kubectl(ctx, nil, "-n", "kube-system", "rollout", "status", "daemonset/multinic-agent", "--timeout=3m"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if out, err := e.Kubectl(ctx, nil, "wait", "--for=condition=Ready", "pod/"+b.Name, fmt.Sprintf("--timeout=%s", podTimeout)); err != nil {
		t.Fatalf("pod %s not Ready after its node came back: %v\n%s\n%s", b.Name, err, out, e.describePod(ctx, b.Name))
	}
	e.waitExec(ctx, t, b.Name) // Ready may still be the status from before the crash
	e.checkPod(ctx, t, b)
	t.Logf("pod %s before the crash %v, after %v", b.Name, bBefore, e.addrsOf(ctx, t, b.Name))
	deadline := time.Now().Add(time.Minute)
	for {
		k, err := e.allocated(ctx, n2)
		if err == nil && k == len(b.Atts) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("node %s: %d allocations (%v) a minute after it came back, want %d (life-b's new sandbox only)", n2.Name, k, err, len(b.Atts))
		}
		time.Sleep(time.Second)
	}

	for _, p := range []testPod{a, b, c} {
		e.deletePod(ctx, t, p.Name)
	}
	e.checkFreed(ctx, t)
	for _, n := range e.Nodes {
		if ns, err := n.podNetNS(ctx); err != nil || ns != "" {
			t.Errorf("node %s: pod netns left: %q (%v)", n.Name, ns, err)
		}
		if got := n.nodeNetState(ctx, t); got != base[n.Name] {
			t.Errorf("node %s: rules and routes after every pod is gone differ from before:\n%s\nbefore:\n%s", n.Name, got, base[n.Name])
		}
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
		node, err := e.Cluster.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
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
