// Package dra offers the node's managed network cards as Dynamic Resource Allocation devices of driver
// multinic.io (resource.k8s.io/v1): one ResourceSlice per node, published with k8s.io/dynamic-resource-
// allocation's resourceslice controller, and the kubelet plugin that prepares claims for them.
//
// Each managed card is up to two devices:
//   - card-<N>, shared (ipvlan) use: allowMultipleAllocations with the consumable capacity "addresses" (the
//     shared addresses the card can hold); every allocation consumes exactly one, so many claims share the
//     device until the card is full (DRAConsumableCapacity, beta and on by default in Kubernetes 1.37).
//   - card-<N>-exclusive, exclusive use: an ordinary device, allocated whole to one claim at a time: one of
//     the card's ENIs moves into the pod.
//
// Both carry the card's attributes (card, subnet, mode, baselineMbps, peakMbps and, where sysfs shows the
// ENI's PCI device, resource.kubernetes.io/pcieRoot), so a claim can pick cards by index, keep them
// distinct (distinctAttribute multinic.io/card) or align them with a GPU (matchAttribute pcieRoot).
package dra

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/dynamic-resource-allocation/deviceattribute"

	"github.com/multinic/multinic/netconf"
)

// DriverName is the DRA driver's name: the ResourceSlices' spec.driver and the attributes' domain.
const DriverName = "multinic.io"

// The devices' attributes and capacity, in the driver's domain (CEL: device.attributes["multinic.io"].card;
// constraints: "multinic.io/card").
const (
	AttrCard         resourceapi.QualifiedName = "card"
	AttrSubnet       resourceapi.QualifiedName = "subnet"
	AttrMode         resourceapi.QualifiedName = "mode"
	AttrBaselineMbps resourceapi.QualifiedName = "baselineMbps"
	AttrPeakMbps     resourceapi.QualifiedName = "peakMbps"
	// AttrPCIeRoot is Kubernetes' standard attribute, the same for every driver (a GPU's too).
	AttrPCIeRoot = deviceattribute.StandardDeviceAttributePCIeRoot
	// CapAddresses is the shared device's consumable capacity: one address per allocation.
	CapAddresses resourceapi.QualifiedName = "addresses"
)

// Card is what a card's devices say about it.
type Card struct {
	Index  int
	Subnet string
	// Addresses is how many shared addresses the card can hold (eni.CardStats.MaxCapacity); a card without
	// any (not ready yet) gets no devices, so that nothing is scheduled onto a card that cannot serve.
	Addresses              int
	BaselineGbps, PeakGbps float64
	// PCIeRoot is "pci<domain>:<bus>", or "" when unknown (no attribute then).
	PCIeRoot string
}

// DeviceName is the device of card in mode: card-<N> (ipvlan) or card-<N>-exclusive.
func DeviceName(card int, mode string) string {
	if mode == netconf.ModeExclusive {
		return fmt.Sprintf("card-%d-exclusive", card)
	}
	return fmt.Sprintf("card-%d", card)
}

// modeOf is the mode of an allocation: netconf.ModeExclusive or netconf.ModeIPVlan.
func modeOf(exclusive bool) string {
	if exclusive {
		return netconf.ModeExclusive
	}
	return netconf.ModeIPVlan
}

// ParseDeviceName is DeviceName's inverse: the card of card-<N> or card-<N>-exclusive.
func ParseDeviceName(name string) (card int, ok bool) {
	rest, found := strings.CutPrefix(name, "card-")
	if !found {
		return 0, false
	}
	rest, excl := strings.CutSuffix(rest, "-exclusive")
	n, err := strconv.Atoi(rest)
	if err != nil || n < 0 || DeviceName(n, modeOf(excl)) != name {
		return 0, false
	}
	return n, true
}

// Devices are the devices of cards in modes (netconf.ModeIPVlan, netconf.ModeExclusive), sorted by card,
// shared before exclusive. It is pure.
func Devices(cards []Card, modes []string) []resourceapi.Device {
	cards = slices.Clone(cards)
	slices.SortFunc(cards, func(a, b Card) int { return a.Index - b.Index })
	var out []resourceapi.Device
	for _, c := range cards {
		if c.Addresses <= 0 {
			continue
		}
		for _, mode := range []string{netconf.ModeIPVlan, netconf.ModeExclusive} {
			if !slices.Contains(modes, mode) {
				continue
			}
			d := resourceapi.Device{Name: DeviceName(c.Index, mode), Attributes: attributes(c, mode)}
			if mode == netconf.ModeIPVlan {
				one := resource.MustParse("1")
				d.AllowMultipleAllocations = new(true)
				d.Capacity = map[resourceapi.QualifiedName]resourceapi.DeviceCapacity{
					CapAddresses: {
						Value: *resource.NewQuantity(int64(c.Addresses), resource.DecimalSI),
						// Exactly one address per allocation: the agent gives a pod one address per card.
						RequestPolicy: &resourceapi.CapacityRequestPolicy{Default: &one, ValidValues: []resource.Quantity{one}},
					},
				}
			}
			out = append(out, d)
		}
	}
	return out
}

func attributes(c Card, mode string) map[resourceapi.QualifiedName]resourceapi.DeviceAttribute {
	a := map[resourceapi.QualifiedName]resourceapi.DeviceAttribute{
		AttrCard: {IntValue: new(int64(c.Index))},
		AttrMode: {StringValue: new(mode)},
	}
	if c.Subnet != "" {
		a[AttrSubnet] = resourceapi.DeviceAttribute{StringValue: new(c.Subnet)}
	}
	if c.BaselineGbps > 0 {
		a[AttrBaselineMbps] = resourceapi.DeviceAttribute{IntValue: new(int64(math.Round(c.BaselineGbps * 1000)))}
	}
	if c.PeakGbps > 0 {
		a[AttrPeakMbps] = resourceapi.DeviceAttribute{IntValue: new(int64(math.Round(c.PeakGbps * 1000)))}
	}
	if c.PCIeRoot != "" {
		a[AttrPCIeRoot] = resourceapi.DeviceAttribute{StringValue: new(c.PCIeRoot)}
	}
	return a
}
