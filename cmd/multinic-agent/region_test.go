package main

import (
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/multinic/multinic/internal/testing/fakeec2"
	"github.com/multinic/multinic/internal/testing/harness"
	"github.com/multinic/multinic/internal/testing/testbin"
	"github.com/multinic/multinic/ipam/api"
	"github.com/multinic/multinic/ipam/store"
)

func TestMain(m *testing.M) { os.Exit(testbin.Main(m)) }

// allCards are the cards the agent manages unless told otherwise: every card of trn1.32xlarge but 0.
var allCards = []int{1, 2, 3, 4, 5, 6, 7}

// startNode stands up the shared harness's region with one trn1.32xlarge for the real agent binary, which
// each test starts itself (startAgent) with its flags on top of the agent's own pool and EC2 rate
// defaults. Unless cfg says otherwise, the agent manages cards 1-7 and has 60 s to be ready. The region
// (and the agent, which must then exit 0 on SIGTERM) is torn down when the test ends.
func startNode(t *testing.T, cfg harness.Config) (*harness.Region, *harness.Node) {
	t.Helper()
	cfg.NoAgents, cfg.AgentDefaults = true, true
	if cfg.ManagedCards == nil {
		cfg.ManagedCards = allCards
	}
	if cfg.ReadyTimeout == 0 {
		cfg.ReadyTimeout = 60 * time.Second
	}
	r := harness.NewRegion(t, cfg)
	return r, r.Node(0)
}

// startAgent starts the node's agent with flags and waits until it reports cards ready (every managed
// card when none are given).
func startAgent(t *testing.T, n *harness.Node, flags []string, cards ...int) {
	t.Helper()
	if err := n.StartAgentWith(flags...); err != nil {
		t.Fatal(err)
	}
	if err := n.WaitReady(cards...); err != nil {
		t.Fatal(err)
	}
}

// killAgent SIGKILLs the node's agent and reaps it.
func killAgent(t *testing.T, n *harness.Node) {
	t.Helper()
	if err := n.KillAgent(); err != nil {
		t.Fatal(err)
	}
}

// checkpoint reads the agent's checkpoint.
func checkpoint(t *testing.T, n *harness.Node) store.Checkpoint {
	t.Helper()
	cp, _, err := n.Checkpoint()
	if err != nil {
		t.Fatal(err)
	}
	return cp
}

// ourENIs returns the ENIs the node's agent created, by ID.
func ourENIs(n *harness.Node, st fakeec2.State) map[string]fakeec2.ENIState {
	out := map[string]fakeec2.ENIState{}
	for _, e := range n.ENIs(st) {
		out[e.ID] = e
	}
	return out
}

// onENI reports whether EC2 has addr as a secondary address (or inside a prefix) of e.
func onENI(e fakeec2.ENIState, addr netip.Addr) bool {
	for _, s := range e.SecondaryIPs {
		if s == addr.String() {
			return true
		}
	}
	for _, p := range e.Prefixes {
		if pp, err := netip.ParsePrefix(p); err == nil && pp.Contains(addr) {
			return true
		}
	}
	return e.PrimaryIP == addr.String()
}

// poolMatchesEC2 compares the agent's checkpoint with EC2: every secondary address EC2 has on our ENIs is in
// the agent's pool, every pool address is on its ENI in EC2, and nothing is allocated. It returns what
// differs, "" when nothing does.
func poolMatchesEC2(n *harness.Node, cp store.Checkpoint, st fakeec2.State) string {
	var diffs []string
	if len(cp.Allocations) > 0 {
		diffs = append(diffs, fmt.Sprintf("%d allocations left", len(cp.Allocations)))
	}
	enis := ourENIs(n, st)
	pool := map[netip.Addr]store.Address{}
	for _, a := range cp.Addresses {
		pool[a.Address] = a
		e, ok := enis[a.ENIID]
		if !ok || !onENI(e, a.Address) || e.Card != a.Card {
			diffs = append(diffs, fmt.Sprintf("pool address %s (card %d, %s) not on that ENI in EC2", a.Address, a.Card, a.ENIID))
		}
	}
	for _, e := range enis {
		for _, s := range e.SecondaryIPs {
			if a, ok := pool[netip.MustParseAddr(s)]; !ok || a.ENIID != e.ID {
				diffs = append(diffs, fmt.Sprintf("EC2 address %s on %s (card %d) not in the agent's pool", s, e.ID, e.Card))
			}
		}
	}
	return strings.Join(diffs, "; ")
}

func podReq(card int, container, ifname, pod string) api.AllocateRequest {
	return api.AllocateRequest{Card: card, ContainerID: container, IfName: ifname,
		PodRef: api.PodRef{PodNamespace: "default", PodName: pod, PodUID: "uid-" + pod}}
}
