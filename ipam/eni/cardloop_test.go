package eni

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/multinic/multinic/internal/testing/fakeec2"
	"github.com/multinic/multinic/ipam/api"
	"github.com/multinic/multinic/ipam/eni/awsec2"
	"github.com/multinic/multinic/ipam/eni/plan"
	"github.com/multinic/multinic/ipam/enipool"
)

func TestRefillAndShrink(t *testing.T) {
	const (
		cooldown = 400 * time.Millisecond
		delay    = 300 * time.Millisecond
		pods     = 20
	)
	for _, tc := range []struct {
		name   string
		prefix bool
	}{
		{"addresses", false},
		{"prefixes", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, envOpts{cooldown: cooldown})
			cfg := e.fastConfig(8)
			cfg.ManagedCards = []int{1}
			cfg.WarmTarget, cfg.MinFree, cfg.MaxBatch = ptr(6), ptr(2), 4
			cfg.PrefixMode = tc.prefix
			cfg.SurplusDelay = delay
			a := e.alloc
			m := e.start(cfg, a)
			waitReady(t, m, 10*time.Second)
			want := 6
			if tc.prefix {
				want = plan.PrefixSize
			}
			eventually(t, 5*time.Second, "warm target", func() bool { return a.Stats(1).Warm == want })
			mine := e.ours()
			if len(mine) != 1 {
				t.Fatalf("%d ENIs", len(mine))
			}
			for _, x := range mine {
				if tc.prefix && (len(x.Prefixes) != 1 || len(x.SecondaryIPs) != 0) {
					t.Errorf("prefix mode: ENI has prefixes %v secondaries %v", x.Prefixes, x.SecondaryIPs)
				}
				if !tc.prefix && len(x.SecondaryIPs) != 6 {
					t.Errorf("ENI has %d secondaries, want 6", len(x.SecondaryIPs))
				}
			}
			checkNoLeak(t, e, a, 1)

			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			var als []api.Allocation
			for p := range pods {
				al, err := allocWait(ctx, m, a, podReq(p, 1))
				if err != nil {
					t.Fatal(err)
				}
				als = append(als, al)
			}
			eventually(t, 5*time.Second, "refill after allocations", func() bool {
				return need(m.alloc, 1, 6, 2) == 0
			})
			grown := len(e.ec2Addresses(1))
			if grown < pods+6 {
				t.Errorf("EC2 holds %d addresses after %d allocations, want >= %d", grown, pods, pods+6)
			}
			if tc.prefix && grown%plan.PrefixSize != 0 {
				t.Errorf("prefix mode: %d addresses, not whole /28s", grown)
			}
			checkNoLeak(t, e, a, 1)

			released := time.Now()
			for _, al := range als {
				if _, _, err := a.Release(al.ContainerID, al.IfName); err != nil {
					t.Fatal(err)
				}
			}
			m.Kick(1)
			// Resting addresses are not returned to EC2: nothing shrinks before cooldown + delay.
			time.Sleep(cooldown - 100*time.Millisecond)
			if n := len(e.ec2Addresses(1)); n != grown {
				t.Errorf("EC2 holds %d addresses during cooldown, want %d", n, grown)
			}
			shrunk := want
			if tc.prefix {
				shrunk = plan.PrefixSize // one /28 is >= the target of 6
			}
			eventually(t, 5*time.Second, "shrink", func() bool { return len(e.ec2Addresses(1)) == shrunk })
			if took := time.Since(released); took < cooldown+delay-50*time.Millisecond {
				t.Errorf("shrunk %s after release, before cooldown %s + delay %s", took, cooldown, delay)
			}
			eventually(t, 2*time.Second, "pool matches", func() bool { return a.Stats(1).Capacity == shrunk })
			checkNoLeak(t, e, a, 1)
			// The fake changes its state before the manager has read the answer: wait for the count.
			eventually(t, 2*time.Second, "unassign counted", func() bool {
				return m.Stats().EC2.Calls["UnassignPrivateIpAddresses"]["ok"] > 0
			})
			t.Logf("calls: %v", m.Stats().EC2.Calls)
		})
	}
}

func TestSecondENIWhenFull(t *testing.T) {
	e := newEnv(t, envOpts{typ: "m5.large", subnets: []fakeec2.SubnetConfig{{ID: fakeec2.CardSubnetID(0), CIDR: "10.0.0.0/20"}}})
	cfg := e.fastConfig(1)
	cfg.AllCards = true
	cfg.WarmTarget, cfg.MinFree = ptr(4), ptr(1)
	m := e.start(cfg, e.alloc)
	waitReady(t, m, 10*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// m5.large: 10 IPv4 per ENI (9 secondaries), 3 ENIs: the primary and two of ours.
	for p := range 12 {
		if _, err := allocWait(ctx, m, e.alloc, podReq(p, 0)); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 5*time.Second, "second ENI", func() bool { return len(e.ours()) == 2 })
	devs := map[int]int{}
	for _, x := range e.ours() {
		devs[x.Device] = len(x.SecondaryIPs)
	}
	if devs[1] != 9 || devs[2] == 0 {
		t.Errorf("devices (secondaries) %v, want device 1 full (9) and device 2 in use", devs)
	}
	// Fill the card: 18 addresses on two ENIs, then it is full.
	for p := 12; p < 18; p++ {
		if _, err := allocWait(ctx, m, e.alloc, podReq(p, 0)); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 5*time.Second, "card full error", func() bool {
		err := m.LastError(0)
		return err != nil && errors.Is(err, enipool.ErrCardFull)
	})
	t.Logf("last error: %v", m.LastError(0))
	wctx, wcancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer wcancel()
	if _, err := allocWait(wctx, m, e.alloc, podReq(99, 0)); err == nil || !strings.Contains(err.Error(), "card full") {
		t.Errorf("19th allocation: %v, want a timeout naming the full card", err)
	}
	checkNoLeak(t, e, e.alloc, 0)
}

func TestThrottledBurst(t *testing.T) {
	const allocs, cards = 200, 8
	e := newEnv(t, envOpts{faults: fakeec2.Faults{Throttle: true}})
	cfg := e.fastConfig(cards)
	cfg.AllCards = true
	cfg.WarmTarget, cfg.MinFree = ptr(DefaultWarmTarget), ptr(DefaultMinFree)
	cfg.EC2Rate, cfg.EC2Burst = DefaultEC2Rate, DefaultEC2Burst
	cfg.BackoffBase, cfg.BackoffMax = DefaultBackoffBase, DefaultBackoffMax
	t0 := time.Now()
	m := e.start(cfg, e.alloc)
	waitReady(t, m, 30*time.Second)
	readyIn := time.Since(t0)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	var failed atomic.Int32
	var mu sync.Mutex
	seen := map[netip.Addr]bool{}
	t1 := time.Now()
	for i := range allocs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			al, err := allocWait(ctx, m, e.alloc, podReq(i, i%cards))
			if err != nil {
				failed.Add(1)
				t.Errorf("allocation %d: %v", i, err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if seen[al.Address] {
				t.Errorf("address %s given twice", al.Address)
			}
			seen[al.Address] = true
		}()
	}
	wg.Wait()
	burst := time.Since(t1)
	st := m.Stats()
	fakeThrottles := 0
	for _, res := range e.srv.State().Calls {
		fakeThrottles += res["RequestLimitExceeded"]
	}
	t.Logf("ready in %s; %d allocations over %d cards in %s, %d failed; throttles: manager saw %d, fake sent %d; retries %d; calls %v",
		readyIn.Round(time.Millisecond), allocs, cards, burst.Round(time.Millisecond), failed.Load(), st.EC2.Throttles,
		fakeThrottles, st.EC2.Retries, st.EC2.Calls)
	if failed.Load() != 0 {
		t.Errorf("%d allocations failed", failed.Load())
	}
	if st.EC2.Throttles != fakeThrottles {
		t.Errorf("manager counted %d throttles, fake sent %d", st.EC2.Throttles, fakeThrottles)
	}
	for k := range cards {
		checkNoLeak(t, e, e.alloc, k)
	}
}

// TestWaitersAskedFor: allocations blocked on an empty pool count in the card's demand, so a refill asks
// for all of them at once, in calls of at most MaxBatch addresses (by default a whole ENI's worth: under
// EC2 throttling each extra call is seconds a pod waits).
func TestWaitersAskedFor(t *testing.T) {
	const waiters = 30
	for _, maxBatch := range []int{DefaultMaxBatch, 8} {
		t.Run(fmt.Sprintf("max batch %d", maxBatch), func(t *testing.T) {
			e := newEnv(t, envOpts{})
			cfg := e.cardOneConfig()
			cfg.WarmTarget, cfg.MinFree, cfg.MaxBatch = ptr(0), ptr(0), maxBatch
			cfg.RefillInterval = time.Hour // refill on Kick only, once every waiter is counted
			m := e.start(cfg, e.alloc)
			waitReady(t, m, 10*time.Second)
			assigns := func() int { return e.srv.State().Calls["AssignPrivateIpAddresses"]["ok"] }
			before := assigns()

			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			errs := make(chan error, waiters)
			for i := range waiters {
				go func() {
					if err := e.alloc.WaitForAddress(ctx, api.AllocateRequest{Card: 1}); err != nil {
						errs <- err
						return
					}
					_, err := allocWait(ctx, m, e.alloc, podReq(i, 1))
					errs <- err
				}()
			}
			eventually(t, 5*time.Second, "every waiter counted", func() bool {
				return e.alloc.Stats(1).Waiting == waiters
			})
			if d := need(e.alloc, 1, 0, 0); d != waiters {
				t.Errorf("need %d with %d waiting and nothing warm: want %d", d, waiters, waiters)
			}
			m.Kick(1)
			for range waiters {
				if err := <-errs; err != nil {
					t.Fatal(err)
				}
			}
			// With a smaller cap the count is a floor: a waiter between wake-up and its retry is briefly
			// not counted, so a refill may ask for fewer than are still to come.
			n := assigns() - before
			switch floor := (waiters + maxBatch - 1) / maxBatch; {
			case maxBatch >= waiters && n != 1:
				t.Errorf("%d AssignPrivateIpAddresses for %d waiting allocations, want 1", n, waiters)
			case n < floor:
				t.Errorf("%d AssignPrivateIpAddresses for %d addresses at most %d each", n, waiters, maxBatch)
			}
			if got := len(e.ec2Addresses(1)); got != waiters {
				t.Errorf("EC2 holds %d secondary addresses on card 1, want %d (one per waiter)", got, waiters)
			}
			if got := e.alloc.Stats(1).Allocated; got != waiters {
				t.Errorf("%d allocated, want %d", got, waiters)
			}
			checkNoLeak(t, e, e.alloc, 1)
		})
	}
}

// TestRetryOnThrottle squeezes EC2's mutate bucket below what the manager's limiter allows, so the
// retries with backoff must carry the refill through RequestLimitExceeded.
func TestRetryOnThrottle(t *testing.T) {
	e := newEnv(t, envOpts{faults: fakeec2.Faults{Rates: map[string]fakeec2.Rate{
		fakeec2.ClassMutate: {Burst: 3, PerSecond: 20}}}})
	cfg := e.fastConfig(8)
	// MinFree at the target: every refill is one something waits for, retried through the throttle (a
	// top-up above MinFree would give way to it instead: TestDeleteOnTerminationLater, plan's busy cases).
	cfg.WarmTarget, cfg.MinFree, cfg.MaxBatch = ptr(20), ptr(20), 2
	m := e.start(cfg, e.alloc)
	waitReady(t, m, 20*time.Second)
	// A step that ran out of retries sets the card's LastError until the next step ends well, which
	// may be just after its pool reached the target: wait for both.
	eventually(t, 20*time.Second, "warm pools, no card failing", func() bool {
		for k := 1; k < 8; k++ {
			if e.alloc.Stats(k).Warm < 20 || m.LastError(k) != nil {
				return false
			}
		}
		return true
	})
	st := m.Stats().EC2
	t.Logf("throttles %d retries %d calls %v", st.Throttles, st.Retries, st.Calls)
	if st.Throttles == 0 || st.Retries == 0 {
		t.Errorf("throttles %d retries %d: the test did not throttle", st.Throttles, st.Retries)
	}
	for k := 1; k < 8; k++ {
		if err := m.LastError(k); err != nil {
			t.Errorf("card %d: %v", k, err)
		}
		checkNoLeak(t, e, e.alloc, k)
	}
}

func TestSubnetExhaustion(t *testing.T) {
	for _, tc := range []struct {
		name            string
		warm, batch     int
		wantPool        int
		wantErrContains string
		// wantFree: what the subnet has left (EC2 assigns all or nothing; the manager asks for half
		// of a batch the subnet refused, down to one address).
		wantFree int
	}{
		// The ENI takes 1 of the /28's 11 usable addresses, the initial batch the other 10; the
		// refill for the last 6 of the target fails at 6, 3 and 1.
		{"refill fails", 16, 10, 10, "assign 1 addresses on card 1", 0},
		// The initial batch cannot fit: the ENI is created bare, and the halving refills take the
		// subnet's other 10 addresses (15 refused, 7, then 3 of the remaining 23 refused, ...).
		{"initial batch too big", 30, 30, 10, "assign 1 addresses on card 1", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const tiny = "subnet-0tiny0000000001"
			e := newEnv(t, envOpts{subnets: []fakeec2.SubnetConfig{
				{ID: fakeec2.CardSubnetID(0), CIDR: "10.0.0.0/20"}, {ID: tiny, CIDR: "10.0.16.0/28"}}})
			cfg := e.fastConfig(0)
			cfg.ManagedCards = []int{1}
			cfg.Cards = map[int]CardConfig{1: {SubnetID: tiny}}
			cfg.WarmTarget, cfg.MaxBatch = ptr(tc.warm), tc.batch
			m := e.start(cfg, e.alloc)
			waitReady(t, m, 10*time.Second)
			eventually(t, 5*time.Second, "last error", func() bool { return m.LastError(1) != nil })
			err := m.LastError(1)
			var ae *awsec2.APIError
			if !errors.As(err, &ae) || ae.Code != "InsufficientFreeAddressesInSubnet" {
				t.Errorf("last error %v: want EC2's InsufficientFreeAddressesInSubnet", err)
			}
			for _, want := range []string{tc.wantErrContains, tiny, "InsufficientFreeAddressesInSubnet"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("last error %q does not name %q", err, want)
				}
			}
			t.Logf("last error: %v", err)
			if got := e.alloc.Stats(1).Capacity; got != tc.wantPool {
				t.Errorf("pool %d, want %d", got, tc.wantPool)
			}
			if sn, _ := e.srv.State().Subnet(tiny); sn.Available != tc.wantFree {
				t.Errorf("subnet has %d free addresses", sn.Available)
			}
			for _, x := range e.srv.State().ENIs {
				if x.Status == "available" {
					t.Errorf("leaked detached ENI %s", x.ID)
				}
			}
			checkNoLeak(t, e, e.alloc, 1)
		})
	}
}

// TestColdStartCalls counts the EC2 calls EC2 served (through the real SDK client) from a trn1.32xlarge agent's
// start until one pod has all 7 managed cards, and then until the agent's idle work is done, while the
// account is busy: a mutating bucket of 1 token refilled at 10/s throttles the node's own cold start, as the
// other nodes of a scale-up would. By default only a CreateNetworkInterface (with the warm target's addresses)
// and an AttachNetworkInterface per card come before the pod is served; DeleteOnTermination and the top-up of
// the address the pod took come once EC2 is no longer busy. Eager, with the emulated AWS VPC CNI policy of
// figures 3 and 6, sets DeleteOnTermination before each card is ready. Both end with the same 21 mutating
// calls: what differs is how many a scale-up's last pod waits behind.
func TestColdStartCalls(t *testing.T) {
	cards := []int{1, 2, 3, 4, 5, 6, 7}
	const (
		create, attach, modify, assign = "CreateNetworkInterface", "AttachNetworkInterface", "ModifyNetworkInterfaceAttribute", "AssignPrivateIpAddresses"
	)
	for _, tc := range []struct {
		name                    string
		eager                   bool
		warm, minFree, maxBatch int
		wantPath, wantSettled   map[string]int
	}{
		{"multinic defaults", false, DefaultWarmTarget, DefaultMinFree, DefaultMaxBatch,
			map[string]int{create: 7, attach: 7, modify: 0, assign: 0}, map[string]int{create: 7, attach: 7, modify: 7, assign: 7}},
		{"eager, emulated VPC CNI policy", true, 1, 0, 1,
			map[string]int{create: 7, attach: 7, modify: 7}, map[string]int{create: 7, attach: 7, modify: 7, assign: 7}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, envOpts{faults: fakeec2.Faults{Rates: map[string]fakeec2.Rate{fakeec2.ClassMutate: {Burst: 1, PerSecond: 10}}}})
			cfg := e.fastConfig(8)
			cfg.ManagedCards = cards
			cfg.WarmTarget, cfg.MinFree, cfg.MaxBatch, cfg.Eager = ptr(tc.warm), ptr(tc.minFree), tc.maxBatch, tc.eager
			cfg.ErrorBackoffMax = 10 * time.Second // EC2 busy for 10 s after the start and after a throttle: the path fits in it
			// Enough attempts that no call runs out of them behind the 10/s bucket (an eager DeleteOnTermination
			// that did would be left to the card loop, after the card is ready): where the calls fall is measured.
			cfg.MaxAttempts = 20
			m := e.start(cfg, e.alloc)
			waitReady(t, m, 20*time.Second)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			for _, k := range cards {
				if _, err := allocWait(ctx, m, e.alloc, podReq(0, k)); err != nil {
					t.Fatalf("card %d: %v", k, err)
				}
			}
			path := okCalls(e.srv.State().Calls)
			if m.Stats().EC2.Throttles == 0 {
				t.Fatal("the cold start was not throttled: EC2 was never busy")
			}
			// The scale-up is over: the account's budget is idle again.
			if err := e.srv.SetFaults(fakeec2.Faults{}); err != nil {
				t.Fatal(err)
			}
			eventually(t, 20*time.Second, "DeleteOnTermination on every ENI and every card at its warm target", func() bool {
				for _, x := range e.ours() {
					if !x.DeleteOnTermination {
						return false
					}
				}
				for _, k := range cards {
					if e.alloc.Stats(k).Warm < tc.warm {
						return false
					}
				}
				return true
			})
			settled := okCalls(e.srv.State().Calls)
			t.Logf("EC2 calls served until the pod had its 7 cards: %v; until the idle work was done: %v", path, settled)
			for action, want := range tc.wantPath {
				if path[action] != want {
					t.Errorf("%s served before the pod had its 7 cards: %d, want %d", action, path[action], want)
				}
			}
			mutating := 0
			for action, n := range settled {
				if fakeec2.MutatingAction(action) {
					mutating += n
				}
				if want, ok := tc.wantSettled[action]; ok && n != want {
					t.Errorf("%s served in all: %d, want %d", action, n, want)
				}
			}
			if mutating != 21 {
				t.Errorf("%d mutating calls served in all, want 21 (a create, a DeleteOnTermination and a top-up per card)", mutating)
			}
			for _, k := range cards {
				checkNoLeak(t, e, e.alloc, k)
			}
		})
	}
}

// okCalls is fake-ec2's count of the calls it served, by action.
func okCalls(calls map[string]map[string]int) map[string]int {
	out := map[string]int{}
	for action, byResult := range calls {
		if n := byResult["ok"]; n > 0 {
			out[action] = n
		}
	}
	return out
}

// TestThrottleDoesNotEscalate: a card whose steps run out of attempts against EC2's throttle tries again after
// RefillInterval/10 each time, not after a doubling wait (a storm's last cards would sit out its end).
func TestThrottleDoesNotEscalate(t *testing.T) {
	const storm = 4 * time.Second
	e := newEnv(t, envOpts{faults: fakeec2.Faults{Errors: map[string]fakeec2.ErrorFault{
		"CreateNetworkInterface": {Rate: 1, Code: "RequestLimitExceeded", Status: 503}}}})
	cfg := e.cardOneConfig()
	cfg.RefillInterval, cfg.ErrorBackoffMax, cfg.MaxAttempts = time.Second, time.Minute, 1 // 100 ms after a failed step, doubling up to a minute
	m := e.start(cfg, e.alloc)
	time.Sleep(storm)
	creates := e.srv.State().Calls["CreateNetworkInterface"]["RequestLimitExceeded"]
	if err := e.srv.SetFaults(fakeec2.Faults{}); err != nil {
		t.Fatal(err)
	}
	lifted := time.Now()
	waitReady(t, m, 5*time.Second)
	t.Logf("%d throttled creates in %s; ready %s after the throttle ended", creates, storm, time.Since(lifted).Round(time.Millisecond))
	// Every 100 ms: ~40; doubling from 100 ms: 6 (at 0, 0.1, 0.3, 0.7, 1.5 and 3.1 s), the next only at 6.3 s.
	if creates < 12 {
		t.Errorf("%d creates tried in %s of throttling: the card's wait grew after each throttle", creates, storm)
	}
}
