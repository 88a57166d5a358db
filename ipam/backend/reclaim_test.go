package backend

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
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

// netnsDir is a directory standing for /var/run/netns: mk makes a "netns" file in it, as a runtime would.
type netnsDir string

func newNetnsDir(t *testing.T) netnsDir { return netnsDir(t.TempDir()) }

func (d netnsDir) mk(t *testing.T, name string) string {
	t.Helper()
	p := filepath.Join(string(d), name)
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func (d netnsDir) rm(t *testing.T, path string) {
	t.Helper()
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
}

// TestReclaimNetns: without an API server, an allocation whose netns path is gone is released after the grace
// period (and a second look), not before; live netns, allocations without a netns, and a netns path
// outside the configured netns directories (no evidence) are untouched.
func TestReclaimNetns(t *testing.T) {
	nsDir := newNetnsDir(t)
	ta := newTestBackend(t, newFakePools(1, 2), map[int]int{1: 4, 2: 4}, func(c *Config) {
		c.ReclaimGrace = time.Minute
		c.NetnsDirs = []string{string(nsDir)}
	})
	ctx := context.Background()
	dead := req(1, "c-dead", "net1", "dead")
	dead.Netns = nsDir.mk(t, "dead")
	dead2 := req(2, "c-dead", "net2", "dead")
	dead2.Netns = dead.Netns
	live := req(1, "c-live", "net1", "live")
	live.Netns = nsDir.mk(t, "live")
	nonetns := req(1, "c-nons", "net1", "nons")
	elsewhere := req(2, "c-elsewhere", "net1", "elsewhere")
	elsewhere.Netns = filepath.Join(t.TempDir(), "elsewhere") // never there: not evidence of anything
	for _, r := range []api.AllocateRequest{dead, dead2, live, nonetns, elsewhere} {
		if _, err := ta.Allocate(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	nsDir.rm(t, dead.Netns)

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
		n, err := ta.ReclaimGonePods(ctx)
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
	if len(left) != 3 || !left["c-live"] || !left["c-nons"] || !left["c-elsewhere"] {
		t.Errorf("left %v, want c-live, c-nons and c-elsewhere", left)
	}
	if st := ta.alloc.Stats(1); st.Allocated != 2 || st.Warm+st.Cooling != 2 {
		t.Errorf("card 1 stats %+v, want the dead pod's address back in the pool", st)
	}
	if got := gaugeValue(t, ta.Backend, "multinic_gc_releases_total", map[string]string{"reason": "netns-gone"}); got != 2 {
		t.Errorf("multinic_gc_releases_total{reason=netns-gone} = %v, want 2", got)
	}
	if !strings.Contains(strings.Join(ta.logs.Lines(), "\n"), "outside the netns directories") {
		t.Errorf("no log line about the netns outside the netns directories")
	}
}

// TestReclaimNetnsDirMissing: a configured netns directory that is not there (not mounted into the agent) says
// nothing about the netns that were in it.
func TestReclaimNetnsDirMissing(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "netns")
	ta := newTestBackend(t, newFakePools(1), map[int]int{1: 2}, func(c *Config) {
		c.ReclaimGrace = time.Second
		c.NetnsDirs = []string{dir}
	})
	r := req(1, "c1", "net1", "p1")
	r.Netns = filepath.Join(dir, "cni-1")
	if _, err := ta.Allocate(context.Background(), r); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		ta.clock.Step(time.Hour)
		if n, _ := ta.ReclaimGonePods(context.Background()); n != 0 {
			t.Fatal("released an allocation whose netns directory is not visible")
		}
	}
}

// TestReclaimNetnsComesBack: a netns that reappears before the grace period ends (a slow mount) is not released.
func TestReclaimNetnsComesBack(t *testing.T) {
	nsDir := newNetnsDir(t)
	ta := newTestBackend(t, newFakePools(1), map[int]int{1: 2}, func(c *Config) {
		c.ReclaimGrace = time.Minute
		c.NetnsDirs = []string{string(nsDir)}
	})
	ctx := context.Background()
	r := req(1, "c1", "net1", "p1")
	r.Netns = filepath.Join(string(nsDir), "ns")
	if _, err := ta.Allocate(ctx, r); err != nil {
		t.Fatal(err)
	}
	if n, _ := ta.ReclaimGonePods(ctx); n != 0 {
		t.Fatal("released on the first look")
	}
	nsDir.mk(t, "ns")
	ta.clock.Step(30 * time.Second)
	ta.ReclaimGonePods(ctx)
	nsDir.rm(t, r.Netns)
	ta.clock.Step(45 * time.Second) // 75s since first seen, but only 0s since seen gone again
	if n, _ := ta.ReclaimGonePods(ctx); n != 0 {
		t.Fatal("released although the grace period restarted when the netns came back")
	}
	ta.clock.Step(time.Minute)
	if n, _ := ta.ReclaimGonePods(ctx); n != 1 {
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

// mirrorPod is the API server's mirror of a static pod whose kubelet-side UID (the config hash) is hash.
func mirrorPod(ns, name, uid, hash, node string) *corev1.Pod {
	p := pod(ns, name, uid, node, corev1.PodRunning)
	p.Annotations = map[string]string{annotationConfigHash: hash, annotationConfigMirror: hash,
		"kubernetes.io/config.source": "file"}
	return p
}

// startPodView starts ta's pod view and waits for its first LIST, as Run does.
func startPodView(t *testing.T, ta *testBackend) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ta.pods.start(ctx)
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	defer wcancel()
	if !ta.pods.waitSynced(wctx) {
		t.Fatal("pod view did not sync")
	}
}

// waitPodView waits until the pod view (fed by a watch) agrees with cond.
func waitPodView(t *testing.T, ta *testBackend, cond func(map[podKey][]string) bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		pods, err := ta.pods.livePods()
		if err == nil && cond(pods) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pod view never reached the expected state: %v (%v)", pods, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestReclaimAPIServer: with an API server, an allocation is released once its pod is gone from the node's
// synced pod view (deleted, replaced by a pod of the same name with another UID, on another node, or
// finished) AND its recorded netns is gone too, after the grace period. A live pod whose netns path is
// gone, and a gone pod whose netns is still there, are both kept.
func TestReclaimAPIServer(t *testing.T) {
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
	nsDir := newNetnsDir(t)
	ta := newTestBackend(t, newFakePools(1), map[int]int{1: 8}, func(c *Config) {
		c.Kube = kube
		c.NodeName = "node-a"
		c.ReclaimGrace = time.Minute
		c.NetnsDirs = []string{string(nsDir)}
	})
	startPodView(t, ta)
	ctx := context.Background()
	for i, name := range []string{"live", "recreated", "moved", "done", "deleted", "netns-left"} {
		r := req(1, "c-"+name, "net1", name)
		r.Netns = nsDir.mk(t, name)
		if i == 1 {
			r.PodUID = "uid-old"
		}
		if _, err := ta.Allocate(ctx, r); err != nil {
			t.Fatal(err)
		}
		if name != "netns-left" {
			nsDir.rm(t, r.Netns) // the live pod's too: the API server's word keeps it
		}
	}
	if err := kube.CoreV1().Pods("default").Delete(ctx, "deleted", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitPodView(t, ta, func(p map[podKey][]string) bool { _, ok := p[podKey{"default", "deleted"}]; return !ok })
	if n, err := ta.ReclaimGonePods(ctx); n != 0 || err != nil {
		t.Fatalf("first pass released %d (%v), want 0", n, err)
	}
	ta.clock.Step(59 * time.Second)
	if n, _ := ta.ReclaimGonePods(ctx); n != 0 {
		t.Fatalf("released %d within the grace period", n)
	}
	ta.clock.Step(2 * time.Second)
	if n, err := ta.ReclaimGonePods(ctx); n != 4 || err != nil {
		t.Fatalf("released %d (%v) after the grace period, want 4", n, err)
	}
	left := map[string]bool{}
	for _, al := range ta.alloc.List() {
		left[al.PodName] = true
	}
	if len(left) != 2 || !left["live"] || !left["netns-left"] {
		t.Errorf("left %v, want the live pod's and the one whose netns is still there", left)
	}
	if len(selectors) == 0 || selectors[0] != "spec.nodeName=node-a" {
		t.Errorf("pod list field selectors %q, want spec.nodeName=node-a", selectors)
	}
	if got := gaugeValue(t, ta.Backend, "multinic_gc_releases_total", map[string]string{"reason": "pod-gone"}); got != 4 {
		t.Errorf("multinic_gc_releases_total{reason=pod-gone} = %v, want 4", got)
	}
}

// TestReclaimStaticPod: a static pod's runtime UID is the kubelet's config hash; the API server has its mirror
// pod under another UID with the hash in its annotations. reclaim must take the mirror pod for the live pod.
func TestReclaimStaticPod(t *testing.T) {
	kube := fake.NewClientset(
		mirrorPod("kube-system", "etcd-node-a", "uid-mirror", "hash-of-manifest", "node-a"),
		pod("default", "keeper", "uid-keeper", "node-a", corev1.PodRunning),
	)
	ta := newTestBackend(t, newFakePools(1), map[int]int{1: 4}, func(c *Config) {
		c.Kube = kube
		c.NodeName = "node-a"
		c.ReclaimGrace = time.Second
	})
	startPodView(t, ta)
	ctx := context.Background()
	static := api.AllocateRequest{Card: 1, ContainerID: "c-static", IfName: "net1",
		PodRef: api.PodRef{PodNamespace: "kube-system", PodName: "etcd-node-a", PodUID: "hash-of-manifest"}}
	keeper := req(1, "c-keeper", "net1", "keeper")
	keeper.PodUID = "uid-keeper"
	for _, r := range []api.AllocateRequest{static, keeper} {
		if _, err := ta.Allocate(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	for range 3 {
		ta.clock.Step(time.Minute)
		if n, err := ta.ReclaimGonePods(ctx); n != 0 || err != nil {
			t.Fatalf("reclaim released %d (%v): the static pod's allocation must stay", n, err)
		}
	}
	// The static pod replaced by one from another manifest: the hash no longer matches.
	if err := kube.CoreV1().Pods("kube-system").Delete(ctx, "etcd-node-a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := kube.CoreV1().Pods("kube-system").Create(ctx, mirrorPod("kube-system", "etcd-node-a", "uid-mirror-2", "hash-2", "node-a"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitPodView(t, ta, func(p map[podKey][]string) bool {
		uids := p[podKey{"kube-system", "etcd-node-a"}]
		return len(uids) > 0 && uids[0] == "uid-mirror-2"
	})
	ta.ReclaimGonePods(ctx)
	ta.clock.Step(time.Minute)
	if n, err := ta.ReclaimGonePods(ctx); n != 1 || err != nil {
		t.Fatalf("after the static pod was replaced reclaim released %d (%v), want 1", n, err)
	}
}

// TestReclaimRefusesAll: with a wrong node name the pod view is empty and every allocation looks gone; the pass
// frees nothing and says so in the log, the refusal metric and /readyz. Once the name is right the agent
// is ready again.
func TestReclaimRefusesAll(t *testing.T) {
	kube := fake.NewClientset(
		pod("default", "a", "uid-a", "node-a", corev1.PodRunning),
		pod("default", "b", "uid-b", "node-a", corev1.PodRunning),
	)
	mk := func(node string) *testBackend {
		return newTestBackend(t, newFakePools(1), map[int]int{1: 4}, func(c *Config) {
			c.Kube = kube
			c.NodeName = node
			c.ReclaimGrace = time.Second
		})
	}
	ta := mk("node-typo")
	startPodView(t, ta)
	ctx := context.Background()
	for _, name := range []string{"a", "b"} {
		r := req(1, "c-"+name, "net1", name)
		r.PodUID = "uid-" + name
		if _, err := ta.Allocate(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	for range 3 {
		ta.clock.Step(time.Minute)
		if n, err := ta.ReclaimGonePods(ctx); n != 0 || err != nil {
			t.Fatalf("reclaim with an empty pod view released %d (%v), want 0", n, err)
		}
	}
	if len(ta.alloc.List()) != 2 {
		t.Fatalf("allocations left %d, want 2", len(ta.alloc.List()))
	}
	if got := gaugeValue(t, ta.Backend, "multinic_gc_refusals_total", map[string]string{"reason": "all-allocations"}); got < 2 {
		t.Errorf("multinic_gc_refusals_total{reason=all-allocations} = %v, want at least 2", got)
	}
	if !strings.Contains(strings.Join(ta.logs.Lines(), "\n"), `refused to free all 2 allocations of node \"node-typo\"`) {
		t.Errorf("no log line explaining the refusal:\n%s", strings.Join(ta.logs.Lines(), "\n"))
	}
	code, body := get(t, ta.Handler(), "/readyz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "--node-name") {
		t.Errorf("/readyz = %d %q, want 503 naming --node-name", code, body)
	}

	// The same state with the right node name: both pods are live, nothing to refuse.
	ta = ta.restartAs(t, "node-a")
	startPodView(t, ta)
	ta.clock.Step(time.Minute)
	if n, err := ta.ReclaimGonePods(ctx); n != 0 || err != nil {
		t.Fatalf("reclaim released %d (%v), want 0", n, err)
	}
	if code, body := get(t, ta.Handler(), "/readyz"); code != http.StatusOK {
		t.Errorf("/readyz = %d %q, want 200", code, body)
	}
}

// restartAs is restart with another node name.
func (ta *testBackend) restartAs(t *testing.T, node string) *testBackend {
	t.Helper()
	ta.cfg.NodeName = node
	return ta.restart(t)
}

func get(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	b, _ := io.ReadAll(rec.Result().Body)
	return rec.Code, string(b)
}

// TestReclaimPaced: the pod view lists once and then watches; passes do not list again.
func TestReclaimPaced(t *testing.T) {
	kube := fake.NewClientset(pod("default", "live", "uid-live", "node-a", corev1.PodRunning))
	ta := newTestBackend(t, newFakePools(1), map[int]int{1: 2}, func(c *Config) { c.Kube = kube; c.NodeName = "node-a" })
	startPodView(t, ta)
	for range 5 {
		ta.clock.Step(time.Minute)
		if _, err := ta.ReclaimGonePods(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	lists := 0
	for _, a := range kube.Actions() {
		if a.GetVerb() == "list" {
			lists++
		}
	}
	if lists != 1 {
		t.Errorf("%d pod lists for 5 passes, want 1 (then a watch)", lists)
	}
}

// TestReclaimAPIServerDown: while the pod view cannot list, reclaim releases nothing, however long it fails.
func TestReclaimAPIServerDown(t *testing.T) {
	kube := fake.NewClientset()
	kube.PrependReactor("list", "pods", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, errors.New("connection refused")
	})
	ta := newTestBackend(t, newFakePools(1), map[int]int{1: 2}, func(c *Config) { c.Kube = kube; c.NodeName = "n" })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ta.pods.start(ctx)
	if _, err := ta.Allocate(context.Background(), req(1, "c1", "net1", "p1")); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		ta.clock.Step(time.Hour)
		if n, err := ta.ReclaimGonePods(context.Background()); n != 0 || !errors.Is(err, errPodViewNotSynced) {
			t.Fatalf("pass with the API server down: released %d, error %v; want 0 and %v", n, err, errPodViewNotSynced)
		}
	}
	if got := gaugeValue(t, ta.Backend, "multinic_gc_refusals_total", map[string]string{"reason": "pod-view-not-synced"}); got != 3 {
		t.Errorf("multinic_gc_refusals_total{reason=pod-view-not-synced} = %v, want 3", got)
	}
}

// TestReclaimNetnsAfterRestart: a restarted agent knows each allocation's netns from the checkpoint and frees
// the allocations of a netns that went away.
func TestReclaimNetnsAfterRestart(t *testing.T) {
	nsDir := newNetnsDir(t)
	ta := newTestBackend(t, newFakePools(1), map[int]int{1: 2}, func(c *Config) {
		c.ReclaimGrace = time.Minute
		c.NetnsDirs = []string{string(nsDir)}
	})
	ctx := context.Background()
	dead := req(1, "c-dead", "net1", "dead")
	dead.Netns = nsDir.mk(t, "dead")
	if _, err := ta.Allocate(ctx, dead); err != nil {
		t.Fatal(err)
	}
	ta = ta.restart(t)
	nsDir.rm(t, dead.Netns)
	ta.ReclaimGonePods(ctx)
	ta.clock.Step(time.Minute)
	if n, err := ta.ReclaimGonePods(ctx); n != 1 || err != nil {
		t.Fatalf("released %d (%v) after the grace period, want 1", n, err)
	}
	if list := ta.alloc.List(); len(list) != 0 {
		t.Errorf("left %+v, want nothing", list)
	}
}
