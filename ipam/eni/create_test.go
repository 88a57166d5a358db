package eni

import (
	"context"
	"testing"
	"time"

	"github.com/multinic/multinic/internal/testing/fakeec2"
	"github.com/multinic/multinic/ipam/eni/awsec2"
)

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

// TestDeleteOnTerminationLater: while EC2 is busy, DeleteOnTermination waits, and each try gives way to the
// throttle (one attempt, not the call's retries), so an ENI stays attached without it. Nothing leaks when the node dies
// then: a restarted agent adopts the ENI and sets DeleteOnTermination once EC2 is no longer busy; an instance
// terminated meanwhile leaves the ENI available (EC2 deletes only what has DeleteOnTermination), and another
// node's agent's orphan sweep deletes it.
func TestDeleteOnTerminationLater(t *testing.T) {
	for _, how := range []string{"agent restarts", "instance terminated"} {
		t.Run(how, func(t *testing.T) {
			// One mutating token, then one every 100 s: the create takes it, the account stays busy.
			e := newEnv(t, envOpts{more: 1, faults: fakeec2.Faults{Rates: map[string]fakeec2.Rate{fakeec2.ClassMutate: {Burst: 1, PerSecond: 0.01}}}})
			cfg := e.cardOneConfig()
			cfg.ErrorBackoffMax = 300 * time.Millisecond // EC2 busy for 300 ms after the start and after a throttle
			m1 := e.start(cfg, e.alloc)
			waitReady(t, m1, 5*time.Second)
			throttled := func() int { return e.srv.State().Calls["ModifyNetworkInterfaceAttribute"]["RequestLimitExceeded"] }
			eventually(t, 5*time.Second, "DeleteOnTermination tried and throttled", func() bool { return throttled() > 0 })
			time.Sleep(time.Second)
			// A try every 300 ms at most: 4 in the second, where one call that retried would make MaxAttempts (8)
			// within tens of milliseconds.
			if n := throttled(); n > 5 {
				t.Errorf("DeleteOnTermination throttled %d times in about a second: idle work did not give way", n)
			}
			var id string
			for eid, x := range e.ours() {
				if x.DeleteOnTermination {
					t.Fatalf("ENI %s has DeleteOnTermination: the test did not keep EC2 busy", eid)
				}
				id = eid
			}
			m1.Stop()                                                 // the agent dies
			if err := e.srv.SetFaults(fakeec2.Faults{}); err != nil { // the account's budget is idle again
				t.Fatal(err)
			}

			switch how {
			case "agent restarts":
				m2 := e.start(cfg, e.newAllocator(0))
				waitReady(t, m2, 5*time.Second)
				eventually(t, 5*time.Second, "DeleteOnTermination set by the restarted agent", func() bool {
					x, ok := e.eniState(id)
					return ok && x.DeleteOnTermination
				})
			case "instance terminated":
				if err := e.srv.Terminate(e.inst); err != nil {
					t.Fatal(err)
				}
				if x, ok := e.eniState(id); !ok || x.Status != "available" {
					t.Fatalf("ENI %s after the termination: %+v (found %v), want available", id, x, ok)
				}
				sweeper := e.cardOneConfig()
				sweeper.OrphanAge, sweeper.OrphanSweepInterval = time.Second, -1
				m2 := e.startOn(1, sweeper, e.newAllocatorOn(newMemStore()))
				waitReady(t, m2, 5*time.Second)
				eventually(t, 10*time.Second, "the orphan sweep deletes the ENI", func() bool {
					if _, err := m2.SweepOrphans(context.Background()); err != nil {
						t.Fatal(err)
					}
					_, ok := e.eniState(id)
					return !ok
				})
			}
		})
	}
}

// TestThrottledAttachKeepsENI: an ENI whose attach EC2 throttles until the step runs out of attempts is kept
// and attached at the card's next try, not deleted and made again (two mutating calls more per throttled
// step); reconcile's detached-ENI cleanup leaves it alone meanwhile. Another attach failure still deletes the
// ENI (TestAttachFailureDeletesENI).
func TestThrottledAttachKeepsENI(t *testing.T) {
	e := newEnv(t, envOpts{faults: fakeec2.Faults{Errors: map[string]fakeec2.ErrorFault{
		"AttachNetworkInterface": {Rate: 1, Code: "RequestLimitExceeded", Status: 503}}}})
	cfg := e.cardOneConfig()
	cfg.MaxAttempts = 2
	cfg.SettleTime = time.Millisecond // the cleanup does not take the ENI for one just created
	m := e.start(cfg, e.alloc)
	eventually(t, 5*time.Second, "three throttled steps", func() bool {
		return e.srv.State().Calls["AttachNetworkInterface"]["RequestLimitExceeded"] >= 6
	})
	if err := m.DeleteDetached(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := e.srv.SetFaults(fakeec2.Faults{}); err != nil {
		t.Fatal(err)
	}
	waitReady(t, m, 5*time.Second)
	calls := e.srv.State().Calls
	t.Logf("calls %v", calls)
	if c, d := calls["CreateNetworkInterface"]["ok"], calls["DeleteNetworkInterface"]; c != 1 || len(d) != 0 {
		t.Errorf("%d ENIs created, deletes %v: want one ENI, kept through the throttled attaches", c, d)
	}
	if n := len(e.ours()); n != 1 {
		t.Errorf("%d ENIs of ours, want 1", n)
	}
	checkNoLeak(t, e, e.alloc, 1)
}
