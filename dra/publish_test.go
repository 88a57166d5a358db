package dra

import (
	"context"
	"io"
	"log/slog"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kubefake "k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/multinic/multinic/netconf"
)

// TestPublisher: the node's pool becomes one slice with the devices given, follows an Update, and every call
// made is one PolicyRules grants. (The real API server's view is e2e/dra's TestResourceSlice.)
func TestPublisher(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	kube := kubefake.NewClientset(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node1", UID: "uid-1"}})
	p, err := StartPublisher(ctx, kube, "node1", slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop()
	modes := []string{netconf.ModeIPVlan, netconf.ModeExclusive}
	p.Update(Devices([]Card{{Index: 1, Addresses: 10}}, modes))
	waitSlice(t, kube, []string{"card-1", "card-1-exclusive"})
	p.Update(Devices([]Card{{Index: 1, Addresses: 10}, {Index: 2, Addresses: 10}}, []string{netconf.ModeIPVlan}))
	s := waitSlice(t, kube, []string{"card-1", "card-2"})
	if s.Spec.Pool.Name != "node1" || s.Spec.NodeName == nil || *s.Spec.NodeName != "node1" || s.Spec.Driver != DriverName {
		t.Errorf("slice spec %+v, want driver %s, pool and node node1", s.Spec, DriverName)
	}
	if len(s.OwnerReferences) != 1 || s.OwnerReferences[0].UID != "uid-1" {
		t.Errorf("owners %+v, want Node node1 uid-1", s.OwnerReferences)
	}
	for _, a := range kube.Actions() {
		if !allowed(a) {
			t.Errorf("call not granted by PolicyRules: %s %s/%s", a.GetVerb(), a.GetResource().Group, a.GetResource().Resource)
		}
	}
}

func waitSlice(t *testing.T, kube *kubefake.Clientset, want []string) resourceapi.ResourceSlice {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		l, err := kube.ResourceV1().ResourceSlices().List(context.Background(), metav1.ListOptions{})
		if err == nil && len(l.Items) == 1 {
			var names []string
			for _, d := range l.Items[0].Spec.Devices {
				names = append(names, d.Name)
			}
			if slices.Equal(names, want) {
				return l.Items[0]
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no single slice with devices %v: %v %v", want, l, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func allowed(a k8stesting.Action) bool {
	for _, rule := range PolicyRules {
		if slices.Contains(rule.APIGroups, a.GetResource().Group) && slices.Contains(rule.Resources, a.GetResource().Resource) &&
			slices.Contains(rule.Verbs, a.GetVerb()) && a.GetSubresource() == "" {
			return true
		}
	}
	return false
}
