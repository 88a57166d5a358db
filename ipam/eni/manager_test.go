package eni

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/multinic/multinic/internal/linkalias"
	"github.com/multinic/multinic/internal/testing/fakeec2"
	"github.com/multinic/multinic/ipam/allocator"
	"github.com/multinic/multinic/ipam/api"
	"github.com/multinic/multinic/ipam/eni/awsec2"
	"github.com/multinic/multinic/ipam/eni/plan"
	"github.com/multinic/multinic/ipam/enipool"
	"github.com/multinic/multinic/ipam/store"
)

func TestDiscoveryAndSetup(t *testing.T) {
	for _, tc := range []struct {
		typ   string
		cards int
	}{
		{"trn1.32xlarge", 8},
		{"p5.48xlarge", 32},
	} {
		t.Run(tc.typ, func(t *testing.T) {
			e := newEnv(t, envOpts{typ: tc.typ})
			// ENIs that are not ours, attached before the manager starts.
			untagged := e.foreignENI(1, 1, nil)
			noManage := e.foreignENI(2, 1, map[string]string{TagNoManage: "true"})
			// Carries our tags but also no_manage: still not ours.
			ourButNoManage := e.foreignENI(3, 1, map[string]string{TagNoManage: "true",
				TagCluster: testCluster, TagNode: e.inst, TagCard: "3"})
			st0 := e.srv.State()
			before := map[string]fakeec2.ENIState{}
			for _, id := range []string{untagged, noManage, ourButNoManage, st0.Instances[0].PrimaryENI} {
				before[id], _ = st0.ENI(id)
			}

			cfg := e.fastConfig(tc.cards)
			cfg.EC2Rate, cfg.EC2Burst = 100, 200 // rate limits roomy enough to show setup speed
			t0 := time.Now()
			m := e.start(cfg, e.alloc)
			waitReady(t, m, 30*time.Second)
			ready := time.Since(t0)
			eventually(t, 10*time.Second, "warm pools", func() bool {
				for k := 1; k < tc.cards; k++ {
					if e.alloc.Stats(k).Warm < 4 {
						return false
					}
				}
				return true
			})
			t.Logf("%s: %d cards ready in %s, warm in %s; EC2 calls %v", tc.typ, tc.cards-1, ready.Round(time.Millisecond),
				time.Since(t0).Round(time.Millisecond), m.Stats().EC2.Calls)

			if got, want := m.ManagedCards(), seq(1, tc.cards); !slices.Equal(got, want) {
				t.Errorf("managed cards %v, want %v", got, want)
			}
			ours := e.ours()
			if len(ours) != tc.cards-1 {
				t.Fatalf("%d ENIs of ours, want %d", len(ours), tc.cards-1)
			}
			perCard := map[int]fakeec2.ENIState{}
			for _, x := range ours {
				if _, dup := perCard[x.Card]; dup {
					t.Errorf("card %d has two ENIs of ours", x.Card)
				}
				perCard[x.Card] = x
				wantDev := 1
				if x.Card <= 3 { // device 1 is taken by a foreign ENI on cards 1-3
					wantDev = 2
				}
				switch {
				case x.Status != "in-use" || x.InstanceID != e.inst:
					t.Errorf("%s: status %s instance %s", x.ID, x.Status, x.InstanceID)
				case x.Device != wantDev:
					t.Errorf("%s on card %d: device %d, want %d", x.ID, x.Card, x.Device, wantDev)
				case !x.DeleteOnTermination:
					t.Errorf("%s: DeleteOnTermination false", x.ID)
				case x.SubnetID != fakeec2.CardSubnetID(x.Card):
					t.Errorf("%s on card %d: subnet %s, want %s", x.ID, x.Card, x.SubnetID, fakeec2.CardSubnetID(x.Card))
				case x.Tags[TagCard] != strconv.Itoa(x.Card) || x.Tags[TagMode] != ModeShared || x.Tags[TagNodeName] != "node-a":
					t.Errorf("%s: tags %v", x.ID, x.Tags)
				}
				info, ok := m.ENI(x.ID)
				wantLink := fmt.Sprintf("ens%dd%d", x.Card, x.Device)
				if !ok || info.Card != x.Card || info.MAC != x.MAC || info.LinkName != wantLink || info.MTU != DefaultMTU ||
					info.Gateway != info.SubnetCIDR.Addr().Next() || !info.SubnetCIDR.Contains(netip.MustParseAddr(x.PrimaryIP)) {
					t.Errorf("ENI(%s) = %+v, %v", x.ID, info, ok)
				}
				if up, mtu := e.links.state(wantLink); !up || mtu != DefaultMTU {
					t.Errorf("link %s: up %v mtu %d", wantLink, up, mtu)
				}
			}
			if _, ok := perCard[0]; ok {
				t.Error("an ENI was added on the default card 0")
			}
			st := e.srv.State()
			for id, b := range before {
				if a, _ := st.ENI(id); !reflect.DeepEqual(a, b) {
					t.Errorf("foreign ENI %s changed:\nbefore %+v\nafter  %+v", id, b, a)
				}
			}
			for k := 1; k < tc.cards; k++ {
				checkNoLeak(t, e, e.alloc, k)
			}
			if _, ok := m.ENI(noManage); ok {
				t.Error("manager knows the no_manage ENI")
			}
		})
	}
}

func seq(from, to int) []int {
	var out []int
	for k := from; k < to; k++ {
		out = append(out, k)
	}
	return out
}

func TestRestartAdopts(t *testing.T) {
	for _, tc := range []struct {
		name string
		// freshAllocator: the checkpoint is lost too; reconcile rebuilds the pool from EC2.
		freshAllocator bool
	}{
		{"same checkpoint", false},
		{"lost checkpoint", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, envOpts{})
			cfg := e.fastConfig(8)
			cfg.ManagedCards = []int{1, 2, 3}
			m1 := e.start(cfg, e.alloc)
			waitReady(t, m1, 10*time.Second)
			eventually(t, 5*time.Second, "warm", func() bool { return e.alloc.Stats(3).Warm == 4 })
			al, err := e.alloc.Allocate(podReq(1, 2))
			if err != nil {
				t.Fatal(err)
			}
			m1.Stop()
			enisBefore := e.ours()

			a2 := e.alloc
			if tc.freshAllocator {
				// Without its checkpoint the agent has no memory of the ENIs it made: it knows what
				// Describe shows, once that shows them.
				e.waitDescribed()
				e.st = nil
				a2 = newEnvAllocator(t)
			} else {
				a2 = e.newAllocator(0)
			}
			m2 := e.start(cfg, a2)
			waitReady(t, m2, 10*time.Second)
			time.Sleep(300 * time.Millisecond) // a refill round
			if n := m2.Stats().EC2.Calls["CreateNetworkInterface"]["ok"]; n != 0 {
				t.Errorf("restart created %d ENIs", n)
			}
			after := e.ours()
			if len(after) != len(enisBefore) {
				t.Errorf("%d ENIs after restart, %d before", len(after), len(enisBefore))
			}
			for id := range enisBefore {
				if _, ok := m2.ENI(id); !ok {
					t.Errorf("ENI %s not adopted", id)
				}
			}
			for _, k := range []int{1, 2, 3} {
				checkNoLeak(t, e, a2, k)
			}
			if !tc.freshAllocator {
				if got, ok := a2.Lookup(al.ContainerID, al.IfName); !ok || got.Address != al.Address {
					t.Errorf("allocation lost over restart: %+v %v", got, ok)
				}
			}
		})
	}
}

func newEnvAllocator(t testing.TB) *allocator.Allocator {
	a, err := allocator.New(newMemStore(), allocator.WithCooldown(0))
	if err != nil {
		t.Fatal(err)
	}
	return a
}

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
					if err := e.alloc.WaitForAddress(ctx, 1, false); err != nil {
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
	cfg.WarmTarget, cfg.MaxBatch = ptr(20), 2
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

func TestAttachFailureDeletesENI(t *testing.T) {
	e := newEnv(t, envOpts{faults: fakeec2.Faults{Errors: map[string]fakeec2.ErrorFault{
		"AttachNetworkInterface": {Rate: 1, Code: "AttachmentLimitExceeded"}}}})
	cfg := e.fastConfig(8)
	cfg.ManagedCards = []int{1, 2}
	m := e.start(cfg, e.alloc)
	eventually(t, 5*time.Second, "attach errors", func() bool {
		err1, err2 := m.LastError(1), m.LastError(2)
		return err1 != nil && err2 != nil && awsec2.ErrorCode(err1) == "AttachmentLimitExceeded"
	})
	t.Logf("last error: %v", m.LastError(1))
	if m.Ready() {
		t.Error("ready without ENIs")
	}
	calls := e.srv.State().Calls
	if c, d := calls["CreateNetworkInterface"]["ok"], calls["DeleteNetworkInterface"]["ok"]; c == 0 || c != d {
		t.Errorf("%d ENIs created, %d deleted", c, d)
	}
	if n := len(e.ours()); n != 0 {
		t.Errorf("%d ENIs of ours left: %v", n, e.ours())
	}
	// Once attaches work again the cards recover by themselves.
	if err := e.srv.SetFaults(fakeec2.Faults{}); err != nil {
		t.Fatal(err)
	}
	waitReady(t, m, 5*time.Second)
	eventually(t, 2*time.Second, "error cleared", func() bool { return m.LastError(1) == nil && m.LastError(2) == nil })
	if n := len(e.ours()); n != 2 {
		t.Errorf("%d ENIs after recovery, want 2", n)
	}
}

func TestDeleteDetached(t *testing.T) {
	e := newEnv(t, envOpts{})
	ourTags := map[string]string{TagCluster: testCluster, TagNode: e.inst, TagCard: "1", TagMode: ModeShared}
	leftover := e.foreignENI(1, -1, ourTags)
	otherNode := e.foreignENI(1, -1, map[string]string{TagCluster: testCluster, TagNode: "i-other", TagCard: "1"})
	otherCluster := e.foreignENI(1, -1, map[string]string{TagCluster: "other", TagNode: e.inst, TagCard: "1"})
	noManage := e.foreignENI(1, -1, map[string]string{TagCluster: testCluster, TagNode: e.inst, TagCard: "1", TagNoManage: "true"})
	untagged := e.foreignENI(1, -1, nil)
	e.waitDescribed() // leftovers of an earlier agent are older than EC2's lag
	cfg := e.fastConfig(8)
	cfg.ManagedCards = []int{1}
	m := e.start(cfg, e.alloc)
	if _, ok := e.eniState(leftover); ok {
		t.Error("leftover ENI of this node not deleted")
	}
	for _, id := range []string{otherNode, otherCluster, noManage, untagged} {
		if _, ok := e.eniState(id); !ok {
			t.Errorf("ENI %s deleted, not ours", id)
		}
	}
	// A leftover made while running goes at the next pass.
	waitReady(t, m, 5*time.Second)
	late := e.foreignENI(1, -1, ourTags)
	e.waitDescribed()
	if err := m.DeleteDetached(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, ok := e.eniState(late); ok {
		t.Error("late leftover not deleted")
	}
}

func TestExclusive(t *testing.T) {
	const cooldown, delay = 200 * time.Millisecond, 200 * time.Millisecond
	e := newEnv(t, envOpts{cooldown: cooldown})
	cfg := e.fastConfig(8)
	cfg.ManagedCards = []int{1}
	cfg.SurplusDelay = delay
	m := e.start(cfg, e.alloc)
	waitReady(t, m, 5*time.Second)
	if err := m.EnsureExclusive(context.Background(), 5); !errors.Is(err, api.ErrNotManaged) {
		t.Errorf("EnsureExclusive on an unmanaged card: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r := exclusiveReq(1, 1)
	al, err := allocWait(ctx, m, e.alloc, r)
	if err != nil {
		t.Fatal(err)
	}
	x, ok := e.eniState(al.ENIID)
	if !ok || x.Tags[TagMode] != ModeExclusive || x.Card != 1 || x.Device != 2 || x.PrimaryIP != al.Address.String() ||
		len(x.SecondaryIPs) != 0 || !x.DeleteOnTermination {
		t.Fatalf("exclusive ENI %+v", x)
	}
	info, ok := m.ENI(al.ENIID)
	if !ok || info.LinkName != "ens1d2" {
		t.Errorf("ENI info %+v %v", info, ok)
	}
	// A second exclusive pod gets a second ENI.
	r2 := exclusiveReq(2, 1)
	al2, err := allocWait(ctx, m, e.alloc, r2)
	if err != nil || al2.ENIID == al.ENIID {
		t.Fatalf("second exclusive: %+v %v", al2, err)
	}
	if _, _, err := e.alloc.Release(al.ContainerID, al.IfName); err != nil {
		t.Fatal(err)
	}
	// Free ENIs go after cooldown + delay; the one still held stays.
	eventually(t, 5*time.Second, "surplus exclusive ENI deleted", func() bool { _, ok := e.eniState(al.ENIID); return !ok })
	if _, ok := e.eniState(al2.ENIID); !ok {
		t.Error("held exclusive ENI deleted")
	}
	if _, ok := m.ENI(al.ENIID); ok {
		t.Error("manager still knows the deleted ENI")
	}
}

// TestExclusiveCardFull: on a card without room for another ENI, an exclusive allocation waits for an
// exclusive ENI resting after its pod left instead of failing "card full" (a pod restarted within the
// cooldown on a full card).
func TestExclusiveCardFull(t *testing.T) {
	const cooldown = 300 * time.Millisecond
	e := newEnv(t, envOpts{cooldown: cooldown})
	cfg := e.cardOneConfig()
	cfg.SurplusDelay = time.Hour
	m := e.start(cfg, e.alloc)
	waitReady(t, m, 5*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var held []api.Allocation
	for p := 0; ; p++ {
		r := exclusiveReq(p, 1)
		al, err := allocWait(ctx, m, e.alloc, r)
		if errors.Is(err, enipool.ErrCardFull) {
			break
		}
		if err != nil {
			t.Fatalf("exclusive pod %d: %v", p, err)
		}
		held = append(held, al)
	}
	if len(held) == 0 {
		t.Fatal("no exclusive ENI fit on the card")
	}
	creates := func() int { return e.srv.State().Calls["CreateNetworkInterface"]["ok"] }
	before := creates()
	gone := held[0]
	if _, _, err := e.alloc.Release(gone.ContainerID, gone.IfName); err != nil {
		t.Fatal(err)
	}
	r := exclusiveReq(100, 1)
	start := time.Now()
	al, err := allocWait(ctx, m, e.alloc, r)
	if err != nil {
		t.Fatalf("exclusive allocation on a full card with a resting ENI: %v", err)
	}
	if al.ENIID != gone.ENIID {
		t.Errorf("got ENI %s, want the resting %s", al.ENIID, gone.ENIID)
	}
	if waited := time.Since(start); waited < cooldown/2 {
		t.Errorf("got the resting ENI after %s, before its cooldown of %s", waited, cooldown)
	}
	if n := creates() - before; n != 0 {
		t.Errorf("%d CreateNetworkInterface on a full card", n)
	}
	checkNoLeak(t, e, e.alloc, 1)
}

// TestExclusiveLinkLost: an exclusive ENI is reused, detached or deleted only once its allocation was
// released AND its link was seen back in the node netns. A link that comes home from a dead pod netns
// under the pod-side name with the plugin's alias is restored (name, alias, MTU, up) before the next pod
// gets the ENI. A link that never comes home is a dead ENI only when the released pod's netns is gone
// (the card loop deletes it); with the netns alive or unknown the ENI is kept, never handed out, and
// usable again once its link is home.
func TestExclusiveLinkLost(t *testing.T) {
	dir := t.TempDir() // a netns directory the agent sees
	gone, alive := filepath.Join(dir, "cni-gone"), filepath.Join(dir, "cni-alive")
	if err := os.WriteFile(alive, nil, 0o444); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, netns string
		link        string // the link in the node netns after the release: "" none
		alias       bool   // it carries the plugin's alias
		want        string // "reused", "deleted" or "kept"
	}{
		{name: "home", netns: gone, link: "ens1d2", want: "reused"},
		{name: "renamed", netns: gone, link: "net1", alias: true, want: "reused"},
		{name: "dead", netns: gone, want: "deleted"},
		{name: "netns-alive", netns: alive, want: "kept"},
		{name: "netns-invisible", netns: "/proc/1/ns/net", want: "kept"},
		{name: "netns-unknown", want: "kept"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, envOpts{})
			cfg := e.cardOneConfig()
			cfg.SurplusDelay = time.Hour
			cfg.LinkTimeout = 300 * time.Millisecond
			cfg.MTU = 9001
			cfg.NetnsDirs = []string{dir}
			m := e.start(cfg, e.alloc)
			waitReady(t, m, 5*time.Second)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			r := exclusiveReq(1, 1)
			r.Netns = tc.netns
			first, err := allocWait(ctx, m, e.alloc, r)
			if err != nil {
				t.Fatal(err)
			}
			info, _ := m.ENI(first.ENIID)
			orig := info.LinkName
			e.links.setLink(info.MAC, "") // the plugin moved the link into the pod
			alias := ""
			if tc.alias {
				alias = linkalias.Orig{Name: orig, MTU: 9001, Up: true}.Alias()
			}
			if _, _, err := e.alloc.Release(first.ContainerID, first.IfName); err != nil {
				t.Fatal(err)
			}
			e.links.setLinkAlias(info.MAC, tc.link, alias)

			second, err := allocWait(ctx, m, e.alloc, exclusiveReq(2, 1))
			if err != nil {
				t.Fatal(err)
			}
			switch tc.want {
			case "reused":
				if second.ENIID != first.ENIID {
					t.Fatalf("got ENI %s, want %s back: its link is home", second.ENIID, first.ENIID)
				}
				if info, _ := m.ENI(second.ENIID); info.LinkName != orig {
					t.Errorf("ENI handed out with link %q, want it restored to %q", info.LinkName, orig)
				}
				if up, mtu := e.links.state(orig); !up || mtu != 9001 || e.links.alias[orig] != "" {
					t.Errorf("link %s: up %t mtu %d alias %q, want up, 9001, no alias", orig, up, mtu, e.links.alias[orig])
				}
				return
			case "deleted":
				eventually(t, 5*time.Second, "the dead ENI deleted by the card loop", func() bool {
					_, inEC2 := e.eniState(first.ENIID)
					_, known := m.ENI(first.ENIID)
					return !inEC2 && !known
				})
			case "kept":
				time.Sleep(3 * cfg.LinkTimeout) // several card loop steps past the grace
				if _, ok := e.eniState(first.ENIID); !ok {
					t.Fatalf("ENI %s deleted without evidence that nothing uses it", first.ENIID)
				}
				if st := e.alloc.Stats(1).Exclusive; st.Away != 1 {
					t.Errorf("exclusive stats %+v, want the ENI away", st)
				}
			}
			if second.ENIID == first.ENIID {
				t.Fatalf("ENI %s handed out again without its link home", first.ENIID)
			}
			if tc.want == "kept" {
				// Its link comes home after all: restored and usable again.
				e.links.setLink(info.MAC, "net1")
				third, err := allocWait(ctx, m, e.alloc, exclusiveReq(3, 1))
				if err != nil {
					t.Fatal(err)
				}
				if third.ENIID != first.ENIID {
					t.Errorf("got ENI %s, want %s, back home", third.ENIID, first.ENIID)
				}
				if info, _ := m.ENI(third.ENIID); info.LinkName != orig {
					t.Errorf("ENI handed out with link %q, want %q", info.LinkName, orig)
				}
			}
			checkNoLeak(t, e, e.alloc, 1)
		})
	}
}

// TestExclusiveRestartWithoutCheckpoint: the agent restarts with no checkpoint while an exclusive ENI is
// inside a running pod (its link is not in the node netns). The ENI is neither registered free nor
// detached; once its link is home it serves again.
func TestExclusiveRestartWithoutCheckpoint(t *testing.T) {
	e := newEnv(t, envOpts{})
	cfg := e.cardOneConfig()
	cfg.SurplusDelay = 50 * time.Millisecond // a free exclusive ENI would be deleted at once
	cfg.LinkTimeout = 300 * time.Millisecond
	m := e.start(cfg, e.alloc)
	waitReady(t, m, 5*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	al, err := allocWait(ctx, m, e.alloc, exclusiveReq(1, 1))
	if err != nil {
		t.Fatal(err)
	}
	info, _ := m.ENI(al.ENIID)
	e.links.setLink(info.MAC, "")
	m.Stop()

	e.waitDescribed() // without a checkpoint, the agent learns its ENIs from Describe
	fresh := e.newAllocatorOn(newMemStore())
	m2 := e.start(cfg, fresh)
	waitReady(t, m2, 5*time.Second)
	time.Sleep(1 * time.Second)
	if _, ok := e.eniState(al.ENIID); !ok {
		t.Fatalf("exclusive ENI %s inside a running pod deleted after a restart without checkpoint", al.ENIID)
	}
	for _, p := range fresh.Known() {
		if p.ENIID == al.ENIID {
			t.Fatalf("exclusive ENI %s inside a running pod registered as %+v", al.ENIID, p)
		}
	}
	other, err := allocWait(ctx, m2, fresh, exclusiveReq(2, 1))
	if err != nil {
		t.Fatal(err)
	}
	if other.ENIID == al.ENIID {
		t.Fatalf("ENI %s inside a running pod handed to another", al.ENIID)
	}
	e.links.setLinkAlias(info.MAC, "net1", linkalias.Orig{Name: info.LinkName, MTU: 9001, Up: true}.Alias())
	eventually(t, 5*time.Second, "the ENI registered once its link is home", func() bool {
		for _, p := range fresh.Known() {
			if p.ENIID == al.ENIID {
				return true
			}
		}
		return false
	})
	if info2, _ := m2.ENI(al.ENIID); info2.LinkName != info.LinkName {
		t.Errorf("link %q, want it restored to %q", info2.LinkName, info.LinkName)
	}
}

// TestExclusiveBackoff: while EC2 refuses CreateNetworkInterface, exclusive ADDs retried back to back
// make no EC2 calls of their own: the card loop creates, with its error backoff, and each ADD gets its
// failure (EC2's code) from the card loop's next step.
func TestExclusiveBackoff(t *testing.T) {
	e := newEnv(t, envOpts{})
	cfg := e.cardOneConfig()
	cfg.MaxAttempts = 1
	cfg.RefillInterval = time.Second // first error wait 100 ms, doubling
	cfg.ErrorBackoffMax = time.Hour
	m := e.start(cfg, e.alloc)
	waitReady(t, m, 5*time.Second)
	if err := e.srv.SetFaults(fakeec2.Faults{Errors: map[string]fakeec2.ErrorFault{
		"CreateNetworkInterface": {Rate: 1, Code: "InternalError", Status: 500}}}); err != nil {
		t.Fatal(err)
	}
	calls := func() int {
		n := 0
		for _, c := range e.srv.State().Calls["CreateNetworkInterface"] {
			n += c
		}
		return n
	}
	before := calls()
	adds, start := 0, time.Now()
	for p := 0; time.Since(start) < 2*time.Second; p++ {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		_, err := allocWait(ctx, m, e.alloc, exclusiveReq(p, 1))
		cancel()
		if err == nil || !strings.Contains(err.Error(), "InternalError") {
			t.Fatalf("ADD %d while EC2 refuses: %v, want EC2's InternalError", p, err)
		}
		adds++
	}
	// Card loop steps in 2 s with waits of 0.1, 0.2, 0.4, 0.8 s: at most 5.
	if n := calls() - before; n > 5 || adds < 5 {
		t.Errorf("%d CreateNetworkInterface calls for %d exclusive ADDs in 2 s, want at most 5 (the card loop's backoff)", n, adds)
	} else {
		t.Logf("%d CreateNetworkInterface calls for %d exclusive ADDs in 2 s", n, adds)
	}
	if err := e.srv.SetFaults(fakeec2.Faults{}); err != nil {
		t.Fatal(err)
	}
	m.Kick(1)
}

// TestP5DefaultsUnderThrottling: with the shipped defaults (limiter 4/s, burst 10) and EC2's published
// throttling on, all 31 managed cards of a p5.48xlarge get their ENI and a warm pool. It takes ~25 s,
// bounded by the limiter rather than the CPU, and it is the largest instance type we support.
func TestP5DefaultsUnderThrottling(t *testing.T) {
	e := newEnv(t, envOpts{typ: "p5.48xlarge", faults: fakeec2.Faults{Throttle: true}})
	cfg := e.fastConfig(32)
	cfg.WarmTarget, cfg.MinFree = nil, nil
	cfg.EC2Rate, cfg.EC2Burst, cfg.BackoffBase, cfg.BackoffMax = 0, 0, 0, 0
	t0 := time.Now()
	m := e.start(cfg, e.alloc)
	waitReady(t, m, 2*time.Minute)
	ready := time.Since(t0)
	eventually(t, 2*time.Minute, "warm", func() bool {
		for k := 1; k < 32; k++ {
			if e.alloc.Stats(k).Warm < DefaultWarmTarget {
				return false
			}
		}
		return true
	})
	st := m.Stats().EC2
	t.Logf("p5.48xlarge defaults: 31 cards ready in %s, warm in %s; throttles %d; calls %v",
		ready.Round(time.Millisecond), time.Since(t0).Round(time.Millisecond), st.Throttles, st.Calls)
}

// TestReconcileUnderLag: EC2's Describe lags behind its changes. Right after the manager gave surplus
// addresses back and assigned new ones, a reconcile must neither put the unassigned addresses back in
// the pool (a pod would get an address its ENI no longer has) nor drop the new ones, nor forget or
// delete an ENI it just created; its detached-ENI cleanup then must not delete that ENI.
func TestReconcileUnderLag(t *testing.T) {
	const lag = time.Second
	e := newEnv(t, envOpts{faults: fakeec2.Faults{Lag: fakeec2.Duration(lag)}})
	cfg := e.cardOneConfig()
	cfg.WarmTarget, cfg.MinFree, cfg.MaxBatch = ptr(2), ptr(1), 10
	cfg.SurplusDelay = -1 // surplus goes back at once
	m := e.start(cfg, e.alloc)
	waitReady(t, m, 10*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var als []api.Allocation
	for p := range 8 {
		al, err := allocWait(ctx, m, e.alloc, podReq(p, 1))
		if err != nil {
			t.Fatal(err)
		}
		als = append(als, al)
	}
	eventually(t, 5*time.Second, "refill", func() bool { return need(e.alloc, 1, 2, 1) == 0 })
	time.Sleep(lag + 100*time.Millisecond) // EC2's view has caught up
	for _, al := range als {
		if _, _, err := e.alloc.Release(al.ContainerID, al.IfName); err != nil {
			t.Fatal(err)
		}
	}
	m.Kick(1)
	eventually(t, 5*time.Second, "surplus unassigned", func() bool { return len(e.ec2Addresses(1)) <= 2 })
	// An exclusive ENI created now is missing from Describe for the lag.
	ex, err := allocWait(ctx, m, e.alloc, exclusiveReq(100, 1))
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Reconcile(ctx); err != nil { // Describe still lists what was unassigned, not the new ENI
		t.Fatal(err)
	}
	checkNoLeak(t, e, e.alloc, 1)
	if _, ok := m.ENI(ex.ENIID); !ok {
		t.Errorf("reconcile forgot exclusive ENI %s, created %s ago", ex.ENIID, lag)
	}
	if x, ok := e.eniState(ex.ENIID); !ok || x.Status != "in-use" {
		t.Errorf("exclusive ENI %s in use by a pod: %+v %v", ex.ENIID, x, ok)
	}
	// Every address the pool offers is on its ENI in EC2's true state.
	inEC2 := e.ec2Addresses(1)
	for p := range 4 {
		al, err := allocWait(ctx, m, e.alloc, podReq(200+p, 1))
		if err != nil {
			t.Fatal(err)
		}
		if inEC2 = e.ec2Addresses(1); inEC2[al.Address] != al.ENIID {
			t.Errorf("pod got %s on %s, which EC2 does not have there", al.Address, al.ENIID)
		}
	}
	time.Sleep(lag + 100*time.Millisecond)
	if err := m.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	checkNoLeak(t, e, e.alloc, 1)
}

// TestRestartWithinLag: the agent restarts before EC2's Describe shows what it just did. Its memory of
// those changes comes back with the checkpoint: the new process adopts the ENIs it made (and makes none),
// keeps every allocation and assigned address, does not take back into the pool the addresses it gave
// back, and deletes an ENI the old process created but never attached.
func TestRestartWithinLag(t *testing.T) {
	const lag = 5 * time.Second
	e := newEnv(t, envOpts{faults: fakeec2.Faults{Lag: fakeec2.Duration(lag)}})
	cfg := e.cardOneConfig()
	cfg.WarmTarget, cfg.MinFree = ptr(2), ptr(1)
	cfg.SurplusDelay = -1 // surplus goes back at once
	m1 := e.start(cfg, e.alloc)
	waitReady(t, m1, 10*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var held, churn []api.Allocation
	for p, r := range []api.AllocateRequest{podReq(1, 1), exclusiveReq(2, 1), podReq(3, 1), podReq(4, 1), podReq(5, 1), podReq(6, 1)} {
		al, err := allocWait(ctx, m1, e.alloc, r)
		if err != nil {
			t.Fatal(err)
		}
		if p < 2 {
			held = append(held, al)
		} else {
			churn = append(churn, al)
		}
	}
	eventually(t, 5*time.Second, "refill", func() bool { return need(e.alloc, 1, 2, 1) == 0 })
	before := e.ec2Addresses(1)
	for _, al := range churn {
		if _, _, err := e.alloc.Release(al.ContainerID, al.IfName); err != nil {
			t.Fatal(err)
		}
	}
	m1.Kick(1)
	eventually(t, 5*time.Second, "surplus unassigned", func() bool { return len(e.ec2Addresses(1)) < len(before) })
	after := e.ec2Addresses(1)
	var unassigned []netip.Addr
	for a := range before {
		if _, ok := after[a]; !ok {
			unassigned = append(unassigned, a)
		}
	}
	// The old process created this one and died before attaching it.
	orphan := e.foreignENI(1, -1, map[string]string{TagCluster: testCluster, TagNode: e.inst, TagCard: "1", TagMode: ModeExclusive})
	m1.recent.create(store.RecentENI{ID: orphan, Card: 1})
	m1.saveRecent()
	m1.Stop()
	enis := e.ours()
	if e.srv.State().DescribedAt.IsZero() {
		t.Fatalf("the steps before the restart took longer than fake-ec2's %s lag: the restart would not be within it", lag)
	}

	a2 := e.newAllocator(0)
	m2 := e.start(cfg, a2)
	waitReady(t, m2, 10*time.Second)
	if n := m2.Stats().EC2.Calls["CreateNetworkInterface"]["ok"]; n != 0 {
		t.Errorf("restart within the lag created %d ENIs", n)
	}
	for id, x := range enis {
		if _, ok := m2.ENI(id); !ok && x.Status == "in-use" {
			t.Errorf("ENI %s not adopted", id)
		}
	}
	for _, al := range held {
		if got, ok := a2.Lookup(al.ContainerID, al.IfName); !ok || got.Address != al.Address || got.ENIID != al.ENIID {
			t.Errorf("allocation %s on %s lost over the restart: %+v %v", al.Address, al.ENIID, got, ok)
		}
	}
	for _, p := range a2.Known() {
		if slices.Contains(unassigned, p.Address) {
			t.Errorf("address %s given back to EC2 before the restart is in the pool again", p.Address)
		}
	}
	if _, ok := e.eniState(orphan); ok {
		t.Errorf("ENI %s the old process created and never attached not deleted", orphan)
	}
	e.waitDescribed()
	if err := m2.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	checkNoLeak(t, e, a2, 1)
}

// TestSweepOrphans: ENIs this cluster's agents created and tagged for a node that died before attaching
// them are deleted by any agent's sweep once older than OrphanAge; two agents sweeping at once delete
// each orphan once between them. Young ENIs, attached ones, other clusters', no_manage and EFA ENIs are
// never touched; an ENI without a creation tag counts from when the sweeping agent first saw it.
func TestSweepOrphans(t *testing.T) {
	const age = 400 * time.Millisecond
	e := newEnv(t, envOpts{typ: "trn1.32xlarge"})
	cfg := e.cardOneConfig()
	cfg.OrphanAge, cfg.OrphanSweepInterval = age, -1
	m1 := e.start(cfg, e.alloc)
	waitReady(t, m1, 5*time.Second)
	cfg2 := cfg // a second agent: on another card of the same instance, so the two share no ENI
	cfg2.ManagedCards, cfg2.Cards = []int{2}, map[int]CardConfig{2: {SubnetID: fakeec2.CardSubnetID(2)}}
	m2 := e.start(cfg2, e.newAllocatorOn(newMemStore()))
	waitReady(t, m2, 5*time.Second)

	old := time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)
	young := time.Now().Add(time.Hour).UTC().Format(time.RFC3339) // young whatever the machine's pace
	tags := func(extra map[string]string) map[string]string {
		t := map[string]string{TagCluster: testCluster, TagManaged: "true", TagNode: "i-0dead00000000000", TagCard: "1"}
		for k, v := range extra {
			t[k] = v
		}
		return t
	}
	orphan := []string{
		e.foreignENI(1, -1, tags(map[string]string{TagCreatedAt: old})),
		e.foreignENI(1, -1, tags(map[string]string{TagCreatedAt: old, TagMode: ModeExclusive})),
	}
	untagged := e.foreignENI(1, -1, tags(nil)) // an older agent's: no creation time
	keep := map[string]string{
		e.foreignENI(1, -1, tags(map[string]string{TagCreatedAt: young})):                                                "young",
		e.foreignENI(1, 5, tags(map[string]string{TagCreatedAt: old})):                                                   "attached",
		e.foreignENI(1, -1, map[string]string{TagCluster: "other", TagManaged: "true", TagCard: "1", TagCreatedAt: old}): "other cluster",
		e.foreignENI(1, -1, tags(map[string]string{TagCreatedAt: old, TagNoManage: "true"})):                             "no_manage",
		e.foreignENI(1, -1, map[string]string{TagCard: "1"}):                                                             "untagged",
	}
	out, err := e.ec2.CreateNetworkInterface(context.Background(), &ec2.CreateNetworkInterfaceInput{
		SubnetId: aws.String(fakeec2.CardSubnetID(1)), InterfaceType: types.NetworkInterfaceCreationTypeEfa,
		TagSpecifications: []types.TagSpecification{{ResourceType: types.ResourceTypeNetworkInterface,
			Tags: []types.Tag{{Key: aws.String(TagCluster), Value: aws.String(testCluster)}, {Key: aws.String(TagManaged), Value: aws.String("true")},
				{Key: aws.String(TagCard), Value: aws.String("1")}, {Key: aws.String(TagCreatedAt), Value: aws.String(old)}}}}})
	if err != nil {
		t.Fatal(err)
	}
	keep[aws.ToString(out.NetworkInterface.NetworkInterfaceId)] = "efa"
	e.waitDescribed() // a dead node's orphans are older than EC2's lag

	ctx := context.Background()
	var wg sync.WaitGroup
	var total atomic.Int64
	for _, m := range []*Manager{m1, m2} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n, err := m.SweepOrphans(ctx)
			if err != nil {
				t.Errorf("sweep: %v", err)
			}
			total.Add(int64(n))
		}()
	}
	wg.Wait()
	if total.Load() != int64(len(orphan)) {
		t.Errorf("two sweeps deleted %d, want %d", total.Load(), len(orphan))
	}
	for _, id := range orphan {
		if _, ok := e.eniState(id); ok {
			t.Errorf("orphan %s not deleted", id)
		}
	}
	if _, ok := e.eniState(untagged); !ok {
		t.Fatal("an orphan without a creation tag deleted on first sight")
	}
	time.Sleep(age)
	if _, err := m1.SweepOrphans(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := e.eniState(untagged); ok {
		t.Errorf("orphan %s without a creation tag, seen for %s, not deleted", untagged, age)
	}
	for id, why := range keep {
		if _, ok := e.eniState(id); !ok {
			t.Errorf("%s ENI %s deleted", why, id)
		}
	}
	// The agents' own ENIs are attached and theirs: untouched.
	for id, x := range e.ours() {
		if x.Status != "in-use" {
			t.Errorf("agent's ENI %s: %s", id, x.Status)
		}
	}
}
