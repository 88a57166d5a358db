package cluster

import (
	"context"
	"fmt"

	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/dynamic-resource-allocation/deviceattribute"
)

// GPUDriver is the test DRA driver that stands for GPUs in the DRA e2e suites (e2e/dra, e2e/realnode): the
// tests publish its ResourceSlices; manifests/examples/dra-claim-gpu-aligned-4-cards.yaml has its DeviceClass.
const GPUDriver = "gpu.example.com"

// PublishGPUs publishes node's GPUs as GPUDriver's pool (named after the node): gpu-<i> with the standard
// attribute resource.kubernetes.io/pcieRoot roots[i]. It returns the slice's name.
func PublishGPUs(ctx context.Context, kube kubernetes.Interface, node string, roots ...string) (string, error) {
	s := &resourceapi.ResourceSlice{
		ObjectMeta: metav1.ObjectMeta{Name: node + "-gpus"},
		Spec: resourceapi.ResourceSliceSpec{
			Driver: GPUDriver, NodeName: new(node),
			Pool: resourceapi.ResourcePool{Name: node, ResourceSliceCount: 1},
		},
	}
	for i, r := range roots {
		s.Spec.Devices = append(s.Spec.Devices, resourceapi.Device{
			Name:       fmt.Sprintf("gpu-%d", i),
			Attributes: map[resourceapi.QualifiedName]resourceapi.DeviceAttribute{deviceattribute.StandardDeviceAttributePCIeRoot: {StringValue: new(r)}},
		})
	}
	if _, err := kube.ResourceV1().ResourceSlices().Create(ctx, s, metav1.CreateOptions{}); err != nil {
		return "", fmt.Errorf("publish the test GPUs of node %s: %w", node, err)
	}
	return s.Name, nil
}
