//go:build e2e

package realnode

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	nadv1 "github.com/k8snetworkplumbingwg/network-attachment-definition-client/pkg/apis/k8s.cni.cncf.io/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/multinic/multinic/internal/testing/fakeec2"
	"github.com/multinic/multinic/nad"
	"github.com/multinic/multinic/tools/imagebuild"
)

// BusyboxImage is the test image: busybox with ip, ping, nc.
const BusyboxImage = imagebuild.DefaultBusyboxRef

// podTimeout bounds the wait for a pod to be Ready: scheduling, sandbox, Multus, one ADD per card.
const podTimeout = 3 * time.Minute

// attachment is one interface a test pod asks for: a card's exclusive NAD (this host's kernel has no
// ipvlan), the interface name Multus gives it, and per-pod CNI args.
type attachment struct {
	Card    int
	IfName  string         // "": Multus' net<N>
	CNIArgs map[string]any // only with the JSON selection form
}

// testPod is a busybox pod asking for attachments, in the annotation's short form (name@ifname) or its
// JSON form, with a multinic.io/card-N limit per card so that the scheduler places it.
type testPod struct {
	Name     string
	Node     string // nodeSelector on kubernetes.io/hostname; "" lets the scheduler choose
	Atts     []attachment
	JSONForm bool
	Limits   map[string]string // resource limits that replace the one-per-card default
	// ClaimTemplate, when set, gives the pod one ResourceClaim "cards" from this template (DRA) instead of
	// the multinic.io/card-N limits: the scheduler places it by its claim.
	ClaimTemplate string
}

func (p testPod) ifName(i int) string {
	if p.Atts[i].IfName != "" {
		return p.Atts[i].IfName
	}
	return fmt.Sprintf("net%d", i+1)
}

func (p testPod) manifest() string {
	var short []string
	var long []map[string]any
	limits := map[string]string{}
	for _, a := range p.Atts {
		name := nad.Name(a.Card, "exclusive")
		limits[nad.ResourceName(nad.DefaultResourcePrefix, a.Card)] = "1"
		if p.JSONForm {
			sel := map[string]any{"name": name, "namespace": nad.DefaultNamespace}
			if a.IfName != "" {
				sel["interface"] = a.IfName
			}
			if a.CNIArgs != nil {
				sel["cni-args"] = a.CNIArgs
			}
			long = append(long, sel)
			continue
		}
		s := nad.DefaultNamespace + "/" + name
		if a.IfName != "" {
			s += "@" + a.IfName
		}
		short = append(short, s)
	}
	for k, v := range p.Limits {
		limits[k] = v
	}
	resources := map[string]any{"limits": limits}
	if p.ClaimTemplate != "" {
		resources = map[string]any{"claims": []map[string]string{{"name": "cards"}}}
	}
	networks := strings.Join(short, ",")
	if p.JSONForm {
		b, _ := json.Marshal(long)
		networks = string(b)
	}
	spec := map[string]any{
		"terminationGracePeriodSeconds": 1,
		"containers": []any{map[string]any{
			"name": "app", "image": BusyboxImage, "imagePullPolicy": "Never",
			"command":   []string{"sleep", "3600"},
			"resources": resources,
		}},
	}
	if p.ClaimTemplate != "" {
		spec["resourceClaims"] = []map[string]string{{"name": "cards", "resourceClaimTemplateName": p.ClaimTemplate}}
	}
	if p.Node != "" {
		spec["nodeSelector"] = map[string]string{"kubernetes.io/hostname": p.Node}
	}
	obj := map[string]any{
		"apiVersion": "v1", "kind": "Pod",
		"metadata": map[string]any{"name": p.Name, "namespace": "default",
			"annotations": map[string]string{nadv1.NetworkAttachmentAnnot: networks}},
		"spec": spec,
	}
	b, _ := json.Marshal(obj)
	return string(b)
}

// apply creates the pod with kubectl apply.
func (e *Env) apply(ctx context.Context, t *testing.T, p testPod) {
	t.Helper()
	if out, err := e.Kubectl(ctx, strings.NewReader(p.manifest()), "apply", "-f", "-"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
}

// runPod applies the pod and waits until it is Ready.
func (e *Env) runPod(ctx context.Context, t *testing.T, p testPod) *corev1.Pod {
	t.Helper()
	start := time.Now()
	e.apply(ctx, t, p)
	if out, err := e.Kubectl(ctx, nil, "wait", "--for=condition=Ready", "pod/"+p.Name, fmt.Sprintf("--timeout=%s", podTimeout)); err != nil {
		t.Fatalf("pod %s not Ready: %v\n%s\n%s", p.Name, err, out, e.describePod(ctx, p.Name))
	}
	obj, err := e.Client.CoreV1().Pods("default").Get(ctx, p.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("pod %s: scheduled to %s, Ready in %s", p.Name, obj.Spec.NodeName, time.Since(start).Round(100*time.Millisecond))
	return obj
}

func (e *Env) describePod(ctx context.Context, name string) string {
	out, err := e.Kubectl(ctx, nil, "describe", "pod", name)
	if err != nil {
		return err.Error()
	}
	return out
}

// deletePod deletes the pod with kubectl and waits until it is gone.
func (e *Env) deletePod(ctx context.Context, t *testing.T, name string) {
	t.Helper()
	if out, err := e.Kubectl(ctx, nil, "delete", "pod", name, "--wait=true", "--timeout=2m"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
}

// podIface is one interface as seen from inside the container.
type podIface struct {
	Name  string
	MAC   string
	MTU   int
	Addrs []netip.Prefix
}

var (
	linkLine = regexp.MustCompile(`^\d+: ([^:@]+)(?:@[^:]+)?: <[^>]*> mtu (\d+) .*link/\S+ ([0-9a-f:]{17})`)
	addrLine = regexp.MustCompile(`^\d+: (\S+)\s+inet (\S+)`)
)

// podIfaces runs `ip -o link` and `ip -o -4 addr` in the container (kubectl exec) and parses them.
func (e *Env) podIfaces(ctx context.Context, t *testing.T, pod string) map[string]*podIface {
	t.Helper()
	links, err := e.Kubectl(ctx, nil, "exec", pod, "--", "ip", "-o", "link")
	if err != nil {
		t.Fatal(err)
	}
	addrs, err := e.Kubectl(ctx, nil, "exec", pod, "--", "ip", "-o", "-4", "addr")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*podIface{}
	for _, l := range strings.Split(links, "\n") {
		if m := linkLine.FindStringSubmatch(l); m != nil {
			var mtu int
			fmt.Sscan(m[2], &mtu)
			out[m[1]] = &podIface{Name: m[1], MTU: mtu, MAC: m[3]}
		}
	}
	for _, l := range strings.Split(addrs, "\n") {
		if m := addrLine.FindStringSubmatch(l); m != nil {
			if i, ok := out[m[1]]; ok {
				i.Addrs = append(i.Addrs, netip.MustParsePrefix(m[2]))
			}
		}
	}
	return out
}

// checkPod asserts what a running test pod looks like from three sides: inside the container (kubectl
// exec: one address per attachment, on the interface Multus named, with the ENI's MAC), the
// network-status annotation Multus wrote, and fake-ec2's ENIs (the address is the primary of an in-use
// ENI of the pod's node on that card, in the card's subnet). It returns the address per interface.
func (e *Env) checkPod(ctx context.Context, t *testing.T, p testPod) map[string]netip.Addr {
	t.Helper()
	obj, err := e.Client.CoreV1().Pods("default").Get(ctx, p.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	node := e.node(obj.Spec.NodeName)
	if node == nil {
		t.Fatalf("pod %s on unknown node %q", p.Name, obj.Spec.NodeName)
	}
	var statuses []nadv1.NetworkStatus
	if err := json.Unmarshal([]byte(obj.Annotations[nadv1.NetworkStatusAnnot]), &statuses); err != nil {
		t.Fatalf("pod %s network-status %q: %v", p.Name, obj.Annotations[nadv1.NetworkStatusAnnot], err)
	}
	if len(statuses) != len(p.Atts)+1 {
		t.Fatalf("pod %s network-status has %d entries, want eth0 and %d attachments: %+v", p.Name, len(statuses), len(p.Atts), statuses)
	}
	ifaces := e.podIfaces(ctx, t, p.Name)
	if eth0 := ifaces["eth0"]; eth0 == nil || len(eth0.Addrs) != 1 || !node.PodCIDR.Contains(eth0.Addrs[0].Addr()) ||
		!statuses[0].Default || !slices.Equal(statuses[0].IPs, []string{eth0.Addrs[0].Addr().String()}) {
		t.Errorf("pod %s eth0 %+v, network-status[0] %+v: want the default network's address in %s", p.Name, eth0, statuses[0], node.PodCIDR)
	}
	st, err := e.State(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]netip.Addr{}
	var summary []string
	for i, a := range p.Atts {
		ifName := p.ifName(i)
		in := ifaces[ifName]
		subnet, _ := st.Subnet(fakeec2.CardSubnetID(a.Card))
		cidr := netip.MustParsePrefix(subnet.CIDR)
		if in == nil || len(in.Addrs) != 1 || !cidr.Contains(in.Addrs[0].Addr()) {
			t.Errorf("pod %s %s = %+v, want one address in card %d's subnet %s", p.Name, ifName, in, a.Card, cidr)
			continue
		}
		addr := in.Addrs[0].Addr()
		got[ifName] = addr
		var en *fakeec2.ENIState
		for j := range st.ENIs {
			if st.ENIs[j].PrimaryIP == addr.String() {
				en = &st.ENIs[j]
			}
		}
		switch {
		case en == nil:
			t.Errorf("pod %s %s address %s is no ENI's primary address in fake-ec2", p.Name, ifName, addr)
			continue
		case en.InstanceID != node.InstanceID || en.Card != a.Card || en.Status != "in-use" || !strings.EqualFold(en.MAC, in.MAC):
			t.Errorf("pod %s %s (%s, %s) is ENI %s: %s card %d %s MAC %s; want %s card %d", p.Name, ifName, addr, in.MAC,
				en.ID, en.InstanceID, en.Card, en.Status, en.MAC, node.InstanceID, a.Card)
		}
		s := statuses[i+1]
		want := nad.DefaultNamespace + "/" + nad.Name(a.Card, "exclusive")
		if s.Name != want || s.Interface != ifName || !slices.Equal(s.IPs, []string{addr.String()}) || !strings.EqualFold(s.Mac, in.MAC) {
			t.Errorf("pod %s network-status[%d] = %+v, want %s %s %s mac %s", p.Name, i+1, s, want, ifName, addr, in.MAC)
		}
		if mtu, ok := a.CNIArgs["mtu"]; ok && fmt.Sprint(mtu) != fmt.Sprint(in.MTU) {
			t.Errorf("pod %s %s MTU %d, want %v from cni-args", p.Name, ifName, in.MTU, mtu)
		}
		summary = append(summary, fmt.Sprintf("%s=%s(card %d %s)", ifName, addr, a.Card, en.ID))
	}
	t.Logf("pod %s on %s: %s", p.Name, node.Name, strings.Join(summary, " "))
	return got
}

// ping sends one ping from the pod's interface to addr (kubectl exec ... ping -I).
func (e *Env) ping(ctx context.Context, pod, ifName string, to netip.Addr) error {
	out, err := e.Kubectl(ctx, nil, "exec", pod, "--", "ping", "-c", "1", "-W", "3", "-I", ifName, to.String())
	if err != nil {
		return fmt.Errorf("ping %s from %s %s: %w\n%s", to, pod, ifName, err, out)
	}
	return nil
}

func (e *Env) node(name string) *Node {
	for _, n := range e.Nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// allocated sums multinic_card_allocated over the cards, from the agent's /metrics inside the node.
func (e *Env) allocated(ctx context.Context, n *Node) (int, error) {
	body, err := n.NodeGet(ctx, "http://"+agentMetricsAddr+"/metrics")
	if err != nil {
		return 0, err
	}
	total := 0
	for _, l := range strings.Split(body, "\n") {
		if strings.HasPrefix(l, "multinic_card_allocated{") {
			var v float64
			fmt.Sscan(l[strings.LastIndexByte(l, ' ')+1:], &v)
			total += int(v)
		}
	}
	return total, nil
}

// checkFreed waits until no agent holds an allocation and no pod netns is left on any node.
func (e *Env) checkFreed(ctx context.Context, t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		var held []string
		for _, n := range e.Nodes {
			k, err := e.allocated(ctx, n)
			if err != nil || k != 0 {
				held = append(held, fmt.Sprintf("%s: %d allocations (%v)", n.Name, k, err))
			}
		}
		if len(held) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("a minute after the pods were deleted: %v", held)
		}
		time.Sleep(time.Second)
	}
}
