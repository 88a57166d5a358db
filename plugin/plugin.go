package plugin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/multinic/multinic/ipam/api"
	"github.com/multinic/multinic/ipam/journal"
	"github.com/multinic/multinic/netconf"
)

// Step names a step of ADD or DEL. Plugin.Trace is told each one as it ends; Plugin.Hook runs after each
// step of ADD from StepAllocate on.
type Step string

// The steps of ADD, in order. Each one's effect is undone when a later one fails.
const (
	StepNetns    Step = "netns"    // config read, pod netns opened, no interface of that name there (traced only)
	StepAllocate Step = "allocate" // the agent granted an address (undo: release)
	StepLink     Step = "link"     // the ipvlan child exists / the ENI link is in the pod (undo: delete / move back)
	StepAddress  Step = "address"  // addresses and MTU set (with IPv6 the link's IPv6Sysctls first), link up
	StepRoutes   Step = "routes"   // extra routes and the per-interface table
	StepRule     Step = "rule"     // the source rule (undo: delete rules)
	StepSysctl   Step = "sysctl"   // rp_filter
	StepResult   Step = "result"   // the result is built
)

// The steps of DEL, in order (traced only): StepNetns (config read, journal replayed, pod netns opened),
// StepRule (the rules gone), StepLink (the ipvlan child deleted / the ENI home), then StepRelease. A DEL
// whose netns is gone traces StepRelease only.
const (
	StepRelease Step = "release" // the agent took the address back, or the release is journaled
)

// Plugin runs the CNI verbs. The zero value is not ready: use New.
type Plugin struct {
	// JournalDir holds releases DEL could not deliver (agent down); journal.DefaultDir.
	JournalDir string
	// Timeout bounds each agent call; 0 means the api client's defaults.
	Timeout time.Duration
	// Hook, when set, runs after each ADD step; an error fails ADD there. For tests.
	Hook func(Step) error
	// Trace, when set, is told each step of ADD and DEL as it ends (the bench's per-step breakdown, TraceTo).
	Trace func(Step)
	// Logf reports what does not fail the call (a journaled release, a failed replay); nil discards.
	Logf func(format string, args ...any)
}

// New returns a Plugin with the production settings.
func New() *Plugin {
	return &Plugin{JournalDir: journal.DefaultDir, Logf: func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "multinic: "+format+"\n", args...)
	}}
}

func (p *Plugin) logf(format string, args ...any) {
	if p.Logf != nil {
		p.Logf(format, args...)
	}
}

// Funcs are the verbs for skel.PluginMainFuncs.
func (p *Plugin) Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{Add: p.Add, Del: p.Del, Check: p.Check, Status: p.Status, GC: p.GC}
}

// Add is CNI ADD: it prints the result in the configuration's version.
func (p *Plugin) Add(args *skel.CmdArgs) error {
	res, conf, err := p.add(args)
	if err != nil {
		return cniError(err)
	}
	return types.PrintResult(res, conf.CNIVersion)
}

// Del is CNI DEL.
func (p *Plugin) Del(args *skel.CmdArgs) error { return cniError(p.del(args)) }

// Check is CNI CHECK.
func (p *Plugin) Check(args *skel.CmdArgs) error { return cniError(p.check(args)) }

// Status is CNI STATUS: code 50 when ADD cannot be served now.
func (p *Plugin) Status(args *skel.CmdArgs) error { return cniError(p.status(args)) }

// GC is CNI GC: it releases this network's allocations (by name, card and mode) that are not valid
// attachments.
func (p *Plugin) GC(args *skel.CmdArgs) error { return cniError(p.cniGC(args)) }

func (p *Plugin) step(s Step) error {
	p.trace(s)
	if p.Hook == nil {
		return nil
	}
	if err := p.Hook(s); err != nil {
		return fmt.Errorf("after step %s: %w", s, err)
	}
	return nil
}

func (p *Plugin) trace(s Step) {
	if p.Trace != nil {
		p.Trace(s)
	}
}

// connect returns a client of the agent at conf's socket.
func (p *Plugin) connect(conf *netconf.Config) *api.Client {
	return api.NewClient(conf.AgentSocket, p.Timeout)
}

// replay delivers the releases journaled for conf's agent (its socket's records only) while it was down.
// ADD, DEL and CNI GC call it before their own work, so a journaled release goes out with the next change even
// when the agent restarted without the journal in view (it replays at start when it sees it). CHECK and
// STATUS only read, and leave the journal alone. Best effort (the agent may still be down), bounded in time.
func (p *Plugin) replay(client *api.Client, conf *netconf.Config) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := journal.Replay(ctx, p.JournalDir, conf.AgentSocket, client); err != nil {
		p.logf("%v", err)
	}
}

// OpenPodNS opens the pod netns at path (CNI_NETNS) and refuses the plugin's own (the host's) netns. A path
// that does not exist or is not a netns is CNI code 3 (the container is gone), which a DEL treats as nothing
// left to do.
func OpenPodNS(path string) (ns.NetNS, error) {
	podNS, err := ns.GetNS(path)
	var notExist ns.NSPathNotExistErr
	var notNS ns.NSPathNotNSErr
	if errors.As(err, &notExist) || errors.As(err, &notNS) {
		return nil, types.NewError(types.ErrUnknownContainer, fmt.Sprintf("netns %s: %v", path, err), "")
	}
	if err != nil {
		return nil, err
	}
	same, err := isCurrentNS(podNS)
	if err != nil {
		podNS.Close()
		return nil, err
	}
	if same {
		podNS.Close()
		return nil, types.NewError(types.ErrInvalidNetNS,
			fmt.Sprintf("netns %s is the host's (the plugin's own) netns: refusing to configure it", path), "")
	}
	return podNS, nil
}

// isCurrentNS compares n with the calling thread's netns by device and inode.
func isCurrentNS(n ns.NetNS) (bool, error) {
	cur, err := ns.GetCurrentNS()
	if err != nil {
		return false, err
	}
	defer cur.Close()
	var a, b unix.Stat_t
	if err := unix.Fstat(int(n.Fd()), &a); err != nil {
		return false, fmt.Errorf("stat netns %s: %w", n.Path(), err)
	}
	if err := unix.Fstat(int(cur.Fd()), &b); err != nil {
		return false, fmt.Errorf("stat current netns: %w", err)
	}
	return a.Dev == b.Dev && a.Ino == b.Ino, nil
}

// routings are the Routings of an allocation under conf: one per family the agent granted, IPv4 first.
func routings(conf *netconf.Config, ifName string, resp api.AllocateResponse) []Routing {
	var rs []Routing
	if api.WantsIPv4(conf.Family) {
		rs = append(rs, newRouting(conf, ifName, netip.PrefixFrom(resp.Address, resp.PrefixLen), resp.Gateway))
	}
	if api.WantsIPv6(conf.Family) {
		v6 := resp.IPv6
		rs = append(rs, newRouting(conf, ifName, netip.PrefixFrom(v6.Address, v6.PrefixLen), v6.Gateway))
	}
	return rs
}

// newRouting is the Routing of one address under conf: conf's routes of the address's family.
func newRouting(conf *netconf.Config, ifName string, addr netip.Prefix, gateway netip.Addr) Routing {
	r := Routing{IfName: ifName, Address: addr.Addr(), PrefixLen: addr.Bits(), Gateway: gateway}
	for _, dst := range conf.Routes {
		if dst.Addr().Is6() == addr.Addr().Is6() {
			r.Routes = append(r.Routes, dst)
		}
	}
	if conf.Mode == netconf.ModeIPVlan && conf.IPVlanMode != netconf.IPVlanL2 {
		r.Gateway = netip.Addr{} // L3: the parent routes; no ARP or ND, routes need the device only
	}
	if conf.PolicyRouting {
		r.Table = routeTable(conf)
	}
	return r
}

// checkResponse refuses an agent answer the plugin cannot apply: it must hold the address of each family
// conf asks for, and only those.
func checkResponse(conf *netconf.Config, resp api.AllocateResponse) error {
	switch {
	case api.WantsIPv4(conf.Family) && !resp.Address.Is4():
		return fmt.Errorf("agent answered address %v: want IPv4 for family %s", resp.Address, conf.Family)
	case api.WantsIPv4(conf.Family) && (resp.PrefixLen < 1 || resp.PrefixLen > 32):
		return fmt.Errorf("agent answered prefix length %d: want 1-32", resp.PrefixLen)
	case api.WantsIPv4(conf.Family) && !resp.Gateway.Is4():
		return fmt.Errorf("agent answered gateway %v: want IPv4", resp.Gateway)
	case !api.WantsIPv4(conf.Family) && resp.Address.IsValid():
		return fmt.Errorf("agent answered IPv4 address %v for family %s", resp.Address, conf.Family)
	case resp.LinkName == "":
		return errors.New("agent answered no link name")
	case resp.Exclusive != (conf.Mode == netconf.ModeExclusive):
		return fmt.Errorf("agent answered exclusive=%t for mode %s", resp.Exclusive, conf.Mode)
	}
	v6 := resp.IPv6
	switch {
	case !api.WantsIPv6(conf.Family):
		if v6 != nil {
			return fmt.Errorf("agent answered IPv6 address %v for family %s", v6.Address, conf.Family)
		}
	case v6 == nil:
		return fmt.Errorf("agent answered no IPv6 address for family %s", conf.Family)
	case !v6.Address.Is6() || v6.Address.Is4In6() || !v6.Address.IsGlobalUnicast():
		return fmt.Errorf("agent answered IPv6 address %v: want a global IPv6 address", v6.Address)
	case v6.PrefixLen < 1 || v6.PrefixLen > 128:
		return fmt.Errorf("agent answered IPv6 prefix length %d: want 1-128", v6.PrefixLen)
	case !v6.Gateway.Is6() || v6.Gateway.Is4In6():
		return fmt.Errorf("agent answered IPv6 gateway %v: want IPv6", v6.Gateway)
	}
	return nil
}

func (p *Plugin) add(args *skel.CmdArgs) (_ *current.Result, _ *netconf.Config, retErr error) {
	conf, err := netconf.Load(args.StdinData)
	if err != nil {
		return nil, nil, err
	}
	k8s, err := parseArgs(args.Args)
	if err != nil {
		return nil, nil, err
	}
	podNS, err := OpenPodNS(args.Netns)
	if err != nil {
		return nil, nil, err
	}
	defer podNS.Close()
	// One netlink socket in the pod netns serves every look-up and change there until the result.
	h, err := openHandle(podNS)
	if err != nil {
		return nil, nil, err
	}
	defer h.Close()
	// An interface already there (a repeated ADD, another plugin's) is refused before the agent is asked:
	// the rollback of a failed ADD must never take away what an earlier ADD made.
	if err := requireNoLink(h, podNS.Path(), args.IfName); err != nil {
		return nil, nil, err
	}
	p.trace(StepNetns)

	client := p.connect(conf)
	defer client.Close()
	p.replay(client, conf)
	if journal.Pending(p.JournalDir, args.ContainerID, args.IfName) {
		return nil, nil, types.NewError(types.ErrTryAgainLater, fmt.Sprintf(
			"container %s interface %s: a release is still pending for the agent", args.ContainerID, args.IfName), "")
	}

	// An ipv4 request leaves "family" out: byte for byte what plugins before IPv6 sent, which every agent
	// accepts (the oldest ones refuse unknown keys).
	family := conf.Family
	if family == netconf.FamilyIPv4 {
		family = ""
	}
	ctx := context.Background()
	resp, err := client.Allocate(ctx, api.AllocateRequest{
		Card:        conf.Card,
		ContainerID: args.ContainerID,
		IfName:      args.IfName,
		PodRef: api.PodRef{PodNamespace: string(k8s.K8S_POD_NAMESPACE), PodName: string(k8s.K8S_POD_NAME),
			PodUID: string(k8s.K8S_POD_UID)},
		Exclusive: conf.Mode == netconf.ModeExclusive,
		Netns:     args.Netns,
		Network:   conf.Name,
		Family:    family,
	})
	if err != nil {
		return nil, nil, err
	}
	defer func() {
		if retErr == nil {
			return
		}
		if err := p.release(client, conf, args.ContainerID, args.IfName); err != nil {
			retErr = errors.Join(retErr, fmt.Errorf("roll back: %w", err))
		}
	}()
	if err := p.step(StepAllocate); err != nil {
		return nil, nil, err
	}
	res, err := p.attach(h, podNS, conf, args.IfName, resp)
	if err != nil {
		return nil, nil, err
	}
	return res, conf, nil
}

// Attach builds the pod interface ifName in podNS from the agent's lease resp under conf: the ipvlan child
// or the moved ENI, its addresses, routes, rule and rp_filter; it is the netlink half of ADD, which the NRI
// plugin (package nri) runs for a DRA claim's prepared allocation. On failure it removes what it made; the
// lease is the caller's to give back or keep.
func (p *Plugin) Attach(podNS ns.NetNS, conf *netconf.Config, ifName string, resp api.AllocateResponse) (*current.Result, error) {
	h, err := openHandle(podNS)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	return p.attach(h, podNS, conf, ifName, resp)
}

// attach is Attach through h, a route netlink handle opened in podNS (openHandle).
func (p *Plugin) attach(h netlinksafe.Handle, podNS ns.NetNS, conf *netconf.Config, ifName string, resp api.AllocateResponse) (_ *current.Result, retErr error) {
	if err := checkResponse(conf, resp); err != nil {
		return nil, err
	}
	mtu := conf.MTU
	if mtu == 0 {
		mtu = resp.MTU
	}

	var err error
	if conf.Mode == netconf.ModeExclusive {
		err = MoveLinkIn(resp.LinkName, resp.MAC, podNS, ifName)
	} else {
		_, err = createIPVlanChild(h, resp.LinkName, podNS, ifName, ipvlanModes[conf.IPVlanMode], mtu)
	}
	if err != nil {
		return nil, err
	}
	defer func() {
		if retErr == nil {
			return
		}
		if err := teardown(podNS, ifName, routeTable(conf), nil); err != nil {
			retErr = errors.Join(retErr, fmt.Errorf("roll back: %w", err))
		}
	}()
	if err := p.step(StepLink); err != nil {
		return nil, err
	}

	if conf.Mode != netconf.ModeExclusive {
		mtu = 0 // the ipvlan child has it from its create
	}
	// In the pod netns for the /proc/sys writes; netlink goes through h.
	var res *current.Result
	err = podNS.Do(func(ns.NetNS) error {
		var err error
		res, err = p.configure(h, podNS, conf, ifName, mtu, routings(conf, ifName, resp))
		return err
	})
	if err != nil {
		return nil, err
	}
	return res, nil
}

// configure, in the pod netns through h, gives the new link ifName its MTU (mtu > 0),
// addresses and up state, then the routes, rules and rp_filter of rs, and reads the result back: ADD's
// steps from StepAddress on, in one netns switch with one netlink socket.
func (p *Plugin) configure(h netlinksafe.Handle, podNS ns.NetNS, conf *netconf.Config, ifName string, mtu int, rs []Routing) (*current.Result, error) {
	where := podNS.Path()
	var addrs []netip.Prefix
	for _, r := range rs {
		addrs = append(addrs, netip.PrefixFrom(r.Address, r.PrefixLen))
	}
	if err := configureInterface(h, where, ifName, mtu, addrs...); err != nil {
		return nil, err
	}
	if err := p.step(StepAddress); err != nil {
		return nil, err
	}
	for _, r := range rs {
		if err := addRoutes(h, where, r); err != nil {
			return nil, err
		}
	}
	if err := p.step(StepRoutes); err != nil {
		return nil, err
	}
	for _, r := range rs {
		if r.Table > 0 {
			if err := addRule(h, where, r); err != nil {
				return nil, err
			}
		}
	}
	if err := p.step(StepRule); err != nil {
		return nil, err
	}
	if err := setRPFilter(where, ifName); err != nil {
		return nil, err
	}
	if err := p.step(StepSysctl); err != nil {
		return nil, err
	}
	res, err := buildResult(h, where, conf, ifName, rs)
	if err != nil {
		return nil, err
	}
	if err := p.step(StepResult); err != nil {
		return nil, err
	}
	return res, nil
}

// requireNoLink fails when h's netns (the pod's, named where) already has a link named ifName.
func requireNoLink(h netlinksafe.Handle, where, ifName string) error {
	has, err := hasLink(h, where, ifName)
	if err != nil {
		return err
	}
	if has {
		return fmt.Errorf("interface %q already exists in %s: DEL the attachment first", ifName, where)
	}
	return nil
}

// HasLink reports whether podNS has a link named ifName.
func HasLink(podNS ns.NetNS, ifName string) (bool, error) {
	h, err := openHandle(podNS)
	if err != nil {
		return false, err
	}
	defer h.Close()
	return hasLink(h, podNS.Path(), ifName)
}

// hasLink is HasLink through h, a handle in the netns named where.
func hasLink(h netlinksafe.Handle, where, ifName string) (bool, error) {
	_, err := h.LinkByName(ifName)
	switch {
	case err == nil:
		return true, nil
	case errors.As(err, &netlink.LinkNotFoundError{}):
		return false, nil
	}
	return false, fmt.Errorf("look for %q in %s: %w", ifName, where, err)
}

// buildResult reads the interface back through h (in the pod netns, where) and describes it: one
// interface with its sandbox, its addresses (IPv4 first) pointing at it with their gateways, and the extra
// routes.
func buildResult(h netlinksafe.Handle, where string, conf *netconf.Config, ifName string, rs []Routing) (*current.Result, error) {
	l, err := h.LinkByName(ifName)
	if err != nil {
		return nil, fmt.Errorf("read %q in %s: %w", ifName, where, err)
	}
	res := &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		Interfaces: []*current.Interface{{Name: l.Attrs().Name, Mac: l.Attrs().HardwareAddr.String(), Mtu: l.Attrs().MTU,
			Sandbox: where}},
		DNS: conf.DNS,
	}
	for _, r := range rs {
		res.IPs = append(res.IPs, &current.IPConfig{
			Interface: current.Int(0),
			Address:   *ipNet(netip.PrefixFrom(r.Address, r.PrefixLen)),
			Gateway:   netIP(r.Gateway),
		})
		for _, dst := range r.Routes {
			res.Routes = append(res.Routes, &types.Route{Dst: *ipNet(dst), GW: netIP(r.Gateway)})
		}
	}
	return res, nil
}

// release gives the address of (containerID, ifName) back, or journals the release when the agent is down.
func (p *Plugin) release(client *api.Client, conf *netconf.Config, containerID, ifName string) error {
	_, err := client.Release(context.Background(), api.ReleaseRequest{ContainerID: containerID, IfName: ifName})
	if errors.Is(err, api.ErrUnavailable) {
		jerr := journal.Add(p.JournalDir, journal.Record{
			ContainerID: containerID, IfName: ifName, Card: conf.Card, AgentSocket: conf.AgentSocket,
		})
		if jerr != nil {
			return errors.Join(err, jerr)
		}
		p.logf("agent unavailable, release of %s/%s journaled in %s", containerID, ifName, p.JournalDir)
		return nil
	}
	return err
}

// teardown removes what ADD made in podNS, from the host's netns: the rules of table, and the link (an
// ipvlan child is deleted; an ENI goes back to the host). A missing link is not an error; a link that is
// neither an ipvlan nor a moved ENI is not ours and stays. trace, when set, is told StepRule and StepLink.
func teardown(podNS ns.NetNS, ifName string, table int, trace func(Step)) error {
	if trace == nil {
		trace = func(Step) {}
	}
	var isIPVlan bool
	err := inNetns(podNS, func(h netlinksafe.Handle) error {
		if err := DeleteRules(h, table); err != nil {
			return err
		}
		trace(StepRule)
		l, err := h.LinkByName(ifName)
		if errors.As(err, &netlink.LinkNotFoundError{}) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("find link: %w", err)
		}
		if _, ours := parseAlias(l.Attrs().Alias); ours {
			return nil // moved out below
		}
		if l.Type() == "ipvlan" {
			isIPVlan = true
			if err := h.LinkDel(l); err != nil {
				return fmt.Errorf("delete link: %w", err)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("clean up %q in %s: %w", ifName, podNS.Path(), err)
	}
	if !isIPVlan {
		if _, err := MoveLinkOut(podNS, ifName); err != nil {
			return err
		}
	}
	trace(StepLink)
	return nil
}

// del removes what ADD made, then releases (see remove).
func (p *Plugin) del(args *skel.CmdArgs) error {
	conf, err := netconf.Load(args.StdinData)
	if err != nil {
		return err
	}
	client := p.connect(conf)
	defer client.Close()
	p.replay(client, conf)
	return p.remove(client, conf, args.ContainerID, args.IfName, args.Netns)
}

// remove undoes one attachment: what ADD made in the pod netns, if that netns still exists, then the
// release, so an exclusive ENI is back in the node's netns before the agent can hand it to another pod.
// The release happens even when the teardown fails: a broken netns must not leak the address.
func (p *Plugin) remove(client *api.Client, conf *netconf.Config, containerID, ifName, netnsPath string) error {
	terr := teardownIn(netnsPath, ifName, routeTable(conf), p.trace)
	if err := p.release(client, conf, containerID, ifName); err != nil {
		return errors.Join(terr, err)
	}
	p.trace(StepRelease)
	return terr
}

// Detach removes the pod interface ifName that Attach made under conf from the netns at netnsPath (an ENI
// goes back to the node): the netlink half of DEL. A netns or link that is gone has nothing left to detach.
func Detach(netnsPath string, conf *netconf.Config, ifName string) error {
	return teardownIn(netnsPath, ifName, routeTable(conf), nil)
}

// teardownIn is teardown in the netns at path; a path that is empty or no longer a netns has nothing left.
// trace, when set, is told StepNetns once the netns is open, then teardown's steps.
func teardownIn(netnsPath, ifName string, table int, trace func(Step)) error {
	if netnsPath == "" {
		return nil
	}
	podNS, err := OpenPodNS(netnsPath)
	if cniErr := (*types.Error)(nil); errors.As(err, &cniErr) && cniErr.Code == types.ErrUnknownContainer {
		return nil
	}
	if err != nil {
		return err
	}
	defer podNS.Close()
	if trace != nil {
		trace(StepNetns)
	}
	return teardown(podNS, ifName, table, trace)
}

func (p *Plugin) status(args *skel.CmdArgs) error {
	conf, err := netconf.Load(args.StdinData)
	if err != nil {
		return err
	}
	client := p.connect(conf)
	defer client.Close()
	st, err := client.Status(context.Background(), conf.Card)
	if err != nil {
		return types.NewError(types.ErrPluginNotAvailable, err.Error(), "")
	}
	if !st.Ready {
		return types.NewError(types.ErrPluginNotAvailable, fmt.Sprintf("card %d not ready: %s", conf.Card, st.Reason), "")
	}
	return nil
}

// cniGCCandidate says whether a CNI GC of conf's network may free a: it must be this network's, by name, card and
// mode. The valid attachments list only this network's attachments, so another network's allocation (a
// hand-written NAD on the same card and mode) is not this CNI GC's to judge. An allocation without a network
// name (made by a plugin older than the field) is kept: the agent's reclaim of gone pods' allocations frees it once its pod is gone.
func cniGCCandidate(conf *netconf.Config, a api.Allocation) bool {
	return a.Network != "" && a.Network == conf.Name &&
		a.Card == conf.Card && a.Exclusive == (conf.Mode == netconf.ModeExclusive)
}

func (p *Plugin) cniGC(args *skel.CmdArgs) error {
	conf, err := netconf.Load(args.StdinData)
	if err != nil {
		return err
	}
	client := p.connect(conf)
	defer client.Close()
	p.replay(client, conf)
	allocs, err := client.List(context.Background())
	if err != nil {
		return err
	}
	valid := make(map[types.GCAttachment]bool, len(conf.ValidAttachments))
	for _, a := range conf.ValidAttachments {
		valid[a] = true
	}
	var errs []error
	for _, a := range allocs {
		if !cniGCCandidate(conf, a) || valid[types.GCAttachment{ContainerID: a.ContainerID, IfName: a.IfName}] {
			continue
		}
		if err := p.remove(client, conf, a.ContainerID, a.IfName, a.Netns); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (p *Plugin) check(args *skel.CmdArgs) error {
	conf, err := netconf.Load(args.StdinData)
	if err != nil {
		return err
	}
	if conf.Raw.RawPrevResult == nil {
		return netconf.Invalid("prevResult is required by CHECK")
	}
	if err := version.ParsePrevResult(&conf.Raw.PluginConf); err != nil {
		return netconf.Invalid("prevResult invalid: %v", err)
	}
	res, err := current.NewResultFromResult(conf.Raw.PrevResult)
	if err != nil {
		return netconf.Invalid("prevResult invalid: %v", err)
	}
	iface, ips, err := ipsOf(res, args.IfName, args.Netns)
	if err != nil {
		return err
	}
	var rs []Routing
	for _, want := range families(conf) {
		ipc := ips[want]
		if ipc == nil {
			return fmt.Errorf("check %s/%s: prevResult has no %s address on %q", args.ContainerID, args.IfName, want, args.IfName)
		}
		prefix, _ := netipx(ipc.Address)
		gw, _ := netip.AddrFromSlice(ipc.Gateway)
		rs = append(rs, newRouting(conf, args.IfName, prefix, gw.Unmap()))
	}

	client := p.connect(conf)
	defer client.Close()
	allocs, err := client.List(context.Background())
	if err != nil {
		return err
	}
	var alloc *api.Allocation
	for i := range allocs {
		if allocs[i].ContainerID == args.ContainerID && allocs[i].IfName == args.IfName {
			alloc = &allocs[i]
		}
	}
	if err := checkAllocation(conf, alloc, rs); err != nil {
		return fmt.Errorf("check %s/%s: %w", args.ContainerID, args.IfName, err)
	}

	podNS, err := OpenPodNS(args.Netns)
	if err != nil {
		return err
	}
	defer podNS.Close()
	if err := podNS.Do(func(ns.NetNS) error { return checkInterface(conf, iface, rs) }); err != nil {
		return fmt.Errorf("check %q in %s: %w", args.IfName, args.Netns, err)
	}
	return nil
}

// families are the address families conf's interface carries, in the result's order.
func families(conf *netconf.Config) []string {
	var fs []string
	if api.WantsIPv4(conf.Family) {
		fs = append(fs, "IPv4")
	}
	if api.WantsIPv6(conf.Family) {
		fs = append(fs, "IPv6")
	}
	return fs
}

// checkAllocation compares the agent's record of the attachment with prevResult's addresses (rs).
func checkAllocation(conf *netconf.Config, alloc *api.Allocation, rs []Routing) error {
	switch {
	case alloc == nil:
		return errors.New("the agent holds no allocation for it")
	case alloc.Card != conf.Card:
		return fmt.Errorf("the agent's allocation is on card %d, the network's card is %d", alloc.Card, conf.Card)
	case alloc.Exclusive != (conf.Mode == netconf.ModeExclusive):
		return fmt.Errorf("the agent's allocation has exclusive=%t, the network's mode is %s", alloc.Exclusive, conf.Mode)
	}
	for _, r := range rs {
		have := alloc.Address
		if r.Address.Is6() {
			have = alloc.IPv6
		}
		if have != r.Address {
			return fmt.Errorf("the agent allocated %v, prevResult has %s", have, r.Address)
		}
	}
	return nil
}

// netipx converts a result address: an IPv4 address (also in its 16-byte form) with a 32-bit mask, or an
// IPv6 address with a 128-bit mask.
func netipx(n net.IPNet) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	a = a.Unmap()
	ones, bits := n.Mask.Size()
	if bits != a.BitLen() {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(a, ones), true
}

// checkInterface, in the pod netns, compares the interface with what ADD made for each of rs.
func checkInterface(conf *netconf.Config, iface *current.Interface, rs []Routing) error {
	ifName := rs[0].IfName
	l, err := netlinksafe.LinkByName(ifName)
	if err != nil {
		return err
	}
	a := l.Attrs()
	if conf.Mode == netconf.ModeExclusive {
		if _, ours := parseAlias(a.Alias); !ours {
			return fmt.Errorf("link has alias %q, want a moved ENI's", a.Alias)
		}
	} else {
		ipvl, ok := l.(*netlink.IPVlan)
		if !ok {
			return fmt.Errorf("link is a %s, want ipvlan", l.Type())
		}
		if want := ipvlanModes[conf.IPVlanMode]; ipvl.Mode != want {
			return fmt.Errorf("ipvlan mode is %v, want %v", ipvl.Mode, want)
		}
	}
	if iface.Mac != "" && !strings.EqualFold(a.HardwareAddr.String(), iface.Mac) {
		return fmt.Errorf("mac is %s, prevResult has %s", a.HardwareAddr, iface.Mac)
	}
	if conf.MTU > 0 && a.MTU != conf.MTU {
		return fmt.Errorf("mtu is %d, want %d", a.MTU, conf.MTU)
	}
	if a.Flags&net.FlagUp == 0 {
		return errors.New("link is down")
	}
	for _, r := range rs {
		if err := checkRouting(l, r); err != nil {
			return err
		}
	}
	if v, err := readSysctl("ipv4", ifName, "rp_filter"); err != nil || v != RPFilterLoose {
		return fmt.Errorf("rp_filter is %q (%v), want %s", v, err, RPFilterLoose)
	}
	return nil
}

// checkRouting compares r's address, routes, rule and (IPv6) sysctls on l with what ADD made.
func checkRouting(l netlink.Link, r Routing) error {
	index := l.Attrs().Index
	addrs, err := netlinksafe.AddrList(l, r.family())
	if err != nil {
		return fmt.Errorf("list addresses: %w", err)
	}
	want := ipNet(netip.PrefixFrom(r.Address, r.PrefixLen)).String()
	i := slices.IndexFunc(addrs, func(x netlink.Addr) bool { return x.IPNet.String() == want })
	if i < 0 {
		return fmt.Errorf("address %s missing", want)
	}
	if f := addrs[i].Flags; f&(unix.IFA_F_TENTATIVE|unix.IFA_F_DADFAILED) != 0 {
		return fmt.Errorf("address %s is tentative or failed DAD (flags %#x)", want, f)
	}
	routes := r.mainRoutes(index)
	if r.Table > 0 {
		routes = append(routes, r.tableRoutes(index)...)
	}
	for _, want := range routes {
		table := want.Table
		if table == 0 {
			table = unix.RT_TABLE_MAIN
		}
		have, err := netlinksafe.RouteListFiltered(r.family(),
			&netlink.Route{Dst: want.Dst, Table: table, LinkIndex: index},
			netlink.RT_FILTER_DST|netlink.RT_FILTER_TABLE|netlink.RT_FILTER_OIF)
		if err != nil {
			return fmt.Errorf("list routes: %w", err)
		}
		if !slices.ContainsFunc(have, func(h netlink.Route) bool { return h.Gw.Equal(want.Gw) }) {
			return fmt.Errorf("route to %s via %v in table %d missing", want.Dst, want.Gw, table)
		}
	}
	if r.Table > 0 {
		rules, err := netlinksafe.RuleListFiltered(r.family(), &netlink.Rule{Table: r.Table}, netlink.RT_FILTER_TABLE)
		if err != nil {
			return fmt.Errorf("list rules: %w", err)
		}
		want := r.rule()
		if !slices.ContainsFunc(rules, func(h netlink.Rule) bool {
			return h.Priority == want.Priority && h.Src != nil && h.Src.String() == want.Src.String()
		}) {
			return fmt.Errorf("rule from %s lookup %d missing", r.Address, r.Table)
		}
	}
	if r.Address.Is6() {
		for _, s := range IPv6Sysctls {
			if v, err := readSysctl("ipv6", r.IfName, s.Key); err != nil || v != s.Value {
				return fmt.Errorf("net.ipv6.conf.%s.%s is %q (%v), want %s", r.IfName, s.Key, v, err, s.Value)
			}
		}
	}
	return nil
}

// ipsOf returns the interface named ifName in sandbox of prevResult and its addresses by family ("IPv4",
// "IPv6"), the first of each.
func ipsOf(res *current.Result, ifName, sandbox string) (*current.Interface, map[string]*current.IPConfig, error) {
	for i, iface := range res.Interfaces {
		if iface.Name != ifName || iface.Sandbox != sandbox {
			continue
		}
		ips := map[string]*current.IPConfig{}
		for _, ipc := range res.IPs {
			if ipc.Interface == nil || *ipc.Interface != i {
				continue
			}
			p, ok := netipx(ipc.Address)
			if !ok {
				return nil, nil, netconf.Invalid("prevResult address %s invalid", ipc.Address.String())
			}
			f := map[bool]string{false: "IPv4", true: "IPv6"}[p.Addr().Is6()]
			if ips[f] == nil {
				ips[f] = ipc
			}
		}
		return iface, ips, nil
	}
	return nil, nil, fmt.Errorf("prevResult has no interface %q in %s", ifName, sandbox)
}
