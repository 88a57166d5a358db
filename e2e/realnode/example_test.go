//go:build e2e

package realnode

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/tarball"
	corev1 "k8s.io/api/core/v1"

	"github.com/multinic/multinic/internal/testing/fakeec2"
	"github.com/multinic/multinic/internal/testing/harness"
	"github.com/multinic/multinic/manifests"
	"github.com/multinic/multinic/nad"
)

// exampleExclusive is the example pod's exclusive variant, applied unchanged: this host's kernel has no
// ipvlan, so examples/pod.yaml (ipvlan on cards 1 and 2) runs in the test VM's Multus e2e instead.
const exampleExclusive = "examples/pod-exclusive.yaml"

// examplePod decodes an example pod of manifests/.
func examplePod(t *testing.T, file string) *corev1.Pod {
	t.Helper()
	docs, err := manifests.Documents(file)
	if err != nil || len(docs) != 1 {
		t.Fatalf("manifests/%s: want one document: %d, %v", file, len(docs), err)
	}
	var p corev1.Pod
	if err := json.Unmarshal(docs[0], &p); err != nil || p.Kind != "Pod" || len(p.Spec.Containers) == 0 {
		t.Fatalf("manifests/%s: want a pod: %v", file, err)
	}
	return &p
}

var exclusiveNAD = regexp.MustCompile(`^` + nad.DefaultNamespace + `/multinic-card-(\d+)-exclusive$`)

// testExamplePod: kubectl apply -f manifests/examples/pod-exclusive.yaml as it is; the scheduler places it
// on a node serving its cards, it runs, and from inside (kubectl exec) it has net1-net3 with the cards'
// addresses (matching network-status and fake-ec2), a rule and a default route per card, and eth0's
// default route untouched; kubectl delete -f frees everything.
func testExamplePod(ctx context.Context, t *testing.T, e *Env) {
	file, err := filepath.Abs(filepath.Join("..", "..", "manifests", exampleExclusive))
	if err != nil {
		t.Fatal(err)
	}
	ex := examplePod(t, exampleExclusive)
	p := testPod{Name: ex.Name}
	for _, ref := range strings.Split(ex.Annotations[nad.NetworksAnnotation], ",") {
		m := exclusiveNAD.FindStringSubmatch(strings.TrimSpace(ref))
		if m == nil {
			t.Fatalf("%s asks for %q: want only exclusive NADs here (no ipvlan in this kernel)", exampleExclusive, ref)
		}
		var card int
		fmt.Sscan(m[1], &card)
		p.Atts = append(p.Atts, attachment{Card: card})
	}
	start := time.Now()
	if out, err := e.Kubectl(ctx, nil, "apply", "-f", file); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if out, err := e.Kubectl(ctx, nil, "wait", "--for=condition=Ready", "pod/"+ex.Name, fmt.Sprintf("--timeout=%s", podTimeout)); err != nil {
		t.Fatalf("pod %s not Ready: %v\n%s\n%s", ex.Name, err, out, e.describePod(ctx, ex.Name))
	}
	t.Logf("kubectl apply -f manifests/%s: Ready in %s", exampleExclusive, time.Since(start).Round(100*time.Millisecond))
	addrs := e.checkPod(ctx, t, p)
	e.checkRoutes(ctx, t, p, addrs)
	if out, err := e.Kubectl(ctx, nil, "delete", "-f", file, "--wait=true", "--timeout=2m"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	e.checkFreed(ctx, t)
}

// checkRoutes asserts the pod's policy routing from inside (kubectl exec ip): per attachment the rule
// "from <address> lookup <1000+card>" at priority 1000 and, in that table, the default route via the
// card's subnet router on the interface; the pod's own default route stays on eth0.
func (e *Env) checkRoutes(ctx context.Context, t *testing.T, p testPod, addrs map[string]netip.Addr) {
	t.Helper()
	rules, err := e.Kubectl(ctx, nil, "exec", p.Name, "--", "ip", "-4", "rule")
	if err != nil {
		t.Fatal(err)
	}
	main, err := e.Kubectl(ctx, nil, "exec", p.Name, "--", "ip", "-4", "route")
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`(?m)^default via \S+ dev eth0\b`).MatchString(main) {
		t.Errorf("pod %s: main table has no default route on eth0:\n%s", p.Name, main)
	}
	st, err := e.State(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var summary []string
	for i, a := range p.Atts {
		ifName, addr := p.ifName(i), addrs[p.ifName(i)]
		table := 1000 + a.Card
		rule := regexp.MustCompile(fmt.Sprintf(`(?m)^1000:\s+from %s lookup %d\s*$`, regexp.QuoteMeta(addr.String()), table))
		if !addr.IsValid() || !rule.MatchString(rules) {
			t.Errorf("pod %s %s (%s): no rule 'from %s lookup %d' at 1000 in:\n%s", p.Name, ifName, addr, addr, table, rules)
			continue
		}
		routes, err := e.Kubectl(ctx, nil, "exec", p.Name, "--", "ip", "-4", "route", "show", "table", fmt.Sprint(table))
		if err != nil {
			t.Fatal(err)
		}
		subnet, _ := st.Subnet(fakeec2.CardSubnetID(a.Card))
		gw := harness.Gateway(netip.MustParsePrefix(subnet.CIDR))
		want := regexp.MustCompile(fmt.Sprintf(`(?m)^default via %s dev %s\b`, regexp.QuoteMeta(gw.String()), ifName))
		if !want.MatchString(routes) {
			t.Errorf("pod %s table %d: want 'default via %s dev %s', got:\n%s", p.Name, table, gw, ifName, routes)
		}
		summary = append(summary, fmt.Sprintf("%s: from %s lookup %d, default via %s", ifName, addr, table, gw))
	}
	t.Logf("pod %s routing: %s", p.Name, strings.Join(summary, "; "))
}

// testImageImport: bin/multinic-image.tar as `ctr -n k8s.io images import` takes it (the command run again
// here in each node; on kind, kind load image-archive runs it) gives containerd the image under make
// image's tag, with the archive's config as the image ID the CRI reports (crictl inspecti).
func testImageImport(ctx context.Context, t *testing.T, e *Env, im images) {
	img, err := tarball.ImageFromPath(im.path, nil)
	if err != nil {
		t.Fatal(err)
	}
	config, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range e.Nodes {
		if !n.kind {
			out, err := n.Exec(ctx, e.tools.ctr, "-n", "k8s.io", "images", "import", im.path)
			if err != nil || !strings.Contains(string(out), im.multinic) {
				t.Errorf("node %s: ctr -n k8s.io images import %s: %v\n%s", n.Name, im.path, err, out)
			}
		}
		out, err := n.Crictl(ctx, "inspecti", "-o", "json", im.multinic)
		if err != nil {
			t.Fatalf("node %s: crictl inspecti %s: %v\n%s", n.Name, im.multinic, err, out)
		}
		var r struct {
			Status struct {
				ID       string   `json:"id"`
				RepoTags []string `json:"repoTags"`
			} `json:"status"`
		}
		if err := json.Unmarshal(out, &r); err != nil {
			t.Fatalf("node %s: crictl inspecti: %v\n%s", n.Name, err, out)
		}
		if r.Status.ID != config.String() || !slices.Contains(r.Status.RepoTags, im.multinic) {
			t.Errorf("node %s: containerd has %s as %s %v, want ID %s (the archive's config)", n.Name, im.multinic, r.Status.ID, r.Status.RepoTags, config)
		}
		t.Logf("node %s: %s imported, image ID %s", n.Name, im.multinic, r.Status.ID)
	}
}
