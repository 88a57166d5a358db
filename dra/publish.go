package dra

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/go-logr/logr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/dynamic-resource-allocation/resourceslice"
	"k8s.io/klog/v2"

	resourceapi "k8s.io/api/resource/v1"
)

// Publisher keeps this node's ResourceSlice of driver multinic.io equal to the devices it was last given.
// The writing (create, update, delete of stale slices, owner reference to the Node so the slices go with
// it) is k8s.io/dynamic-resource-allocation's resourceslice controller; Publisher only names the pool.
type Publisher struct {
	ctrl *resourceslice.Controller
	node string
}

// StartPublisher starts the controller for node's pool (named after the node), publishing no devices until
// Update. Stop ends it; the slices stay (they are deleted with the Node, or by the next agent's controller).
func StartPublisher(ctx context.Context, kube kubernetes.Interface, node string, logger *slog.Logger) (*Publisher, error) {
	ctx = klog.NewContext(ctx, logr.FromSlogHandler(logger.Handler()))
	ctrl, err := resourceslice.StartController(ctx, resourceslice.Options{
		DriverName: DriverName,
		KubeClient: kube,
		Owner:      &resourceslice.Owner{APIVersion: "v1", Kind: "Node", Name: node},
		Resources:  resources(node, nil),
		ErrorHandler: func(_ context.Context, err error, msg string) {
			logger.Error("publish resource slice: "+msg, "node", node, "error", err)
		},
	})
	if err != nil {
		return nil, fmt.Errorf("start resource slice controller for node %s: %w", node, err)
	}
	return &Publisher{ctrl: ctrl, node: node}, nil
}

// Update makes devices the pool's only devices (the controller writes only what differs).
func (p *Publisher) Update(devices []resourceapi.Device) {
	p.ctrl.Update(resources(p.node, devices))
}

// Stop stops the controller and waits for it.
func (p *Publisher) Stop() { p.ctrl.Stop() }

// resources is one pool, named after the node, of one slice (a node has at most 64 devices: 32 cards in
// two modes, within a slice's limit of 128).
func resources(node string, devices []resourceapi.Device) *resourceslice.DriverResources {
	return &resourceslice.DriverResources{Pools: map[string]resourceslice.Pool{
		node: {Slices: []resourceslice.Slice{{Devices: devices}}},
	}}
}
