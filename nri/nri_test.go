package nri

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	nriapi "github.com/containerd/nri/pkg/api"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/multinic/multinic/dra"
	"github.com/multinic/multinic/internal/nettest"
	"github.com/multinic/multinic/ipam/api"
	"github.com/multinic/multinic/netconf"
)

// fakeAgent answers Claims with atts (or err) and records the pods asked about, and the claim interfaces
// reported (answered with reportErr).
type fakeAgent struct {
	atts      []api.ClaimAttachment
	err       error
	asked     []api.PodRef
	reports   []api.ClaimInterfacesRequest
	reportErr error
}

func (f *fakeAgent) Claims(_ context.Context, pod api.PodRef) ([]api.ClaimAttachment, error) {
	f.asked = append(f.asked, pod)
	return f.atts, f.err
}

func (f *fakeAgent) ClaimInterfaces(_ context.Context, req api.ClaimInterfacesRequest) error {
	f.reports = append(f.reports, req)
	return f.reportErr
}

// takeReports returns the reports since the last call, as JSON for easy comparison.
func (f *fakeAgent) takeReports(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, r := range f.reports {
		b, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, string(b))
	}
	f.reports = nil
	return out
}

func newTestPlugin(f *fakeAgent) *Plugin {
	return New(f, "/run/test/agent.sock", slog.New(slog.NewTextHandler(io.Discard, nil)))
}

// sandbox is pod ns/p (uid u) whose network namespace is at netns ("": the host's).
func sandbox(netns string) *nriapi.PodSandbox {
	pod := &nriapi.PodSandbox{Id: "sb", Namespace: "ns", Name: "p", Uid: "u", Linux: &nriapi.LinuxPodSandbox{}}
	pod.Linux.Namespaces = append(pod.Linux.Namespaces, &nriapi.LinuxNamespace{Type: "ipc", Path: "/proc/1/ns/ipc"})
	if netns != "" {
		pod.Linux.Namespaces = append(pod.Linux.Namespaces, &nriapi.LinuxNamespace{Type: "network", Path: netns})
	}
	return pod
}

// TestRunPodSandboxWithoutClaims: the agent is asked about the pod by namespace, name and UID, and a pod
// without claims is left alone (its netns, here a path that does not exist, is never opened).
func TestRunPodSandboxWithoutClaims(t *testing.T) {
	f := &fakeAgent{}
	if err := newTestPlugin(f).RunPodSandbox(context.Background(), sandbox("/nonexistent/netns")); err != nil {
		t.Fatalf("RunPodSandbox: %v", err)
	}
	if want := []api.PodRef{{PodNamespace: "ns", PodName: "p", PodUID: "u"}}; !slices.Equal(f.asked, want) {
		t.Errorf("agent asked about %+v, want %+v", f.asked, want)
	}
}

// TestRunPodSandboxRefuses: an agent that cannot answer and a host-network pod with claims fail the sandbox,
// naming why; a host-network pod is not held up by an agent that cannot answer (it could take no card).
func TestRunPodSandboxRefuses(t *testing.T) {
	f := &fakeAgent{err: api.ErrUnavailable}
	err := newTestPlugin(f).RunPodSandbox(context.Background(), sandbox("/nonexistent/netns"))
	if !errors.Is(err, api.ErrUnavailable) {
		t.Errorf("RunPodSandbox with the agent down: %v, want api.ErrUnavailable", err)
	}
	if err := newTestPlugin(f).RunPodSandbox(context.Background(), sandbox("")); err != nil || len(f.asked) != 2 {
		t.Errorf("RunPodSandbox of a host-network pod with the agent down: %v (agent asked %d times), want nil after asking", err, len(f.asked))
	}
	f = &fakeAgent{atts: []api.ClaimAttachment{{Claim: "ns/c", Device: "card-1", Request: api.AllocateRequest{Card: 1, IfName: "card1"}}}}
	err = newTestPlugin(f).RunPodSandbox(context.Background(), sandbox(""))
	if err == nil || !strings.Contains(err.Error(), "host's network namespace") || !strings.Contains(err.Error(), "ns/c") {
		t.Errorf("RunPodSandbox of a host-network pod with a claim: %v, want a refusal naming the claim", err)
	}
}

// TestDetachGoneNetns: a sandbox whose netns is gone, or that has none, has nothing to detach.
func TestDetachGoneNetns(t *testing.T) {
	p := newTestPlugin(&fakeAgent{})
	for _, netns := range []string{"/nonexistent/netns", ""} {
		if err := p.StopPodSandbox(context.Background(), sandbox(netns)); err != nil {
			t.Errorf("StopPodSandbox (netns %q): %v", netns, err)
		}
		if err := p.RemovePodSandbox(context.Background(), sandbox(netns)); err != nil {
			t.Errorf("RemovePodSandbox (netns %q): %v", netns, err)
		}
	}
}

// TestConfig: a claim's allocation is configured as the agent's NAD of its card and mode: card, mode, family
// (ipv4 left out), the agent's socket, and the defaults (ipvlan l2, policy routing).
func TestConfig(t *testing.T) {
	p := newTestPlugin(&fakeAgent{})
	for _, tc := range []struct {
		req       api.AllocateRequest
		mode, fam string
	}{
		{api.AllocateRequest{Card: 1, Network: dra.Network}, netconf.ModeIPVlan, netconf.FamilyIPv4},
		{api.AllocateRequest{Card: 3, Network: dra.Network, Exclusive: true}, netconf.ModeExclusive, netconf.FamilyIPv4},
		{api.AllocateRequest{Card: 7, Network: dra.Network, Family: api.FamilyDual}, netconf.ModeIPVlan, netconf.FamilyDual},
	} {
		c, err := p.config(tc.req)
		if err != nil {
			t.Fatalf("config(%+v): %v", tc.req, err)
		}
		if c.Card != tc.req.Card || c.Mode != tc.mode || c.Family != tc.fam || c.Name != dra.Network ||
			c.AgentSocket != "/run/test/agent.sock" || c.IPVlanMode != netconf.IPVlanL2 || !c.PolicyRouting || c.MTU != 0 {
			t.Errorf("config(%+v) = %+v", tc.req, c)
		}
	}
}

// TestCardOf: exactly the names dra.ClaimIfName gives are claim interfaces, with their card.
func TestCardOf(t *testing.T) {
	for card := 0; card <= netconf.MaxNetworkCard; card++ {
		if got, ok := cardOf(dra.ClaimIfName(card)); !ok || got != card {
			t.Errorf("cardOf(%q) = %d, %t; want %d", dra.ClaimIfName(card), got, ok, card)
		}
	}
	for _, name := range []string{"card", "card01", "card256", "net1", "eth0", "xcard1", "card1x", "card-1"} {
		if card, ok := cardOf(name); ok {
			t.Errorf("cardOf(%q) = %d: not a claim interface", name, card)
		}
	}
}

// The root tests: a node netns holding the card's ENI (a veth to a vpc netns, as the plugin's own tests
// build it) and a pod netns. Exclusive mode moves the ENI, which needs no ipvlan, so they run on the host;
// ipvlan attachments are the plugin's Attach, tested in the test VM by the plugin's tests.
var (
	eniMAC  = net.HardwareAddr{0x02, 0xee, 0, 0, 0, 0x02}
	podAddr = netip.MustParseAddr("10.1.2.5")
)

// exclusiveNode builds the node netns with ENI link "eni2" (card 2) and returns it with the claim
// attachment that hands the ENI to a pod.
func exclusiveNode(t *testing.T) (ns.NetNS, api.ClaimAttachment) {
	node, vpc := nettest.NewNS(t), nettest.NewNS(t)
	h := nettest.Handle(t, node)
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eni2", HardwareAddr: eniMAC, MTU: 1500},
		PeerName: "vpc0", PeerNamespace: netlink.NsFd(int(vpc.Fd()))}
	if err := h.LinkAdd(veth); err != nil {
		t.Fatalf("add eni veth: %v", err)
	}
	return node, api.ClaimAttachment{Claim: "ns/c", Device: "card-2-exclusive",
		Request: api.AllocateRequest{Card: 2, ContainerID: dra.ClaimContainerID("claim-uid"), IfName: dra.ClaimIfName(2), Exclusive: true, Network: dra.Network},
		Lease: api.AllocateResponse{Address: podAddr, PrefixLen: 24, Gateway: netip.MustParseAddr("10.1.2.1"),
			SubnetCIDR: netip.MustParsePrefix("10.1.2.0/24"), ENIID: "eni-2", LinkName: "eni2", MAC: eniMAC.String(), MTU: 1500, Exclusive: true}}
}

// inNode runs f with the calling thread in node, as the NRI plugin runs in the node's netns.
func inNode(t *testing.T, node ns.NetNS, f func() error) error {
	t.Helper()
	var err error
	if derr := node.Do(func(ns.NetNS) error { err = f(); return nil }); derr != nil {
		t.Fatal(derr)
	}
	return err
}

// TestAttachDetachExclusive: RunPodSandbox moves the claimed ENI into the pod as card2 with the claim's
// address, a second delivery (a Synchronize) changes nothing, StopPodSandbox brings the ENI home under its
// own name, and RemovePodSandbox after it has nothing left to do. The agent is never asked to release; it is
// told the pod's claim interface after each attach (again after the Synchronize) and once after the detach.
func TestAttachDetachExclusive(t *testing.T) {
	node, att := exclusiveNode(t)
	pod := nettest.NewNS(t)
	agent := &fakeAgent{atts: []api.ClaimAttachment{att}}
	p := newTestPlugin(agent)
	const attached = `{"podNamespace":"ns","podName":"p","podUID":"u","attached":[{"card":2,"ifName":"card2"}]}`
	const detached = `{"podNamespace":"ns","podName":"p","podUID":"u","detached":[{"card":2,"ifName":"card2"}]}`
	sb := sandbox(pod.Path())
	ctx := context.Background()
	if err := inNode(t, node, func() error { return p.RunPodSandbox(ctx, sb) }); err != nil {
		t.Fatalf("RunPodSandbox: %v", err)
	}
	checkPodCard := func(when string) {
		t.Helper()
		h := nettest.Handle(t, pod)
		if got := nettest.LinkNames(t, h); !slices.Equal(got, []string{"card2", "lo"}) {
			t.Fatalf("%s: pod links %v, want card2 and lo", when, got)
		}
		l, err := h.LinkByName("card2")
		if err != nil {
			t.Fatal(err)
		}
		addrs, err := h.AddrList(l, netlink.FAMILY_V4)
		if err != nil || len(addrs) != 1 || addrs[0].IPNet.String() != "10.1.2.5/24" || l.Attrs().HardwareAddr.String() != eniMAC.String() ||
			l.Attrs().Flags&net.FlagUp == 0 {
			t.Errorf("%s: card2 %+v addresses %v (%v), want up, the ENI's MAC and 10.1.2.5/24", when, l.Attrs(), addrs, err)
		}
		if names := nettest.LinkNames(t, nettest.Handle(t, node)); slices.Contains(names, "eni2") {
			t.Errorf("%s: the ENI is still in the node: %v", when, names)
		}
	}
	checkPodCard("after RunPodSandbox")
	if got := agent.takeReports(t); !slices.Equal(got, []string{attached}) {
		t.Errorf("reported after RunPodSandbox %q, want %q", got, attached)
	}
	if err := inNode(t, node, func() error { _, err := p.Synchronize(ctx, []*nriapi.PodSandbox{sb}, nil); return err }); err != nil {
		t.Fatalf("Synchronize: %v", err)
	}
	checkPodCard("after Synchronize")
	if got := agent.takeReports(t); !slices.Equal(got, []string{attached}) {
		t.Errorf("reported after Synchronize %q, want %q", got, attached)
	}

	if err := inNode(t, node, func() error { return p.StopPodSandbox(ctx, sb) }); err != nil {
		t.Fatalf("StopPodSandbox: %v", err)
	}
	if got := nettest.LinkNames(t, nettest.Handle(t, pod)); !slices.Equal(got, []string{"lo"}) {
		t.Errorf("pod links after StopPodSandbox %v, want lo only", got)
	}
	if got := nettest.LinkNames(t, nettest.Handle(t, node)); !slices.Contains(got, "eni2") {
		t.Errorf("node links after StopPodSandbox %v, want eni2 back", got)
	}
	if err := inNode(t, node, func() error { return p.RemovePodSandbox(ctx, sb) }); err != nil {
		t.Errorf("RemovePodSandbox after the stop: %v", err)
	}
	if got := agent.takeReports(t); !slices.Equal(got, []string{detached}) {
		t.Errorf("reported after StopPodSandbox and RemovePodSandbox %q, want %q once", got, detached)
	}
}

// oldAgent serves GET /v1/claims with atts on a unix socket, and answers anything else 404 Not Found, as an
// agent older than POST /v1/claims/interfaces might; it counts the requests for other paths.
func oldAgent(t *testing.T, atts []api.ClaimAttachment) (socket string, others *atomic.Int32) {
	t.Helper()
	socket = filepath.Join(t.TempDir(), "agent.sock")
	l, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	others = &atomic.Int32{}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != api.PathClaims {
			others.Add(1)
			http.NotFound(w, r)
			return
		}
		b, _ := json.Marshal(api.ClaimsResponse{Attachments: atts})
		w.Header().Set("Content-Length", strconv.Itoa(len(b)))
		w.Write(b)
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return socket, others
}

// TestAttachWithOldAgent: an agent that answers the report of the claim interfaces 404 (older than it) fails
// neither RunPodSandbox nor StopPodSandbox: the card is attached and detached all the same.
func TestAttachWithOldAgent(t *testing.T) {
	node, att := exclusiveNode(t)
	pod := nettest.NewNS(t)
	socket, others := oldAgent(t, []api.ClaimAttachment{att})
	p := New(api.NewClient(socket, 0), socket, slog.New(slog.NewTextHandler(io.Discard, nil)))
	sb := sandbox(pod.Path())
	if err := inNode(t, node, func() error { return p.RunPodSandbox(context.Background(), sb) }); err != nil {
		t.Fatalf("RunPodSandbox with an agent that answers the report 404: %v", err)
	}
	if got := nettest.LinkNames(t, nettest.Handle(t, pod)); !slices.Equal(got, []string{"card2", "lo"}) {
		t.Errorf("pod links %v, want card2 and lo", got)
	}
	if err := inNode(t, node, func() error { return p.StopPodSandbox(context.Background(), sb) }); err != nil {
		t.Fatalf("StopPodSandbox with an agent that answers the report 404: %v", err)
	}
	if got := nettest.LinkNames(t, nettest.Handle(t, node)); !slices.Contains(got, "eni2") {
		t.Errorf("node links after StopPodSandbox %v, want eni2 back", got)
	}
	if n := others.Load(); n != 2 {
		t.Errorf("the agent got %d requests besides GET %s, want 2 (a report after the attach and one after the detach)", n, api.PathClaims)
	}
}

// TestAttachRollsBack: when a later device cannot be attached, RunPodSandbox fails and the devices it
// attached before are detached: the ENI is back in the node, the pod has nothing of the claim, and the agent
// is told of no interface.
func TestAttachRollsBack(t *testing.T) {
	node, att := exclusiveNode(t)
	bad := att
	bad.Device, bad.Request.Card, bad.Request.IfName, bad.Lease.LinkName = "card-3-exclusive", 3, dra.ClaimIfName(3), "missing3"
	pod := nettest.NewNS(t)
	agent := &fakeAgent{atts: []api.ClaimAttachment{att, bad}}
	p := newTestPlugin(agent)
	err := inNode(t, node, func() error { return p.RunPodSandbox(context.Background(), sandbox(pod.Path())) })
	if err == nil || !strings.Contains(err.Error(), "card-3-exclusive") {
		t.Fatalf("RunPodSandbox with an ENI that is not there: %v, want an error naming the device", err)
	}
	if got := nettest.LinkNames(t, nettest.Handle(t, pod)); !slices.Equal(got, []string{"lo"}) {
		t.Errorf("pod links after the failed attach %v, want lo only", got)
	}
	if got := nettest.LinkNames(t, nettest.Handle(t, node)); !slices.Contains(got, "eni2") {
		t.Errorf("node links after the failed attach %v, want eni2 back", got)
	}
	if got := agent.takeReports(t); len(got) != 0 {
		t.Errorf("a failed attach reported %q, want nothing", got)
	}
}
