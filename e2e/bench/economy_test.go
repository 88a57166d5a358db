package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/multinic/multinic/internal/nettest"
	"github.com/multinic/multinic/internal/testing/fakeec2"
	"github.com/multinic/multinic/internal/testing/harness"
	"github.com/multinic/multinic/ipam/api"
)

// Figure 3's targets.
const (
	maxCallsPerAttachment = 0.05
	maxBurstFailures      = 0
	// maxCallsPerAttachmentIPv6: issue 14's, for cards of family ipv6 (/80 prefixes).
	maxCallsPerAttachmentIPv6 = 0.01
)

// poolArgs are the agent's shipped pool defaults (cmd/multinic-agent), spelled out so that the harness's
// test-friendly warm target does not apply; info logs, as the DaemonSet runs.
var poolArgs = []string{"--warm-target", "8", "--min-free", "2", "--max-batch", "50", "--log-level", "info"}

// clockTicks is USER_HZ, the unit of utime and stime in /proc/<pid>/stat (100 on Linux).
const clockTicks = 100

// procSample is a process's CPU time and memory at one moment.
type procSample struct {
	at         time.Time
	cpu        time.Duration // utime + stime
	rss, hwm   float64       // MiB: VmRSS, VmHWM
	sampledErr error
}

func sampleProc(pid int) procSample {
	s := procSample{at: time.Now()}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		s.sampledErr = err
		return s
	}
	// Fields after the command (which may hold spaces) start with the state, field 3; utime is 14, stime 15.
	rest := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	if len(rest) < 13 {
		s.sampledErr = fmt.Errorf("short /proc/%d/stat", pid)
		return s
	}
	ut, _ := strconv.ParseInt(rest[11], 10, 64)
	st, _ := strconv.ParseInt(rest[12], 10, 64)
	s.cpu = time.Duration(ut+st) * time.Second / clockTicks
	status := fmt.Sprintf("/proc/%d/status", pid)
	kib := func(key string) float64 {
		v, _ := strconv.ParseFloat(strings.Fields(procField(status, key) + " 0")[0], 64)
		return v / 1024
	}
	s.rss, s.hwm = kib("VmRSS"), kib("VmHWM")
	return s
}

// cpuPercent is the CPU used between two samples, in percent of one CPU.
func cpuPercent(a, b procSample) float64 {
	return 100 * float64(b.cpu-a.cpu) / float64(b.at.Sub(a.at))
}

// fakePod is a pod as the agent sees it through the plugin's requests.
type fakePod struct {
	name, uid, containerID, netns string
}

func newFakePod(name, netns string) fakePod {
	return fakePod{name: name, uid: "uid-" + name, containerID: newContainerID(), netns: netns}
}

func (p fakePod) allocate(ctx context.Context, c *api.Client, card int, ifName string) (api.AllocateResponse, error) {
	return p.allocateFamily(ctx, c, card, ifName, "")
}

func (p fakePod) allocateFamily(ctx context.Context, c *api.Client, card int, ifName, family string) (api.AllocateResponse, error) {
	return c.Allocate(ctx, api.AllocateRequest{Card: card, ContainerID: p.containerID, IfName: ifName,
		PodRef: api.PodRef{PodNamespace: "default", PodName: p.name, PodUID: p.uid}, Netns: p.netns, Family: family})
}

func (p fakePod) release(ctx context.Context, c *api.Client, ifName string) error {
	_, err := c.Release(ctx, api.ReleaseRequest{ContainerID: p.containerID, IfName: ifName})
	return err
}

func cardRange(first, last int) []int {
	var cs []int
	for c := first; c <= last; c++ {
		cs = append(cs, c)
	}
	return cs
}

// TestEC2Churn is figure 3's churn (EC2 calls per attachment) and figure 5's agent RSS and CPU: pods with
// one attachment on each of 8 cards are created and deleted through the agent's socket API, a steady
// population of churnLive pods, while fake-ec2 counts calls. Runs on the host (no link is made).
func TestEC2Churn(t *testing.T) { runChurn(t, "") }

// TestEC2ChurnIPv6 is figure 3's churn with every card of family ipv6 (issue 14): addresses from each
// card's /80 prefix, which the card's ENI got with its CreateNetworkInterface.
func TestEC2ChurnIPv6(t *testing.T) { runChurn(t, api.FamilyIPv6) }

// runChurn is the churn of figure 3 on cards of family ("" for the agent's default, ipv4); figure 5 is
// measured with ipv4.
func runChurn(t *testing.T, family string) {
	nettest.RequireRoot(t)
	cards := cardRange(1, 8)
	args := poolArgs
	if family != "" {
		args = append([]string{"--family", family}, poolArgs...)
	}
	region := harness.NewRegion(t, harness.Config{InstanceType: "trn1n.32xlarge", ManagedCards: cards, AgentArgs: args})
	node := region.Node(0)
	settle(t, region, 2*time.Second, time.Minute)
	netnsPod, err := node.NewPod("churn") // a real netns path for the requests' "netns" (the agent's reclaim checks it)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = netnsPod.Remove() })

	pid := node.AgentPID()
	if pid == 0 {
		t.Fatal("agent not running")
	}
	idle := size(10, 2)
	idle0 := sampleProc(pid)
	time.Sleep(time.Duration(idle) * time.Second)
	idle1 := sampleProc(pid)

	npods, live, workers := size(1000, 20), 16, 4
	ctx := context.Background()
	c := api.NewClient(node.Socket, 0)
	defer c.Close()
	before := region.State().Calls
	start := sampleProc(pid)
	var (
		mu               sync.Mutex
		allocLat, relLat []time.Duration
		wg               sync.WaitGroup
		failed           = make(chan error, workers)
	)
	// Each worker is a stream of pods, like a runtime's concurrent sandbox starts: it creates its share
	// of the pods one after the other and keeps live/workers of them, deleting its oldest after each new one.
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var pods []fakePod
			var al, rl []time.Duration
			del := func(p fakePod) error {
				for i := range cards {
					t0 := time.Now()
					if err := p.release(ctx, c, fmt.Sprintf("net%d", i+1)); err != nil {
						return err
					}
					rl = append(rl, time.Since(t0))
				}
				return nil
			}
			for i := w; i < npods; i += workers {
				p := newFakePod(fmt.Sprintf("churn-%d", i), netnsPod.NetNSPath)
				for k, card := range cards {
					t0 := time.Now()
					if _, err := p.allocateFamily(ctx, c, card, fmt.Sprintf("net%d", k+1), family); err != nil {
						failed <- fmt.Errorf("pod %d card %d: %w", i, card, err)
						return
					}
					al = append(al, time.Since(t0))
				}
				pods = append(pods, p)
				if len(pods) > live/workers {
					if err := del(pods[0]); err != nil {
						failed <- err
						return
					}
					pods = pods[1:]
				}
			}
			for _, p := range pods {
				if err := del(p); err != nil {
					failed <- err
					return
				}
			}
			mu.Lock()
			allocLat, relLat = append(allocLat, al...), append(relLat, rl...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	close(failed)
	for err := range failed {
		t.Fatal(err)
	}
	end := sampleProc(pid)
	after := region.State().Calls
	for _, s := range []procSample{idle0, idle1, start, end} {
		if s.sampledErr != nil {
			t.Fatal(s.sampledErr)
		}
	}

	m0, d0, _ := callCounts(before)
	m1, d1, _ := callCounts(after)
	byAction := callDiff(before, after)
	t.Logf("calls in the churn by action: %v", byAction)
	atts := float64(npods * len(cards))
	mut, desc := float64(m1-m0), float64(d1-d0)
	churnTime := end.at.Sub(start.at)
	key, title := "churn", fmt.Sprintf("EC2 calls during a churn of %d pods x %d cards", npods, len(cards))
	limit, what := maxCallsPerAttachment, fmt.Sprintf("What was measured: the agent, driven through its socket API (api.Client Allocate/Release with the fields the plugin sends: card, containerID, ifName net1..net8, pod namespace/name/UID, netns), not the plugin: EC2 economy is the agent's property, and this runs on the host without ipvlan. %d pods in %d concurrent streams (like a runtime's parallel sandbox starts), each pod allocating one address on each of cards %v in order; %d pods live at a time (each stream deletes its oldest after each new one). As fast as the agent answers.", npods, workers, cards, live)
	if family == api.FamilyIPv6 {
		key, title = "churn-ipv6", title+", family ipv6 (/80 prefixes)"
		limit, what = maxCallsPerAttachmentIPv6, fmt.Sprintf("The churn of figure 3 (%d pods in %d streams, %d live, one attachment on each of cards %v, through the agent's socket API) with the agents' --family ipv6: each card's ENI got one /80 with its CreateNetworkInterface, before the count starts; a /80 is 2^48 addresses, given out in order and never twice, so the pool never calls EC2 again.", npods, workers, live, cards)
	}
	emit(t, Result{Figure: 3, Key: key, Title: title, Iterations: npods, Ours: "multinic agent",
		Rows: []Row{
			AtMost("EC2 calls per attachment (mutating + describe)", "calls", Value((mut+desc)/atts), limit),
			{Metric: "mutating EC2 calls per attachment", Unit: "calls", Ours: Value(mut / atts)},
			{Metric: "describe EC2 calls per attachment", Unit: "calls", Ours: Value(desc / atts)},
			{Metric: "EC2 calls in the churn (mutating + describe)", Unit: "calls", Ours: Value(mut + desc)},
			{Metric: "attachments (allocate + release each)", Unit: "count", Ours: Value(atts)},
			{Metric: "churn wall time", Unit: "s", Ours: Value(churnTime.Seconds())},
			{Metric: "agent allocate round trip", Unit: "ms", Ours: Summarize(Millis(allocLat))},
			{Metric: "agent release round trip", Unit: "ms", Ours: Summarize(Millis(relLat))},
		},
		Notes: []string{
			what,
			fmt.Sprintf("Calls counted by fake-ec2 (every result) from after the pools settled to the end of the churn: %d mutating, %d describe (IMDS not counted); by action: %v.", m1-m0, d1-d0, byAction),
			fmt.Sprintf("Agent flags: internal/testing/harness's (--cooldown 1s --refill-interval 1s --ec2-rate 100 --ec2-burst 100) then %v; trn1n.32xlarge.", args),
		}})
	if family == api.FamilyIPv6 {
		return // figure 5's agent row is the IPv4 churn's
	}
	emit(t, Result{Figure: 5, Key: "agent", Title: "agent RSS and CPU, idle and under the churn above", Iterations: npods,
		Ours: "multinic-agent",
		Rows: []Row{
			{Metric: "RSS idle (VmRSS, 8 cards ready)", Unit: "MiB", Ours: Value(idle1.rss)},
			{Metric: "RSS after the churn (VmRSS)", Unit: "MiB", Ours: Value(end.rss)},
			{Metric: "peak RSS (VmHWM)", Unit: "MiB", Ours: Value(end.hwm)},
			{Metric: fmt.Sprintf("CPU idle (%d s)", idle), Unit: "% of a CPU", Ours: Value(cpuPercent(idle0, idle1))},
			{Metric: "CPU under churn", Unit: "% of a CPU", Ours: Value(cpuPercent(start, end))},
			{Metric: "CPU time per 1,000 attachments (allocate + release)", Unit: "s", Ours: Value((end.cpu - start.cpu).Seconds() * 1000 / atts)},
		},
		Notes: []string{fmt.Sprintf("From /proc/<pid>/status and /proc/<pid>/stat (utime+stime at USER_HZ=%d) of the agent process internal/testing/harness started; the churn of figure 3 (%.0f attachments in %.1f s).", clockTicks, atts, churnTime.Seconds())}})
}

// burstPolicy is an agent pool policy for the burst.
type burstPolicy struct {
	name string
	args []string
}

// TestEC2Burst is figure 3's burst: burstPods pods with one attachment on each of 7 cards arrive at once
// under fake-ec2's throttling at EC2's published rates; multinic's pool policy against "warm target 1,
// one assign per attachment", each on its own fresh region with the same fake and the same agent rate limit.
func TestEC2Burst(t *testing.T) {
	nettest.RequireRoot(t)
	npods := size(100, 3)
	policies := [2]burstPolicy{
		{"multinic (warm target 8, min free 2, batches up to 50)", poolArgs},
		{"warm target 1, one assign per attachment", vpcCNIPolicyArgs},
	}
	var res [2]burstResult
	for i, p := range policies {
		t.Run(strconv.Itoa(i), func(t *testing.T) { res[i] = runBurst(t, p, npods) })
	}
	if t.Failed() {
		return
	}
	a, b := res[0], res[1]
	failRow := failedADDsRow(a.failures, b.failures, maxBurstFailures)
	emit(t, Result{Figure: 3, Key: "burst", Title: fmt.Sprintf("burst of %d pods x 7 cards under EC2 throttling", npods),
		Iterations: npods, Ours: policies[0].name, Ref: policies[1].name,
		Rows: []Row{
			Compare("time until every pod is ready", "s", Value(a.allReady.Seconds()), Value(b.allReady.Seconds()), 0),
			failRow,
			Compare("pod ready time (all 7 cards)", "s", Summarize(seconds(a.podReady)), Summarize(seconds(b.podReady)), 0),
			Compare("pods ready", "count", Value(float64(a.ready)), Value(float64(b.ready)), 0),
			Compare("mutating EC2 calls", "calls", Value(float64(a.mutating)), Value(float64(b.mutating)), 0),
			Compare("describe EC2 calls", "calls", Value(float64(a.describe)), Value(float64(b.describe)), 0),
			Compare("throttled EC2 calls (RequestLimitExceeded)", "calls", Value(float64(a.throttled)), Value(float64(b.throttled)), 0),
		},
		Notes: []string{
			"What was measured: the agent, driven through its socket API as in the churn. All pods start at once; each allocates cards 1-7 in order (as Multus runs delegates); an allocation that fails (the agent's \"try again\" after --wait-timeout 10s, i.e. a CNI error 11 the runtime would see) is counted and retried after 1 s, as kubelet retries the sandbox.",
			"fake-ec2 throttles every action class at EC2's published rates (mutating 100 burst, 5/s; attach 50, 5/s; describe 100, 20/s) from after the pools settled. Both agents use internal/testing/harness's flags (--ec2-rate 100 --ec2-burst 100: the agent's own limiter is not the bottleneck, EC2's is) and --cooldown 1s; trn1.32xlarge, cards 1-7.",
			fmt.Sprintf("Policies (agent flags): multinic %v; the Amazon VPC CNI's behaviour on cards > 0 emulated with %v (one address per AssignPrivateIpAddresses, nothing kept warm beyond one).", policies[0].args, policies[1].args),
			"Run one after the other (a burst cannot be interleaved), each on a fresh region.",
			fmt.Sprintf("Failures by error: multinic %v; warm target 1 %v.", a.errors, b.errors),
			fmt.Sprintf("EC2 calls by action (every result): multinic %v; warm target 1 %v.", a.byAction, b.byAction),
		}})
}

type burstResult struct {
	errors                        map[string]int // failures by error, container IDs cut
	allReady                      time.Duration
	podReady                      []time.Duration
	ready, failures               int
	mutating, describe, throttled int
	byAction                      map[string]int
}

// errorKind is an allocate error without what differs per call (pod, container ID, how long it waited), so
// that failures group by cause.
func errorKind(err error) string {
	msg := podRef.ReplaceAllString(err.Error(), "<pod>")
	msg = waited.ReplaceAllString(msg, "waited ~${1}s")
	msg = containerRef.ReplaceAllString(msg, "container <id> interface <if>")
	if len(msg) > 400 {
		msg = msg[:400] + "..."
	}
	return msg
}

var (
	podRef       = regexp.MustCompile(`default/[a-z]+-\d+ \(uid uid-[a-z]+-\d+\)`)
	waited       = regexp.MustCompile(`waited (\d+)(\.\d+)?s`)
	containerRef = regexp.MustCompile(`container [0-9a-f]{64} interface net\d+`)
)

func seconds(ds []time.Duration) []float64 {
	out := make([]float64, len(ds))
	for i, d := range ds {
		out[i] = d.Seconds()
	}
	return out
}

func runBurst(t *testing.T, p burstPolicy, npods int) burstResult {
	cards := cardRange(1, 7)
	region := harness.NewRegion(t, harness.Config{InstanceType: "trn1.32xlarge", ManagedCards: cards, AgentArgs: p.args})
	node := region.Node(0)
	settle(t, region, 2*time.Second, time.Minute)
	netnsPod, err := node.NewPod("burst")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = netnsPod.Remove() })
	fake := region.Fake()
	if err := fake.SetFaults(throttleAll); err != nil {
		t.Fatal(err)
	}
	// Teardown releases and detaches through a throttled fake otherwise.
	t.Cleanup(func() { _ = fake.SetFaults(fakeec2.Faults{}) })

	deadline := time.Now().Add(time.Duration(size(600, 120)) * time.Second)
	before := region.State().Calls
	c := api.NewClient(node.Socket, 0)
	defer c.Close()
	var (
		mu  sync.Mutex
		res = burstResult{errors: map[string]int{}}
		wg  sync.WaitGroup
	)
	ctx := context.Background()
	start := time.Now()
	pods := make([]fakePod, npods)
	for i := range pods {
		pods[i] = newFakePod(fmt.Sprintf("burst-%d", i), netnsPod.NetNSPath)
		wg.Add(1)
		go func(pod fakePod) {
			defer wg.Done()
			for k, card := range cards {
				for {
					_, err := pod.allocate(ctx, c, card, fmt.Sprintf("net%d", k+1))
					if err == nil {
						break
					}
					mu.Lock()
					res.failures++
					res.errors[errorKind(err)]++
					mu.Unlock()
					if !errors.Is(err, api.ErrTryAgain) && !errors.Is(err, api.ErrUnavailable) {
						t.Logf("pod %s card %d: %v", pod.name, card, err)
					}
					if time.Now().After(deadline) {
						return
					}
					time.Sleep(time.Second)
				}
			}
			d := time.Since(start)
			mu.Lock()
			res.ready++
			res.podReady = append(res.podReady, d)
			res.allReady = max(res.allReady, d)
			mu.Unlock()
		}(pods[i])
	}
	wg.Wait()
	after := region.State().Calls
	m0, d0, th0 := callCounts(before)
	m1, d1, th1 := callCounts(after)
	res.mutating, res.describe, res.throttled = m1-m0, d1-d0, th1-th0
	res.byAction = callDiff(before, after)
	if res.ready < npods {
		t.Errorf("%s: %d of %d pods ready before the deadline", p.name, res.ready, npods)
	}
	t.Logf("%s: all %d ready in %s, %d failures, %d mutating calls", p.name, res.ready, res.allReady, res.failures, res.mutating)
	_ = fake.SetFaults(fakeec2.Faults{})
	for _, pod := range pods {
		for k := range cards {
			_ = pod.release(ctx, c, fmt.Sprintf("net%d", k+1))
		}
	}
	return res
}

// callDiff is the per-action count of calls (any result) between two snapshots, IMDS left out.
func callDiff(before, after map[string]map[string]int) map[string]int {
	d := map[string]int{}
	for action, byResult := range after {
		if strings.HasPrefix(action, "IMDS.") {
			continue
		}
		for res, n := range byResult {
			if n -= before[action][res]; n != 0 {
				d[action] += n
			}
		}
	}
	return d
}

// vpcCNIPolicyArgs are the agent flags that emulate the AWS VPC CNI's multi-NIC policy (figures 3 and 6): warm
// target 1, nothing kept ready beyond it, one address per EC2 call, and every call as soon as it is due
// (--ec2-eager: DeleteOnTermination right after the attach, as its AllocENI does, and top-ups under throttling).
var vpcCNIPolicyArgs = []string{"--warm-target", "1", "--min-free", "0", "--max-batch", "1", "--ec2-eager", "--log-level", "info"}

// failedADDsRow is the failed-ADD row of a side-by-side figure: ours against the emulated policy's, at most limit.
func failedADDsRow(ours, ref int, limit float64) Row {
	r := AtMost("failed ADDs (try again / errors the runtime sees)", "count", Value(float64(ours)), limit)
	r.Ref = &Stat{N: 1, Value: float64(ref)}
	if ref > 0 {
		r.Ratio = float64(ours) / float64(ref)
	}
	return r
}
