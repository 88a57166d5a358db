package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/multinic/multinic/internal/nettest"
	"github.com/multinic/multinic/internal/testing/fakeec2"
	"github.com/multinic/multinic/internal/testing/harness"
	"github.com/multinic/multinic/ipam/eni"
	"github.com/multinic/multinic/ipam/store"
)

// Figure 7's target (issue 13): 0 failed ADDs, and the first pods start without waiting on EC2: every card
// has a warm address for each of them when the node is ready.
const maxP5Failures = 0

// checkpointWrites is how many times the p5 node's checkpoint is written to time one write.
const checkpointWrites = 50

// TestP5Node is figure 7: one p5.48xlarge (31 managed cards, 2 ENIs each) under EC2's real limits (fake-ec2
// throttling at the published rates, the agent with its shipped defaults): the agent's cold start to ready,
// then 8 pods (one per GPU) x 31 cards arriving together, through the agent's socket.
func TestP5Node(t *testing.T) {
	nettest.RequireRoot(t)
	cards, npods := cardRange(1, size(31, 4)), size(8, 2)
	region := harness.NewRegion(t, harness.Config{InstanceType: "p5.48xlarge", ManagedCards: cards, NoAgents: true, AgentDefaults: true,
		AgentArgs: []string{"--log-level", "info"}, ReadyTimeout: 5 * time.Minute})
	node, fake := region.Node(0), region.Fake()
	if err := fake.SetFaults(throttleAll); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = fake.SetFaults(fakeec2.Faults{}) })
	netnsPod, err := node.NewPod("p5")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = netnsPod.Remove() })

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	c0 := region.State().Calls
	start := time.Now()
	if err := node.StartAgent(); err != nil {
		t.Fatal(err)
	}
	if err := waitNodeReady(ctx, node); err != nil {
		t.Fatalf("%v (log %s)", err, node.AgentLog())
	}
	readyIn := time.Since(start)
	atReady := sampleProc(node.AgentPID())
	c1 := region.State().Calls
	st, err := node.Client.Node(ctx)
	if err != nil {
		t.Fatal(err)
	}
	warmAtReady := len(cards) * 1000
	for _, c := range st.Cards {
		warmAtReady = min(warmAtReady, c.Shared.Warm)
	}

	var (
		mu       sync.Mutex
		wg       sync.WaitGroup
		podReady []time.Duration
		addLat   []time.Duration
		failures int
		errs     = map[string]int{}
	)
	podsStart := time.Now()
	for i := range npods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pod := newFakePod(fmt.Sprintf("gpu-%d", i), netnsPod.NetNSPath)
			var lat []time.Duration
			for k, card := range cards {
				t0 := time.Now()
				f, e := allocateOne(ctx, node.Client, pod, card, fmt.Sprintf("net%d", k+1))
				lat = append(lat, time.Since(t0))
				mu.Lock()
				failures += f
				for k, v := range e {
					errs[k] += v
				}
				mu.Unlock()
			}
			mu.Lock()
			podReady = append(podReady, time.Since(podsStart))
			addLat = append(addLat, lat...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	allPods := time.Since(podsStart)
	c2 := region.State().Calls
	end := sampleProc(node.AgentPID())
	for _, s := range []procSample{atReady, end} {
		if s.sampledErr != nil {
			t.Fatal(s.sampledErr)
		}
	}

	// The checkpoint as the agent left it, and the time of one write of it through the store's crash-safe
	// path (temp file, fsync, rename, fsync dir) on the same filesystem, as every change writes it.
	cpPath := filepath.Join(node.StateDir, store.CheckpointFile)
	fi, err := os.Stat(cpPath)
	if err != nil {
		t.Fatal(err)
	}
	cp, ok, err := node.Checkpoint()
	if err != nil || !ok {
		t.Fatalf("load checkpoint: %v (found %v)", err, ok)
	}
	fs, err := store.NewFileStore(filepath.Join(filepath.Dir(node.StateDir), "bench-store"))
	if err != nil {
		t.Fatal(err)
	}
	if err := fs.Lock(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = fs.Unlock() }()
	var writes []time.Duration
	for range checkpointWrites {
		t0 := time.Now()
		if err := fs.Save(cp); err != nil {
			t.Fatal(err)
		}
		writes = append(writes, time.Since(t0))
	}

	m0, d0, th0 := callCounts(c0)
	m1, d1, th1 := callCounts(c1)
	m2, d2, th2 := callCounts(c2)
	startCalls, podCalls := callDiff(c0, c1), callDiff(c1, c2)
	addMs := Summarize(Millis(addLat))
	t.Logf("p5: ready in %s (%d mutating, %d describe, %d throttled: %v), %d pods x %d cards in %s (ADD p99 %.1f ms, %d failures, calls %v), checkpoint %d bytes, write p50 %.2f ms",
		readyIn, m1-m0, d1-d0, th1-th0, startCalls, npods, len(cards), allPods, addMs.P99, failures, podCalls, fi.Size(), Summarize(Millis(writes)).Value)
	failRow := AtMost("failed ADDs", "count", Value(float64(failures)), maxP5Failures)
	beyondWarm := AtMost("pods beyond the fewest warm addresses of a card at ready (0: no ADD waits on EC2)", "count",
		Value(float64(max(npods-warmAtReady, 0))), 0)
	emit(t, Result{Figure: 7, Key: "p5", Title: fmt.Sprintf("p5.48xlarge: cold start of %d managed cards, then %d pods x %d cards", len(cards), npods, len(cards)),
		Iterations: npods, Ours: "multinic agent (shipped defaults)",
		Rows: []Row{
			{Metric: "cold start to ready (every card's ENI attached, link up)", Unit: "s", Ours: Value(readyIn.Seconds())},
			{Metric: "warm addresses per card at ready (fewest)", Unit: "count", Ours: Value(float64(warmAtReady))},
			beyondWarm,
			{Metric: "mutating and attach EC2 calls of the cold start", Unit: "calls", Ours: Value(float64(m1 - m0))},
			{Metric: "EC2 describe calls of the cold start", Unit: "calls", Ours: Value(float64(d1 - d0))},
			{Metric: "throttled EC2 calls of the cold start", Unit: "calls", Ours: Value(float64(th1 - th0))},
			{Metric: fmt.Sprintf("time until all %d pods have all %d cards", npods, len(cards)), Unit: "s", Ours: Value(allPods.Seconds())},
			{Metric: "pod ready time (from the pods' arrival)", Unit: "s", Ours: Summarize(seconds(podReady))},
			{Metric: "agent allocate round trip (8 pods' ADDs at once)", Unit: "ms", Ours: addMs},
			failRow,
			{Metric: "EC2 calls while the pods started (background refill)", Unit: "calls", Ours: Value(float64(m2 - m1 + d2 - d1))},
			{Metric: "throttled EC2 calls while the pods started", Unit: "calls", Ours: Value(float64(th2 - th1))},
			{Metric: "agent RSS at ready (VmRSS)", Unit: "MiB", Ours: Value(atReady.rss)},
			{Metric: "agent RSS after the pods (VmRSS)", Unit: "MiB", Ours: Value(end.rss)},
			{Metric: "agent peak RSS (VmHWM)", Unit: "MiB", Ours: Value(end.hwm)},
			{Metric: "agent CPU time, cold start", Unit: "s", Ours: Value(atReady.cpu.Seconds())},
			{Metric: "agent CPU time, the pods' ADDs", Unit: "s", Ours: Value((end.cpu - atReady.cpu).Seconds())},
			{Metric: "checkpoint size after the pods", Unit: "KiB", Ours: Value(float64(fi.Size()) / 1024)},
			{Metric: "checkpoint write (one change: temp, fsync, rename, fsync dir)", Unit: "ms", Ours: Summarize(Millis(writes))},
		},
		Notes: []string{
			fmt.Sprintf("What was measured: one p5.48xlarge of fake-ec2 (32 cards x 2 ENIs; cards %d-%d managed, each in its own subnet), fake-ec2 throttling every class at EC2's published rates from the agent's first call, the real multinic-agent with its shipped defaults (warm target %d, min free %d, batches up to %d, %g mutating calls/s with the cold start's burst, 2 per managed card: %d; plus the harness's --refill-interval 1s). Ready is GET /v1/node's ready, polled every %s.", cards[0], cards[len(cards)-1], eni.DefaultWarmTarget, eni.DefaultMinFree, eni.DefaultMaxBatch, eni.DefaultEC2Rate, eni.ColdStartBurst(len(cards)), readyPoll),
			fmt.Sprintf("Then %d pods arrive together (one per GPU), each allocating cards %d-%d in order through the agent's socket; a failed allocation is counted and retried after 1 s.", npods, cards[0], cards[len(cards)-1]),
			fmt.Sprintf("Checkpoint: the agent's file after the pods (%d allocations); the write time is %d writes of that checkpoint through ipam/store's FileStore.Save on the same filesystem (%s), as the agent writes it after each change.", npods*len(cards), checkpointWrites, filepath.Dir(node.StateDir)),
			fmt.Sprintf("EC2 calls by action, cold start: %v; while the pods started: %v. Failures by error: %v.", startCalls, podCalls, errs),
		}})
}
