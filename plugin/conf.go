package plugin

import (
	"github.com/containernetworking/cni/pkg/types"
	"github.com/vishvananda/netlink"

	"github.com/multinic/multinic/netconf"
)

// ipvlanModes maps netconf's "ipvlanMode" values to the kernel's.
var ipvlanModes = map[string]netlink.IPVlanMode{
	netconf.IPVlanL2:  netlink.IPVLAN_MODE_L2,
	netconf.IPVlanL3:  netlink.IPVLAN_MODE_L3,
	netconf.IPVlanL3S: netlink.IPVLAN_MODE_L3S,
}

// routeTable is the route table of the pod interface on conf's card.
func routeTable(conf *netconf.Config) int { return RouteTableBase + conf.Card }

// K8sArgs are the CNI_ARGS kubelet's runtime (and Multus) pass.
type K8sArgs struct {
	types.CommonArgs
	K8S_POD_NAMESPACE          types.UnmarshallableString //nolint:revive // the names are the keys
	K8S_POD_NAME               types.UnmarshallableString //nolint:revive
	K8S_POD_INFRA_CONTAINER_ID types.UnmarshallableString //nolint:revive
	K8S_POD_UID                types.UnmarshallableString //nolint:revive
}

// parseArgs parses CNI_ARGS. Unknown keys are an error unless IgnoreUnknown is set, as in every reference
// plugin. Errors are *types.Error with code 7.
func parseArgs(s string) (*K8sArgs, error) {
	a := &K8sArgs{}
	if err := types.LoadArgs(s, a); err != nil {
		return nil, netconf.Invalid("CNI_ARGS invalid: %v", err)
	}
	return a, nil
}
