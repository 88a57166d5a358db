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

// podTimes is how long after its creation a pod was first seen Running and first seen Ready.
type podTimes struct{ running, ready time.Duration }

// timeToRunning creates the pod of manifest with the API client and returns the times from the create call
// to the first watch event with status.phase Running (the kubelet has started its container) and to the
// first with the Ready condition (no probes here: its container running, as the kubelet reports it, often in
// the same status update). It fails the test after podTimeout.
func (e *Env) timeToRunning(ctx context.Context, t *testing.T, manifest string) podTimes {
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
	var got podTimes
	for ev := range w.ResultChan() {
		p, ok := ev.Object.(*corev1.Pod)
		if !ok || ev.Type == watch.Deleted {
			continue
		}
		now := time.Since(start)
		if got.running == 0 && p.Status.Phase == corev1.PodRunning {
			got.running = now
		}
		if got.ready == 0 && podReady(p) {
			got.ready = now
		}
		if got.running > 0 && got.ready > 0 {
			return got
		}
	}
	t.Fatalf("pod %s not Running and Ready in %s (running after %s, ready after %s):\n%s", pod.Name, podTimeout, got.running, got.ready,
		e.describePod(context.WithoutCancel(ctx), pod.Name))
	return podTimes{}
}

// benchDRANRIvsMultus: the time from a pod's creation to Running (and to Ready) with 7 exclusive cards on
// one node, through DRA + the NRI plugin (a claim, no NAD) against DRA + Multus thin (the same claim and the 7
// NADs), same run, sides alternating, each pod deleted and every allocation freed before the next. Checked per
// pod, untimed: the 7 interfaces are there (card<N> or net<N>). Prints one BENCHRESULT line.
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
	// The Multus side: the 7 NADs and the claim, no multinic.io/card-N limits (the claim places the pod).
	withClaim := func(pod string) testPod { return testPod{Name: pod, Node: n.Name, Atts: atts, ClaimTemplate: template} }
	sides := []struct {
		name     string
		manifest func(pod string) string
		ifName   func(i int) string
	}{
		{"DRA+NRI", func(pod string) string { return nriPod(pod, n.Name, template) },
			func(i int) string { return dra.ClaimIfName(allCards[i]) }},
		{"DRA+Multus", func(pod string) string { return withClaim(pod).manifest() },
			func(i int) string { return fmt.Sprintf("net%d", i+1) }},
	}
	running, ready := make([][]time.Duration, len(sides)), make([][]time.Duration, len(sides))
	for round := range benchDRAWarmup + benchDRARounds {
		for k := range sides {
			k := (k + round) % len(sides) // A B, B A, ...
			s := sides[k]
			pod := fmt.Sprintf("bench-%s-%d", strings.ToLower(strings.ReplaceAll(s.name, "+", "-")), round)
			d := e.timeToRunning(ctx, t, s.manifest(pod))
			ifaces := e.podIfaces(ctx, t, pod)
			for i := range allCards {
				if in := ifaces[s.ifName(i)]; in == nil || len(in.Addrs) != 1 {
					t.Errorf("%s pod %s: %s = %+v, want one address", s.name, pod, s.ifName(i), in)
				}
			}
			e.deletePod(ctx, t, pod)
			e.checkFreed(ctx, t)
			if round >= benchDRAWarmup {
				running[k], ready[k] = append(running[k], d.running), append(ready[k], d.ready)
			}
			t.Logf("round %d %s: %s to Running, %s to Ready", round, s.name, d.running.Round(time.Millisecond), d.ready.Round(time.Millisecond))
		}
	}
	ms := func(d []time.Duration) bench.Stat { return bench.Summarize(bench.Millis(d)) }
	row := bench.Compare("pod creation to Running, 7 exclusive cards", "ms", ms(running[0]), ms(running[1]), 0)
	r := bench.Result{
		Figure: 8, Key: "dra-nri-vs-multus-7-cards", Part: "realnode", Machine: bench.ThisMachine(), Date: time.Now().UTC(),
		Title:      "A 7-card pod from creation to Running (status.phase): DRA + NRI vs DRA + Multus, real kubelet and containerd",
		Iterations: benchDRARounds, Ours: "DRA + NRI (no NAD)", Ref: "DRA + Multus thin (7 NADs)",
		Rows: []bench.Row{row, bench.Compare("pod creation to Ready, 7 exclusive cards", "ms", ms(ready[0]), ms(ready[1]), 0)},
		Notes: []string{
			"Measured: from the API client's Create of the Pod to the first watch event with status.phase Running (the kubelet started its one busybox container, so the sandbox and its 7 interfaces were made before), the issue's \"time from pod creation to Running\", the headline row; the second row is to the first watch event with the Ready condition (no probes: the container running, as the kubelet reports it, usually in the same status update). On the real-node e2e (make e2e-node: kubelet v1.37.2 and containerd v2.4.2 with NRI on, kube-scheduler, the agent's DaemonSet with manifests/dra and manifests/nri, fake-ec2 in place of EC2).",
			"Both sides: one ResourceClaimTemplate " + template + " for 7 exclusive multinic.io devices (cards 1-7 of the node), allocated by the real scheduler, prepared by the agent's kubelet plugin (one exclusive ENI per card). DRA + NRI: no Multus annotation; the NRI plugin asks the agent for the pod's claims at RunPodSandbox and moves the 7 ENIs in (card<N>). DRA + Multus: Multus thin (installed) gets the 7 exclusive NADs, each CNI ADD checks the pod's claims and takes the prepared ENI over (net<N>). Multus without DRA (NADs with multinic.io/card-N resources, no claim) is not a side: the agent with --dra refuses a NAD attachment no claim of the pod holds.",
			fmt.Sprintf("Sides alternate (A B, B A, ...), %d warm-up round per side not counted; each pod is checked (untimed: 7 interfaces with one address), deleted, and every allocation freed (the agents' metrics) before the next.", benchDRAWarmup),
		},
	}
	if err := bench.Emit(os.Stdout, r); err != nil {
		t.Fatal(err)
	}
	t.Logf("pod to Running p50: DRA+NRI %.0f ms, DRA+Multus %.0f ms (%.2fx)", row.Ours.Value, row.Ref.Value, row.Ratio)
}
