// Package nri attaches a pod's DRA-claimed cards without Multus: a containerd NRI plugin that, when a pod
// sandbox starts (after the runtime set up its network, before any of its containers run), asks the agent
// for the pod's prepared claim devices (GET /v1/claims) and builds each one's interface in the sandbox's
// netns with the CNI plugin's own code (plugin.Attach), and removes them (plugin.Detach) when the sandbox
// stops or goes. The claims' addresses stay the claims': only the kubelet plugin's NodeUnprepareResources
// gives them back to the agent.
//
// It holds no state and no Kubernetes credentials: the agent knows the claims, the pod's netns holds the
// interfaces, so a restart loses nothing (Synchronize attaches what a pod that started meanwhile misses).
package nri

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strconv"
	"time"

	nriapi "github.com/containerd/nri/pkg/api"
	"github.com/containerd/nri/pkg/stub"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/multinic/multinic/ipam/api"
	"github.com/multinic/multinic/netconf"
	"github.com/multinic/multinic/plugin"
)

// Agent is what the NRI plugin asks the node agent (api.Client).
type Agent interface {
	Claims(ctx context.Context, pod api.PodRef) ([]api.ClaimAttachment, error)
	ClaimInterfaces(ctx context.Context, req api.ClaimInterfacesRequest) error
}

// reportTimeout bounds the report of a pod's claim interfaces to the agent, within containerd's time budget
// for the event (plugin_request_timeout, 2 s by default). The agent only notes them, so it answers at once.
const reportTimeout = 500 * time.Millisecond

// Plugin is the NRI plugin. Its exported methods are the NRI events it subscribes to (package stub finds
// them by their interfaces).
type Plugin struct {
	agent       Agent
	agentSocket string
	net         *plugin.Plugin
	log         *slog.Logger
}

var (
	_ stub.RunPodInterface      = (*Plugin)(nil)
	_ stub.StopPodInterface     = (*Plugin)(nil)
	_ stub.RemovePodInterface   = (*Plugin)(nil)
	_ stub.SynchronizeInterface = (*Plugin)(nil)
)

// New returns the plugin asking agent, whose socket is agentSocket (the networks' "agentSocket").
func New(agent Agent, agentSocket string, logger *slog.Logger) *Plugin {
	return &Plugin{agent: agent, agentSocket: agentSocket, net: plugin.New(), log: logger}
}

// RunPodSandbox attaches the pod's claimed cards. An error fails the sandbox (containerd then tears down its
// network; the kubelet retries), so a pod never runs without the cards it claimed.
func (p *Plugin) RunPodSandbox(ctx context.Context, pod *nriapi.PodSandbox) error {
	return p.attach(ctx, pod)
}

// StopPodSandbox detaches the pod's cards before containerd tears down the netns, so an exclusive ENI comes
// back to the node instead of going with the netns.
func (p *Plugin) StopPodSandbox(ctx context.Context, pod *nriapi.PodSandbox) error {
	return p.detach(ctx, pod)
}

// RemovePodSandbox detaches what a stop missed (a sandbox that failed to start is removed without a stop).
func (p *Plugin) RemovePodSandbox(ctx context.Context, pod *nriapi.PodSandbox) error {
	return p.detach(ctx, pod)
}

// Synchronize is the runtime's list of pods when the plugin (re)connects: pods that started while it was
// down get their cards now. Failures are logged, not returned: returning one would refuse the connection.
func (p *Plugin) Synchronize(ctx context.Context, pods []*nriapi.PodSandbox, _ []*nriapi.Container) ([]*nriapi.ContainerUpdate, error) {
	for _, pod := range pods {
		if err := p.attach(ctx, pod); err != nil {
			p.log.Error("attach the claimed cards of a running pod", "pod", describe(pod), "error", err)
		}
	}
	return nil, nil
}

// netnsPath is the sandbox's network namespace, "" for a pod in the host's.
func netnsPath(pod *nriapi.PodSandbox) string {
	for _, n := range pod.GetLinux().GetNamespaces() {
		if n.GetType() == "network" {
			return n.GetPath()
		}
	}
	return ""
}

func podRef(pod *nriapi.PodSandbox) api.PodRef {
	return api.PodRef{PodNamespace: pod.GetNamespace(), PodName: pod.GetName(), PodUID: pod.GetUid()}
}

func describe(pod *nriapi.PodSandbox) string { return podRef(pod).Describe() }

// attach builds the interface of each of the pod's claim devices that is not there yet; on failure it
// removes those it built.
func (p *Plugin) attach(ctx context.Context, pod *nriapi.PodSandbox) (retErr error) {
	path := netnsPath(pod)
	atts, err := p.agent.Claims(ctx, podRef(pod))
	switch {
	case err != nil && path == "":
		// Nothing could be attached to it anyway: a host-network pod (kube-proxy, the agent's own) is not held
		// up while the agent restarts.
		p.log.Warn("cannot check the claims of a host-network pod", "pod", describe(pod), "error", err)
		return nil
	case err != nil:
		return fmt.Errorf("attach the claimed cards of pod %s: %w", describe(pod), err)
	case len(atts) == 0:
		return nil
	case path == "":
		return fmt.Errorf("attach the claimed cards of pod %s: a pod in the host's network namespace cannot take cards (claim %s)",
			describe(pod), atts[0].Claim)
	}
	podNS, err := plugin.OpenPodNS(path)
	if err != nil {
		return fmt.Errorf("attach the claimed cards of pod %s: %w", describe(pod), err)
	}
	defer podNS.Close()
	var made []string
	var attached []api.PodInterface // made now or before: each device's interface, for the claims' status
	defer func() {
		if retErr == nil {
			p.report(ctx, pod, api.ClaimInterfacesRequest{Attached: attached})
			return
		}
		for _, name := range made {
			if err := p.detachOne(path, name); err != nil {
				retErr = errors.Join(retErr, fmt.Errorf("roll back: %w", err))
			}
		}
	}()
	for _, a := range atts {
		name := a.Request.IfName
		if _, ok := cardOf(name); !ok {
			return fmt.Errorf("attach claim %s device %s to pod %s: interface name %q is not card<N>", a.Claim, a.Device, describe(pod), name)
		}
		has, err := plugin.HasLink(podNS, name)
		if err != nil {
			return err
		}
		if has {
			attached = append(attached, api.PodInterface{Card: a.Request.Card, IfName: name})
			continue // attached before (a Synchronize after a restart)
		}
		conf, err := p.config(a.Request)
		if err != nil {
			return fmt.Errorf("attach claim %s device %s to pod %s: %w", a.Claim, a.Device, describe(pod), err)
		}
		if _, err := p.net.Attach(podNS, conf, name, a.Lease); err != nil {
			return fmt.Errorf("attach claim %s device %s to pod %s: %w", a.Claim, a.Device, describe(pod), err)
		}
		made = append(made, name)
		attached = append(attached, api.PodInterface{Card: a.Request.Card, IfName: name})
		p.log.Info("attached", "pod", describe(pod), "claim", a.Claim, "device", a.Device, "ifname", name,
			"address", a.Lease.Address, "eni", a.Lease.ENIID, "exclusive", a.Lease.Exclusive)
	}
	return nil
}

// config is the network configuration of a claim's allocation, rendered as the agent renders a card's NAD
// (netconf.Render) so that plugin.Attach builds the interface exactly as a Multus attachment of that card.
func (p *Plugin) config(req api.AllocateRequest) (*netconf.Config, error) {
	n := netconf.Network{NetworkCard: &req.Card, Mode: netconf.ModeIPVlan, AgentSocket: p.agentSocket}
	if req.Exclusive {
		n.Mode = netconf.ModeExclusive
	}
	if f := api.NormalFamily(req.Family); f != api.FamilyIPv4 {
		n.Family = f
	}
	b, err := netconf.Render(cniVersion, req.Network, n)
	if err != nil {
		return nil, err
	}
	return netconf.Load(b)
}

// cniVersion is the version of the rendered configurations (no result is printed from them).
const cniVersion = "1.1.0"

// report tells the agent which claim interfaces the pod got or lost, for the claims' status (interfaceName).
// That is information for users: a failure (an agent older than the call answers "no endpoint") is logged,
// never returned, and it waits at most reportTimeout.
func (p *Plugin) report(ctx context.Context, pod *nriapi.PodSandbox, req api.ClaimInterfacesRequest) {
	if len(req.Attached) == 0 && len(req.Detached) == 0 {
		return
	}
	req.PodRef = podRef(pod)
	ctx, cancel := context.WithTimeout(ctx, reportTimeout)
	defer cancel()
	if err := p.agent.ClaimInterfaces(ctx, req); err != nil {
		p.log.Warn("tell the agent the pod's claim interfaces (the claims' status will not name them)", "pod", describe(pod), "error", err)
	}
}

// detach removes every claim interface (card<N>) from the pod's netns; a netns already gone has none.
func (p *Plugin) detach(ctx context.Context, pod *nriapi.PodSandbox) error {
	path := netnsPath(pod)
	if path == "" {
		return nil
	}
	names, err := claimLinks(path)
	if err != nil {
		return fmt.Errorf("detach the claimed cards of pod %s: %w", describe(pod), err)
	}
	var errs []error
	var detached []api.PodInterface
	for _, name := range names {
		if err := p.detachOne(path, name); err != nil {
			errs = append(errs, err)
			continue
		}
		card, _ := cardOf(name)
		detached = append(detached, api.PodInterface{Card: card, IfName: name})
		p.log.Info("detached", "pod", describe(pod), "ifname", name)
	}
	p.report(ctx, pod, api.ClaimInterfacesRequest{Detached: detached})
	if len(errs) > 0 {
		return fmt.Errorf("detach the claimed cards of pod %s: %w", describe(pod), errors.Join(errs...))
	}
	return nil
}

// detachOne removes claim interface name (card<N>: its card's route table and rule go with it).
func (p *Plugin) detachOne(path, name string) error {
	card, _ := cardOf(name)
	conf, err := p.config(api.AllocateRequest{Card: card})
	if err != nil {
		return err
	}
	return plugin.Detach(path, conf, name)
}

// claimName is the form of the claims' interface names, dra.ClaimIfName's.
var claimName = regexp.MustCompile(`^card(0|[1-9][0-9]{0,2})$`)

// cardOf is the card of a claim interface name.
func cardOf(name string) (int, bool) {
	m := claimName.FindStringSubmatch(name)
	if m == nil {
		return 0, false
	}
	card, err := strconv.Atoi(m[1])
	return card, err == nil && card <= netconf.MaxNetworkCard
}

// claimLinks are the names of the claim interfaces in the netns at path; none when it is gone.
func claimLinks(path string) ([]string, error) {
	podNS, err := plugin.OpenPodNS(path)
	if err != nil {
		return nil, ignoreGone(err)
	}
	defer podNS.Close()
	var names []string
	err = podNS.Do(func(ns.NetNS) error {
		links, err := netlinksafe.LinkList()
		if err != nil {
			return err
		}
		for _, l := range links {
			if _, ok := cardOf(l.Attrs().Name); ok {
				names = append(names, l.Attrs().Name)
			}
		}
		return nil
	})
	return names, err
}

// ignoreGone is nil for OpenPodNS's error of a netns that is gone (CNI code 3), else err.
func ignoreGone(err error) error {
	if e := (*types.Error)(nil); errors.As(err, &e) && e.Code == types.ErrUnknownContainer {
		return nil
	}
	return err
}
