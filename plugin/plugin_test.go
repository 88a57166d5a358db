package plugin

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/multinic/multinic/internal/nlretry"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/multinic/multinic/internal/nettest"
	"github.com/multinic/multinic/ipam/api"
	"github.com/multinic/multinic/ipam/journal"
	"github.com/multinic/multinic/netconf"
)

// modeCase is one way of giving the pod its interface: exclusive runs on the host; ipvlan needs the VM.
type modeCase struct {
	name       string
	mode       string
	ipvlanMode string // "" for the default
	exclusive  bool
	l3         bool
}

var modeCases = []modeCase{
	{name: "exclusive", mode: netconf.ModeExclusive, exclusive: true},
	{name: "ipvlan l2", mode: netconf.ModeIPVlan},
	{name: "ipvlan l3", mode: netconf.ModeIPVlan, ipvlanMode: "l3", l3: true},
}

func (m modeCase) require(t *testing.T) {
	t.Helper()
	if m.mode == netconf.ModeIPVlan {
		nettest.RequireLinkType(t, "ipvlan")
	}
	nettest.RequireRoot(t)
}

func (m modeCase) extra(more ...string) string {
	var parts []string
	if m.ipvlanMode != "" {
		parts = append(parts, `"ipvlanMode": "`+m.ipvlanMode+`"`)
	}
	return strings.Join(append(parts, more...), ", ")
}

// TestAddCheckDel attaches a pod in each mode and checks every effect, CHECK, the traffic through the
// interface (L2 and exclusive), and that DEL takes it all back.
func TestAddCheckDel(t *testing.T) {
	for _, m := range modeCases {
		t.Run(m.name, func(t *testing.T) {
			m.require(t)
			e := newEnv(t, m.exclusive)
			e.addPodEth0()
			nodeLinks := linkNames(t, e.node)
			mainBefore := routeStrings(t, e.pod, unix.RT_TABLE_MAIN, "eth0")
			args := e.args(e.conf(m.mode, m.extra(`"mtu": 1500`, `"routes": [{"dst": "10.100.0.0/16"}]`)))

			res, err := e.add(args)
			if err != nil {
				t.Fatal(err)
			}

			// The agent's request.
			if n := e.agent.numAllocateCalls(); n != 1 {
				t.Fatalf("allocate calls = %d, want 1", n)
			}
			req := e.agent.allocates[0]
			wantReq := api.AllocateRequest{Card: card, ContainerID: e.containerID, IfName: podIfName,
				PodRef:    api.PodRef{PodNamespace: "default", PodName: "pod-a", PodUID: "uid-a"},
				Exclusive: m.exclusive, Netns: e.pod.Path(), Network: "card1"}
			if req != wantReq {
				t.Errorf("allocate request = %+v, want %+v", req, wantReq)
			}

			// The result.
			wantGW := net.IP(gatewayIP.AsSlice())
			if m.l3 {
				wantGW = nil
			}
			if len(res.Interfaces) != 1 || len(res.IPs) != 1 || len(res.Routes) != 1 {
				t.Fatalf("result = %+v, want one interface, one IP, one route", res)
			}
			wantIface := current.Interface{Name: podIfName, Mac: eniMAC.String(), Mtu: 1500, Sandbox: e.pod.Path()}
			if *res.Interfaces[0] != wantIface {
				t.Errorf("result interface = %+v, want %+v", *res.Interfaces[0], wantIface)
			}
			ipc := res.IPs[0]
			if ipc.Interface == nil || *ipc.Interface != 0 || ipc.Address.String() != "10.1.0.5/24" || !ipc.Gateway.Equal(wantGW) {
				t.Errorf("result ip = %+v, want 10.1.0.5/24 gw %v on interface 0", ipc, wantGW)
			}
			if r := res.Routes[0]; r.Dst.String() != "10.100.0.0/16" || !r.GW.Equal(wantGW) {
				t.Errorf("result route = %+v, want 10.100.0.0/16 via %v", r, wantGW)
			}

			// The pod interface.
			h := nettest.Handle(t, e.pod)
			l, err := h.LinkByName(podIfName)
			if err != nil {
				t.Fatal(err)
			}
			a := l.Attrs()
			if a.MTU != 1500 || a.HardwareAddr.String() != eniMAC.String() || a.Flags&net.FlagUp == 0 {
				t.Errorf("link = mtu %d mac %s flags %v, want mtu 1500 mac %s up", a.MTU, a.HardwareAddr, a.Flags, eniMAC)
			}
			if m.exclusive {
				if want := (origState{Name: eniName, MTU: eniMTU, Up: true}).Alias(); a.Alias != want {
					t.Errorf("alias = %q, want %q", a.Alias, want)
				}
			} else if ipvl, ok := l.(*netlink.IPVlan); !ok {
				t.Errorf("link is %s, want ipvlan", l.Type())
			} else if want := map[bool]netlink.IPVlanMode{false: netlink.IPVLAN_MODE_L2, true: netlink.IPVLAN_MODE_L3}[m.l3]; ipvl.Mode != want {
				t.Errorf("ipvlan mode = %v, want %v", ipvl.Mode, want)
			}
			addrs, err := nlretry.AddrList(h, l, netlink.FAMILY_V4)
			if err != nil {
				t.Fatal(err)
			}
			if len(addrs) != 1 || addrs[0].IPNet.String() != "10.1.0.5/24" {
				t.Errorf("addresses = %v, want 10.1.0.5/24", addrs)
			}

			// Policy routing.
			table := RouteTableBase + card
			gwText := "via 10.1.0.1"
			if m.l3 {
				gwText = "scope link"
			}
			wantTable := []string{"0.0.0.0/0 " + gwText, "10.1.0.0/24 scope link src 10.1.0.5"}
			if got := routeStrings(t, e.pod, table, podIfName); !slices.Equal(got, wantTable) {
				t.Errorf("table %d = %q, want %q", table, got, wantTable)
			}
			rules, err := h.RuleListFiltered(unix.AF_INET, &netlink.Rule{Table: table}, netlink.RT_FILTER_TABLE)
			if err != nil {
				t.Fatal(err)
			}
			if len(rules) != 1 || rules[0].Src.String() != "10.1.0.5/32" || rules[0].Priority != RulePriority {
				t.Errorf("rules of table %d = %v, want from 10.1.0.5/32 priority %d", table, rules, RulePriority)
			}
			// The main table: the pod's default route untouched, the extra route added.
			wantMain := "10.100.0.0/16 " + map[bool]string{false: "via 10.1.0.1 src 10.1.0.5", true: "src 10.1.0.5"}[m.l3]
			if got := routeStrings(t, e.pod, unix.RT_TABLE_MAIN, podIfName); !slices.Contains(got, wantMain) {
				t.Errorf("main table on %s = %q, want %q in it", podIfName, got, wantMain)
			}
			if got := routeStrings(t, e.pod, unix.RT_TABLE_MAIN, "eth0"); !slices.Equal(got, mainBefore) {
				t.Errorf("main table on eth0 = %q, want unchanged %q", got, mainBefore)
			}
			var rpf string
			if err := e.pod.Do(func(ns.NetNS) error { rpf, err = readSysctl("ipv4", podIfName, "rp_filter"); return err }); err != nil || rpf != "2" {
				t.Errorf("rp_filter = %q (%v), want 2", rpf, err)
			}
			if m.exclusive {
				if _, err := nettest.Handle(t, e.node).LinkByName(eniName); err == nil {
					t.Errorf("ENI link %s still in the node netns", eniName)
				}
			}

			// Traffic from the interface's address leaves through it (the pod's default route is eth0).
			// In L3 mode the node would route it: not wired in this test.
			if !m.l3 {
				if err := e.dialFromPod(podAddr); err != nil {
					t.Errorf("connect from %s to %s: %v", podAddr, remoteAddr, err)
				}
			}

			e.checkDelTwice(args, res, m.exclusive, nodeLinks)
		})
	}
}

// routeStrings lists the IPv4 routes of table on the link ifName in n as "dst [via gw|scope link] [src]".
func routeStrings(t *testing.T, n ns.NetNS, table int, ifName string) []string {
	t.Helper()
	return routeStringsOf(t, n, netlink.FAMILY_V4, table, ifName)
}

// routeStringsOf is routeStrings for a family (netlink.FAMILY_V4 or FAMILY_V6).
func routeStringsOf(t *testing.T, n ns.NetNS, family, table int, ifName string) []string {
	t.Helper()
	h := nettest.Handle(t, n)
	l, err := h.LinkByName(ifName)
	if err != nil {
		t.Fatal(err)
	}
	routes, err := h.RouteListFiltered(family, &netlink.Route{Table: table, LinkIndex: l.Attrs().Index},
		netlink.RT_FILTER_TABLE|netlink.RT_FILTER_OIF)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range routes {
		dst := map[int]string{netlink.FAMILY_V4: "0.0.0.0/0", netlink.FAMILY_V6: "::/0"}[family]
		if r.Dst != nil {
			dst = r.Dst.String()
		}
		s := dst
		switch {
		case r.Gw != nil:
			s += " via " + r.Gw.String()
		case r.Scope == netlink.SCOPE_LINK:
			s += " scope link"
		}
		if r.Src != nil {
			s += " src " + r.Src.String()
		}
		out = append(out, s)
	}
	slices.Sort(out)
	return out
}

// TestCheckDetectsDrift breaks one thing ADD made at a time; CHECK must notice each.
func TestCheckDetectsDrift(t *testing.T) {
	nettest.RequireRoot(t)
	tests := []struct {
		name   string
		break_ func(e *env, h netlinksafe.Handle) error
	}{
		{"rule deleted", func(e *env, h netlinksafe.Handle) error {
			return DeleteRules(h, RouteTableBase+card)
		}},
		{"table default route deleted", func(e *env, h netlinksafe.Handle) error {
			l, _ := h.LinkByName(podIfName)
			return h.RouteDel(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: ipNet(netip.MustParsePrefix("0.0.0.0/0")),
				Gw: net.IP(gatewayIP.AsSlice()), Table: RouteTableBase + card})
		}},
		{"rp_filter strict", func(e *env, h netlinksafe.Handle) error {
			return e.pod.Do(func(ns.NetNS) error {
				return os.WriteFile(sysctlPath("ipv4", podIfName, "rp_filter"), []byte("1"), 0o644)
			})
		}},
		{"mtu changed", func(e *env, h netlinksafe.Handle) error {
			l, _ := h.LinkByName(podIfName)
			return h.LinkSetMTU(l, 1400)
		}},
		{"address removed", func(e *env, h netlinksafe.Handle) error {
			l, _ := h.LinkByName(podIfName)
			return h.AddrDel(l, &netlink.Addr{IPNet: ipNet(netip.MustParsePrefix("10.1.0.5/24"))})
		}},
		{"link down", func(e *env, h netlinksafe.Handle) error {
			l, _ := h.LinkByName(podIfName)
			return h.LinkSetDown(l)
		}},
		{"extra route deleted", func(e *env, h netlinksafe.Handle) error {
			l, _ := h.LinkByName(podIfName)
			return h.RouteDel(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: ipNet(netip.MustParsePrefix("10.100.0.0/16"))})
		}},
		{"agent forgot the allocation", func(e *env, h netlinksafe.Handle) error {
			e.agent.mu.Lock()
			clear(e.agent.allocs)
			e.agent.mu.Unlock()
			return nil
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, true)
			args := e.args(e.conf(netconf.ModeExclusive, `"mtu": 1500, "routes": [{"dst": "10.100.0.0/16"}]`))
			res, err := e.add(args)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { e.del(args) })
			if err := e.check(args, res); err != nil {
				t.Fatalf("CHECK before the change: %v", err)
			}
			if err := tt.break_(e, nettest.Handle(t, e.pod)); err != nil {
				t.Fatalf("break: %v", err)
			}
			if err := e.check(args, res); err == nil {
				t.Errorf("CHECK after %s passed, want an error", tt.name)
			}
		})
	}
}

// TestAddFailureRollsBack fails ADD after each step, for each family: nothing may be left behind (no
// allocation, link, rule or table route of either family).
func TestAddFailureRollsBack(t *testing.T) {
	steps := []Step{StepAllocate, StepLink, StepAddress, StepRoutes, StepRule, StepSysctl, StepResult}
	for _, c := range []struct{ family, routes string }{
		{netconf.FamilyIPv4, `"routes": [{"dst": "10.100.0.0/16"}]`},
		{netconf.FamilyIPv6, `"family": "ipv6", "routes": [{"dst": "2001:db8:100::/48"}]`},
		{netconf.FamilyDual, `"family": "dual", "routes": [{"dst": "10.100.0.0/16"}, {"dst": "2001:db8:100::/48"}]`},
	} {
		for _, m := range modeCases[:2] { // exclusive on the host, ipvlan L2 in the VM
			for _, s := range steps {
				t.Run(c.family+"/"+m.name+"/"+string(s), func(t *testing.T) {
					m.require(t)
					e := newEnv(t, m.exclusive)
					nodeLinks := linkNames(t, e.node)
					injected := errors.New("injected failure")
					var seen []Step
					e.p.Hook = func(got Step) error {
						seen = append(seen, got)
						if got == s {
							return injected
						}
						return nil
					}
					_, err := e.add(e.args(e.conf(m.mode, c.routes)))
					if !errors.Is(err, injected) && !strings.Contains(err.Error(), injected.Error()) {
						t.Fatalf("ADD error = %v, want the injected failure", err)
					}
					if seen[len(seen)-1] != s {
						t.Fatalf("steps seen = %v, want them to end at %s", seen, s)
					}
					e.requireClean([]string{"lo"})
					if got := linkNames(t, e.node); !slices.Equal(got, nodeLinks) {
						t.Errorf("node links = %v, want %v", got, nodeLinks)
					}
					if m.exclusive {
						e.requireENIHome()
					}
				})
			}
		}
	}
}

// TestAddProvokedFailures fails ADD for real (no hook): a taken ifname, an MTU above the ENI's.
func TestAddProvokedFailures(t *testing.T) {
	nettest.RequireRoot(t)
	t.Run("ifname taken", func(t *testing.T) {
		e := newEnv(t, true)
		h := nettest.Handle(t, e.pod)
		if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: podIfName}, PeerName: "other0"}); err != nil {
			t.Fatal(err)
		}
		if _, err := e.add(e.args(e.conf(netconf.ModeExclusive, ""))); err == nil || !strings.Contains(err.Error(), "already exists") {
			t.Fatalf("ADD error = %v, want the ifname taken", err)
		}
		if n := e.agent.numAllocateCalls(); n != 0 {
			t.Errorf("allocate calls = %d, want 0", n)
		}
		if s := e.podState(); !slices.Equal(s.links, []string{"lo", podIfName, "other0"}) {
			t.Errorf("pod links = %v, want the taken one left alone", s.links)
		}
		e.requireENIHome()
	})
	t.Run("ADD twice", func(t *testing.T) {
		e := newEnv(t, true)
		args := e.args(e.conf(netconf.ModeExclusive, ""))
		res, err := e.add(args)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.add(args); err == nil {
			t.Fatal("second ADD passed")
		}
		// The first ADD's interface, address and allocation are intact.
		if err := e.check(args, res); err != nil {
			t.Errorf("CHECK after a failed second ADD: %v", err)
		}
		if err := e.del(args); err != nil {
			t.Fatal(err)
		}
		e.requireENIHome()
	})
	t.Run("wrong MAC", func(t *testing.T) {
		e := newEnv(t, true)
		ans := e.agent.answers[card]
		ans.MAC = "02:00:00:00:99:99"
		e.agent.answers[card] = ans
		_, err := e.add(e.args(e.conf(netconf.ModeExclusive, "")))
		if err == nil || !strings.Contains(err.Error(), "refusing to move it") {
			t.Fatalf("ADD error = %v, want a MAC mismatch", err)
		}
		e.requireClean([]string{"lo"})
		e.requireENIHome()
	})
}

// TestAddRefusesHostNetns: CNI_NETNS naming the plugin's own netns is refused before the agent is asked.
func TestAddRefusesHostNetns(t *testing.T) {
	e := newEnv(t, true)
	args := e.args(e.conf(netconf.ModeExclusive, ""))
	args.Netns = e.node.Path()
	_, err := e.add(args)
	if cniCode(err) != int(types.ErrInvalidNetNS) {
		t.Fatalf("ADD error = %v, want code %d", err, types.ErrInvalidNetNS)
	}
	if n := e.agent.numAllocateCalls(); n != 0 {
		t.Errorf("allocate calls = %d, want 0", n)
	}
	e.requireENIHome()
}

// TestDelENIHomeBeforeRelease: DEL moves an exclusive ENI back to the node before it tells the agent, so
// the agent never hands out an ENI that is still inside the old pod.
func TestDelENIHomeBeforeRelease(t *testing.T) {
	e := newEnv(t, true)
	args := e.args(e.conf(netconf.ModeExclusive, ""))
	if _, err := e.add(args); err != nil {
		t.Fatal(err)
	}
	node := nettest.Handle(t, e.node)
	var homeAtRelease, released bool
	e.agent.onRelease = func() {
		_, err := node.LinkByName(eniName)
		homeAtRelease, released = err == nil, true
	}
	if err := e.del(args); err != nil {
		t.Fatal(err)
	}
	if !released || !homeAtRelease {
		t.Errorf("release seen %t, ENI link in the node netns when the agent was told %t: want both", released, homeAtRelease)
	}
	e.requireENIHome()
}

// TestAddNetnsGone: a CNI_NETNS that is gone (the runtime removed the sandbox) or is not a netns is code 3,
// before the agent is asked; DEL of it has nothing to do.
func TestAddNetnsGone(t *testing.T) {
	notNS := filepath.Join(t.TempDir(), "plain-file")
	if err := os.WriteFile(notNS, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{filepath.Join(t.TempDir(), "gone"), notNS} {
		e := newEnv(t, true)
		args := e.args(e.conf(netconf.ModeExclusive, ""))
		args.Netns = path
		_, err := e.add(args)
		if cniCode(err) != int(types.ErrUnknownContainer) || !strings.Contains(err.Error(), path) {
			t.Errorf("ADD with netns %s: error = %v, want code %d naming the path", path, err, types.ErrUnknownContainer)
		}
		if n := e.agent.numAllocateCalls(); n != 0 {
			t.Errorf("allocate calls = %d, want 0", n)
		}
		if err := e.del(args); err != nil {
			t.Errorf("DEL with netns %s: %v", path, err)
		}
		e.requireENIHome()
	}
}

// TestAddErrorCodes checks the CNI codes of agent errors at the verb boundary.
func TestAddErrorCodes(t *testing.T) {
	tests := []struct {
		name     string
		allocErr error
		stop     bool
		want     uint
		wantMsg  string
	}{
		{"try again", &api.Error{Code: api.CodeTryAgain, Message: "card 1: InsufficientFreeAddressesInSubnet"}, false, types.ErrTryAgainLater, "InsufficientFreeAddressesInSubnet"},
		{"card taken", &api.Error{Code: api.CodeCardTaken, Message: "pod default/pod-a holds card 1 as net2"}, false, api.CNICardTaken, "as net2"},
		{"interface taken", &api.Error{Code: api.CodeInterfaceTaken, Message: "net1 is on card 2"}, false, api.CNIInterfaceTaken, "card 2"},
		{"not managed", &api.Error{Code: api.CodeNotManaged, Message: "card 1 not managed"}, false, api.CNICardNotManaged, "not managed"},
		{"invalid", &api.Error{Code: api.CodeInvalid, Message: "bad ifName"}, false, types.ErrInvalidNetworkConfig, "bad ifName"},
		{"internal", &api.Error{Code: api.CodeInternal, Message: "boom"}, false, types.ErrInternal, "boom"},
		{"agent down", nil, true, types.ErrTryAgainLater, "agent unavailable"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, true)
			e.agent.allocErr = tt.allocErr
			if tt.stop {
				e.srv.halt()
			}
			err := e.inNode(func() error { return e.p.Add(e.args(e.conf(netconf.ModeExclusive, ""))) })
			var te *types.Error
			if !errors.As(err, &te) || te.Code != tt.want || !strings.Contains(te.Msg, tt.wantMsg) {
				t.Fatalf("ADD error = %#v, want code %d with %q", err, tt.want, tt.wantMsg)
			}
			e.requireENIHome()
		})
	}
}

// TestDel covers DEL when things are gone or down.
func TestDel(t *testing.T) {
	t.Run("netns deleted", func(t *testing.T) {
		e := newEnv(t, true)
		pod, remove := newDetachedNS(t)
		e.pod = pod
		args := e.args(e.conf(netconf.ModeExclusive, ""))
		if _, err := e.add(args); err != nil {
			t.Fatal(err)
		}
		remove()
		if err := e.del(args); err != nil {
			t.Fatalf("DEL: %v", err)
		}
		if !e.agent.released(e.containerID, podIfName) || e.agent.numAllocs() != 0 {
			t.Errorf("the address was not released")
		}
		if err := e.del(args); err != nil {
			t.Errorf("DEL again: %v", err)
		}
	})
	t.Run("no netns given", func(t *testing.T) {
		e := newEnv(t, true)
		args := e.args(e.conf(netconf.ModeExclusive, ""))
		if _, err := e.add(args); err != nil {
			t.Fatal(err)
		}
		args.Netns = ""
		if err := e.del(args); err != nil {
			t.Fatalf("DEL: %v", err)
		}
		if e.agent.numAllocs() != 0 {
			t.Errorf("the address was not released")
		}
		args.Netns = e.pod.Path()
		if err := e.del(args); err != nil {
			t.Fatalf("DEL with the netns: %v", err)
		}
		e.requireENIHome()
	})
	t.Run("unknown container", func(t *testing.T) {
		e := newEnv(t, true)
		if err := e.del(e.args(e.conf(netconf.ModeExclusive, ""))); err != nil {
			t.Fatalf("DEL: %v", err)
		}
	})
	t.Run("agent down then back", func(t *testing.T) {
		e := newEnv(t, true)
		args := e.args(e.conf(netconf.ModeExclusive, ""))
		res, err := e.add(args)
		if err != nil {
			t.Fatal(err)
		}
		e.srv.halt()
		if err := e.del(args); err != nil {
			t.Fatalf("DEL with the agent down: %v", err)
		}
		if err := e.del(args); err != nil {
			t.Fatalf("DEL twice with the agent down: %v", err)
		}
		// The netns work was done; the release waits in the journal.
		e.requireENIHome()
		if got := journalEntries(t, e.p.JournalDir); len(got) != 1 {
			t.Fatalf("journal = %v, want one record", got)
		}
		if e.agent.numAllocs() != 1 {
			t.Fatalf("agent allocations = %d, want the one still held", e.agent.numAllocs())
		}
		// ADD of the same attachment must not run before the release is delivered.
		if _, err := e.add(args); cniCode(err) != int(types.ErrTryAgainLater) {
			t.Errorf("ADD with a pending release = %v, want code 11", err)
		}
		e.srv.start()
		// STATUS only reads: the release stays journaled.
		if err := e.inNode(func() error { return cniError(e.p.status(args)) }); err != nil {
			t.Fatalf("STATUS: %v", err)
		}
		if got := journalEntries(t, e.p.JournalDir); len(got) != 1 || e.agent.released(e.containerID, podIfName) {
			t.Fatalf("after STATUS: journal %v, released %t; want the record kept, nothing released", got, e.agent.released(e.containerID, podIfName))
		}
		// ADD replays the journal first, so the same attachment can be added again.
		if _, err := e.add(args); err != nil {
			t.Fatalf("ADD once the agent is back: %v", err)
		}
		if !e.agent.released(e.containerID, podIfName) {
			t.Errorf("the journaled release was not replayed")
		}
		if got := journalEntries(t, e.p.JournalDir); len(got) != 0 {
			t.Errorf("journal = %v, want empty", got)
		}
		if err := e.del(args); err != nil {
			t.Fatalf("DEL: %v", err)
		}
		_ = res
	})
}

// TestJournalReplayByVerb: a release journaled for this configuration's agent goes out on ADD, DEL and GC,
// and stays on CHECK and STATUS (they only read); a record for another agent's socket is never sent.
func TestJournalReplayByVerb(t *testing.T) {
	const otherSocket = "/run/multinic-other/agent.sock"
	for _, c := range []struct {
		verb    string
		replays bool
	}{{"ADD", true}, {"DEL", true}, {"GC", true}, {"CHECK", false}, {"STATUS", false}} {
		t.Run(c.verb, func(t *testing.T) {
			e := newEnv(t, true)
			args := e.args(e.conf(netconf.ModeExclusive, ""))
			var res *current.Result
			if c.verb == "CHECK" {
				var err error
				if res, err = e.add(args); err != nil {
					t.Fatal(err)
				}
			}
			for _, rec := range []journal.Record{
				{ContainerID: "journaled", IfName: "net1", Card: card, AgentSocket: e.srv.socket},
				{ContainerID: "elsewhere", IfName: "net1", Card: card, AgentSocket: otherSocket},
			} {
				if err := journal.Add(e.p.JournalDir, rec); err != nil {
					t.Fatal(err)
				}
			}
			var err error
			switch c.verb {
			case "ADD":
				_, err = e.add(args)
			case "DEL":
				err = e.del(args)
			case "GC":
				gcConf := e.conf(netconf.ModeExclusive, `"cni.dev/valid-attachments": []`)
				err = e.inNode(func() error { return e.p.GC(&skel.CmdArgs{StdinData: gcConf}) })
			case "CHECK":
				err = e.check(args, res)
			case "STATUS":
				err = e.inNode(func() error { return e.p.Status(args) })
			}
			if err != nil {
				t.Fatalf("%s: %v", c.verb, err)
			}
			if got := e.agent.released("journaled", "net1"); got != c.replays {
				t.Errorf("%s sent the journaled release: %t, want %t", c.verb, got, c.replays)
			}
			if got := journal.Pending(e.p.JournalDir, "journaled", "net1"); got == c.replays {
				t.Errorf("%s: record still pending %t, want %t", c.verb, got, !c.replays)
			}
			if e.agent.released("elsewhere", "net1") || !journal.Pending(e.p.JournalDir, "elsewhere", "net1") {
				t.Errorf("%s: the other socket's record was sent to this agent or removed", c.verb)
			}
		})
	}
}

func journalEntries(t *testing.T, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestStatus: 50 when the agent is down or the card not ready.
func TestStatus(t *testing.T) {
	nettest.RequireRoot(t)
	e := newEnv(t, true)
	args := e.args(e.conf(netconf.ModeExclusive, ""))
	status := func() error { return e.p.Status(args) }
	if err := status(); err != nil {
		t.Fatalf("STATUS ready: %v", err)
	}
	e.agent.mu.Lock()
	e.agent.status = api.Status{Ready: false, Reason: "subnet-0abc has no free addresses"}
	e.agent.mu.Unlock()
	if err := status(); cniCode(err) != int(types.ErrPluginNotAvailable) || !strings.Contains(err.Error(), "no free addresses") {
		t.Errorf("STATUS not ready = %v, want code 50 with the reason", err)
	}
	e.srv.halt()
	if err := status(); cniCode(err) != int(types.ErrPluginNotAvailable) {
		t.Errorf("STATUS agent down = %v, want code 50", err)
	}
}

// TestCNIGC releases what is not valid, of this network only (by name, card and mode), and cleans the link
// when the netns is still there. An allocation without a network name (an older plugin's) is kept.
func TestCNIGC(t *testing.T) {
	e := newEnv(t, true)
	args := e.args(e.conf(netconf.ModeExclusive, ""))
	if _, err := e.add(args); err != nil {
		t.Fatal(err)
	}
	e.agent.mu.Lock()
	for _, a := range []api.Allocation{
		{AllocateRequest: api.AllocateRequest{Card: card, ContainerID: "valid", IfName: "net1", Exclusive: true, Network: "card1"}},
		{AllocateRequest: api.AllocateRequest{Card: card, ContainerID: "gone", IfName: "net1", Exclusive: true, Netns: "/var/run/netns/nosuch", Network: "card1"}},
		{AllocateRequest: api.AllocateRequest{Card: 2, ContainerID: "other-card", IfName: "net2", Exclusive: true, Network: "card1"}},
		{AllocateRequest: api.AllocateRequest{Card: card, ContainerID: "other-network", IfName: "net3", Exclusive: true, Network: "card1-by-hand"}},
		{AllocateRequest: api.AllocateRequest{Card: card, ContainerID: "no-network", IfName: "net1", Exclusive: true}},
	} {
		e.agent.allocs[attachment{a.ContainerID, a.IfName}] = a
	}
	e.agent.mu.Unlock()
	gcConf := e.conf(netconf.ModeExclusive, `"cni.dev/valid-attachments": [{"containerID": "valid", "ifname": "net1"}]`)
	if err := e.inNode(func() error { return e.p.GC(&skel.CmdArgs{StdinData: gcConf}) }); err != nil {
		t.Fatalf("GC: %v", err)
	}
	for _, tc := range []struct {
		id, ifName string
		want       bool
	}{
		{"valid", "net1", false}, {"gone", "net1", true}, {"other-card", "net2", false}, {e.containerID, podIfName, true},
		{"other-network", "net3", false}, {"no-network", "net1", false},
	} {
		if got := e.agent.released(tc.id, tc.ifName); got != tc.want {
			t.Errorf("released %s/%s = %t, want %t", tc.id, tc.ifName, got, tc.want)
		}
	}
	// The live pod's ENI came back from its netns.
	e.requireENIHome()
	if s := e.podState(); !slices.Equal(s.links, []string{"lo"}) || len(s.rules) != 0 || len(s.tableRoutes) != 0 {
		t.Errorf("pod netns after GC = %+v, want only lo", s)
	}
}

// TestCNIGCTwoNetworks: two networks on one card and mode (the published NAD and a hand-written one). A GC of
// the other network, whose valid attachments cannot list this pod, leaves the pod's link and address alone;
// a GC of the pod's own network that lists it does too.
func TestCNIGCTwoNetworks(t *testing.T) {
	e := newEnv(t, true)
	args := e.args(e.conf(netconf.ModeExclusive, ""))
	res, err := e.add(args)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.del(args) })
	other := bytes.Replace(e.conf(netconf.ModeExclusive, `"cni.dev/valid-attachments": []`), []byte(`"card1"`), []byte(`"card1-by-hand"`), 1)
	own := e.conf(netconf.ModeExclusive, fmt.Sprintf(`"cni.dev/attachments": [{"containerID": %q, "ifname": %q}]`, e.containerID, podIfName))
	for _, gcConf := range [][]byte{other, own} {
		if err := e.inNode(func() error { return e.p.GC(&skel.CmdArgs{StdinData: gcConf}) }); err != nil {
			t.Fatalf("GC %s: %v", gcConf, err)
		}
		if e.agent.released(e.containerID, podIfName) || e.agent.numAllocs() != 1 {
			t.Fatalf("GC %s released the live pod's address", gcConf)
		}
		if err := e.check(args, res); err != nil {
			t.Fatalf("CHECK after GC %s: %v", gcConf, err)
		}
	}
}

// TestPolicyRoutingOff: without the rule, traffic from the interface's address follows the pod's default
// route (eth0) and does not reach the card's subnet: the rule is what makes it leave through net1.
func TestPolicyRoutingOff(t *testing.T) {
	e := newEnv(t, true)
	e.addPodEth0()
	args := e.args(e.conf(netconf.ModeExclusive, `"policyRouting": false`))
	res, err := e.add(args)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.del(args) })
	if s := e.podState(); len(s.rules) != 0 || len(s.tableRoutes) != 0 {
		t.Errorf("rules %v, table routes %v: want none with policyRouting false", s.rules, s.tableRoutes)
	}
	if err := e.check(args, res); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	if err := e.dialFromPod(podAddr); err == nil {
		t.Errorf("connect from %s to %s passed without the rule: the test cannot tell the rule's effect", podAddr, remoteAddr)
	}
}

// TestCheckIPVlan: CHECK compares the ipvlan mode, and DEL with the netns gone releases the address.
func TestCheckIPVlan(t *testing.T) {
	nettest.RequireLinkType(t, "ipvlan")
	e := newEnv(t, false)
	args := e.args(e.conf(netconf.ModeIPVlan, ""))
	res, err := e.add(args)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.check(args, res); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	l3 := *args
	l3.StdinData = e.conf(netconf.ModeIPVlan, `"ipvlanMode": "l3"`)
	if err := e.check(&l3, res); err == nil || !strings.Contains(err.Error(), "ipvlan mode") {
		t.Errorf("CHECK with ipvlanMode l3 = %v, want a mode mismatch", err)
	}
	if err := e.del(args); err != nil {
		t.Fatal(err)
	}
	e.requireClean([]string{"lo"})
}

// TestDelIPVlanNetnsGone: the child dies with the netns; DEL still releases.
func TestDelIPVlanNetnsGone(t *testing.T) {
	nettest.RequireLinkType(t, "ipvlan")
	e := newEnv(t, false)
	pod, remove := newDetachedNS(t)
	e.pod = pod
	nodeLinks := linkNames(t, e.node)
	args := e.args(e.conf(netconf.ModeIPVlan, ""))
	if _, err := e.add(args); err != nil {
		t.Fatal(err)
	}
	remove()
	for range 2 {
		if err := e.del(args); err != nil {
			t.Fatalf("DEL: %v", err)
		}
	}
	if !e.agent.released(e.containerID, podIfName) || e.agent.numAllocs() != 0 {
		t.Error("the address was not released")
	}
	if got := linkNames(t, e.node); !slices.Equal(got, nodeLinks) {
		t.Errorf("node links = %v, want %v", got, nodeLinks)
	}
}

// familyModeCases are the modes IPv6 is tested in: exclusive on the host, the ipvlan modes in the VM.
var familyModeCases = append(slices.Clone(modeCases),
	modeCase{name: "ipvlan l3s", mode: netconf.ModeIPVlan, ipvlanMode: "l3s", l3: true})

// TestAddCheckDelIPv6 attaches a pod with family ipv6 and dual in each mode, in a pod netns whose IPv6 is
// off (as runtimes may leave it), and checks the request's family, the result (IPv4 first, each address on
// interface 0 with its gateway), the addresses (none tentative), both families' policy routing, traffic
// from the IPv6 address with a single attempt right after ADD (L2 and exclusive), CHECK, and DEL taking
// everything back.
func TestAddCheckDelIPv6(t *testing.T) {
	for _, family := range []string{netconf.FamilyIPv6, netconf.FamilyDual} {
		for _, m := range familyModeCases {
			t.Run(family+"/"+m.name, func(t *testing.T) {
				m.require(t)
				e := newEnv(t, m.exclusive)
				disableIPv6(t, e.pod)
				e.addPodEth0()
				nodeLinks := linkNames(t, e.node)
				routes := `"routes": [{"dst": "2001:db8:100::/48"}]`
				if family == netconf.FamilyDual {
					routes = `"routes": [{"dst": "2001:db8:100::/48"}, {"dst": "10.100.0.0/16"}]`
				}
				args := e.args(e.conf(m.mode, m.extra(`"family": "`+family+`"`, `"mtu": 1500`, routes)))

				res, err := e.add(args)
				if err != nil {
					t.Fatal(err)
				}
				if got := e.agent.allocates[0].Family; got != family {
					t.Errorf("allocate request family = %q, want %q", got, family)
				}

				// The result: IPv4 first, both on interface 0, each with its family's gateway (none in L3).
				gw4, gw6 := net.IP(gatewayIP.AsSlice()), net.IP(gateway6.AsSlice())
				if m.l3 {
					gw4, gw6 = nil, nil
				}
				type ipRow struct {
					addr string
					gw   net.IP
				}
				want := []ipRow{{"2001:db8:ec2:1::5/64", gw6}}
				wantRoutes := []string{"2001:db8:100::/48 via " + gw6.String()}
				if family == netconf.FamilyDual {
					want = append([]ipRow{{"10.1.0.5/24", gw4}}, want...)
					wantRoutes = []string{"10.100.0.0/16 via " + gw4.String(), "2001:db8:100::/48 via " + gw6.String()}
				}
				if len(res.Interfaces) != 1 || len(res.IPs) != len(want) {
					t.Fatalf("result = %+v, want one interface and %d IPs", res, len(want))
				}
				for i, w := range want {
					ipc := res.IPs[i]
					if ipc.Interface == nil || *ipc.Interface != 0 || ipc.Address.String() != w.addr || !ipc.Gateway.Equal(w.gw) {
						t.Errorf("result ip %d = %+v, want %s gw %v on interface 0", i, ipc, w.addr, w.gw)
					}
				}
				var gotRoutes []string
				for _, r := range res.Routes {
					gotRoutes = append(gotRoutes, r.Dst.String()+" via "+r.GW.String())
				}
				if !slices.Equal(gotRoutes, wantRoutes) {
					t.Errorf("result routes = %q, want %q", gotRoutes, wantRoutes)
				}

				// The link's addresses: ours, and the kernel's link-local; none tentative.
				h := nettest.Handle(t, e.pod)
				l, err := h.LinkByName(podIfName)
				if err != nil {
					t.Fatal(err)
				}
				addrs, err := nlretry.AddrList(h, l, netlink.FAMILY_ALL)
				if err != nil {
					t.Fatal(err)
				}
				var got []string
				for _, a := range addrs {
					if a.Flags&(unix.IFA_F_TENTATIVE|unix.IFA_F_DADFAILED) != 0 {
						t.Errorf("address %s flags %#x: tentative or failed DAD", a.IPNet, a.Flags)
					}
					if !a.IP.IsLinkLocalUnicast() {
						got = append(got, a.IPNet.String())
					}
				}
				var wantAddrs []string
				for _, w := range want {
					wantAddrs = append(wantAddrs, w.addr)
				}
				slices.Sort(got)
				slices.Sort(wantAddrs)
				if !slices.Equal(got, wantAddrs) {
					t.Errorf("addresses = %v, want %v and link-local only", got, wantAddrs)
				}

				// Policy routing of each family.
				table := RouteTableBase + card
				// In L3 the routes name the device only (the kernel reports IPv6 routes with universe scope).
				wantTable := []string{"2001:db8:ec2:1::/64 via fe80:ec2::1 src 2001:db8:ec2:1::5", "::/0 via fe80:ec2::1"}
				if m.l3 {
					wantTable = []string{"2001:db8:ec2:1::/64 src 2001:db8:ec2:1::5", "::/0"}
				}
				if got := routeStringsOf(t, e.pod, netlink.FAMILY_V6, table, podIfName); !slices.Equal(got, wantTable) {
					t.Errorf("IPv6 table %d = %q, want %q", table, got, wantTable)
				}
				main6 := routeStringsOf(t, e.pod, netlink.FAMILY_V6, unix.RT_TABLE_MAIN, podIfName)
				wantMain := "2001:db8:100::/48 " + map[bool]string{false: "via fe80:ec2::1 ", true: ""}[m.l3] + "src 2001:db8:ec2:1::5"
				if !slices.Contains(main6, wantMain) {
					t.Errorf("IPv6 main table on %s = %q, want %q in it", podIfName, main6, wantMain)
				}
				rules := map[int][]string{}
				for _, f := range []int{unix.AF_INET, unix.AF_INET6} {
					rs, err := h.RuleListFiltered(f, &netlink.Rule{Table: table}, netlink.RT_FILTER_TABLE)
					if err != nil {
						t.Fatal(err)
					}
					for _, r := range rs {
						rules[f] = append(rules[f], fmt.Sprintf("%d from %s", r.Priority, r.Src))
					}
				}
				if want := []string{"1000 from 2001:db8:ec2:1::5/128"}; !slices.Equal(rules[unix.AF_INET6], want) {
					t.Errorf("IPv6 rules = %q, want %q", rules[unix.AF_INET6], want)
				}
				wantRules4 := map[string][]string{netconf.FamilyIPv6: nil, netconf.FamilyDual: {"1000 from 10.1.0.5/32"}}[family]
				if !slices.Equal(rules[unix.AF_INET], wantRules4) {
					t.Errorf("IPv4 rules = %q, want %q", rules[unix.AF_INET], wantRules4)
				}

				// Traffic at once, one attempt each (in L3 the node would route it: not wired here).
				if !m.l3 {
					if err := dial(t, e.pod, podAddr6, e.vpc, remote6); err != nil {
						t.Errorf("connect from %s to %s right after ADD: %v", podAddr6, remote6, err)
					}
					if family == netconf.FamilyDual {
						if err := dial(t, e.pod, podAddr, e.vpc, remoteAddr); err != nil {
							t.Errorf("connect from %s to %s right after ADD: %v", podAddr, remoteAddr, err)
						}
					}
				}

				e.checkDelTwice(args, res, m.exclusive, nodeLinks)
			})
		}
	}
}

// TestCheckDetectsDriftIPv6 breaks one IPv6 thing of a dual-stack attachment at a time; CHECK must notice
// each, as it does for IPv4 (TestCheckDetectsDrift).
func TestCheckDetectsDriftIPv6(t *testing.T) {
	nettest.RequireRoot(t)
	table := RouteTableBase + card
	delRoute := func(dst string, gw net.IP, table int) func(e *env, h netlinksafe.Handle, res *current.Result) error {
		return func(e *env, h netlinksafe.Handle, res *current.Result) error {
			l, _ := h.LinkByName(podIfName)
			return h.RouteDel(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: ipNet(netip.MustParsePrefix(dst)), Gw: gw, Table: table})
		}
	}
	gw6 := net.IP(gateway6.AsSlice())
	tests := []struct {
		name   string
		break_ func(e *env, h netlinksafe.Handle, res *current.Result) error
	}{
		{"IPv6 rule deleted", func(e *env, h netlinksafe.Handle, res *current.Result) error {
			rule := Routing{Address: podAddr6, Table: table}.rule()
			return h.RuleDel(rule)
		}},
		{"IPv6 table default route deleted", delRoute("::/0", gw6, table)},
		{"IPv6 table subnet route deleted", delRoute("2001:db8:ec2:1::/64", gw6, table)},
		{"IPv6 main subnet route deleted", delRoute("2001:db8:ec2:1::/64", gw6, 0)},
		{"IPv6 extra route deleted", delRoute("2001:db8:100::/48", gw6, 0)},
		{"IPv6 address removed", func(e *env, h netlinksafe.Handle, res *current.Result) error {
			l, _ := h.LinkByName(podIfName)
			return h.AddrDel(l, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(podAddr6, 64))})
		}},
		{"accept_ra on", func(e *env, h netlinksafe.Handle, res *current.Result) error {
			return e.pod.Do(func(ns.NetNS) error {
				return os.WriteFile(sysctlPath("ipv6", podIfName, "accept_ra"), []byte("1"), 0o644)
			})
		}},
		{"agent holds another IPv6 address", func(e *env, h netlinksafe.Handle, res *current.Result) error {
			e.agent.mu.Lock()
			defer e.agent.mu.Unlock()
			k := attachment{e.containerID, podIfName}
			a := e.agent.allocs[k]
			a.IPv6 = netip.MustParseAddr("2001:db8:ec2:1::6")
			e.agent.allocs[k] = a
			return nil
		}},
		{"prevResult without the IPv6 address", func(e *env, h netlinksafe.Handle, res *current.Result) error {
			res.IPs = res.IPs[:1]
			return nil
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, true)
			args := e.args(e.conf(netconf.ModeExclusive, `"family": "dual", "mtu": 1500, "routes": [{"dst": "2001:db8:100::/48"}]`))
			res, err := e.add(args)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { e.del(args) })
			if err := e.check(args, res); err != nil {
				t.Fatalf("CHECK before the change: %v", err)
			}
			if err := tt.break_(e, nettest.Handle(t, e.pod), res); err != nil {
				t.Fatalf("break: %v", err)
			}
			if err := e.check(args, res); err == nil {
				t.Errorf("CHECK after %s passed, want an error", tt.name)
			} else {
				t.Logf("CHECK: %v", err)
			}
		})
	}
}

// TestCheckResponse: the plugin applies an agent answer only when it holds the address of each family the
// network asked for, and no other.
func TestCheckResponse(t *testing.T) {
	v4 := api.AllocateResponse{Address: podAddr, PrefixLen: 24, Gateway: gatewayIP, LinkName: eniName}
	lease := &api.IPv6Lease{Address: podAddr6, PrefixLen: 64, Gateway: gateway6, SubnetCIDR: subnet6}
	v6 := api.AllocateResponse{LinkName: eniName, IPv6: lease}
	dual := v4
	dual.IPv6 = lease
	with := func(r api.AllocateResponse, f func(*api.AllocateResponse)) api.AllocateResponse {
		if r.IPv6 != nil {
			l := *r.IPv6
			r.IPv6 = &l
		}
		f(&r)
		return r
	}
	tests := []struct {
		family  string
		resp    api.AllocateResponse
		wantErr string
	}{
		{netconf.FamilyIPv4, v4, ""},
		{netconf.FamilyIPv6, v6, ""},
		{netconf.FamilyDual, dual, ""},
		{netconf.FamilyIPv4, dual, "IPv6 address 2001:db8:ec2:1::5 for family ipv4"},
		{netconf.FamilyIPv6, dual, "IPv4 address 10.1.0.5 for family ipv6"},
		{netconf.FamilyDual, v4, "no IPv6 address for family dual"},
		{netconf.FamilyDual, v6, "want IPv4 for family dual"},
		{netconf.FamilyIPv6, with(v6, func(r *api.AllocateResponse) { r.IPv6.Address = netip.MustParseAddr("::ffff:10.1.0.5") }), "want a global IPv6 address"},
		{netconf.FamilyIPv6, with(v6, func(r *api.AllocateResponse) { r.IPv6.Address = netip.MustParseAddr("fe80::5") }), "want a global IPv6 address"},
		{netconf.FamilyIPv6, with(v6, func(r *api.AllocateResponse) { r.IPv6.PrefixLen = 129 }), "prefix length 129"},
		{netconf.FamilyIPv6, with(v6, func(r *api.AllocateResponse) { r.IPv6.Gateway = gatewayIP }), "IPv6 gateway 10.1.0.1"},
		{netconf.FamilyIPv6, with(v6, func(r *api.AllocateResponse) { r.IPv6.Gateway = netip.Addr{} }), "IPv6 gateway invalid IP"},
	}
	for _, tt := range tests {
		conf := &netconf.Config{Family: tt.family, Mode: netconf.ModeIPVlan}
		err := checkResponse(conf, tt.resp)
		switch {
		case tt.wantErr == "" && err != nil:
			t.Errorf("family %s, answer %+v: %v", tt.family, tt.resp, err)
		case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
			t.Errorf("family %s, answer %+v: error %v, want %q", tt.family, tt.resp, err, tt.wantErr)
		}
	}
}

// TestCNIGCDual: CNI GC of a live dual-stack attachment that is not valid takes back both families' rules
// and the ENI, and releases the allocation.
func TestCNIGCDual(t *testing.T) {
	e := newEnv(t, true)
	args := e.args(e.conf(netconf.ModeExclusive, `"family": "dual"`))
	if _, err := e.add(args); err != nil {
		t.Fatal(err)
	}
	if s := e.podState(); len(s.rules) != 2 {
		t.Fatalf("rules after ADD = %v, want one per family", s.rules)
	}
	gcConf := e.conf(netconf.ModeExclusive, `"family": "dual", "cni.dev/valid-attachments": []`)
	if err := e.inNode(func() error { return e.p.GC(&skel.CmdArgs{StdinData: gcConf}) }); err != nil {
		t.Fatalf("GC: %v", err)
	}
	e.requireClean([]string{"lo"})
	e.requireENIHome()
}

// TestPolicyRoutingOffDual: without policy routing a dual-stack attachment has no rule and no table of
// either family, keeps the main-table routes (the IPv6 subnet through the router), and CHECK passes.
func TestPolicyRoutingOffDual(t *testing.T) {
	e := newEnv(t, true)
	args := e.args(e.conf(netconf.ModeExclusive, `"family": "dual", "policyRouting": false`))
	res, err := e.add(args)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.del(args) })
	if s := e.podState(); len(s.rules) != 0 || len(s.tableRoutes) != 0 {
		t.Errorf("rules %v, table routes %v: want none with policyRouting false", s.rules, s.tableRoutes)
	}
	want := "2001:db8:ec2:1::/64 via fe80:ec2::1 src 2001:db8:ec2:1::5"
	if got := routeStringsOf(t, e.pod, netlink.FAMILY_V6, unix.RT_TABLE_MAIN, podIfName); !slices.Contains(got, want) {
		t.Errorf("IPv6 main table = %q, want %q in it", got, want)
	}
	if err := e.check(args, res); err != nil {
		t.Errorf("CHECK: %v", err)
	}
}
