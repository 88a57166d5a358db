package plugin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"

	"github.com/multinic/multinic/internal/nettest"
	"github.com/multinic/multinic/ipam/api"
	"github.com/multinic/multinic/ipam/server"
)

type attachment struct{ containerID, ifName string }

// fakeAgent is an server.Backend with fake allocations: one fixed answer per card.
type fakeAgent struct {
	mu        sync.Mutex
	answers   map[int]api.AllocateResponse
	allocs    map[attachment]api.Allocation
	allocates []api.AllocateRequest
	releases  []api.ReleaseRequest
	// allocErr, when set, fails Allocate.
	allocErr error
	status   api.Status
	// onRelease, when set, runs at each Release, before it is answered.
	onRelease func()
}

var _ server.Backend = &fakeAgent{}

func newFakeAgent() *fakeAgent {
	return &fakeAgent{
		answers: map[int]api.AllocateResponse{},
		allocs:  map[attachment]api.Allocation{},
		status:  api.Status{Ready: true},
	}
}

func (f *fakeAgent) Allocate(_ context.Context, req api.AllocateRequest) (api.AllocateResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.allocates = append(f.allocates, req)
	if f.allocErr != nil {
		return api.AllocateResponse{}, f.allocErr
	}
	ans, ok := f.answers[req.Card]
	if !ok {
		return api.AllocateResponse{}, fmt.Errorf("card %d: %w", req.Card, api.ErrNotManaged)
	}
	if ans.Exclusive != req.Exclusive {
		return api.AllocateResponse{}, &api.Error{Code: api.CodeInvalid, Message: "fake agent: wrong mode for this card"}
	}
	// The family's addresses only, as the agent answers.
	if !api.WantsIPv4(req.Family) {
		ans.Address, ans.PrefixLen, ans.Gateway, ans.SubnetCIDR = netip.Addr{}, 0, netip.Addr{}, netip.Prefix{}
	}
	if !api.WantsIPv6(req.Family) {
		ans.IPv6 = nil
	}
	a := api.Allocation{AllocateRequest: req, Address: ans.Address, ENIID: ans.ENIID, AllocatedAt: time.Now()}
	if ans.IPv6 != nil {
		a.IPv6 = ans.IPv6.Address
	}
	f.allocs[attachment{req.ContainerID, req.IfName}] = a
	return ans, nil
}

func (f *fakeAgent) Release(_ context.Context, req api.ReleaseRequest) (api.ReleaseResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.releases = append(f.releases, req)
	if f.onRelease != nil {
		f.onRelease()
	}
	k := attachment{req.ContainerID, req.IfName}
	_, ok := f.allocs[k]
	delete(f.allocs, k)
	return api.ReleaseResponse{Released: ok}, nil
}

func (f *fakeAgent) List(context.Context) ([]api.Allocation, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []api.Allocation
	for _, a := range f.allocs {
		out = append(out, a)
	}
	return out, nil
}

func (f *fakeAgent) Status(_ context.Context, card int) (api.Status, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	st := f.status
	st.Card = card
	return st, nil
}

func (f *fakeAgent) released(containerID, ifName string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Contains(f.releases, api.ReleaseRequest{ContainerID: containerID, IfName: ifName})
}

func (f *fakeAgent) numAllocs() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.allocs)
}

func (f *fakeAgent) numAllocateCalls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.allocates)
}

// agentServer serves a fakeAgent on a real unix socket; it can be stopped and started again.
type agentServer struct {
	t      *testing.T
	socket string
	agent  *fakeAgent
	stop   func()
}

// startAgent serves agent on a fresh socket (short path: sun_path holds 107 bytes).
func startAgent(t *testing.T, agent *fakeAgent) *agentServer {
	t.Helper()
	dir, err := os.MkdirTemp("", "mnplugin")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	s := &agentServer{t: t, socket: filepath.Join(dir, "agent.sock"), agent: agent}
	s.start()
	t.Cleanup(s.halt)
	return s
}

func (s *agentServer) start() {
	s.t.Helper()
	l, err := server.Listen(s.socket)
	if err != nil {
		s.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := server.Serve(ctx, l, s.agent, nil); err != nil {
			s.t.Errorf("serve: %v", err)
		}
	}()
	s.stop = func() { cancel(); <-done }
}

func (s *agentServer) halt() {
	if s.stop != nil {
		s.stop()
		s.stop = nil
	}
}

// The node: a throwaway netns standing in for the host, with an "ENI" (a veth end whose peer sits in a
// "vpc" netns holding the subnet's gateway and a remote address), and a pod netns.
const (
	eniName   = "eni1"
	eniMTU    = 9001
	card      = 1
	podIfName = "net1"
)

var (
	eniMAC     = net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x20, 0x01}
	podAddr    = netip.MustParseAddr("10.1.0.5")
	gatewayIP  = netip.MustParseAddr("10.1.0.1")
	remoteAddr = netip.MustParseAddr("192.0.2.1") // behind the gateway, in the vpc netns
)

type env struct {
	t     *testing.T
	node  ns.NetNS
	vpc   ns.NetNS
	pod   ns.NetNS
	srv   *agentServer
	agent *fakeAgent
	p     *Plugin
	// containerID of this test's pod.
	containerID string
}

var containerSeq atomic.Int64

// newEnv builds the node, vpc and pod netns with the ENI link in the node, and serves a fake agent whose
// card 1 answers with the ENI (exclusive or not).
func newEnv(t *testing.T, exclusive bool) *env {
	t.Helper()
	e := &env{t: t, node: nettest.NewNS(t), vpc: nettest.NewNS(t), pod: nettest.NewNS(t), agent: newFakeAgent()}
	h := nettest.Handle(t, e.node)
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: eniName, HardwareAddr: eniMAC, MTU: eniMTU},
		PeerName:      "vpc0",
		PeerNamespace: netlink.NsFd(int(e.vpc.Fd())),
	}
	if err := h.LinkAdd(veth); err != nil {
		t.Fatalf("add eni veth: %v", err)
	}
	if err := h.LinkSetUp(veth); err != nil {
		t.Fatalf("set %s up: %v", eniName, err)
	}
	v := nettest.Handle(t, e.vpc)
	vl, err := v.LinkByName("vpc0")
	if err != nil {
		t.Fatal(err)
	}
	lo, err := v.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	for _, step := range []error{
		v.LinkSetMTU(vl, eniMTU),
		v.AddrAdd(vl, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(gatewayIP, 24))}),
		v.AddrAdd(lo, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(remoteAddr, 32))}),
		v.LinkSetUp(vl),
		v.LinkSetUp(lo),
	} {
		if step != nil {
			t.Fatalf("set up vpc netns: %v", step)
		}
	}
	setUpVPC6(t, e.vpc, "vpc0")
	e.agent.answers[card] = api.AllocateResponse{
		IPv6:       &api.IPv6Lease{Address: podAddr6, PrefixLen: 64, Gateway: gateway6, SubnetCIDR: subnet6},
		Address:    podAddr,
		PrefixLen:  24,
		Gateway:    gatewayIP,
		SubnetCIDR: netip.MustParsePrefix("10.1.0.0/24"),
		ENIID:      "eni-0123456789abcdef0",
		LinkName:   eniName,
		MAC:        eniMAC.String(),
		MTU:        eniMTU,
		Exclusive:  exclusive,
	}
	e.srv = startAgent(t, e.agent)
	e.p = &Plugin{JournalDir: filepath.Join(t.TempDir(), "journal"), Timeout: 5 * time.Second, Logf: t.Logf}
	e.containerID = fmt.Sprintf("c%d-%d", os.Getpid(), containerSeq.Add(1))
	return e
}

// addPodEth0 gives the pod a primary interface with the default route, as the cluster's CNI would.
func (e *env) addPodEth0() {
	e.t.Helper()
	h := nettest.Handle(e.t, e.pod)
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth0-peer"}
	if err := h.LinkAdd(veth); err != nil {
		e.t.Fatal(err)
	}
	l, err := h.LinkByName("eth0")
	if err != nil {
		e.t.Fatal(err)
	}
	for _, err := range []error{
		h.AddrAdd(l, &netlink.Addr{IPNet: ipNet(netip.MustParsePrefix("172.16.0.2/24"))}),
		h.LinkSetUp(l),
		h.LinkSetUp(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0-peer"}}),
	} {
		if err != nil {
			e.t.Fatal(err)
		}
	}
	if err := h.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: net.IPv4(172, 16, 0, 1)}); err != nil {
		e.t.Fatal(err)
	}
}

// conf is a configuration for card 1 on this env's agent; extra is more JSON members, e.g. `"mtu": 1500`.
func (e *env) conf(mode, extra string) []byte {
	s := fmt.Sprintf(`{"cniVersion": "1.1.0", "name": "card1", "type": "multinic", "networkCard": %d, "mode": %q, "agentSocket": %q`,
		card, mode, e.srv.socket)
	if extra != "" {
		s += ", " + extra
	}
	return []byte(s + "}")
}

func (e *env) args(conf []byte) *skel.CmdArgs {
	return &skel.CmdArgs{
		ContainerID: e.containerID,
		Netns:       e.pod.Path(),
		IfName:      podIfName,
		Args:        "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=pod-a;K8S_POD_INFRA_CONTAINER_ID=" + e.containerID + ";K8S_POD_UID=uid-a",
		StdinData:   conf,
	}
}

// inNode runs f in the node netns: the plugin's "host".
func (e *env) inNode(f func() error) error {
	return e.node.Do(func(ns.NetNS) error { return f() })
}

func (e *env) add(args *skel.CmdArgs) (*current.Result, error) {
	var res *current.Result
	err := e.inNode(func() error {
		var err error
		res, _, err = e.p.add(args)
		return cniError(err)
	})
	return res, err
}

func (e *env) del(args *skel.CmdArgs) error {
	return e.inNode(func() error { return cniError(e.p.del(args)) })
}

func (e *env) check(args *skel.CmdArgs, res *current.Result) error {
	a := *args
	a.StdinData = withPrevResult(e.t, args.StdinData, res)
	return e.inNode(func() error { return cniError(e.p.check(&a)) })
}

// withPrevResult adds prevResult to a configuration.
func withPrevResult(t *testing.T, conf []byte, res types.Result) []byte {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(conf, &m); err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	var r map[string]any
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	m["prevResult"] = r
	out, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// cniCode is the code of a *types.Error, or -1.
func cniCode(err error) int {
	var e *types.Error
	if errors.As(err, &e) {
		return int(e.Code)
	}
	return -1
}

// podState is what the plugin may have left in the pod netns.
type podState struct {
	links       []string
	rules       []string // rules at RulePriority
	tableRoutes []string // routes of the per-interface table
}

func (e *env) podState() podState {
	e.t.Helper()
	h := nettest.Handle(e.t, e.pod)
	var s podState
	links, err := h.LinkList()
	if err != nil {
		e.t.Fatal(err)
	}
	for _, l := range links {
		s.links = append(s.links, l.Attrs().Name)
	}
	slices.Sort(s.links)
	for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rules, err := h.RuleList(family)
		if err != nil {
			e.t.Fatal(err)
		}
		for _, r := range rules {
			if r.Priority == RulePriority {
				s.rules = append(s.rules, r.String())
			}
		}
		routes, err := h.RouteListFiltered(family, &netlink.Route{Table: RouteTableBase + card}, netlink.RT_FILTER_TABLE)
		if err != nil {
			e.t.Fatal(err)
		}
		for _, r := range routes {
			s.tableRoutes = append(s.tableRoutes, r.String())
		}
	}
	return s
}

// checkDelTwice ends a passing ADD: CHECK passes, DEL leaves nothing of the attachment (the ENI link back home
// in exclusive mode, the node's links as they were before, nodeLinks), and a second DEL succeeds too.
func (e *env) checkDelTwice(args *skel.CmdArgs, res *current.Result, exclusive bool, nodeLinks []string) {
	e.t.Helper()
	if err := e.check(args, res); err != nil {
		e.t.Errorf("CHECK: %v", err)
	}
	if err := e.del(args); err != nil {
		e.t.Fatalf("DEL: %v", err)
	}
	e.requireClean([]string{"eth0", "eth0-peer", "lo"})
	if exclusive {
		e.requireENIHome()
	}
	if got := linkNames(e.t, e.node); !slices.Equal(got, nodeLinks) {
		e.t.Errorf("node links = %v, want %v", got, nodeLinks)
	}
	if err := e.del(args); err != nil {
		e.t.Errorf("DEL again: %v", err)
	}
}

// requireENIHome checks that the ENI link is back in the node as it was: name, MAC, MTU, up, no alias.
func (e *env) requireENIHome() {
	e.t.Helper()
	l, err := nettest.Handle(e.t, e.node).LinkByName(eniName)
	if err != nil {
		e.t.Fatalf("ENI link not back in the node netns: %v", err)
	}
	a := l.Attrs()
	if a.HardwareAddr.String() != eniMAC.String() || a.MTU != eniMTU || a.Flags&net.FlagUp == 0 || a.Alias != "" {
		e.t.Errorf("ENI link = mac %s mtu %d flags %v alias %q, want mac %s mtu %d up no alias",
			a.HardwareAddr, a.MTU, a.Flags, a.Alias, eniMAC, eniMTU)
	}
}

// requireClean checks that nothing of the attachment is left: no allocation, the release seen, only the
// pod's own links, no rule and no route in the table.
func (e *env) requireClean(podLinks []string) {
	e.t.Helper()
	if n := e.agent.numAllocs(); n != 0 {
		e.t.Errorf("agent holds %d allocations, want 0", n)
	}
	if !e.agent.released(e.containerID, podIfName) {
		e.t.Errorf("agent saw no release of %s/%s", e.containerID, podIfName)
	}
	s := e.podState()
	if !slices.Equal(s.links, podLinks) {
		e.t.Errorf("pod links = %v, want %v", s.links, podLinks)
	}
	if len(s.rules) != 0 || len(s.tableRoutes) != 0 {
		e.t.Errorf("pod rules %v, table routes %v: want none", s.rules, s.tableRoutes)
	}
}

// dialFromPod connects from src in the pod netns to a listener on remoteAddr in the vpc netns.
func (e *env) dialFromPod(src netip.Addr) error {
	e.t.Helper()
	var l net.Listener
	err := e.vpc.Do(func(ns.NetNS) error {
		var err error
		l, err = net.Listen("tcp", netip.AddrPortFrom(remoteAddr, 0).String())
		return err
	})
	if err != nil {
		e.t.Fatal(err)
	}
	defer l.Close()
	go func() {
		if c, err := l.Accept(); err == nil {
			c.Close()
		}
	}()
	return e.pod.Do(func(ns.NetNS) error {
		d := net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{IP: netIP(src)}}
		c, err := d.Dial("tcp", l.Addr().String())
		if err != nil {
			return err
		}
		return c.Close()
	})
}

// newDetachedNS makes a netns that the test can delete mid-way (NewNS deletes at the end).
func newDetachedNS(t *testing.T) (n ns.NetNS, remove func()) {
	t.Helper()
	nettest.RequireRoot(t)
	n, err := testutils.NewNS()
	if err != nil {
		t.Fatal(err)
	}
	done := false
	remove = func() {
		if done {
			return
		}
		done = true
		n.Close()
		if err := testutils.UnmountNS(n); err != nil && !strings.Contains(err.Error(), "no such file") {
			t.Errorf("remove netns: %v", err)
		}
	}
	t.Cleanup(remove)
	return n, remove
}
