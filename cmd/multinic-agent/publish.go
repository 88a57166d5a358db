package main

import (
	"context"
	"fmt"
	"log/slog"

	nadclient "github.com/k8snetworkplumbingwg/network-attachment-definition-client/pkg/client/clientset/versioned"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/multinic/multinic/ipam/eni"
	"github.com/multinic/multinic/nad"
)

// restConfig is the API server's client configuration: a kubeconfig file, or the pod's service account
// for InClusterKubeconfig.
func restConfig(kubeconfig string) (*rest.Config, error) {
	var rc *rest.Config
	var err error
	if kubeconfig == InClusterKubeconfig {
		rc, err = rest.InClusterConfig()
	} else {
		rc, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	}
	if err != nil {
		return nil, fmt.Errorf("load kubeconfig %s: %w", kubeconfig, err)
	}
	rc.UserAgent = "multinic-agent"
	return rc, nil
}

// cardSource is what the publisher needs from the ENI manager.
type cardSource interface {
	ManagedCards() []int
	Stats() eni.Stats
}

var _ cardSource = (*eni.Manager)(nil)

// cardResources is the count each managed card advertises as its extended resource: the shared addresses
// the card can hold in all (eni.CardStats.MaxCapacity: its shared ENIs plus every free ENI slot, full),
// or 0 while the card has no ready ENI (so that no pod is scheduled for a card that cannot serve yet).
//
// It is the total, not what is free now, on purpose: the scheduler subtracts the requests of the pods
// already bound to the node, so allocatable minus those requests is what the card can still give.
// Advertising the free count would count every running pod twice. Pods that attach to a card without
// requesting its resource are not counted by the scheduler; the agent still refuses what the card
// cannot hold ("try again" from the plugin). The value changes only when ENI slots do (an exclusive
// ENI, or someone else's ENI, takes one), so it causes few node status writes.
func cardResources(st eni.Stats) map[int]int64 {
	out := make(map[int]int64, len(st.Cards))
	for _, c := range st.Cards {
		n := int64(0)
		if c.Ready {
			n = int64(max(c.MaxCapacity, 0))
		}
		out[c.Card] = n
	}
	return out
}

// newPublisher wires package nad to the agent: NADs for the managed cards (nads set) and the cards as
// node resources (kube set). It returns nil when there is nothing to publish.
func newPublisher(o options, kube kubernetes.Interface, nads nadclient.Interface, cards cardSource, logger *slog.Logger) (*nad.Publisher, error) {
	cfg := nad.Config{
		NodeName: o.nodeName, Options: o.nadOptions(), Interval: o.publishInterval,
		Cards:     cards.ManagedCards,
		Resources: func() map[int]int64 { return cardResources(cards.Stats()) },
		Logger:    logger,
	}
	if o.publishNADs && nads != nil {
		cfg.NADs = nads
	}
	if o.nodeResources && kube != nil {
		cfg.Kube = kube
	}
	if cfg.NADs == nil && cfg.Kube == nil {
		return nil, nil
	}
	return nad.New(cfg)
}

// runPublisher runs p until ctx ends, with a pass as soon as the ENI manager is ready (the first pass
// advertises 0 for cards whose ENI is not up yet). The returned function stops it and waits.
func runPublisher(ctx context.Context, p *nad.Publisher, waitReady func(context.Context) error) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{}, 2)
	go func() {
		defer func() { done <- struct{}{} }()
		p.Run(ctx)
	}()
	go func() {
		defer func() { done <- struct{}{} }()
		if waitReady(ctx) == nil {
			p.Kick()
		}
	}()
	return func() {
		cancel()
		<-done
		<-done
	}
}
