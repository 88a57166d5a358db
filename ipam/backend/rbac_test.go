package backend

import (
	"context"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// TestPolicyRulesCoverReclaim: every API call the reclaim's pod view and passes make (list, then watch) is one
// PolicyRules grants, and reclaim makes at least one, so that the ClusterRole built from PolicyRules is what the
// agent needs.
func TestPolicyRulesCoverReclaim(t *testing.T) {
	kube := fake.NewClientset(pod("default", "live", "uid-live", "node-a", corev1.PodRunning))
	ta := newTestBackend(t, newFakePools(1), map[int]int{1: 2}, func(c *Config) {
		c.Kube = kube
		c.NodeName = "node-a"
		c.ReclaimGrace = time.Second
	})
	startPodView(t, ta)
	ctx := context.Background()
	if _, err := ta.Allocate(ctx, req(1, "c-gone", "net1", "gone")); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := ta.ReclaimGonePods(ctx); err != nil {
			t.Fatal(err)
		}
		ta.clock.Step(2 * time.Second)
	}
	acts := kube.Actions()
	if len(acts) == 0 {
		t.Fatal("reclaim made no API call")
	}
	for _, call := range notGranted(acts) {
		t.Errorf("reclaim called %s, not granted by PolicyRules", call)
	}
}

// notGranted returns the calls among acts that PolicyRules does not grant, as "verb group/resource".
func notGranted(acts []k8stesting.Action) []string {
	var out []string
	for _, a := range acts {
		res := a.GetResource().Resource
		if s := a.GetSubresource(); s != "" {
			res += "/" + s
		}
		ok := false
		for _, r := range PolicyRules {
			if slices.Contains(r.APIGroups, a.GetResource().Group) && slices.Contains(r.Resources, res) && slices.Contains(r.Verbs, a.GetVerb()) {
				ok = true
			}
		}
		if !ok {
			out = append(out, a.GetVerb()+" "+a.GetResource().Group+"/"+res)
		}
	}
	return out
}
