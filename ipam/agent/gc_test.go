package agent

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/multinic/multinic/ipam/api"
)

// TestGCNetns: without an API server, an allocation whose netns path is gone is released after the grace
// period (and a second look), not before; live netns and allocations without a netns are untouched.
func TestGCNetns(t *testing.T) {
	ta := newTestAgent(t, newFakePools(1, 2), map[int]int{1: 4, 2: 4}, func(c *Config) { c.GCGrace = time.Minute })
	ctx := context.Background()
	nsDir := t.TempDir()
	mkNetns := func(name string) string {
		p := filepath.Join(nsDir, name)
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	dead := req(1, "c-dead", "net1", "dead")
	dead.Netns = mkNetns("dead")
	dead2 := req(2, "c-dead", "net2", "dead")
	dead2.Netns = dead.Netns
	live := req(1, "c-live", "net1", "live")
	live.Netns = mkNetns("live")
	nonetns := req(1, "c-nons", "net1", "nons")
	for _, r := range []api.AllocateRequest{dead, dead2, live, nonetns} {
		if _, err := ta.Allocate(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Remove(dead.Netns); err != nil {
		t.Fatal(err)
	}

	steps := []struct {
		advance time.Duration
		want    int // released by this pass
	}{
		{0, 0},                // first seen gone
		{30 * time.Second, 0}, // within the grace period
		{31 * time.Second, 2}, // grace over: both of the dead pod's allocations
		{10 * time.Minute, 0}, // nothing else, ever
	}
	for i, s := range steps {
		ta.clock.Step(s.advance)
		n, err := ta.CollectGarbage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if n != s.want {
			t.Fatalf("pass %d: released %d, want %d", i, n, s.want)
		}
	}
	left := map[string]bool{}
	for _, al := range ta.alloc.List() {
		left[al.ContainerID] = true
	}
	if len(left) != 2 || !left["c-live"] || !left["c-nons"] {
		t.Errorf("left %v, want c-live and c-nons", left)
	}
	if st := ta.alloc.Stats(1); st.Allocated != 2 || st.Warm+st.Cooling != 2 {
		t.Errorf("card 1 stats %+v, want the dead pod's address back in the pool", st)
	}
	if got := gaugeValue(t, ta.Agent, "multinic_gc_releases_total", map[string]string{"reason": "netns-gone"}); got != 2 {
		t.Errorf("multinic_gc_releases_total{reason=netns-gone} = %v, want 2", got)
	}
}

// TestGCNetnsComesBack: a netns that reappears before the grace period ends (a slow mount) is not released.
func TestGCNetnsComesBack(t *testing.T) {
	ta := newTestAgent(t, newFakePools(1), map[int]int{1: 2}, func(c *Config) { c.GCGrace = time.Minute })
	ctx := context.Background()
	r := req(1, "c1", "net1", "p1")
	r.Netns = filepath.Join(t.TempDir(), "ns")
	if _, err := ta.Allocate(ctx, r); err != nil {
		t.Fatal(err)
	}
	if n, _ := ta.CollectGarbage(ctx); n != 0 {
		t.Fatal("released on the first look")
	}
	if err := os.WriteFile(r.Netns, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	ta.clock.Step(30 * time.Second)
	ta.CollectGarbage(ctx)
	if err := os.Remove(r.Netns); err != nil {
		t.Fatal(err)
	}
	ta.clock.Step(45 * time.Second) // 75s since first seen, but only 0s since seen gone again
	if n, _ := ta.CollectGarbage(ctx); n != 0 {
		t.Fatal("released although the grace period restarted when the netns came back")
	}
	ta.clock.Step(time.Minute)
	if n, _ := ta.CollectGarbage(ctx); n != 1 {
		t.Fatal("not released after a full grace period gone")
	}
}

func pod(ns, name, uid, node string, phase corev1.PodPhase) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID(uid)},
		Spec:       corev1.PodSpec{NodeName: node},
		Status:     corev1.PodStatus{Phase: phase},
	}
}

// TestGCAPIServer: with an API server, an allocation is released once its pod is no longer in the node's
// pod list (deleted, replaced by a pod of the same name with another UID, on another node, or finished),
// after the grace period; live pods are untouched even when their netns path does not exist.
func TestGCAPIServer(t *testing.T) {
	kube := fake.NewClientset(
		pod("default", "live", "uid-live", "node-a", corev1.PodRunning),
		pod("default", "recreated", "uid-new", "node-a", corev1.PodRunning),
		pod("default", "moved", "uid-moved", "node-b", corev1.PodRunning),
		pod("default", "done", "uid-done", "node-a", corev1.PodSucceeded),
		pod("default", "deleted", "uid-deleted", "node-a", corev1.PodRunning),
	)
	var selectors []string
	kube.PrependReactor("list", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		selectors = append(selectors, a.(k8stesting.ListAction).GetListRestrictions().Fields.String())
		return false, nil, nil
	})
	ta := newTestAgent(t, newFakePools(1), map[int]int{1: 8}, func(c *Config) {
		c.Kube = kube
		c.NodeName = "node-a"
		c.GCGrace = time.Minute
	})
	ctx := context.Background()
	for i, name := range []string{"live", "recreated", "moved", "done", "deleted"} {
		r := req(1, "c-"+name, "net1", name)
		r.Netns = "/nonexistent/netns/" + name // must not matter with an API server
		if i == 1 {
			r.PodUID = "uid-old"
		}
		if _, err := ta.Allocate(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	if err := kube.CoreV1().Pods("default").Delete(ctx, "deleted", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if n, err := ta.CollectGarbage(ctx); n != 0 || err != nil {
		t.Fatalf("first pass released %d (%v), want 0", n, err)
	}
	ta.clock.Step(59 * time.Second)
	if n, _ := ta.CollectGarbage(ctx); n != 0 {
		t.Fatalf("released %d within the grace period", n)
	}
	ta.clock.Step(2 * time.Second)
	if n, err := ta.CollectGarbage(ctx); n != 4 || err != nil {
		t.Fatalf("released %d (%v) after the grace period, want 4", n, err)
	}
	if list := ta.alloc.List(); len(list) != 1 || list[0].PodName != "live" {
		t.Errorf("left %+v, want only the live pod's allocation", list)
	}
	if len(selectors) == 0 || selectors[0] != "spec.nodeName=node-a" {
		t.Errorf("pod list field selectors %q, want spec.nodeName=node-a", selectors)
	}
	if got := gaugeValue(t, ta.Agent, "multinic_gc_releases_total", map[string]string{"reason": "pod-gone"}); got != 4 {
		t.Errorf("multinic_gc_releases_total{reason=pod-gone} = %v, want 4", got)
	}
}

// TestGCAPIServerDown: a failing pod list releases nothing, however long it fails.
func TestGCAPIServerDown(t *testing.T) {
	kube := fake.NewClientset()
	kube.PrependReactor("list", "pods", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, errors.New("connection refused")
	})
	ta := newTestAgent(t, newFakePools(1), map[int]int{1: 2}, func(c *Config) { c.Kube = kube; c.NodeName = "n" })
	if _, err := ta.Allocate(context.Background(), req(1, "c1", "net1", "p1")); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		ta.clock.Step(time.Hour)
		if n, err := ta.CollectGarbage(context.Background()); n != 0 || err == nil {
			t.Fatalf("pass with the API server down: released %d, error %v; want 0 and an error", n, err)
		}
	}
}

// TestGCNetnsAfterRestart: a restarted agent knows each allocation's netns from the checkpoint and frees
// the allocations of a netns that went away.
func TestGCNetnsAfterRestart(t *testing.T) {
	ta := newTestAgent(t, newFakePools(1), map[int]int{1: 2}, func(c *Config) { c.GCGrace = time.Minute })
	ctx := context.Background()
	dead := req(1, "c-dead", "net1", "dead")
	dead.Netns = filepath.Join(t.TempDir(), "dead")
	if err := os.WriteFile(dead.Netns, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ta.Allocate(ctx, dead); err != nil {
		t.Fatal(err)
	}
	ta = ta.restart(t)
	if err := os.Remove(dead.Netns); err != nil {
		t.Fatal(err)
	}
	ta.CollectGarbage(ctx)
	ta.clock.Step(time.Minute)
	if n, err := ta.CollectGarbage(ctx); n != 1 || err != nil {
		t.Fatalf("released %d (%v) after the grace period, want 1", n, err)
	}
	if list := ta.alloc.List(); len(list) != 0 {
		t.Errorf("left %+v, want nothing", list)
	}
}
