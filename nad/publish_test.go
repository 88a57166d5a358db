package nad

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	nadv1 "github.com/k8snetworkplumbingwg/network-attachment-definition-client/pkg/apis/k8s.cni.cncf.io/v1"
	nadfake "github.com/k8snetworkplumbingwg/network-attachment-definition-client/pkg/client/clientset/versioned/fake"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	kubefake "k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/multinic/multinic/netconf"
)

var nadGR = schema.GroupResource{Group: "k8s.cni.cncf.io", Resource: "network-attachment-definitions"}

// env is a NAD fake clientset and a Kubernetes fake clientset. At cleanup it fails the test if any call
// was made that PolicyRules (and so the ClusterRole) does not grant.
type env struct {
	nads *nadfake.Clientset
	kube *kubefake.Clientset
}

func newEnv(t *testing.T, nodes ...string) *env {
	t.Helper()
	e := &env{nads: nadfake.NewSimpleClientset(), kube: kubefake.NewClientset()}
	for _, n := range nodes {
		if _, err := e.kube.CoreV1().Nodes().Create(context.Background(), &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: n},
			Status: corev1.NodeStatus{
				Capacity:    corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("192"), "vpc.amazonaws.com/efa": resource.MustParse("8")},
				Allocatable: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("191")},
			},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	e.nads.ClearActions()
	e.kube.ClearActions()
	t.Cleanup(func() {
		for _, a := range append(e.nads.Actions(), e.kube.Actions()...) {
			if !allowed(a) {
				t.Errorf("call not granted by PolicyRules: %s %s", a.GetVerb(), resourceOf(a))
			}
		}
	})
	return e
}

func resourceOf(a k8stesting.Action) string {
	r := a.GetResource().Resource
	if s := a.GetSubresource(); s != "" {
		r += "/" + s
	}
	return a.GetResource().Group + "/" + r
}

func allowed(a k8stesting.Action) bool {
	for _, rule := range PolicyRules {
		for _, g := range rule.APIGroups {
			for _, r := range rule.Resources {
				if g+"/"+r == resourceOf(a) && slices.Contains(rule.Verbs, a.GetVerb()) {
					return true
				}
			}
		}
	}
	return false
}

// writes are the create, update, patch and delete calls made since the last ClearActions.
func writes(f interface{ Actions() []k8stesting.Action }) []string {
	var out []string
	for _, a := range f.Actions() {
		switch a.GetVerb() {
		case "create", "update", "patch", "delete":
			out = append(out, a.GetVerb()+" "+resourceOf(a))
		}
	}
	return out
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func (e *env) publisher(t *testing.T, node string, cards []int, res map[int]int64, o Options) *Publisher {
	t.Helper()
	var mu sync.Mutex
	p, err := New(Config{
		NADs: e.nads, Kube: e.kube, NodeName: node, Options: o,
		Cards: func() []int { return cards },
		Resources: func() map[int]int64 {
			mu.Lock()
			defer mu.Unlock()
			return res
		},
		Interval: 20 * time.Millisecond, MinGap: time.Millisecond,
		Logger: quietLogger(),
	})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func (e *env) getNAD(t *testing.T, ns, name string) *nadv1.NetworkAttachmentDefinition {
	t.Helper()
	n, err := e.nads.K8sCniCncfIoV1().NetworkAttachmentDefinitions(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

var both = []string{netconf.ModeIPVlan, netconf.ModeExclusive}

// TestPublishNADs: create, then an idempotent re-publish (no write at all), then drift repair that keeps
// other people's labels and annotations, and a deleted NAD comes back.
func TestPublishNADs(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	o := Options{Modes: both}
	p := e.publisher(t, "node-a", []int{1, 2}, nil, o)

	res, err := p.PublishNADs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	wantNames := []string{"multinic-card-1", "multinic-card-1-exclusive", "multinic-card-2", "multinic-card-2-exclusive"}
	if !reflect.DeepEqual(res.Created, wantNames) || len(res.Updated)+len(res.Unchanged)+len(res.Foreign) != 0 {
		t.Fatalf("first pass %+v", res)
	}
	want, _ := Render([]int{1, 2}, o)
	for _, w := range want {
		got := e.getNAD(t, "kube-system", w.Name)
		if got.Spec != w.Spec || !reflect.DeepEqual(got.Labels, w.Labels) || !reflect.DeepEqual(got.Annotations, w.Annotations) {
			t.Errorf("stored %s = %+v, want %+v", w.Name, got, w)
		}
	}

	e.nads.ClearActions()
	res, err = p.PublishNADs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(res.Unchanged, wantNames) || len(res.Created)+len(res.Updated) != 0 {
		t.Errorf("second pass %+v, want all unchanged", res)
	}
	if w := writes(e.nads); len(w) != 0 {
		t.Errorf("idempotent pass wrote: %v", w)
	}
	if n := len(e.nads.Actions()); n != 1 {
		t.Errorf("idempotent pass made %d calls, want 1 (the list)", n)
	}

	// Drift: config edited, resourceName annotation removed, someone added a label and an annotation.
	client := e.nads.K8sCniCncfIoV1().NetworkAttachmentDefinitions("kube-system")
	d := e.getNAD(t, "kube-system", "multinic-card-2")
	d.Spec.Config = `{"cniVersion":"1.1.0","type":"multinic","networkCard":5}`
	delete(d.Annotations, ResourceNameAnnotation)
	d.Labels["team"] = "ml"
	d.Annotations["note"] = "keep me"
	if _, err := client.Update(ctx, d, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := client.Delete(ctx, "multinic-card-1-exclusive", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	e.nads.ClearActions()
	res, err = p.PublishNADs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(res.Updated, []string{"multinic-card-2"}) || !reflect.DeepEqual(res.Created, []string{"multinic-card-1-exclusive"}) {
		t.Errorf("repair pass %+v", res)
	}
	got := e.getNAD(t, "kube-system", "multinic-card-2")
	if got.Spec != want[2].Spec || got.Annotations[ResourceNameAnnotation] != "multinic.io/card-2" ||
		got.Labels["team"] != "ml" || got.Annotations["note"] != "keep me" {
		t.Errorf("repaired NAD %+v", got)
	}
	if w := writes(e.nads); !reflect.DeepEqual(w, []string{
		"create k8s.cni.cncf.io/network-attachment-definitions", "update k8s.cni.cncf.io/network-attachment-definitions",
	}) {
		t.Errorf("repair writes %v", w)
	}
}

// TestPublishNADsManyNodes: a second node publishing the same cards writes nothing; a node serving fewer
// cards leaves the other NADs alone (no deletes: another node may serve them).
func TestPublishNADsManyNodes(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	o := Options{Modes: both, Namespace: "default"}
	if _, err := e.publisher(t, "node-a", []int{1, 2, 3}, nil, o).PublishNADs(ctx); err != nil {
		t.Fatal(err)
	}
	list1, _ := e.nads.K8sCniCncfIoV1().NetworkAttachmentDefinitions("default").List(ctx, metav1.ListOptions{})
	e.nads.ClearActions()
	for _, node := range []string{"node-b", "node-c"} {
		res, err := e.publisher(t, node, []int{1, 2, 3}, nil, o).PublishNADs(ctx)
		if err != nil || len(res.Unchanged) != 6 {
			t.Fatalf("%s: %+v %v", node, res, err)
		}
	}
	res, err := e.publisher(t, "node-d", []int{1}, nil, o).PublishNADs(ctx)
	if err != nil || len(res.Unchanged) != 2 {
		t.Fatalf("node-d: %+v %v", res, err)
	}
	if w := writes(e.nads); len(w) != 0 {
		t.Errorf("other nodes wrote %v", w)
	}
	list2, _ := e.nads.K8sCniCncfIoV1().NetworkAttachmentDefinitions("default").List(ctx, metav1.ListOptions{})
	if !reflect.DeepEqual(list1.Items, list2.Items) {
		t.Error("NADs changed when other nodes published")
	}
}

// TestPublishNADsForeign: a NAD of the same name without the managed-by label is the user's: left alone.
func TestPublishNADsForeign(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	mine := &nadv1.NetworkAttachmentDefinition{
		ObjectMeta: metav1.ObjectMeta{Name: "multinic-card-1", Namespace: "kube-system"},
		Spec:       nadv1.NetworkAttachmentDefinitionSpec{Config: `{"cniVersion":"1.1.0","type":"multinic","networkCard":1,"mtu":1500}`},
	}
	if _, err := e.nads.K8sCniCncfIoV1().NetworkAttachmentDefinitions("kube-system").Create(ctx, mine, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.nads.ClearActions()
	p := e.publisher(t, "n", []int{1, 2}, nil, Options{})
	res, err := p.PublishNADs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(res.Foreign, []string{"multinic-card-1"}) || !reflect.DeepEqual(res.Created, []string{"multinic-card-2"}) {
		t.Errorf("result %+v", res)
	}
	if got := e.getNAD(t, "kube-system", "multinic-card-1"); got.Spec != mine.Spec || len(got.Labels) != 0 {
		t.Errorf("user's NAD changed: %+v", got)
	}
}

// TestPublishNADsRaces: a create that another node won (the list did not show it yet) is treated as
// found; an update that hits a conflict reads the NAD again and retries once.
func TestPublishNADsRaces(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	p := e.publisher(t, "n", []int{4}, nil, Options{})
	if _, err := p.PublishNADs(ctx); err != nil {
		t.Fatal(err)
	}
	// A stale (empty) list: Create meets AlreadyExists.
	e.nads.PrependReactor("list", "network-attachment-definitions", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, &nadv1.NetworkAttachmentDefinitionList{}, nil
	})
	res, err := p.PublishNADs(ctx)
	if err != nil || !reflect.DeepEqual(res.Unchanged, []string{"multinic-card-4"}) {
		t.Fatalf("after a lost create race: %+v %v", res, err)
	}

	// Drift, and the first update conflicts.
	client := e.nads.K8sCniCncfIoV1().NetworkAttachmentDefinitions("kube-system")
	d := e.getNAD(t, "kube-system", "multinic-card-4")
	d.Spec.Config = "{}"
	if _, err := client.Update(ctx, d, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	conflicts := 0
	e.nads.PrependReactor("update", "network-attachment-definitions", func(k8stesting.Action) (bool, runtime.Object, error) {
		if conflicts == 0 {
			conflicts++
			return true, nil, apierrors.NewConflict(nadGR, "multinic-card-4", errorString("the object has been modified"))
		}
		return false, nil, nil
	})
	res, err = p.PublishNADs(ctx)
	if err != nil || !reflect.DeepEqual(res.Updated, []string{"multinic-card-4"}) || conflicts != 1 {
		t.Fatalf("after a conflict: %+v %v (conflicts %d)", res, err, conflicts)
	}
	want, _ := NetConfig(4, netconf.ModeIPVlan, Options{})
	if got := e.getNAD(t, "kube-system", "multinic-card-4"); got.Spec.Config != want {
		t.Errorf("config %s, want %s", got.Spec.Config, want)
	}

	// An API error surfaces, named.
	e.nads.PrependReactor("get", "network-attachment-definitions", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewForbidden(nadGR, "multinic-card-4", errorString("no"))
	})
	e.nads.PrependReactor("create", "network-attachment-definitions", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewAlreadyExists(nadGR, "multinic-card-4")
	})
	if _, err := p.PublishNADs(ctx); err == nil || !strings.Contains(err.Error(), "kube-system/multinic-card-4") {
		t.Errorf("error %v, want one naming kube-system/multinic-card-4", err)
	}
}

type errorString string

func (e errorString) Error() string { return string(e) }

func nodeStatus(t *testing.T, e *env, name string) corev1.NodeStatus {
	t.Helper()
	n, err := e.kube.CoreV1().Nodes().Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return n.Status
}

// TestPublishNodeResources: the cards appear in capacity and allocatable through a patch of nodes/status;
// nothing is patched while nothing changed; a card no longer managed disappears; other resources stay.
func TestPublishNodeResources(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "node-a", "node-b")
	res := map[int]int64{1: 245, 2: 0}
	p := e.publisher(t, "node-a", []int{1, 2}, res, Options{})

	patched, err := p.PublishNodeResources(ctx)
	if err != nil || !patched {
		t.Fatalf("first pass patched=%v err=%v", patched, err)
	}
	acts := e.kube.Actions()
	if len(acts) != 2 || acts[1].GetVerb() != "patch" || acts[1].GetSubresource() != "status" {
		t.Fatalf("actions %v, want get node then patch nodes/status", acts)
	}
	pa := acts[1].(k8stesting.PatchAction)
	wantPatch := `{"status":{"allocatable":{"multinic.io/card-1":"245","multinic.io/card-2":"0"},` +
		`"capacity":{"multinic.io/card-1":"245","multinic.io/card-2":"0"}}}`
	if string(pa.GetPatch()) != wantPatch || pa.GetPatchType() != "application/merge-patch+json" {
		t.Errorf("patch %s %s\nwant %s", pa.GetPatchType(), pa.GetPatch(), wantPatch)
	}
	st := nodeStatus(t, e, "node-a")
	for _, l := range []corev1.ResourceList{st.Capacity, st.Allocatable} {
		if q := l["multinic.io/card-1"]; q.Value() != 245 {
			t.Errorf("card-1 = %s, want 245", q.String())
		}
		if q, ok := l["multinic.io/card-2"]; !ok || q.Value() != 0 {
			t.Errorf("card-2 = %s (%v), want 0", q.String(), ok)
		}
	}
	if q := st.Capacity["vpc.amazonaws.com/efa"]; q.Value() != 8 {
		t.Errorf("other resource lost: %v", st.Capacity)
	}
	if len(nodeStatus(t, e, "node-b").Capacity) != 2 {
		t.Errorf("node-b touched: %v", nodeStatus(t, e, "node-b").Capacity)
	}

	e.kube.ClearActions()
	if patched, err := p.PublishNodeResources(ctx); patched || err != nil {
		t.Errorf("unchanged pass patched=%v err=%v", patched, err)
	}
	if w := writes(e.kube); len(w) != 0 {
		t.Errorf("unchanged pass wrote %v", w)
	}

	// Card 2 is no longer managed and card 1's count changed.
	p2 := e.publisher(t, "node-a", []int{1}, map[int]int64{1: 196}, Options{})
	if patched, err := p2.PublishNodeResources(ctx); !patched || err != nil {
		t.Fatalf("change pass patched=%v err=%v", patched, err)
	}
	st = nodeStatus(t, e, "node-a")
	if _, ok := st.Capacity["multinic.io/card-2"]; ok {
		t.Errorf("card-2 still advertised: %v", st.Capacity)
	}
	if _, ok := st.Allocatable["multinic.io/card-2"]; ok {
		t.Errorf("card-2 still allocatable: %v", st.Allocatable)
	}
	if q := st.Allocatable["multinic.io/card-1"]; q.Value() != 196 {
		t.Errorf("card-1 allocatable %s, want 196", q.String())
	}
	if q := st.Allocatable[corev1.ResourceCPU]; q.Value() != 191 {
		t.Errorf("cpu allocatable lost: %v", st.Allocatable)
	}

	// A node that does not exist is an error naming it.
	p3 := e.publisher(t, "node-x", []int{1}, res, Options{})
	if _, err := p3.PublishNodeResources(ctx); err == nil || !strings.Contains(err.Error(), "node-x") {
		t.Errorf("missing node: %v", err)
	}
}

func TestNodeStatusPatch(t *testing.T) {
	q := resource.MustParse
	for _, tc := range []struct {
		name   string
		status corev1.NodeStatus
		prefix string
		want   map[int]int64
		patch  string
	}{
		{"empty node", corev1.NodeStatus{}, "", map[int]int64{3: 49},
			`{"status":{"allocatable":{"multinic.io/card-3":"49"},"capacity":{"multinic.io/card-3":"49"}}}`},
		{"in step", corev1.NodeStatus{
			Capacity:    corev1.ResourceList{"multinic.io/card-3": q("49")},
			Allocatable: corev1.ResourceList{"multinic.io/card-3": q("49")}}, "", map[int]int64{3: 49}, ""},
		{"allocatable only differs", corev1.NodeStatus{
			Capacity:    corev1.ResourceList{"multinic.io/card-3": q("49")},
			Allocatable: corev1.ResourceList{"multinic.io/card-3": q("48")}}, "", map[int]int64{3: 49},
			`{"status":{"allocatable":{"multinic.io/card-3":"49"}}}`},
		{"stale card dropped, others kept", corev1.NodeStatus{
			Capacity: corev1.ResourceList{"multinic.io/card-3": q("49"), "multinic.io/card-9": q("1"),
				"multinic.io/card-x": q("1"), "example.com/card-9": q("1"), "multinic.io/card-": q("1")},
			Allocatable: corev1.ResourceList{"multinic.io/card-3": q("49")}}, "", map[int]int64{3: 49},
			`{"status":{"capacity":{"multinic.io/card-9":null}}}`},
		{"negative is zero", corev1.NodeStatus{}, "example.com/nic", map[int]int64{0: -3},
			`{"status":{"allocatable":{"example.com/nic0":"0"},"capacity":{"example.com/nic0":"0"}}}`},
		{"nothing managed", corev1.NodeStatus{Capacity: corev1.ResourceList{"multinic.io/card-1": q("5")}}, "", nil,
			`{"status":{"capacity":{"multinic.io/card-1":null}}}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := NodeStatusPatch(tc.status, tc.prefix, tc.want)
			if err != nil {
				t.Fatal(err)
			}
			if string(b) != tc.patch {
				t.Errorf("patch %s\nwant  %s", b, tc.patch)
			}
			if b != nil && !json.Valid(b) {
				t.Errorf("invalid JSON %s", b)
			}
		})
	}
}

// TestRun: the loop publishes at once, again after drift on its own, on Kick, and stops with ctx.
func TestRun(t *testing.T) {
	e := newEnv(t, "node-a")
	p := e.publisher(t, "node-a", []int{1}, map[int]int64{1: 10}, Options{})
	p.cfg.Interval = time.Hour // only the first pass and kicks
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.Run(ctx)
	}()
	waitFor(t, func() bool {
		_, err := e.nads.K8sCniCncfIoV1().NetworkAttachmentDefinitions("kube-system").Get(ctx, "multinic-card-1", metav1.GetOptions{})
		st := nodeStatus(t, e, "node-a")
		_, ok := st.Allocatable["multinic.io/card-1"]
		return err == nil && ok
	})
	// Through the tracker: a call of the test's own, not the publisher's.
	gvr := nadv1.SchemeGroupVersion.WithResource("network-attachment-definitions")
	if err := e.nads.Tracker().Delete(gvr, "kube-system", "multinic-card-1"); err != nil {
		t.Fatal(err)
	}
	p.Kick()
	waitFor(t, func() bool {
		_, err := e.nads.K8sCniCncfIoV1().NetworkAttachmentDefinitions("kube-system").Get(ctx, "multinic-card-1", metav1.GetOptions{})
		return err == nil
	})
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestNewChecks(t *testing.T) {
	e := newEnv(t)
	for _, cfg := range []Config{
		{},
		{NADs: e.nads},
		{Kube: e.kube, Resources: func() map[int]int64 { return nil }},
		{NADs: e.nads, Cards: func() []int { return nil }, Options: Options{Namespace: "BAD"}},
		{NADs: e.nads, Cards: func() []int { return nil }, Interval: -1},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v) accepted", cfg)
		}
	}
}
