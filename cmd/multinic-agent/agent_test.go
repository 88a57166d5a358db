package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/multinic/multinic/internal/testing/harness"
	"github.com/multinic/multinic/ipam/api"
)

// TestConcurrentAllocations: 64 allocations at once across cards 1-7 (16 pods x 4 cards), each pod also
// asking for each of its cards a second time under another interface name: the 64 succeed with 64
// distinct addresses, one per (pod, card), the 64 doubles are refused, and every address is one EC2 has on
// that card's ENI.
func TestConcurrentAllocations(t *testing.T) {
	region, n := startNode(t, harness.Config{})
	startAgent(t, n, []string{"--cooldown", "1s"})
	ctx := context.Background()

	type grant struct {
		req  api.AllocateRequest
		resp api.AllocateResponse
	}
	var (
		mu      sync.Mutex
		grants  []grant
		refused atomic.Int32
		wg      sync.WaitGroup
	)
	start := time.Now()
	for p := range 16 {
		for i := range 4 {
			card := allCards[(p+i)%len(allCards)]
			pod := fmt.Sprintf("pod%02d", p)
			for _, ifname := range []string{fmt.Sprintf("net%d", i+1), fmt.Sprintf("dup%d", i+1)} {
				wg.Go(func() {
					r := podReq(card, "sandbox-"+pod, ifname, pod)
					resp, err := n.Client.Allocate(ctx, r)
					if errors.Is(err, api.ErrCardTaken) {
						refused.Add(1)
						return
					}
					if err != nil {
						t.Errorf("allocate %s card %d: %v", pod, card, err)
						return
					}
					mu.Lock()
					grants = append(grants, grant{r, resp})
					mu.Unlock()
				})
			}
		}
	}
	wg.Wait()
	t.Logf("128 concurrent requests (64 distinct (pod, card)) answered in %s", time.Since(start).Round(time.Millisecond))
	if len(grants) != 64 || refused.Load() != 64 {
		t.Fatalf("%d granted and %d refused with card-taken, want 64 and 64", len(grants), refused.Load())
	}
	st := region.State()
	enis := ourENIs(n, st)
	byAddr := map[netip.Addr]string{}
	byPodCard := map[string]bool{}
	for _, g := range grants {
		who := g.req.PodName + "/" + g.req.IfName
		if prev, dup := byAddr[g.resp.Address]; dup {
			t.Errorf("address %s given twice: %s and %s", g.resp.Address, prev, who)
		}
		byAddr[g.resp.Address] = who
		pc := fmt.Sprintf("%s@%d", g.req.PodName, g.req.Card)
		if byPodCard[pc] {
			t.Errorf("pod %s holds card %d twice", g.req.PodName, g.req.Card)
		}
		byPodCard[pc] = true
		e, ok := enis[g.resp.ENIID]
		switch {
		case !ok:
			t.Errorf("%s: ENI %s is not one of the agent's in EC2", who, g.resp.ENIID)
		case e.Card != g.req.Card || e.Status != "in-use":
			t.Errorf("%s: ENI %s is on card %d (%s), want card %d", who, e.ID, e.Card, e.Status, g.req.Card)
		case !onENI(e, g.resp.Address):
			t.Errorf("%s: address %s not registered on %s in EC2 (has %v)", who, g.resp.Address, e.ID, e.SecondaryIPs)
		case !strings.EqualFold(e.MAC, g.resp.MAC) || !g.resp.SubnetCIDR.Contains(g.resp.Address) || g.resp.LinkName == "":
			t.Errorf("%s: answer %+v does not match ENI %s (MAC %s)", who, g.resp, e.ID, e.MAC)
		}
	}
	list, err := n.Client.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 64 {
		t.Errorf("agent lists %d allocations, want 64", len(list))
	}
}

// crashWorker is one client goroutine's view of what it was told.
type crashWorker struct {
	id int
	// held: (container, ifname) -> the address the agent confirmed, not released since.
	held map[string]netip.Addr
	// uncertain: pairs whose last call got no answer (agent killed); the call is repeated until answered.
	uncertain map[string]bool
	ops       int
}

// TestCrashSafety is the hard requirement: the agent is SIGKILLed at random points (mid-request,
// during the refill, some during its own start-up) at least 20 times while several clients allocate and
// release concurrently (2,000 operations or more). After every restart: no address twice in the agent's
// list, every allocation a client was told succeeded (and did not release) is there with the same address,
// and every allocation's address is on its ENI in EC2. At the end everything is released and the agent's
// pool and EC2 agree exactly: nothing is held anywhere but the pool or EC2.
func TestCrashSafety(t *testing.T) {
	const (
		workers  = 8
		podsPer  = 4
		minKills = 22
		minOps   = 2000
		maxRun   = 150 * time.Second
	)
	region, n := startNode(t, harness.Config{})
	flags := []string{"--cooldown", "200ms", "--surplus-delay", "1s", "--warm-target", "8", "--min-free", "4",
		"--reconcile-interval", "3s", "--wait-timeout", "5s", "--ec2-rate", "20", "--ec2-burst", "20"}
	startAgent(t, n, flags)

	var (
		gate    sync.RWMutex // workers hold it shared per call; the checker holds it alone
		stop    atomic.Bool
		totalOK atomic.Int64
		nAlloc  atomic.Int64
		nRel    atomic.Int64
		nCut    atomic.Int64 // calls cut by a kill
		wg      sync.WaitGroup
		ws      = make([]*crashWorker, workers)
	)
	key := func(c, ifn string) string { return c + "|" + ifn }
	for w := range workers {
		cw := &crashWorker{id: w, held: map[string]netip.Addr{}, uncertain: map[string]bool{}}
		ws[w] = cw
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			var pending *api.AllocateRequest // repeat this call until it is answered
			pendingRelease := ""
			for !stop.Load() || pending != nil || pendingRelease != "" {
				var r api.AllocateRequest
				release := false
				switch {
				case pending != nil:
					r = *pending
				case pendingRelease != "":
					c, ifn, _ := strings.Cut(pendingRelease, "|")
					r = api.AllocateRequest{ContainerID: c, IfName: ifn}
					release = true
				default:
					p := rng.IntN(podsPer)
					card := allCards[rng.IntN(len(allCards))]
					pod := fmt.Sprintf("w%d-p%d", w, p)
					r = podReq(card, "c-"+pod, fmt.Sprintf("net%d", card), pod)
					_, release = cw.held[key(r.ContainerID, r.IfName)]
				}
				k := key(r.ContainerID, r.IfName)
				gate.RLock()
				var err error
				if release {
					_, err = n.Client.Release(context.Background(), api.ReleaseRequest{ContainerID: r.ContainerID, IfName: r.IfName})
					if err == nil {
						delete(cw.held, k)
						delete(cw.uncertain, k)
						pendingRelease = ""
					}
				} else {
					var resp api.AllocateResponse
					resp, err = n.Client.Allocate(context.Background(), r)
					if err == nil {
						if prev, ok := cw.held[k]; ok && prev != resp.Address {
							t.Errorf("%s: repeated allocate answered %s, earlier %s", k, resp.Address, prev)
						}
						cw.held[k] = resp.Address
						delete(cw.uncertain, k)
						pending = nil
					}
				}
				if err == nil {
					cw.ops++
					totalOK.Add(1)
					if release {
						nRel.Add(1)
					} else {
						nAlloc.Add(1)
					}
				}
				switch {
				case err == nil:
				case errors.Is(err, api.ErrUnavailable):
					// Killed mid-call: the outcome is unknown until the call is repeated.
					nCut.Add(1)
					cw.uncertain[k] = true
					if release {
						pendingRelease = k
					} else {
						rr := r
						pending = &rr
					}
				case errors.Is(err, api.ErrTryAgain):
					// Every address cooling or a refill in flight: not a failure, ask again.
					if !release {
						rr := r
						pending = &rr
					}
				default:
					t.Errorf("worker %d: %s %s: %v", w, map[bool]string{true: "release", false: "allocate"}[release], k, err)
				}
				gate.RUnlock()
				if err != nil {
					time.Sleep(20 * time.Millisecond)
				}
			}
		})
	}

	// check runs with every worker paused: the agent's list against what the workers were told, and EC2.
	check := func(round int) {
		ctx := context.Background()
		list, err := n.Client.List(ctx)
		if err != nil {
			t.Fatalf("round %d: list: %v", round, err)
		}
		got := map[string]netip.Addr{}
		seen := map[netip.Addr]string{}
		for _, al := range list {
			k := key(al.ContainerID, al.IfName)
			if prev, dup := seen[al.Address]; dup {
				t.Errorf("round %d: address %s held by %s and %s", round, al.Address, prev, k)
			}
			seen[al.Address] = k
			got[k] = al.Address
		}
		for _, cw := range ws {
			for k, addr := range cw.held {
				a, ok := got[k]
				switch {
				case !ok && !cw.uncertain[k]:
					t.Errorf("round %d: %s was told %s and never released it, but the agent lost it", round, k, addr)
				case ok && a != addr:
					t.Errorf("round %d: %s was told %s, the agent now says %s", round, k, addr, a)
				}
			}
		}
		enis := ourENIs(n, region.State())
		for _, al := range list {
			if e, ok := enis[al.ENIID]; !ok || !onENI(e, al.Address) || e.Card != al.Card {
				t.Errorf("round %d: allocation %s/%s: %s not on %s (card %d) in EC2", round, al.ContainerID, al.IfName, al.Address, al.ENIID, al.Card)
			}
		}
	}

	start := time.Now()
	rng := rand.New(rand.NewPCG(42, 42))
	kills, earlyKills := 0, 0
	for (kills < minKills || totalOK.Load() < minOps) && time.Since(start) < maxRun && !t.Failed() {
		time.Sleep(time.Duration(50+rng.IntN(700)) * time.Millisecond)
		killAgent(t, n) // mid-traffic: workers' calls in flight fail with ErrUnavailable
		kills++
		gate.Lock()
		if rng.IntN(4) == 0 {
			// Also die during start-up: restore, discovery, reconcile.
			if err := n.StartAgentWith(flags...); err != nil {
				t.Fatal(err)
			}
			time.Sleep(time.Duration(rng.IntN(400)) * time.Millisecond)
			killAgent(t, n)
			kills++
			earlyKills++
		}
		startAgent(t, n, flags)
		check(kills)
		gate.Unlock()
	}
	stop.Store(true)
	wg.Wait()
	elapsed := time.Since(start)
	t.Logf("%d kills (%d during start-up), %d answered operations (%d allocate, %d release), %d calls cut by a kill and repeated, %s",
		kills, earlyKills, totalOK.Load(), nAlloc.Load(), nRel.Load(), nCut.Load(), elapsed.Round(time.Second))
	if kills < minKills || totalOK.Load() < minOps {
		t.Fatalf("only %d kills and %d operations in %s, want %d and %d", kills, totalOK.Load(), elapsed, minKills, minOps)
	}
	check(kills + 1)

	// Release everything anyone may hold, then the pool and EC2 must agree exactly.
	ctx := context.Background()
	for _, cw := range ws {
		for k := range cw.held {
			c, ifn, _ := strings.Cut(k, "|")
			if _, err := n.Client.Release(ctx, api.ReleaseRequest{ContainerID: c, IfName: ifn}); err != nil {
				t.Fatal(err)
			}
		}
	}
	list, err := n.Client.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 0 {
		t.Fatalf("%d allocations left after releasing everything: %+v", len(list), list)
	}
	// The manager may be mid-refill or mid-shrink: give it a moment to settle, then compare.
	var diff string
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(250 * time.Millisecond) {
		if diff = poolMatchesEC2(n, checkpoint(t, n), region.State()); diff == "" {
			break
		}
	}
	if diff != "" {
		t.Fatalf("after releasing everything, pool and EC2 differ: %s", diff)
	}
	cp := checkpoint(t, n)
	t.Logf("end: 0 allocations, %d addresses in the pool, all of them on the agent's ENIs in EC2 and vice versa", len(cp.Addresses))
}

// TestReclaimNetnsDeleted: a pod whose netns is deleted without a DEL gets its allocations freed by reclaim (the agent's GC) after the
// grace period, the address back in the pool, also when the agent was killed and restarted in between; a
// pod whose netns lives keeps its allocation. A development build's netns.json is removed at start.
func TestReclaimNetnsDeleted(t *testing.T) {
	_, n := startNode(t, harness.Config{})
	stale := filepath.Join(n.StateDir, "netns.json")
	if err := os.MkdirAll(n.StateDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(stale, []byte(`{"version":1,"records":[]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	flags := []string{"--gc-grace", "1s", "--gc-interval", "200ms", "--cooldown", "30s"}
	startAgent(t, n, flags, 1, 2)
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s after start: %v, want it removed", stale, err)
	}
	ctx := context.Background()

	pods := map[string]*harness.Pod{}
	for _, name := range []string{"dead", "live"} {
		p, err := n.NewPod(name) // a netns and no attachment: the allocations below are made directly
		if err != nil {
			t.Fatal(err)
		}
		pods[name] = p
	}
	var deadAddrs []netip.Addr
	for _, card := range []int{1, 2} {
		for _, name := range []string{"dead", "live"} {
			r := podReq(card, "c-"+name, fmt.Sprintf("net%d", card), name)
			r.Netns = pods[name].NetNSPath
			resp, err := n.Client.Allocate(ctx, r)
			if err != nil {
				t.Fatal(err)
			}
			if name == "dead" {
				deadAddrs = append(deadAddrs, resp.Address)
			}
		}
	}
	// Outlive a reclaim pass or two with both netns present: nothing is freed.
	time.Sleep(1500 * time.Millisecond)
	if list, _ := n.Client.List(ctx); len(list) != 4 {
		t.Fatalf("%d allocations with every netns alive, want 4", len(list))
	}
	// The netns paths must come back from the checkpoint.
	killAgent(t, n)
	startAgent(t, n, flags, 1, 2)
	if err := pods["dead"].Remove(); err != nil { // its netns deleted, without a DEL
		t.Fatal(err)
	}
	deleted := time.Now()
	var list []api.Allocation
	for {
		var err error
		if list, err = n.Client.List(ctx); err != nil {
			t.Fatal(err)
		}
		if len(list) == 2 || time.Since(deleted) > 20*time.Second {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	took := time.Since(deleted)
	if len(list) != 2 {
		t.Fatalf("%d allocations 20s after the netns went, want 2", len(list))
	}
	if took < time.Second {
		t.Errorf("freed after %s, before the 1s grace period", took)
	}
	for _, al := range list {
		if al.PodName != "live" || al.Netns != pods["live"].NetNSPath {
			t.Errorf("left %+v, want only the live pod's", al)
		}
	}
	t.Logf("dead pod's 2 allocations freed %s after its netns was deleted (grace 1s, interval 200ms)", took.Round(10*time.Millisecond))
	// Back in the pool, resting (cooldown 30s), not given to anyone.
	pool := map[netip.Addr]bool{}
	for _, a := range checkpoint(t, n).Addresses {
		pool[a.Address] = !a.RestUntil.IsZero()
	}
	for _, a := range deadAddrs {
		if rested, ok := pool[a]; !ok || !rested {
			t.Errorf("address %s of the dead pod not back in the pool cooling (known %v, cooling %v)", a, ok, rested)
		}
	}
}
