package backend

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/multinic/multinic/ipam/allocator"
	"github.com/multinic/multinic/ipam/api"
	"github.com/multinic/multinic/ipam/enipool"
	"github.com/multinic/multinic/ipam/server"
	"github.com/multinic/multinic/ipam/store"
)

// serve runs the agent behind the real socket server and returns a client for it.
func serve(t *testing.T, a *Backend) *api.Client {
	t.Helper()
	dir, err := os.MkdirTemp("", "mnagent")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	l, err := server.Listen(filepath.Join(dir, "agent.sock"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- server.Serve(ctx, l, a, nil) }()
	c := api.NewClient(filepath.Join(dir, "agent.sock"), 0)
	t.Cleanup(func() {
		c.Close()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return c
}

func req(card int, container, ifname, pod string) api.AllocateRequest {
	return api.AllocateRequest{Card: card, ContainerID: container, IfName: ifname,
		PodRef: api.PodRef{PodNamespace: "default", PodName: pod, PodUID: "uid-" + pod}}
}

func TestAllocateFillsResponseAndKicks(t *testing.T) {
	ta := newTestBackend(t, newFakePools(1, 2), map[int]int{1: 2, 2: 2}, nil)
	c := serve(t, ta.Backend)
	resp, err := c.Allocate(context.Background(), req(2, "c1", "net1", "p1"))
	if err != nil {
		t.Fatal(err)
	}
	want := api.AllocateResponse{
		Address: addrOf(2, 0), PrefixLen: 20, Gateway: netip.MustParseAddr("10.2.0.1"),
		SubnetCIDR: netip.MustParsePrefix("10.2.0.0/20"), ENIID: "eni-02", LinkName: "ens2",
		MAC: "02:00:00:00:00:02", MTU: 9001,
	}
	if resp != want {
		t.Errorf("response\n got %+v\nwant %+v", resp, want)
	}
	if n := ta.pools.kicked(2); n != 1 {
		t.Errorf("card 2 kicked %d times after a warm allocation, want 1 (refill in the background)", n)
	}
	// Every allocation line names card, container, ifname and pod.
	var line string
	for _, l := range ta.logs.Lines() {
		if strings.Contains(l, "msg=allocated") {
			line = l
		}
	}
	for _, kv := range []string{"card=2", "container=c1", "ifname=net1", `pod="default/p1 (uid uid-p1)"`, "address=10.2.0.10"} {
		if !strings.Contains(line, kv) {
			t.Errorf("allocation log line %q lacks %s", line, kv)
		}
	}
}

func TestAllocateRules(t *testing.T) {
	ta := newTestBackend(t, newFakePools(1, 2), map[int]int{1: 4, 2: 4}, nil)
	c := serve(t, ta.Backend)
	ctx := context.Background()
	first, err := c.Allocate(ctx, req(1, "c1", "net1", "p1"))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		req     api.AllocateRequest
		wantErr error  // nil: success
		wantMsg string // in the error
		same    bool   // the answer is first's
	}{
		{name: "same pair again is idempotent", req: req(1, "c1", "net1", "p1"), same: true},
		{name: "same pod same card other ifname", req: req(1, "c1", "net2", "p1"), wantErr: api.ErrCardTaken, wantMsg: "one address per pod per card"},
		{name: "same pod same card other sandbox", req: req(1, "c9", "net1", "p1"), wantErr: api.ErrCardTaken},
		{name: "same pair other card", req: req(2, "c1", "net1", "p1"), wantErr: api.ErrInterfaceTaken},
		{name: "same pod other card", req: req(2, "c1", "net2", "p1")},
		{name: "not managed", req: req(3, "c2", "net1", "p2"), wantErr: api.ErrNotManaged, wantMsg: "card 3"},
		{name: "card 0 not managed", req: req(0, "c2", "net1", "p2"), wantErr: api.ErrNotManaged},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := c.Allocate(ctx, tt.req)
			switch {
			case tt.wantErr == nil && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tt.wantErr != nil && !errors.Is(err, tt.wantErr):
				t.Fatalf("error %v, want %v", err, tt.wantErr)
			case tt.wantErr != nil && !strings.Contains(err.Error(), tt.wantMsg):
				t.Fatalf("error %q lacks %q", err, tt.wantMsg)
			case tt.same && resp != first:
				t.Fatalf("answer %+v, want the first one %+v", resp, first)
			}
		})
	}
	if n := len(ta.alloc.List()); n != 2 {
		t.Errorf("%d allocations, want 2 (c1/net1 on card 1, c1/net2 on card 2)", n)
	}
}

func TestAllocateWaitsForRefill(t *testing.T) {
	fp := newFakePools(1)
	var ta *testBackend
	var once sync.Once
	// The first Kick on an empty pool is answered by a refill 200ms later, as the manager would.
	fp.onKick = func(card int) {
		once.Do(func() {
			go func() {
				time.Sleep(200 * time.Millisecond)
				if _, err := ta.alloc.AddAddresses(card, eniOf(card), addrOf(card, 0), addrOf(card, 1)); err != nil {
					t.Error(err)
				}
			}()
		})
	}
	ta = newTestBackend(t, fp, nil, nil)
	c := serve(t, ta.Backend)
	start := time.Now()
	resp, err := c.Allocate(context.Background(), req(1, "c1", "net1", "p1"))
	if err != nil {
		t.Fatalf("allocate on an empty pool refilled during the wait: %v", err)
	}
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Errorf("answered in %s, before the refill", d)
	}
	if resp.Address != addrOf(1, 0) {
		t.Errorf("address %s, want %s", resp.Address, addrOf(1, 0))
	}
	if n := fp.kicked(1); n < 2 {
		t.Errorf("card kicked %d times, want at least 2 (on the empty pool and after the allocation)", n)
	}
}

func TestAllocateTimesOutWithEC2Reason(t *testing.T) {
	fp := newFakePools(1)
	fp.lastErr[1] = errors.New("InsufficientFreeAddressesInSubnet: The specified subnet subnet-0abc does not have enough free addresses")
	ta := newTestBackend(t, fp, nil, func(c *Config) { c.WaitTimeout = 300 * time.Millisecond })
	c := serve(t, ta.Backend)
	start := time.Now()
	_, err := c.Allocate(context.Background(), req(1, "c1", "net1", "p1"))
	d := time.Since(start)
	if !errors.Is(err, api.ErrTryAgain) {
		t.Fatalf("error %v, want try again", err)
	}
	for _, s := range []string{"InsufficientFreeAddressesInSubnet", "subnet-0abc", "no free address on card 1"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q lacks %q", err, s)
		}
	}
	if d < 300*time.Millisecond || d > 3*time.Second {
		t.Errorf("answered after %s, want about the 300ms wait timeout", d)
	}
	if fp.kicked(1) == 0 {
		t.Error("empty pool never kicked")
	}
	if len(ta.alloc.List()) != 0 {
		t.Error("a failed allocation left an allocation behind")
	}
	// The request's own deadline wins over a longer wait timeout.
	ta2 := newTestBackend(t, newFakePools(1), nil, func(c *Config) { c.WaitTimeout = time.Minute })
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start = time.Now()
	if _, err := ta2.Allocate(ctx, req(1, "c1", "net1", "p1")); err == nil {
		t.Fatal("allocate on an empty pool succeeded")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("waited %s beyond a 200ms request deadline", d)
	}
}

func TestAllocateExclusive(t *testing.T) {
	fp := newFakePools(1)
	var ta *testBackend
	// EnsureExclusive creates the ENI and puts it into the exclusive pool, as the manager would.
	fp.ensure = func(_ context.Context, card int) error {
		fp.mu.Lock()
		fp.enis["eni-x1"] = enipool.ENIInfo{ID: "eni-x1", Card: card, LinkName: "ensx1", MAC: "02:00:00:00:01:01", MTU: 9001,
			SubnetCIDR: netip.MustParsePrefix("10.1.0.0/20"), Gateway: netip.MustParseAddr("10.1.0.1")}
		fp.mu.Unlock()
		return ta.alloc.AddExclusiveENI(card, "eni-x1", netip.MustParseAddr("10.1.0.200"))
	}
	ta = newTestBackend(t, fp, map[int]int{1: 2}, nil)
	c := serve(t, ta.Backend)
	r := req(1, "c1", "net1", "p1")
	r.Exclusive = true
	resp, err := c.Allocate(context.Background(), r)
	if err != nil {
		t.Fatal(err)
	}
	if !resp.Exclusive || resp.ENIID != "eni-x1" || resp.Address != netip.MustParseAddr("10.1.0.200") || resp.LinkName != "ensx1" {
		t.Errorf("exclusive answer %+v, want the whole ENI eni-x1 (10.1.0.200, ensx1)", resp)
	}
	if got := fp.exclusive; len(got) != 1 || got[0] != 1 {
		t.Errorf("EnsureExclusive calls %v, want [1]", got)
	}
	// Idempotent: the same pair again neither calls EnsureExclusive nor takes another ENI.
	if again, err := c.Allocate(context.Background(), r); err != nil || again != resp {
		t.Errorf("repeat: %+v, %v; want %+v", again, err, resp)
	}
	if n := len(fp.exclusive); n != 1 {
		t.Errorf("EnsureExclusive called %d times, want 1", n)
	}

	// EnsureExclusive failing (EC2 refusing) is a try-again carrying EC2's reason, and takes nothing.
	fp.ensure = func(context.Context, int) error {
		return errors.New("create ENI on card 1: AttachmentLimitExceeded: Interface count 3 exceeds the limit")
	}
	r2 := req(1, "c2", "net1", "p2")
	r2.Exclusive = true
	_, err = c.Allocate(context.Background(), r2)
	if !errors.Is(err, api.ErrTryAgain) || !strings.Contains(err.Error(), "AttachmentLimitExceeded") {
		t.Errorf("error %v, want try again with AttachmentLimitExceeded", err)
	}
	if n := len(ta.alloc.List()); n != 1 {
		t.Errorf("%d allocations, want 1", n)
	}
}

func TestAllocateUnknownENIRollsBack(t *testing.T) {
	fp := newFakePools(1)
	delete(fp.enis, eniOf(1))
	ta := newTestBackend(t, fp, map[int]int{1: 1}, nil)
	_, err := ta.Allocate(context.Background(), req(1, "c1", "net1", "p1"))
	if err == nil || !strings.Contains(err.Error(), "does not know") {
		t.Fatalf("error %v, want the unknown ENI named", err)
	}
	if n := len(ta.alloc.List()); n != 0 {
		t.Errorf("%d allocations left after a failed allocate, want 0", n)
	}
}

func TestConcurrentAllocations(t *testing.T) {
	cards := []int{1, 2, 3, 4, 5, 6, 7}
	warm := map[int]int{}
	for _, c := range cards {
		warm[c] = 20
	}
	ta := newTestBackend(t, newFakePools(cards...), warm, nil)
	c := serve(t, ta.Backend)
	const pods = 16
	var wg sync.WaitGroup
	var mu sync.Mutex
	got := map[netip.Addr]string{}
	for p := range pods {
		for _, card := range cards {
			// Every pod asks twice for each card, under two interface names: one must be refused.
			for _, ifn := range []string{"net1", "net2"} {
				wg.Go(func() {
					name := "p" + string(rune('a'+p))
					resp, err := c.Allocate(context.Background(), req(card, "c-"+name, ifn+"-"+string(rune('0'+card)), name))
					if errors.Is(err, api.ErrCardTaken) {
						return
					}
					if err != nil {
						t.Error(err)
						return
					}
					mu.Lock()
					defer mu.Unlock()
					if prev, dup := got[resp.Address]; dup {
						t.Errorf("address %s given to %s and %s", resp.Address, prev, name)
					}
					got[resp.Address] = name
				})
			}
		}
	}
	wg.Wait()
	if len(got) != pods*len(cards) {
		t.Errorf("%d addresses granted, want %d (one per pod per card)", len(got), pods*len(cards))
	}
}

func TestReleaseAndList(t *testing.T) {
	ta := newTestBackend(t, newFakePools(1), map[int]int{1: 2}, nil)
	c := serve(t, ta.Backend)
	ctx := context.Background()
	r := req(1, "c1", "net1", "p1")
	r.Netns = "/var/run/netns/cni-1"
	if _, err := c.Allocate(ctx, r); err != nil {
		t.Fatal(err)
	}
	list, err := c.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].Netns != r.Netns || list[0].PodName != "p1" || list[0].Address != addrOf(1, 0) {
		t.Fatalf("list %+v, want the one allocation with its netns", list)
	}
	for i, want := range []bool{true, false} {
		resp, err := c.Release(ctx, api.ReleaseRequest{ContainerID: "c1", IfName: "net1"})
		if err != nil || resp.Released != want {
			t.Errorf("release %d: %+v, %v; want released=%v", i, resp, err, want)
		}
	}
	if list, _ := c.List(ctx); len(list) != 0 {
		t.Errorf("list after release: %+v", list)
	}
}

// TestNetnsSurvivesRestart: the netns of an allocation is in the allocator's checkpoint; a repeated ADD
// with another netns does not replace it.
func TestNetnsSurvivesRestart(t *testing.T) {
	ta := newTestBackend(t, newFakePools(1), map[int]int{1: 2}, nil)
	r := req(1, "c1", "net1", "p1")
	r.Netns = "/var/run/netns/cni-1"
	if _, err := ta.Allocate(context.Background(), r); err != nil {
		t.Fatal(err)
	}
	r2 := r
	r2.Netns = "/var/run/netns/other" // a confused runtime
	if _, err := ta.Allocate(context.Background(), r2); err != nil {
		t.Fatal(err)
	}
	list, _ := ta.restart(t).List(context.Background())
	if len(list) != 1 || list[0].Netns != r.Netns {
		t.Errorf("after restart: %+v, want netns %s", list, r.Netns)
	}
}

func TestStatus(t *testing.T) {
	fp := newFakePools(1, 2)
	ta := newTestBackend(t, fp, map[int]int{1: 1}, nil)
	c := serve(t, ta.Backend)
	ctx := context.Background()
	fp.lastErr[2] = errors.New("PrivateIpAddressLimitExceeded: Number of private addresses will exceed limit.")
	tests := []struct {
		name   string
		card   int
		ready  bool
		reason string
		before func()
	}{
		{name: "warm card", card: 1, ready: true},
		{name: "empty card with EC2 error", card: 2, reason: "PrivateIpAddressLimitExceeded"},
		{name: "unmanaged card", card: 5, reason: "not managed"},
		{name: "manager not ready", card: 1, reason: "not ready", before: func() { fp.mu.Lock(); fp.ready = false; fp.mu.Unlock() }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.before != nil {
				tt.before()
			}
			st, err := c.Status(ctx, tt.card)
			if err != nil {
				t.Fatal(err)
			}
			if st.Ready != tt.ready || !strings.Contains(st.Reason, tt.reason) || st.Card != tt.card {
				t.Errorf("status %+v, want ready=%v reason containing %q", st, tt.ready, tt.reason)
			}
		})
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	al, _ := allocator.New(store.NewMemory())
	for _, cfg := range []Config{
		{Pools: newFakePools()},
		{Allocator: al},
		{Allocator: al, Pools: newFakePools(), WaitTimeout: -1},
		{Allocator: al, Pools: newFakePools(), ReclaimGrace: -1},
		{Allocator: al, Pools: newFakePools(), ReclaimInterval: -1},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v) accepted", cfg)
		}
	}
}

// TestAllocateLimit: at the allocator's cap a new allocation is refused with the limit code, an exclusive one
// before any ENI is ensured for it; the same pair again still answers.
func TestAllocateLimit(t *testing.T) {
	al, err := allocator.New(store.NewMemory(), allocator.WithCooldown(0), allocator.WithMaxAllocations(1))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := al.AddAddresses(1, eniOf(1), addrOf(1, 0), addrOf(1, 1)); err != nil {
		t.Fatal(err)
	}
	fp := newFakePools(1)
	a, err := New(Config{Allocator: al, Pools: fp, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	c := serve(t, a)
	ctx := context.Background()
	if _, err := c.Allocate(ctx, req(1, "c1", "net1", "p1")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Allocate(ctx, req(1, "c2", "net1", "p2")); !errors.Is(err, api.ErrLimit) {
		t.Errorf("second allocation = %v, want ErrLimit", err)
	}
	ex := req(1, "c3", "net1", "p3")
	ex.Exclusive = true
	if _, err := c.Allocate(ctx, ex); !errors.Is(err, api.ErrLimit) {
		t.Errorf("exclusive allocation at the cap = %v, want ErrLimit", err)
	}
	if n := len(fp.exclusive); n != 0 {
		t.Errorf("EnsureExclusive called %d times at the cap, want 0", n)
	}
	if _, err := c.Allocate(ctx, req(1, "c1", "net1", "p1")); err != nil {
		t.Errorf("the same pair again at the cap: %v", err)
	}
	if got := gaugeValue(t, a, "multinic_allocations_total", map[string]string{"result": "limit"}); got != 2 {
		t.Errorf("multinic_allocations_total{result=limit} = %v, want 2", got)
	}
}
