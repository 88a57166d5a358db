//go:build e2e

package faults

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/multinic/multinic/e2e/cluster"
	"github.com/multinic/multinic/internal/testing/harness"
	"github.com/multinic/multinic/netconf"
)

// The fail-closed case that needs a real kube-apiserver: behind the e2e build tag, run by `make e2e`.

// TestReclaimAPIView (items 2 and 3): the agent's dead-pod reclaim with a real kube-apiserver. A static pod's
// runtime UID is its config hash, which the API server holds only in the mirror pod's annotations; a pod
// deleted from the API server whose netns is still there (its DEL not yet run) is not gone. Reclaim passes
// every 250 ms with a 1 s grace must take neither's address; the pods' DEL then frees everything. It needs
// the control plane's binaries, so `make e2e` runs it (with MULTINIC_E2E=1), not test-unit.
func TestReclaimAPIView(t *testing.T) {
	tools := cluster.RequireE2E(t) // make e2e runs it
	c := cluster.Start(t, cluster.Options{Tools: tools})
	fc := newFaultCase(t, "reclaim-api-view", netconf.ModeExclusive,
		"a static pod (runtime UID = config hash, mirror pod in the API) and a pod deleted from the API with its netns still there, reclaim every 250 ms, grace 1 s",
		"--kubeconfig", c.Kubeconfig, "--gc-grace", "1s", "--gc-interval", "250ms", "--publish-nads=false", "--node-resources=false")
	ctx := context.Background()
	pods := c.Client.CoreV1().Pods("default")
	for i := range rounds() {
		// apiPod creates p's API object (a mirror pod when hash is set) and gives p the UID the runtime would.
		apiPod := func(p *harness.Pod, hash string) {
			t.Helper()
			obj := &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace},
				Spec:       corev1.PodSpec{NodeName: fc.node.Name, Containers: []corev1.Container{{Name: "c", Image: "none"}}},
			}
			if hash != "" {
				obj.Annotations = map[string]string{"kubernetes.io/config.hash": hash, "kubernetes.io/config.mirror": hash,
					"kubernetes.io/config.source": "file"}
			}
			created, err := pods.Create(ctx, obj, metav1.CreateOptions{})
			if err != nil {
				t.Fatalf("create pod %s: %v", p.Name, err)
			}
			p.UID = string(created.UID)
			if hash != "" {
				p.UID = hash
			}
		}
		keeper := fc.newPod(t, fmt.Sprintf("keeper%d", i))
		static := fc.newPod(t, fmt.Sprintf("static%d-%s", i, fc.node.Name))
		deleted := fc.newPod(t, fmt.Sprintf("deleted%d", i))
		apiPod(keeper, "")
		apiPod(static, fmt.Sprintf("%032x", i+1))
		apiPod(deleted, "")
		var addErr error
		start := time.Now()
		for _, p := range []*harness.Pod{keeper, static, deleted} {
			if _, err := p.Attach(exclusive); err != nil {
				addErr = errors.Join(addErr, err)
			}
		}
		fc.run.addResult(time.Since(start), addErr)
		if addErr != nil {
			t.Fatal(addErr)
		}
		// Grace 0: there is no kubelet to confirm a graceful deletion, the object goes at once.
		if err := pods.Delete(ctx, deleted.Name, *metav1.NewDeleteOptions(0)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(4 * time.Second) // 16 reclaim passes, 4 grace periods
		requireKept(t, fc.node, keeper, static, deleted)
		fc.note("the static pod and the API-deleted pod with a live netns kept their ENIs")
		for _, p := range []*harness.Pod{keeper, static} {
			if err := pods.Delete(ctx, p.Name, *metav1.NewDeleteOptions(0)); err != nil {
				t.Fatal(err)
			}
		}
		fc.endRound(t, i, keeper, static, deleted)
	}
	fc.finish(t)
}
