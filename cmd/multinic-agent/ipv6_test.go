package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/multinic/multinic/internal/testing/fakeec2"
	"github.com/multinic/multinic/internal/testing/harness"
	"github.com/multinic/multinic/ipam/api"
	"github.com/multinic/multinic/netconf"
)

// familyFlags: card 1 ipv4 (the default), card 2 ipv6, card 3 dual.
var familyFlags = []string{"--family", "ipv4,2=ipv6,3=dual", "--cooldown", "1s"}

func familyReq(card int, container, ifname, pod, family string) api.AllocateRequest {
	r := podReq(card, container, ifname, pod)
	r.Family = family
	return r
}

// subnet6 is the IPv6 block of card's subnet in fake-ec2.
func subnet6(t *testing.T, st fakeec2.State, card int) netip.Prefix {
	t.Helper()
	for _, sn := range st.Subnets {
		if sn.ID == fakeec2.CardSubnetID(card) {
			return netip.MustParsePrefix(sn.IPv6CIDR)
		}
	}
	t.Fatalf("no subnet of card %d", card)
	return netip.Prefix{}
}

// onENI6 reports whether EC2 has addr in one of e's IPv6 prefixes or as one of its IPv6 addresses.
func onENI6(e fakeec2.ENIState, addr netip.Addr) bool {
	for _, p := range e.IPv6Prefixes {
		if netip.MustParsePrefix(p).Contains(addr) {
			return true
		}
	}
	for _, a := range e.IPv6Addresses {
		if a == addr.String() {
			return true
		}
	}
	return false
}

// mutatingCalls sums fake-ec2's successful mutating calls.
func mutatingCalls(st fakeec2.State) int {
	n := 0
	for _, a := range []string{"AssignPrivateIpAddresses", "UnassignPrivateIpAddresses", "AssignIpv6Addresses", "UnassignIpv6Addresses",
		"CreateNetworkInterface", "DeleteNetworkInterface", "AttachNetworkInterface", "DetachNetworkInterface"} {
		n += st.Calls[a]["ok"]
	}
	return n
}

// TestFamiliesRealAgent: the agent binary with --family serves each card its family against fake-ec2
// (the real AWS SDK): dual answers both addresses of one ENI, ipv6 the IPv6 one alone with the subnet's
// /64 and the gateway fe80:ec2::1; requests an older plugin recorded (no "family": ipv4) are refused on the
// dual card with code invalid naming "family" and still served on the ipv4 card; the IPv6 pool makes no
// EC2 call over a churn of attachments; allocations, prefixes and their positions survive a SIGKILL.
func TestFamiliesRealAgent(t *testing.T) {
	region, n := startNode(t, harness.Config{ManagedCards: []int{1, 2, 3}})
	startAgent(t, n, familyFlags)
	ctx := context.Background()
	st := region.State()
	enis := ourENIs(n, st)
	gw6 := netip.MustParseAddr("fe80:ec2::1")

	// The dual card: both addresses, one ENI, the subnet's /64, the VPC router's link-local gateway.
	dual, err := n.Client.Allocate(ctx, familyReq(3, "c-dual", "net1", "p1", api.FamilyDual))
	if err != nil {
		t.Fatal(err)
	}
	e := enis[dual.ENIID]
	if e.Card != 3 || !onENI(e, dual.Address) || dual.IPv6 == nil || !onENI6(e, dual.IPv6.Address) ||
		dual.IPv6.SubnetCIDR != subnet6(t, st, 3) || dual.IPv6.PrefixLen != 64 || dual.IPv6.Gateway != gw6 {
		t.Errorf("dual answer %+v (ipv6 %+v) on ENI %+v", dual, dual.IPv6, e)
	}
	// The ipv6 card: the IPv6 address alone; the card's ENI holds no IPv4 address beyond its primary.
	v6, err := n.Client.Allocate(ctx, familyReq(2, "c-v6", "net1", "p2", api.FamilyIPv6))
	if err != nil {
		t.Fatal(err)
	}
	e = enis[v6.ENIID]
	if v6.Address.IsValid() || v6.IPv6 == nil || !onENI6(e, v6.IPv6.Address) || e.Card != 2 || len(e.SecondaryIPs)+len(e.Prefixes) != 0 {
		t.Errorf("ipv6 answer %+v (ipv6 %+v) on ENI %+v", v6, v6.IPv6, e)
	}

	// What an older plugin sent (recorded on the wire; card 3): refused on the dual card, naming family.
	for _, rec := range recordedAllocates(t) {
		status, body := rawPost(t, n.Socket, api.PathAllocate, rec)
		var e api.Error
		_ = json.Unmarshal(body, &e)
		if status != http.StatusBadRequest || e.Code != api.CodeInvalid || !strings.Contains(e.Message, `"family" "ipv4" invalid: card 3 serves "dual"`) ||
			api.CNICode(&e) != 7 {
			t.Errorf("recorded old-plugin request %s: HTTP %d %s, want 400 invalid naming family", rec, status, body)
		}
		// The same request on the ipv4 card is served as before.
		var r map[string]any
		if err := json.Unmarshal(rec, &r); err != nil {
			t.Fatal(err)
		}
		r["card"], r["containerID"] = 1, "old-"+fmt.Sprint(r["containerID"])
		b, _ := json.Marshal(r)
		if status, body := rawPost(t, n.Socket, api.PathAllocate, b); status != http.StatusOK || bytes.Contains(body, []byte(`"ipv6"`)) {
			t.Errorf("old-plugin request on the ipv4 card: HTTP %d %s", status, body)
		}
	}

	// The operators' node status names each card's family and counts its IPv6 pool.
	ns, err := n.Client.Node(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range ns.Cards {
		want := map[int]string{1: api.FamilyIPv4, 2: api.FamilyIPv6, 3: api.FamilyDual}[c.Card]
		if c.Family != want || (c.Card != 1 && (c.IPv6 == nil || *c.IPv6 != api.IPv6Counts{Prefixes: 1, Allocated: 1})) ||
			(c.Card == 1 && c.IPv6 != nil) {
			t.Errorf("node status of card %d: family %q, ipv6 %+v; want %q with one /80 and one address", c.Card, c.Family, c.IPv6, want)
		}
	}

	// Churn on the ipv6 card: no EC2 call after the first prefix.
	before := mutatingCalls(region.State())
	const churn = 200
	seen := map[netip.Addr]bool{v6.IPv6.Address: true}
	start := time.Now()
	for i := range churn {
		c := fmt.Sprintf("churn-%d", i)
		resp, err := n.Client.Allocate(ctx, familyReq(2, c, "net1", c, api.FamilyIPv6))
		if err != nil {
			t.Fatal(err)
		}
		if seen[resp.IPv6.Address] {
			t.Fatalf("%s given twice", resp.IPv6.Address)
		}
		seen[resp.IPv6.Address] = true
		if _, err := n.Client.Release(ctx, api.ReleaseRequest{ContainerID: c, IfName: "net1"}); err != nil {
			t.Fatal(err)
		}
	}
	took := time.Since(start)
	time.Sleep(time.Second) // the card loops' rounds after the churn
	calls := mutatingCalls(region.State()) - before
	t.Logf("ipv6 card: %d attachments (allocate + release) in %s, %d mutating EC2 calls: %.4f per attachment",
		churn, took.Round(time.Millisecond), calls, float64(calls)/churn)
	if calls != 0 {
		t.Errorf("%d EC2 calls for %d IPv6 attachments, want 0", calls, churn)
	}

	// SIGKILL: allocations (with their IPv6 addresses), prefixes and positions come back.
	killAgent(t, n)
	cp := checkpoint(t, n)
	if len(cp.IPv6Prefixes) != 2 {
		t.Errorf("checkpoint IPv6 prefixes %+v, want cards 2 and 3's", cp.IPv6Prefixes)
	}
	startAgent(t, n, familyFlags)
	for _, want := range []struct {
		c    string
		addr netip.Addr
	}{{"c-dual", dual.IPv6.Address}, {"c-v6", v6.IPv6.Address}} {
		if al, ok, err := n.Allocation(want.c, "net1"); err != nil || !ok || al.IPv6 != want.addr {
			t.Errorf("after restart %s: %+v %v %v, want IPv6 %s", want.c, al, ok, err, want.addr)
		}
	}
	next, err := n.Client.Allocate(ctx, familyReq(2, "after", "net1", "p9", api.FamilyIPv6))
	if err != nil || seen[next.IPv6.Address] {
		t.Errorf("after restart: %+v %v (an address given before the restart?)", next.IPv6, err)
	}
	for _, c := range []string{"c-dual", "c-v6", "after", "old-5f2c9e0a"} {
		if _, err := n.Client.Release(ctx, api.ReleaseRequest{ContainerID: c, IfName: "net1"}); err != nil {
			t.Fatal(err)
		}
	}
	if d := poolMatchesEC2(n, checkpoint(t, n), region.State()); d != "" {
		t.Errorf("pool and EC2 differ: %s", d)
	}
}

// TestDualAddRollback: a dual ADD through the real plugin on a card whose ENI cannot get an IPv6 prefix
// (EC2 answers InsufficientCidrBlocks) fails with code 11 and EC2's code, and holds nothing: the IPv4
// address it could have had stays in the pool. Once EC2 gives the prefix, the same ADD succeeds with both
// addresses of one ENI (exclusive here: the host kernel has no ipvlan).
func TestDualAddRollback(t *testing.T) {
	region, n := startNode(t, harness.Config{ManagedCards: []int{1, 3}})
	// Card 3 as an ipv4 card first: its ENI has IPv4 addresses and no /80.
	startAgent(t, n, []string{"--cooldown", "1s"})
	if err := n.StopAgent(); err != nil {
		t.Fatal(err)
	}
	if err := region.Fake().SetFaults(fakeec2.Faults{Errors: map[string]fakeec2.ErrorFault{
		"AssignIpv6Addresses": {Rate: 1, Code: "InsufficientCidrBlocks"}}}); err != nil {
		t.Fatal(err)
	}
	startAgent(t, n, []string{"--cooldown", "1s", "--family", "3=dual", "--wait-timeout", "2s"}, 1)
	warmBefore := warmOn(t, n, 3)

	p, err := n.NewPod("dual")
	if err != nil {
		t.Fatal(err)
	}
	defer p.Remove()
	_, err = p.Attach(harness.Attachment{Card: 3, Mode: netconf.ModeIPVlan, Family: netconf.FamilyDual, IfName: "net1"})
	var cniErr *types.Error
	if !errors.As(err, &cniErr) || cniErr.Code != types.ErrTryAgainLater || !strings.Contains(err.Error(), "InsufficientCidrBlocks") {
		t.Fatalf("dual ADD without a prefix: %v, want CNI code 11 naming InsufficientCidrBlocks", err)
	}
	if al, err := n.Allocations(); err != nil || len(al) != 0 {
		t.Errorf("allocations after the failed ADD: %+v %v, want none", al, err)
	}
	if got := warmOn(t, n, 3); got != warmBefore {
		t.Errorf("card 3 warm %d after the failed ADD, %d before: the IPv4 address was not given back", got, warmBefore)
	}
	if err := p.Del(); err != nil {
		t.Errorf("DEL after the failed ADD: %v", err)
	}

	if err := region.Fake().SetFaults(fakeec2.Faults{}); err != nil {
		t.Fatal(err)
	}
	if err := n.WaitReady(3); err != nil {
		t.Fatal(err)
	}
	q := n.AddPod(t, "dual-ok", []harness.Attachment{{Card: 3, Mode: netconf.ModeExclusive, Family: netconf.FamilyDual, IfName: "net1"}})
	al, ok, err := n.Allocation(q.ContainerID, "net1")
	if err != nil || !ok || !al.Address.IsValid() || !al.IPv6.IsValid() {
		t.Fatalf("dual exclusive allocation %+v %v %v", al, ok, err)
	}
	e := ourENIs(n, region.State())[al.ENIID]
	if !onENI(e, al.Address) || !onENI6(e, al.IPv6) || q.Addr("net1") != al.Address || q.Addr6("net1") != al.IPv6 {
		t.Errorf("pod has %s and %s, agent %+v, EC2 %+v", q.Addr("net1"), q.Addr6("net1"), al, e)
	}
}

// warmOn is the card's warm IPv4 addresses as the checkpoint has them (free, not resting).
func warmOn(t *testing.T, n *harness.Node, card int) int {
	t.Helper()
	cp := checkpoint(t, n)
	held := map[netip.Addr]bool{}
	for _, al := range cp.Allocations {
		held[al.Address] = true
	}
	w := 0
	for _, a := range cp.Addresses {
		if a.Card == card && !a.Exclusive && !held[a.Address] && a.RestUntil.Before(time.Now()) {
			w++
		}
	}
	return w
}

// recordedAllocates are the allocate bodies older plugins sent (ipam/server/testdata/wire).
func recordedAllocates(t *testing.T) [][]byte {
	t.Helper()
	var out [][]byte
	for _, f := range []string{"../../ipam/server/testdata/wire/plugin-c937cf3.jsonl", "../../ipam/server/testdata/wire/plugin-ffa2baf.jsonl"} {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(bytes.NewReader(data))
		for sc.Scan() {
			var rec struct{ Method, Path, Body string }
			if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
				t.Fatal(err)
			}
			if rec.Path == api.PathAllocate && !strings.Contains(rec.Body, `"exclusive"`) {
				out = append(out, []byte(rec.Body))
			}
		}
	}
	if len(out) == 0 {
		t.Fatal("no recorded allocate requests")
	}
	return out
}

// rawPost sends body to the agent's socket as a plugin of any version would.
func rawPost(t *testing.T, socket, path string, body []byte) (int, []byte) {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", socket)
	}}}
	defer hc.CloseIdleConnections()
	resp, err := hc.Post("http://agent"+path, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(resp.Body); err != nil && !errors.Is(err, net.ErrClosed) {
		t.Fatal(err)
	}
	return resp.StatusCode, buf.Bytes()
}
