//go:build e2e

package realnode

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/multinic/multinic/internal/testing/fakeec2"
	"github.com/multinic/multinic/nad"
)

// The cards the DaemonSet's agents serve: first every card but 0 and 7 of the instance type, then (the
// scheduling case rolls them out) every card but 0.
var (
	firstCards = []int{1, 2, 3, 4, 5, 6}
	allCards   = []int{1, 2, 3, 4, 5, 6, 7}
)

// installAgent applies manifests/ through a kustomize overlay (the image built by make image, the agent
// pointed at fake-ec2, the components of manifests/ named) and waits for the DaemonSet's rollout: a pod
// Ready on every node.
func installAgent(ctx context.Context, t *testing.T, e *Env, image string, cards []int, components ...string) {
	t.Helper()
	name, tag, ok := strings.Cut(image, ":")
	if !ok {
		t.Fatalf("image %q has no tag", image)
	}
	dir := t.TempDir()
	manifests, err := filepath.Abs(filepath.Join("..", "..", "manifests"))
	if err != nil {
		t.Fatal(err)
	}
	it, _ := fakeec2.LookupInstanceType(e.instanceType())
	o := AgentOverlay{ImageName: name, ImageTag: tag, ManagedCards: cards, Cards: it.NetworkCards, Components: components}
	if err := o.Write(dir, manifests); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if out, err := e.Kubectl(ctx, nil, "apply", "-k", dir); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if out, err := e.Kubectl(ctx, nil, "-n", "kube-system", "rollout", "status", "daemonset/multinic-agent", "--timeout=4m"); err != nil {
		t.Fatalf("%v\n%s\n%s", err, out, e.describe(ctx, "kube-system", "app.kubernetes.io/name=multinic-agent"))
	}
	t.Logf("kubectl apply -k (manifests/ + overlay): DaemonSet rolled out on %d nodes in %s", len(e.Nodes), time.Since(start).Round(100*time.Millisecond))
}

// testDaemonSet: the agent pods are Ready on every node, the init container installed the plugin, the
// agents published the NADs and the cards on their Nodes, /readyz and /metrics answer inside the node.
func testDaemonSet(ctx context.Context, t *testing.T, e *Env, image string) {
	installAgent(ctx, t, e, image, firstCards)
	// The DaemonSet's status can count a pod available a moment before the API shows that pod Ready (seen
	// once: node1's pod became Ready 0.2 s after rollout status returned): wait for the pods as kubectl
	// would. Here only, on the first install: in a rollout the old pods may still be terminating.
	if out, err := e.Kubectl(ctx, nil, "-n", "kube-system", "wait", "--for=condition=Ready", "pod",
		"-l", "app.kubernetes.io/name=multinic-agent", "--timeout=2m"); err != nil {
		t.Fatalf("%v\n%s\n%s", err, out, e.describe(ctx, "kube-system", "app.kubernetes.io/name=multinic-agent"))
	}
	pods, err := e.Client.CoreV1().Pods("kube-system").List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=multinic-agent"})
	if err != nil {
		t.Fatal(err)
	}
	var onNodes []string
	for _, p := range pods.Items {
		if podReady(&p) {
			onNodes = append(onNodes, p.Spec.NodeName)
		}
	}
	slices.Sort(onNodes)
	if want := e.nodeNames(); !slices.Equal(onNodes, want) {
		t.Errorf("agent pods Ready on %v, want one on each of %v", onNodes, want)
	}
	for _, n := range e.Nodes {
		// The init container's copy: the host's (node's) /opt/cni/bin/multinic answers VERSION.
		out, err := n.Exec(ctx, "env", "CNI_COMMAND=VERSION", "/opt/cni/bin/multinic")
		if err != nil || !strings.Contains(string(out), `"1.1.0"`) {
			t.Errorf("node %s: /opt/cni/bin/multinic VERSION: %v: %s", n.Name, err, out)
		}
		// /readyz and /metrics from inside the node (the agent listens on the node's loopback).
		if body, err := n.NodeGet(ctx, "http://"+agentMetricsAddr+"/readyz"); err != nil {
			t.Error(err)
		} else {
			t.Logf("node %s /readyz: %s", n.Name, strings.TrimSpace(body))
		}
		body, err := n.NodeGet(ctx, "http://"+agentMetricsAddr+"/metrics")
		if err != nil {
			t.Error(err)
		}
		for _, c := range firstCards {
			if want := fmt.Sprintf(`multinic_card_managed{card="%d"} 1`, c); !strings.Contains(body, want) {
				t.Errorf("node %s /metrics lacks %q", n.Name, want)
			}
		}
	}
	checkPublished(ctx, t, e, firstCards)
}

// checkPublished waits until every Node advertises multinic.io/card-N for every managed card and the
// NADs of every card (both modes) exist in kube-system.
func checkPublished(ctx context.Context, t *testing.T, e *Env, cards []int) {
	t.Helper()
	nadGVR := schema.GroupVersionResource{Group: "k8s.cni.cncf.io", Version: "v1", Resource: "network-attachment-definitions"}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		var missing []string
		for _, n := range e.Nodes {
			node, err := e.Client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			for _, c := range cards {
				r := corev1.ResourceName(nad.ResourceName(nad.DefaultResourcePrefix, c))
				if q, ok := node.Status.Allocatable[r]; !ok || q.IsZero() {
					missing = append(missing, fmt.Sprintf("%s allocatable %s", n.Name, r))
				}
			}
		}
		list, err := e.Dynamic.Resource(nadGVR).Namespace("kube-system").List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		have := map[string]bool{}
		for _, it := range list.Items {
			have[it.GetName()] = true
		}
		for _, c := range cards {
			for _, mode := range []string{"ipvlan", "exclusive"} {
				if name := nad.Name(c, mode); !have[name] {
					missing = append(missing, "NAD kube-system/"+name)
				}
			}
		}
		if len(missing) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not published after 2m: %v", missing)
		}
		time.Sleep(time.Second)
	}
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
