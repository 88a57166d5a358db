package dra

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/go-logr/logr"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/types"
	resourceapply "k8s.io/client-go/applyconfigurations/resource/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	"k8s.io/klog/v2"

	"github.com/multinic/multinic/ipam/api"
)

// Allocations is what the kubelet plugin needs from the agent's allocation backend (ipam/backend.Backend):
// the same calls the CNI plugin makes over the socket, so a claim's cards are reserved, held and freed by
// the one allocator, under its rules, in its checkpoint.
type Allocations interface {
	Allocate(ctx context.Context, req api.AllocateRequest) (api.AllocateResponse, error)
	Release(ctx context.Context, req api.ReleaseRequest) (api.ReleaseResponse, error)
	List(ctx context.Context) ([]api.Allocation, error)
}

// A prepared claim is one allocation per device, all of "container" ClaimContainerID(claim UID), interface
// ClaimIfName(card), network Network. They carry no pod and no netns, so neither the agent's reclaim nor
// CNI GC (scoped to a network) ever frees them: only NodeUnprepareResources does.
const (
	claimPrefix = "dra-"
	// Network is the network name of the claims' allocations.
	Network = "multinic.io-dra"
)

// ClaimContainerID is the allocations' container ID of the claim with this UID.
func ClaimContainerID(uid types.UID) string { return claimPrefix + string(uid) }

// ClaimIfName is the allocations' interface name of a claim's device on card.
func ClaimIfName(card int) string { return fmt.Sprintf("card%d", card) }

// PluginConfig configures the kubelet plugin.
type PluginConfig struct {
	Kube        kubernetes.Interface
	NodeName    string
	Allocations Allocations
	// Family is the address family a card serves (api.FamilyIPv4, FamilyIPv6 or FamilyDual: the ENI
	// manager's), which a claim's allocation asks for as a NAD's would; nil: ipv4.
	Family func(card int) string
	// RegistryDir is the kubelet's plugin registration folder (kubeletplugin.KubeletRegistryDir), PluginDir
	// the folder of the plugin's socket (kubeletplugin.KubeletPluginsDir/multinic.io).
	RegistryDir, PluginDir string
	// Statuses writes the claims' status (shared with the backend's Config.Interfaces, which tells it the
	// interfaces Multus attachments make; its caller runs it). nil: StartPlugin makes and runs one of its own.
	Statuses *Statuses
	Logger   *slog.Logger
}

// Plugin is the kubelet plugin of driver multinic.io: NodePrepareResources reserves a claim's cards with the
// allocator, NodeUnprepareResources releases them. The gRPC servers, the registration with the kubelet, the
// fetching of the claims and the serialization of calls are k8s.io/dynamic-resource-allocation/kubeletplugin's.
type Plugin struct {
	cfg    PluginConfig
	log    *slog.Logger
	helper *kubeletplugin.Helper
}

var _ kubeletplugin.DRAPlugin = (*Plugin)(nil)

// StartPlugin serves the kubelet plugin until ctx ends or Stop.
func StartPlugin(ctx context.Context, cfg PluginConfig) (*Plugin, error) {
	if cfg.Statuses == nil {
		cfg.Statuses = NewStatuses(cfg.Kube, cfg.Logger)
		go cfg.Statuses.Run(ctx)
	}
	p := &Plugin{cfg: cfg, log: cfg.Logger}
	opts := []kubeletplugin.Option{
		kubeletplugin.DriverName(DriverName), kubeletplugin.KubeClient(cfg.Kube), kubeletplugin.NodeName(cfg.NodeName),
		kubeletplugin.HealthService(false), // no device health to report
	}
	if cfg.RegistryDir == "" {
		cfg.RegistryDir = kubeletplugin.KubeletRegistryDir
	}
	if cfg.PluginDir == "" {
		cfg.PluginDir = filepath.Join(kubeletplugin.KubeletPluginsDir, DriverName)
	}
	// The helper listens in both folders but creates neither: the plugin's own is new on a node, and the
	// kubelet's may not be there yet when the agent starts first.
	for _, d := range []string{cfg.RegistryDir, cfg.PluginDir} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			return nil, fmt.Errorf("start the kubelet plugin of %s: %w", DriverName, err)
		}
	}
	opts = append(opts, kubeletplugin.RegistrarDirectoryPath(cfg.RegistryDir), kubeletplugin.PluginDataDirectoryPath(cfg.PluginDir))
	ctx = klog.NewContext(ctx, logr.FromSlogHandler(cfg.Logger.Handler()))
	h, err := kubeletplugin.Start(ctx, p, opts...)
	if err != nil {
		return nil, fmt.Errorf("start the kubelet plugin of %s: %w", DriverName, err)
	}
	p.helper = h
	return p, nil
}

// Stop stops the plugin's servers and waits for them.
func (p *Plugin) Stop() { p.helper.Stop() }

// claimDevice is one device of a claim's allocation that this node's multinic.io serves.
type claimDevice struct {
	result    resourceapi.DeviceRequestAllocationResult
	card      int
	exclusive bool
}

// claimDevices are claim's devices of driver multinic.io in this node's pool. A device name that is not
// one of DeviceName's is an error: the scheduler allocated from a slice this agent did not publish.
func (p *Plugin) claimDevices(claim *resourceapi.ResourceClaim) ([]claimDevice, error) {
	if claim.Status.Allocation == nil {
		return nil, fmt.Errorf("claim %s/%s is not allocated", claim.Namespace, claim.Name)
	}
	var out []claimDevice
	for _, r := range claim.Status.Allocation.Devices.Results {
		if r.Driver != DriverName {
			continue
		}
		if r.Pool != p.cfg.NodeName {
			return nil, fmt.Errorf("claim %s/%s: device %s is in pool %s, not this node's (%s)", claim.Namespace, claim.Name, r.Device, r.Pool, p.cfg.NodeName)
		}
		d := claimDevice{result: r}
		card, ok := ParseDeviceName(r.Device)
		if !ok {
			return nil, fmt.Errorf("claim %s/%s: device %q is not a multinic.io card", claim.Namespace, claim.Name, r.Device)
		}
		d.card, d.exclusive = card, strings.HasSuffix(r.Device, "-exclusive")
		out = append(out, d)
	}
	return out, nil
}

// PrepareResourceClaims reserves every claim's cards (kubeletplugin.DRAPlugin).
func (p *Plugin) PrepareResourceClaims(ctx context.Context, claims []*resourceapi.ResourceClaim) (map[types.UID]kubeletplugin.PrepareResult, error) {
	out := make(map[types.UID]kubeletplugin.PrepareResult, len(claims))
	for _, c := range claims {
		devs, err := p.prepare(ctx, c)
		out[c.UID] = kubeletplugin.PrepareResult{Devices: devs, Err: err}
		if err != nil {
			p.log.Error("prepare claim", "claim", c.Namespace+"/"+c.Name, "uid", c.UID, "error", err)
		}
	}
	return out, nil
}

// prepare reserves one allocation per device of claim: an address on a shared card, a whole ENI on an
// exclusive one. It is idempotent (an allocation that exists is answered as it is, also after an agent
// restart: the allocator's checkpoint holds it) and all or nothing: on failure it releases what this call
// took, never what an earlier call prepared.
func (p *Plugin) prepare(ctx context.Context, claim *resourceapi.ResourceClaim) (_ []kubeletplugin.Device, retErr error) {
	devs, err := p.claimDevices(claim)
	if err != nil {
		return nil, err
	}
	id := ClaimContainerID(claim.UID)
	held, err := p.cfg.Allocations.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("prepare claim %s/%s: %w", claim.Namespace, claim.Name, err)
	}
	had := map[string]bool{}
	for _, al := range held {
		if al.ContainerID == id {
			had[al.IfName] = true
		}
	}
	// The last line of defense: an exclusive card is never given twice. The scheduler gives card-N-exclusive
	// to one claim at a time, so any other live exclusive allocation on card N means it and the agent
	// disagree: refuse before taking anything. The claim's own are prepare's (key id) and those its pod took
	// over (a Multus attachment's, Transfer): that device is prepared already.
	takenOver := map[int]bool{}
	for _, d := range devs {
		if !d.exclusive {
			continue
		}
		for _, al := range held {
			switch {
			case !al.Exclusive || al.Card != d.card || al.ContainerID == id:
			case tookOver(claim, al):
				takenOver[d.card] = true
			default:
				return nil, fmt.Errorf("prepare claim %s/%s: device %s: card %d's exclusive ENI %s is held by %s: "+
					"the scheduler and this node's agent disagree, so the card is not given twice",
					claim.Namespace, claim.Name, d.result.Device, d.card, al.ENIID, holder(al))
			}
		}
	}
	var took []api.ReleaseRequest
	defer func() {
		if retErr == nil {
			return
		}
		for _, r := range took {
			if _, err := p.cfg.Allocations.Release(context.WithoutCancel(ctx), r); err != nil {
				retErr = errors.Join(retErr, fmt.Errorf("give back card %s: %w", r.IfName, err))
			}
		}
	}()
	seen := map[int]string{}
	var out []kubeletplugin.Device
	var status []preparedDevice
	for _, d := range devs {
		if other, ok := seen[d.card]; ok {
			return nil, fmt.Errorf("prepare claim %s/%s: devices %s and %s are both on card %d; a pod gets one address per card "+
				"(use distinctAttribute %s/%s)", claim.Namespace, claim.Name, other, d.result.Device, d.card, DriverName, AttrCard)
		}
		seen[d.card] = d.result.Device
		if takenOver[d.card] {
			p.log.Info("prepared device, held by the claim's pod", "claim", claim.Namespace+"/"+claim.Name, "uid", claim.UID, "device", d.result.Device)
			out = append(out, kubeletplugin.Device{
				Requests: []string{d.result.Request}, PoolName: d.result.Pool, DeviceName: d.result.Device, ShareID: d.result.ShareID,
			})
			continue
		}
		req := api.AllocateRequest{Card: d.card, ContainerID: id, IfName: ClaimIfName(d.card), Exclusive: d.exclusive, Network: Network}
		if p.cfg.Family != nil {
			req.Family = p.cfg.Family(d.card)
		}
		resp, err := p.cfg.Allocations.Allocate(ctx, req)
		if err != nil {
			return nil, fmt.Errorf("prepare claim %s/%s: device %s: %w", claim.Namespace, claim.Name, d.result.Device, err)
		}
		if !had[req.IfName] {
			took = append(took, api.ReleaseRequest{ContainerID: id, IfName: req.IfName})
		}
		p.log.Info("prepared device", "claim", claim.Namespace+"/"+claim.Name, "uid", claim.UID, "device", d.result.Device,
			"address", resp.Address, "eni", resp.ENIID, "exclusive", resp.Exclusive)
		out = append(out, kubeletplugin.Device{
			Requests: []string{d.result.Request}, PoolName: d.result.Pool, DeviceName: d.result.Device, ShareID: d.result.ShareID,
		})
		status = append(status, preparedDevice{result: d.result, card: d.card, lease: resp})
	}
	// The claim's status says what each device got. It is information for users, not for the kubelet: a
	// failed write is logged and made again in the background (Statuses.Run), it fails nothing. A device the
	// pod took over has its entry from the first prepare (Statuses keeps it, interface name included); a
	// write without it would take it away.
	if len(takenOver) > 0 {
		return out, nil
	}
	if err := p.cfg.Statuses.Prepared(ctx, claim, status); err != nil {
		p.log.Warn("write the claim's device status", "claim", claim.Namespace+"/"+claim.Name, "error", err)
	}
	return out, nil
}

// tookOver says whether al, an allocation that is not under claim's key, is one claim's pod took over from
// claim's prepare: it is held by a pod claim is reserved for.
func tookOver(claim *resourceapi.ResourceClaim, al api.Allocation) bool {
	return slices.ContainsFunc(claim.Status.ReservedFor, func(r resourceapi.ResourceClaimConsumerReference) bool {
		return r.Resource == "pods" && ((al.PodUID != "" && string(r.UID) == al.PodUID) ||
			(al.PodUID == "" && al.PodNamespace == claim.Namespace && al.PodName != "" && r.Name == al.PodName))
	})
}

// holder names who holds al, for errors: a claim (by UID), or a pod's attachment.
func holder(al api.Allocation) string {
	if uid, ok := strings.CutPrefix(al.ContainerID, claimPrefix); ok && al.Network == Network {
		return "claim " + uid
	}
	who := "container " + al.ContainerID + " interface " + al.IfName
	if pod := al.Describe(); pod != "" {
		who = "pod " + pod + ", " + who
	}
	return who
}

// deviceStatus is the status.devices entry of one prepared device: its addresses (with the subnet's prefix
// length), the ENI's MAC (which an ipvlan child shares and an exclusive ENI is), and the pod's interface of
// it once an attachment made one (Statuses.Attached: the Multus ADD's ifname, or the NRI plugin's card<N>).
func deviceStatus(d preparedDevice) *resourceapply.AllocatedDeviceStatusApplyConfiguration {
	r, resp := d.result, d.lease
	var ips []string
	if resp.Address.IsValid() { // zero on an ipv6 card
		ips = append(ips, netip.PrefixFrom(resp.Address, resp.PrefixLen).String())
	}
	if resp.IPv6 != nil {
		ips = append(ips, netip.PrefixFrom(resp.IPv6.Address, resp.IPv6.PrefixLen).String())
	}
	nd := resourceapply.NetworkDeviceData().WithIPs(ips...).WithHardwareAddress(resp.MAC)
	if d.ifName != "" {
		nd.WithInterfaceName(d.ifName)
	}
	st := resourceapply.AllocatedDeviceStatus().WithDriver(r.Driver).WithPool(r.Pool).WithDevice(r.Device).WithNetworkData(nd)
	if r.ShareID != nil {
		st.WithShareID(string(*r.ShareID))
	}
	return st
}

// UnprepareResourceClaims releases every claim's allocations (kubeletplugin.DRAPlugin). A claim with none
// (never prepared, or released already) is done.
func (p *Plugin) UnprepareResourceClaims(ctx context.Context, claims []kubeletplugin.NamespacedObject) (map[types.UID]error, error) {
	held, err := p.cfg.Allocations.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("unprepare claims: %w", err)
	}
	out := make(map[types.UID]error, len(claims))
	for _, c := range claims {
		id := ClaimContainerID(c.UID)
		var errs []error
		for _, al := range held {
			if al.ContainerID != id {
				continue
			}
			if _, err := p.cfg.Allocations.Release(ctx, api.ReleaseRequest{ContainerID: id, IfName: al.IfName}); err != nil {
				errs = append(errs, fmt.Errorf("unprepare claim %s: card %d: %w", c, al.Card, err))
				continue
			}
			p.log.Info("unprepared device", "claim", c.String(), "card", al.Card, "address", al.Address, "exclusive", al.Exclusive)
		}
		if err := p.cfg.Statuses.Unprepared(ctx, c.Namespace, c.Name, c.UID); err != nil {
			p.log.Warn("clear the claim's device status", "claim", c.String(), "error", err)
		}
		out[c.UID] = errors.Join(errs...)
	}
	return out, nil
}

// ClaimInterfaces notes the interfaces the NRI plugin built in or removed from a pod for its claim devices,
// for the claims' status (server.Claimer). It only notes them: Statuses writes in the background.
func (p *Plugin) ClaimInterfaces(_ context.Context, req api.ClaimInterfacesRequest) error {
	for _, i := range req.Attached {
		p.cfg.Statuses.Attached(req.PodUID, i.Card, i.IfName)
	}
	for _, i := range req.Detached {
		p.cfg.Statuses.Detached(req.PodUID, i.Card, i.IfName)
	}
	return nil
}

// HandleError logs errors of the helper's background work (kubeletplugin.DRAPlugin); none is fatal here.
func (p *Plugin) HandleError(_ context.Context, err error, msg string) {
	p.log.Error("kubelet plugin: "+msg, "error", err)
}

// WatchHealthStatus: multinic reports no device health (the service is off, see StartPlugin).
func (p *Plugin) WatchHealthStatus(context.Context, chan<- kubeletplugin.DeviceHealthReport) error {
	return kubeletplugin.ErrHealthNotSupported
}
