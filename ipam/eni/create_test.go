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

// TestDeleteOnTerminationLater: while EC2 is busy, DeleteOnTermination waits and gives way to the throttle (one
// attempt, not the call's retries), so an ENI stays attached without it. Nothing leaks when the node dies
// then: a restarted agent adopts the ENI and sets DeleteOnTermination once EC2 is no longer busy; an instance
// terminated meanwhile leaves the ENI available (EC2 deletes only what has DeleteOnTermination), and another
// node's agent's orphan sweep deletes it.
func TestDeleteOnTerminationLater(t *testing.T) {
	for _, how := range []string{"agent restarts", "instance terminated"} {
		t.Run(how, func(t *testing.T) {
			// One mutating token, then one every 100 s: the create takes it, the account stays busy.
			e := newEnv(t, envOpts{more: 1, faults: fakeec2.Faults{Rates: map[string]fakeec2.Rate{fakeec2.ClassMutate: {Burst: 1, PerSecond: 0.01}}}})
			cfg := e.cardOneConfig()
			cfg.BackoffMax = time.Minute // busy for a minute after a throttle
			m1 := e.start(cfg, e.alloc)
			waitReady(t, m1, 5*time.Second)
			eventually(t, 5*time.Second, "DeleteOnTermination tried and throttled", func() bool {
				return e.srv.State().Calls["ModifyNetworkInterfaceAttribute"]["RequestLimitExceeded"] > 0
			})
			time.Sleep(200 * time.Millisecond) // room for retries, if it made any
			if n := e.srv.State().Calls["ModifyNetworkInterfaceAttribute"]["RequestLimitExceeded"]; n != 1 {
				t.Errorf("DeleteOnTermination throttled %d times, want once: idle work gives way", n)
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
				cfg.BackoffMax = 0 // the default; the new process saw no throttle
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
