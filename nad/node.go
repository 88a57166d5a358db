package nad

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// PublishNodeResources makes the Node's status.capacity and status.allocatable carry one extended
// resource per managed card (ResourcePrefix + card = Resources()[card]) and none for cards no longer
// managed (resources named ResourcePrefix + a number that Resources does not list are removed). It reads
// the Node and sends a JSON merge patch to its status subresource only when something differs; it
// reports whether it patched. Other resources of the Node are never touched.
func (p *Publisher) PublishNodeResources(ctx context.Context) (bool, error) {
	if p.cfg.Kube == nil {
		return false, nil
	}
	nodes := p.cfg.Kube.CoreV1().Nodes()
	node, err := nodes.Get(ctx, p.cfg.NodeName, metav1.GetOptions{})
	if err != nil {
		return false, fmt.Errorf("get node %s: %w", p.cfg.NodeName, err)
	}
	want := p.cfg.Resources()
	patch, err := NodeStatusPatch(node.Status, p.cfg.Options.ResourcePrefix, want)
	if err != nil || patch == nil {
		return false, err
	}
	if _, err := nodes.Patch(ctx, p.cfg.NodeName, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: ManagedByValue}, "status"); err != nil {
		return false, fmt.Errorf("patch status of node %s: %w", p.cfg.NodeName, err)
	}
	p.log.Info("advertised card resources on the node", "node", p.cfg.NodeName, "cards", sortedCards(want), "patch", string(patch))
	return true, nil
}

// NodeStatusPatch is the JSON merge patch of a Node's status that makes capacity and allocatable carry
// prefix+card = count for every card in want, and drops every other prefix+<number> resource; nil when
// status already says so. It is pure.
func NodeStatusPatch(status corev1.NodeStatus, prefix string, want map[int]int64) ([]byte, error) {
	if prefix == "" {
		prefix = DefaultResourcePrefix
	}
	desired := map[corev1.ResourceName]resource.Quantity{}
	for card, n := range want {
		if n < 0 {
			n = 0
		}
		desired[corev1.ResourceName(ResourceName(prefix, card))] = *resource.NewQuantity(n, resource.DecimalSI)
	}
	diff := func(have corev1.ResourceList) map[string]any {
		d := map[string]any{}
		for name, q := range desired {
			if cur, ok := have[name]; !ok || cur.Cmp(q) != 0 {
				d[string(name)] = q.String()
			}
		}
		for name := range have {
			if _, ok := desired[name]; !ok && ours(string(name), prefix) {
				d[string(name)] = nil // merge patch: null deletes the key
			}
		}
		return d
	}
	st := map[string]any{}
	if d := diff(status.Capacity); len(d) > 0 {
		st["capacity"] = d
	}
	if d := diff(status.Allocatable); len(d) > 0 {
		st["allocatable"] = d
	}
	if len(st) == 0 {
		return nil, nil
	}
	// encoding/json sorts map keys: the patch is deterministic.
	b, err := json.Marshal(map[string]any{"status": st})
	if err != nil {
		return nil, fmt.Errorf("node status patch: %w", err)
	}
	return b, nil
}

// ours: name is prefix followed by a card number.
func ours(name, prefix string) bool {
	rest, ok := strings.CutPrefix(name, prefix)
	if !ok || rest == "" {
		return false
	}
	_, err := strconv.ParseUint(rest, 10, 16)
	return err == nil
}
