package bench

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/multinic/multinic/internal/nettest"
	"github.com/multinic/multinic/internal/testing/fakeec2"
	"github.com/multinic/multinic/internal/testing/harness"
	"github.com/multinic/multinic/ipam/api"
	"github.com/multinic/multinic/ipam/eni"
)

// Figure 6's targets (issue 13).
const (
	maxScaleUpFailures = 0
	// maxScaleUpPodRatio: every pod ready at least 10x sooner than under the emulated VPC CNI policy.
	maxScaleUpPodRatio = 0.1
	// maxNodeSpread: no node starves, the p99 node ready time within 3x the p50.
	maxNodeSpread = 3
)

const (
	// scaleUpLaunch is the window in which the autoscaler's instances boot and their agents start.
	scaleUpLaunch = 3 * time.Second
	// readyPoll is how often each node's agent is asked whether it is ready.
	readyPoll = 250 * time.Millisecond
)

// scaleUpCards are trn1.32xlarge's managed cards: every card but the default one.
var scaleUpCards = cardRange(1, 7)

// launchSecondaries is the secondary addresses each launch ENI of figure 6's launch run is launched with,
// sized as the README advises: the pods the node starts with on the card (one here) plus the agent's warm
// target, so that the agent has nothing to top up after them.
const launchSecondaries = 1 + eni.DefaultWarmTarget

// TestScaleUp is figure 6: a cluster scale-up under one account's EC2 limits. A fresh region of n
// trn1.32xlarge instances (100 with -multinic.full) whose fake-ec2 throttles every class account-wide at EC2's
// published rates from the first call; the n real agents start within scaleUpLaunch of each other (an
// autoscaler's launch); each node's pod arrives when its agent reports the node ready (the scheduler waits for
// the cards' extended resources the agent publishes) and allocates cards 1-7 in order through the agent's
// socket. Three policies run one after the other, each in its own region: multinic with the ENIs its agents
// make, multinic with the ENIs the instances' launch template made (harness.LaunchENIs), and the emulated AWS
// VPC CNI multi-NIC policy. Two results: agent-made ENIs against the emulated policy, and launch ENIs
// against it, which carries the targets.
func TestScaleUp(t *testing.T) {
	nettest.RequireRoot(t)
	nodes := size(100, 3)
	agentMade := scaleUpPolicy{burstPolicy{"multinic, ENIs the agents make (agent defaults: warm target 8, min free 2, batches up to 50, 4 mutating calls/s, idle EC2 work while EC2 does not throttle)", []string{"--log-level", "info"}}, eni.DefaultWarmTarget, false}
	launch := scaleUpPolicy{burstPolicy{fmt.Sprintf("multinic, ENIs from the launch template (one per card, %d secondaries each; agent defaults)", launchSecondaries), []string{"--log-level", "info"}}, eni.DefaultWarmTarget, true}
	ref := scaleUpPolicy{burstPolicy{"VPC CNI multi-NIC policy (warm target 1, one address per call)", vpcCNIPolicyArgs}, 1, false}
	policies := []scaleUpPolicy{agentMade, launch, ref}
	res := make([]scaleUpResult, len(policies))
	for i, p := range policies {
		t.Run(strconv.Itoa(i), func(t *testing.T) { res[i] = runScaleUp(t, p, nodes) })
	}
	if t.Failed() {
		return
	}
	a, l, b := res[0], res[1], res[2]
	common := []string{
		fmt.Sprintf("What was measured: %d real multinic-agent processes (one per trn1.32xlarge instance of fake-ec2, cards 1-7 each in its own subnet, ENI links made by the fabric in each node's netns) started at random moments within %s (an autoscaler's launch). Each node's one pod arrives when its agent reports the node ready (GET /v1/node, polled every %s: the scheduler waits for the cards' extended resources, which the agent publishes once ready) and allocates cards 1-7 in order through the agent's socket, as Multus runs the delegates; an allocation that fails is counted and retried after 1 s, as kubelet retries the sandbox.", nodes, scaleUpLaunch, readyPoll),
		"fake-ec2 throttles per account, as EC2 does: one token bucket per class for all instances of the region (mutating 100 burst, 5/s; attach 50, 5/s; describe 100, 20/s), from the agents' first call. Every agent runs with its own defaults for the EC2 limiter (4 mutating calls/s; burst eni.ColdStartBurst: 2 per managed card, at least 10, so 14 here; the other classes scaled) and backoff (full jitter 200 ms - 20 s, 8 attempts).",
		fmt.Sprintf("Policies (agent flags beyond the harness's): multinic %v; the Amazon VPC CNI's multi-NIC behaviour emulated as in figure 3 with %v (its agents make their own ENI per card at start, nothing kept warm beyond one address, one address per AssignPrivateIpAddresses).", agentMade.args, ref.args),
		"Run one after the other, each on a fresh region (fresh buckets). EC2 calls are counted by fake-ec2 (every result) from the launch to the last pod; RSS and CPU from /proc of every agent at the end.",
	}
	detail := func(name string, r scaleUpResult) []string {
		return []string{
			fmt.Sprintf("Failures by error: %s %v; VPC CNI policy %v.", name, r.errors, b.errors),
			fmt.Sprintf("EC2 calls by action (every result): %s %v; VPC CNI policy %v.", name, r.byAction, b.byAction),
			fmt.Sprintf("EC2 calls served (ok) per node, by action, until the last pod had its 7 cards: %s %v; VPC CNI policy %v. Until every agent's idle work was done: %s %v; VPC CNI policy %v.",
				name, perNode(r.okByAction, nodes), perNode(b.okByAction, nodes), name, perNode(r.okSettled, nodes), perNode(b.okSettled, nodes)),
		}
	}
	title := fmt.Sprintf("scale-up of %d trn1.32xlarge nodes x 7 cards under one account's EC2 limits", nodes)
	emit(t, Result{Figure: 6, Key: "scaleup", Title: title + ": ENIs the agents make",
		Iterations: nodes, Ours: agentMade.name, Ref: ref.name, Rows: scaleUpRows(a, b, 0),
		Notes: append(append(common, detail("multinic", a)...), scaleUpFloor(nodes, len(scaleUpCards)))})
	emit(t, Result{Figure: 6, Key: "scaleup-launch", Title: title + ": ENIs from the launch template",
		Iterations: nodes, Ours: launch.name, Ref: ref.name, Rows: scaleUpRows(l, b, maxScaleUpPodRatio),
		Notes: append(append(common, detail("multinic", l)...),
			fmt.Sprintf("The launch run's instances were launched from launch template data laid out as the README's example (manifests/examples/launch-template-trn1.json; harness.LaunchENIs): the primary on card 0 and one plain ENI at device index 1 of each of cards 1-7, %d secondary addresses each, DeleteOnTermination, tagged %s=<cluster> and no node tag. The agents adopt them (launch ENIs) and serve their addresses; the agents neither create, attach nor tag them.", launchSecondaries, eni.TagCluster),
			"Where the difference comes from: the launch template. RunInstances made the ENIs and their addresses, outside the account's mutating and attach buckets the agents draw on; the same agents with ENIs they make themselves are the other result of this figure. The emulated VPC CNI policy makes its own ENI per card, as figure 3 defines it, so this compares a node launched with its ENIs against one whose CNI makes them.",
			launchBound(nodes, l))})
}

// scaleUpRows compares run r with the emulated policy's ref; podRatio is the pod rows' target (0: none).
func scaleUpRows(r, ref scaleUpResult, podRatio float64) []Row {
	spread := AtMost("node ready p99 / p50 (no node starves)", "x", Value(r.nodeSpread()), maxNodeSpread)
	spread.Ref = &Stat{N: 1, Value: ref.nodeSpread()}
	return []Row{
		Compare("time until every pod has all 7 cards (from the launch)", "s", Value(r.allPods.Seconds()), Value(ref.allPods.Seconds()), podRatio),
		Compare("pod ready time (from the launch)", "s", Summarize(seconds(r.podReady)), Summarize(seconds(ref.podReady)), podRatio),
		Compare("pod ADDs (7 cards, from the pod's arrival)", "s", Summarize(seconds(r.podAdd)), Summarize(seconds(ref.podAdd)), 0),
		failedADDsRow(r.failures, ref.failures, maxScaleUpFailures),
		Compare("time until every node is ready (from the launch)", "s", Value(r.allNodes.Seconds()), Value(ref.allNodes.Seconds()), 0),
		Compare("node ready time (from its agent's start)", "s", Summarize(seconds(r.nodeReady)), Summarize(seconds(ref.nodeReady)), 0),
		spread,
		Compare("mutating EC2 calls", "calls", Value(float64(r.mutating)), Value(float64(ref.mutating)), 0),
		Compare("mutating EC2 calls EC2 served (ok)", "calls", Value(float64(r.mutatingOK)), Value(float64(ref.mutatingOK)), 0),
		Compare("time until every agent's idle work is done (DeleteOnTermination on every ENI, every card at its warm target; from the launch)", "s", Value(r.allSettled.Seconds()), Value(ref.allSettled.Seconds()), 0),
		Compare("mutating EC2 calls EC2 served until then (ok)", "calls", Value(float64(r.mutatingSettledOK)), Value(float64(ref.mutatingSettledOK)), 0),
		Compare("attach/detach EC2 calls", "calls", Value(float64(r.attach)), Value(float64(ref.attach)), 0),
		Compare("describe EC2 calls", "calls", Value(float64(r.describe)), Value(float64(ref.describe)), 0),
		Compare("throttled EC2 calls (RequestLimitExceeded)", "calls", Value(float64(r.throttled)), Value(float64(ref.throttled)), 0),
		Compare("agents' RSS in total (VmRSS, at the end)", "MiB", Value(r.rss), Value(ref.rss), 0),
		Compare("agents' peak RSS in total (VmHWM)", "MiB", Value(r.hwm), Value(ref.hwm), 0),
		Compare("agents' CPU time in total", "s", Value(r.cpu.Seconds()), Value(ref.cpu.Seconds()), 0),
	}
}

// scaleUpPolicy is a pool policy of figure 6 and its warm target (an agent's idle work is done once every
// card holds it again), and whether the instances are launched with their ENIs.
type scaleUpPolicy struct {
	burstPolicy
	warm int
	// launchENIs: the instances are launched with one ENI per managed card (harness.LaunchENIs).
	launchENIs bool
}

// scaleUpFloor is what the account limits alone allow: each node's cards need a create and an attach
// before its pod is served (multinic: nothing else), and the emulated VPC CNI policy sends a
// DeleteOnTermination and a top-up per card too, with nothing deferred.
func scaleUpFloor(nodes, cards int) string {
	mut, att := fakeec2.PublishedRates[fakeec2.ClassMutate], fakeec2.PublishedRates[fakeec2.ClassAttach]
	floor := func(calls int, r fakeec2.Rate) float64 { return max(0, float64(calls-r.Burst)/r.PerSecond) }
	creates, attaches := nodes*cards, nodes*cards
	ours := max(floor(creates, mut), floor(attaches, att))
	ref := max(floor(3*creates, mut), floor(attaches, att))
	s := fmt.Sprintf("The floor the account's limits put on the last pod: %d attaches through the attach bucket (%d burst, %g/s) take %.0f s, %d creates through the mutating bucket (%d, %g/s) %.0f s: %.0f s for multinic; the emulated policy's %d mutating calls (create, DeleteOnTermination, top-up per card) %.0f s.",
		attaches, att.Burst, att.PerSecond, floor(attaches, att), creates, mut.Burst, mut.PerSecond, floor(creates, mut), ours, 3*creates, ref)
	if ref == 0 {
		return s + " At this size the buckets' bursts hold every call."
	}
	return s + fmt.Sprintf(" Agent-made ENIs cannot beat the attach floor: the ratio is at best %.2f, whatever the pacing, where the target asks for 0.1; that is why the target is carried by the launch run.", ours/ref)
}

// launchBound is what bounds the launch run r: no create, attach or assign stands before a pod, so only the
// describe bucket is drawn on at start, by each agent's Describe calls (discovery: DescribeInstanceTypes, its
// instance's DescribeNetworkInterfaces, DescribeSubnets; then its first reconcile's).
func launchBound(nodes int, r scaleUpResult) string {
	d := fakeec2.PublishedRates[fakeec2.ClassDescribe]
	served := 0
	for action, n := range r.okByAction {
		if strings.HasPrefix(action, "Describe") {
			served += n
		}
	}
	return fmt.Sprintf("What bounds the launch run: no mutating or attach call stands before a pod (%d mutating and %d attach calls until the last pod: the ENIs and addresses exist from the launch), so only the agents' Describe calls at start draw on the account's buckets: %d served until the last pod (%.1f per agent; %d sent, the rest throttled and retried) through the describe bucket (%d burst, %g/s) take %.0f s; the rest is the launch window (%s), the agents' own start and their links.",
		r.mutating, r.attach, served, float64(served)/float64(nodes), r.describe, d.Burst, d.PerSecond, max(0, float64(served-d.Burst)/d.PerSecond), scaleUpLaunch)
}

// perNode is calls by action divided by the nodes, rounded to a tenth.
func perNode(calls map[string]int, nodes int) map[string]float64 {
	out := make(map[string]float64, len(calls))
	for action, n := range calls {
		out[action] = math.Round(float64(n)/float64(nodes)*10) / 10
	}
	return out
}

type scaleUpResult struct {
	nodeReady, podReady, podAdd           []time.Duration
	allNodes, allPods                     time.Duration
	failures                              int
	errors                                map[string]int
	mutating, attach, describe, throttled int
	mutatingOK                            int // mutating calls EC2 served: what bounds the scale-up at 5/s
	byAction                              map[string]int
	okByAction                            map[string]int // calls EC2 served until the last pod
	// allSettled: when every agent's idle work was done; okSettled and mutatingSettledOK the calls served until then.
	allSettled        time.Duration
	okSettled         map[string]int
	mutatingSettledOK int
	rss, hwm          float64 // MiB, summed over the agents
	cpu               time.Duration
}

// nodeSpread is the p99 node ready time over the p50.
func (r scaleUpResult) nodeSpread() float64 {
	s := Summarize(seconds(r.nodeReady))
	if s.Value == 0 {
		return 0
	}
	return s.P99 / s.Value
}

func runScaleUp(t *testing.T, p scaleUpPolicy, nodes int) scaleUpResult {
	cfg := harness.Config{InstanceType: "trn1.32xlarge", Nodes: nodes, ManagedCards: scaleUpCards,
		NoAgents: true, AgentDefaults: true, AgentArgs: p.args, ReadyTimeout: 15 * time.Minute}
	if p.launchENIs {
		cfg.LaunchTemplate = harness.LaunchENIs(scaleUpCards, launchSecondaries)
	}
	region := harness.NewRegion(t, cfg)
	fake := region.Fake()
	if err := fake.SetFaults(throttleAll); err != nil {
		t.Fatal(err)
	}
	// Teardown releases and detaches through a throttled fake otherwise.
	t.Cleanup(func() { _ = fake.SetFaults(fakeec2.Faults{}) })
	// One real netns path for every request's "netns": the agents' GC keeps an allocation whose netns exists.
	netnsPod, err := region.Node(0).NewPod("scale")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = netnsPod.Remove() })

	res := scaleUpResult{errors: map[string]int{}}
	deadline := time.Now().Add(time.Duration(size(1200, 180)) * time.Second)
	before := region.State().Calls
	var (
		mu sync.Mutex
		wg sync.WaitGroup
	)
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	launch := time.Now()
	for i, n := range region.Nodes() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			time.Sleep(rand.N(scaleUpLaunch))
			started := time.Now()
			if err := n.StartAgent(); err != nil {
				t.Error(err)
				return
			}
			if err := waitNodeReady(ctx, n); err != nil {
				t.Errorf("%s: %v (log %s)", n.Name, err, n.AgentLog())
				return
			}
			ready := time.Now()
			pod := newFakePod(fmt.Sprintf("scale-%d", i), netnsPod.NetNSPath)
			failures, errs := allocateAll(ctx, n.Client, pod, scaleUpCards)
			done := time.Now()
			mu.Lock()
			defer mu.Unlock()
			res.failures += failures
			for k, v := range errs {
				res.errors[k] += v
			}
			res.nodeReady = append(res.nodeReady, ready.Sub(started))
			res.allNodes = max(res.allNodes, ready.Sub(launch))
			if ctx.Err() != nil {
				t.Errorf("%s: pod not ready before the deadline", n.Name)
				return
			}
			res.podReady = append(res.podReady, done.Sub(launch))
			res.podAdd = append(res.podAdd, done.Sub(ready))
			res.allPods = max(res.allPods, done.Sub(launch))
		}()
	}
	wg.Wait()
	after := region.State().Calls
	m0, d0, th0 := callCounts(before)
	m1, d1, th1 := callCounts(after)
	res.mutating, res.describe, res.throttled = m1-m0, d1-d0, th1-th0
	res.byAction = callDiff(before, after)
	res.attach = res.byAction["AttachNetworkInterface"] + res.byAction["DetachNetworkInterface"]
	res.mutating -= res.attach
	res.okByAction, res.mutatingOK = served(before, after)
	if err := waitSettled(ctx, region, p.warm); err != nil {
		t.Errorf("idle work not done: %v", err)
	}
	res.allSettled = time.Since(launch)
	res.okSettled, res.mutatingSettledOK = served(before, region.State().Calls)
	for _, n := range region.Nodes() {
		s := sampleProc(n.AgentPID())
		if s.sampledErr != nil {
			t.Errorf("%s: %v", n.Name, s.sampledErr)
			continue
		}
		res.rss, res.hwm, res.cpu = res.rss+s.rss, res.hwm+s.hwm, res.cpu+s.cpu
	}
	nr := Summarize(seconds(res.nodeReady))
	t.Logf("%s: %d nodes ready in %s (p50 %.1fs p99 %.1fs), %d pods ready in %s, %d failed ADDs, calls %v, served %v; idle work done at %s (served %v); agents %.0f MiB, %.1f s CPU",
		p.name, len(res.nodeReady), res.allNodes, nr.Value, nr.P99, len(res.podReady), res.allPods, res.failures, res.byAction, res.okByAction,
		res.allSettled, res.okSettled, res.rss, res.cpu.Seconds())
	_ = fake.SetFaults(fakeec2.Faults{})
	return res
}

// served is the calls fake-ec2 served (ok) between two counts, by action, and the mutating ones among them.
func served(before, after map[string]map[string]int) (byAction map[string]int, mutating int) {
	byAction = map[string]int{}
	for action, byResult := range after {
		n := byResult["ok"] - before[action]["ok"]
		if n == 0 || strings.HasPrefix(action, "IMDS.") {
			continue
		}
		byAction[action] = n
		if fakeec2.MutatingAction(action) {
			mutating += n
		}
	}
	return byAction, mutating
}

// waitSettled polls until every agent's idle work is done: DeleteOnTermination on every attached ENI but the
// instances' own, and every managed card's warm pool back at warm.
func waitSettled(ctx context.Context, region *harness.Region, warm int) error {
	for {
		err := settledErr(ctx, region, warm)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(time.Second):
		}
	}
}

func settledErr(ctx context.Context, region *harness.Region, warm int) error {
	for _, x := range region.State().ENIs {
		if x.Status == "in-use" && !x.Primary && !x.DeleteOnTermination {
			return fmt.Errorf("ENI %s on card %d of %s without DeleteOnTermination", x.ID, x.Card, x.InstanceID)
		}
	}
	for _, n := range region.Nodes() {
		st, err := n.Client.Node(ctx)
		if err != nil {
			return fmt.Errorf("%s: %w", n.Name, err)
		}
		for _, c := range st.Cards {
			if c.Shared.Warm < warm {
				return fmt.Errorf("%s card %d: %d warm, want %d", n.Name, c.Card, c.Shared.Warm, warm)
			}
		}
	}
	return nil
}

// waitNodeReady polls the agent's node status until every managed card is ready.
func waitNodeReady(ctx context.Context, n *harness.Node) error {
	var last error
	for {
		st, err := n.Client.Node(ctx)
		if err == nil && st.Ready {
			return nil
		}
		if err == nil {
			err = errors.New("not ready")
			for _, c := range st.Cards {
				if !c.Ready {
					err = fmt.Errorf("card %d: %s (last error %s)", c.Card, c.Reason, c.LastError)
					break
				}
			}
		}
		last = err
		if _, serr := os.Stat(fmt.Sprintf("/proc/%d", n.AgentPID())); serr != nil { // reaped: it exited
			return fmt.Errorf("agent exited: %w", last)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not ready: %w", last)
		case <-time.After(readyPoll):
		}
	}
}

// allocateAll allocates pod's cards in order through c, each retried after 1 s until it succeeds or ctx
// ends; it returns the failed attempts, counted by error.
func allocateAll(ctx context.Context, c *api.Client, pod fakePod, cards []int) (failures int, errs map[string]int) {
	errs = map[string]int{}
	for k, card := range cards {
		f, e := allocateOne(ctx, c, pod, card, fmt.Sprintf("net%d", k+1))
		failures += f
		for kind, n := range e {
			errs[kind] += n
		}
	}
	return failures, errs
}

// allocateOne allocates one of pod's cards through c, retried after 1 s until it succeeds or ctx ends.
func allocateOne(ctx context.Context, c *api.Client, pod fakePod, card int, ifName string) (failures int, errs map[string]int) {
	errs = map[string]int{}
	for ctx.Err() == nil {
		_, err := pod.allocate(ctx, c, card, ifName)
		if err == nil {
			break
		}
		failures++
		errs[errorKind(err)]++
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
	return failures, errs
}

func TestNodeSpread(t *testing.T) {
	for _, tc := range []struct {
		ready []time.Duration
		want  float64
	}{
		{nil, 0},
		{[]time.Duration{time.Second}, 1},
		{[]time.Duration{4 * time.Second, time.Second, 2 * time.Second, 3 * time.Second}, 2}, // p99 4 s, p50 2 s
		{[]time.Duration{0, 0, 0}, 0},
	} {
		if got := (scaleUpResult{nodeReady: tc.ready}).nodeSpread(); got != tc.want {
			t.Errorf("nodeSpread(%v) = %g, want %g", tc.ready, got, tc.want)
		}
	}
}
