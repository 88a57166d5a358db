package backend

import (
	"context"
	"errors"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// Annotations the kubelet puts on the mirror pod of a static pod. The runtime passes the static pod's UID
// (the kubelet's hash of its manifest) as K8S_POD_UID; the API server's mirror pod has a UID of its own and
// carries the hash in these annotations.
const (
	annotationConfigHash   = "kubernetes.io/config.hash"
	annotationConfigMirror = "kubernetes.io/config.mirror"
)

// errPodViewNotSynced: the informer has not listed this node's pods yet; reclaim decides nothing until it has.
var errPodViewNotSynced = errors.New("pod view of the node not synced with the API server yet")

// podView is this node's pods as a client-go informer sees them: one LIST, then a WATCH, resumed with
// client-go's backoff, so that every node does not LIST every pod on every pass.
type podView struct {
	factory  informers.SharedInformerFactory
	informer cache.SharedIndexInformer
	node     string
}

func newPodView(kube kubernetes.Interface, node string) *podView {
	sel := fields.OneTermEqualSelector("spec.nodeName", node).String()
	f := informers.NewSharedInformerFactoryWithOptions(kube, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = sel }))
	return &podView{factory: f, informer: f.Core().V1().Pods().Informer(), node: node}
}

// start starts the informer until ctx ends; starting twice is harmless.
func (v *podView) start(ctx context.Context) { v.factory.Start(ctx.Done()) }

// waitSynced waits until the first LIST is in, or ctx ends.
func (v *podView) waitSynced(ctx context.Context) bool {
	return cache.WaitForCacheSync(ctx.Done(), v.informer.HasSynced)
}

// livePods is the pods bound to this node that have not finished, by namespace/name, with the UIDs a
// runtime may have given for each (the pod's own, and for a mirror pod the static pod's).
func (v *podView) livePods() (map[podKey][]string, error) {
	if !v.informer.HasSynced() {
		return nil, errPodViewNotSynced
	}
	pods := map[podKey][]string{}
	for _, obj := range v.informer.GetStore().List() {
		p, ok := obj.(*corev1.Pod)
		if !ok {
			return nil, fmt.Errorf("pod view holds a %T", obj)
		}
		// The selector is the server's job; checking again costs nothing and keeps a misbehaving server
		// (or a fake) from keeping another node's pod alive here.
		if p.Spec.NodeName != v.node || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		uids := []string{string(p.UID)}
		for _, k := range []string{annotationConfigMirror, annotationConfigHash} {
			if h := p.Annotations[k]; h != "" {
				uids = append(uids, h)
			}
		}
		pods[podKey{p.Namespace, p.Name}] = uids
	}
	return pods, nil
}
