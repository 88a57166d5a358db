package backend

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/multinic/multinic/ipam/api"
	"github.com/multinic/multinic/ipam/enipool"
)

// ipv6Pools manages card 1 (dual), 2 (ipv6) and 3 (ipv4); cards 1 and 2's ENIs have an IPv6 block.
func ipv6Pools() *fakePools {
	fp := newFakePools(1, 2, 3)
	fp.families = map[int]string{1: api.FamilyDual, 2: api.FamilyIPv6}
	for _, c := range []int{1, 2} {
		e := fp.enis[eniOf(c)]
		e.IPv6SubnetCIDR = netip.PrefixFrom(netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0x0e, 0xc2, 0, byte(c)}), 64)
		e.IPv6Gateway = netip.MustParseAddr("fe80:ec2::1")
		fp.enis[eniOf(c)] = e
	}
	return fp
}

func ipv6Prefix(card int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0x0e, 0xc2, 0, byte(card), 0, 1}), 80)
}

func familyReq(card int, container, ifname, pod, family string) api.AllocateRequest {
	r := req(card, container, ifname, pod)
	r.Family = family
	return r
}

// TestAllocateFamilies: each card answers its family's addresses; a request of another family (an old
// plugin's sends none: ipv4) is refused, code invalid naming "family", and takes nothing.
func TestAllocateFamilies(t *testing.T) {
	ta := newTestBackend(t, ipv6Pools(), map[int]int{1: 2, 2: 0, 3: 2}, nil)
	for _, c := range []int{1, 2} {
		if _, err := ta.alloc.AddIPv6Prefixes(c, eniOf(c), ipv6Prefix(c)); err != nil {
			t.Fatal(err)
		}
	}
	c := serve(t, ta.Backend)
	ctx := context.Background()
	gw6 := netip.MustParseAddr("fe80:ec2::1")

	dual, err := c.Allocate(ctx, familyReq(1, "c1", "net1", "p1", api.FamilyDual))
	if err != nil {
		t.Fatal(err)
	}
	if dual.Address != addrOf(1, 0) || dual.PrefixLen != 20 || dual.IPv6 == nil ||
		*dual.IPv6 != (api.IPv6Lease{Address: netip.MustParseAddr("2001:db8:ec2:1:1::1"), PrefixLen: 64, Gateway: gw6,
			SubnetCIDR: netip.MustParsePrefix("2001:db8:ec2:1::/64")}) || dual.ENIID != eniOf(1) {
		t.Errorf("dual answer %+v (ipv6 %+v)", dual, dual.IPv6)
	}
	v6, err := c.Allocate(ctx, familyReq(2, "c1", "net2", "p1", api.FamilyIPv6))
	if err != nil {
		t.Fatal(err)
	}
	if v6.Address.IsValid() || v6.PrefixLen != 0 || v6.Gateway.IsValid() || v6.SubnetCIDR.IsValid() || v6.IPv6 == nil ||
		v6.IPv6.Address != netip.MustParseAddr("2001:db8:ec2:2:1::1") || v6.LinkName != "ens2" || v6.MTU != 9001 {
		t.Errorf("ipv6 answer %+v (ipv6 %+v): want no IPv4 fields, the IPv6 lease and the ENI's link", v6, v6.IPv6)
	}
	v4, err := c.Allocate(ctx, familyReq(3, "c1", "net3", "p1", ""))
	if err != nil || v4.IPv6 != nil || !v4.Address.IsValid() {
		t.Errorf("ipv4 answer %+v %v", v4, err)
	}

	before := ta.alloc.List()
	for _, tt := range []struct {
		name string
		req  api.AllocateRequest
		msg  string
	}{
		{"old plugin on a dual card", familyReq(1, "c2", "net1", "p2", ""), `"family" "ipv4" invalid: card 1 serves "dual"`},
		{"old plugin on an ipv6 card", familyReq(2, "c2", "net2", "p2", ""), `card 2 serves "ipv6"`},
		{"ipv6 on an ipv4 card", familyReq(3, "c2", "net3", "p2", api.FamilyIPv6), `"family" "ipv6" invalid: card 3 serves "ipv4"`},
		{"ipv6 on a dual card", familyReq(1, "c2", "net1", "p2", api.FamilyIPv6), `card 1 serves "dual"`},
	} {
		_, err := c.Allocate(ctx, tt.req)
		if !errors.Is(err, api.ErrInvalid) || api.CNICode(err) != 7 || !strings.Contains(err.Error(), tt.msg) {
			t.Errorf("%s: %v, want CNI code 7 with %q", tt.name, err, tt.msg)
		}
	}
	if after := ta.alloc.List(); len(after) != len(before) {
		t.Errorf("refused requests changed the allocations: %d, then %d", len(before), len(after))
	}

	// The IPv6 gauges, for the ipv6 and dual cards only.
	srv := httptest.NewServer(ta.Handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`multinic_card_ipv6_prefixes{card="1"} 1`, `multinic_card_ipv6_allocated{card="1"} 1`,
		`multinic_card_ipv6_prefixes{card="2"} 1`, `multinic_card_ipv6_allocated{card="2"} 1`, `multinic_card_allocated{card="2",pool="shared"} 0`} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if strings.Contains(string(body), `multinic_card_ipv6_prefixes{card="3"}`) {
		t.Error("/metrics has IPv6 gauges for the ipv4 card")
	}

	// Exclusive: the whole ENI with its own IPv6 address; an ENI without one serves no ipv6 request.
	if err := ta.alloc.AddExclusiveENI(2, "eni-x-old", netip.MustParseAddr("10.2.9.1")); err != nil {
		t.Fatal(err)
	}
	if err := ta.alloc.AddExclusiveENI(2, "eni-x", netip.MustParseAddr("10.2.9.2"), netip.MustParseAddr("2001:db8:ec2:2::abc")); err != nil {
		t.Fatal(err)
	}
	ta.pools.enis["eni-x"] = enipool.ENIInfo{ID: "eni-x", Card: 2, LinkName: "ens2x", MAC: "02:00:00:00:02:99", MTU: 9001,
		SubnetCIDR: netip.MustParsePrefix("10.2.0.0/20"), Gateway: netip.MustParseAddr("10.2.0.1"),
		IPv6SubnetCIDR: netip.MustParsePrefix("2001:db8:ec2:2::/64"), IPv6Gateway: gw6}
	xr := familyReq(2, "c3", "net2", "p3", api.FamilyIPv6)
	xr.Exclusive = true
	x, err := c.Allocate(ctx, xr)
	if err != nil {
		t.Fatal(err)
	}
	if !x.Exclusive || x.ENIID != "eni-x" || x.Address.IsValid() || x.IPv6 == nil || x.IPv6.Address != netip.MustParseAddr("2001:db8:ec2:2::abc") ||
		x.IPv6.SubnetCIDR != netip.MustParsePrefix("2001:db8:ec2:2::/64") || x.LinkName != "ens2x" {
		t.Errorf("exclusive ipv6 answer %+v (ipv6 %+v): want eni-x with its own IPv6 address and no IPv4 fields", x, x.IPv6)
	}
	if al, _ := ta.alloc.Lookup("c3", "net2"); al.Address != netip.MustParseAddr("10.2.9.2") || al.IPv6 != x.IPv6.Address {
		t.Errorf("exclusive ipv6 record %+v: the ENI's primary stands for the ENI, with its IPv6 address", al)
	}

	// Status: an ipv6 card with a prefix is ready though it has no IPv4 address.
	ta.pools.lastErr[2] = errors.New("RequestLimitExceeded")
	if st, err := c.Status(ctx, 2); err != nil || !st.Ready {
		t.Errorf("status of the ipv6 card with a prefix: %+v %v", st, err)
	}
}

// TestAllocateDualWaitsForPrefix: a dual request on a card whose ENI has IPv4 addresses but no /80 yet
// waits, takes nothing meanwhile, and is served once the prefix comes; without one it gives up with the
// card's last EC2 error, and holds nothing (neither address without the other).
func TestAllocateDualWaitsForPrefix(t *testing.T) {
	fp := ipv6Pools()
	ta := newTestBackend(t, fp, map[int]int{1: 2}, func(c *Config) { c.WaitTimeout = 300 * time.Millisecond })
	c := serve(t, ta.Backend)
	ctx := context.Background()
	fp.lastErr[1] = errors.New("assign an IPv6 prefix on card 1: InsufficientCidrBlocks: The specified subnet does not have enough free cidr blocks")
	_, err := c.Allocate(ctx, familyReq(1, "c1", "net1", "p1", api.FamilyDual))
	if !errors.Is(err, api.ErrTryAgain) || !strings.Contains(err.Error(), "InsufficientCidrBlocks") {
		t.Errorf("dual without a prefix: %v, want try again with EC2's code", err)
	}
	if n := len(ta.alloc.List()); n != 0 {
		t.Errorf("%d allocations after a failed dual ADD, want 0", n)
	}
	if st := ta.alloc.Stats(1); st.Warm != 2 || st.Allocated != 0 {
		t.Errorf("IPv4 pool after a failed dual ADD %+v, want both addresses warm", st)
	}

	fp.onKick = func(card int) {
		if card == 1 {
			_, _ = ta.alloc.AddIPv6Prefixes(1, eniOf(1), ipv6Prefix(1))
		}
	}
	resp, err := c.Allocate(ctx, familyReq(1, "c1", "net1", "p1", api.FamilyDual))
	if err != nil || resp.IPv6 == nil || !resp.Address.IsValid() {
		t.Errorf("dual once the prefix came: %+v %v", resp, err)
	}
}

// TestReclaimIPv6: the agent's reclaim treats IPv6 allocations as IPv4 ones: a dual or ipv6 pod whose
// netns is gone is released after the grace period (both its addresses), a live one's never.
func TestReclaimIPv6(t *testing.T) {
	nsDir := newNetnsDir(t)
	ta := newTestBackend(t, ipv6Pools(), map[int]int{1: 2}, func(c *Config) {
		c.ReclaimGrace = time.Minute
		c.NetnsDirs = []string{string(nsDir)}
	})
	for _, c := range []int{1, 2} {
		if _, err := ta.alloc.AddIPv6Prefixes(c, eniOf(c), ipv6Prefix(c)); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	deadDual := familyReq(1, "c-dead", "net1", "dead", api.FamilyDual)
	deadDual.Netns = nsDir.mk(t, "dead")
	deadV6 := familyReq(2, "c-dead", "net2", "dead", api.FamilyIPv6)
	deadV6.Netns = deadDual.Netns
	live := familyReq(2, "c-live", "net2", "live", api.FamilyIPv6)
	live.Netns = nsDir.mk(t, "live")
	for _, r := range []api.AllocateRequest{deadDual, deadV6, live} {
		if _, err := ta.Allocate(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	nsDir.rm(t, deadDual.Netns)
	for i, s := range []struct {
		advance time.Duration
		want    int
	}{{0, 0}, {30 * time.Second, 0}, {31 * time.Second, 2}, {10 * time.Minute, 0}} {
		ta.clock.Step(s.advance)
		if n, err := ta.ReclaimGonePods(ctx); err != nil || n != s.want {
			t.Fatalf("pass %d: released %d (%v), want %d", i, n, err, s.want)
		}
	}
	if left := ta.alloc.List(); len(left) != 1 || left[0].ContainerID != "c-live" {
		t.Errorf("left %+v, want c-live's alone", left)
	}
	if st1, st2 := ta.alloc.Stats(1), ta.alloc.Stats(2); st1.Allocated != 0 || st1.IPv6.Allocated != 0 || st2.IPv6.Allocated != 1 {
		t.Errorf("stats card 1 %+v card 2 %+v", st1, st2)
	}
}
