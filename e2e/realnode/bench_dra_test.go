//go:build e2e

package realnode

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/multinic/multinic/dra"
	"github.com/multinic/multinic/e2e/bench"
)

// BenchDRAEnv turns on the DRA+NRI vs DRA+Multus benchmark (make bench's realnode step): it takes a few
// minutes more than the real-node cases.
const BenchDRAEnv = "MULTINIC_BENCH_DRA"

// Rounds of the DRA+NRI vs DRA+Multus benchmark, each side once per round, after one warm-up per side.
const (
	benchDRARounds = 5
	benchDRAWarmup = 1
)

// multusClaimPod is a testPod with every card's exclusive NAD that also claims the cards from template, as
// a pod must when the agent runs with --dra: each NAD attachment takes its claimed card over.
func multusClaimPod(p testPod, template string) string {
	var obj map[string]any
	_ = json.Unmarshal([]byte(p.manifest()), &obj)
	spec := obj["spec"].(map[string]any)
	spec["resourceClaims"] = []any{map[string]any{"name": "cards", "resourceClaimTemplateName": template}}
	c := spec["containers"].([]any)[0].(map[string]any)
	c["resources"].(map[string]any)["claims"] = []any{map[string]any{"name": "cards"}}
	b, _ := json.Marshal(obj)
	return string(b)
}

// timeToReady creates the pod of manifest with the API client and returns the time from the create call to
// the first watch event that shows it Ready (its container running). It fails the test after podTimeout.
func (e *Env) timeToReady(ctx context.Context, t *testing.T, manifest string) time.Duration {
	t.Helper()
	var pod corev1.Pod
	if err := json.Unmarshal([]byte(manifest), &pod); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(ctx, podTimeout)
	defer cancel()
	w, err := e.Client.CoreV1().Pods("default").Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + pod.Name})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	start := time.Now()
	if _, err := e.Client.CoreV1().Pods("default").Create(ctx, &pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for ev := range w.ResultChan() {
		if p, ok := ev.Object.(*corev1.Pod); ok && ev.Type != watch.Deleted && podReady(p) {
			return time.Since(start)
		}
	}
	t.Fatalf("pod %s not Ready in %s:\n%s", pod.Name, podTimeout, e.describePod(context.WithoutCancel(ctx), pod.Name))
	return 0
}

// benchDRANRIvsMultus: the time from a pod's creation to Running with 7 exclusive cards on one node, through
// DRA + the NRI plugin (a claim, no NAD) against DRA + Multus thin (the same claim and the 7 NADs), same run,
// sides alternating, each pod deleted and every allocation freed before the next. Checked per pod, untimed:
// the 7 interfaces are there (card<N> or net<N>). Prints one BENCHRESULT line.
func benchDRANRIvsMultus(ctx context.Context, t *testing.T, e *Env, image string) {
	if os.Getenv(BenchDRAEnv) != "1" {
		t.Skipf("the DRA+NRI vs Multus benchmark (issue 15, figure 8) runs in the real-node e2e with %s=1 (make bench)", BenchDRAEnv)
	}
	if e.kind != "" {
		t.Skip("kind: its node image's containerd runs with NRI off")
	}
	installAgent(ctx, t, e, image, allCards, "dra", "nri")
	if err := e.InstallMultus(ctx, MultusThin); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := e.UninstallMultus(context.WithoutCancel(ctx)); err != nil {
			t.Error(err)
		}
	})
	n := e.Nodes[0]
	var exclusive []string
	for _, c := range allCards {
		exclusive = append(exclusive, dra.DeviceName(c, "exclusive"))
	}
	waitSliceDevices(ctx, t, e, n.Name, exclusive)
	const template = "bench-7-cards"
	if out, err := e.Kubectl(ctx, strings.NewReader(claimTemplate(template, len(allCards))), "apply", "-f", "-"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	var atts []attachment
	for _, c := range allCards {
		atts = append(atts, attachment{Card: c})
	}
	sides := []struct {
		name     string
		manifest func(pod string) string
		ifName   func(i int) string
	}{
		{"DRA+NRI", func(pod string) string { return nriPod(pod, n.Name, template) },
			func(i int) string { return dra.ClaimIfName(allCards[i]) }},
		{"DRA+Multus", func(pod string) string { return multusClaimPod(testPod{Name: pod, Node: n.Name, Atts: atts}, template) },
			func(i int) string { return fmt.Sprintf("net%d", i+1) }},
	}
	times := make([][]time.Duration, len(sides))
	for round := range benchDRAWarmup + benchDRARounds {
		for k := range sides {
			k := (k + round) % len(sides) // A B, B A, ...
			s := sides[k]
			pod := fmt.Sprintf("bench-%s-%d", strings.ToLower(strings.ReplaceAll(s.name, "+", "-")), round)
			d := e.timeToReady(ctx, t, s.manifest(pod))
			ifaces := e.podIfaces(ctx, t, pod)
			for i := range allCards {
				if in := ifaces[s.ifName(i)]; in == nil || len(in.Addrs) != 1 {
					t.Errorf("%s pod %s: %s = %+v, want one address", s.name, pod, s.ifName(i), in)
				}
			}
			e.deletePod(ctx, t, pod)
			e.checkFreed(ctx, t)
			if round >= benchDRAWarmup {
				times[k] = append(times[k], d)
			}
			t.Logf("round %d %s: %s to Ready", round, s.name, d.Round(time.Millisecond))
		}
	}
	ms := func(d []time.Duration) bench.Stat { return bench.Summarize(bench.Millis(d)) }
	row := bench.Compare("pod creation to Ready, 7 exclusive cards", "ms", ms(times[0]), ms(times[1]), 0)
	r := bench.Result{
		Figure: 8, Key: "dra-nri-vs-multus-7-cards", Part: "realnode", Machine: bench.ThisMachine(), Date: time.Now().UTC(),
		Title:      "A pod with 7 cards from creation to Running: DRA + NRI vs DRA + Multus, real kubelet and containerd",
		Iterations: benchDRARounds, Ours: "DRA + NRI (no NAD)", Ref: "DRA + Multus thin (7 NADs)", Rows: []bench.Row{row},
		Notes: []string{
			"Measured: from the API client's Create of the Pod to the first watch event showing it Ready (its one busybox container running; no probes), on the real-node e2e (make e2e-node: kubelet " + "v1.37.2" + " and containerd v2.4.2 with NRI on, kube-scheduler, the agent's DaemonSet with manifests/dra and manifests/nri, fake-ec2 in place of EC2).",
			"Both sides: one ResourceClaimTemplate " + template + " for 7 exclusive multinic.io devices (cards 1-7 of the node), allocated by the real scheduler, prepared by the agent's kubelet plugin (one exclusive ENI per card). DRA + NRI: no Multus annotation; the NRI plugin asks the agent for the pod's claims at RunPodSandbox and moves the 7 ENIs in (card<N>). DRA + Multus: Multus thin (installed) gets the 7 exclusive NADs, each CNI ADD checks the pod's claims and takes the prepared ENI over (net<N>).",
			fmt.Sprintf("Sides alternate (A B, B A, ...), %d warm-up round per side not counted; each pod is checked (untimed: 7 interfaces with one address), deleted, and every allocation freed (the agents' metrics) before the next.", benchDRAWarmup),
		},
	}
	if err := bench.Emit(os.Stdout, r); err != nil {
		t.Fatal(err)
	}
	t.Logf("pod to Ready p50: DRA+NRI %.0f ms, DRA+Multus %.0f ms (%.2fx)", row.Ours.Value, row.Ref.Value, row.Ratio)
}
