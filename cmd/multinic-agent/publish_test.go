package main

import (
	"context"
	"io"
	"log/slog"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	nadfake "github.com/k8snetworkplumbingwg/network-attachment-definition-client/pkg/client/clientset/versioned/fake"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	kubefake "k8s.io/client-go/kubernetes/fake"

	"github.com/multinic/multinic/ipam/eni"
	"github.com/multinic/multinic/manifests"
	"github.com/multinic/multinic/netconf"
)

func TestCardResources(t *testing.T) {
	got := cardResources(eni.Stats{Cards: []eni.CardStats{
		{Card: 1, Ready: true, Capacity: 49, MaxCapacity: 245},
		{Card: 2, Ready: false, MaxCapacity: 245},
		{Card: 3, Ready: true, MaxCapacity: 0},
	}})
	want := map[int]int64{1: 245, 2: 0, 3: 0}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("cardResources = %v, want %v", got, want)
	}
}

// fakeCards is a cardSource whose readiness the test flips.
type fakeCards struct {
	mu    sync.Mutex
	ready bool
}

func (f *fakeCards) ManagedCards() []int { return []int{1, 2} }

func (f *fakeCards) Stats() eni.Stats {
	f.mu.Lock()
	defer f.mu.Unlock()
	return eni.Stats{Cards: []eni.CardStats{{Card: 1, Ready: f.ready, MaxCapacity: 196}, {Card: 2, Ready: f.ready, MaxCapacity: 245}}}
}

func (f *fakeCards) WaitReady(ctx context.Context) error {
	for {
		f.mu.Lock()
		r := f.ready
		f.mu.Unlock()
		if r {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func mustParse(t *testing.T, args ...string) options {
	t.Helper()
	o, err := parseFlags(append([]string{"--cluster", "c", "--node-name", "node-a"}, args...), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	return o
}

// TestPublisherWiring: with a kubeconfig the agent publishes the NADs of the manager's cards and the cards
// as node resources, 0 while not ready and the cards' capacity as soon as the manager is ready (without
// waiting for the interval); without one, or with both turned off, there is no publisher.
func TestPublisherWiring(t *testing.T) {
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	kube := kubefake.NewClientset(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a"}})
	nads := nadfake.NewSimpleClientset()
	cards := &fakeCards{}

	if p, err := newPublisher(mustParse(t), kube, nads, cards, logger); p != nil || err != nil {
		t.Errorf("without a kubeconfig: publisher %v, %v", p, err)
	}
	if p, err := newPublisher(mustParse(t, "--kubeconfig", "k", "--publish-nads=false", "--node-resources=false"), kube, nads, cards, logger); p != nil || err != nil {
		t.Errorf("publishing off: publisher %v, %v", p, err)
	}

	o := mustParse(t, "--kubeconfig", "k", "--publish-interval", "1h")
	p, err := newPublisher(o, kube, nads, cards, logger)
	if err != nil || p == nil {
		t.Fatalf("newPublisher: %v, %v", p, err)
	}
	ctx := context.Background()
	stop := runPublisher(ctx, p, cards.WaitReady)
	defer stop()

	capacity := func(card string) (int64, bool) {
		n, err := kube.CoreV1().Nodes().Get(ctx, "node-a", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		q, ok := n.Status.Allocatable[corev1.ResourceName("multinic.io/card-"+card)]
		return q.Value(), ok
	}
	waitUntil(t, func() bool { v, ok := capacity("2"); return ok && v == 0 })
	list, err := nads.K8sCniCncfIoV1().NetworkAttachmentDefinitions("kube-system").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, n := range list.Items {
		names = append(names, n.Name)
	}
	want := []string{"multinic-card-1", "multinic-card-1-exclusive", "multinic-card-2", "multinic-card-2-exclusive"}
	if !reflect.DeepEqual(names, want) {
		t.Errorf("NADs %v, want %v", names, want)
	}

	cards.mu.Lock()
	cards.ready = true
	cards.mu.Unlock()
	waitUntil(t, func() bool {
		v1, _ := capacity("1")
		v2, _ := capacity("2")
		return v1 == 196 && v2 == 245
	})
}

// TestPublisherFamily: --family reaches the published NADs, each card's own (issue 14), and the plugin's
// parser reads it back.
func TestPublisherFamily(t *testing.T) {
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	kube := kubefake.NewClientset(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a"}})
	nads := nadfake.NewSimpleClientset()
	cards := &fakeCards{ready: true}
	p, err := newPublisher(mustParse(t, "--kubeconfig", "k", "--publish-interval", "1h", "--family", "dual,2=ipv6"), kube, nads, cards, logger)
	if err != nil || p == nil {
		t.Fatalf("newPublisher: %v, %v", p, err)
	}
	ctx := context.Background()
	stop := runPublisher(ctx, p, cards.WaitReady)
	defer stop()
	want := map[string]string{"multinic-card-1": "dual", "multinic-card-1-exclusive": "dual",
		"multinic-card-2": "ipv6", "multinic-card-2-exclusive": "ipv6"}
	waitUntil(t, func() bool {
		list, err := nads.K8sCniCncfIoV1().NetworkAttachmentDefinitions("kube-system").List(ctx, metav1.ListOptions{})
		return err == nil && len(list.Items) == len(want)
	})
	list, err := nads.K8sCniCncfIoV1().NetworkAttachmentDefinitions("kube-system").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range list.Items {
		c, err := netconf.Load([]byte(n.Spec.Config))
		if err != nil || c.Family != want[n.Name] {
			t.Errorf("NAD %s: family %+v (%v) in %s, want %s", n.Name, c, err, n.Spec.Config, want[n.Name])
		}
	}
}

func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestDaemonSetArgs: the shipped DaemonSet's arguments are ones this binary accepts, and turn publishing
// on into the namespace the shipped Role covers.
func TestDaemonSetArgs(t *testing.T) {
	objs, err := manifests.Objects()
	if err != nil {
		t.Fatal(err)
	}
	var ds appsv1.DaemonSet
	roleNS := ""
	for _, u := range objs {
		switch u.GetKind() {
		case "DaemonSet":
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &ds); err != nil {
				t.Fatal(err)
			}
		case "Role":
			roleNS = u.GetNamespace()
		}
	}
	if len(ds.Spec.Template.Spec.Containers) != 1 {
		t.Fatalf("DaemonSet %+v", ds)
	}
	c := ds.Spec.Template.Spec.Containers[0]
	if len(c.Command) != 1 || !strings.HasSuffix(c.Command[0], "/multinic-agent") {
		t.Errorf("command %v", c.Command)
	}
	env := map[string]string{"NODE_NAME": "ip-10-0-0-1.ec2.internal", "CLUSTER_NAME": "my-cluster"}
	var args []string
	for _, a := range c.Args {
		for k, v := range env {
			a = strings.ReplaceAll(a, "$("+k+")", v)
		}
		if strings.Contains(a, "$(") {
			t.Errorf("argument %q refers to a variable the pod does not set", a)
		}
		args = append(args, a)
	}
	o, err := parseFlags(args, io.Discard)
	if err != nil {
		t.Fatalf("agent refuses the DaemonSet's args %q: %v", args, err)
	}
	if o.kubeconfig != InClusterKubeconfig || !o.publishNADs || !o.nodeResources || o.nodeName != env["NODE_NAME"] ||
		o.cluster != env["CLUSTER_NAME"] || o.nadNamespace != roleNS {
		t.Errorf("DaemonSet options %+v (Role in %q)", o, roleNS)
	}
}
