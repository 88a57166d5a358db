package faults

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/multinic/multinic/internal/nettest"
	"github.com/multinic/multinic/internal/testing/fakeec2"
	"github.com/multinic/multinic/internal/testing/harness"
	"github.com/multinic/multinic/ipam/api"
	"github.com/multinic/multinic/netconf"
)

const card = 1

var (
	exclusive     = harness.Attachment{Card: card, Mode: netconf.ModeExclusive, IfName: "net1"}
	shared        = harness.Attachment{Card: card, Mode: netconf.ModeIPVlan, IfName: "net1"}
	dualExclusive = harness.Attachment{Card: card, Mode: netconf.ModeExclusive, IfName: "net1", Family: netconf.FamilyDual}
	dualShared    = harness.Attachment{Card: card, Mode: netconf.ModeIPVlan, IfName: "net1", Family: netconf.FamilyDual}
)

func attachTimed(p *harness.Pod, a harness.Attachment) (time.Duration, error) {
	start := time.Now()
	_, err := p.Attach(a)
	return time.Since(start), err
}

// attachResult is an ADD that ran in the background: how long it took and how it ended.
type attachResult struct {
	d   time.Duration
	err error
}

// attachAsync starts an ADD of a to p, for a fault injected while it is in flight.
func attachAsync(p *harness.Pod, a harness.Attachment) <-chan attachResult {
	done := make(chan attachResult, 1)
	go func() {
		d, err := attachTimed(p, a)
		done <- attachResult{d, err}
	}()
	return done
}

// slowAction makes fake-ec2 take d to answer action, so that a fault can strike while an ADD waits on it.
func slowAction(t *testing.T, r *harness.Region, action string, d time.Duration) {
	t.Helper()
	if err := r.Fake().SetFaults(fakeec2.Faults{ActionLatency: map[string]fakeec2.Duration{action: fakeec2.Duration(d)}}); err != nil {
		t.Fatal(err)
	}
}

// ec2Case is an EC2 fault that should make an ADD on an empty pool fail with CNI code 11 and EC2's code.
type ec2Case struct {
	fault, injected string
	att             harness.Attachment
	faults          fakeec2.Faults
	// want are substrings of the CNI message (EC2's code, the subnet, ...).
	want []string
	// allowSuccess: the agent's backoff may ride the fault out; success is recorded, not failed.
	allowSuccess bool
	// prepare runs after the faults are set (drain the pool, fill the subnet, ...); its undo runs once the
	// fault clears.
	prepare func(t *testing.T, r *harness.Region, n *harness.Node) (undo func())
	extra   []string // agent flags
	// subnets, when set, are fake-ec2's subnets (harness.Config.Subnets).
	subnets []fakeec2.SubnetConfig
}

func runEC2Case(t *testing.T, c ec2Case) {
	cfg := regionConfig(c.extra...)
	cfg.Subnets = c.subnets
	fc := newFaultCaseIn(t, cfg, c.fault, modeOf(c.att), c.injected)
	canIPVlan := c.att.Mode != netconf.ModeIPVlan || hasIPVlan()
	for i := range rounds() {
		if err := fc.region.Fake().SetFaults(c.faults); err != nil {
			t.Fatal(err)
		}
		undo := func() {}
		if c.prepare != nil {
			undo = c.prepare(t, fc.region, fc.node)
		}
		pod := fc.newPod(t, fmt.Sprintf("f%d", i))
		before := fc.region.State().Calls
		d, err := attachTimed(pod, c.att)
		fc.run.addResult(d, err)
		fc.note("fake-ec2 during the ADD: " + callsDiff(before, fc.region.State().Calls))
		switch code, msg := cniError(err); {
		case err == nil && c.allowSuccess:
			fc.note(fmt.Sprintf("round %d: ADD succeeded in %s: the agent's backoff rode the fault out", i+1, d.Round(time.Millisecond)))
		case err == nil:
			t.Errorf("ADD under %s succeeded, want CNI error 11", c.injected)
		case code != types.ErrTryAgainLater:
			t.Errorf("ADD under %s: CNI code %d (%s), want 11", c.injected, code, msg)
		default:
			for _, s := range c.want {
				if !strings.Contains(msg, s) {
					t.Errorf("ADD under %s: message %q lacks %q", c.injected, msg, s)
				}
			}
		}
		// The fault clears; the runtime retries with a new sandbox.
		if err := fc.region.Fake().SetFaults(fakeec2.Faults{}); err != nil {
			t.Fatal(err)
		}
		undo()
		roundPods := []*harness.Pod{pod}
		if canIPVlan {
			roundPods = append(roundPods, fc.recover(t, i, c.att, "ADD after the fault cleared"))
		} else {
			// No ipvlan on this kernel: the plugin cannot finish an ipvlan ADD here, so recovery is checked
			// one level down: the agent allocates again once EC2 answers.
			d, err := agentRecovers(fc.node, c.att.Family)
			fc.run.recovered(d, err)
			if err != nil {
				t.Errorf("allocate after the fault cleared: %v", err)
			}
			fc.note("recovery checked with the agent's API (no ipvlan on this kernel)")
		}
		fc.endRound(t, i, roundPods...)
	}
	fc.finish(t)
}

// callsDiff says which EC2 calls fake-ec2 answered, and how, between two snapshots.
func callsDiff(before, after map[string]map[string]int) string {
	var out []string
	for action, m := range after {
		for result, n := range m {
			if d := n - before[action][result]; d > 0 && !strings.HasPrefix(action, "IMDS") && !strings.HasPrefix(action, "Describe") {
				out = append(out, fmt.Sprintf("%s %s x%d", action, result, d))
			}
		}
	}
	if len(out) == 0 {
		return "no mutating call"
	}
	slices.Sort(out)
	return strings.Join(out, ", ")
}

func modeOf(a harness.Attachment) string {
	if a.Mode == "" {
		return netconf.ModeIPVlan
	}
	return a.Mode
}

func dedup(s []string) []string {
	var out []string
	for _, x := range s {
		if len(out) == 0 || out[len(out)-1] != x {
			out = append(out, x)
		}
	}
	return out
}

var (
	ipvlanOnce sync.Once
	ipvlanOK   bool
)

// hasIPVlan reports whether the kernel can make ipvlan links: a probe in a throwaway netns.
func hasIPVlan() bool {
	ipvlanOnce.Do(func() {
		n, err := testutils.NewNS()
		if err != nil {
			return
		}
		defer func() { _ = n.Close(); _ = testutils.UnmountNS(n) }()
		ipvlanOK = n.Do(func(ns.NetNS) error {
			if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "lower0"}, PeerName: "lower1"}); err != nil {
				return err
			}
			lower, err := netlinksafe.LinkByName("lower0")
			if err != nil {
				return err
			}
			return netlink.LinkAdd(&netlink.IPVlan{LinkAttrs: netlink.LinkAttrs{Name: "probe0", ParentIndex: lower.Attrs().Index}, Mode: netlink.IPVLAN_MODE_L2})
		}) == nil
	})
	return ipvlanOK
}

// agentRecovers allocates and releases one shared address (of family, "" for ipv4) through the agent's
// API, waiting for a refill.
func agentRecovers(n *harness.Node, family string) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout()+5*time.Second)
	defer cancel()
	req := api.AllocateRequest{Card: card, ContainerID: "faults-recover", IfName: "net1",
		PodRef: api.PodRef{PodNamespace: "default", PodName: "recover"}, Netns: n.NetNSPath, Family: family}
	start := time.Now()
	_, err := n.Client.Allocate(ctx, req)
	d := time.Since(start)
	if err != nil {
		return d, err
	}
	_, err = n.Client.Release(ctx, api.ReleaseRequest{ContainerID: req.ContainerID, IfName: req.IfName})
	return d, err
}

// drainShared takes every shared address of the card through the agent's API, so that the next ADD needs
// a refill; undo gives them back. An allocation waits out the harness's --cooldown (1 s) before it gives up,
// so addresses resting after an earlier round's release are taken too.
func drainShared(t *testing.T, r *harness.Region, n *harness.Node) func() {
	t.Helper()
	return drainFamily("")(t, r, n)
}

// drainFamily is drainShared for a card of family.
func drainFamily(family string) func(t *testing.T, _ *harness.Region, n *harness.Node) func() {
	return func(t *testing.T, _ *harness.Region, n *harness.Node) func() {
		t.Helper()
		return drain(t, n, family)
	}
}

func drain(t *testing.T, n *harness.Node, family string) func() {
	t.Helper()
	var taken []api.ReleaseRequest
	for i := range 200 {
		ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
		req := api.AllocateRequest{Card: card, ContainerID: fmt.Sprintf("faults-drain-%d", i), IfName: "net1",
			PodRef: api.PodRef{PodNamespace: "default", PodName: fmt.Sprintf("drain-%d", i)}, Netns: n.NetNSPath, Family: family}
		_, err := n.Client.Allocate(ctx, req)
		cancel()
		if err != nil {
			break
		}
		taken = append(taken, api.ReleaseRequest{ContainerID: req.ContainerID, IfName: req.IfName})
	}
	if len(taken) == 0 {
		t.Logf("drain: the pool of card %d was already empty", card)
	}
	undo := func() {
		for _, r := range taken {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if _, err := n.Client.Release(ctx, r); err != nil {
				t.Errorf("release drained %s: %v", r.ContainerID, err)
			}
			cancel()
		}
		taken = nil
	}
	t.Cleanup(undo) // a fatal test still gives them back before the region goes
	return undo
}

// TestEC2ServerError: EC2 answers 500 InternalError to the call an ADD on an empty pool needs.
func TestEC2ServerError(t *testing.T) {
	t.Run("exclusive", func(t *testing.T) {
		runEC2Case(t, ec2Case{
			fault: "ec2-5xx", att: exclusive,
			injected: "CreateNetworkInterface: InternalError (500) at rate 1.0; no free exclusive ENI",
			faults:   fakeec2.Faults{Errors: map[string]fakeec2.ErrorFault{"CreateNetworkInterface": {Rate: 1, Code: "InternalError", Status: 500}}},
			want:     []string{"InternalError"},
		})
	})
	t.Run("ipvlan", func(t *testing.T) {
		runEC2Case(t, ec2Case{
			fault: "ec2-5xx-ipvlan", att: shared,
			injected: "AssignPrivateIpAddresses: InternalError (500) at rate 1.0; shared pool drained",
			faults:   fakeec2.Faults{Errors: map[string]fakeec2.ErrorFault{"AssignPrivateIpAddresses": {Rate: 1, Code: "InternalError", Status: 500}}},
			want:     []string{"InternalError"},
			prepare:  drainShared,
		})
	})
}

// burnToken spends the bucket of an action with a request the fake refuses after the throttle check.
func burnToken(t *testing.T, r *harness.Region, action string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, r.Endpoint()+"/", strings.NewReader(url.Values{"Action": {action}}.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Authorization", "AWS4-HMAC-SHA256 Credential=faults")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("burn %s token: %v", action, err)
	}
	resp.Body.Close()
}

// TestThrottle: EC2 throttles the call an ADD on an empty pool needs.
func TestThrottle(t *testing.T) {
	t.Run("exclusive", func(t *testing.T) {
		runEC2Case(t, ec2Case{
			fault: "throttle", att: exclusive,
			injected: "CreateNetworkInterface: RequestLimitExceeded (503) at rate 1.0; no free exclusive ENI",
			faults:   fakeec2.Faults{Errors: map[string]fakeec2.ErrorFault{"CreateNetworkInterface": {Rate: 1, Code: "RequestLimitExceeded"}}},
			want:     []string{"RequestLimitExceeded"},
		})
	})
	t.Run("ipvlan", func(t *testing.T) {
		runEC2Case(t, ec2Case{
			fault: "throttle-ipvlan", att: shared,
			injected: "AssignPrivateIpAddresses: RequestLimitExceeded (503) at rate 1.0; shared pool drained",
			faults:   fakeec2.Faults{Errors: map[string]fakeec2.ErrorFault{"AssignPrivateIpAddresses": {Rate: 1, Code: "RequestLimitExceeded"}}},
			want:     []string{"RequestLimitExceeded"},
			prepare:  drainShared,
		})
	})
	// Issue 14: a dual exclusive ADD needs an ENI with its IPv6 address, and EC2 throttles the create.
	t.Run("exclusive-dual", func(t *testing.T) {
		runEC2Case(t, ec2Case{
			fault: "throttle-dual", att: dualExclusive,
			injected: "CreateNetworkInterface: RequestLimitExceeded (503) at rate 1.0; card 1 dual; no free exclusive ENI",
			faults:   fakeec2.Faults{Errors: map[string]fakeec2.ErrorFault{"CreateNetworkInterface": {Rate: 1, Code: "RequestLimitExceeded"}}},
			want:     []string{"RequestLimitExceeded"},
			extra:    []string{"--family", netconf.FamilyDual},
		})
	})
	// Issue 14: a dual card's first ENI is out of IPv4 addresses and EC2 throttles every mutating call
	// (the new ENI, an assign): the dual ADD fails with EC2's code and holds nothing of either family.
	t.Run("ipvlan-dual", func(t *testing.T) {
		runEC2Case(t, ec2Case{
			fault: "throttle-ipvlan-dual", att: dualShared,
			injected: "AssignPrivateIpAddresses, CreateNetworkInterface: RequestLimitExceeded (503) at rate 1.0; card 1 dual, shared pool drained",
			faults: fakeec2.Faults{Errors: map[string]fakeec2.ErrorFault{"AssignPrivateIpAddresses": {Rate: 1, Code: "RequestLimitExceeded"},
				"CreateNetworkInterface": {Rate: 1, Code: "RequestLimitExceeded"}}},
			want:    []string{"RequestLimitExceeded"},
			extra:   []string{"--family", netconf.FamilyDual},
			prepare: drainFamily(netconf.FamilyDual),
		})
	})
	t.Run("bucket", func(t *testing.T) {
		// A squeezed bucket (1 token, 1/s) that is empty when the ADD comes: the agent's backoff may get
		// through before --wait-timeout, or answer 11 with RequestLimitExceeded. Either is fine; which one
		// is recorded.
		runEC2Case(t, ec2Case{
			fault: "throttle-bucket", att: exclusive,
			injected: "CreateNetworkInterface bucket burst 1, 1/s, empty at ADD; no free exclusive ENI",
			faults:   fakeec2.Faults{Rates: map[string]fakeec2.Rate{"CreateNetworkInterface": {Burst: 1, PerSecond: 1}}},
			want:     []string{"RequestLimitExceeded"}, allowSuccess: true,
			prepare: func(t *testing.T, r *harness.Region, _ *harness.Node) func() {
				burnToken(t, r, "CreateNetworkInterface")
				return func() {}
			},
		})
	})
}

// TestAttachFailure: an exclusive ADD needs a new ENI and EC2 refuses to attach it; the ENI it created
// must be deleted.
func TestAttachFailure(t *testing.T) {
	runEC2Case(t, ec2Case{
		fault: "attach-failure", att: exclusive,
		injected: "AttachNetworkInterface: AttachmentLimitExceeded (400) at rate 1.0",
		faults:   fakeec2.Faults{Errors: map[string]fakeec2.ErrorFault{"AttachNetworkInterface": {Rate: 1, Code: "AttachmentLimitExceeded"}}},
		want:     []string{"AttachmentLimitExceeded"},
	})
}

// deleteFillers deletes the filler ENIs a fill made (the undo of fillSubnet and fillIPv6Prefixes).
func deleteFillers(t *testing.T, c *ec2.Client, ids []string) {
	for _, id := range ids {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if _, err := c.DeleteNetworkInterface(ctx, &ec2.DeleteNetworkInterfaceInput{NetworkInterfaceId: aws.String(id)}); err != nil {
			t.Errorf("delete filler ENI %s: %v", id, err)
		}
		cancel()
	}
}

// fillSubnet takes every free address of the card's subnet with ENIs that are not the agent's; undo
// deletes them.
func fillSubnet(t *testing.T, r *harness.Region, _ *harness.Node) func() {
	t.Helper()
	c := r.Fake().Client()
	subnet := fakeec2.CardSubnetID(card)
	var made []string
	undo := func() { deleteFillers(t, c, made); made = nil }
	t.Cleanup(undo)
	for {
		sn, ok := r.State().Subnet(subnet)
		if !ok {
			t.Fatalf("subnet %s not in fake-ec2", subnet)
		}
		if sn.Available == 0 {
			return undo
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		out, err := c.CreateNetworkInterface(ctx, &ec2.CreateNetworkInterfaceInput{
			SubnetId: aws.String(subnet), Description: aws.String("faults: subnet filler"),
			SecondaryPrivateIpAddressCount: aws.Int32(int32(min(49, sn.Available-1))),
		})
		cancel()
		if err != nil {
			t.Fatalf("fill subnet %s (%d free): %v", subnet, sn.Available, err)
		}
		made = append(made, aws.ToString(out.NetworkInterface.NetworkInterfaceId))
	}
}

// TestSubnetExhausted: the card's subnet has no free address when an exclusive ADD needs a new ENI.
func TestSubnetExhausted(t *testing.T) {
	t.Run("exclusive", func(t *testing.T) {
		runEC2Case(t, ec2Case{
			fault: "subnet-exhausted", att: exclusive,
			injected: "card 1's subnet filled by other ENIs; no free exclusive ENI",
			want:     []string{"InsufficientFreeAddressesInSubnet", fakeec2.CardSubnetID(card)},
			prepare:  fillSubnet,
		})
	})
	// Issue 14: a dual card whose subnet's IPv6 block has no /80 left (a /72, its other /80s taken by
	// other ENIs) when its first ENI is out of IPv4 addresses: the new ENI cannot get its /80, and the dual
	// ADD fails with EC2's code, holding nothing of either family.
	t.Run("ipvlan-dual", func(t *testing.T) {
		subnets, err := fakeec2.SubnetsPerCard(8)
		if err != nil {
			t.Fatal(err)
		}
		subnets[card].IPv6CIDR = "2001:db8:ec2:1::/72"
		runEC2Case(t, ec2Case{
			fault: "subnet-exhausted-ipv6", att: dualShared,
			injected: "card 1 dual in a subnet with a /72: its other /80s taken by other ENIs, its first ENI's IPv4 addresses drained",
			want:     []string{"InsufficientCidrBlocks", fakeec2.CardSubnetID(card)},
			extra:    []string{"--family", netconf.FamilyDual},
			subnets:  subnets,
			prepare: func(t *testing.T, r *harness.Region, n *harness.Node) func() {
				unfill := fillIPv6Prefixes(t, r)
				undrain := drain(t, n, netconf.FamilyDual)
				return func() { undrain(); unfill() }
			},
		})
	})
}

// fillIPv6Prefixes takes every free /80 of the card's subnet with ENIs that are not the agent's; undo
// deletes them.
func fillIPv6Prefixes(t *testing.T, r *harness.Region) func() {
	t.Helper()
	c := r.Fake().Client()
	var made []string
	undo := func() { deleteFillers(t, c, made); made = nil }
	t.Cleanup(undo)
	for n := 40; n > 0; {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		out, err := c.CreateNetworkInterface(ctx, &ec2.CreateNetworkInterfaceInput{
			SubnetId: aws.String(fakeec2.CardSubnetID(card)), Description: aws.String("faults: IPv6 prefix filler"),
			Ipv6PrefixCount: aws.Int32(int32(n)),
		})
		cancel()
		if err != nil {
			n /= 2 // fewer /80s left than asked for
			continue
		}
		made = append(made, aws.ToString(out.NetworkInterface.NetworkInterfaceId))
	}
	if len(made) == 0 {
		t.Fatal("fill IPv6 prefixes: no filler ENI made")
	}
	return undo
}

// TestLatency: 2 s on every EC2 call. A warm pool serves the ADD without EC2; an empty one needs
// CreateNetworkInterface + AttachNetworkInterface (4 s and more), beyond the fast variant's --wait-timeout.
func TestLatency(t *testing.T) {
	const latency = 2 * time.Second
	lat := fakeec2.Faults{Latency: fakeec2.Duration(latency)}
	t.Run("warm", func(t *testing.T) {
		// The warm exclusive ENI must outlive the long variant's short --surplus-delay (last flag wins).
		fc := newFaultCase(t, "latency-warm", netconf.ModeExclusive, "2 s on every EC2 call; a free exclusive ENI in the pool", "--surplus-delay", "10m")
		var worst time.Duration
		var lastErr error
		for i := range rounds() {
			// Warm the exclusive pool: ADD and DEL once without latency, let the ENI rest (--cooldown 1s).
			warm := fc.newPod(t, fmt.Sprintf("w%d", i))
			if _, err := warm.Attach(exclusive); err != nil {
				t.Fatalf("warm-up ADD: %v", err)
			}
			if err := warm.Del(); err != nil {
				t.Fatalf("warm-up DEL: %v", err)
			}
			time.Sleep(1500 * time.Millisecond)
			if err := fc.region.Fake().SetFaults(lat); err != nil {
				t.Fatal(err)
			}
			pod := fc.newPod(t, fmt.Sprintf("f%d", i))
			d, err := attachTimed(pod, exclusive)
			if d > worst || err != nil {
				worst, lastErr = d, err
			}
			if err != nil {
				t.Errorf("ADD with a warm pool under 2 s EC2 latency: %v", err)
			} else if d >= latency {
				t.Errorf("ADD with a warm pool took %s under 2 s EC2 latency: the hot path called EC2", d)
			}
			if err := fc.region.Fake().SetFaults(fakeec2.Faults{}); err != nil {
				t.Fatal(err)
			}
			if err := pod.Del(); err != nil {
				t.Errorf("DEL: %v", err)
			}
		}
		fc.run.addResult(worst, lastErr)
		fc.note("ADD ms is the slowest of the rounds")
		fc.finish(t)
	})
	t.Run("empty", func(t *testing.T) {
		fc := newFaultCase(t, "latency-empty", netconf.ModeExclusive,
			fmt.Sprintf("2 s on every EC2 call; no free exclusive ENI; --wait-timeout %s", waitTimeout()))
		for i := range rounds() {
			if err := fc.region.Fake().SetFaults(lat); err != nil {
				t.Fatal(err)
			}
			pod := fc.newPod(t, fmt.Sprintf("f%d", i))
			d, err := attachTimed(pod, exclusive)
			fc.run.addResult(d, err)
			switch code, msg := cniError(err); {
			case err == nil:
				fc.note("success within --wait-timeout")
			case code != types.ErrTryAgainLater:
				t.Errorf("ADD on an empty pool under 2 s latency: CNI code %d (%s), want 11 or success", code, msg)
			default:
				fc.note("11 once --wait-timeout ran out")
				if d > waitTimeout()+3*time.Second {
					t.Errorf("ADD answered 11 after %s, want about --wait-timeout %s", d, waitTimeout())
				}
			}
			if err := fc.region.Fake().SetFaults(fakeec2.Faults{}); err != nil {
				t.Fatal(err)
			}
			if err := pod.Del(); err != nil {
				t.Errorf("DEL: %v", err)
			}
			fc.endRound(t, i, pod, fc.recover(t, i, exclusive, "ADD after the latency cleared"))
		}
		fc.finish(t)
	})
}

// waitCall waits until fake-ec2 has answered action successfully more than before times.
func waitCall(t *testing.T, r *harness.Region, action string, before int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for r.State().Calls[action]["ok"] <= before {
		if time.Now().After(deadline) {
			t.Fatalf("no successful %s within %s", action, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestAgentKilled: the agent is SIGKILLed while an exclusive ADD is in flight (its ENI created, the attach
// held 3 s by fake-ec2). The runtime sees 11; after the agent restarts and the runtime DELs, nothing leaks
// (the detached ENI the dead agent created is the restarted agent's to delete).
func TestAgentKilled(t *testing.T) {
	fc := newFaultCase(t, "agent-killed", netconf.ModeExclusive,
		"SIGKILL of the agent after CreateNetworkInterface, during a 3 s AttachNetworkInterface")
	for i := range rounds() {
		slowAction(t, fc.region, "AttachNetworkInterface", 3*time.Second)
		before := fc.region.State().Calls["CreateNetworkInterface"]["ok"]
		pod := fc.newPod(t, fmt.Sprintf("f%d", i))
		done := attachAsync(pod, exclusive)
		waitCall(t, fc.region, "CreateNetworkInterface", before, 10*time.Second)
		time.Sleep(200 * time.Millisecond) // into the attach
		pid := fc.node.AgentPID()
		if pid == 0 {
			t.Fatal("agent not running")
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatalf("kill agent: %v", err)
		}
		res := <-done
		fc.run.addResult(res.d, res.err)
		orphans := 0
		for _, e := range fc.node.ENIs(fc.region.State()) {
			if e.Status == "available" {
				orphans++
			}
		}
		fc.note(fmt.Sprintf("%d detached ENI(s) of the dead agent right after the kill", orphans))
		switch code, msg := cniError(res.err); {
		case res.err == nil:
			fc.note("ADD succeeded")
		case code != types.ErrTryAgainLater:
			t.Errorf("ADD with the agent killed: CNI code %d (%s), want 11", code, msg)
		default:
			fc.note("11: agent unavailable")
		}
		// StopAgent reaps the dead agent (and says it had died by itself).
		if err := fc.node.StopAgent(); err == nil {
			t.Errorf("StopAgent after SIGKILL: no error, want one saying the agent had exited")
		}
		if err := fc.region.Fake().SetFaults(fakeec2.Faults{}); err != nil {
			t.Fatal(err)
		}
		if err := fc.node.StartAgent(); err != nil {
			t.Fatal(err)
		}
		if err := fc.node.WaitReady(); err != nil {
			t.Fatal(err)
		}
		// The runtime DELs the failed ADD, then retries with a new sandbox.
		if err := pod.Del(); err != nil {
			t.Errorf("DEL after the agent restarted: %v", err)
		}
		fc.endRound(t, i, pod, fc.recover(t, i, exclusive, "ADD after the agent restarted"))
	}
	fc.finish(t)
}

// TestNetnsDeleted: the runtime deletes the pod's netns (unmounts and removes its path) while an exclusive
// ADD waits for EC2. The plugin holds the netns open, so the ADD may finish into it; the DEL then finds no
// netns and must still release the allocation.
func TestNetnsDeleted(t *testing.T) {
	fc := newFaultCase(t, "netns-deleted", netconf.ModeExclusive, "pod netns unmounted and removed 1 s into a 2 s CreateNetworkInterface")
	for i := range rounds() {
		slowAction(t, fc.region, "CreateNetworkInterface", 2*time.Second)
		pod := fc.newPod(t, fmt.Sprintf("f%d", i))
		done := attachAsync(pod, exclusive)
		time.Sleep(time.Second)
		if err := unix.Unmount(pod.NetNSPath, unix.MNT_DETACH); err != nil {
			t.Fatalf("unmount %s: %v", pod.NetNSPath, err)
		}
		if err := os.Remove(pod.NetNSPath); err != nil {
			t.Fatalf("remove %s: %v", pod.NetNSPath, err)
		}
		res := <-done
		fc.run.addResult(res.d, res.err)
		if res.err == nil {
			fc.note("ADD succeeded into the unlinked netns (the plugin held it open)")
		} else {
			// The netns went before the plugin opened it (a slow machine): the container is gone.
			code, msg := cniError(res.err)
			fc.note(fmt.Sprintf("ADD failed with code %d (the netns went before the plugin opened it)", code))
			if code != types.ErrUnknownContainer {
				t.Errorf("ADD with the netns deleted: code %d (%s), want success or %d", code, msg, types.ErrUnknownContainer)
			}
		}
		if err := fc.region.Fake().SetFaults(fakeec2.Faults{}); err != nil {
			t.Fatal(err)
		}
		// DEL with the netns path gone succeeds and releases the allocation.
		if err := pod.Del(); err != nil {
			t.Errorf("DEL with the netns gone: %v", err)
		}
		if _, ok, err := fc.node.Allocation(pod.ContainerID, exclusive.IfName); err != nil || ok {
			t.Errorf("after DEL with the netns gone the agent still holds the allocation (err %v)", err)
		}
		fc.endRound(t, i, pod, fc.recover(t, i, exclusive, "ADD of a new pod afterwards"))
	}
	// The fabric's ENI links are veth pairs: the ENI that was in the deleted netns lost its link with it
	// (where the kernel would move a real ENI's device back to the root netns). The agent must notice
	// and delete that ENI rather than hand it to the next pod, which the rounds and the leak count check.
	fc.finish(t)
}

// mountTmpfs mounts a tmpfs of size bytes on a new folder, unmounted when the test ends.
func mountTmpfs(t *testing.T, size int) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "state")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, fmt.Sprintf("size=%d,mode=0700", size)); err != nil {
		t.Skipf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

// fill writes a file in dir until the file system is full; it returns the file's path.
func fill(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.Create(path)
	if err != nil {
		t.Fatalf("create filler: %v", err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	for {
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, unix.ENOSPC) {
				t.Fatalf("fill %s: %v", dir, err)
			}
			break
		}
	}
	// Smaller writes take the last partial block.
	for _, n := range []int{1024, 64, 1} {
		for {
			if _, err := f.Write(buf[:n]); err != nil {
				break
			}
		}
	}
	return path
}

// TestDiskFull: the agent's --state-dir is a tiny tmpfs, filled up before an exclusive ADD. The ADD fails
// (nothing half-taken); once space returns, ADD works.
func TestDiskFull(t *testing.T) {
	nettest.RequireRoot(t)
	dir := mountTmpfs(t, 256<<10)
	fc := newFaultCase(t, "disk-full", netconf.ModeExclusive, "--state-dir on a 256 KiB tmpfs, filled before the ADD", "--state-dir", dir)
	fc.stateDir = dir // --state-dir overrides the harness's: the leak count reads the checkpoint there
	for i := range rounds() {
		filler := fill(t, dir)
		pod := fc.newPod(t, fmt.Sprintf("f%d", i))
		d, err := attachTimed(pod, exclusive)
		fc.run.addResult(d, err)
		switch code, msg := cniError(err); {
		case err == nil:
			t.Errorf("ADD with the state dir full succeeded: the allocation cannot have been checkpointed")
		case code != types.ErrTryAgainLater:
			t.Errorf("ADD with the state dir full: CNI code %d, want %d (try again later): %s", code, types.ErrTryAgainLater, msg)
		default:
			fc.note(fmt.Sprintf("CNI code %d", code))
			if !strings.Contains(msg, "no space left on device") {
				t.Errorf("ADD with the state dir full: message %q does not say the disk is full", msg)
			}
		}
		if _, ok, err := fc.node.Allocation(pod.ContainerID, exclusive.IfName); err != nil || ok {
			t.Errorf("after the failed ADD the agent holds an allocation for it (err %v)", err)
		}
		if err := os.Remove(filler); err != nil {
			t.Fatal(err)
		}
		if err := pod.Del(); err != nil {
			t.Errorf("DEL: %v", err)
		}
		fc.endRound(t, i, pod, fc.recover(t, i, exclusive, "ADD once space returned"))
	}
	fc.finish(t)
}
