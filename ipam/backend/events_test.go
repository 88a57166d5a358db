package backend

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/aws/smithy-go"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/record"

	"github.com/multinic/multinic/ipam/api"
	"github.com/multinic/multinic/ipam/enipool"
)

// ec2Err is an EC2 error as the SDK returns it, wrapped the way the ENI manager wraps it.
func ec2Err(code string) error {
	return fmt.Errorf("assign 1 addresses on card 1: %w", &smithy.GenericAPIError{Code: code, Message: "from EC2"})
}

// drain returns the events recorded so far.
func drain(rec *record.FakeRecorder) []string {
	var out []string
	for {
		select {
		case e := <-rec.Events:
			out = append(out, e)
		default:
			return out
		}
	}
}

func wantEvents(t *testing.T, got []string, prefixes ...string) {
	t.Helper()
	if len(got) != len(prefixes) {
		t.Fatalf("events %q, want %d starting %q", got, len(prefixes), prefixes)
	}
	for i, p := range prefixes {
		if !strings.HasPrefix(got[i], p) {
			t.Errorf("event %d %q, want it to start %q", i, got[i], p)
		}
	}
}

// TestPodEvents: a refused allocation the user can act on tells the Pod why; one that worked, or one
// without a pod name, tells nothing.
func TestPodEvents(t *testing.T) {
	rec := record.NewFakeRecorder(10)
	fp := newFakePools(1, 2)
	fp.lastErr[2] = ec2Err("InsufficientFreeAddressesInSubnet")
	ta := newTestBackend(t, fp, map[int]int{1: 4}, func(c *Config) {
		c.Events = rec
		c.NodeName = "node-a"
		c.WaitTimeout = 10 * time.Millisecond
	})
	ctx := context.Background()
	if _, err := ta.Allocate(ctx, req(1, "c1", "net1", "p")); err != nil {
		t.Fatal(err)
	}
	wantEvents(t, drain(rec))

	if _, err := ta.Allocate(ctx, req(1, "c1", "net2", "p")); err == nil {
		t.Fatal("second interface of one pod on one card allocated")
	}
	wantEvents(t, drain(rec), "Warning CardTaken interface net2 refused: pod default/p (uid uid-p) already holds 10.1.0.10 on card 1 through container c1 interface net1")

	if _, err := ta.Allocate(ctx, req(9, "c1", "net9", "p")); err == nil {
		t.Fatal("card 9 (not managed) allocated")
	}
	wantEvents(t, drain(rec), "Warning CardNotManaged interface net9: card 9 is not served on node node-a",
		"Warning CardNotManaged pod default/p (uid uid-p) asked for card 9, which this node's agent does not serve")

	if _, err := ta.Allocate(ctx, req(2, "c1", "net2", "p")); err == nil {
		t.Fatal("card 2 (empty, refill failing) allocated")
	}
	got := drain(rec)
	wantEvents(t, got, "Warning NoAddress interface net2: no address on card 2 yet, the runtime will try again")
	if !strings.Contains(got[0], "InsufficientFreeAddressesInSubnet") {
		t.Errorf("event %q does not carry EC2's code", got[0])
	}

	anon := api.AllocateRequest{Card: 9, ContainerID: "c2", IfName: "net1"}
	if _, err := ta.Allocate(ctx, anon); err == nil {
		t.Fatal("card 9 allocated")
	}
	wantEvents(t, drain(rec))
}

// TestCardEvents: the Node hears once when a card stops being able to serve (empty pool and failing
// refill at once; a failing refill with addresses left only after FailingFor), and once when it recovers.
func TestCardEvents(t *testing.T) {
	rec := record.NewFakeRecorder(10)
	fp := newFakePools(1, 2)
	ta := newTestBackend(t, fp, map[int]int{2: 4}, func(c *Config) {
		c.Events = rec
		c.NodeName = "node-a"
		c.Cards = func() []int { return []int{1, 2} }
		c.FailingFor = time.Minute
	})
	ctx := context.Background()
	ta.checkCards(ctx)
	wantEvents(t, drain(rec)) // card 1 empty but nothing failed: still being filled

	fp.mu.Lock()
	fp.lastErr[1] = ec2Err("InsufficientFreeAddressesInSubnet")
	fp.lastErr[2] = ec2Err("RequestLimitExceeded")
	fp.mu.Unlock()
	ta.checkCards(ctx)
	wantEvents(t, drain(rec), "Warning SubnetExhausted card 1 cannot serve new pods: assign 1 addresses on card 1: api error InsufficientFreeAddressesInSubnet")
	ta.clock.Step(30 * time.Second)
	ta.checkCards(ctx)
	wantEvents(t, drain(rec)) // card 1 told already; card 2 has warm addresses and fails for 30s only
	ta.clock.Step(31 * time.Second)
	ta.checkCards(ctx)
	wantEvents(t, drain(rec), "Warning EC2Throttled card 2: its pool refill has failed for 1m1s")

	fp.mu.Lock()
	delete(fp.lastErr, 1)
	delete(fp.lastErr, 2)
	fp.mu.Unlock()
	ta.checkCards(ctx)
	wantEvents(t, drain(rec), "Normal CardRecovered card 1 serves new pods again", "Normal CardRecovered card 2 serves new pods again")
	ta.checkCards(ctx)
	wantEvents(t, drain(rec))
}

func TestCardDownReason(t *testing.T) {
	for _, c := range []struct {
		err  error
		want string
	}{
		{ec2Err("InsufficientFreeAddressesInSubnet"), EventSubnetExhausted},
		{ec2Err("AttachmentLimitExceeded"), EventENILimit},
		{fmt.Errorf("add ENI on card 1: %w: 5 of 5 ENIs attached", enipool.ErrCardFull), EventENILimit},
		{ec2Err("UnauthorizedOperation"), EventEC2Denied},
		{ec2Err("RequestLimitExceeded"), EventEC2Throttled},
		{ec2Err("InternalError"), EventEC2Failing},
		{fmt.Errorf("link of eni-1 not found"), EventEC2Failing},
	} {
		if got := cardDownReason(c.err); got != c.want {
			t.Errorf("cardDownReason(%v) = %s, want %s", c.err, got, c.want)
		}
	}
}

// TestReclaimEvent: an allocation reclaim frees is told to the Node with its reason.
func TestReclaimEvent(t *testing.T) {
	rec := record.NewFakeRecorder(10)
	nsDir := newNetnsDir(t)
	ta := newTestBackend(t, newFakePools(1), map[int]int{1: 2}, func(c *Config) {
		c.Events = rec
		c.NodeName = "node-a"
		c.ReclaimGrace = time.Second
		c.NetnsDirs = []string{string(nsDir)}
	})
	ctx := context.Background()
	dead := req(1, "c-dead", "net1", "dead")
	dead.Netns = nsDir.mk(t, "dead")
	al, err := ta.Allocate(ctx, dead)
	if err != nil {
		t.Fatal(err)
	}
	nsDir.rm(t, dead.Netns)
	for range 3 {
		if _, err := ta.ReclaimGonePods(ctx); err != nil {
			t.Fatal(err)
		}
		ta.clock.Step(2 * time.Second)
	}
	wantEvents(t, drain(rec), fmt.Sprintf("Normal AddressReleased released %s (card 1, %s) of pod default/dead (uid uid-dead), interface net1: netns-gone",
		al.Address, al.ENIID))
}

// TestPolicyRulesCoverEvents: the calls NewEventRecorder makes for an Event and its repeat (create, then
// patch) are ones PolicyRules grants.
func TestPolicyRulesCoverEvents(t *testing.T) {
	kube := fake.NewClientset()
	rec, stop := NewEventRecorder(kube, "node-a")
	defer stop()
	ta := newTestBackend(t, newFakePools(1), nil, func(c *Config) {
		c.Events = rec
		c.NodeName = "node-a"
	})
	verbs := map[string]bool{}
	deadline := time.Now().Add(10 * time.Second)
	for !verbs["create"] || !verbs["patch"] {
		if time.Now().After(deadline) {
			t.Fatalf("after 10s the recorder made %v, want create and patch", kube.Actions())
		}
		// The same refusal again and again: the first is created, its repeats patch its count.
		if _, err := ta.Allocate(context.Background(), req(9, "c1", "net1", "p")); err == nil {
			t.Fatal("card 9 allocated")
		}
		time.Sleep(50 * time.Millisecond)
		for _, a := range kube.Actions() {
			if a.GetResource().Resource == "events" {
				verbs[a.GetVerb()] = true
			}
		}
	}
	for _, call := range notGranted(kube.Actions()) {
		t.Errorf("the event recorder called %s, not granted by PolicyRules", call)
	}
}
