package eni

import (
	"context"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"

	"github.com/multinic/multinic/internal/testing/fakeec2"
	"github.com/multinic/multinic/ipam/allocator"
	"github.com/multinic/multinic/ipam/eni/awsec2"
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
			// DeleteOnTermination is idle work, set once each card is ready.
			eventually(t, 10*time.Second, "warm pools, DeleteOnTermination on every ENI", func() bool {
				for k := 1; k < tc.cards; k++ {
					if e.alloc.Stats(k).Warm < 4 {
						return false
					}
				}
				for _, x := range e.ours() {
					if !x.DeleteOnTermination {
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

// TestCardBandwidth: each card's bandwidth comes from DescribeInstanceTypes (fake-ec2 serves the catalog's
// figures) and reaches the card's stats, where the DRA devices read it.
func TestCardBandwidth(t *testing.T) {
	e := newEnv(t, envOpts{typ: "p5.48xlarge"})
	m := e.start(e.cardOneConfig(), e.alloc)
	waitReady(t, m, 10*time.Second)
	it, _ := fakeec2.LookupInstanceType("p5.48xlarge")
	cards := m.Stats().Cards
	if len(cards) != 1 || cards[0].Card != 1 {
		t.Fatalf("cards %+v, want card 1 only", cards)
	}
	if cards[0].BaselineGbps != it.CardBaselineGbps || cards[0].PeakGbps != it.CardPeakGbps || it.CardBaselineGbps == 0 {
		t.Errorf("card 1 bandwidth %v/%v Gbps, want the catalog's %v/%v", cards[0].BaselineGbps, cards[0].PeakGbps,
			it.CardBaselineGbps, it.CardPeakGbps)
	}
}

// TestStartThrottled: a start whose describes run out of attempts under the account's throttle (a cluster
// scale-up) tries again after a backoff instead of failing; a start EC2 refuses for good still fails.
func TestStartThrottled(t *testing.T) {
	// An empty describe bucket (5 tokens, 5/s) at the start, and one attempt per call: the start fails
	// throttled unless it tries again; its backoff grows to 2 s, by when the bucket has filled.
	e := newEnv(t, envOpts{faults: fakeec2.Faults{Rates: map[string]fakeec2.Rate{fakeec2.ClassDescribe: {Burst: 5, PerSecond: 5}}}})
	for range 10 {
		_, _ = e.srv.Client(func(o *ec2.Options) { o.Retryer = aws.NopRetryer{} }).DescribeSubnets(context.Background(), &ec2.DescribeSubnetsInput{})
	}
	cfg := e.cardOneConfig()
	cfg.MaxAttempts, cfg.ErrorBackoffMax = 1, 2*time.Second
	m := e.start(cfg, e.alloc)
	waitReady(t, m, 30*time.Second)
	throttled := 0
	for _, res := range e.srv.State().Calls {
		throttled += res["RequestLimitExceeded"]
	}
	if throttled == 0 {
		t.Fatal("the fake never throttled the start: the test proves nothing")
	}

	e = newEnv(t, envOpts{faults: fakeec2.Faults{Deny: []string{"DescribeInstanceTypes"}}})
	m, err := New(e.cardOneConfig(), Deps{EC2: e.ec2, IMDS: e.imds, Allocator: e.alloc, Links: e.links})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := m.Start(ctx); awsec2.ErrorCode(err) != "UnauthorizedOperation" || ctx.Err() != nil {
		t.Fatalf("start without DescribeInstanceTypes: %v (ctx %v), want UnauthorizedOperation at once", err, ctx.Err())
	}
}

// TestStartIMDSUnavailable: a start whose IMDS reads fail for a while (503s, as from an overloaded IMDS on a
// node whose 100 neighbours start at once) keeps trying instead of failing, and starts once IMDS answers.
func TestStartIMDSUnavailable(t *testing.T) {
	e := newEnv(t, envOpts{})
	unavailable := fakeec2.Faults{Errors: map[string]fakeec2.ErrorFault{"IMDS.Get": {Rate: 1, Code: "ServiceUnavailable"}}}
	if err := e.srv.SetFaults(unavailable); err != nil {
		t.Fatal(err)
	}
	cfg := e.cardOneConfig()
	cfg.ErrorBackoffMax = 500 * time.Millisecond
	m, err := New(cfg, Deps{EC2: e.ec2, IMDS: e.imds, Allocator: e.alloc, Links: e.links})
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan error, 1)
	go func() { started <- m.Start(context.Background()) }()
	t.Cleanup(m.Stop)
	// Longer than the SDK's own attempts (3, backoff under a second in all): only the start's loop outlasts it.
	select {
	case err := <-started:
		t.Fatalf("start ended while IMDS failed: %v", err)
	case <-time.After(4 * time.Second):
	}
	if n := e.srv.State().Calls["IMDS.Get"]["503"]; n < 4 {
		t.Fatalf("IMDS answered 503 %d times: the start did not try again", n)
	}
	if err := e.srv.SetFaults(fakeec2.Faults{}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-started:
		if err != nil {
			t.Fatalf("start after IMDS came back: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("start did not end 10 s after IMDS came back")
	}
	waitReady(t, m, 30*time.Second)
}
