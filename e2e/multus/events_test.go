//go:build e2e

package multus

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/multinic/multinic/e2e/cluster"
	"github.com/multinic/multinic/internal/testing/harness"
	"github.com/multinic/multinic/ipam/backend"
	"github.com/multinic/multinic/nad"
	"github.com/multinic/multinic/netconf"
)

// TestAgentEventsThroughAPIServer: the agent's Events reach a real kube-apiserver and name the right
// object. Through Multus, a pod listing card 3 twice gets CardTaken on the Pod; a pod attached (through a
// NAD of its own) to card 0, which the agents do not serve, gets CardNotManaged on the Pod and the Node.
func TestAgentEventsThroughAPIServer(t *testing.T) {
	tools := cluster.RequireE2E(t)
	setupBinaries(t, harness.BinDir(t))
	start := time.Now()
	c := cluster.Start(t, cluster.Options{Tools: tools})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	e := startEnv(ctx, t, c, tools, netconf.ModeExclusive, "", 1, nil, start)
	n := e.region.Node(0)

	twice, err := e.newPod(ctx, t, n, "events-twice", []int{3, 3})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.run("ADD", twice); err == nil {
		t.Fatal("Multus ADD of a pod naming card 3 twice succeeded")
	}
	ev := waitEvent(ctx, t, e, podEvents(twice.obj), backend.EventCardTaken)
	checkSource(t, ev, n.Name, corev1.EventTypeWarning)
	if ev.InvolvedObject.UID != twice.obj.UID || !strings.Contains(ev.Message, "net2") || !strings.Contains(ev.Message, "card 3") {
		t.Errorf("CardTaken event %+v: want it on pod UID %s, naming net2 and card 3", ev.InvolvedObject, twice.obj.UID)
	}
	e.deletePod(ctx, t, twice)

	// A NAD for card 0, not the agents' (no managed-by label: their publisher leaves it alone).
	const card0NAD = "events-card-0"
	cfg, err := nad.NetConfig(0, e.mode, nad.Options{})
	if err != nil {
		t.Fatal(err)
	}
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
		"metadata": map[string]any{"name": card0NAD, "namespace": "default"},
		"spec":     map[string]any{"config": cfg},
	}}
	if _, err := c.ApplyObject(ctx, obj, cluster.ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	card0, err := e.newPodNets(ctx, t, n, "events-card0", []int{0}, []string{"default/" + card0NAD})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.run("ADD", card0); err == nil {
		t.Fatal("Multus ADD of a pod on card 0, which the agent does not serve, succeeded")
	}
	ev = waitEvent(ctx, t, e, podEvents(card0.obj), backend.EventCardNotManaged)
	checkSource(t, ev, n.Name, corev1.EventTypeWarning)
	if ev.InvolvedObject.UID != card0.obj.UID || !strings.Contains(ev.Message, "card 0") {
		t.Errorf("CardNotManaged pod event %+v %q: want it on pod UID %s, naming card 0", ev.InvolvedObject, ev.Message, card0.obj.UID)
	}
	nodeSel := "involvedObject.kind=Node,involvedObject.name=" + n.Name
	ev = waitEvent(ctx, t, e, nodeSel, backend.EventCardNotManaged)
	checkSource(t, ev, n.Name, corev1.EventTypeWarning)
	if !strings.Contains(ev.Message, "default/events-card0") || !strings.Contains(ev.Message, "card 0") {
		t.Errorf("CardNotManaged node event %q: want it to name the pod and card 0", ev.Message)
	}
	e.deletePod(ctx, t, card0)
	e.settle(t)
}

func podEvents(p *corev1.Pod) string {
	return "involvedObject.kind=Pod,involvedObject.namespace=" + p.Namespace + ",involvedObject.name=" + p.Name
}

// waitEvent waits for an Event with reason on the objects fieldSelector names, in any namespace, and logs
// it as `kubectl describe` shows it.
func waitEvent(ctx context.Context, t *testing.T, e *env, fieldSelector, reason string) corev1.Event {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		list, err := e.c.Client.CoreV1().Events(metav1.NamespaceAll).List(ctx, metav1.ListOptions{FieldSelector: fieldSelector})
		if err != nil {
			t.Fatalf("list events %s: %v", fieldSelector, err)
		}
		var seen []string
		for _, ev := range list.Items {
			if ev.Reason == reason {
				t.Logf("event on %s %s/%s:\n  Type     Reason     From                   Message\n  %s  %s  %s  %s",
					ev.InvolvedObject.Kind, ev.InvolvedObject.Namespace, ev.InvolvedObject.Name,
					ev.Type, ev.Reason, fmt.Sprintf("%s, %s", ev.Source.Component, ev.Source.Host), ev.Message)
				return ev
			}
			seen = append(seen, ev.Reason)
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s event on %s after 30s (events there: %v)", reason, fieldSelector, seen)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func checkSource(t *testing.T, ev corev1.Event, node, typ string) {
	t.Helper()
	if ev.Source.Component != backend.EventComponent || ev.Source.Host != node || ev.Type != typ {
		t.Errorf("event %s: source %+v type %s, want %s on %s, %s", ev.Reason, ev.Source, ev.Type, backend.EventComponent, node, typ)
	}
}
