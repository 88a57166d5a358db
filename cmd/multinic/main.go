// Command multinic is the multinic CNI plugin: Multus runs it once per attachment of a pod to an EC2
// network card. It holds no AWS credentials; addresses come from the node's multinic agent.
package main

import (
	"os"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/multinic/multinic/netconf"
	"github.com/multinic/multinic/plugin"
)

// about is printed when the binary runs without CNI_COMMAND.
const about = "multinic: one ENI-backed address per EC2 network card for Kubernetes pods (CNI plugin)"

func main() {
	p := plugin.New()
	if path := os.Getenv(plugin.TraceEnv); path != "" {
		p.Trace = plugin.TraceTo(path) // the bench's per-step breakdown
	}
	skel.PluginMainFuncs(p.Funcs(), version.PluginSupports(netconf.SupportedVersions...), about)
}
