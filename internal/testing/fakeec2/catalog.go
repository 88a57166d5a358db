package fakeec2

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"slices"
)

// catalog.json holds a few real instance types with their network cards. Every
// card of a type has the same limits and bandwidth, which holds for the types
// listed; numbers are approximately the published ones. All are Nitro types with
// IPv6; EC2's AssignIpv6Addresses documentation says an interface takes as many
// IPv6 addresses as private IPv4 addresses, so ipv6AddressesPerInterface equals
// ipv4AddressesPerInterface.
//
//go:embed catalog.json
var catalogJSON []byte

// InstanceType is one catalog entry.
type InstanceType struct {
	Name                   string  `json:"instanceType"`
	VCPUs                  int     `json:"vcpus"`
	MemoryMiB              int     `json:"memoryMiB"`
	NetworkPerformance     string  `json:"networkPerformance"`
	MaxInterfaces          int     `json:"maximumNetworkInterfaces"`
	IPv4PerInterface       int     `json:"ipv4AddressesPerInterface"`
	IPv6Supported          bool    `json:"ipv6Supported"`
	IPv6PerInterface       int     `json:"ipv6AddressesPerInterface"` // addresses and /80 prefixes together
	EFASupported           bool    `json:"efaSupported"`
	NetworkCards           int     `json:"networkCards"`
	InterfacesPerCard      int     `json:"interfacesPerCard"`
	CardBaselineGbps       float64 `json:"cardBaselineGbps"`
	CardPeakGbps           float64 `json:"cardPeakGbps"`
	CardNetworkPerformance string  `json:"cardNetworkPerformance"`
}

var catalog = mustLoadCatalog(catalogJSON)

func mustLoadCatalog(b []byte) map[string]*InstanceType {
	var types []*InstanceType
	if err := json.Unmarshal(b, &types); err != nil {
		panic(fmt.Sprintf("parse embedded catalog: %v", err))
	}
	m := make(map[string]*InstanceType, len(types))
	for _, t := range types {
		if t.NetworkCards < 1 || t.InterfacesPerCard < 1 || t.IPv4PerInterface < 1 || t.IPv6Supported != (t.IPv6PerInterface > 0) {
			panic(fmt.Sprintf("embedded catalog: bad entry %q", t.Name))
		}
		m[t.Name] = t
	}
	return m
}

// InstanceTypes lists the names of the types the fake knows, sorted.
func InstanceTypes() []string {
	names := make([]string, 0, len(catalog))
	for n := range catalog {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// LookupInstanceType returns a copy of the catalog entry for name.
func LookupInstanceType(name string) (InstanceType, bool) {
	t, ok := catalog[name]
	if !ok {
		return InstanceType{}, false
	}
	return *t, true
}
